use anchor_lang::prelude::*;

/// Program errors (codes from 6000). Each message says what is wrong and, where the
/// caller can act, what to do.
#[error_code]
pub enum TallyError {
    // config and admin: 6000..
    #[msg("Signer is not allowed to do this: check --keypair")]
    Unauthorized,
    #[msg("Protocol fee above the hard cap of 1000 bps (10%)")]
    FeeTooHigh,
    #[msg("Challenge window or expiry grace longer than 30 days")]
    InvalidWindow,
    #[msg("Oracle set must have 1 to 7 distinct non-default keys and a threshold in 1..=keys")]
    InvalidOracleSet,
    #[msg("No admin transfer is pending: the current admin must propose one first")]
    NoPendingAdmin,
    #[msg("The program is paused: no new deposits; refunds and claims still work")]
    Paused,
    #[msg("Signer is not the program's upgrade authority")]
    NotUpgradeAuthority,

    // mints: 6007..
    #[msg("Token-2022 mint with a transfer fee: escrow would not receive what was sent")]
    MintHasTransferFee,
    #[msg("Token-2022 mint with a transfer hook: transfers could run arbitrary code")]
    MintHasTransferHook,
    #[msg("Token-2022 mint with confidential transfers: amounts cannot be audited")]
    MintHasConfidentialTransfer,
    #[msg("Token-2022 mint with a permanent delegate: escrow could be taken out of the vault")]
    MintHasPermanentDelegate,
    #[msg("Token-2022 mint that is non-transferable, pausable or scaled: not accepted")]
    MintExtensionNotSupported,
    #[msg("Token account is for another mint or owner than this job requires")]
    WrongTokenAccount,

    // operators: 6013..
    #[msg("Too many node keys: at most 4")]
    TooManyNodeKeys,

    // jobs: 6014..
    #[msg("Unit price and max units must be above zero")]
    ZeroAmount,
    #[msg("Amount overflows u64: lower the price or units")]
    AmountOverflow,
    #[msg("Deadline must be in the future")]
    DeadlineInPast,
    #[msg("Unknown unit kind: use 0 tokens, 1 GPU-seconds, 2 requests, 3 frames")]
    InvalidUnitKind,
    #[msg(
        "Job already has settled usage: it can no longer be cancelled, only completed or expired"
    )]
    JobHasUsage,
    #[msg("Job is past its deadline plus grace: it can only be expired now")]
    JobExpired,
    #[msg("Job has not expired yet: wait until its deadline plus the grace period")]
    JobNotExpired,
    #[msg("Account is not a job of this program")]
    InvalidJobAccount,
    #[msg("Job belongs to another operator or mint than this instruction")]
    JobMismatch,

    // receipts: 6023..
    #[msg("Receipt usage is lower than already settled: cumulative units never decrease")]
    NonIncreasingUsage,
    #[msg("Receipt period ends after the job's deadline")]
    UsageAfterDeadline,
    #[msg("Receipt bills faster than the job's spend-rate cap")]
    SpendRateExceeded,
    #[msg("Receipt names another oracle-set version: re-sign under the current set")]
    OracleSetVersionMismatch,
    #[msg("Not enough distinct oracle signatures for the threshold")]
    NotEnoughOracleSignatures,
    #[msg("Signer is not in the oracle set")]
    UnknownOracle,
    #[msg("The same oracle signed twice")]
    DuplicateOracleSigner,
    #[msg("Number of receipts does not match the job accounts passed")]
    ReceiptCountMismatch,
    #[msg("Revenue day does not match the cluster clock's UTC day: rebuild the transaction")]
    WrongRevenueDay,
    #[msg("A final receipt is required to complete a job")]
    NotFinalReceipt,

    // money out: 6033..
    #[msg("Nothing to claim yet: earnings mature after the challenge window")]
    NothingToClaim,
    #[msg("No protocol fees to withdraw")]
    NothingToWithdraw,
    #[msg("Vault holds less than it owes: refusing to continue")]
    VaultInsolvent,

    // accounts: 6036..
    #[msg("Vault is for another mint than the one passed")]
    WrongMint,
    #[msg(
        "Earnings or revenue account belongs to another operator or mint: derive it with the SDK"
    )]
    WrongLedger,

    // relayed attestation: 6038..
    #[msg("No Ed25519 signature instruction right before this one")]
    MissingSignatureInstruction,
    #[msg("An Ed25519 signature points into another instruction: every offset must point into the signature instruction itself")]
    SignatureInOtherInstruction,
    #[msg("Ed25519 signature data is truncated or malformed")]
    MalformedSignatureData,
    #[msg("Signed bytes are not a usage receipt of this program")]
    WrongReceiptMessage,
    #[msg("Signed receipt names another job, job nonce or oracle-set version")]
    ReceiptMismatch,
    #[msg("Number of signatures is not receipts × oracle threshold")]
    SignatureCountMismatch,

    // disputes: 6044..
    #[msg("Nothing to dispute: the job has no settled amount still inside the challenge window")]
    NothingToDispute,
    #[msg("The job has an open dispute: it must be resolved first")]
    DisputeActive,
    #[msg("The job has no open dispute")]
    NoDispute,
    #[msg("Only the arbiter may resolve a dispute before its timeout")]
    DisputeNotExpired,
    #[msg("The client's share is more than the disputed amount")]
    InvalidSplit,
    #[msg("Operator earnings do not cover the job's unmatured share")]
    LedgerMismatch,

    // Appended later; codes above keep their numbers. 6050..
    #[msg("Receipt bills more than MAX_UNITS_PER_RECEIPT (10^13) units at once: a meter fault or an attack; settle smaller receipts")]
    TooManyUnitsInReceipt,
    #[msg("Token-2022 mint with a close authority: it could be closed and recreated with a permanent delegate; not accepted")]
    MintHasCloseAuthority,
    #[msg("Token-2022 mint whose new accounts start frozen (DefaultAccountState = Frozen): the vault could not receive deposits; not accepted")]
    MintDefaultAccountStateFrozen,
    #[msg("The job has ended (completed or expired): only a dispute of its unmatured share, its resolution and close_job apply to it")]
    JobFinished,
    #[msg("The job has not ended: complete, cancel or expire it first")]
    JobNotFinished,
    #[msg("The operator's share of this job is still inside the challenge window (the client may dispute it): close the job after it matures")]
    JobInChallengeWindow,
    #[msg("Job id already used by this client: ids only go up and are never reused; open with an id of at least the client's next_job_id (the SDK picks it)")]
    JobIdUsed,
    #[msg("Receipt has more output tokens than units, or output units on a job whose units are not tokens")]
    OutputExceedsUnits,
    #[msg("Packed receipts are malformed (cut short, a varint over 64 bits, or bytes left over): build them with tally_client::pack_receipts")]
    MalformedReceipts,
    #[msg("Only token jobs have an output price: set the output price to 0 for GPU-seconds, requests and frames")]
    OutputPriceWithoutTokens,
    #[msg("This account has the layout of an older program version: run `tally admin migrate` (or upgrade_account) to bring it up to date")]
    AccountNeedsUpgrade,
    #[msg("This account is already up to date, or is not an account upgrade_account converts")]
    AccountUpToDate,
}

