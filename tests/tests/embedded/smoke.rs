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

/// The deployed binary carries a security.txt (`solana_security_txt::security_txt!`)
/// that explorers and `query-security-txt` find by its markers: read it back from
/// the very .so the suite runs, as they do.
#[test]
fn the_program_binary_carries_its_security_txt() {
    let so = std::fs::read(tally_tests::TestEnv::program_path()).expect("the program .so");
    let begin = b"=======BEGIN SECURITY.TXT V1=======\0";
    let end = b"=======END SECURITY.TXT V1=======\0";
    let start = so
        .windows(begin.len())
        .position(|w| w == begin)
        .expect("a security.txt in the binary")
        + begin.len();
    let len = so[start..]
        .windows(end.len())
        .position(|w| w == end)
        .expect("its end marker");
    let fields: Vec<&str> = std::str::from_utf8(&so[start..start + len])
        .expect("UTF-8")
        .split_terminator('\0')
        .collect();
    let pairs: std::collections::HashMap<&str, &str> = fields
        .chunks(2)
        .map(|kv| (kv[0], kv.get(1).copied().unwrap_or("")))
        .collect();
    for required in ["name", "project_url", "contacts", "policy"] {
        assert!(
            pairs.contains_key(required),
            "{required} missing: {pairs:?}"
        );
    }
    assert_eq!(pairs["name"], "Tally");
    assert!(pairs["contacts"].starts_with("link:https://github.com/tally-network/tally"));
    assert!(pairs["policy"].ends_with("/SECURITY.md"));
}
