//! Instruction builders, one per program instruction.
use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::{AccountMeta, Instruction};
use anchor_lang::solana_program::system_program;
use anchor_lang::{InstructionData, ToAccountMetas};
use tally::{accounts, instruction};

use crate::pda;
use crate::{
    CompleteJobArgs, InitializeConfigArgs, OpenJobArgs, OperatorArgs, SettleArgs, UpdateConfigArgs,
};

/// A mint and the token program that owns it (SPL Token or Token-2022).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MintRef {
    pub mint: Pubkey,
    pub token_program: Pubkey,
}

fn build(accounts: &impl ToAccountMetas, data: &impl InstructionData) -> Instruction {
    Instruction {
        program_id: tally::ID,
        accounts: accounts.to_account_metas(None),
        data: data.data(),
    }
}

/// `initialize_config`: `admin` must be the program's upgrade authority.
pub fn initialize_config(admin: Pubkey, args: InitializeConfigArgs) -> Instruction {
    build(
        &accounts::InitializeConfig {
            admin,
            config: pda::config(),
            program: tally::ID,
            program_data: pda::program_data(),
            system_program: system_program::ID,
        },
        &instruction::InitializeConfig { args },
    )
}

/// `update_config` (admin).
pub fn update_config(admin: Pubkey, args: UpdateConfigArgs) -> Instruction {
    build(
        &accounts::UpdateConfig {
            admin,
            config: pda::config(),
        },
        &instruction::UpdateConfig { args },
    )
}

/// `propose_admin` (admin).
pub fn propose_admin(admin: Pubkey, new_admin: Pubkey) -> Instruction {
    build(
        &accounts::ProposeAdmin {
            admin,
            config: pda::config(),
        },
        &instruction::ProposeAdmin { new_admin },
    )
}

/// `accept_admin` (the proposed admin).
pub fn accept_admin(new_admin: Pubkey) -> Instruction {
    build(
        &accounts::AcceptAdmin {
            new_admin,
            config: pda::config(),
        },
        &instruction::AcceptAdmin {},
    )
}

/// `add_mint` (admin): creates the mint's vault.
pub fn add_mint(admin: Pubkey, mint: MintRef) -> Instruction {
    build(
        &accounts::AddMint {
            admin,
            config: pda::config(),
            mint: mint.mint,
            vault: pda::vault(&mint.mint),
            vault_tokens: pda::vault_tokens(&mint.mint),
            token_program: mint.token_program,
            system_program: system_program::ID,
        },
        &instruction::AddMint {},
    )
}

/// `register_operator`.
pub fn register_operator(authority: Pubkey, args: OperatorArgs) -> Instruction {
    build(
        &accounts::RegisterOperator {
            authority,
            operator: pda::operator(&authority),
            system_program: system_program::ID,
        },
        &instruction::RegisterOperator { args },
    )
}

/// `update_operator`.
pub fn update_operator(authority: Pubkey, args: OperatorArgs) -> Instruction {
    build(
        &accounts::UpdateOperator {
            authority,
            operator: pda::operator(&authority),
        },
        &instruction::UpdateOperator { args },
    )
}

/// `open_job`: escrows `unit_price × max_units` from `client_tokens`. `args.job_id`
/// must be at least the client's next job id ([`crate::ops::next_job_id`]).
pub fn open_job(
    client: Pubkey,
    operator_authority: Pubkey,
    mint: MintRef,
    client_tokens: Pubkey,
    args: OpenJobArgs,
) -> Instruction {
    build(
        &accounts::OpenJob {
            client,
            config: pda::config(),
            operator: pda::operator(&operator_authority),
            mint: mint.mint,
            vault: pda::vault(&mint.mint),
            vault_tokens: pda::vault_tokens(&mint.mint),
            client_tokens,
            job: pda::job(&client, args.job_id),
            token_program: mint.token_program,
            system_program: system_program::ID,
            client_jobs: pda::client_jobs(&client),
        },
        &instruction::OpenJob { args },
    )
}

