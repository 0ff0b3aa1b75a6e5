//! register_operator and update_operator.
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::errors::TallyError;
use tally::events::OperatorUpdated;
use tally::state::Operator;
use tally_client::{ix, pda, OperatorArgs};
use tally_tests::{events, expect_error, expect_failure, expect_ok, AnchorErrorCode, World};

fn args(n_keys: usize) -> OperatorArgs {
    OperatorArgs {
        payout_owner: Keypair::new().pubkey(),
        node_keys: (0..n_keys).map(|_| Keypair::new().pubkey()).collect(),
    }
}

#[test]
fn operator_registers_and_updates_its_payout_and_node_keys() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let stored: Operator = world.env.account(&operator.address());
    assert_eq!(stored.authority, operator.authority.pubkey());
    assert_eq!(stored.payout_owner, operator.payout_owner);
    assert_eq!(stored.node_keys.len(), 1);

    let new_args = args(4);
    let sent = expect_ok(world.send(
        &[ix::update_operator(
            operator.authority.pubkey(),
            new_args.clone(),
        )],
        &[&operator.authority],
    ));
    let stored: Operator = world.env.account(&operator.address());
    assert_eq!(stored.payout_owner, new_args.payout_owner);
    assert_eq!(stored.node_keys, new_args.node_keys);
    let updated: Vec<OperatorUpdated> = events(&sent.logs);
    assert_eq!(updated[0].node_keys.len(), 4);
}

#[test]
fn operator_attacks() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let intruder = world.env.wallet(1_000_000_000);

    // Too many node keys.
    let someone = world.env.wallet(1_000_000_000);
    expect_error(
        world.send(
            &[ix::register_operator(someone.pubkey(), args(5))],
            &[&someone],
        ),
        TallyError::TooManyNodeKeys,
    );

    // Reinitialization of an existing operator.
    let authority = operator.authority.insecure_clone();
    let failed = expect_failure(world.send(
        &[ix::register_operator(authority.pubkey(), args(1))],
        &[&authority],
    ));
    assert!(
        failed.logs.iter().any(|l| l.contains("already in use")),
        "{:?}",
        failed.logs
    );

    // Someone else updating the operator: the real operator is not the intruder's.
    let mut hijack = ix::update_operator(intruder.pubkey(), args(1));
    hijack.accounts[1].pubkey = operator.address();
    expect_error(
        world.send(&[hijack], &[&intruder]),
        TallyError::Unauthorized,
    );

    // The authority's key without its signature.
    let mut unsigned = ix::update_operator(authority.pubkey(), args(1));
    unsigned.accounts[0].is_signer = false;
    expect_error(
        world.send(&[unsigned], &[]),
        AnchorErrorCode::AccountNotSigner,
    );

    // Type cosplay: the config account in the operator's place.
    let mut cosplay = ix::update_operator(authority.pubkey(), args(1));
    cosplay.accounts[1].pubkey = pda::config();
    let failed = expect_failure(world.send(&[cosplay], &[&authority]));
    assert!(failed.custom_code().is_some(), "{failed:?}");

    let stored: Operator = world.env.account(&operator.address());
    assert_eq!(
        stored.payout_owner, operator.payout_owner,
        "nothing changed"
    );
}
