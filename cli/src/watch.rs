//! `tally job watch <JOB>`: a job live, from an account subscription on the
//! cluster's websocket (`accountSubscribe`, the PubSub API every Solana RPC node
//! serves): a line per change with its units, spend, escrow left and when the escrow
//! runs out at the rate seen while watching. Ends when the job ends or is closed.
use std::net::TcpStream;
use std::time::Instant;

use anchor_lang::prelude::Pubkey;
use base64::Engine as _;
use tally::state::{Job, JobStatus};
use tally_client::chain::RpcChain;
use tally_client::ops;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::args::OutputFormat;
use crate::error::CliError;
use crate::money::{Money, Units};

/// The websocket URL the Solana CLI derives from an RPC URL: `ws`/`wss` for
/// `http`/`https`, and the next port when one is given (8899 → 8900).
pub fn websocket_url(rpc: &str) -> Result<String, CliError> {
    let mut url = url::Url::parse(rpc).map_err(CliError::io("parse the RPC URL"))?;
    let scheme = match url.scheme() {
        "https" | "wss" => "wss",
        _ => "ws",
    };
    let port = url.port().map(|p| p.saturating_add(1));
    url.set_scheme(scheme)
        .and_then(|()| url.set_port(port))
        .map_err(|()| {
            CliError::Watch(format!("cannot make a websocket URL of {rpc}: pass --ws"))
        })?;
    Ok(url.to_string())
}

/// Watches `job` until it ends; prints a line per change (NDJSON with `--output
/// json`).
pub fn run(
    rpc: &str,
    ws: Option<&str>,
    job: &Pubkey,
    units: Units,
    format: OutputFormat,
) -> Result<bool, CliError> {
    let chain = RpcChain::new(rpc);
    let ws = match ws {
        Some(url) => url.to_string(),
        None => websocket_url(rpc)?,
    };
    // Subscribe first, then read the account: no change falls between the two.
    let mut socket = subscribe(&ws, job)?;
    let mut current = ops::job(&chain, job)?;
    let money = Money::of(&chain, &current.mint, units)?;
    let mut rate = Rate::new(&current);
    let print = |job_now: &Job, rate: &Rate| {
        let line = Line::new(job, job_now, rate, &money);
        match format {
            OutputFormat::Json => println!("{}", line.json()),
            OutputFormat::Table => println!("{}", line.text()),
        }
    };
    print(&current, &rate);
    while !current.status().is_finished() {
        let Some(next) = next_state(&mut socket, &ws)? else {
            match format {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({ "job": job.to_string(), "status": "closed" })
                ),
                OutputFormat::Table => println!("job {job} closed"),
            }
            return Ok(true);
        };
        rate.update(&next);
        print(&next, &rate);
        current = next;
    }
    Ok(true)
}

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

fn subscribe(ws: &str, job: &Pubkey) -> Result<Socket, CliError> {
    let (mut socket, _) = tungstenite::connect(ws).map_err(|e| CliError::Io {
        what: "connect to the cluster's websocket (pass --ws if it is not the RPC URL's next port)",
        source: Box::new(e),
    })?;
    let request = serde_json::json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "accountSubscribe",
        "params": [job.to_string(), { "encoding": "base64", "commitment": "confirmed" }],
    });
    socket
        .send(Message::text(request.to_string()))
        .map_err(CliError::io("subscribe to the job account"))?;
    Ok(socket)
}

