//! The one payout rule, used by the program, the SDK and the oracle.
//!
//! Prices are in the mint's base units per million units ([`PRICE_SCALE`]), as every
//! inference API quotes them: "$0.15 / 1M input tokens" is 150,000 per 1M in USDC (6
//! decimals), a price a per-token integer could not hold (0.15 base units). Token jobs
//! price input (prompt) and output (completion) tokens separately; other unit kinds
//! (GPU-seconds, requests, frames) have one price and no output units.
//!
//! Rounding, in the order applied:
//! 1. `owed(usage) = floor((input × input_price + output × output_price) / 10^6)`,
//!    exact in u128, over the job's *cumulative* usage. A receipt is due
//!    `owed(new) − owed(settled)`: the floors telescope, so however usage is split
//!    into receipts the job pays `owed(final usage)` to the base unit, never a
//!    rounding more.
//! 2. `gross = min(due, escrow_left)`: a job never pays more than its escrow holds;
//!    usage beyond it is recorded (settled units) but unpaid.
//! 3. `fee = floor(gross × fee_bps / 10_000)`: the fee rounds down, in the operator's
//!    favour, so a tiny receipt may carry no fee at all.
//! 4. `net = gross − fee` goes to the operator.

use anchor_lang::prelude::*;

use crate::errors::TallyError;
use crate::state::BPS_DENOMINATOR;

/// Prices are per this many units.
pub const PRICE_SCALE: u64 = 1_000_000;

/// A job's prices, base units per [`PRICE_SCALE`] units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prices {
    /// Per million input (prompt) tokens, or per million units of any other kind.
    pub input: u64,
    /// Per million output (completion) tokens; 0 for kinds that are not tokens.
    pub output: u64,
}

/// Cumulative usage of a job: all units, and how many of them are output tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every unit (input + output tokens for token jobs).
    pub units: u64,
    /// Output (completion) tokens within `units`; 0 for other kinds.
    pub output: u64,
}

impl Usage {
    /// Input units: `units − output`.
    pub fn input(&self) -> Result<u64> {
        self.units
            .checked_sub(self.output)
            .ok_or_else(|| TallyError::OutputExceedsUnits.at_caller())
    }
}

/// The amounts one receipt moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Payout {
    /// Taken out of escrow.
    pub gross: u64,
    /// Protocol fee within `gross`.
    pub fee: u64,
    /// Operator's share: `gross − fee`.
    pub net: u64,
    /// True when escrow could not cover what the usage is due.
    pub capped: bool,
}

/// What `usage` costs in all at `prices`, rounded down (step 1 of the module docs).
pub fn amount_owed(prices: Prices, usage: Usage) -> Result<u128> {
    let input = usage.input()?;
    // Almost always everything fits in u64, which SBF divides natively (a u128
    // division is a library call of several hundred CU); the same value either way.
    if let Some(total) = mul_u64(input, prices.input)
        .zip(mul_u64(usage.output, prices.output))
        .and_then(|(i, o)| i.checked_add(o))
    {
        return Ok(u128::from(
            total
                .checked_div(PRICE_SCALE)
                .ok_or(TallyError::AmountOverflow)?,
        ));
    }
    let input = u128::from(input)
        .checked_mul(u128::from(prices.input))
        .ok_or(TallyError::AmountOverflow)?;
    let output = u128::from(usage.output)
        .checked_mul(u128::from(prices.output))
        .ok_or(TallyError::AmountOverflow)?;
    Ok(input
        .checked_add(output)
        .ok_or(TallyError::AmountOverflow)?
        .checked_div(u128::from(PRICE_SCALE))
        .ok_or(TallyError::AmountOverflow)?)
}

