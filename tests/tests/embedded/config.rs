//! initialize_config, update_config and the two-step admin transfer.
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::errors::TallyError;
use tally::events::{AdminTransferAccepted, ConfigUpdated};
use tally_client::{ix, pda, InitializeConfigArgs, OracleSetArgs, UpdateConfigArgs};
use tally_tests::{events, expect_error, expect_ok, AnchorErrorCode, TestEnv, World};

fn init_args(oracle: &Keypair) -> InitializeConfigArgs {
    InitializeConfigArgs {
        treasury: Keypair::new().pubkey(),
        arbiter: Keypair::new().pubkey(),
        fee_bps: 100,
        challenge_window_secs: 60,
        expiry_grace_secs: 60,
        dispute_timeout_secs: 600,
        oracles: vec![oracle.pubkey()],
        oracle_threshold: 1,
    }
}

#[test]
fn only_the_upgrade_authority_can_initialize() {
    let mut env = TestEnv::new();
    let squatter = env.wallet(1_000_000_000);
    let oracle = Keypair::new();
    let result = env.send(
        &[ix::initialize_config(squatter.pubkey(), init_args(&oracle))],
        &[&squatter],
    );
    expect_error(result, TallyError::NotUpgradeAuthority);
    assert!(!env.exists(&pda::config()));
}

/// `initialize_config` reads the program's ProgramData by hand (no bincode in the
/// program): a forged one, one the program does not name, or an immutable program
/// are all refused, as the upgrade authority is.
#[test]
fn a_forged_or_substituted_program_data_cannot_initialize() {
    let real = pda::program_data();
    let with = |mutate: &dyn Fn(&mut solana_account::Account) -> tally_client::Pubkey| {
        let mut env = TestEnv::new();
        let admin = env.deployer.insecure_clone();
        let mut account = env.chain.svm.get_account(&real).expect("the ProgramData");
        let address = mutate(&mut account);
        env.chain.svm.set_account(address, account).unwrap();
        let mut instruction = ix::initialize_config(admin.pubkey(), init_args(&Keypair::new()));
        instruction.accounts[3].pubkey = address;
        let result = env.send(&[instruction], &[&admin]);
        (result, env)
    };
    // A copy of the real one (the admin as authority) at another address, owned by
    // the loader: not the ProgramData the program names.
    let (result, env) = with(&|_| Keypair::new().pubkey());
    expect_error(result, TallyError::NotUpgradeAuthority);
    assert!(!env.exists(&pda::config()));
    // The same bytes owned by another program.
    let (result, _) = with(&|account| {
        account.owner = tally::ID;
        real
    });
    expect_error(result, TallyError::NotUpgradeAuthority);
    // An immutable program (no upgrade authority): nobody initializes it.
    let (result, _) = with(&|account| {
        account.data[12] = 0;
        real
    });
    expect_error(result, TallyError::NotUpgradeAuthority);
    // Not ProgramData at all (a Buffer's tag) with the admin's key where the
    // authority would be.
    let (result, _) = with(&|account| {
        account.data[..4].copy_from_slice(&1u32.to_le_bytes());
        real
    });
    expect_error(result, TallyError::NotUpgradeAuthority);
    // Cut short before the authority.
    let (result, _) = with(&|account| {
        account.data.truncate(20);
        real
    });
    expect_error(result, TallyError::NotUpgradeAuthority);
}

#[test]
fn config_cannot_be_initialized_twice() {
    let mut world = World::builder().build();
    let admin = world.admin.insecure_clone();
    let oracle = Keypair::new();
    let result = world.send(
        &[ix::initialize_config(admin.pubkey(), init_args(&oracle))],
        &[&admin],
    );
    // The account already exists: the system program refuses to create it again.
    let failed = tally_tests::expect_failure(result);
    assert!(
        failed.logs.iter().any(|l| l.contains("already in use")),
        "{:?}",
        failed.logs
    );
}

#[test]
fn initialize_rejects_bad_settings() {
    let mut env = TestEnv::new();
    let admin = env.deployer.insecure_clone();
    let oracle = Keypair::new();

    let mut args = init_args(&oracle);
    args.fee_bps = 1_001;
    expect_error(
        env.send(&[ix::initialize_config(admin.pubkey(), args)], &[&admin]),
        TallyError::FeeTooHigh,
    );

    let mut args = init_args(&oracle);
    args.oracle_threshold = 2;
    expect_error(
        env.send(&[ix::initialize_config(admin.pubkey(), args)], &[&admin]),
        TallyError::InvalidOracleSet,
    );

    let mut args = init_args(&oracle);
    args.oracles = vec![oracle.pubkey(), oracle.pubkey()];
    expect_error(
        env.send(&[ix::initialize_config(admin.pubkey(), args)], &[&admin]),
        TallyError::InvalidOracleSet,
    );

    let mut args = init_args(&oracle);
    args.oracles = (0..8).map(|_| Keypair::new().pubkey()).collect();
    expect_error(
        env.send(&[ix::initialize_config(admin.pubkey(), args)], &[&admin]),
        TallyError::InvalidOracleSet,
    );

    let mut args = init_args(&oracle);
    args.challenge_window_secs = 31 * 86_400;
    expect_error(
        env.send(&[ix::initialize_config(admin.pubkey(), args)], &[&admin]),
        TallyError::InvalidWindow,
    );
}

