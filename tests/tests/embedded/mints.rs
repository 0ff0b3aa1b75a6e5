//! add_mint: SPL Token and Token-2022 accepted; extensions that break escrow refused.
use anchor_spl::token_2022::spl_token_2022::{
    self,
    extension::{default_account_state, transfer_fee, transfer_hook, ExtensionType},
    state::AccountState,
};
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::errors::TallyError;
use tally::events::MintAccepted;
use tally::state::Vault;
use tally_client::ix::{self, MintRef};
use tally_client::pda;
use tally_tests::{events, expect_error, expect_failure, expect_ok, TokenKind, World};

fn add(world: &mut World, mint: MintRef) -> tally_tests::TxResult {
    let admin = world.admin.insecure_clone();
    world.send(&[ix::add_mint(admin.pubkey(), mint)], &[&admin])
}

#[test]
fn spl_token_and_token_2022_mints_get_a_vault() {
    let mut world = World::builder().build();
    let authority = Keypair::new().pubkey();
    for kind in [TokenKind::SplToken, TokenKind::Token2022] {
        let mint = world.env.create_mint(kind, &authority);
        let sent = expect_ok(add(&mut world, mint));
        let vault: Vault = world.env.account(&pda::vault(&mint.mint));
        assert_eq!(vault.mint, mint.mint);
        assert_eq!(vault.token_program, kind.program_id());
        assert_eq!(vault.token_account, pda::vault_tokens(&mint.mint));
        let accepted: Vec<MintAccepted> = events(&sent.logs);
        assert_eq!(accepted[0].mint, mint.mint);
        world.mints.push(mint);
    }
    // Benign extensions are accepted: a close-authority extension with no authority
    // (the mint can never be closed) and new accounts that start initialized.
    let mint = world.env.create_mint_with(
        TokenKind::Token2022,
        &authority,
        &[
            ExtensionType::MintCloseAuthority,
            ExtensionType::DefaultAccountState,
        ],
        |m| {
            vec![
                spl_token_2022::instruction::initialize_mint_close_authority(
                    &spl_token_2022::ID,
                    m,
                    None,
                )
                .unwrap(),
                default_account_state::instruction::initialize_default_account_state(
                    &spl_token_2022::ID,
                    m,
                    &AccountState::Initialized,
                )
                .unwrap(),
            ]
        },
    );
    expect_ok(add(&mut world, mint));
}

#[test]
fn a_token_2022_mint_with_a_close_authority_is_refused() {
    let mut world = World::builder().build();
    let authority = Keypair::new().pubkey();
    // A close authority can close the mint at zero supply and recreate it at the same
    // address with a permanent delegate.
    let close_auth = Keypair::new().pubkey();
    let closable = world.env.create_mint_with(
        TokenKind::Token2022,
        &authority,
        &[ExtensionType::MintCloseAuthority],
        |m| {
            vec![
                spl_token_2022::instruction::initialize_mint_close_authority(
                    &spl_token_2022::ID,
                    m,
                    Some(&close_auth),
                )
                .unwrap(),
            ]
        },
    );
    expect_error(add(&mut world, closable), TallyError::MintHasCloseAuthority);
    assert!(!world.env.exists(&pda::vault(&closable.mint)));
}

#[test]
fn a_token_2022_mint_whose_accounts_start_frozen_is_refused() {
    let mut world = World::builder().build();
    let authority = Keypair::new().pubkey();
    // New accounts, the vault's included, start frozen.
    let freezer = Keypair::new().pubkey();
    let frozen = world.env.create_mint_with_freeze(
        TokenKind::Token2022,
        &authority,
        Some(&freezer),
        &[ExtensionType::DefaultAccountState],
        |m| {
            vec![
                default_account_state::instruction::initialize_default_account_state(
                    &spl_token_2022::ID,
                    m,
                    &AccountState::Frozen,
                )
                .unwrap(),
            ]
        },
    );
    expect_error(
        add(&mut world, frozen),
        TallyError::MintDefaultAccountStateFrozen,
    );
    assert!(!world.env.exists(&pda::vault(&frozen.mint)));
}