/// The payout of a receipt taking a job from `settled` to `usage` (see the module
/// docs for the rounding rules). Fails if the usage owes less than what was settled.
pub fn compute_payout(
    prices: Prices,
    settled: Usage,
    usage: Usage,
    escrow_left: u64,
    fee_bps: u16,
) -> Result<Payout> {
    ensure!(fee_bps <= BPS_DENOMINATOR, TallyError::FeeTooHigh);
    let due = amount_owed(prices, usage)?
        .checked_sub(amount_owed(prices, settled)?)
        .ok_or(TallyError::NonIncreasingUsage)?;
    let capped = due > u128::from(escrow_left);
    let gross = if capped {
        escrow_left
    } else {
        u64::try_from(due).map_err(|_| TallyError::AmountOverflow)?
    };
    let fee = fee_of(gross, fee_bps)?;
    let net = gross.checked_sub(fee).ok_or(TallyError::AmountOverflow)?;
    Ok(Payout {
        gross,
        fee,
        net,
        capped,
    })
}

/// `a × b` unless it overflows. Factors below 2^32 (prices and usage almost always)
/// multiply with no overflow check: SBF has no high multiply, so `checked_mul` on
/// u64 is a 128-bit library multiplication (`__multi3`, ~40 CU) every time.
fn mul_u64(a: u64, b: u64) -> Option<u64> {
    if (a | b) >> 32 == 0 {
        // Both below 2^32: the product is below 2^64.
        Some(a.wrapping_mul(b))
    } else {
        a.checked_mul(b)
    }
}

/// `floor(gross × fee_bps / 10_000)`: in u64 whenever the product fits (gross below
/// 1.8 × 10^15 base units), as SBF divides u64 natively and u128 in a library call
/// of a few hundred CU; the same value either way.
fn fee_of(gross: u64, fee_bps: u16) -> Result<u64> {
    let bps = u64::from(fee_bps);
    let denominator = u64::from(BPS_DENOMINATOR);
    if let Some(product) = mul_u64(gross, bps) {
        return product
            .checked_div(denominator)
            .ok_or_else(|| TallyError::AmountOverflow.at_caller());
    }
    let fee = u128::from(gross)
        .checked_mul(u128::from(bps))
        .and_then(|p| p.checked_div(u128::from(denominator)))
        .ok_or(TallyError::AmountOverflow)?;
    u64::try_from(fee).map_err(|_| TallyError::AmountOverflow.at_caller())
}

