//! `robustd compare` as a user runs it: every method under every seed from a fresh copy of the model, the
//! atypicality flags computed once, and the table files (YAML, Markdown, trade-off PNG).

mod cli_support;

use cli_support::*;
use robustd::report::comparison::{Comparison, COMPARISON_SCHEMA};
use robustd::report::sha256_hex;

#[test]
fn compare_runs_each_method_and_seed_and_writes_the_table_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = tiny_config(root, "");
    let run = robustd(
        root,
        &[
            "compare",
            s(&trained_model()),
            "--config",
            s(&config),
            "--methods",
            "pgd-at,bat",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--train-samples",
            "300",
            "--n",
            "30",
            "--out",
            "cmp",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.text());
    let out = root.join("cmp");
    let text = std::fs::read_to_string(out.join("comparison.yaml")).unwrap();
    let cmp: Comparison = serde_norway::from_str(&text).unwrap();
    assert_eq!(cmp.schema, COMPARISON_SCHEMA);
    assert_eq!(
        cmp.model.sha256,
        sha256_hex(&std::fs::read(trained_model()).unwrap())
    );

    // The same budget for every run; PGD-only evaluation by default.
    assert_eq!(cmp.budget.epochs, 1);
    assert_eq!(cmp.budget.train_samples + cmp.budget.val_samples, 300);
    assert_eq!(cmp.budget.eval_samples, 30);
    assert_eq!(cmp.budget.eval_attacks, ["pgd"]);
    assert_eq!(cmp.budget.seeds, [0, 1]);

    // Four runs, each its own written-back file; flags computed once (one holdout estimate: 2 half models in the
    // log, trained or loaded from the memorization cache).
    let runs: Vec<(String, u64)> = cmp
        .runs
        .iter()
        .map(|r| (r.method.clone(), r.seed))
        .collect();
    assert_eq!(
        runs,
        [
            ("pgd-at".into(), 0),
            ("pgd-at".into(), 1),
            ("bat".into(), 0),
            ("bat".into(), 1)
        ]
    );
    for r in &cmp.runs {
        let bytes = std::fs::read(out.join(&r.fine_tuned_model.path)).unwrap();
        assert_eq!(sha256_hex(&bytes), r.fine_tuned_model.sha256, "{r:?}");
        assert!(out.join(&r.training_log).is_file() && out.join(&r.per_sample).is_file());
        assert!(r.parity_max_logit_diff <= 1e-4, "{r:?}");
        assert_eq!(r.epochs, 1);
        assert!((0.0..=1.0).contains(&r.robust_acc) && r.robust_acc <= r.clean_acc);
    }
    assert_ne!(
        cmp.runs[0].fine_tuned_model.sha256, cmp.runs[1].fine_tuned_model.sha256,
        "two seeds gave the same model"
    );
    let atypicality = cmp.atypicality.as_ref().expect("BAT's flags");
    assert!(atypicality.source.contains("holdout"));
    assert_eq!(
        run.stderr.matches("memorization subset model").count(),
        2,
        "the K=2 holdout ran once: {}",
        run.text()
    );

    // Per method: mean ± std over its two runs.
    for summary in &cmp.methods {
        let mine: Vec<f64> = cmp
            .runs
            .iter()
            .filter(|r| r.method == summary.method)
            .map(|r| r.robust_acc)
            .collect();
        assert_eq!(summary.runs, 2);
        assert!((summary.robust_acc.mean - (mine[0] + mine[1]) / 2.0).abs() < 1e-12);
        assert!((summary.robust_acc.std - (mine[0] - mine[1]).abs() / 2f64.sqrt()).abs() < 1e-12);
    }

    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    for row in ["| original | 1 |", "| pgd-at | 2 |", "| bat | 2 |"] {
        assert!(md.contains(row), "{md}");
    }
    assert!(run.stdout.contains("| pgd-at | 2 |"), "{}", run.text());
    let png = std::fs::read(out.join("plots/tradeoff.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(entries(&root.join("state/cli")).is_empty());
}

#[test]
fn an_interrupted_compare_keeps_its_finished_runs_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = tiny_config(root, "");
    let model = trained_model();
    let args = [
        "compare",
        s(&model),
        "--config",
        s(&config),
        "--methods",
        "pgd-at,trades",
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--train-samples",
        "300",
        "--n",
        "20",
        "--out",
        "cmp",
    ];
    let log = root.join("first.log");
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .current_dir(root)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Stop it once the first run's record is kept.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let first_done = || {
        entries(&root.join("state/cli")).iter().any(|d| {
            root.join("state/cli")
                .join(d)
                .join("pgd-at-seed0/result.yaml")
                .is_file()
        })
    };
    while !first_done() {
        assert!(
            std::time::Instant::now() < deadline,
            "no run finished in time"
        );
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{text}");
    assert!(!root.join("cmp/comparison.yaml").exists());

    let second = robustd(root, &args);
    assert_eq!(second.code, 0, "{}", second.text());
    let reused: Vec<&str> = second
        .stderr
        .lines()
        .filter(|l| l.contains("reused from the comparison's checkpoint"))
        .collect();
    assert!(
        reused.iter().any(|l| l.contains("run=pgd-at-seed0")),
        "{}",
        second.text()
    );
    let cmp: Comparison =
        serde_norway::from_str(&std::fs::read_to_string(root.join("cmp/comparison.yaml")).unwrap())
            .unwrap();
    assert_eq!(cmp.runs.len(), 4);
    assert!(entries(&root.join("state/cli")).is_empty());
}
