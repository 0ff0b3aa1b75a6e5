//! Amounts on the command line: typed and printed in a mint's tokens with its
//! decimals (`--budget 2`, "2.000000000 SOL"), or in base units with `--base-units`.
//! JSON output always carries base units, with the mint's `decimals` beside them.
use std::collections::HashMap;

use anchor_lang::prelude::Pubkey;
use tally_client::chain::{Chain, ChainError};
use tally_client::error::Invalid;
use tally_client::{amount, ops};

/// How amounts are typed and printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Units {
    /// Tokens of the mint, with its decimals (the default).
    #[default]
    Tokens,
    /// The mint's base units (integers), as the chain stores them.
    Base,
}

/// One mint's amounts as a person reads and types them.
#[derive(Debug, Clone)]
pub struct Money {
    pub mint: Pubkey,
    pub decimals: u8,
    units: Units,
}

impl Money {
    /// `mint`'s decimals, read from the chain.
    pub fn of(chain: &impl Chain, mint: &Pubkey, units: Units) -> Result<Self, ChainError> {
        Ok(Self {
            mint: *mint,
            decimals: ops::decimals(chain, mint)?,
            units,
        })
    }

    /// `text` (an `--option`'s value, named `what` in errors) in base units.
    pub fn parse(&self, text: &str, what: &'static str) -> Result<u64, ChainError> {
        let decimals = match self.units {
            Units::Tokens => self.decimals,
            Units::Base => 0,
        };
        amount::parse(text, decimals).map_err(|reason| {
            Invalid::Amount {
                what,
                reason: match self.units {
                    Units::Tokens => format!(
                        "{reason} (tokens of {}; --base-units for base units)",
                        self.mint
                    ),
                    Units::Base => reason.to_string(),
                },
            }
            .into()
        })
    }

    /// `amount` base units as the user reads them: `2.000000000 SOL`, `0.150000 EPjF…`
    /// (a mint without a well-known symbol goes by its address's start), or the bare
    /// integer with `--base-units`.
    pub fn show(&self, amount: u64) -> String {
        match self.units {
            Units::Base => amount.to_string(),
            Units::Tokens => format!(
                "{} {}",
                amount::format(amount, self.decimals),
                self.symbol()
            ),
        }
    }

    /// What the amounts are in: `SOL`, or the mint's address abbreviated.
    pub fn symbol(&self) -> String {
        if self.mint == ops::NATIVE_MINT {
            "SOL".to_string()
        } else {
            let text = self.mint.to_string();
            format!("{}…", &text[..4])
        }
    }
}

/// Each mint's [`Money`], read once.
#[derive(Default)]
pub struct Wallet {
    units: Units,
    known: HashMap<Pubkey, Money>,
}

impl Wallet {
    pub fn new(units: Units) -> Self {
        Self {
            units,
            known: HashMap::new(),
        }
    }

    pub fn money(&mut self, chain: &impl Chain, mint: &Pubkey) -> Result<Money, ChainError> {
        if let Some(money) = self.known.get(mint) {
            return Ok(money.clone());
        }
        let money = Money::of(chain, mint, self.units)?;
        self.known.insert(*mint, money.clone());
        Ok(money)
    }
}

/// `object` with the mint's `"decimals"` beside its base-unit amounts.
pub fn add_decimals(object: &mut serde_json::Value, decimals: u8) {
    if let Some(map) = object.as_object_mut() {
        map.insert("decimals".to_string(), decimals.into());
    }
}