/// `top_up`.
pub fn top_up(
    client: Pubkey,
    job: Pubkey,
    mint: MintRef,
    client_tokens: Pubkey,
    amount: u64,
) -> Instruction {
    build(
        &accounts::TopUp {
            client,
            config: pda::config(),
            mint: mint.mint,
            vault: pda::vault(&mint.mint),
            vault_tokens: pda::vault_tokens(&mint.mint),
            client_tokens,
            job,
            token_program: mint.token_program,
        },
        &instruction::TopUp { amount },
    )
}

/// `cancel_job`.
pub fn cancel_job(
    client: Pubkey,
    job: Pubkey,
    mint: MintRef,
    client_tokens: Pubkey,
) -> Instruction {
    build(
        &accounts::CancelJob {
            client,
            mint: mint.mint,
            vault: pda::vault(&mint.mint),
            vault_tokens: pda::vault_tokens(&mint.mint),
            client_tokens,
            job,
            token_program: mint.token_program,
        },
        &instruction::CancelJob {},
    )
}

/// Who attests a settlement: the first oracle signs as `oracle`, the rest (for a
/// threshold above one) are passed as extra signers.
#[derive(Clone, Debug)]
pub struct Attestation {
    pub oracles: Vec<Pubkey>,
    pub oracle_set_version: u32,
    /// UTC day of the cluster clock (selects the revenue ledger).
    pub day: u32,
}

impl Attestation {
    fn oracle(&self) -> Pubkey {
        self.oracles.first().copied().unwrap_or_default()
    }

    fn extra_signer_metas(&self) -> Vec<AccountMeta> {
        self.oracles
            .iter()
            .skip(1)
            .map(|k| AccountMeta::new_readonly(*k, true))
            .collect()
    }

    fn extra_count(&self) -> u8 {
        u8::try_from(self.oracles.len().saturating_sub(1)).unwrap_or(u8::MAX)
    }
}

/// `open_ledgers`: creates, if missing, `operator_authority`'s earnings in `mint` and
/// `mint`'s revenue for `day`. Send it before `settle` / `complete_job` when either
/// ledger does not exist yet.
pub fn open_ledgers(
    payer: Pubkey,
    operator_authority: Pubkey,
    mint: Pubkey,
    day: u32,
) -> Instruction {
    let operator = pda::operator(&operator_authority);
    build(
        &accounts::OpenLedgers {
            payer,
            operator,
            vault: pda::vault(&mint),
            earnings: pda::earnings(&operator, &mint),
            revenue: pda::revenue(&mint, day),
            system_program: system_program::ID,
        },
        &instruction::OpenLedgers { day },
    )
}

/// `settle`: one receipt per job, all jobs of `operator_authority`'s operator in `mint`.
pub fn settle(
    attestation: &Attestation,
    operator_authority: Pubkey,
    mint: Pubkey,
    receipts: &[(Pubkey, crate::SettleReceipt)],
) -> Instruction {
    let operator = pda::operator(&operator_authority);
    let mut ix = build(
        &accounts::Settle {
            oracle: attestation.oracle(),
            config: pda::config(),
            vault: pda::vault(&mint),
            earnings: pda::earnings(&operator, &mint),
            revenue: pda::revenue(&mint, attestation.day),
        },
        &instruction::Settle {
            args: SettleArgs {
                oracle_set_version: attestation.oracle_set_version,
                extra_oracle_signers: attestation.extra_count(),
                receipts: crate::pack_receipts(
                    &receipts.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
                ),
            },
        },
    );
    ix.accounts.extend(attestation.extra_signer_metas());
    ix.accounts.extend(
        receipts
            .iter()
            .map(|(job, _)| AccountMeta::new(*job, false)),
    );
    ix
}

/// `complete_job`: settles the final receipt, refunds the rest, closes the job.
pub fn complete_job(
    attestation: &Attestation,
    operator_authority: Pubkey,
    mint: MintRef,
    job: Pubkey,
    client: Pubkey,
    client_tokens: Pubkey,
    receipt: crate::SettleReceipt,
) -> Instruction {
    let operator = pda::operator(&operator_authority);
    let mut ix = build(
        &accounts::CompleteJob {
            oracle: attestation.oracle(),
            config: pda::config(),
            mint: mint.mint,
            vault: pda::vault(&mint.mint),
            vault_tokens: pda::vault_tokens(&mint.mint),
            earnings: pda::earnings(&operator, &mint.mint),
            revenue: pda::revenue(&mint.mint, attestation.day),
            job,
            client,
            client_tokens,
            token_program: mint.token_program,
        },
        &instruction::CompleteJob {
            args: CompleteJobArgs {
                oracle_set_version: attestation.oracle_set_version,
                extra_oracle_signers: attestation.extra_count(),
                receipt,
            },
        },
    );
    ix.accounts.extend(attestation.extra_signer_metas());
    ix
}

