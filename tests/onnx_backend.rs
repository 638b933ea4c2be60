//! The ONNX backend test cases shipped with the `onnx` package — the node cases from
//! `onnx.backend.test.case.node.collect_testcases(None)` for every supported op type, and the packaged
//! `pytorch-converted` cases — run through the interpreter against their expected outputs. Every case listed in
//! tests/onnx_backend_pass.txt must pass; `ROBUSTD_BLESS_BACKEND=1` rewrites the list from the passing set.

mod onnx_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prost::Message;
use robustd::config::Limits;
use robustd::onnx::proto::TensorProto;
use robustd::onnx::tensor_data::TensorData;
use robustd::onnx::{Interpreter, OnnxModel, TchOptions};
use tch::{Device, Kind, Tensor};

const PASS_LIST: &str = "tests/onnx_backend_pass.txt";

fn read_pb(path: &Path) -> Result<Tensor, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let proto = TensorProto::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    TensorData::from_proto(&proto, None)
        .map_err(|e| e.to_string())?
        .to_tch()
        .map_err(|e| e.to_string())
}

fn numbered(dir: &Path, prefix: &str) -> Result<Vec<Tensor>, String> {
    (0..)
        .map(|k| dir.join(format!("{prefix}_{k}.pb")))
        .take_while(|p| p.is_file())
        .map(|p| read_pb(&p))
        .collect()
}

/// Equal within the backend suite's tolerance (rtol 1e-3, atol 1e-5; 1e-2 for 16-bit floats, whose rounding
/// differs between libtorch and numpy); NaNs match NaNs.
fn check(ours: &Tensor, expected: &Tensor) -> Result<(), String> {
    if ours.size() != expected.size() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            ours.size(),
            expected.size()
        ));
    }
    if (ours.kind() == Kind::Bool) != (expected.kind() == Kind::Bool) {
        return Err(format!(
            "type {:?}, expected {:?}",
            ours.kind(),
            expected.kind()
        ));
    }
    if ours.numel() == 0 {
        return Ok(());
    }
    let (rtol, atol) = match expected.kind() {
        Kind::Half | Kind::BFloat16 => (1e-2, 1e-2),
        _ => (1e-3, 1e-5),
    };
    let a = ours.to_kind(Kind::Double);
    let b = expected.to_kind(Kind::Double);
    let both_nan = a.isnan().logical_and(&b.isnan());
    let same_inf = a.isinf().logical_and(&a.eq_tensor(&b));
    let close = (&a - &b).abs().le_tensor(&(b.abs() * rtol + atol));
    let ok = close
        .logical_or(&both_nan)
        .logical_or(&same_inf)
        .all()
        .int64_value(&[])
        == 1;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "values differ: max |diff| {:.3e}",
            (a - b)
                .abs()
                .nan_to_num(0.0, None, None)
                .max()
                .double_value(&[])
        ))
    }
}

fn run_case(dir: &Path) -> Result<(), String> {
    let model =
        OnnxModel::load(&dir.join("model.onnx"), &Limits::default()).map_err(|e| e.to_string())?;
    let graph =
        Interpreter::new(&model, Device::Cpu, TchOptions::default()).map_err(|e| e.to_string())?;
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    for set in sets {
        let inputs = numbered(&set, "input")?;
        let expected = numbered(&set, "output")?;
        let ours = graph.run(&inputs).map_err(|e| e.to_string())?;
        for (k, (o, e)) in ours.iter().zip(&expected).enumerate() {
            check(o, e).map_err(|m| format!("output {k}: {m}"))?;
        }
    }
    Ok(())
}

#[test]
fn listed_backend_cases_pass() {
    let root = onnx_support::generated_dir().join("backend");
    let mut cases = Vec::new();
    for suite in ["node", "pytorch-converted"] {
        let mut dirs: Vec<_> = std::fs::read_dir(root.join(suite))
            .unwrap_or_else(|e| panic!("{}: {e} (run `make fixtures`)", root.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        dirs.sort();
        cases.extend(dirs.into_iter().map(|d| {
            (
                format!("{suite}/{}", d.file_name().unwrap().to_string_lossy()),
                d,
            )
        }));
    }
    let mut passed = BTreeSet::new();
    let mut failed = Vec::new();
    for (name, dir) in &cases {
        let outcome =
            std::panic::catch_unwind(|| run_case(dir)).unwrap_or_else(|_| Err("panicked".into()));
        match outcome {
            Ok(()) => {
                passed.insert(name.clone());
            }
            Err(e) => failed.push((name.clone(), e)),
        }
    }
    let list_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(PASS_LIST);
    if std::env::var_os("ROBUSTD_BLESS_BACKEND").is_some() {
        let body: String = passed.iter().map(|n| format!("{n}\n")).collect();
        let header = "# ONNX backend cases that must pass (tests/onnx_backend.rs); ROBUSTD_BLESS_BACKEND=1 rewrites.";
        std::fs::write(&list_path, format!("{header}\n{body}")).unwrap();
    }
    let required: BTreeSet<String> = std::fs::read_to_string(&list_path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    println!(
        "{} of {} backend cases pass ({} required)",
        passed.len(),
        cases.len(),
        required.len()
    );
    for (name, why) in &failed {
        println!(
            "  not passing: {name}: {}",
            why.lines().next().unwrap_or("")
        );
    }
    let regressions: Vec<String> = failed
        .iter()
        .filter(|(n, _)| required.contains(n))
        .map(|(n, why)| format!("{n}: {why}"))
        .collect();
    let absent: Vec<&String> = required
        .iter()
        .filter(|n| !cases.iter().any(|(c, _)| c == *n))
        .collect();
    assert!(
        regressions.is_empty(),
        "required backend cases fail:\n{}",
        regressions.join("\n")
    );
    assert!(
        absent.is_empty(),
        "required backend cases missing from the fixtures: {absent:?}"
    );
}
