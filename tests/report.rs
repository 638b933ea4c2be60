//! The report layer on its own: a complete report (every optional section filled, as the full pipeline will)
//! round-trips and validates, the validator catches each broken rule, and the four plots render as PNGs with text.

use std::path::Path;

use robustd::durable::{write_atomic, write_yaml_atomic};
use robustd::report::plots::{self, Series, TradeoffPoint};
use robustd::report::*;

fn full_report(dir: &Path) -> Report {
    let model_bytes = b"model bytes stand-in";
    let tuned_bytes = b"fine-tuned bytes stand-in";
    std::fs::write(dir.join("m.onnx"), model_bytes).unwrap();
    std::fs::write(dir.join("m.bat.onnx"), tuned_bytes).unwrap();
    std::fs::create_dir_all(dir.join("plots")).unwrap();
    std::fs::write(dir.join("train_log.csv"), "epoch,loss\n1,0.5\n").unwrap();
    // The evaluation and training blocks as their modules serialize them.
    let eval = |clean: f64, worst: f64| -> EvalBlock {
        serde_norway::from_str(&format!(
            "samples: 1000
threat: {{norm: linf, eps: 0.1}}
mode: ensemble
clean_acc: {clean}
attacks:
  pgd: {{robust_acc: {pgd}, steps: 20, restarts: 1, attacked: 900, broken: 100, seconds: 3.0}}
  square: {{robust_acc: {worst}, queries: 1000, attacked: 100, broken: 2, seconds: 9.0}}
worst_case_acc: {worst}
ort_recheck: {{examples: 100, disagreements: 0, max_logit_diff: 3.0e-6, clean_disagreements: 0,
              clean_max_logit_diff: 1.0e-6}}
robust_acc_vs_eps: {{0.0: {clean}, 0.1: {worst}}}
warnings: []
reproducibility: {{seed: 0, sample_indices: [\"0-999\"], worst_case_robust: [], batch_size: 250,
                  device: cpu, robustd: 0.1.0, libtorch: 2.11.0}}
seconds: 12.0
groups:
  test:
    typical: {{samples: 900, clean: 0.95, robust: 0.5}}
    atypical: {{samples: 100, clean: 0.6, robust: 0.1}}
  train_deciles:
  - {{decile: 1, min_score: -0.1, max_score: 0.0, samples: 100, clean: 0.99, robust: 0.6}}
",
            pgd = worst + 0.02
        ))
        .unwrap()
    };
    let training: Training = serde_norway::from_str(
        "method: bat
formula: see DESIGN.md
constants: {beta: 1.0, lambda: 1.0}
optimizer: {name: sgd, lr: 0.01, momentum: 0.9, nesterov: false, weight_decay: 0.0005, schedule: cosine,
            warmup_epochs: 0}
epochs: 3
epochs_planned: 3
best_epoch: 3
best_val_robust_acc: 0.5
early_stopped: false
resumed_from: null
train_samples: 900
val_samples: 100
batch_size: 128
augmentation: none
atypicality: null
device: cpu
amp: false
channels_last: false
log: train_log.csv
seconds: 40.0
curves: []
",
    )
    .unwrap();
    Report {
        schema: REPORT_SCHEMA.into(),
        summary: Summary {
            model: "m.onnx".into(),
            verdict: Verdict::Improved,
            threat_model: ThreatModelInfo {
                norm: "linf".into(),
                eps: 0.1,
            },
            before: Some(AccuracySummary {
                clean_acc: 0.9,
                clean_acc_ci95: None,
                robust_acc_worst: 0.04,
                robust_acc_worst_ci95: None,
                preset: None,
                method: None,
            }),
            after: Some(AccuracySummary {
                clean_acc: 0.8,
                clean_acc_ci95: None,
                robust_acc_worst: 0.6,
                robust_acc_worst_ci95: None,
                preset: None,
                method: Some("bat".into()),
            }),
            atypical_share: Some(0.12),
            scope: None,
            warnings: vec![],
            artifacts: SummaryArtifacts {
                fine_tuned_model: Some("m.bat.onnx".into()),
                plots: vec![],
            },
        },
        model: ModelInfo {
            file: "m.onnx".into(),
            sha256: sha256_hex(model_bytes),
            opset: Some(18),
            ir_version: Some(8),
            producer: Some("pytorch".into()),
            inputs: vec![TensorSpec {
                name: "input".into(),
                shape: vec![
                    Dim::Symbolic("batch".into()),
                    Dim::Fixed(1),
                    Dim::Fixed(28),
                    Dim::Fixed(28),
                ],
                dtype: "float32".into(),
            }],
            outputs: vec![TensorSpec {
                name: "logits".into(),
                shape: vec![Dim::Symbolic("batch".into()), Dim::Fixed(10)],
                dtype: "float32".into(),
            }],
            parameters: Some(421_642),
            classes: Some(10),
            external_data: vec![],
            forward_check: None,
            form: None,
        },
        dataset: Some(DatasetInfo {
            name: "fashion-mnist".into(),
            train: Some(60000),
            test: Some(10000),
            eval_samples: Some("first 1000 of test".into()),
            sha256: None,
            normalization: None,
            files: None,
        }),
        environment: EnvironmentInfo {
            robustd: "0.1.0".into(),
            libtorch: "2.11.0".into(),
            onnxruntime: "1.31.1".into(),
            device: "cpu".into(),
            device_model: None,
            onnxruntime_provider: None,
            precision: None,
            threads: 2,
            seed: 0,
        },
        evaluation: Some(Evaluation {
            before: Some(eval(0.9, 0.04)),
            after: Some(eval(0.8, 0.6)),
        }),
        memorization: Some(Memorization {
            estimator: "feldman-zhang".into(),
            models: 8,
            subset_ratio: 0.7,
            threshold: 0.15,
            cached: false,
            atypical_share: 0.12,
            histogram: Histogram {
                bins: vec![-0.1, 0.0, 0.15, 1.0],
                counts: vec![10, 870, 120],
            },
            harmful_atypical: vec![HarmfulSample {
                index: 7,
                file: None,
                label: 3,
                score: 0.8,
                adv_confidence: 0.03,
            }],
            source: Some("feldman-zhang K=8".into()),
            scored_samples: Some(1000),
            undefined_scores: Some(0),
            test_consistency_cut: Some(0.85),
            seconds: Some(12.5),
            score: Some("E[p(y|x) | in] - E[p(y|x) | out]".into()),
            budget: Some(MemoBudget {
                samples: 1000,
                models: 8,
                epochs: 60,
                fit_target: Some(0.99),
                lr: 0.05,
                training: "standard".into(),
            }),
            self_check: Some(SelfCheck {
                reliable: true,
                in_subset_acc: Some(0.995),
                in_subset_acc_min: Some(0.991),
                held_out_acc: Some(0.83),
                test_acc: Some(0.82),
                epochs_run: vec![31, 44],
                epochs_counted: None,
                split_half_spearman: Some(0.71),
                split_half_top_decile: Some(0.64),
                split_half: Some("models 1-4 vs 5-8".into()),
                mean_standard_error: Some(0.08),
                warnings: vec![],
            }),
        }),
        training: Some(training),
        artifacts: Artifacts {
            original_model: FileRef {
                path: "m.onnx".into(),
                sha256: sha256_hex(model_bytes),
                bytes: None,
            },
            fine_tuned_model: Some(FileRef {
                path: "m.bat.onnx".into(),
                sha256: sha256_hex(tuned_bytes),
                bytes: None,
            }),
            plots: vec![],
            per_sample: None,
            training_log: Some("train_log.csv".into()),
        },
        job: None,
        timing: Timing {
            queued_at: "2026-01-01T00:00:00Z".into(),
            started_at: "2026-01-01T00:00:01Z".into(),
            finished_at: "2026-01-01T00:01:00Z".into(),
            seconds: 59.0,
            startup_seconds: Some(0.2),
            stages: vec![StageTime {
                name: "finetune".into(),
                seconds: 40.0,
                parts: vec![StagePart {
                    name: "dataset".into(),
                    seconds: 0.5,
                }],
            }],
        },
    }
}

#[test]
fn a_complete_report_round_trips_and_validates_with_summary_first() {
    let dir = tempfile::tempdir().unwrap();
    let report = full_report(dir.path());
    let path = dir.path().join("report.yaml");
    write_yaml_atomic(&path, &report).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("schema: robustd.report/v1\nsummary:\n"),
        "{text}"
    );
    let back = validate_report_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, report);
}

