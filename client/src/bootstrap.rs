//! One deployment bootstrap over any [`Chain`] — the embedded one (LiteSVM) or a
//! cluster over RPC — for `tally demo`, the end-to-end tests and the local-validator
//! tier: the people of a deployment and their lamports, a stablecoin mint, the
//! config, the accepted mint and a registered operator; then a funded client's jobs,
//! and completing them with the receipt restating what they settled.
use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::program_pack::Pack;
use anchor_lang::solana_program::system_instruction;
use anchor_spl::token_2022::spl_token_2022;
use solana_keypair::Keypair;
use solana_signer::Signer;

use crate::chain::{Chain, ChainError, Confirmed};
use crate::ix::{self, Attestation, MintRef};
use crate::{ops, InitializeConfigArgs, OpenJobArgs, OperatorArgs};

type Result<T> = std::result::Result<T, ChainError>;

/// The people of a deployment besides its admin, each with a fresh key.
pub struct Cast {
    pub treasury: Keypair,
    pub arbiter: Keypair,
    pub oracle: Keypair,
    pub operator: Keypair,
    pub client: Keypair,
    pub mint_authority: Keypair,
}

impl Cast {
    pub fn new() -> Self {
        Self {
            treasury: Keypair::new(),
            arbiter: Keypair::new(),
            oracle: Keypair::new(),
            operator: Keypair::new(),
            client: Keypair::new(),
            mint_authority: Keypair::new(),
        }
    }

    /// Moves `lamports` from `payer` to each of the people who sign (the oracle, the
    /// operator, the client, the mint authority, the treasury), in one transaction.
    pub fn fund(&self, chain: &mut impl Chain, payer: &Keypair, lamports: u64) -> Result<()> {
        let transfers: Vec<_> = [
            &self.oracle,
            &self.operator,
            &self.client,
            &self.mint_authority,
            &self.treasury,
        ]
        .iter()
        .map(|k| system_instruction::transfer(&payer.pubkey(), &k.pubkey(), lamports))
        .collect();
        chain.send(&transfers, payer, &[])?;
        Ok(())
    }

    /// The config's settings with this cast: `fee_bps`, the challenge window and the
    /// expiry grace in seconds, a day's dispute timeout, the oracle alone (1-of-1).
    pub fn settings(
        &self,
        fee_bps: u16,
        challenge_window_secs: u32,
        expiry_grace_secs: u32,
    ) -> InitializeConfigArgs {
        InitializeConfigArgs {
            treasury: self.treasury.pubkey(),
            arbiter: self.arbiter.pubkey(),
            fee_bps,
            challenge_window_secs,
            expiry_grace_secs,
            dispute_timeout_secs: 86_400,
            oracles: vec![self.oracle.pubkey()],
            oracle_threshold: 1,
        }
    }
}

impl Default for Cast {
    fn default() -> Self {
        Self::new()
    }
}

/// A new SPL Token mint of `decimals`, `authority` minting, `payer` paying its rent.
pub fn create_mint(
    chain: &mut impl Chain,
    payer: &Keypair,
    authority: &Pubkey,
    decimals: u8,
) -> Result<MintRef> {
    let mint = Keypair::new();
    let space = spl_token_2022::state::Mint::LEN;
    let rent = chain.minimum_balance_for_rent_exemption(space)?;
    let initialize = spl_token_2022::instruction::initialize_mint2(
        &anchor_spl::token::ID,
        &mint.pubkey(),
        authority,
        None,
        decimals,
    )
    .map_err(|e| ChainError::instruction("initialize_mint2", e))?;
    chain.send(
        &[
            system_instruction::create_account(
                &payer.pubkey(),
                &mint.pubkey(),
                rent,
                space as u64,
                &anchor_spl::token::ID,
            ),
            initialize,
        ],
        payer,
        &[&mint],
    )?;
    Ok(MintRef {
        mint: mint.pubkey(),
        token_program: anchor_spl::token::ID,
    })
}

