//! The gateway's SSE usage scanner never panics, and finds the same usage whatever
//! the chunking of the stream.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tally_oracle::gateway::StreamUsage;

fuzz_target!(|input: (u8, &[u8])| {
    let (chunk, data) = input;
    let mut whole = StreamUsage::default();
    whole.feed(data);
    let mut pieces = StreamUsage::default();
    for part in data.chunks(usize::from(chunk.max(1))) {
        pieces.feed(part);
    }
    // Lossy UTF-8 may differ at a split character; usage counts come from ASCII JSON.
    if std::str::from_utf8(data).is_ok() {
        assert_eq!(whole.usage, pieces.usage);
    }
});
