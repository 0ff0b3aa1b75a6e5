//! The foundation's smoke test: the real SBF program executes a real instruction.
use tally_client::pda;
use tally_tests::{assert_cu_at_most, events, World};

#[test]
fn sbf_program_initializes_config_within_its_cu_ceiling() {
    let world = World::builder().fee_bps(250).build();

    let config = world.config();
    assert_eq!(config.admin, world.deployer_pubkey());
    assert_eq!(config.fee_bps, 250);
    assert_eq!(config.oracle_set_version, 1);
    assert_eq!(config.oracles.len(), 1);

    let initialized: Vec<tally::events::ConfigInitialized> = events(&world.init_sent.logs);
    assert_eq!(initialized.len(), 1);
    assert_eq!(initialized[0].fee_bps, 250);
    assert!(
        world
            .init_sent
            .logs
            .iter()
            .any(|l| l.contains(&format!("Program {} success", tally::ID))),
        "the SBF program ran"
    );
    assert!(world.env.exists(&pda::config()));
    assert_cu_at_most(&world.init_sent, 20_000, "initialize_config");
    println!("initialize_config: {} CU", world.init_sent.cu);
}