/// Mints `amount` of `mint` to `owner`'s associated token account (created first if
/// missing); `payer` pays, `authority` signs the mint. Returns that account.
pub fn mint_tokens(
    chain: &mut impl Chain,
    mint: MintRef,
    authority: &Keypair,
    payer: &Keypair,
    owner: &Pubkey,
    amount: u64,
) -> Result<Pubkey> {
    let tokens = ops::ensure_token_account(chain, payer, owner, mint)?;
    if amount == 0 {
        return Ok(tokens);
    }
    let mint_to = spl_token_2022::instruction::mint_to(
        &mint.token_program,
        &mint.mint,
        &tokens,
        &authority.pubkey(),
        &[],
        amount,
    )
    .map_err(|e| ChainError::instruction("mint_to", e))?;
    chain.send(&[mint_to], payer, &[authority])?;
    Ok(tokens)
}

/// Configures a deployed program: a 6-decimal stablecoin (the admin paying), the
/// config (`admin` is the program's upgrade authority), the mint accepted, and the
/// cast's operator registered (paid to itself, no node keys). Returns the mint.
pub fn configure(
    chain: &mut impl Chain,
    admin: &Keypair,
    cast: &Cast,
    settings: InitializeConfigArgs,
) -> Result<MintRef> {
    let mint = create_mint(chain, admin, &cast.mint_authority.pubkey(), 6)?;
    initialize(chain, admin, settings, &[mint.mint])?;
    ops::register_operator(
        chain,
        &cast.operator,
        OperatorArgs {
            payout_owner: cast.operator.pubkey(),
            node_keys: vec![],
        },
        false,
    )?;
    Ok(mint)
}

/// Initializes the config (`admin` is the program's upgrade authority and pays) and
/// accepts each of `mints`. Returns the `initialize_config` transaction.
pub fn initialize(
    chain: &mut impl Chain,
    admin: &Keypair,
    settings: InitializeConfigArgs,
    mints: &[Pubkey],
) -> Result<Confirmed> {
    let initialized = ops::init(chain, admin, settings)?;
    for mint in mints {
        ops::add_mint(chain, admin, mint)?;
    }
    Ok(initialized)
}

/// The cast's client is funded with `funding` of `mint` and opens a job with the
/// cast's operator for each id in `ids`, on `terms` (its `job_id` replaced); returns
/// the client's token account and the jobs' addresses.
pub fn open_jobs(
    chain: &mut impl Chain,
    cast: &Cast,
    mint: MintRef,
    funding: u64,
    terms: OpenJobArgs,
    ids: impl IntoIterator<Item = u64>,
) -> Result<(Pubkey, Vec<Pubkey>)> {
    let client = &cast.client;
    let tokens = mint_tokens(
        chain,
        mint,
        &cast.mint_authority,
        client,
        &client.pubkey(),
        funding,
    )?;
    let mut jobs = Vec::new();
    for job_id in ids {
        let args = OpenJobArgs { job_id, ..terms };
        let view = ops::open_job(
            chain,
            &cast.client,
            &cast.operator.pubkey(),
            &mint.mint,
            args,
        )?;
        jobs.push(view.address);
    }
    Ok((tokens, jobs))
}

/// Completes `job` with the receipt restating what it settled (nothing more to pay:
/// every metered unit has landed), attested by `oracles` (the set's threshold of
/// them; the first pays); the rest of its escrow goes back to `client_tokens`.
/// Returns what was refunded, and the transaction.
pub fn complete_settled(
    chain: &mut impl Chain,
    oracles: &[&Keypair],
    operator_authority: &Pubkey,
    mint: MintRef,
    client_tokens: Pubkey,
    job: &Pubkey,
) -> Result<(u64, Confirmed)> {
    let Some((payer, others)) = oracles.split_first() else {
        return Err(crate::error::Invalid::NoOracles.into());
    };
    let state = ops::job(chain, job)?;
    let config = ops::config(chain)?;
    let attestation = Attestation {
        oracles: oracles.iter().map(|o| Signer::pubkey(*o)).collect(),
        oracle_set_version: config.oracle_set_version,
        day: tally::state::utc_day(chain.clock()?.unix_timestamp),
    };
    let confirmed = chain.send(
        &[ix::complete_job(
            &attestation,
            *operator_authority,
            mint,
            *job,
            state.client,
            client_tokens,
            ops::settled_receipt(&state),
        )],
        payer,
        others,
    )?;
    Ok((state.escrow_left, confirmed))
}
