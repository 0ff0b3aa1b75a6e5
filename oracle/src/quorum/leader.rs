//! The leader's side: its peers, asked to co-sign each settle transaction; a peer
//! that refuses or does not answer is replaced by the next.
use anchor_lang::prelude::Pubkey;
use solana_keypair::Keypair;
use solana_signer::Signer;

use super::{block_on, Answer, Proposal, QuorumSettings, COSIGN_PATH};
use crate::OracleError;

/// Why a peer gave no signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("{peer} refused ({label}): {reason}")]
    Refused {
        peer: Pubkey,
        label: String,
        reason: String,
    },
    #[error("{peer} did not answer: {reason}")]
    Unreachable { peer: Pubkey, reason: String },
    #[error("{peer} answered with a signature that does not verify")]
    BadSignature { peer: Pubkey },
}

impl PeerError {
    /// The peer, and a metrics label for what happened.
    pub fn peer_and_label(&self) -> (Pubkey, &str) {
        match self {
            PeerError::Refused { peer, label, .. } => (*peer, label.as_str()),
            PeerError::Unreachable { peer, .. } => (*peer, "unreachable"),
            PeerError::BadSignature { peer } => (*peer, "bad_signature"),
        }
    }
}

/// The leader's side: asks peers to co-sign.
#[derive(Clone, Debug)]
pub struct Peers {
    peers: Vec<(Pubkey, String)>,
    http: reqwest::Client,
}

impl Peers {
    pub fn new(settings: &QuorumSettings) -> Result<Self, OracleError> {
        let peers = settings
            .peers
            .iter()
            .map(|p| {
                p.key
                    .parse::<Pubkey>()
                    .map(|k| (k, p.url.trim_end_matches('/').to_string()))
                    .map_err(|_| {
                        OracleError::from(crate::config::ConfigError::Setting {
                            key: "quorum.peers",
                            reason: format!("`{}` is not a public key", p.key),
                        })
                    })
            })
            .collect::<Result<_, _>>()?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .map_err(|e| OracleError::Setup {
                what: "build the quorum's HTTP client",
                source: e.into(),
            })?;
        Ok(Self { peers, http })
    }

    /// Each peer: its key and its admin listener's URL.
    pub fn each(&self) -> &[(Pubkey, String)] {
        &self.peers
    }

    /// The peers' keys, in the order they are asked.
    pub fn keys(&self) -> Vec<Pubkey> {
        self.peers.iter().map(|(k, _)| *k).collect()
    }

    /// These peers less those outside the oracle set `members`: one rotated out of
    /// the set (its co-signature would not count) is not asked.
    #[must_use]
    pub fn of_set(&self, members: &[Pubkey]) -> Self {
        Self {
            peers: self
                .peers
                .iter()
                .filter(|(k, _)| members.contains(k))
                .cloned()
                .collect(),
            http: self.http.clone(),
        }
    }

    /// Receipt `seq`'s invoice of the job's incarnation `nonce`, from the first peer
    /// that serves it (`GET /invoices/<job>/<nonce>/<seq>`); else every peer's reason.
    pub async fn invoice(&self, job: &Pubkey, nonce: u64, seq: u64) -> Result<Vec<u8>, String> {
        let mut reasons = Vec::new();
        for (key, url) in &self.peers {
            let got = self
                .http
                .get(format!("{url}/invoices/{job}/{nonce}/{seq}"))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            match got {
                Ok(response) => match response.bytes().await {
                    Ok(bytes) => return Ok(bytes.to_vec()),
                    Err(e) => reasons.push(format!("{key}: {e}")),
                },
                Err(e) => reasons.push(format!("{key}: {e}")),
            }
        }
        Err(reasons.join("; "))
    }

