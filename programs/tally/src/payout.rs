//! The one payout rule, used by the program, the SDK and the oracle.
//!
//! Rounding, in the order applied:
//! 1. `owed = unit_price × units`, exact, in u128 (cannot overflow).
//! 2. `gross = min(owed, escrow_left)`: a job never pays more than its escrow holds;
//!    usage beyond it is recorded (settled units) but unpaid.
//! 3. `fee = floor(gross × fee_bps / 10_000)`: the fee rounds down, in the operator's
//!    favour, so a tiny receipt may carry no fee at all.
//! 4. `net = gross − fee` goes to the operator.

use anchor_lang::prelude::*;

use crate::errors::TallyError;
use crate::state::BPS_DENOMINATOR;

/// The amounts one receipt moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Payout {
    /// Taken out of escrow.
    pub gross: u64,
    /// Protocol fee within `gross`.
    pub fee: u64,
    /// Operator's share: `gross − fee`.
    pub net: u64,
    /// True when escrow could not cover `unit_price × units`.
    pub capped: bool,
}

/// Computes a payout (see the module docs for the rounding rules).
pub fn compute_payout(
    unit_price: u64,
    units: u64,
    escrow_left: u64,
    fee_bps: u16,
) -> Result<Payout> {
    require!(fee_bps <= BPS_DENOMINATOR, TallyError::FeeTooHigh);
    let owed = u128::from(unit_price)
        .checked_mul(u128::from(units))
        .ok_or(TallyError::AmountOverflow)?;
    let capped = owed > u128::from(escrow_left);
    let gross = if capped {
        escrow_left
    } else {
        u64::try_from(owed).map_err(|_| TallyError::AmountOverflow)?
    };
    let fee = u128::from(gross)
        .checked_mul(u128::from(fee_bps))
        .ok_or(TallyError::AmountOverflow)?
        .checked_div(u128::from(BPS_DENOMINATOR))
        .ok_or(TallyError::AmountOverflow)?;
    let fee = u64::try_from(fee).map_err(|_| TallyError::AmountOverflow)?;
    let net = gross.checked_sub(fee).ok_or(TallyError::AmountOverflow)?;
    Ok(Payout {
        gross,
        fee,
        net,
        capped,
    })
}

/// `unit_price × max_units`, the deposit a job of `max_units` needs.
pub fn deposit_for(unit_price: u64, max_units: u64) -> Result<u64> {
    unit_price
        .checked_mul(max_units)
        .ok_or_else(|| error!(TallyError::AmountOverflow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fee_rounds_down_and_net_plus_fee_is_gross() {
        let p = compute_payout(3, 7, u64::MAX, 250).unwrap();
        assert_eq!((p.gross, p.fee, p.net, p.capped), (21, 0, 21, false));
        let p = compute_payout(10, 1_234, u64::MAX, 250).unwrap();
        assert_eq!((p.gross, p.fee, p.net), (12_340, 308, 12_032));
        assert_eq!(p.fee + p.net, p.gross);
    }

    #[test]
    fn gross_is_capped_by_escrow_without_overflow() {
        let p = compute_payout(u64::MAX, u64::MAX, 1_000, 1_000).unwrap();
        assert_eq!((p.gross, p.fee, p.net, p.capped), (1_000, 100, 900, true));
        let p = compute_payout(5, 0, 1_000, 1_000).unwrap();
        assert_eq!((p.gross, p.capped), (0, false));
    }

    #[test]
    fn deposit_overflow_is_an_error() {
        assert!(deposit_for(u64::MAX, 2).is_err());
        assert_eq!(deposit_for(20, 100_000).unwrap(), 2_000_000);
    }
}
