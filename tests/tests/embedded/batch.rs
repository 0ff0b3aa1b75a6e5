//! Batched settlement through an address lookup table (v0 transactions): the
//! published goals are at least 20 receipts per transaction (packed receipts v2, with
//! the output counter), at most 1,500 CU for each receipt a transaction adds and
//! 2,000 CU per receipt with the transaction's fixed cost shared out.
use tally_tests::bench::{
    alt_capacity, quorum_alt_capacity, quorum_relayed_capacity, MAX_TX_BYTES,
};

#[test]
fn a_lookup_table_fits_at_least_20_receipts_at_most_1500_cu_each() {
    let capacity = alt_capacity();
    println!("{capacity:?}");
    assert!(capacity.tx_bytes <= MAX_TX_BYTES);
    assert!(capacity.receipts_per_tx >= 20, "{capacity:?}");
    assert!(capacity.cu_per_extra_receipt <= 1_500, "{capacity:?}");
    assert!(capacity.cu_per_receipt <= 2_000, "{capacity:?}");
}

/// A 2-of-3 oracle set on the path the quorum daemons use: both oracles sign the
/// settle transaction itself. Its second signature costs 64 bytes (one receipt fewer)
/// and one more signature fee; the relayed path, two Ed25519 signatures per receipt,
/// carries 2 receipts a transaction at ~5.9k CU each (scripts/bench).
#[test]
fn a_two_of_three_quorum_signing_the_transaction_still_fits_20_receipts() {
    let capacity = quorum_alt_capacity(3, 2);
    println!("{capacity:?}");
    assert!(capacity.tx_bytes <= MAX_TX_BYTES);
    assert!(capacity.receipts_per_tx >= 20, "{capacity:?}");
    assert!(capacity.cu_per_extra_receipt <= 1_500, "{capacity:?}");
    assert!(capacity.cu_per_receipt <= 2_100, "{capacity:?}");
    let relayed = quorum_relayed_capacity(3, 2);
    assert!(
        relayed.fee_lamports_per_receipt > 10 * capacity.fee_lamports_per_receipt,
        "{relayed:?} vs {capacity:?}"
    );
}
