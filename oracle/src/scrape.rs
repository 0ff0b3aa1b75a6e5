//! The metrics cross-check: scrape the inference server's own Prometheus counters
//! (vLLM's `vllm:prompt_tokens_total` and `vllm:generation_tokens_total`) and compare
//! what it says it served with what the gateway metered over the same time. Drift
//! means traffic that bypassed the gateway, or a metering bug; it is exported as a
//! gauge and logged, never billed.
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::http::{stopped, Shutdown};
use crate::telemetry::{self, parse_prometheus, Telemetry};

/// The counters summed as "tokens served" (vLLM's names; TGI and llama.cpp expose
/// their own, which an operator can name in the config).
pub const VLLM_TOKEN_COUNTERS: [&str; 2] =
    ["vllm:prompt_tokens_total", "vllm:generation_tokens_total"];

/// The `[metrics]` section: what the scraper compares. Only `url` is required;
/// [`ScrapeSettings::new`] gives every other key its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeSettings {
    /// The inference server's Prometheus endpoint, e.g. `http://127.0.0.1:8000/metrics`.
    pub url: String,
    /// Seconds between scrapes (at least 0.05).
    #[serde(default = "default_interval")]
    pub interval_secs: f64,
    /// Counters whose sum is tokens served (default: vLLM's).
    #[serde(default = "default_counters")]
    pub counters: Vec<String>,
    /// Drift, as a fraction of upstream tokens, above which a warning is logged.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
}

fn default_interval() -> f64 {
    15.0
}

fn default_counters() -> Vec<String> {
    VLLM_TOKEN_COUNTERS
        .iter()
        .map(|c| (*c).to_string())
        .collect()
}

fn default_tolerance() -> f64 {
    0.01
}

impl ScrapeSettings {
    /// Scraping `url`, every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            interval_secs: default_interval(),
            counters: default_counters(),
            tolerance: default_tolerance(),
        }
    }

    /// Time between scrapes.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_secs.max(0.05))
    }
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
    settings: ScrapeSettings,
    telemetry: Arc<Telemetry>,
    http: reqwest::Client,
    baseline: Option<(f64, f64)>,
}

impl MetricsScrape {
    pub fn new(settings: ScrapeSettings, telemetry: Arc<Telemetry>) -> Self {
        Self {
            settings,
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
            .get(&self.settings.url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("cannot scrape {}: {e}", self.settings.url))?
            .text()
            .await
            .map_err(|e| format!("cannot read {}: {e}", self.settings.url))?;
        let totals = parse_prometheus(&text);
        if !self
            .settings
            .counters
            .iter()
            .any(|c| totals.contains_key(c))
        {
            return Err(format!(
                "{} exposes none of {:?}: name the server's token counters in [metrics] counters",
                self.settings.url, self.settings.counters
            ));
        }
        let upstream: f64 = self
            .settings
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
        if drift.tokens().abs() > self.settings.tolerance * drift.upstream.max(1.0) {
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
                () = tokio::time::sleep(self.settings.interval()) => {}
                () = stopped(&mut shutdown) => return,
            }
        }
    }
}
