//! One event per state change and money movement (logged with `emit!`).
use anchor_lang::prelude::*;
use anchor_lang::Discriminator;

#[event]
pub struct ConfigInitialized {
    pub admin: Pubkey,
    pub treasury: Pubkey,
    pub fee_bps: u16,
    pub oracle_set_version: u32,
}

#[event]
pub struct ConfigUpdated {
    pub fee_bps: u16,
    pub treasury: Pubkey,
    pub arbiter: Pubkey,
    pub challenge_window_secs: u32,
    pub expiry_grace_secs: u32,
    pub dispute_timeout_secs: u32,
    pub paused: bool,
    pub oracle_set_version: u32,
}

#[event]
pub struct AdminTransferProposed {
    pub admin: Pubkey,
    pub pending_admin: Pubkey,
}

#[event]
pub struct AdminTransferAccepted {
    pub previous_admin: Pubkey,
    pub admin: Pubkey,
}

#[event]
pub struct MintAccepted {
    pub mint: Pubkey,
    pub vault: Pubkey,
    pub token_program: Pubkey,
}

#[event]
pub struct OperatorRegistered {
    pub operator: Pubkey,
    pub authority: Pubkey,
    pub payout_owner: Pubkey,
}

#[event]
pub struct OperatorUpdated {
    pub operator: Pubkey,
    pub payout_owner: Pubkey,
    pub node_keys: Vec<Pubkey>,
}

#[event]
pub struct JobOpened {
    pub job: Pubkey,
    pub client: Pubkey,
    pub operator: Pubkey,
    pub mint: Pubkey,
    pub job_id: u64,
    pub unit_kind: u8,
    /// Per million input tokens (or units), base units of the mint.
    pub input_price: u64,
    /// Per million output tokens.
    pub output_price: u64,
    /// sha256 of the model's name; zero: any model.
    pub model: [u8; 32],
    pub max_units: u64,
    pub deposit: u64,
    pub deadline: i64,
    pub spend_cap_per_hour: u64,
}

#[event]
pub struct JobToppedUp {
    pub job: Pubkey,
    pub amount: u64,
    pub escrow_left: u64,
}

/// `open_ledgers` created an operator's earnings ledger and/or a revenue day.
#[event]
pub struct LedgersOpened {
    pub operator: Pubkey,
    pub mint: Pubkey,
    pub day: u32,
    pub earnings_created: bool,
    pub revenue_created: bool,
}

#[event]
pub struct ReceiptSettled {
    pub job: Pubkey,
    pub seq: u64,
    pub cumulative_units: u64,
    pub cumulative_output: u64,
    pub units: u64,
    /// Output tokens within `units`.
    pub output_units: u64,
    pub gross: u64,
    pub fee: u64,
    pub net: u64,
    pub escrow_left: u64,
    pub capped: bool,
    pub invoice_hash: [u8; 32],
}

/// [`ReceiptSettled`] as it is logged: its discriminator, then its fields in Borsh
/// (integers little endian, `bool` one byte), with no padding.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct ReceiptSettledLog {
    discriminator: [u8; 8],
    job: [u8; 32],
    seq: [u8; 8],
    cumulative_units: [u8; 8],
    cumulative_output: [u8; 8],
    units: [u8; 8],
    output_units: [u8; 8],
    gross: [u8; 8],
    fee: [u8; 8],
    net: [u8; 8],
    escrow_left: [u8; 8],
    capped: u8,
    invoice_hash: [u8; 32],
}

const fn discriminator8(bytes: &[u8]) -> [u8; 8] {
    match bytes.first_chunk::<8>() {
        Some(first) if bytes.len() == 8 => *first,
        _ => panic!("an Anchor event discriminator is 8 bytes"),
    }
}

impl ReceiptSettled {
    const DISCRIMINATOR8: [u8; 8] = discriminator8(Self::DISCRIMINATOR);