/// The job's next state from the subscription; `None` once the account is gone.
fn next_state(socket: &mut Socket, ws: &str) -> Result<Option<Job>, CliError> {
    loop {
        let message = socket
            .read()
            .map_err(CliError::io("read the cluster's websocket"))?;
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => {
                return Err(CliError::Watch(format!("{ws} closed the subscription")));
            }
            _ => continue,
        };
        let value: serde_json::Value = serde_json::from_str(text.as_str())
            .map_err(CliError::io("read a subscription message"))?;
        if let Some(error) = value.get("error") {
            return Err(CliError::Watch(format!(
                "{ws} refused accountSubscribe: {error}"
            )));
        }
        if value["method"] != "accountNotification" {
            continue; // The subscription's id.
        }
        let account = &value["params"]["result"]["value"];
        let data = account["data"][0].as_str().unwrap_or("");
        if account.is_null() || account["lamports"].as_u64() == Some(0) || data.is_empty() {
            return Ok(None);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(CliError::io("decode the job account"))?;
        return Ok(ops::decode_job(&bytes));
    }
}

/// How fast the job spends, from what settled while watching.
struct Rate {
    start: Instant,
    start_gross: u64,
    /// Base units per second, once something settled.
    per_sec: Option<f64>,
}

impl Rate {
    fn new(job: &Job) -> Self {
        Self {
            start: Instant::now(),
            start_gross: job.settled_gross,
            per_sec: None,
        }
    }

    fn update(&mut self, job: &Job) {
        let spent = job.settled_gross.saturating_sub(self.start_gross);
        let secs = self.start.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        if spent > 0 && secs > 0.0 {
            self.per_sec = Some(spent as f64 / secs);
        }
    }

    /// Seconds until `escrow_left` is spent at this rate.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    fn runs_out_in(&self, escrow_left: u64) -> Option<u64> {
        self.per_sec.map(|rate| (escrow_left as f64 / rate) as u64)
    }
}

/// One state of the job as printed.
struct Line<'a> {
    address: &'a Pubkey,
    job: &'a Job,
    status: &'static str,
    runs_out_in: Option<u64>,
    per_hour: Option<u64>,
    money: &'a Money,
}

impl<'a> Line<'a> {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn new(address: &'a Pubkey, job: &'a Job, rate: &Rate, money: &'a Money) -> Self {
        Self {
            address,
            job,
            status: ops::JobView::new(address, job).status_label(),
            runs_out_in: rate.runs_out_in(job.escrow_left),
            per_hour: rate.per_sec.map(|r| (r * 3_600.0) as u64),
            money,
        }
    }

    fn text(&self) -> String {
        let j = self.job;
        let left = match (self.runs_out_in, self.per_hour) {
            (Some(secs), Some(per_hour)) if j.status() == JobStatus::Active => format!(
                "; runs out in ~{} at {}/h",
                duration(secs),
                self.money.show(per_hour)
            ),
            _ => String::new(),
        };
        format!(
            "{:<9} units {} ({} output)  spent {}  escrow left {}{left}",
            self.status,
            j.settled_units,
            j.settled_output,
            self.money.show(j.settled_gross),
            self.money.show(j.escrow_left),
        )
    }

    fn json(&self) -> serde_json::Value {
        let j = self.job;
        serde_json::json!({
            "job": self.address.to_string(),
            "status": self.status,
            "settled_units": j.settled_units,
            "settled_output": j.settled_output,
            "settled_gross": j.settled_gross,
            "escrow_left": j.escrow_left,
            "decimals": self.money.decimals,
            "spend_per_hour": self.per_hour,
            "runs_out_in_secs": self.runs_out_in,
        })
    }
}

/// `3h20m`, `45m`, `30s`.
fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3_599 => format!("{}m", secs / 60),
        3_600..=86_399 => format!("{}h{:02}m", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3_600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_urls_follow_the_solana_cli() {
        assert_eq!(
            websocket_url("http://127.0.0.1:8899").unwrap(),
            "ws://127.0.0.1:8900/"
        );
        assert_eq!(
            websocket_url("https://api.devnet.solana.com").unwrap(),
            "wss://api.devnet.solana.com/"
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(30), "30s");
        assert_eq!(duration(45 * 60), "45m");
        assert_eq!(duration(3 * 3_600 + 20 * 60), "3h20m");
        assert_eq!(duration(2 * 86_400 + 3_600), "2d01h");
    }
}
