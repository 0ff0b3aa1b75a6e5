//! What users do, as functions over a [`Chain`]: each reads what it needs, builds the
//! instructions, sends them and returns a typed result. The `tally` CLI prints these
//! results; tests and the oracle call them directly.
use anchor_lang::prelude::Pubkey;
use anchor_spl::associated_token::spl_associated_token_account;
use anchor_spl::token_2022::spl_token_2022;
use serde::Serialize;
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::state::{Config, Earnings, Job, JobStatus, Operator, Revenue, UnitKind};

use crate::chain::{Chain, ChainError, Confirmed, Memcmp};
use crate::error::{Invalid, Missing, Refused};
use crate::ix::{self, MintRef};
use crate::Instruction;
use crate::{
    pda, InitializeConfigArgs, OpenJobArgs, OperatorArgs, OracleSetArgs, UpdateConfigArgs,
};

type Result<T> = std::result::Result<T, ChainError>;

/// The mint at `mint` and its token program, checked to be a mint.
pub fn mint_ref(chain: &impl Chain, mint: &Pubkey) -> Result<MintRef> {
    let account = chain.account(mint)?.ok_or(Missing::Mint(*mint))?;
    let token_program = account.owner;
    if token_program != anchor_spl::token::ID && token_program != spl_token_2022::ID {
        return Err(ChainError::WrongAccount {
            address: *mint,
            expected: "a token mint",
            owner: Some(token_program),
        });
    }
    Ok(MintRef {
        mint: *mint,
        token_program,
    })
}

/// The deployment's config, with a clear error when the program or config is missing.
pub fn config(chain: &impl Chain) -> Result<Config> {
    match chain.account(&tally::ID)? {
        Some(program) if program.executable => {}
        _ => return Err(Missing::Program(tally::ID).into()),
    }
    chain
        .anchor_account::<Config>(&pda::config())?
        .ok_or_else(|| Missing::Config.into())
}

/// Token balance of a token account (0 when it does not exist).
pub fn token_balance(chain: &impl Chain, account: &Pubkey) -> Result<u64> {
    Ok(chain.account(account)?.as_ref().map_or(0, token_amount))
}

/// The token amount an account holds (0 when it is not a token account).
fn token_amount(account: &solana_account::Account) -> u64 {
    spl_token_2022::extension::StateWithExtensions::<spl_token_2022::state::Account>::unpack(
        &account.data,
    )
    .map_or(0, |s| s.base.amount)
}

/// The associated token account of `owner` for `mint`, and the instruction that
/// creates it (paid by `payer`) when it is missing: put in front of a payment to it,
/// one transaction does both.
fn token_account_for(
    chain: &impl Chain,
    payer: &Pubkey,
    owner: &Pubkey,
    mint: MintRef,
) -> Result<(Pubkey, Option<Instruction>)> {
    let address = pda::associated_token(owner, &mint.mint, &mint.token_program);
    let create = chain.account(&address)?.is_none().then(|| {
        spl_associated_token_account::instruction::create_associated_token_account_idempotent(
            payer,
            owner,
            &mint.mint,
            &mint.token_program,
        )
    });
    Ok((address, create))
}

/// The associated token account of `owner` for `mint`, created (paid by `payer`) if
/// missing.
pub fn ensure_token_account(
    chain: &mut impl Chain,
    payer: &Keypair,
    owner: &Pubkey,
    mint: MintRef,
) -> Result<Pubkey> {
    let (address, create) = token_account_for(chain, &payer.pubkey(), owner, mint)?;
    if let Some(create) = create {
        chain.send(&[create], payer, &[])?;
    }
    Ok(address)
}

/// The wrapped-SOL mint (SPL Token's native mint).
pub const NATIVE_MINT: Pubkey = anchor_spl::token::spl_token::native_mint::ID;

/// Wraps `lamports` of `owner`'s SOL into its wrapped-SOL token account (created if
/// missing), so SOL can pay for jobs like any other accepted mint. Returns the token
/// account.
pub fn wrap_sol(chain: &mut impl Chain, owner: &Keypair, lamports: u64) -> Result<Pubkey> {
    chain.send(&wrap_instructions(&owner.pubkey(), lamports)?, owner, &[])?;
    Ok(wsol_account(&owner.pubkey()))
}

/// `owner`'s wrapped-SOL (associated token) account.
pub fn wsol_account(owner: &Pubkey) -> Pubkey {
    pda::associated_token(owner, &NATIVE_MINT, &anchor_spl::token::spl_token::ID)
}