#[test]
fn token_2022_extensions_that_break_escrow_are_refused() {
    let mut world = World::builder().build();
    let authority = Keypair::new().pubkey();

    let fee_mint = world.env.create_mint_with(
        TokenKind::Token2022,
        &authority,
        &[ExtensionType::TransferFeeConfig],
        |m| {
            vec![transfer_fee::instruction::initialize_transfer_fee_config(
                &spl_token_2022::ID,
                m,
                Some(&authority),
                Some(&authority),
                50,
                1_000,
            )
            .unwrap()]
        },
    );
    expect_error(add(&mut world, fee_mint), TallyError::MintHasTransferFee);

    let hook_mint = world.env.create_mint_with(
        TokenKind::Token2022,
        &authority,
        &[ExtensionType::TransferHook],
        |m| {
            vec![transfer_hook::instruction::initialize(
                &spl_token_2022::ID,
                m,
                Some(authority),
                Some(Keypair::new().pubkey()),
            )
            .unwrap()]
        },
    );
    expect_error(add(&mut world, hook_mint), TallyError::MintHasTransferHook);

    let delegate_mint = world.env.create_mint_with(
        TokenKind::Token2022,
        &authority,
        &[ExtensionType::PermanentDelegate],
        |m| {
            vec![spl_token_2022::instruction::initialize_permanent_delegate(
                &spl_token_2022::ID,
                m,
                &authority,
            )
            .unwrap()]
        },
    );
    expect_error(
        add(&mut world, delegate_mint),
        TallyError::MintHasPermanentDelegate,
    );

    let soulbound = world.env.create_mint_with(
        TokenKind::Token2022,
        &authority,
        &[ExtensionType::NonTransferable],
        |m| {
            vec![
                spl_token_2022::instruction::initialize_non_transferable_mint(
                    &spl_token_2022::ID,
                    m,
                )
                .unwrap(),
            ]
        },
    );
    expect_error(
        add(&mut world, soulbound),
        TallyError::MintExtensionNotSupported,
    );

    for mint in [fee_mint, hook_mint, delegate_mint, soulbound] {
        assert!(
            !world.env.exists(&pda::vault(&mint.mint)),
            "no vault was created"
        );
    }
}

#[test]
fn add_mint_attacks() {
    let mut world = World::builder().build();
    let intruder = world.env.wallet(1_000_000_000);
    let mint = world
        .env
        .create_mint(TokenKind::SplToken, &Keypair::new().pubkey());

    // Not the admin.
    let result = world.send(&[ix::add_mint(intruder.pubkey(), mint)], &[&intruder]);
    expect_error(result, TallyError::Unauthorized);

    // A mint passed with the wrong token program.
    let lying = MintRef {
        mint: mint.mint,
        token_program: spl_token_2022::ID,
    };
    let admin = world.admin.insecure_clone();
    let failed = expect_failure(world.send(&[ix::add_mint(admin.pubkey(), lying)], &[&admin]));
    assert!(
        matches!(failed.err, solana_transaction_error::TransactionError::InstructionError(_, anchor_lang::solana_program::instruction::error::InstructionError::IncorrectProgramId)),
        "{failed:?}"
    );
    assert!(!world.env.exists(&pda::vault(&mint.mint)));

    // Not a mint at all (type cosplay: a token account in the mint's place).
    let vault_tokens = pda::vault_tokens(&world.mint.mint);
    let cosplay = MintRef {
        mint: vault_tokens,
        token_program: anchor_spl::token::ID,
    };
    expect_failure(world.send(&[ix::add_mint(admin.pubkey(), cosplay)], &[&admin]));

    // Reinitialization: the world's mint already has a vault.
    let existing = world.mint;
    let failed = expect_failure(add(&mut world, existing));
    assert!(
        failed.logs.iter().any(|l| l.contains("already in use")),
        "{:?}",
        failed.logs
    );
}

#[test]
fn sol_is_paid_as_wrapped_sol() {
    use anchor_lang::solana_program::system_instruction;

    let mut world = World::builder().fee_bps(0).challenge_window(0).build();
    let native = world.use_wrapped_sol();

    let operator = world.operator();
    let client = world.client(0);
    // The client wraps 2 SOL: lamports into its wSOL account, then sync_native.
    let wrap = [
        system_instruction::transfer(&client.wallet.pubkey(), &client.tokens, 2_000_000_000),
        spl_token_2022::instruction::sync_native(&native.token_program, &client.tokens).unwrap(),
    ];
    expect_ok(world.send(&wrap, &[&client.wallet]));
    assert_eq!(world.env.token_balance(&client.tokens), 2_000_000_000);

    let spec = tally_tests::JobSpec {
        unit_price: 1_000,
        max_units: 1_000_000,
        ..Default::default()
    };
    let job = world.open_job(&client, &operator, 1, spec);
    world.env.advance(60);
    let receipt = world.receipt(1, 250_000);
    expect_ok(world.complete(&operator, &job, receipt));
    expect_ok(world.claim(&operator));
    assert_eq!(
        world.env.token_balance(&operator.payout_tokens),
        250_000_000,
        "0.25 SOL earned"
    );
    assert_eq!(
        world.env.token_balance(&client.tokens),
        1_750_000_000,
        "0.75 SOL refunded"
    );
}
