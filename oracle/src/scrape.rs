//! The metrics cross-check: scrape the inference server's own Prometheus counters
//! (vLLM's `vllm:prompt_tokens_total` and `vllm:generation_tokens_total`) and compare
//! what it says it served with what the gateway metered over the same time. Drift
//! means traffic that bypassed the gateway, or a metering bug; it is exported as a
//! gauge and logged, never billed.
use std::sync::Arc;
use std::time::Duration;

use crate::http::{stopped, Shutdown};
use crate::telemetry::{self, parse_prometheus, Telemetry};

/// The counters summed as "tokens served" (vLLM's names; TGI and llama.cpp expose
/// their own, which an operator can name in the config).
pub const VLLM_TOKEN_COUNTERS: [&str; 2] =
    ["vllm:prompt_tokens_total", "vllm:generation_tokens_total"];

/// What the scraper compares.
#[derive(Clone, Debug)]
pub struct ScrapeConfig {
    /// The inference server's metrics URL, e.g. `http://127.0.0.1:8000/metrics`.
    pub url: String,
    pub interval: Duration,
    /// Counters whose sum is tokens served.
    pub counters: Vec<String>,
    /// Drift (as a fraction of upstream tokens) above which a warning is logged.
    pub tolerance: f64,
}

/// One comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Drift {
    /// Tokens the upstream counted since the first scrape.
    pub upstream: f64,
    /// Tokens the gateway metered since the first scrape.
    pub metered: f64,
}

impl Drift {
    /// Upstream minus metered: > 0 means served but not metered.
    pub fn tokens(&self) -> f64 {
        self.upstream - self.metered
    }
}

/// Scrapes the upstream and compares it with the gateway's metering.
pub struct MetricsScrape {
    config: ScrapeConfig,
    telemetry: Arc<Telemetry>,
    http: reqwest::Client,
    baseline: Option<(f64, f64)>,
}

impl MetricsScrape {
    pub fn new(config: ScrapeConfig, telemetry: Arc<Telemetry>) -> Self {
        Self {
            config,
            telemetry,
            http: reqwest::Client::new(),
            baseline: None,
        }
    }

    fn metered(&self) -> f64 {
        self.telemetry.get(
            telemetry::TOKENS_METERED,
            &format!("source=\"{}\"", crate::gateway::SOURCE),
        )
    }

    /// Scrapes once. The first scrape sets the baseline (drift 0).
    pub async fn scrape(&mut self) -> Result<Drift, String> {
        // Read the gateway's count first: a request finishing between the two reads
        // then shows as transient positive drift, never as a false negative.
        let metered = self.metered();
        let text = self
            .http
            .get(&self.config.url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("cannot scrape {}: {e}", self.config.url))?
            .text()
            .await
            .map_err(|e| format!("cannot read {}: {e}", self.config.url))?;
        let totals = parse_prometheus(&text);
        if !self.config.counters.iter().any(|c| totals.contains_key(c)) {
            return Err(format!(
                "{} exposes none of {:?}: name the server's token counters in [metrics] counters",
                self.config.url, self.config.counters
            ));
        }
        let upstream: f64 = self
            .config
            .counters
            .iter()
            .filter_map(|c| totals.get(c))
            .sum();
        let (base_upstream, base_metered) = *self.baseline.get_or_insert((upstream, metered));
        let drift = Drift {
            upstream: upstream - base_upstream,
            metered: metered - base_metered,
        };
        self.telemetry.inc(telemetry::SCRAPES, "", 1);
        self.telemetry
            .set(telemetry::UPSTREAM_TOKENS, "", drift.upstream);
        self.telemetry
            .set(telemetry::DRIFT_TOKENS, "", drift.tokens());
        if drift.tokens().abs() > self.config.tolerance * drift.upstream.max(1.0) {
            tracing::warn!(
                upstream = drift.upstream,
                metered = drift.metered,
                "metering drift: the inference server counted {} tokens the gateway did not meter",
                drift.tokens()
            );
        }
        Ok(drift)
    }

    /// Scrapes every interval until `shutdown`.
    pub async fn scrape_until(mut self, mut shutdown: Shutdown) {
        loop {
            if let Err(e) = self.scrape().await {
                self.telemetry.inc(telemetry::SCRAPE_ERRORS, "", 1);
                tracing::warn!("{e}");
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.interval) => {}
                () = stopped(&mut shutdown) => return,
            }
        }
    }
}
