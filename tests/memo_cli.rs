//! `robustd memorization` end to end through the real binary on real Fashion-MNIST and the exported MLP: the
//! files it promises (scores importable again, the YAML summary in the report's shape, both PNGs), a second run
//! served from the cache, and a run on imported scores.

mod memo_support;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use memo_support::fixture;
use robustd::memo::output::{Summary, SUMMARY_SCHEMA};
use robustd::train::ScoreTable;

fn robustd<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_robustd"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "robustd {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn summary(dir: &Path) -> Summary {
    serde_norway::from_str(&std::fs::read_to_string(dir.join("memorization.yaml")).unwrap())
        .unwrap()
}

fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG", "{}", path.display());
    (
        u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
    )
}

#[test]
fn memorization_command_writes_scores_summary_and_plots_and_reuses_its_cache() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "paths: {{state: {}}}\n\
             runtime: {{threads: 2}}\n\
             dataset: {{train_samples: 600, eval_samples: 100}}\n\
             train: {{batch_size: 64, optimizer: {{schedule: constant, weight_decay: 0.0}}}}\n\
             eval: {{pgd: {{steps: 5}}}}\n\
             memorization: {{harmful_top: 10, threshold: 0.5}}\n",
            work.path().join("state").display()
        ),
    )
    .unwrap();
    let model = fixture("mlp_legacy");
    let out = work.path().join("first");
    let args = |out: &Path, extra: &[&str]| {
        let mut args: Vec<std::ffi::OsString> = [
            OsStr::new("memorization"),
            model.as_os_str(),
            "--config".as_ref(),
            config.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ]
        .map(OsStr::to_os_string)
        .to_vec();
        args.extend(extra.iter().map(|a| a.into()));
        args
    };
    // The default estimator, learning-speed, with 4 epochs.
    let printed = robustd(&args(&out, &["--epochs", "4"]));
    assert!(printed.contains("learning-speed"), "{printed}");
    assert!(
        printed.contains("estimator  learning-speed, 1 model, 4 epochs, 600 samples"),
        "{printed}"
    );

    let s = summary(&out);
    assert_eq!(s.schema, SUMMARY_SCHEMA);
    let m = &s.memorization;
    assert_eq!(m.estimator, "learning-speed");
    assert_eq!(m.models, 1);
    assert_eq!(m.threshold, 0.5);
    assert!(!m.cached);
    assert_eq!(m.scored_samples, Some(600));
    assert_eq!(m.undefined_scores, Some(0));
    assert_eq!(m.histogram.counts.iter().sum::<u64>(), 600);
    assert!(m.score.as_deref().unwrap().contains("p(y|x)"));
    let budget = m.budget.as_ref().unwrap();
    assert_eq!((budget.samples, budget.models, budget.epochs), (600, 1, 4));
    let check = m.self_check.as_ref().unwrap();
    assert_eq!(check.epochs_counted, Some(4));
    assert_eq!(check.split_half.as_deref(), Some("even vs odd epochs"));
    assert!(check.split_half_top_decile.unwrap() > 0.3, "{check:?}");
    assert!(
        check.in_subset_acc.unwrap() > 0.5 && check.test_acc.unwrap() > 0.5,
        "{check:?}"
    );
    assert!(m.harmful_atypical.len() <= 10);
    assert_eq!(s.subset_models.len(), 1);
    let groups = s.groups.as_ref().unwrap();
    assert_eq!(groups.train_deciles.len(), 10);
    if let Some(t) = &groups.test {
        assert_eq!(t.typical.samples + t.atypical.samples, 100);
    }
    for file in &s.files {
        assert!(out.join(file).is_file(), "{file}");
    }
    assert_eq!(png_size(&out.join("memorization_hist.png")), (900, 600));
    if !m.harmful_atypical.is_empty() {
        assert!(s.files.contains(&"harmful_atypical.png".to_string()));
        png_size(&out.join("harmful_atypical.png"));
    }
    // scores.npy reads back by source index (the first 600 training samples).
    let table = ScoreTable::load(&out.join("scores.npy"), None).unwrap();
    assert_eq!(table.len(), 600);

    // Same model, same data, same settings: the model comes from the cache.
    let second = work.path().join("second");
    robustd(&args(&second, &["--epochs", "4"]));
    let again = summary(&second);
    assert!(again.memorization.cached);
    assert!(again.subset_models.iter().all(|m| m.cached));
    assert_eq!(
        std::fs::read(second.join("scores.npy")).unwrap(),
        std::fs::read(out.join("scores.npy")).unwrap()
    );

    // Feldman-Zhang with one epoch per subset model: they cannot fit their subsets, and the summary says so.
    let underfit = work.path().join("underfit");
    let printed = robustd(&args(
        &underfit,
        &[
            "--estimator",
            "feldman-zhang",
            "--k",
            "4",
            "--ratio",
            "0.5",
            "--max-epochs",
            "1",
            "--scores-only",
        ],
    ));
    let s = summary(&underfit);
    let m = &s.memorization;
    assert_eq!(
        (m.estimator.as_str(), m.models, m.subset_ratio),
        ("feldman-zhang", 4, 0.5)
    );
    assert_eq!(s.subset_models.len(), 4);
    assert!(s.subset_models.iter().all(|f| f.epochs == 1));
    let check = m.self_check.as_ref().unwrap();
    assert!(!check.reliable);
    assert!(check.in_subset_acc_min.unwrap() < 0.95, "{check:?}");
    assert!(
        check
            .warnings
            .iter()
            .any(|w| w.contains("scores unreliable") && w.contains("max_epochs")),
        "{check:?}"
    );
    assert!(
        printed.contains("UNRELIABLE") && printed.contains("warning"),
        "{printed}"
    );

    // Imported scores instead of an estimator.
    let imported = work.path().join("imported");
    robustd(&args(
        &imported,
        &["--import", out.join("scores.npy").to_str().unwrap()],
    ));
    let s = summary(&imported);
    assert_eq!(s.memorization.estimator, "imported");
    assert_eq!(
        s.memorization.atypical_share,
        summary(&out).memorization.atypical_share
    );
    assert!(s.memorization.self_check.is_none());
    assert!(s.subset_models.is_empty());
    assert!(
        s.groups.as_ref().unwrap().test.is_none(),
        "no consistency without an estimator"
    );
}