#[test]
fn the_validator_names_every_broken_rule() {
    let dir = tempfile::tempdir().unwrap();
    let good = full_report(dir.path());
    let check = |mutate: &dyn Fn(&mut Report), needle: &str| {
        let mut r = good.clone();
        mutate(&mut r);
        let text = serde_norway::to_string(&r).unwrap();
        let err = validate_report_yaml(&text, Some(dir.path())).expect_err(needle);
        assert!(
            err.to_string().contains(needle),
            "wanted `{needle}` in: {err}"
        );
    };
    check(
        &|r| r.summary.before.as_mut().unwrap().clean_acc = 1.5,
        "summary.before.clean_acc",
    );
    check(&|r| r.model.sha256 = "abc".into(), "model.sha256");
    check(&|r| r.training = None, "needs training");
    check(
        &|r| r.summary.verdict = Verdict::EvaluationOnly,
        "evaluation-only, yet",
    );
    check(
        &|r| r.memorization.as_mut().unwrap().histogram.counts.push(1),
        "memorization.histogram",
    );
    check(
        &|r| {
            let c = r
                .memorization
                .as_mut()
                .unwrap()
                .self_check
                .as_mut()
                .unwrap();
            c.warnings.push("subset models under-fit".into());
        },
        "memorization.self_check.reliable",
    );
    check(
        &|r| {
            let c = r
                .memorization
                .as_mut()
                .unwrap()
                .self_check
                .as_mut()
                .unwrap();
            c.in_subset_acc = Some(1.2);
        },
        "memorization.self_check.in_subset_acc",
    );
    check(
        &|r| r.timing.finished_at = "2025-01-01T00:00:00Z".into(),
        "queued_at <= started_at <= finished_at",
    );
    check(
        &|r| r.artifacts.plots = vec!["plots/missing.png".into()],
        "artifacts.plots[0]",
    );
    check(
        &|r| r.artifacts.original_model.path = "../escape.onnx".into(),
        "relative path",
    );
    check(
        &|r| r.artifacts.fine_tuned_model.as_mut().unwrap().sha256 = sha256_hex(b"other"),
        "has sha256",
    );
    check(
        &|r| {
            r.evaluation
                .as_mut()
                .unwrap()
                .before
                .as_mut()
                .unwrap()
                .worst_case_acc = 0.5
        },
        "attack pgd",
    );
    check(
        &|r| r.summary.model = "other.onnx".into(),
        "differs from model.file",
    );

    let text = serde_norway::to_string(&good).unwrap();
    let err = validate_report_yaml(
        &text.replace("schema: robustd.report/v1", "schema: robustd.report/v0"),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("robustd.report/v1"), "{err}");
    let reordered =
        text.replacen("schema: robustd.report/v1\n", "", 1) + "schema: robustd.report/v1\n";
    assert!(validate_report_yaml(&reordered, None)
        .unwrap_err()
        .to_string()
        .contains("first keys"));
    let unknown = text.replace("summary:\n", "summary:\n  surprise: 1\n");
    assert!(validate_report_yaml(&unknown, None)
        .unwrap_err()
        .to_string()
        .contains("surprise"));
}