/// Whether `mint` is wrapped SOL, which the CLI wraps and unwraps for its user.
pub fn is_wrapped_sol(mint: &MintRef) -> bool {
    mint.mint == NATIVE_MINT && mint.token_program == anchor_spl::token::spl_token::ID
}

/// Creates `owner`'s wrapped-SOL account if missing, moves `lamports` into it and
/// syncs its token balance: what `spl-token wrap` sends.
fn wrap_instructions(owner: &Pubkey, lamports: u64) -> Result<Vec<Instruction>> {
    let token_program = anchor_spl::token::spl_token::ID;
    let address = wsol_account(owner);
    let create =
        spl_associated_token_account::instruction::create_associated_token_account_idempotent(
            owner,
            owner,
            &NATIVE_MINT,
            &token_program,
        );
    let transfer =
        anchor_lang::solana_program::system_instruction::transfer(owner, &address, lamports);
    let sync = anchor_spl::token::spl_token::instruction::sync_native(&token_program, &address)
        .map_err(|e| ChainError::instruction("sync_native", e))?;
    Ok(vec![create, transfer, sync])
}

/// Closes `owner`'s wrapped-SOL account into its wallet: every wrapped lamport (and
/// the account's rent) comes back as SOL, as `spl-token unwrap` does.
fn unwrap_instruction(owner: &Pubkey) -> Result<Instruction> {
    anchor_spl::token::spl_token::instruction::close_account(
        &anchor_spl::token::spl_token::ID,
        &wsol_account(owner),
        owner,
        owner,
        &[],
    )
    .map_err(|e| ChainError::instruction("close_account", e))
}

/// An SPL Token account's size (no extensions), for its rent.
const TOKEN_ACCOUNT_LEN: usize = 165;

/// What becomes of wrapped SOL a command pays to its signer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WrappedSol {
    /// Left in the signer's wrapped-SOL token account.
    #[default]
    Keep,
    /// Unwrapped into the signer's wallet in the same transaction: the account is
    /// closed, so wrapped SOL it held before comes back as SOL too.
    Unwrap,
}

/// What a refund or claim paid, and whether it arrived as SOL.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Paid {
    /// In base units of `mint`.
    pub amount: u64,
    #[serde(serialize_with = "base58")]
    pub mint: Pubkey,
    /// Paid in wrapped SOL and unwrapped into the signer's wallet.
    pub unwrapped: bool,
}

/// The instructions that make `payer`'s associated token account of `mint` hold
/// `needs`: none when it already does; for wrapped SOL, a wrap of the shortfall from
/// the wallet (sent in the same transaction as the payment, so nothing is wrapped
/// unless the payment lands). Refused, with what to do, when neither covers it.
fn fund(
    chain: &impl Chain,
    payer: &Pubkey,
    mint: MintRef,
    needs: u64,
) -> Result<(Pubkey, Vec<Instruction>)> {
    let tokens = pda::associated_token(payer, &mint.mint, &mint.token_program);
    let existing = chain.account(&tokens)?;
    let balance = existing.as_ref().map_or(0, token_amount);
    if balance >= needs {
        return Ok((tokens, Vec::new()));
    }
    if !is_wrapped_sol(&mint) {
        return Err(Refused::InsufficientFunds {
            account: tokens,
            mint: mint.mint,
            holds: balance,
            needs,
            decimals: decimals(chain, &mint.mint)?,
        }
        .into());
    }
    let shortfall = needs - balance;
    let account_rent = match existing {
        Some(_) => 0,
        None => chain.minimum_balance_for_rent_exemption(TOKEN_ACCOUNT_LEN)?,
    };
    let lamports = chain.account(payer)?.map_or(0, |a| a.lamports);
    let wants = shortfall.saturating_add(account_rent);
    if lamports < wants {
        return Err(Refused::InsufficientSol {
            wallet: *payer,
            holds: lamports,
            needs: wants,
        }
        .into());
    }
    Ok((tokens, wrap_instructions(payer, shortfall)?))
}

/// A payout of `amount` in `mint` to `recipient`'s token account: sends
/// `instructions` (which pay it) signed by `signer`, followed in the same transaction
/// by the unwrap when asked to, the mint is wrapped SOL and `signer` is the recipient
/// (only the owner can close its account).
fn send_payout(
    chain: &mut impl Chain,
    signer: &Keypair,
    mut instructions: Vec<Instruction>,
    payout: (MintRef, &Pubkey, u64),
    wrapped: WrappedSol,
) -> Result<Paid> {
    let (mint, recipient, amount) = payout;
    let unwrapped =
        wrapped == WrappedSol::Unwrap && is_wrapped_sol(&mint) && *recipient == signer.pubkey();
    if unwrapped {
        instructions.push(unwrap_instruction(recipient)?);
    }
    chain.send(&instructions, signer, &[])?;
    Ok(Paid {
        amount,
        mint: mint.mint,
        unwrapped,
    })
}

