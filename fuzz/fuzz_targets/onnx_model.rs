//! Fuzz target: arbitrary bytes as an ONNX model (parser, validator, graph builder, one forward pass).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static THREADS: std::sync::Once = std::sync::Once::new();
    THREADS.call_once(|| tch::set_num_threads(1));
    harness::onnx_model(data);
});