fn png_stats(path: &Path) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let dark = buf[..info.buffer_size()]
        .chunks(3)
        .filter(|p| p.iter().all(|&c| c < 80))
        .count();
    (info.width, info.height, dark)
}

#[test]
fn the_four_plots_render_as_pngs_with_axes_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let out = |n: &str| dir.path().join(n);
    // Curves as the evaluation would produce them: accuracy falling with eps, before and after fine-tuning.
    let eps: [f64; 5] = [0.0, 0.025, 0.05, 0.1, 0.15];
    let before = Series {
        label: "before (clean model)".into(),
        points: eps.iter().map(|&e| (e, 0.9 * (-40.0 * e).exp())).collect(),
    };
    let after = Series {
        label: "after BAT".into(),
        points: eps.iter().map(|&e| (e, 0.8 - 1.5 * e)).collect(),
    };
    plots::robust_acc_vs_eps(&out("robust_vs_eps.png"), &[before, after]).unwrap();

    let per_epoch = |label: &str, f: &dyn Fn(f64) -> f64| Series {
        label: label.into(),
        points: (1..=5).map(|e| (e as f64, f(e as f64))).collect(),
    };
    plots::training_curves(
        &out("training.png"),
        &[
            per_epoch("train loss", &|e| 2.0 / e),
            per_epoch("val loss", &|e| 2.2 / e),
        ],
        &[
            per_epoch("val clean", &|e| 0.7 + 0.02 * e),
            per_epoch("val robust", &|e| 0.3 + 0.05 * e),
        ],
    )
    .unwrap();

    let bins: Vec<f64> = (0..=12).map(|i| -0.1 + 0.1 * i as f64).collect();
    let counts: Vec<u64> = (0..12).map(|i| 4000 / (1 + i * i) as u64).collect();
    plots::memorization_histogram(&out("memorization_hist.png"), &bins, &counts, Some(0.15))
        .unwrap();

    let points = [
        TradeoffPoint {
            label: "PGD-AT".into(),
            clean: 0.769,
            clean_err: 0.004,
            robust: 0.627,
            robust_err: 0.006,
        },
        TradeoffPoint {
            label: "BAT".into(),
            clean: 0.772,
            clean_err: 0.003,
            robust: 0.641,
            robust_err: 0.005,
        },
        TradeoffPoint {
            label: "TRADES".into(),
            clean: 0.75,
            clean_err: 0.0,
            robust: 0.63,
            robust_err: 0.0,
        },
    ];
    plots::tradeoff_scatter(&out("tradeoff.png"), &points).unwrap();

    for name in [
        "robust_vs_eps.png",
        "training.png",
        "memorization_hist.png",
        "tradeoff.png",
    ] {
        let (w, h, dark) = png_stats(&out(name));
        assert_eq!((w, h), (900, 600), "{name}");
        // Axes, ticks and text are dark pixels; an empty or text-less chart has far fewer.
        assert!(dark > 2000, "{name}: only {dark} dark pixels");
        if let Ok(keep) = std::env::var("ROBUSTD_KEEP_PLOTS") {
            std::fs::copy(out(name), Path::new(&keep).join(name)).unwrap();
        }
    }
    assert!(plots::font_path().is_some());
    // Bad input is an error, not a panic or an empty picture.
    assert!(plots::memorization_histogram(&out("x.png"), &[0.0], &[1, 2], None).is_err());
    assert!(plots::robust_acc_vs_eps(&out("x.png"), &[]).is_err());
    assert!(!out("x.png").exists());
}

#[test]
fn verdicts_compare_worst_case_robust_accuracy_with_a_tolerance() {
    assert_eq!(Verdict::compare(0.04, 0.60, 0.01), Verdict::Improved);
    assert_eq!(Verdict::compare(0.60, 0.40, 0.01), Verdict::Degraded);
    assert_eq!(Verdict::compare(0.50, 0.505, 0.01), Verdict::Unchanged);
    let yaml = serde_norway::to_string(&Verdict::EvaluationOnly).unwrap();
    assert_eq!(yaml.trim(), "evaluation-only");
}

#[test]
fn atomic_writes_create_missing_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plots/sub/x.txt");
    write_atomic(&path, b"x").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"x");
}
