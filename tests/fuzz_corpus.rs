//! Replays the committed fuzz corpus (fuzz/corpus/<target>/) and any crash reproducers kept in
//! fuzz/regressions/<target>/ through the fuzz targets' own code (fuzz/harness.rs) on stable Rust: every input the
//! fuzzer ever kept — seeds, minimized finds, past crashes — must run without a panic, in the normal test suite.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn inputs(target: &str) -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files: Vec<_> = ["corpus", "regressions"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(root.join(dir).join(target)).ok())
        .flat_map(|rd| rd.flatten().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let files = inputs(target);
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} panicked", path.display());
    }
    files.len()
}

#[test]
fn the_onnx_corpus_runs_without_a_panic() {
    tch::set_num_threads(1);
    let n = replay("onnx_model", harness::onnx_model);
    assert!(n >= 100, "only {n} onnx corpus files");
}

#[test]
fn the_sidecar_corpus_runs_without_a_panic() {
    let n = replay("sidecar_config", harness::sidecar_config);
    assert!(n >= 20, "only {n} sidecar corpus files");
}