impl TallyError {
    /// The error `error!(self)` builds, with the caller's file and line as its
    /// origin, built in one place instead of at every check: `error!` and `require!`
    /// expand the name lookup, the message formatting and the error's assembly at
    /// each of the ~90 checks, which was about 60 instructions each in the program.
    #[cold]
    #[inline(never)]
    #[track_caller]
    pub fn at_caller(self) -> Error {
        let at = std::panic::Location::caller();
        Error::from(AnchorError {
            error_name: self.name(),
            error_code_number: self.into(),
            error_msg: self.to_string(),
            error_origin: Some(ErrorOrigin::Source(Source {
                filename: at.file(),
                line: at.line(),
            })),
            compared_values: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_built_out_of_line_is_the_one_error_would_build() {
        let line = line!() + 1;
        let built = TallyError::JobExpired.at_caller();
        let Error::AnchorError(built) = built else {
            panic!("an Anchor error");
        };
        assert_eq!(built.error_name, "JobExpired");
        assert_eq!(built.error_code_number, u32::from(TallyError::JobExpired));
        assert_eq!(built.error_msg, TallyError::JobExpired.to_string());
        let Some(ErrorOrigin::Source(origin)) = &built.error_origin else {
            panic!("the caller's file and line: {:?}", built.error_origin);
        };
        assert_eq!((origin.filename, origin.line), (file!(), line));
        // The same as `error!` at that line.
        let Error::AnchorError(reference) = error!(TallyError::JobExpired) else {
            panic!("an Anchor error");
        };
        assert_eq!(
            (
                reference.error_name,
                reference.error_code_number,
                reference.error_msg
            ),
            (built.error_name, built.error_code_number, built.error_msg)
        );
    }

    #[test]
    fn ensure_returns_the_error_only_when_the_check_fails() {
        fn check(ok: bool) -> Result<u8> {
            ensure!(ok, TallyError::JobExpired);
            Ok(1)
        }
        assert_eq!(check(true).unwrap(), 1);
        assert_eq!(
            check(false).unwrap_err(),
            Error::from(TallyError::JobExpired)
        );
    }
}
