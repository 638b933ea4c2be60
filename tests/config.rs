//! Config parsing: the documented defaults, strictness, locations in errors, sidecar overrides, the CLI.

use std::path::Path;
use std::process::Command;

use robustd::config::{Config, ConfigError, Method, Norm, DEFAULT_YAML};

#[test]
fn default_yaml_documents_exactly_the_built_in_defaults() {
    let parsed = Config::from_yaml(DEFAULT_YAML, Path::new("configs/default.yaml")).unwrap();
    assert_eq!(parsed, Config::default());
}

#[test]
fn empty_document_and_partial_document_take_defaults() {
    let cfg = Config::from_yaml("{}", Path::new("empty.yaml")).unwrap();
    assert_eq!(cfg, Config::default());
    let cfg = Config::from_yaml("threat:\n  eps: 0.03\n  norm: l2\n", Path::new("p.yaml")).unwrap();
    assert_eq!(cfg.threat.eps, 0.03);
    assert_eq!(cfg.threat.norm, Norm::L2);
    assert_eq!(cfg.train, Config::default().train);
}

#[test]
fn unknown_key_is_an_error_with_line_and_column() {
    let err = Config::from_yaml(
        "threat:\n  eps: 0.1\n  epsilon: 0.2\n",
        Path::new("bad.yaml"),
    )
    .unwrap_err();
    match &err {
        ConfigError::Parse {
            line,
            column,
            message,
            ..
        } => {
            assert_eq!(*line, 3, "{err}");
            assert!(*column >= 1);
            assert!(message.contains("epsilon"), "{message}");
        }
        other => panic!("expected a located parse error, got {other:?}"),
    }
    assert!(err.to_string().starts_with("bad.yaml:3:"), "{err}");
}

#[test]
fn wrong_types_and_ranges_are_rejected() {
    for (doc, needle) in [
        ("threat: {eps: fast}", "eps"),
        ("threat: {eps: 1.5}", "threat.eps"),
        ("threat: {norm: l7}", "l7"),
        ("train: {method: magic}", "magic"),
        ("eval: {attacks: [pgd, deepfool]}", "deepfool"),
        ("memorization: {subset_ratio: 1.0}", "subset_ratio"),
        ("model: {mean: [0.5, 0.5], std: [0.5]}", "model.std"),
        ("model: {mean: [0.5], std: [0.0]}", "positive"),
        ("train: {bat: {w_min: 2.0, w_max: 1.0}}", "w_min"),
        ("train: {optimizer: {name: rmsprop}}", "rmsprop"),
        ("- just\n- a list\n", "bad.yaml"),
        ("threat: [unclosed\n", "bad.yaml"),
    ] {
        let err = Config::from_yaml(doc, Path::new("bad.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle),
            "`{doc}` gave `{err}`, expected it to mention `{needle}`"
        );
    }
}

#[test]
fn alias_bombs_are_refused() {
    let mut doc = String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    let mut prev = 'a';
    for name in ['b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'] {
        doc.push_str(&format!("{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        prev = name;
    }
    assert!(Config::from_yaml(&doc, Path::new("bomb.yaml")).is_err());
}

#[test]
fn sidecar_overrides_merge_deeply_and_stay_strict() {
    let base = Config::default();
    let cfg = base
        .with_overrides(
            "train:\n  method: pgd-at\n  bat: {beta: 0.5}\n",
            Path::new("m.yaml"),
        )
        .unwrap();
    assert_eq!(cfg.train.method, Method::PgdAt);
    assert_eq!(cfg.train.bat.beta, 0.5);
    assert_eq!(cfg.train.bat.lambda, base.train.bat.lambda);
    let err = base
        .with_overrides("train: {methd: bat}", Path::new("m.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("m.yaml") && err.contains("methd"), "{err}");
    assert_ne!(cfg.hash_hex(), base.hash_hex());
}

#[test]
fn check_config_cli_prints_resolved_config_or_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "threat: {eps: 0.05}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_robustd"))
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("eps: 0.05") && stdout.contains("apgd_steps: 100"),
        "{stdout}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "daemon:\n  stable_ms: 10\n  polling: true\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_robustd"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml:3:") && stderr.contains("polling"),
        "{stderr}"
    );
}