/// A mint's decimals (read from the mint account: SPL Token and Token-2022 share the
/// layout).
pub fn decimals(chain: &impl Chain, mint: &Pubkey) -> Result<u8> {
    let account = chain.account(mint)?.ok_or(Missing::Mint(*mint))?;
    spl_token_2022::extension::StateWithExtensions::<spl_token_2022::state::Mint>::unpack(
        &account.data,
    )
    .map(|m| m.base.decimals)
    .map_err(|e| ChainError::decode("the mint", Some(*mint), e))
}

/// `admin init`: creates the config (the signer must be the program's upgrade
/// authority).
pub fn init(
    chain: &mut impl Chain,
    admin: &Keypair,
    args: InitializeConfigArgs,
) -> Result<Confirmed> {
    chain.send(&[ix::initialize_config(admin.pubkey(), args)], admin, &[])
}

/// `admin mint add`: accepts a mint for payment.
pub fn add_mint(chain: &mut impl Chain, admin: &Keypair, mint: &Pubkey) -> Result<Confirmed> {
    let mint = mint_ref(chain, mint)?;
    chain.send(&[ix::add_mint(admin.pubkey(), mint)], admin, &[])
}

/// `admin config set` / `admin pause`: changes settings.
pub fn update_config(
    chain: &mut impl Chain,
    admin: &Keypair,
    args: UpdateConfigArgs,
) -> Result<Confirmed> {
    chain.send(&[ix::update_config(admin.pubkey(), args)], admin, &[])
}

/// How to change the oracle set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OracleChange {
    Add(Pubkey),
    Remove(Pubkey),
    /// Replace `old` by `new` (key rotation).
    Rotate {
        old: Pubkey,
        new: Pubkey,
    },
}

/// `admin oracle add|remove|rotate`: edits the oracle set (bumping its version), and
/// optionally sets a new threshold (else it is kept, capped at the new size).
pub fn change_oracles(
    chain: &mut impl Chain,
    admin: &Keypair,
    change: &OracleChange,
    threshold: Option<u8>,
) -> Result<Confirmed> {
    let config = config(chain)?;
    let mut oracles = config.oracles.clone();
    match change {
        OracleChange::Add(key) => {
            if oracles.contains(key) {
                return Err(Refused::AlreadyOracle(*key).into());
            }
            oracles.push(*key);
        }
        OracleChange::Remove(key) => {
            let before = oracles.len();
            oracles.retain(|k| k != key);
            if oracles.len() == before {
                return Err(Refused::NotOracle(*key).into());
            }
        }
        OracleChange::Rotate { old, new } => {
            let slot = oracles
                .iter_mut()
                .find(|k| *k == old)
                .ok_or(Refused::NotOracle(*old))?;
            *slot = *new;
        }
    }
    let size = u8::try_from(oracles.len()).unwrap_or(u8::MAX);
    let threshold = threshold.unwrap_or(config.oracle_threshold).min(size);
    update_config(
        chain,
        admin,
        UpdateConfigArgs {
            oracle_set: Some(OracleSetArgs { oracles, threshold }),
            ..UpdateConfigArgs::default()
        },
    )
}

/// `operator register` / `operator update`.
pub fn register_operator(
    chain: &mut impl Chain,
    authority: &Keypair,
    args: OperatorArgs,
    update: bool,
) -> Result<Confirmed> {
    let exists = chain
        .account(&pda::operator(&authority.pubkey()))?
        .is_some();
    let instruction = match (update, exists) {
        (false, true) => return Err(Refused::OperatorRegistered(authority.pubkey()).into()),
        (true, false) => return Err(Refused::OperatorNotRegistered(authority.pubkey()).into()),
        (false, false) => ix::register_operator(authority.pubkey(), args),
        (true, true) => ix::update_operator(authority.pubkey(), args),
    };
    chain.send(&[instruction], authority, &[])
}

/// A key in JSON as people and the Solana tools write it: base58.
fn base58<S: serde::Serializer>(
    key: &Pubkey,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_str(key)
}

/// A job and its address, as the operations return it: the program's own type.
/// Rendering does the formatting (the CLI's tables; this type's JSON, with keys in
/// base58 and the status, unit kind and model binding as words).
#[derive(Clone, Copy, Debug)]
pub struct JobView {
    pub address: Pubkey,
    pub job: Job,
}

