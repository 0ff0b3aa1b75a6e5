//! Account sizes and field offsets are part of the interface (RPC memcmp filters,
//! the dashboard, rent): pinned here so a change is a deliberate one.
use anchor_lang::Space;
use std::mem::{offset_of, size_of};
use tally::state::{ClientJobs, Config, Earnings, Job, Operator, Revenue, Vault};

#[test]
fn account_sizes_are_pinned() {
    assert_eq!(8 + Config::INIT_SPACE, 385, "Config");
    assert_eq!(8 + Vault::INIT_SPACE, 162, "Vault");
    assert_eq!(8 + Operator::INIT_SPACE, 213, "Operator");
    assert_eq!(8 + Earnings::INIT_SPACE, 153, "Earnings");
    assert_eq!(8 + Revenue::INIT_SPACE, 93, "Revenue");
    assert_eq!(Revenue::V1_ACCOUNT_SIZE, 85, "Revenue v1");
    assert_eq!(8 + ClientJobs::INIT_SPACE, 57, "ClientJobs");
    assert_eq!(Job::ACCOUNT_SIZE, 352, "Job");
    assert_eq!(Job::V1_ACCOUNT_SIZE, 304, "Job v1");
    assert_eq!(size_of::<Job>() % 8, 0, "Job stays 8-byte aligned");
}

#[test]
fn job_field_offsets_are_pinned() {
    // Offsets within the account data (after the 8-byte discriminator), for memcmp.
    assert_eq!(8 + offset_of!(Job, client), 8);
    assert_eq!(8 + offset_of!(Job, operator), 40);
    assert_eq!(8 + offset_of!(Job, mint), 72);
    assert_eq!(8 + offset_of!(Job, job_id), 136);
    assert_eq!(8 + offset_of!(Job, escrow_left), 176);
    assert_eq!(8 + offset_of!(Job, status), 301);
    assert_eq!(8 + offset_of!(Job, input_price), 152);
    assert_eq!(8 + offset_of!(Job, output_price), 304);
    assert_eq!(8 + offset_of!(Job, settled_output), 312);
    assert_eq!(8 + offset_of!(Job, model), 320);
}