    /// The bytes `emit!` would log, exactly (`anchor_lang::Event::data`), built on
    /// the stack: settle logs one per receipt, and the generic path (a 256-byte heap
    /// vector grown field by field) cost about 300 CU of the ~700 each event took.
    pub fn log_bytes(&self) -> [u8; std::mem::size_of::<ReceiptSettledLog>()] {
        bytemuck::cast(ReceiptSettledLog {
            discriminator: Self::DISCRIMINATOR8,
            job: self.job.to_bytes(),
            seq: self.seq.to_le_bytes(),
            cumulative_units: self.cumulative_units.to_le_bytes(),
            cumulative_output: self.cumulative_output.to_le_bytes(),
            units: self.units.to_le_bytes(),
            output_units: self.output_units.to_le_bytes(),
            gross: self.gross.to_le_bytes(),
            fee: self.fee.to_le_bytes(),
            net: self.net.to_le_bytes(),
            escrow_left: self.escrow_left.to_le_bytes(),
            capped: u8::from(self.capped),
            invoice_hash: self.invoice_hash,
        })
    }

    /// Logs the event (`Program data: …`), as `emit!` does.
    pub fn log(&self) {
        anchor_lang::solana_program::log::sol_log_data(&[&self.log_bytes()]);
    }
}

/// A job ended (completed, cancelled or expired) and its escrow left was refunded.
/// Its account is closed in the same instruction, unless the operator's share of it
/// is still inside the challenge window: then it stays, disputable, until
/// `close_job` ([`JobAccountClosed`]).
#[event]
pub struct JobClosed {
    pub job: Pubkey,
    pub client: Pubkey,
    /// 2 completed, 3 cancelled, 4 expired (see `JobStatus`).
    pub status: u8,
    pub refunded: u64,
    pub settled_units: u64,
    pub settled_output: u64,
    pub settled_gross: u64,
}

/// `close_job` closed an ended job's account (rent back to its client) once its
/// share had left the challenge window.
#[event]
pub struct JobAccountClosed {
    pub job: Pubkey,
    pub client: Pubkey,
    /// 2 completed, 4 expired.
    pub status: u8,
}

#[event]
pub struct EarningsClaimed {
    pub operator: Pubkey,
    pub mint: Pubkey,
    pub amount: u64,
    pub destination: Pubkey,
}

#[event]
pub struct FeesWithdrawn {
    pub mint: Pubkey,
    pub amount: u64,
    pub destination: Pubkey,
}

/// A client disputed a job's settled amounts still inside the challenge window.
#[event]
pub struct DisputeOpened {
    pub job: Pubkey,
    pub client: Pubkey,
    /// Operator earnings frozen.
    pub amount: u64,
    /// After this, anyone may close the dispute with the default outcome.
    pub deadline: i64,
}

/// A dispute ended: `to_client` refunded, `to_operator` released to its earnings.
#[event]
pub struct DisputeResolved {
    pub job: Pubkey,
    pub to_client: u64,
    pub to_operator: u64,
    /// False when closed after the timeout with the default outcome.
    pub by_arbiter: bool,
}

/// `upgrade_account` brought an account of an older layout up to date.
#[event]
pub struct AccountUpgraded {
    pub account: Pubkey,
    /// "job" or "revenue".
    pub kind: String,
    pub from_version: u8,
    pub to_version: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receipt_event_is_logged_as_emit_would() {
        let event = ReceiptSettled {
            job: Pubkey::new_from_array([7; 32]),
            seq: 3,
            cumulative_units: 1_400_000,
            cumulative_output: u64::MAX,
            units: 1 << 40,
            output_units: 350_000,
            gross: 420,
            fee: 10,
            net: 410,
            escrow_left: 0,
            capped: true,
            invoice_hash: core::array::from_fn(|i| u8::try_from(i).unwrap_or(0)),
        };
        assert_eq!(event.log_bytes().to_vec(), anchor_lang::Event::data(&event));
        let uncapped = ReceiptSettled {
            capped: false,
            ..event
        };
        assert_eq!(
            uncapped.log_bytes().to_vec(),
            anchor_lang::Event::data(&uncapped)
        );
    }
}