impl JobView {
    pub fn new(address: &Pubkey, job: &Job) -> Self {
        Self {
            address: *address,
            job: *job,
        }
    }

    /// `open`, `active`, `completed`, `cancelled`, `expired`, or `disputed` while a
    /// dispute is open.
    pub fn status_label(&self) -> &'static str {
        if self.job.disputed_amount > 0 {
            return "disputed";
        }
        match self.job.status() {
            JobStatus::Open => "open",
            JobStatus::Active => "active",
            // Ended, kept while its share can still be disputed (`job close`).
            JobStatus::Completed => "completed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Expired => "expired",
        }
    }

    /// `tokens`, `gpu-seconds`, `requests`, `frames`.
    pub fn unit_kind_label(&self) -> &'static str {
        match UnitKind::from_u8(self.job.unit_kind) {
            Some(UnitKind::Tokens) => "tokens",
            Some(UnitKind::GpuSeconds) => "gpu-seconds",
            Some(UnitKind::Requests) => "requests",
            Some(UnitKind::Frames) => "frames",
            None => "unknown",
        }
    }

    pub fn is_tokens(&self) -> bool {
        self.job.unit_kind == UnitKind::Tokens as u8
    }
}

impl Serialize for JobView {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let j = &self.job;
        serde_json::json!({
            "address": self.address.to_string(),
            "job_id": j.job_id,
            "client": j.client.to_string(),
            "operator": j.operator.to_string(),
            "mint": j.mint.to_string(),
            "status": self.status_label(),
            "unit_kind": self.unit_kind_label(),
            "input_price": j.input_price,
            "output_price": j.output_price,
            "model": crate::model_label(&j.model),
            "max_units": j.max_units,
            "deposited": j.deposited,
            "escrow_left": j.escrow_left,
            "settled_units": j.settled_units,
            "settled_output": j.settled_output,
            "settled_gross": j.settled_gross,
            "fees": j.fees,
            "receipts": j.receipts,
            "last_seq": j.last_seq,
            "deadline": j.deadline,
            "spend_cap_per_hour": j.spend_cap_per_hour,
            "disputed_amount": j.disputed_amount,
        })
        .serialize(serializer)
    }
}

/// The receipt restating what `job` has settled: completing a job with it settles
/// nothing more (the final receipt when every metered unit has landed).
pub fn settled_receipt(job: &Job) -> crate::SettleReceipt {
    crate::SettleReceipt {
        seq: job.last_seq,
        cumulative_units: job.settled_units,
        cumulative_output: job.settled_output,
        invoice_hash: job.invoice_hash,
        period_end: job.last_period_end,
    }
}

/// Decodes a zero-copy job account's data. A job of the older layout (v1, before
/// `upgrade_account`) reads as the program will convert it: prices per million, the
/// output price equal to the input price for tokens, any model.
pub fn decode_job(data: &[u8]) -> Option<Job> {
    use anchor_lang::Discriminator;
    let body = data.strip_prefix(Job::DISCRIMINATOR)?;
    if data.len() == Job::V1_ACCOUNT_SIZE {
        let mut padded = body.to_vec();
        padded.resize(std::mem::size_of::<Job>(), 0);
        let mut job = bytemuck::try_pod_read_unaligned::<Job>(&padded).ok()?;
        job.convert_v1_prices().ok()?;
        return Some(job);
    }
    body.get(..std::mem::size_of::<Job>())
        .and_then(|b| bytemuck::try_pod_read_unaligned::<Job>(b).ok())
}

/// Accounts of an older layout that `upgrade_account` brings up to date: jobs and
/// revenue days, as (address, "job" | "revenue").
pub fn outdated_accounts(chain: &impl Chain) -> Result<Vec<(Pubkey, &'static str)>> {
    use anchor_lang::Discriminator;
    let mut out = Vec::new();
    for (size, discriminator, kind) in [
        (Job::V1_ACCOUNT_SIZE, Job::DISCRIMINATOR, "job"),
        (
            tally::state::Revenue::V1_ACCOUNT_SIZE,
            tally::state::Revenue::DISCRIMINATOR,
            "revenue",
        ),
    ] {
        let filter = Memcmp {
            offset: 0,
            bytes: discriminator.to_vec(),
        };
        out.extend(
            chain
                .program_accounts(size, &[filter])?
                .into_iter()
                .map(|(address, _)| (address, kind)),
        );
    }
    out.sort();
    Ok(out)
}

