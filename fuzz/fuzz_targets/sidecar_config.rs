//! Fuzz target: arbitrary text as a sidecar config on top of the defaults.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::sidecar_config(data);
});