/// `expire_job` (anyone, after deadline + grace).
pub fn expire_job(
    cranker: Pubkey,
    job: Pubkey,
    mint: MintRef,
    client: Pubkey,
    client_tokens: Pubkey,
) -> Instruction {
    build(
        &accounts::ExpireJob {
            cranker,
            config: pda::config(),
            mint: mint.mint,
            vault: pda::vault(&mint.mint),
            vault_tokens: pda::vault_tokens(&mint.mint),
            job,
            client,
            client_tokens,
            token_program: mint.token_program,
        },
        &instruction::ExpireJob {},
    )
}

/// `close_job` (anyone): closes an ended job once its share is out of the challenge
/// window; the rent goes to `client`, the job's client.
pub fn close_job(closer: Pubkey, job: Pubkey, client: Pubkey) -> Instruction {
    build(
        &accounts::CloseJob {
            closer,
            job,
            client,
        },
        &instruction::CloseJob {},
    )
}

/// `claim`: pays `operator_authority`'s matured earnings in `mint` to `payout_tokens`.
pub fn claim(operator_authority: Pubkey, mint: MintRef, payout_tokens: Pubkey) -> Instruction {
    let operator = pda::operator(&operator_authority);
    build(
        &accounts::Claim {
            authority: operator_authority,
            operator,
            mint: mint.mint,
            vault: pda::vault(&mint.mint),
            vault_tokens: pda::vault_tokens(&mint.mint),
            earnings: pda::earnings(&operator, &mint.mint),
            payout_tokens,
            token_program: mint.token_program,
        },
        &instruction::Claim {},
    )
}

/// `withdraw_fees` (treasury).
pub fn withdraw_fees(treasury: Pubkey, mint: MintRef, destination: Pubkey) -> Instruction {
    build(
        &accounts::WithdrawFees {
            treasury,
            config: pda::config(),
            mint: mint.mint,
            vault: pda::vault(&mint.mint),
            vault_tokens: pda::vault_tokens(&mint.mint),
            destination,
            token_program: mint.token_program,
        },
        &instruction::WithdrawFees {},
    )
}

/// `upgrade_account` (anyone; `payer` funds the extra rent): brings a job or revenue
/// day of an older layout up to date.
pub fn upgrade_account(payer: Pubkey, account: Pubkey) -> Instruction {
    build(
        &accounts::UpgradeAccount {
            payer,
            account,
            system_program: system_program::ID,
        },
        &instruction::UpgradeAccount {},
    )
}

/// `dispute_job` (the job's client): freezes the operator's unmatured share of the job.
/// `operator` is the operator PDA (the job's `operator` field).
pub fn dispute_job(client: Pubkey, job: Pubkey, operator: Pubkey, mint: Pubkey) -> Instruction {
    build(
        &accounts::DisputeJob {
            client,
            config: pda::config(),
            job,
            earnings: pda::earnings(&operator, &mint),
        },
        &instruction::DisputeJob {},
    )
}

/// `resolve_dispute`: the arbiter refunds `client_share` to `client_tokens` and
/// releases the rest to the operator; after the timeout anyone may call it with 0.
pub fn resolve_dispute(
    resolver: Pubkey,
    job: Pubkey,
    operator: Pubkey,
    mint: MintRef,
    client_tokens: Pubkey,
    client_share: u64,
) -> Instruction {
    build(
        &accounts::ResolveDispute {
            resolver,
            config: pda::config(),
            job,
            earnings: pda::earnings(&operator, &mint.mint),
            mint: mint.mint,
            vault: pda::vault(&mint.mint),
            vault_tokens: pda::vault_tokens(&mint.mint),
            client_tokens,
            token_program: mint.token_program,
        },
        &instruction::ResolveDispute { client_share },
    )
}