/// Upgrades `accounts` (see [`outdated_accounts`]), `payer` funding the extra rent,
/// several per transaction. Returns the transactions sent.
pub fn upgrade_accounts(
    chain: &mut impl Chain,
    payer: &Keypair,
    accounts: &[Pubkey],
) -> Result<usize> {
    let mut sent = 0;
    for chunk in accounts.chunks(8) {
        let ixs: Vec<_> = chunk
            .iter()
            .map(|account| ix::upgrade_account(payer.pubkey(), *account))
            .collect();
        chain.send(&ixs, payer, &[])?;
        sent += 1;
    }
    Ok(sent)
}

/// The job at `address`.
pub fn job(chain: &impl Chain, address: &Pubkey) -> Result<Job> {
    let account = chain.account(address)?.ok_or(Missing::Job(*address))?;
    let not_a_job = || ChainError::WrongAccount {
        address: *address,
        expected: "a Tally job",
        owner: Some(account.owner),
    };
    if account.owner != tally::ID {
        return Err(not_a_job());
    }
    decode_job(&account.data).ok_or_else(not_a_job)
}

/// Jobs on the cluster, optionally only a client's and/or an operator's.
pub fn jobs(
    chain: &impl Chain,
    client: Option<&Pubkey>,
    operator_authority: Option<&Pubkey>,
) -> Result<Vec<JobView>> {
    let mut filters = Vec::new();
    if let Some(client) = client {
        filters.push(Memcmp {
            offset: 8,
            bytes: client.to_bytes().to_vec(),
        });
    }
    if let Some(authority) = operator_authority {
        filters.push(Memcmp {
            offset: 40,
            bytes: pda::operator(authority).to_bytes().to_vec(),
        });
    }
    let mut out: Vec<JobView> = chain
        .program_accounts(Job::ACCOUNT_SIZE, &filters)?
        .into_iter()
        .filter_map(|(address, account)| {
            decode_job(&account.data).map(|job| JobView::new(&address, &job))
        })
        .collect();
    out.sort_by_key(|v| (v.job.client, v.job.job_id));
    Ok(out)
}

/// The lowest job id `client` may open (0 before its first job): ids only go up.
pub fn next_job_id(chain: &impl Chain, client: &Pubkey) -> Result<u64> {
    Ok(chain
        .anchor_account::<tally::state::ClientJobs>(&pda::client_jobs(client))?
        .map_or(0, |ids| ids.next_job_id))
}

/// `job open`: escrows what `max_units` cost at the job's higher price
/// ([`crate::deposit_for`]) from the client's associated token account of `mint`;
/// in wrapped SOL, what that account lacks is wrapped from the wallet in the same
/// transaction.
pub fn open_job(
    chain: &mut impl Chain,
    client: &Keypair,
    operator_authority: &Pubkey,
    mint: &Pubkey,
    args: OpenJobArgs,
) -> Result<JobView> {
    let config = config(chain)?;
    if config.paused {
        return Err(Refused::Paused.into());
    }
    let mint = mint_ref(chain, mint)?;
    if chain.account(&pda::vault(&mint.mint))?.is_none() {
        return Err(Missing::Vault(mint.mint).into());
    }
    if chain.account(&pda::operator(operator_authority))?.is_none() {
        return Err(Missing::Operator(*operator_authority).into());
    }
    let prices = crate::Prices {
        input: args.input_price,
        output: args.output_price,
    };
    if args.output_price > 0 && args.unit_kind != UnitKind::Tokens as u8 {
        return Err(Invalid::OutputPriceWithoutTokens.into());
    }
    let deposit =
        crate::deposit_for(prices, args.max_units).map_err(|_| Invalid::DepositOverflow)?;
    if deposit == 0 {
        return Err(Invalid::ZeroDeposit {
            units: args.max_units,
            price: prices.input.max(prices.output),
        }
        .into());
    }
    let (tokens, mut instructions) = fund(chain, &client.pubkey(), mint, deposit)?;
    let address = pda::job(&client.pubkey(), args.job_id);
    if chain.account(&address)?.is_some() {
        return Err(Refused::JobIdTaken(args.job_id).into());
    }
    let next = next_job_id(chain, &client.pubkey())?;
    if args.job_id < next {
        return Err(Refused::JobIdUsed {
            id: args.job_id,
            next,
        }
        .into());
    }
    instructions.push(ix::open_job(
        client.pubkey(),
        *operator_authority,
        mint,
        tokens,
        args,
    ));
    chain.send(&instructions, client, &[])?;
    Ok(JobView::new(&address, &job(chain, &address)?))
}

