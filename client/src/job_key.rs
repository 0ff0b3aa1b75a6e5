//! Job keys: how a client lets callers spend one job at an oracle gateway without a
//! shared secret. The client's wallet — the one that opened the job, `Job.client` on
//! chain — signs a short text naming the program, the job, the job's nonce (`Job.nonce`,
//! unique per opening), an expiry and an optional spend limit; the key is those fields and
//! the signature, encoded as one bearer token (`tally_k1_…`). A gateway verifies the
//! signature against the job's client on chain: no config edit, no restart, and a key
//! for one job never spends another (the job is in the signed text).
//!
//! The signed bytes are plain UTF-8 text with a domain-separating first line, so a
//! browser wallet's `signMessage` (Wallet Standard) can produce the same signature
//! later: wallets refuse to sign bytes that could be a transaction, and show text to
//! the user. The text, byte for byte ([`JobKeyClaims::message`]):
//!
//! ```text
//! Tally job key v1
//! program: <program id, base58>
//! job: <job address, base58>
//! job nonce: <decimal>
//! expires at (unix seconds): <decimal>
//! spend limit (base units): <decimal, or none>
//! Whoever holds this key may spend this job's escrow on inference, within the limit, until it expires. This is not a transaction.
//! ```
//!
//! Lines end with `\n` (the last one too). The token is `tally_k1_` followed by the
//! unpadded base64url of: version (1 byte, 1), job (32), job nonce (u64 LE), expires
//! at (i64 LE), spend limit (u64 LE, 0 = none), ed25519 signature (64): 121 bytes.
use anchor_lang::prelude::Pubkey;
use base64::Engine as _;
use solana_keypair::Keypair;
use solana_signer::Signer;

/// What every job key starts with.
pub const PREFIX: &str = "tally_k1_";
/// The first line of the signed text: it names what is being signed.
pub const DOMAIN: &str = "Tally job key v1";
/// The binary layout's version byte.
pub const VERSION: u8 = 1;
/// Bytes of the binary layout.
pub const ENCODED_LEN: usize = 1 + 32 + 8 + 8 + 8 + 64;

/// What a job key grants, as the client signs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JobKeyClaims {
    /// The job it spends.
    pub job: Pubkey,
    /// The job's nonce (`Job.nonce`): a key for a closed job never spends a new job
    /// opened later at the same address.
    pub job_nonce: u64,
    /// Unix seconds (the chain's clock) after which the key is refused.
    pub expires_at: i64,
    /// Most the key may spend, in the job mint's base units; `None`: up to the escrow.
    pub spend_limit: Option<u64>,
}

/// A signed job key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JobKey {
    pub claims: JobKeyClaims,
    /// The job client's ed25519 signature over [`JobKeyClaims::message`].
    pub signature: [u8; 64],
}

/// Why a token is not a usable job key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobKeyError {
    #[error(
        "not a Tally job key (job keys start with `{PREFIX}`): make one with `tally job key <JOB>`"
    )]
    NotAJobKey,
    #[error(
        "the job key is damaged ({0}): copy it again, or make a new one with `tally job key <JOB>`"
    )]
    Malformed(String),
    #[error("job key version {0} is not supported by this gateway (it reads version {VERSION})")]
    UnsupportedVersion(u8),
}

impl JobKeyClaims {
    /// The exact bytes the client's wallet signs, for `program` (see the module doc).
    pub fn message(&self, program: &Pubkey) -> Vec<u8> {
        let limit = self
            .spend_limit
            .map_or_else(|| "none".to_string(), |l| l.to_string());
        format!(
            "{DOMAIN}\nprogram: {program}\njob: {}\njob nonce: {}\nexpires at (unix seconds): {}\nspend limit (base units): {limit}\nWhoever holds this key may spend this job's escrow on inference, within the limit, until it expires. This is not a transaction.\n",
            self.job, self.job_nonce, self.expires_at
        )
        .into_bytes()
    }

    /// Signs the claims with the job's client wallet (for Tally's program id).
    pub fn sign(self, client: &Keypair) -> JobKey {
        let signature = client.sign_message(&self.message(&crate::PROGRAM_ID));
        JobKey {
            claims: self,
            signature: signature.into(),
        }
    }
}

impl JobKey {
    /// Whether `token` claims to be a job key (rather than a static API key).
    pub fn looks_like(token: &str) -> bool {
        token.starts_with(PREFIX)
    }

