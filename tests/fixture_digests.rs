//! The generated fixtures are the committed ones, to the byte. tests/fixtures/DIGESTS.sha256 lists the SHA-256 of
//! every file `make fixtures` writes into tests/fixtures/generated but `shipped/` (scripts/export_fixtures.py and
//! scripts/train_demo_cnn.py seed every draw and pin the float arithmetic, so a fresh clone on any x86-64 machine
//! writes the same bytes); this test recomputes them and names every file that differs, is missing, or is a
//! generated case nobody listed. A test that passes on one machine and fails on another then means the test, not
//! the fixture it happened to get.
//!
//! A case directory (`ops/<case>/`, `backend/node/<case>/`: any directory holding a `model.onnx`) is one entry, its
//! digest the SHA-256 of its sorted `path<TAB>sha256` lines, which keeps the list to one line per case.
//!
//! One kind of file is digested without its values: a floating-point expected output of an ONNX backend node case
//! (`backend/node/<case>/test_data_set_<k>/output_<i>.pb`). The `onnx` package computes those with numpy on the
//! exporting machine, and numpy dispatches exp, pow, tanh, log and friends per instruction set (AVX-512 and AVX2
//! kernels differ in the last ulps): on an AVX2-only machine 59 cases (Attention, Elu, Selu, Pow, LRN, ...) came
//! out a few ulps off the list recorded with AVX-512. Those values are references that tests/onnx_backend.rs
//! compares with a tolerance, not fixtures any test needs bit-exact, so their line carries the SHA-256 of the
//! tensor with its payload removed (name, element type, dims: [`float_output_skeleton`]). Everything else stays
//! byte-strict: every model, every input (drawn from seeded generators, the same on every machine), every integer
//! or boolean expected output, and every file outside `backend/node/`.
//! After a deliberate change to the fixture scripts (or the op tables, which pick the backend cases), rewrite the
//! list with `make fixture-digests` (a fresh export, then this test with ROBUSTD_WRITE_DIGESTS=1).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use prost::Message;
use robustd::onnx::proto::TensorProto;
use sha2::{Digest, Sha256};

/// Where the digests were recorded; other architectures run other float kernels (NEON/SVE, fused multiply-adds),
/// so there only the presence of every listed file is checked.
const RECORDED_ON: &str = "x86_64";

const HEADER: &str = "\
# SHA-256 of the files `make fixtures` writes into tests/fixtures/generated, checked by tests/fixture_digests.rs.
# A line ending in / is a case directory: the SHA-256 of its sorted `relative path<TAB>file SHA-256` lines; an
# ONNX backend node case's floating-point expected outputs (numpy's, per instruction set) count without values.
# Byte-identical on every x86-64 machine, since scripts/reproducible.py pins ATen to its baseline kernels, MKL to
# its reproducible branch, oneDNN/NNPACK off and one thread, and every model and input is drawn right after
# seeding; that includes fmnist_cnn_small.onnx, trained for an epoch under the same pins.
# Rewrite with `make fixture-digests` after a deliberate change to the fixture scripts or the op tables.
";

fn generated_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/generated")
}

fn list_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/DIGESTS.sha256")
}

fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex::encode(Sha256::digest(&bytes))
}

/// Files under `dir` (recursively), as `/`-separated paths relative to it, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// ONNX element types that numpy computes in floating point: float, float16, double, complex64/128, bfloat16.
const FLOAT_TYPES: &[i32] = &[1, 10, 11, 14, 15, 16];

/// For a backend node case's expected output `rel` that holds floating-point values, the SHA-256 of its tensor
/// without the values (see the module docs); `None` for any other file, digested byte for byte.
fn float_output_skeleton(case_dir: &Path, rel: &str) -> Option<String> {
    let name = rel.rsplit('/').next().unwrap();
    let in_backend_node = case_dir
        .parent()
        .is_some_and(|p| p.ends_with("backend/node"));
    if !in_backend_node || !name.starts_with("output_") || !name.ends_with(".pb") {
        return None;
    }
    let path = case_dir.join(rel);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut t = TensorProto::decode(bytes.as_slice())
        .unwrap_or_else(|e| panic!("{}: not a TensorProto: {e}", path.display()));
    if !FLOAT_TYPES.contains(&t.data_type) {
        return None;
    }
    t.raw_data.clear();
    t.float_data.clear();
    t.double_data.clear();
    t.int32_data.clear(); // float16 and bfloat16 values, when not in raw_data
    Some(format!(
        "float values not digested {}",
        hex::encode(Sha256::digest(t.encode_to_vec()))
    ))
}

