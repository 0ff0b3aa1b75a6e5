//! Sources of completed GPU work, behind one trait. Each runs until shutdown and
//! commits every record through the [`crate::sink::Sink`] before it acknowledges
//! anything; on shutdown it stops taking new work and lets what it accepted finish.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::http::Shutdown;
use crate::node_report::NodeReports;
use crate::scrape::MetricsScrape;
use crate::OracleError;

/// A running source's future.
pub type Running = Pin<Box<dyn Future<Output = Result<(), OracleError>> + Send>>;

/// A source of usage records (or, for metrics, of a cross-check on them).
pub trait Source: Send + 'static {
    /// The name its records and metrics carry.
    fn name(&self) -> &'static str;
    /// Runs until `shutdown` fires and what was accepted has been committed.
    fn run(self: Box<Self>, shutdown: Shutdown) -> Running;
}

fn io_error(source_name: &'static str, source: std::io::Error) -> OracleError {
    OracleError::Serve {
        source_name,
        source,
    }
}

/// The OpenAI-compatible gateway on its listener.
pub struct GatewaySource {
    pub gateway: Arc<Gateway>,
    pub listener: TcpListener,
}

impl Source for GatewaySource {
    fn name(&self) -> &'static str {
        crate::gateway::SOURCE
    }

    fn run(self: Box<Self>, shutdown: Shutdown) -> Running {
        Box::pin(async move {
            self.gateway
                .serve_until(self.listener, shutdown)
                .await
                .map_err(|e| io_error(crate::gateway::SOURCE, e))
        })
    }
}

/// Signed node reports on their listener.
pub struct NodeReportSource {
    pub reports: Arc<NodeReports>,
    pub listener: TcpListener,
}

impl Source for NodeReportSource {
    fn name(&self) -> &'static str {
        crate::node_report::SOURCE
    }

    fn run(self: Box<Self>, shutdown: Shutdown) -> Running {
        Box::pin(async move {
            self.reports
                .serve_until(self.listener, shutdown)
                .await
                .map_err(|e| io_error(crate::node_report::SOURCE, e))
        })
    }
}

impl Source for MetricsScrape {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn run(self: Box<Self>, shutdown: Shutdown) -> Running {
        Box::pin(async move {
            (*self).scrape_until(shutdown).await;
            Ok(())
        })
    }
}
