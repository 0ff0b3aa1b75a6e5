//! Program-derived addresses, from the program's own seed constants.
use anchor_lang::prelude::Pubkey;
use tally::state::seeds;

fn find(seeds: &[&[u8]]) -> Pubkey {
    Pubkey::find_program_address(seeds, &tally::ID).0
}

/// The singleton config.
pub fn config() -> Pubkey {
    find(&[seeds::CONFIG])
}

/// The vault ledger of `mint`.
pub fn vault(mint: &Pubkey) -> Pubkey {
    find(&[seeds::VAULT, mint.as_ref()])
}

/// The token account holding `mint`'s escrow.
pub fn vault_tokens(mint: &Pubkey) -> Pubkey {
    find(&[seeds::VAULT_TOKENS, mint.as_ref()])
}

/// The operator registered by `authority`.
pub fn operator(authority: &Pubkey) -> Pubkey {
    find(&[seeds::OPERATOR, authority.as_ref()])
}

/// An operator's earnings in `mint` (`operator` is the operator PDA).
pub fn earnings(operator: &Pubkey, mint: &Pubkey) -> Pubkey {
    find(&[seeds::EARNINGS, operator.as_ref(), mint.as_ref()])
}

/// `client`'s job ids ([`tally::state::ClientJobs`]).
pub fn client_jobs(client: &Pubkey) -> Pubkey {
    find(&[seeds::CLIENT_JOBS, client.as_ref()])
}

/// Job `job_id` of `client`.
pub fn job(client: &Pubkey, job_id: u64) -> Pubkey {
    find(&[seeds::JOB, client.as_ref(), &job_id.to_le_bytes()])
}

/// Revenue of `mint` on UTC day `day` (see [`tally::state::utc_day`]).
pub fn revenue(mint: &Pubkey, day: u32) -> Pubkey {
    find(&[seeds::REVENUE, mint.as_ref(), &day.to_le_bytes()])
}

/// The program's ProgramData account (upgradeable loader).
pub fn program_data() -> Pubkey {
    Pubkey::find_program_address(
        &[tally::ID.as_ref()],
        &anchor_lang::solana_program::bpf_loader_upgradeable::ID,
    )
    .0
}

/// The associated token account of `owner` for `mint` under `token_program`.
pub fn associated_token(owner: &Pubkey, mint: &Pubkey, token_program: &Pubkey) -> Pubkey {
    anchor_spl::associated_token::get_associated_token_address_with_program_id(
        owner,
        mint,
        token_program,
    )
}