fn case_dir_digest(dir: &Path) -> String {
    let mut lines = String::new();
    for rel in files_under(dir) {
        let digest =
            float_output_skeleton(dir, &rel).unwrap_or_else(|| sha256_file(&dir.join(&rel)));
        writeln!(lines, "{rel}\t{digest}").unwrap();
    }
    hex::encode(Sha256::digest(lines.as_bytes()))
}

/// Directories of tests/fixtures/generated left out of the list. `shipped/` is scripts/export_shipped_fixtures.py's
/// output, written by onnxruntime itself: its optimizer's `all` level blocks the NCHWc ops for the CPU it runs on
/// (onnxruntime warns that such a file belongs to that machine), and its static quantizer calibrates with kernels
/// it picks per CPU, so the bytes are not the same on every x86-64 machine. Every test on those files compares
/// robustd with onnxruntime on the same file, which holds whatever bytes it got.
const NOT_DIGESTED: &[&str] = &["shipped"];

/// Every entry the fixture scripts wrote: top-level files and case directories (`name/`), with their digests.
/// Dot files (the scripts' `.stamp`s) are bookkeeping, not fixtures; [`NOT_DIGESTED`] directories are skipped.
fn generated_entries(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with('.') {
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if NOT_DIGESTED.contains(&rel.as_str()) {
                continue;
            }
            if path.join("model.onnx").is_file() {
                out.insert(format!("{rel}/"), case_dir_digest(&path));
            } else if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(rel, sha256_file(&path));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The committed list: entry -> digest.
fn committed() -> BTreeMap<String, String> {
    let path = list_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (digest, entry) = l
                .split_once("  ")
                .unwrap_or_else(|| panic!("{}: not `<sha256>  <path>`: {l}", path.display()));
            (entry.to_string(), digest.to_string())
        })
        .collect()
}

fn write_list(entries: &BTreeMap<String, String>) {
    let mut text = HEADER.to_string();
    for (entry, digest) in entries {
        writeln!(text, "{digest}  {entry}").unwrap();
    }
    std::fs::write(list_path(), text).unwrap();
}

/// Entries under these prefixes are rewritten wholesale by every export, so one found there but not listed is a
/// new case the list misses. Elsewhere an unlisted file may be left from an older export: reported, not failed.
const REWRITTEN_WHOLESALE: &[&str] = &["ops/", "backend/"];

#[test]
fn generated_fixtures_match_the_committed_digests() {
    let root = generated_dir();
    assert!(
        root.join("mlp_legacy.onnx").is_file(),
        "fixtures missing in {}: run `make fixtures`",
        root.display()
    );
    let found = generated_entries(&root);
    if std::env::var_os("ROBUSTD_WRITE_DIGESTS").is_some() {
        write_list(&found);
        println!("wrote {} entries to {}", found.len(), list_path().display());
        return;
    }
    let listed = committed();
    assert!(
        listed.len() > 100,
        "{} lists {} entries",
        list_path().display(),
        listed.len()
    );
    let compare_contents = std::env::consts::ARCH == RECORDED_ON;
    let mut problems = Vec::new();
    for (entry, digest) in &listed {
        match found.get(entry) {
            None => problems.push(format!("missing:   {entry}")),
            Some(d) if compare_contents && d != digest => {
                problems.push(format!("differs:   {entry} (sha256 {d}, listed {digest})"))
            }
            Some(_) => {}
        }
    }
    for entry in found.keys().filter(|e| !listed.contains_key(*e)) {
        if REWRITTEN_WHOLESALE.iter().any(|p| entry.starts_with(p)) {
            problems.push(format!("unlisted:  {entry}"));
        } else {
            println!(
                "not listed (left from an older export? `make clean fixtures` removes it): {entry}"
            );
        }
    }
    if !compare_contents {
        println!(
            "digests recorded on {RECORDED_ON}; on {} only the presence of the {} entries is checked",
            std::env::consts::ARCH,
            listed.len()
        );
    }
    assert!(
        problems.is_empty(),
        "{} of {} fixture entries in {} are not the committed ones ({}):\n{}\n\
         If the fixture scripts changed on purpose, rewrite the list with `make fixture-digests`; otherwise \
         something in the export is not reproducible (different torch/onnx versions than scripts/requirements.txt?).",
        problems.len(),
        listed.len(),
        root.display(),
        list_path().display(),
        problems.join("\n")
    );
}