    /// Asks `peer` to co-sign `proposal`; checks the signature it returns.
    pub async fn ask(
        &self,
        peer: &Pubkey,
        proposal: &Proposal,
    ) -> Result<solana_signature::Signature, PeerError> {
        let unreachable = |reason: String| PeerError::Unreachable {
            peer: *peer,
            reason,
        };
        let url = self
            .peers
            .iter()
            .find(|(k, _)| k == peer)
            .map(|(_, u)| format!("{u}{COSIGN_PATH}"))
            .ok_or_else(|| unreachable("not a configured peer".into()))?;
        let response = self
            .http
            .post(url)
            .json(proposal)
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let answer: Answer = response
            .json()
            .await
            .map_err(|e| unreachable(format!("its answer does not decode: {e}")))?;
        if let Some(label) = answer.refused {
            return Err(PeerError::Refused {
                peer: *peer,
                label,
                reason: answer.reason.unwrap_or_default(),
            });
        }
        let signature: solana_signature::Signature = answer
            .signature
            .as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or(PeerError::BadSignature { peer: *peer })?;
        if !signature.verify(peer.as_ref(), &proposal.message.serialize()) {
            return Err(PeerError::BadSignature { peer: *peer });
        }
        Ok(signature)
    }
}

/// A settlement the quorum signed: the transaction to send, and who co-signed it.
pub struct Cosigned {
    pub transaction: solana_transaction::versioned::VersionedTransaction,
    pub cosigners: Vec<Pubkey>,
}

/// Gathers `threshold − 1` co-signatures for the message `build` makes with a given
/// list of attesting oracles (the leader first), trying peers in order: a peer that
/// refuses or does not answer is replaced by the next, and the message rebuilt for
/// the new set. Returns the signed transaction, or every peer's reason.
pub fn cosign(
    leader: &Keypair,
    peers: &Peers,
    threshold: usize,
    blockhash: solana_hash::Hash,
    invoices: &[Vec<u8>],
    build: impl Fn(&[Pubkey]) -> Result<solana_message::VersionedMessage, OracleError>,
) -> Result<Cosigned, Vec<PeerError>> {
    let needed = threshold.saturating_sub(1);
    let mut candidates = peers.keys().into_iter();
    let mut chosen: Vec<Pubkey> = candidates.by_ref().take(needed).collect();
    let mut refusals = Vec::new();
    loop {
        if chosen.len() < needed {
            return Err(refusals);
        }
        let mut oracles = vec![leader.pubkey()];
        oracles.extend(&chosen);
        let mut message = match build(&oracles) {
            Ok(m) => m,
            Err(e) => {
                refusals.push(PeerError::Unreachable {
                    peer: leader.pubkey(),
                    reason: e.to_string(),
                });
                return Err(refusals);
            }
        };
        message.set_recent_blockhash(blockhash);
        let proposal = Proposal::new(message, invoices);
        let answers = block_on(futures_util::future::join_all(
            chosen.iter().map(|peer| peers.ask(peer, &proposal)),
        ))
        .map_err(|e| {
            vec![PeerError::Unreachable {
                peer: leader.pubkey(),
                reason: e.to_string(),
            }]
        })?;
        let mut signatures = vec![(
            leader.pubkey(),
            leader.sign_message(&proposal.message.serialize()),
        )];
        let mut failed = Vec::new();
        for (peer, answer) in chosen.iter().zip(answers) {
            match answer {
                Ok(signature) => signatures.push((*peer, signature)),
                Err(e) => {
                    failed.push(*peer);
                    refusals.push(e);
                }
            }
        }
        if failed.is_empty() {
            let transaction = assemble(proposal.message, &signatures).map_err(|e| {
                vec![PeerError::Unreachable {
                    peer: leader.pubkey(),
                    reason: e,
                }]
            })?;
            return Ok(Cosigned {
                transaction,
                cosigners: chosen,
            });
        }
        chosen.retain(|k| !failed.contains(k));
        chosen.extend(candidates.by_ref().take(failed.len()));
    }
}

/// A transaction from its message and a signature of each of its signers.
fn assemble(
    message: solana_message::VersionedMessage,
    signatures: &[(Pubkey, solana_signature::Signature)],
) -> Result<solana_transaction::versioned::VersionedTransaction, String> {
    let signers = usize::from(message.header().num_required_signatures);
    let ordered = message
        .static_account_keys()
        .iter()
        .take(signers)
        .map(|key| {
            signatures
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, s)| *s)
                .ok_or_else(|| format!("no signature of {key}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(solana_transaction::versioned::VersionedTransaction {
        signatures: ordered,
        message,
    })
}
