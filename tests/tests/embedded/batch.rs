//! Batched settlement through an address lookup table (v0 transactions): the
//! published goals are at least 20 receipts per transaction (packed receipts v2, with
//! the output counter) and at most 3,000 CU each.
use tally_tests::bench::{alt_capacity, MAX_TX_BYTES};

#[test]
fn a_lookup_table_fits_at_least_20_receipts_at_most_3000_cu_each() {
    let capacity = alt_capacity();
    println!("{capacity:?}");
    assert!(capacity.tx_bytes <= MAX_TX_BYTES);
    assert!(capacity.receipts_per_tx >= 20, "{capacity:?}");
    assert!(capacity.cu_per_receipt <= 3_000, "{capacity:?}");
}