/// `job top-up`: as [`open_job`], wrapping SOL when the job is paid in it.
pub fn top_up(
    chain: &mut impl Chain,
    client: &Keypair,
    job_address: &Pubkey,
    amount: u64,
) -> Result<JobView> {
    let current = job(chain, job_address)?;
    let mint = mint_ref(chain, &current.mint)?;
    let (tokens, mut instructions) = fund(chain, &client.pubkey(), mint, amount)?;
    instructions.push(ix::top_up(
        client.pubkey(),
        *job_address,
        mint,
        tokens,
        amount,
    ));
    chain.send(&instructions, client, &[])?;
    Ok(JobView::new(job_address, &job(chain, job_address)?))
}

/// A job key as `tally job key` prints it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct JobKeyView {
    #[serde(serialize_with = "base58")]
    pub job: Pubkey,
    /// The bearer token (`Authorization: Bearer <key>` at the operator's gateway).
    pub key: String,
    /// Its public name (what a revocation names).
    pub key_id: String,
    /// Unix seconds, the chain's clock.
    pub expires_at: i64,
    /// In the job mint's base units; `None`: up to the escrow.
    pub spend_limit: Option<u64>,
}

/// `job key`: a key that lets its holder spend `job_address` at the operator's gateway
/// for `expires_in_secs` (from the chain's now), within `spend_limit`, signed by the
/// job's client wallet. Nothing is sent: signing is free.
pub fn job_key(
    chain: &impl Chain,
    client: &Keypair,
    job_address: &Pubkey,
    expires_in_secs: i64,
    spend_limit: Option<u64>,
) -> Result<JobKeyView> {
    let current = job(chain, job_address)?;
    if current.client != client.pubkey() {
        return Err(Refused::NotTheClient {
            job: *job_address,
            client: current.client,
            signer: client.pubkey(),
            action: "sign its keys",
        }
        .into());
    }
    if expires_in_secs <= 0 {
        return Err(Invalid::KeyExpiry.into());
    }
    if spend_limit == Some(0) {
        return Err(Invalid::ZeroSpendLimit.into());
    }
    let expires_at = chain
        .clock()?
        .unix_timestamp
        .saturating_add(expires_in_secs);
    let key = crate::job_key::JobKeyClaims {
        job: *job_address,
        job_nonce: current.nonce,
        expires_at,
        spend_limit,
    }
    .sign(client);
    Ok(JobKeyView {
        job: *job_address,
        key: key.encode(),
        key_id: key.id(),
        expires_at,
        spend_limit,
    })
}

/// `job cancel`: full refund of a job with no usage. Returns the amount refunded.
pub fn cancel_job(chain: &mut impl Chain, client: &Keypair, job_address: &Pubkey) -> Result<u64> {
    cancel_job_with(chain, client, job_address, WrappedSol::Keep).map(|paid| paid.amount)
}

/// [`cancel_job`], unwrapping a refund in wrapped SOL when `wrapped` asks.
pub fn cancel_job_with(
    chain: &mut impl Chain,
    client: &Keypair,
    job_address: &Pubkey,
    wrapped: WrappedSol,
) -> Result<Paid> {
    let current = job(chain, job_address)?;
    if current.last_seq > 0 {
        return Err(Refused::HasUsage.into());
    }
    let mint = mint_ref(chain, &current.mint)?;
    let (tokens, create) = token_account_for(chain, &client.pubkey(), &client.pubkey(), mint)?;
    let mut instructions: Vec<Instruction> = create.into_iter().collect();
    instructions.push(ix::cancel_job(client.pubkey(), *job_address, mint, tokens));
    send_payout(
        chain,
        client,
        instructions,
        (mint, &current.client, current.escrow_left),
        wrapped,
    )
}

/// `job expire`: anyone refunds a job past its deadline plus grace. Returns the
/// amount refunded to the client.
pub fn expire_job(chain: &mut impl Chain, cranker: &Keypair, job_address: &Pubkey) -> Result<u64> {
    expire_job_with(chain, cranker, job_address, WrappedSol::Keep).map(|paid| paid.amount)
}

