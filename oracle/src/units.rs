//! How usage records turn into a job's units, per unit kind. Cumulative units are
//! computed from totals (never by adding rounded per-record values), so rounding never
//! drifts: GPU-seconds are `floor(total GPU ms / 1000)`.
use tally::state::UnitKind;

use crate::store::UsageRecord;

/// Running totals of a job's records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Input + output tokens.
    pub tokens: u64,
    /// Output (completion) tokens within `tokens`.
    pub output_tokens: u64,
    pub requests: u64,
    pub gpu_ms: u64,
}

impl Totals {
    pub fn add(&mut self, r: &UsageRecord) {
        self.tokens = self
            .tokens
            .saturating_add(r.prompt_tokens.saturating_add(r.completion_tokens));
        self.output_tokens = self.output_tokens.saturating_add(r.completion_tokens);
        self.requests = self.requests.saturating_add(1);
        self.gpu_ms = self.gpu_ms.saturating_add(r.gpu_ms);
    }

    /// Adds other totals.
    pub fn merge(&mut self, other: &Self) {
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.requests = self.requests.saturating_add(other.requests);
        self.gpu_ms = self.gpu_ms.saturating_add(other.gpu_ms);
    }

    /// The totals of one record.
    pub fn of(record: &UsageRecord) -> Self {
        let mut totals = Self::default();
        totals.add(record);
        totals
    }

    /// The cumulative units these totals bill under `kind`. Frames are reported one
    /// record per frame.
    pub fn units(&self, kind: UnitKind) -> u64 {
        match kind {
            UnitKind::Tokens => self.tokens,
            UnitKind::GpuSeconds => self.gpu_ms / 1_000,
            UnitKind::Requests | UnitKind::Frames => self.requests,
        }
    }

    /// The output tokens within [`Totals::units`] under `kind` (0 unless tokens).
    pub fn output(&self, kind: UnitKind) -> u64 {
        match kind {
            UnitKind::Tokens => self.output_tokens,
            _ => 0,
        }
    }
}
