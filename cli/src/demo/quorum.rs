//! `tally demo --oracles N --threshold M`: the same flow attested by an m-of-n
//! oracle set, each oracle with its own store.
//!
//! The cast's oracle runs the gateway, as a quorum member's does: its gateway signs
//! each record with a gateway key (registered by the operator as a node key) and
//! sends it to the other oracles. Those are real `tally-oracle` daemons in process,
//! each with its own SQLite store, taking records at `/quorum/v1/records` (checking
//! each signature and the key on chain themselves) and co-signing at
//! `/quorum/v1/cosign`. The cast's oracle leads (the chain's clock is set to its
//! term) and settles with `M` signatures: its own and `M − 1` co-signers', who sign
//! only what their own stores hold.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use solana_keypair::Keypair;
use solana_signer::Signer;
use tally_client::bootstrap::Cast;
use tally_client::chain::{Chain, EmbeddedChain, Shared};
use tally_client::{InitializeConfigArgs, OperatorArgs, Pubkey};
use tally_oracle::config::OracleConfig;
use tally_oracle::daemon::Daemon;
use tally_oracle::quorum::evidence::Forwarder;
use tally_oracle::quorum::{PeerSettings, QuorumSettings};
use tally_oracle::store::Store;

use crate::CliError;

/// Leadership terms (a day) long enough that the cast's oracle leads the whole demo.
const TERM_SECS: u64 = 86_400;

/// The oracle set beyond the cast's oracle, and the gateway's key.
pub struct QuorumCast {
    pub others: Vec<Keypair>,
    pub threshold: u8,
    pub gateway_key: Keypair,
}

impl QuorumCast {
    /// `None` for a lone oracle (1-of-1).
    pub fn new(oracles: u8, threshold: u8) -> Result<Option<Self>, CliError> {
        if threshold == 0 || threshold > oracles || oracles > 10 {
            return Err(CliError::Demo(format!(
                "--threshold {threshold} of --oracles {oracles}: the threshold is 1 to the number of oracles, at most 10 oracles"
            )));
        }
        if oracles == 1 {
            return Ok(None);
        }
        Ok(Some(Self {
            others: (1..oracles).map(|_| Keypair::new()).collect(),
            threshold,
            gateway_key: Keypair::new(),
        }))
    }

    /// The config's oracle set: the cast's oracle first, then the others.
    pub fn settings(&self, mut settings: InitializeConfigArgs) -> InitializeConfigArgs {
        settings
            .oracles
            .extend(self.others.iter().map(Signer::pubkey));
        settings.oracle_threshold = self.threshold;
        settings
    }

    /// The first moment at or after `now` of a term the cast's oracle (first in the
    /// set) leads.
    pub fn leading_time(&self, now: i64) -> i64 {
        // At most 10 oracles a day each: no overflow.
        let members = u64::try_from(self.others.len() + 1).unwrap_or(1);
        let cycle = i64::try_from(TERM_SECS * members).unwrap_or(i64::MAX);
        (now / cycle + 1) * cycle + 1
    }

    /// The operator registers the gateway's key as a node key: the other oracles
    /// accept the gateway's records signed by it.
    pub fn register_gateway(&self, chain: &mut impl Chain, cast: &Cast) -> Result<(), CliError> {
        tally_client::ops::register_operator(
            chain,
            &cast.operator,
            OperatorArgs {
                payout_owner: cast.operator.pubkey(),
                node_keys: vec![self.gateway_key.pubkey()],
            },
            true,
        )?;
        Ok(())
    }

    /// The threshold's signers for what the demo attests itself (completing jobs).
    pub fn attesters<'a>(&'a self, leader: &'a Keypair) -> Vec<&'a Keypair> {
        std::iter::once(leader)
            .chain(&self.others)
            .take(usize::from(self.threshold))
            .collect()
    }
}

/// The other oracles' daemons, running.
pub struct Members {
    daemons: Vec<Daemon>,
    stores: Vec<PathBuf>,
    admins: Vec<(Pubkey, SocketAddr)>,
}

fn free_port() -> Result<u16, CliError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(CliError::io("find a free port on 127.0.0.1"))
}