    /// The bearer token.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(ENCODED_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(self.claims.job.as_ref());
        bytes.extend_from_slice(&self.claims.job_nonce.to_le_bytes());
        bytes.extend_from_slice(&self.claims.expires_at.to_le_bytes());
        bytes.extend_from_slice(&self.claims.spend_limit.unwrap_or(0).to_le_bytes());
        bytes.extend_from_slice(&self.signature);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    }

    /// Reads a bearer token. Checks the layout only: the signature is checked against
    /// the job's client on chain by whoever accepts the key.
    pub fn parse(token: &str) -> Result<Self, JobKeyError> {
        let body = token.strip_prefix(PREFIX).ok_or(JobKeyError::NotAJobKey)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| JobKeyError::Malformed(format!("not base64url: {e}")))?;
        let (&version, rest) = bytes
            .split_first()
            .ok_or_else(|| JobKeyError::Malformed("empty".into()))?;
        if version != VERSION {
            return Err(JobKeyError::UnsupportedVersion(version));
        }
        if bytes.len() != ENCODED_LEN {
            return Err(JobKeyError::Malformed(format!(
                "{} bytes instead of {ENCODED_LEN}",
                bytes.len()
            )));
        }
        let take = |from: usize, len: usize| rest.get(from..from + len).unwrap_or(&[]);
        let u64_at = |from: usize| <[u8; 8]>::try_from(take(from, 8)).map_or(0, u64::from_le_bytes);
        let job = <[u8; 32]>::try_from(take(0, 32))
            .map(Pubkey::new_from_array)
            .map_err(|_| JobKeyError::Malformed("no job".into()))?;
        let signature = <[u8; 64]>::try_from(take(56, 64))
            .map_err(|_| JobKeyError::Malformed("no signature".into()))?;
        let limit = u64_at(48);
        Ok(Self {
            claims: JobKeyClaims {
                job,
                job_nonce: u64_at(32),
                expires_at: i64::from_le_bytes(u64_at(40).to_le_bytes()),
                spend_limit: (limit != 0).then_some(limit),
            },
            signature,
        })
    }

    /// A short public name of the key (hex of the signature's first 16 bytes): what a
    /// revocation names and records carry. It reveals nothing that spends the job.
    pub fn id(&self) -> String {
        use std::fmt::Write as _;
        self.signature
            .iter()
            .take(16)
            .fold(String::with_capacity(32), |mut out, b| {
                let _ = write!(out, "{b:02x}");
                out
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn claims() -> JobKeyClaims {
        JobKeyClaims {
            job: Pubkey::new_from_array([7; 32]),
            job_nonce: 42,
            expires_at: 1_800_000_000,
            spend_limit: Some(5_000),
        }
    }

    #[test]
    fn a_key_round_trips_and_its_text_names_program_job_and_terms() {
        let wallet = Keypair::new();
        let key = claims().sign(&wallet);
        let token = key.encode();
        assert!(JobKey::looks_like(&token));
        assert_eq!(JobKey::parse(&token).unwrap(), key);
        let text = String::from_utf8(claims().message(&crate::PROGRAM_ID)).unwrap();
        assert!(text.starts_with("Tally job key v1\nprogram: "), "{text}");
        assert!(text.contains(&format!("job: {}\n", claims().job)), "{text}");
        assert!(text.contains("spend limit (base units): 5000\n"), "{text}");
        let unlimited = JobKeyClaims {
            spend_limit: None,
            ..claims()
        };
        let parsed = JobKey::parse(&unlimited.sign(&wallet).encode()).unwrap();
        assert_eq!(parsed.claims.spend_limit, None);
    }

    #[test]
    fn damaged_tokens_are_named() {
        let token = claims().sign(&Keypair::new()).encode();
        assert_eq!(JobKey::parse("sk-static"), Err(JobKeyError::NotAJobKey));
        assert!(matches!(
            JobKey::parse(&token[..token.len() - 4]),
            Err(JobKeyError::Malformed(_))
        ));
        assert!(matches!(
            JobKey::parse(&format!("{PREFIX}!!!")),
            Err(JobKeyError::Malformed(_))
        ));
        let v2 = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([2u8; ENCODED_LEN])
        );
        assert_eq!(JobKey::parse(&v2), Err(JobKeyError::UnsupportedVersion(2)));
    }
}
