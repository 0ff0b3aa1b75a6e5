//! Amounts as people read and type them: in a mint's tokens, with its decimals
//! (`2.5` SOL is 2,500,000,000 lamports; `0.15` USDC is 150,000 base units). The chain
//! and JSON output keep base units; these convert at the edges, exactly (no floats).

/// `amount` base units as tokens of a mint with `decimals`: every decimal written out
/// (`format(2_000_000, 6)` is `2.000000`), so columns line up and nothing reads as
/// rounded.
pub fn format(amount: u64, decimals: u8) -> String {
    let decimals = usize::from(decimals);
    if decimals == 0 {
        return amount.to_string();
    }
    let digits = format!("{amount:0>width$}", width = decimals + 1);
    let (whole, fraction) = digits.split_at(digits.len() - decimals);
    format!("{whole}.{fraction}")
}

/// Why a typed amount cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("`{0}` is not an amount: write tokens like 2, 0.5 or 0.000015")]
    NotANumber(String),
    #[error("`{text}` has more decimals than the mint's {decimals}: its smallest unit is {}", format(1, *decimals))]
    TooPrecise { text: String, decimals: u8 },
    #[error("`{0}` is more than a u64 of base units can hold")]
    TooLarge(String),
}

/// Tokens as typed (`2`, `0.5`, `.25`, `1_000`) into base units of a mint with
/// `decimals`. Refuses signs, exponents and more fractional digits than the mint has
/// (they would be silently rounded away).
pub fn parse(text: &str, decimals: u8) -> Result<u64, AmountError> {
    let clean: String = text.trim().chars().filter(|c| *c != '_').collect();
    let (whole, fraction) = clean.split_once('.').unwrap_or((clean.as_str(), ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(AmountError::NotANumber(text.to_string()));
    }
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > usize::from(decimals) {
        return Err(AmountError::TooPrecise {
            text: text.to_string(),
            decimals,
        });
    }
    let too_large = || AmountError::TooLarge(text.to_string());
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let padded = format!("{fraction:0<width$}", width = usize::from(decimals));
    let fraction: u128 = if padded.is_empty() {
        0
    } else {
        padded.parse().map_err(|_| too_large())?
    };
    let whole = match whole {
        0 => Some(0),
        w => 10u128
            .checked_pow(u32::from(decimals))
            .and_then(|scale| w.checked_mul(scale)),
    };
    whole
        .and_then(|w| w.checked_add(fraction))
        .and_then(|total| u64::try_from(total).ok())
        .ok_or_else(too_large)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formats_every_decimal() {
        assert_eq!(format(2_000_000, 6), "2.000000");
        assert_eq!(format(1_034, 9), "0.000001034");
        assert_eq!(format(0, 2), "0.00");
        assert_eq!(format(42, 0), "42");
        assert_eq!(format(u64::MAX, 9), "18446744073.709551615");
        assert_eq!(format(u64::MAX, 255).len(), 257);
    }

    #[test]
    fn parses_tokens_exactly() {
        assert_eq!(parse("2", 9), Ok(2_000_000_000));
        assert_eq!(parse("0.15", 6), Ok(150_000));
        assert_eq!(parse(".25", 2), Ok(25));
        assert_eq!(parse("0.000015", 6), Ok(15));
        assert_eq!(parse("1_000.5", 1), Ok(10_005));
        assert_eq!(parse("2.500000000", 6), Ok(2_500_000), "trailing zeros");
        assert_eq!(parse("7", 0), Ok(7));
        assert_eq!(parse("18446744073.709551615", 9), Ok(u64::MAX));
        assert_eq!(
            parse(&format(5, 200), 200),
            Ok(5),
            "absurd decimals still exact"
        );
        assert!(matches!(parse("1", 200), Err(AmountError::TooLarge(_))));
        for (text, decimals) in [
            ("", 6),
            (".", 6),
            ("-1", 6),
            ("1e6", 6),
            ("1.2.3", 6),
            ("abc", 6),
        ] {
            assert_eq!(
                parse(text, decimals),
                Err(AmountError::NotANumber(text.to_string())),
                "{text}"
            );
        }
        assert!(matches!(
            parse("0.0000001", 6),
            Err(AmountError::TooPrecise { decimals: 6, .. })
        ));
        assert!(parse("0.0000001", 6)
            .unwrap_err()
            .to_string()
            .contains("smallest unit is 0.000001"));
        assert!(matches!(
            parse("18446744073.709551616", 9),
            Err(AmountError::TooLarge(_))
        ));
        assert!(matches!(
            parse(&"9".repeat(60), 0),
            Err(AmountError::TooLarge(_))
        ));
    }

    #[test]
    fn round_trips() {
        for (amount, decimals) in [(0, 6), (1, 9), (123_456_789, 6), (u64::MAX, 0)] {
            assert_eq!(parse(&format(amount, decimals), decimals), Ok(amount));
        }
    }
}