fn peers(list: impl Iterator<Item = (Pubkey, u16)>) -> Vec<PeerSettings> {
    list.map(|(key, port)| PeerSettings {
        key: key.to_string(),
        url: format!("http://127.0.0.1:{port}"),
    })
    .collect()
}

impl Members {
    /// Starts a daemon for each of the other oracles, on `chain`, stores in `dir`.
    pub async fn start(
        quorum: &QuorumCast,
        chain: &Shared<EmbeddedChain>,
        dir: &Path,
    ) -> Result<Self, CliError> {
        let ports = quorum
            .others
            .iter()
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let keys: Vec<Pubkey> = quorum.others.iter().map(Signer::pubkey).collect();
        let mut members = Self {
            daemons: Vec::new(),
            stores: Vec::new(),
            admins: Vec::new(),
        };
        for (i, oracle) in quorum.others.iter().enumerate() {
            let store = dir.join(format!("oracle-{}.db", i + 1));
            let others = keys.iter().copied().zip(ports.iter().copied());
            let settings = QuorumSettings {
                peers: peers(others.enumerate().filter(|(j, _)| *j != i).map(|(_, p)| p)),
                term_secs: TERM_SECS,
                signature_secs: 120,
            };
            let peers: Vec<String> = settings
                .peers
                .iter()
                .map(|p| format!("{{ key = \"{}\", url = \"{}\" }}", p.key, p.url))
                .collect();
            let config = OracleConfig::parse(
                &format!(
                    "store = {:?}\ninvoices_dir = \"\"\n[batch]\ninterval_secs = 0.5\n\
                     [admin]\nlisten = \"127.0.0.1:{}\"\n[quorum]\npeers = [{}]\nterm_secs = {TERM_SECS}\n",
                    store.display().to_string(),
                    ports[i],
                    peers.join(", "),
                ),
                Vec::new(),
            )?;
            let (own, directory, view) = (
                Arc::new(Mutex::new(chain.clone())),
                Arc::new(Mutex::new(chain.clone())),
                Arc::new(Mutex::new(chain.clone())),
            );
            let daemon =
                Daemon::start_with_views(&config, own, directory, view, oracle.insecure_clone())
                    .await?;
            members.admins.push((oracle.pubkey(), daemon.admin));
            members.daemons.push(daemon);
            members.stores.push(store);
        }
        Ok(members)
    }

    /// The leader's `[quorum]`: every other oracle's admin listener.
    pub fn leader_settings(&self) -> QuorumSettings {
        QuorumSettings {
            peers: peers(self.admins.iter().map(|(k, a)| (*k, a.port()))),
            term_secs: TERM_SECS,
            signature_secs: 120,
        }
    }

    /// The gateway's forwarder: the leader's own records, signed, to every member.
    pub fn forwarder(
        &self,
        store: &Path,
        quorum: &QuorumCast,
        clock: Arc<tally_oracle::clock::ChainClock>,
    ) -> Result<Forwarder, CliError> {
        let peers = tally_oracle::quorum::Peers::new(&self.leader_settings())?;
        Ok(Forwarder::new(
            Store::open(store)?,
            &quorum.gateway_key,
            &peers,
            Arc::new(tally_oracle::telemetry::Telemetry::default()),
            clock,
        )?)
    }

    /// Waits (a minute at most) until every member's store holds `records` records.
    pub async fn wait_for_records(&self, records: u64) -> Result<(), CliError> {
        for _ in 0..600 {
            let mut held = Vec::new();
            for store in &self.stores {
                held.push(Store::open(store)?.record_count()?);
            }
            if held.iter().all(|n| *n >= records) {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err(CliError::Demo(format!(
            "the other oracles did not receive the gateway's {records} records within a minute"
        )))
    }

    /// Records each member's store holds.
    pub fn records(&self) -> Result<Vec<u64>, CliError> {
        self.stores
            .iter()
            .map(|s| Ok(Store::open(s)?.record_count()?))
            .collect()
    }

    pub async fn stop(self) -> Result<(), CliError> {
        for daemon in self.daemons {
            daemon.stop().await?;
        }
        Ok(())
    }
}
