//! What commands print: a JSON value and a human table of the same data.
use tally_client::ops;

use crate::args::OutputFormat;
use crate::money::Money;

/// What a command produced: a JSON value and a human table of the same data.
#[derive(Debug, Clone)]
pub struct Output {
    pub json: serde_json::Value,
    pub table: String,
}

impl Output {
    pub(crate) fn message(text: String, json: serde_json::Value) -> Self {
        Self { json, table: text }
    }

    /// The output in `format`.
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Table => self.table.clone(),
            OutputFormat::Json => serde_json::to_string_pretty(&self.json).unwrap_or_default(),
        }
    }
}

/// Aligned columns: a header row and data rows.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.iter().map(ToString::to_string).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

pub(crate) fn key_value(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A job's prices in words: its mint per million units.
fn price_text(view: &ops::JobView, money: &Money) -> String {
    let job = &view.job;
    if view.is_tokens() {
        format!(
            "{} per 1M input tokens, {} per 1M output tokens",
            money.show(job.input_price),
            money.show(job.output_price)
        )
    } else {
        format!(
            "{} per 1M {}",
            money.show(job.input_price),
            view.unit_kind_label()
        )
    }
}

pub(crate) fn job_table(view: &ops::JobView, money: &Money) -> String {
    let job = &view.job;
    key_value(&[
        ("job", view.address.to_string()),
        ("id", job.job_id.to_string()),
        ("status", view.status_label().to_string()),
        ("client", job.client.to_string()),
        ("operator", job.operator.to_string()),
        ("mint", job.mint.to_string()),
        ("unit", view.unit_kind_label().to_string()),
        ("price", price_text(view, money)),
        ("model", tally_client::model_label(&job.model)),
        ("deposited", money.show(job.deposited)),
        ("escrow left", money.show(job.escrow_left)),
        (
            "settled units",
            if view.is_tokens() {
                format!("{} ({} output)", job.settled_units, job.settled_output)
            } else {
                job.settled_units.to_string()
            },
        ),
        ("settled gross", money.show(job.settled_gross)),
        ("receipts", job.receipts.to_string()),
        ("deadline", job.deadline.to_string()),
        ("disputed", money.show(job.disputed_amount)),
    ])
}

/// The per-day revenue table (`tally revenue`, `tally demo`).
pub fn revenue_table(days: &[ops::RevenueView], money: &Money) -> String {
    let rows: Vec<Vec<String>> = days
        .iter()
        .map(|d| {
            vec![
                d.date.clone(),
                money.show(d.gross),
                money.show(d.fees),
                money.show(d.operator_net),
                d.units.to_string(),
                d.output_units.to_string(),
                d.receipts.to_string(),
                d.jobs_started.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "day (UTC)",
            "revenue",
            "fees",
            "operators",
            "units",
            "output tokens",
            "receipts",
            "jobs started",
        ],
        &rows,
    )
}
