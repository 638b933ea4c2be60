//! The other score sources and what a model's groups look like: scores written by the memorization module and
//! imported back (`.npy`, `.npz#key`, `.csv`) through `train::ScoreTable`; the learning-speed proxy recorded by a
//! real training run through the trainer's observer hook; per-group and per-decile accuracy of a PGD-AT model with
//! its harmful atypical samples and their image grid.

mod memo_support;

use std::io::Write;

use memo_support::{flip_labels, mlp, quick_spec, synthetic};
use robustd::attack::pgd::{Keep, PgdParams};
use robustd::config::{InputLayout, Method, Norm, ThreatModel};
use robustd::data::Augmentation;
use robustd::memo::output::{write_details_npz, write_scores_npy};
use robustd::memo::{
    harmful_atypical, harmful_grid, model_groups, onnx_factory, GroupOptions, LearningSpeed,
    ScoreSource, TrainScores,
};
use robustd::model::InputAdapter;
use robustd::train::{train, AtypicalitySetting, ScoreTable, TrainRun};
use tch::Device;

#[test]
fn scores_written_as_npy_npz_and_csv_import_back_by_source_index() {
    // Scores for source indices 40..60, one undefined.
    let split = synthetic(20, 7, 40);
    let values: Vec<Option<f64>> = (0..20)
        .map(|i| {
            if i == 5 {
                None
            } else {
                Some(i as f64 / 20.0 - 0.2)
            }
        })
        .collect();
    let scores = TrainScores {
        source: ScoreSource::LearningSpeed {
            epochs: 1,
            cached: false,
            seconds: 0.0,
        },
        indices: split.indices.clone(),
        scores: values.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("scores.npy");
    write_scores_npy(&npy, &scores).unwrap();
    let npz = dir.path().join("memorization.npz");
    write_details_npz(&npz, &scores, None).unwrap();
    let csv = dir.path().join("scores.csv");
    let mut f = std::fs::File::create(&csv).unwrap();
    writeln!(f, "index,score").unwrap();
    for (i, s) in split.indices.iter().zip(&values) {
        if let Some(s) = s {
            writeln!(f, "{i},{s}").unwrap();
        }
    }
    drop(f);

    // The npz holds index/score/defined: imported by key it is a dense array by position, so read `score`
    // through the setting string as a pipeline config would name it.
    let setting = AtypicalitySetting::parse(&format!("{}#score", npz.display()));
    let AtypicalitySetting::File { path, key } = setting else {
        panic!("a file setting")
    };
    let from_npz = ScoreTable::load(&path, key.as_deref()).unwrap();
    assert_eq!(
        from_npz.get(0),
        Some(values[0].unwrap()),
        "npz `score` is by position"
    );

    for file in [&npy, &csv] {
        let table = ScoreTable::load(file, None).unwrap();
        let imported = TrainScores::from_table(&table, &split);
        assert_eq!(imported.source.name(), "imported");
        assert_eq!(imported.indices, split.indices);
        for (i, (got, want)) in imported.scores.iter().zip(&values).enumerate() {
            match want {
                Some(w) => assert!(
                    (got.unwrap() - w).abs() < 1e-12,
                    "{} sample {i}",
                    file.display()
                ),
                // The npy holds 0 for the undefined score; the csv leaves it out.
                None if file == &npy => assert_eq!(*got, Some(0.0)),
                None => assert_eq!(*got, None),
            }
        }
        // Same flags for BAT either way (undefined = typical).
        assert_eq!(
            imported.atypicality(&split, 0.15).flags,
            scores.atypicality(&split, 0.15).flags
        );
    }
}

#[test]
fn learning_speed_recorded_during_training_ranks_flipped_labels_last_learned() {
    let clean = synthetic(1000, 8, 0);
    let (noisy, flipped) = flip_labels(&clean, 25);
    let onnx = mlp();
    let mut model = onnx_factory(
        &onnx,
        InputAdapter::identity(),
        InputLayout::Auto,
        Device::Cpu,
    )(5)
    .unwrap();
    let speed = LearningSpeed::new();
    let spec = quick_spec(Method::Standard, 8);
    let mut run = TrainRun::new(&spec, &ThreatModel::default(), 5, Augmentation::None).unwrap();
    run.observer = Some(&speed);
    train(model.as_mut(), &noisy, &run).unwrap();

    assert_eq!(speed.epochs(), 8);
    for &i in &noisy.indices {
        let (passes, correct) = speed.counts(i).unwrap();
        assert_eq!(passes, 8, "every sample once per epoch");
        assert!(correct <= passes);
    }
    let scores = speed.scores(&noisy);
    assert_eq!(scores.source.name(), "learning-speed");
    assert_eq!(scores.defined(), 1000);
    let deciles = scores.deciles();
    let top = flipped.iter().filter(|&&i| deciles[i] == Some(9)).count();
    eprintln!(
        "learning speed: {top} of {} flipped labels in the top decile",
        flipped.len()
    );
    assert!(top * 10 >= flipped.len() * 8, "{top} of {}", flipped.len());
}

#[test]
fn groups_deciles_and_harmful_samples_of_an_adversarially_trained_model() {
    let clean = synthetic(800, 9, 0);
    let (noisy, flipped) = flip_labels(&clean, 20);
    let test = synthetic(200, 10, 0);
    let onnx = mlp();
    let mut model = onnx_factory(
        &onnx,
        InputAdapter::identity(),
        InputLayout::Auto,
        Device::Cpu,
    )(3)
    .unwrap();
    let threat = ThreatModel {
        norm: Norm::Linf,
        eps: 0.05,
    };
    let run = TrainRun::new(
        &quick_spec(Method::PgdAt, 6),
        &threat,
        3,
        Augmentation::None,
    )
    .unwrap();
    train(model.as_mut(), &noisy, &run).unwrap();

    // Scores: the flipped samples are the atypical ones (as the estimator finds them, see memo_estimator).
    let scores = TrainScores {
        source: ScoreSource::Imported {
            origin: "flipped labels".into(),
        },
        indices: noisy.indices.clone(),
        scores: (0..noisy.len())
            .map(|i| {
                Some(if i % 20 == 0 {
                    0.9
                } else {
                    (i % 7) as f64 / 100.0
                })
            })
            .collect(),
    };
    let consistency: Vec<f64> = (0..200)
        .map(|i| if i % 4 == 0 { 0.5 } else { 1.0 })
        .collect();
    let options = GroupOptions {
        attack: PgdParams::from_spec(
            &robustd::config::PgdSpec {
                steps: 5,
                restarts: 1,
                step_size_factor: 0.5,
                random_start: true,
            },
            threat.norm,
            threat.eps,
            1,
            Keep::Final,
        ),
        batch_size: 100,
        threshold: 0.15,
    };
    let measured = model_groups(
        model.as_mut(),
        &noisy,
        &scores,
        Some((&test, &consistency)),
        &options,
        None,
    )
    .unwrap()
    .unwrap();
    let train_pair = measured.groups.train.as_ref().unwrap();
    assert_eq!(train_pair.atypical.samples, flipped.len() as u64);
    assert_eq!(
        train_pair.typical.samples,
        (noisy.len() - flipped.len()) as u64
    );
    let test_pair = measured.groups.test.as_ref().unwrap();
    assert_eq!(test_pair.atypical.samples, 50, "consistency 0.5 < 1 - tau");
    assert_eq!(test_pair.typical.samples, 150);
    // Per-sample outcomes agree with the group numbers.
    let atypical_clean = flipped
        .iter()
        .filter(|&&i| measured.train.clean_correct[i])
        .count() as f64
        / flipped.len() as f64;
    assert!((train_pair.atypical.clean - atypical_clean).abs() < 1e-12);
    for (clean, adv) in [
        (train_pair.typical.clean, train_pair.typical.robust),
        (test_pair.typical.clean, test_pair.typical.robust),
    ] {
        assert!(
            adv <= clean + 0.02,
            "PGD should not raise accuracy: {clean} -> {adv}"
        );
    }
    eprintln!("groups: {:?}", measured.groups);

    // Deciles cover every sample once; the top decile (80 samples) holds the 40 flipped ones (score 0.9).
    let deciles = &measured.groups.train_deciles;
    assert_eq!(deciles.len(), 10);
    assert_eq!(deciles.iter().map(|d| d.samples).sum::<u64>(), 800);
    assert_eq!(deciles[9].decile, 10);
    assert_eq!(deciles[9].max_score, 0.9);
    assert_eq!(deciles[8].max_score, 0.06);
    assert!(deciles.windows(2).all(|w| w[0].max_score <= w[1].min_score));

    // Harmful: atypical samples only, lowest p(y|x') first.
    let harmful = harmful_atypical(&noisy, &scores, &measured.train, 0.15, 12).unwrap();
    assert_eq!(harmful.len(), 12);
    let labels = Vec::<i64>::try_from(&noisy.y).unwrap();
    for h in &harmful {
        let p = noisy
            .indices
            .iter()
            .position(|&i| i as u64 == h.index)
            .unwrap();
        assert_eq!(p % 20, 0, "only atypical samples");
        assert_eq!(h.label, labels[p]);
        assert_eq!(h.adv_confidence, measured.train.adv_confidence[p]);
        assert!((0.0..=1.0).contains(&h.adv_confidence));
    }
    assert!(harmful
        .windows(2)
        .all(|w| w[0].adv_confidence <= w[1].adv_confidence));
    let worst_atypical = flipped
        .iter()
        .map(|&i| measured.train.adv_confidence[i])
        .fold(f64::INFINITY, f64::min);
    assert_eq!(harmful[0].adv_confidence, worst_atypical);

    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("harmful.png");
    let names: Vec<String> = (0..10).map(|c| format!("class {c}")).collect();
    harmful_grid(
        &png,
        &noisy,
        &harmful,
        &names,
        "imported flipped labels; reliable",
    )
    .unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    // 8 columns × 2 rows of 128-pixel cells under the title.
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (8 * 128, 64 + 2 * 160 + 8));
}
