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
             memorization: {{harmful_top: 10}}\n",
            work.path().join("state").display()
        ),
    )
    .unwrap();
    let model = fixture("mlp_legacy");
    let out = work.path().join("first");
    let args = |out: &Path| {
        [
            OsStr::new("memorization"),
            model.as_os_str(),
            "--config".as_ref(),
            config.as_os_str(),
            "--k".as_ref(),
            "4".as_ref(),
            "--ratio".as_ref(),
            "0.5".as_ref(),
            "--epochs".as_ref(),
            "3".as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ]
        .map(OsStr::to_os_string)
    };
    let printed = robustd(&args(&out));
    assert!(printed.contains("feldman-zhang"), "{printed}");

    let s = summary(&out);
    assert_eq!(s.schema, SUMMARY_SCHEMA);
    let m = &s.memorization;
    assert_eq!(m.estimator, "feldman-zhang");
    assert_eq!(m.models, 4);
    assert_eq!(m.subset_ratio, 0.5);
    assert_eq!(m.threshold, 0.15);
    assert!(!m.cached);
    assert_eq!(m.scored_samples, Some(600));
    assert_eq!(m.undefined_scores, Some(0));
    assert_eq!(m.histogram.counts.iter().sum::<u64>(), 600);
    assert!(m.harmful_atypical.len() <= 10);
    assert_eq!(s.subset_models.len(), 4);
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

    // Same model, same data, same settings: every subset model comes from the cache.
    let second = work.path().join("second");
    robustd(&args(&second));
    let again = summary(&second);
    assert!(again.memorization.cached);
    assert!(again.subset_models.iter().all(|m| m.cached));
    assert_eq!(
        std::fs::read(second.join("scores.npy")).unwrap(),
        std::fs::read(out.join("scores.npy")).unwrap()
    );

    // Imported scores instead of the estimator.
    let imported = work.path().join("imported");
    robustd(&[
        OsStr::new("memorization"),
        model.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--import".as_ref(),
        out.join("scores.npy").as_os_str(),
        "--out".as_ref(),
        imported.as_os_str(),
    ]);
    let s = summary(&imported);
    assert_eq!(s.memorization.estimator, "imported");
    assert_eq!(s.memorization.atypical_share, m.atypical_share);
    assert!(s.subset_models.is_empty());
    assert!(
        s.groups.as_ref().unwrap().test.is_none(),
        "no consistency without the estimator"
    );
}
