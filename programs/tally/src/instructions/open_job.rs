use anchor_lang::prelude::*;
use anchor_spl::token_interface::{Mint, TokenAccount, TokenInterface};

use crate::errors::TallyError;
use crate::events::JobOpened;
use crate::payout::{deposit_for, Prices};
use crate::state::{seeds, ClientJobs, Config, Job, JobStatus, Operator, UnitKind, Vault};
use crate::vault_io;

#[derive(AnchorSerialize, AnchorDeserialize, Clone, Copy, Debug)]
pub struct OpenJobArgs {
    /// Client-chosen id, at least the client's `ClientJobs::next_job_id`: ids only go
    /// up, so a job address is never reused.
    pub job_id: u64,
    /// [`UnitKind`] as u8.
    pub unit_kind: u8,
    /// Price per million input tokens (or per million units of another kind), in
    /// the mint's base units: $0.15 / 1M tokens in USDC is 150_000.
    pub input_price: u64,
    /// Price per million output tokens; must be 0 unless the units are tokens.
    pub output_price: u64,
    /// sha256 of the model's name the job pays for; all zero: any model.
    pub model: [u8; 32],
    /// Units to escrow for: the deposit is `max_units` at the higher price
    /// (`payout::deposit_for`).
    pub max_units: u64,
    /// Unix time after which usage is not billable.
    pub deadline: i64,
    /// Most the job may be billed per hour since it opened; 0 = no cap.
    pub spend_cap_per_hour: u64,
}

#[derive(Accounts)]
#[instruction(args: OpenJobArgs)]
pub struct OpenJob<'info> {
    #[account(mut)]
    pub client: Signer<'info>,
    #[account(address = seeds::CONFIG_ADDRESS)]
    pub config: Account<'info, Config>,
    #[account(mut)]
    pub operator: Account<'info, Operator>,
    #[account(mint::token_program = token_program)]
    pub mint: InterfaceAccount<'info, Mint>,
    #[account(mut, has_one = mint @ TallyError::WrongMint)]
    pub vault: Account<'info, Vault>,
    #[account(mut, address = vault.token_account)]
    pub vault_tokens: InterfaceAccount<'info, TokenAccount>,
    #[account(mut, token::mint = mint, token::authority = client, token::token_program = token_program)]
    pub client_tokens: InterfaceAccount<'info, TokenAccount>,
    #[account(
        init,
        payer = client,
        space = Job::ACCOUNT_SIZE,
        seeds = [seeds::JOB, client.key().as_ref(), &args.job_id.to_le_bytes()],
        bump,
    )]
    pub job: AccountLoader<'info, Job>,
    pub token_program: Interface<'info, TokenInterface>,
    pub system_program: Program<'info, System>,
    /// The client's job ids (created by its first job). Last, so that instructions
    /// built for an older program still line up.
    #[account(
        init_if_needed,
        payer = client,
        space = 8 + ClientJobs::INIT_SPACE,
        seeds = [seeds::CLIENT_JOBS, client.key().as_ref()],
        bump,
    )]
    pub client_jobs: Account<'info, ClientJobs>,
}

impl OpenJob<'_> {
    /// Opens a job and escrows what `max_units` cost at the higher price.
    pub fn open_job(ctx: Context<Self>, args: OpenJobArgs) -> Result<()> {
        let accounts = &mut *ctx.accounts;
        ensure!(!accounts.config.paused, TallyError::Paused);
        let kind = UnitKind::from_u8(args.unit_kind).ok_or(TallyError::InvalidUnitKind)?;
        ensure!(
            args.output_price == 0 || kind == UnitKind::Tokens,
            TallyError::OutputPriceWithoutTokens
        );
        let prices = Prices {
            input: args.input_price,
            output: args.output_price,
        };
        let clock = Clock::get()?;
        ensure!(
            args.deadline > clock.unix_timestamp,
            TallyError::DeadlineInPast
        );
        let deposit = deposit_for(prices, args.max_units)?;
        ensure!(args.max_units > 0 && deposit > 0, TallyError::ZeroAmount);
        let ids = &mut accounts.client_jobs;
        if ids.client == Pubkey::default() {
            ids.client = accounts.client.key();
            ids.bump = ctx.bumps.client_jobs;
        }
        let nonce = ids.take(args.job_id)?;

        vault_io::deposit(
            &accounts.client_tokens,
            &accounts.client,
            &mut accounts.vault,
            &mut accounts.vault_tokens,
            &accounts.mint,
            &accounts.token_program,
            deposit,
        )?;

        let operator = &mut accounts.operator;
        operator.jobs_opened = operator.jobs_opened.saturating_add(1);

        let mut job = accounts.job.load_init()?;
        *job = Job {
            client: accounts.client.key(),
            operator: operator.key(),
            mint: accounts.mint.key(),
            invoice_hash: [0; 32],
            job_id: args.job_id,
            nonce,
            input_price: args.input_price,
            max_units: args.max_units,
            deposited: deposit,
            escrow_left: deposit,
            settled_units: 0,
            settled_gross: 0,
            fees: 0,
            last_seq: 0,
            spend_cap_per_hour: args.spend_cap_per_hour,
            opened_at: clock.unix_timestamp,
            deadline: args.deadline,
            last_period_end: clock.unix_timestamp,
            pending: Default::default(),
            disputed_amount: 0,
            dispute_deadline: 0,
            receipts: 0,
            unit_kind: args.unit_kind,
            status: JobStatus::Open as u8,
            bump: ctx.bumps.job,
            reserved: [0; 1],
            output_price: args.output_price,
            settled_output: 0,
            model: args.model,
        };
        emit!(JobOpened {
            job: accounts.job.key(),
            client: job.client,
            operator: job.operator,
            mint: job.mint,
            job_id: args.job_id,
            unit_kind: args.unit_kind,
            input_price: args.input_price,
            output_price: args.output_price,
            model: args.model,
            max_units: args.max_units,
            deposit,
            deadline: args.deadline,
            spend_cap_per_hour: args.spend_cap_per_hour,
        });
        Ok(())
    }
}