#[test]
fn admin_updates_settings_and_rotating_oracles_bumps_the_version() {
    let mut world = World::builder().build();
    let admin = world.admin.insecure_clone();
    let new_oracles: Vec<_> = (0..3).map(|_| Keypair::new().pubkey()).collect();
    let sent = expect_ok(world.send(
        &[ix::update_config(
            admin.pubkey(),
            UpdateConfigArgs {
                fee_bps: Some(500),
                paused: Some(true),
                oracle_set: Some(OracleSetArgs {
                    oracles: new_oracles.clone(),
                    threshold: 2,
                }),
                ..UpdateConfigArgs::default()
            },
        )],
        &[&admin],
    ));
    let config = world.config();
    assert_eq!(config.fee_bps, 500);
    assert!(config.paused);
    assert_eq!(config.oracles, new_oracles);
    assert_eq!(config.oracle_threshold, 2);
    assert_eq!(config.oracle_set_version, 2);
    let updated: Vec<ConfigUpdated> = events(&sent.logs);
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0].oracle_set_version, 2);
}

#[test]
fn update_config_attacks() {
    let mut world = World::builder().build();
    let admin = world.admin.insecure_clone();
    let intruder = world.env.wallet(1_000_000_000);

    // Wrong signer.
    let result = world.send(
        &[ix::update_config(
            intruder.pubkey(),
            UpdateConfigArgs {
                fee_bps: Some(0),
                ..Default::default()
            },
        )],
        &[&intruder],
    );
    expect_error(result, TallyError::Unauthorized);

    // Admin key present but not signing.
    let mut unsigned = ix::update_config(
        admin.pubkey(),
        UpdateConfigArgs {
            fee_bps: Some(0),
            ..Default::default()
        },
    );
    unsigned.accounts[0].is_signer = false;
    expect_error(
        world.send(&[unsigned], &[]),
        AnchorErrorCode::AccountNotSigner,
    );

    // Fee above the hard cap.
    let result = world.send(
        &[ix::update_config(
            admin.pubkey(),
            UpdateConfigArgs {
                fee_bps: Some(1_001),
                ..Default::default()
            },
        )],
        &[&admin],
    );
    expect_error(result, TallyError::FeeTooHigh);

    // A fake config: right shape, wrong address (not the PDA).
    let mut fake = ix::update_config(admin.pubkey(), UpdateConfigArgs::default());
    fake.accounts[1].pubkey = pda::vault(&world.mint.mint);
    let failed = tally_tests::expect_failure(world.send(&[fake], &[&admin]));
    assert!(
        matches!(failed.custom_code(), Some(c) if c == u32::from(AnchorErrorCode::AccountDiscriminatorMismatch) || c == u32::from(AnchorErrorCode::ConstraintSeeds)),
        "{failed:?}"
    );

    // An empty oracle set.
    let result = world.send(
        &[ix::update_config(
            admin.pubkey(),
            UpdateConfigArgs {
                oracle_set: Some(OracleSetArgs {
                    oracles: vec![],
                    threshold: 0,
                }),
                ..Default::default()
            },
        )],
        &[&admin],
    );
    expect_error(result, TallyError::InvalidOracleSet);
    assert_eq!(world.config().fee_bps, 250, "nothing changed");
}

#[test]
fn admin_transfer_takes_two_steps() {
    let mut world = World::builder().build();
    let admin = world.admin.insecure_clone();
    let next = world.env.wallet(1_000_000_000);
    let intruder = world.env.wallet(1_000_000_000);

    expect_error(
        world.send(&[ix::accept_admin(next.pubkey())], &[&next]),
        TallyError::NoPendingAdmin,
    );
    expect_error(
        world.send(
            &[ix::propose_admin(intruder.pubkey(), intruder.pubkey())],
            &[&intruder],
        ),
        TallyError::Unauthorized,
    );

    expect_ok(world.send(
        &[ix::propose_admin(admin.pubkey(), next.pubkey())],
        &[&admin],
    ));
    assert_eq!(
        world.config().admin,
        admin.pubkey(),
        "proposing does not transfer"
    );
    expect_error(
        world.send(&[ix::accept_admin(intruder.pubkey())], &[&intruder]),
        TallyError::Unauthorized,
    );

    let sent = expect_ok(world.send(&[ix::accept_admin(next.pubkey())], &[&next]));
    let config = world.config();
    assert_eq!(config.admin, next.pubkey());
    assert_eq!(
        config.pending_admin,
        anchor_lang::prelude::Pubkey::default()
    );
    let accepted: Vec<AdminTransferAccepted> = events(&sent.logs);
    assert_eq!(accepted[0].previous_admin, admin.pubkey());

    // The old admin has lost its powers.
    expect_error(
        world.send(
            &[ix::update_config(
                admin.pubkey(),
                UpdateConfigArgs::default(),
            )],
            &[&admin],
        ),
        TallyError::Unauthorized,
    );
}