/// The deposit a job of `max_units` needs: every unit at the higher of its prices,
/// rounded down like [`amount_owed`] (so it covers any mix of `max_units`).
pub fn deposit_for(prices: Prices, max_units: u64) -> Result<u64> {
    let top = Prices {
        input: prices.input.max(prices.output),
        output: 0,
    };
    let owed = amount_owed(
        top,
        Usage {
            units: max_units,
            output: 0,
        },
    )?;
    u64::try_from(owed).map_err(|_| TallyError::AmountOverflow.at_caller())
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn flat(per_unit: u64) -> Prices {
        Prices {
            input: per_unit * PRICE_SCALE,
            output: per_unit * PRICE_SCALE,
        }
    }

    fn used(units: u64, output: u64) -> Usage {
        Usage { units, output }
    }

    #[test]
    fn fee_rounds_down_and_net_plus_fee_is_gross() {
        let p = compute_payout(flat(3), used(0, 0), used(7, 0), u64::MAX, 250).unwrap();
        assert_eq!((p.gross, p.fee, p.net, p.capped), (21, 0, 21, false));
        let p = compute_payout(flat(10), used(0, 0), used(1_234, 34), u64::MAX, 250).unwrap();
        assert_eq!((p.gross, p.fee, p.net), (12_340, 308, 12_032));
        assert_eq!(p.fee + p.net, p.gross);
    }

    #[test]
    fn input_and_output_are_priced_apart_per_million() {
        // $0.15 / 1M input and $0.60 / 1M output, USDC base units.
        let prices = Prices {
            input: 150_000,
            output: 600_000,
        };
        // 2M prompt + 1M completion tokens: 0.30 + 0.60 = $0.90.
        let p = compute_payout(prices, used(0, 0), used(3_000_000, 1_000_000), u64::MAX, 0);
        assert_eq!(p.unwrap().gross, 900_000);
    }

    #[test]
    fn rounding_never_drifts_however_usage_is_split() {
        let prices = Prices {
            input: 150_000,
            output: 600_000,
        };
        // One token at a time: each alone owes a fraction of a base unit.
        let mut settled = used(0, 0);
        let mut paid = 0u64;
        for step in 1..=10_000u64 {
            let usage = used(step * 3, step);
            paid += compute_payout(prices, settled, usage, u64::MAX, 0)
                .unwrap()
                .gross;
            settled = usage;
        }
        assert_eq!(u128::from(paid), amount_owed(prices, settled).unwrap());
        assert_eq!(paid, (20_000 * 150_000 + 10_000 * 600_000) / 1_000_000);
    }

    #[test]
    fn the_u64_and_u128_paths_agree_at_the_boundary() {
        let prices = Prices {
            input: 3_000_000,
            output: 7_000_001,
        };
        for units in [u64::MAX / 7_000_001 - 1, u64::MAX / 3_000_000 + 5, u64::MAX] {
            let usage = used(units, units / 3);
            let exact = (u128::from(units - units / 3) * 3_000_000
                + u128::from(units / 3) * 7_000_001)
                / 1_000_000;
            assert_eq!(amount_owed(prices, usage).unwrap(), exact);
        }
    }

    #[test]
    fn the_short_multiplication_agrees_with_checked_mul() {
        let edges = [
            0,
            1,
            2,
            u64::from(u32::MAX) - 1,
            u64::from(u32::MAX),
            1 << 32,
            (1 << 32) + 1,
            u64::MAX / 3,
            u64::MAX,
        ];
        for a in edges {
            for b in edges {
                assert_eq!(mul_u64(a, b), a.checked_mul(b), "{a} × {b}");
            }
        }
    }

    #[test]
    fn the_fee_is_the_same_on_both_sides_of_the_u64_path() {
        for gross in [
            0,
            1,
            9_999,
            10_001,
            u64::MAX / 10_000,
            u64::MAX / 10_000 + 1,
            u64::MAX,
        ] {
            for bps in [0u16, 1, 250, 9_999, 10_000] {
                let exact = u128::from(gross) * u128::from(bps) / 10_000;
                assert_eq!(
                    u128::from(fee_of(gross, bps).unwrap()),
                    exact,
                    "{gross} × {bps}"
                );
            }
        }
    }

    #[test]
    fn gross_is_capped_by_escrow_without_overflow() {
        let max = Prices {
            input: u64::MAX,
            output: u64::MAX,
        };
        let p = compute_payout(max, used(0, 0), used(u64::MAX, 7), 1_000, 1_000).unwrap();
        assert_eq!((p.gross, p.fee, p.net, p.capped), (1_000, 100, 900, true));
        let p = compute_payout(flat(5), used(0, 0), used(0, 0), 1_000, 1_000).unwrap();
        assert_eq!((p.gross, p.capped), (0, false));
    }

    #[test]
    fn usage_that_owes_less_than_settled_is_refused() {
        let prices = Prices {
            input: 1_000_000,
            output: 4_000_000,
        };
        // Same units, fewer of them output: cheaper than what was settled.
        assert!(compute_payout(prices, used(10, 5), used(10, 4), u64::MAX, 0).is_err());
        // More output than units.
        assert!(compute_payout(prices, used(0, 0), used(3, 4), u64::MAX, 0).is_err());
    }

    #[test]
    fn deposit_covers_every_unit_at_the_higher_price() {
        let prices = Prices {
            input: 150_000,
            output: 600_000,
        };
        assert_eq!(deposit_for(prices, 1_000_000).unwrap(), 600_000);
        assert_eq!(deposit_for(flat(20), 100_000).unwrap(), 2_000_000);
        assert!(deposit_for(flat(u64::MAX / PRICE_SCALE), u64::MAX).is_err());
    }
}