/// [`expire_job`], unwrapping the refund when `wrapped` asks, it is in wrapped SOL
/// and the cranker is the job's client.
pub fn expire_job_with(
    chain: &mut impl Chain,
    cranker: &Keypair,
    job_address: &Pubkey,
    wrapped: WrappedSol,
) -> Result<Paid> {
    let current = job(chain, job_address)?;
    let config = config(chain)?;
    let now = chain.clock()?.unix_timestamp;
    let expires_at = current.settle_until(config.expiry_grace_secs);
    if now <= expires_at {
        return Err(Refused::NotExpired {
            job: *job_address,
            expires_at,
            now,
        }
        .into());
    }
    let mint = mint_ref(chain, &current.mint)?;
    let (tokens, create) = token_account_for(chain, &cranker.pubkey(), &current.client, mint)?;
    let mut instructions: Vec<Instruction> = create.into_iter().collect();
    instructions.push(ix::expire_job(
        cranker.pubkey(),
        *job_address,
        mint,
        current.client,
        tokens,
    ));
    send_payout(
        chain,
        cranker,
        instructions,
        (mint, &current.client, current.escrow_left),
        wrapped,
    )
}

/// `job close`: closes an ended (completed or expired) job once the operator's
/// share of it has left the challenge window, returning its rent to the client.
/// Anyone may do it.
pub fn close_job(chain: &mut impl Chain, closer: &Keypair, job_address: &Pubkey) -> Result<()> {
    let current = job(chain, job_address)?;
    if !current.status().is_finished() {
        return Err(Refused::NotEnded(*job_address).into());
    }
    let now = chain.clock()?.unix_timestamp;
    let until = current
        .pending
        .iter()
        .filter(|b| b.amount > 0)
        .map(|b| b.matures_at)
        .max()
        .unwrap_or(0);
    if current.disputed_amount > 0 {
        return Err(Refused::DisputeOpen(*job_address).into());
    }
    if until > now {
        return Err(Refused::StillDisputable {
            job: *job_address,
            until,
            now,
        }
        .into());
    }
    chain.send(
        &[ix::close_job(closer.pubkey(), *job_address, current.client)],
        closer,
        &[],
    )?;
    Ok(())
}

/// What `dispute_job` froze.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Disputed {
    #[serde(serialize_with = "base58")]
    pub job: Pubkey,
    /// The operator's unmatured share of the job, frozen until the arbiter splits it
    /// (or, after `deadline`, released to the operator by default).
    pub frozen: u64,
    /// Unix seconds, the chain's clock.
    pub deadline: i64,
}

/// `dispute_job` by the job's client: freezes the operator's share of what was settled
/// on the job and is still inside the challenge window. Refused here, before anything
/// is sent, when another wallet signs, a dispute is already open, or the window has
/// closed (nothing left unmatured: the operator may have claimed it).
pub fn dispute_job(
    chain: &mut impl Chain,
    client: &Keypair,
    job_address: &Pubkey,
) -> Result<Disputed> {
    let current = job(chain, job_address)?;
    if current.client != client.pubkey() {
        return Err(Refused::NotTheClient {
            job: *job_address,
            client: current.client,
            signer: client.pubkey(),
            action: "dispute it",
        }
        .into());
    }
    if current.disputed_amount > 0 {
        return Err(Refused::AlreadyDisputed {
            job: *job_address,
            frozen: current.disputed_amount,
            deadline: current.dispute_deadline,
        }
        .into());
    }
    if current.settled_units == 0 {
        return Err(Refused::NothingSettled(*job_address).into());
    }
    let now = chain.clock()?.unix_timestamp;
    let open = current
        .pending
        .iter()
        .filter(|b| b.amount > 0 && b.matures_at > now)
        .count();
    if open == 0 {
        return Err(Refused::WindowClosed {
            job: *job_address,
            now,
        }
        .into());
    }
    chain.send(
        &[ix::dispute_job(
            client.pubkey(),
            *job_address,
            current.operator,
            current.mint,
        )],
        client,
        &[],
    )?;
    let after = job(chain, job_address)?;
    Ok(Disputed {
        job: *job_address,
        frozen: after.disputed_amount,
        deadline: after.dispute_deadline,
    })
}

/// An operator's earnings in one mint.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EarningsView {
    #[serde(serialize_with = "base58")]
    pub mint: Pubkey,
    /// Claimable now (matured, as of the cluster clock).
    pub claimable: u64,
    /// Still inside the challenge window.
    pub pending: u64,
    /// Frozen by disputes.
    pub frozen: u64,
    pub total_earned: u64,
    pub total_claimed: u64,
}

/// `operator earnings`: every mint the operator has earned in.
pub fn earnings(chain: &impl Chain, operator_authority: &Pubkey) -> Result<Vec<EarningsView>> {
    let operator = pda::operator(operator_authority);
    let now = chain.clock()?.unix_timestamp;
    let size = 8 + <Earnings as anchor_lang::Space>::INIT_SPACE;
    chain
        .program_accounts(
            size,
            &[Memcmp {
                offset: 8,
                bytes: operator.to_bytes().to_vec(),
            }],
        )?
        .into_iter()
        .map(|(address, account)| {
            let mut e = <Earnings as anchor_lang::AccountDeserialize>::try_deserialize(
                &mut account.data.as_slice(),
            )
            .map_err(|err| ChainError::decode("the earnings", Some(address), err))?;
            e.mature(now)?;
            Ok(EarningsView {
                mint: e.mint,
                claimable: e.claimable,
                pending: e.unmatured()?,
                frozen: e.frozen,
                total_earned: e.total_earned,
                total_claimed: e.total_claimed,
            })
        })
        .collect()
}

/// `operator claim`: pays everything matured in `mint` to the payout owner's
/// associated token account (created if missing). Returns the amount claimed.
pub fn claim(chain: &mut impl Chain, authority: &Keypair, mint: &Pubkey) -> Result<u64> {
    claim_with(chain, authority, mint, WrappedSol::Keep).map(|paid| paid.amount)
}

/// [`claim`], unwrapping a claim in wrapped SOL when `wrapped` asks and the payout
/// owner is the authority itself.
pub fn claim_with(
    chain: &mut impl Chain,
    authority: &Keypair,
    mint: &Pubkey,
    wrapped: WrappedSol,
) -> Result<Paid> {
    let mint = mint_ref(chain, mint)?;
    let operator: Operator = chain
        .anchor_account(&pda::operator(&authority.pubkey()))?
        .ok_or(Missing::Operator(authority.pubkey()))?;
    let earnings_address = pda::earnings(&pda::operator(&authority.pubkey()), &mint.mint);
    let mut ledger: Earnings = chain
        .anchor_account(&earnings_address)?
        .ok_or(Missing::Earnings(mint.mint))?;
    ledger.mature(chain.clock()?.unix_timestamp)?;
    if ledger.claimable == 0 {
        return Err(Refused::NothingToClaim {
            pending: ledger.unmatured().unwrap_or(0),
        }
        .into());
    }
    let (payout, create) =
        token_account_for(chain, &authority.pubkey(), &operator.payout_owner, mint)?;
    let mut instructions: Vec<Instruction> = create.into_iter().collect();
    instructions.push(ix::claim(authority.pubkey(), mint, payout));
    send_payout(
        chain,
        authority,
        instructions,
        (mint, &operator.payout_owner, ledger.claimable),
        wrapped,
    )
}

/// One UTC day of on-chain revenue in one mint.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RevenueView {
    /// Days since 1970-01-01.
    pub day: u32,
    /// `YYYY-MM-DD`.
    pub date: String,
    pub gross: u64,
    pub fees: u64,
    pub operator_net: u64,
    pub units: u64,
    /// Output tokens within `units`.
    pub output_units: u64,
    pub receipts: u64,
    pub jobs_started: u64,
}

/// `tally revenue`: the last `days` UTC days of revenue in `mint` (days with none are
/// left out).
pub fn revenue(chain: &impl Chain, mint: &Pubkey, days: u32) -> Result<Vec<RevenueView>> {
    let today = tally::state::utc_day(chain.clock()?.unix_timestamp);
    let mut out = Vec::new();
    for day in today.saturating_sub(days.saturating_sub(1))..=today {
        let account = chain.account(&pda::revenue(mint, day))?;
        if let Some(r) = account
            .filter(|a| a.owner == tally::ID)
            .and_then(|a| decode_revenue(&a.data))
        {
            out.push(RevenueView {
                day,
                date: civil_date(day),
                gross: r.gross,
                fees: r.fees,
                operator_net: r.gross.saturating_sub(r.fees),
                units: r.units,
                output_units: r.output_units,
                receipts: r.receipts,
                jobs_started: r.jobs_started,
            });
        }
    }
    Ok(out)
}

/// Decodes a revenue day; one of the older layout (v1, before `upgrade_account`)
/// reads with no output units.
pub fn decode_revenue(data: &[u8]) -> Option<Revenue> {
    use anchor_lang::AccountDeserialize;
    let mut padded = data.to_vec();
    if data.len() == Revenue::V1_ACCOUNT_SIZE {
        padded.resize(8 + <Revenue as anchor_lang::Space>::INIT_SPACE, 0);
    }
    Revenue::try_deserialize(&mut padded.as_slice()).ok()
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01), proleptic Gregorian.
pub fn civil_date(day: u32) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = i64::from(day) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::civil_date;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_782), "2026-11-25");
        assert_eq!(civil_date(11_016), "2000-02-29");
    }
}
