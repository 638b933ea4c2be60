//! Atypicality flags: imported score files (numpy `.npy`, plain and deflated `.npz`, CSV) thresholded at τ and
//! aligned by source index, the setting's parsing, and the K=2 holdout estimate on real Fashion-MNIST with some
//! labels flipped.

mod train_support;

use std::io::Write;

use ndarray::Array1;
use ndarray_npy::WriteNpyExt;
use robustd::config::{Config, Method};
use robustd::data::{Augmentation, Split};
use robustd::model::Classifier;
use robustd::train::{
    holdout_atypicality, AtypicalitySetting, HoldoutOptions, ScoreTable, TrainError,
};
use tch::Tensor;
use train_support::{fashion_mnist, SmallCnn};

fn npy_bytes(values: &[f64]) -> Vec<u8> {
    let mut out = Vec::new();
    Array1::from(values.to_vec()).write_npy(&mut out).unwrap();
    out
}

fn write_npz(path: &std::path::Path, arrays: &[(&str, Vec<u8>)], compressed: bool) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let method = if compressed {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    for (name, bytes) in arrays {
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn imported_scores_flag_samples_above_the_threshold_by_source_index() {
    // Samples at source indices 10..30 of the training split (a non-trivial alignment).
    let data = fashion_mnist(30, 1);
    let split = data.train.select(&(10..30).collect::<Vec<i64>>()).unwrap();
    assert_eq!(split.indices[0], 10);
    let scores: Vec<f64> = (0..25)
        .map(|i| if i % 4 == 0 { 0.5 } else { 0.05 })
        .collect();
    let dir = tempfile::tempdir().unwrap();

    let npy = dir.path().join("mem.npy");
    std::fs::write(&npy, npy_bytes(&scores)).unwrap();
    let npz = dir.path().join("mem.npz");
    write_npz(
        &npz,
        &[("mem", npy_bytes(&scores)), ("other", npy_bytes(&[1.0]))],
        true,
    );
    let csv = dir.path().join("mem.csv");
    let rows: String = scores
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{i},{s}\n"))
        .collect();
    std::fs::write(&csv, format!("index,score\n{rows}")).unwrap();

    let expected: Vec<bool> = (10..30).map(|i| i < 25 && i % 4 == 0).collect();
    for (path, key) in [(&npy, None), (&npz, Some("mem")), (&csv, None)] {
        let table = ScoreTable::load(path, key).unwrap();
        assert_eq!(table.len(), 25);
        let a = table.flags(&split, 0.15);
        assert_eq!(a.flags, expected, "{}", path.display());
        assert_eq!(
            a.scored, 15,
            "indices 25..30 have no score and count as typical"
        );
        assert_eq!(a.threshold, Some(0.15));
        assert_eq!(a.atypical(), 4);
    }

    // The setting string as `train.bat.atypicality` holds it.
    let setting = AtypicalitySetting::parse(&format!("{}#mem", npz.display()));
    assert_eq!(
        setting,
        AtypicalitySetting::File {
            path: npz.clone(),
            key: Some("mem".into())
        }
    );
    assert_eq!(
        AtypicalitySetting::parse("holdout"),
        AtypicalitySetting::Holdout
    );
    assert_eq!(
        AtypicalitySetting::parse("memorization"),
        AtypicalitySetting::Memorization
    );

    // Ambiguous or broken inputs are refused with the file named.
    let err = ScoreTable::load(&npz, None).unwrap_err();
    assert!(
        matches!(&err, TrainError::Scores { message, .. } if message.contains("mem, other")),
        "{err}"
    );
    let nan = dir.path().join("nan.npy");
    std::fs::write(&nan, npy_bytes(&[0.1, f64::NAN])).unwrap();
    assert!(ScoreTable::load(&nan, None)
        .unwrap_err()
        .to_string()
        .contains("nan.npy"));
    let bad_csv = dir.path().join("bad.csv");
    std::fs::write(&bad_csv, "index,score\n0,0.1\n1;0.2\n").unwrap();
    assert!(ScoreTable::load(&bad_csv, None)
        .unwrap_err()
        .to_string()
        .contains("line 3"));
    let plain = dir.path().join("plain.npz");
    write_npz(&plain, &[("scores", npy_bytes(&scores))], false);
    assert_eq!(
        ScoreTable::load(&plain, None)
            .unwrap()
            .flags(&split, 0.15)
            .flags,
        expected
    );
}

#[test]
fn holdout_flags_flipped_labels_more_often_than_clean_ones() {
    let data = fashion_mnist(1000, 1);
    // Every tenth label moved to another class: samples no model can get right without seeing them.
    let mut labels = Vec::<i64>::try_from(&data.train.y).unwrap();
    for (i, y) in labels.iter_mut().enumerate() {
        if i % 10 == 0 {
            *y = (*y + 5) % 10;
        }
    }
    let noisy = Split {
        x: data.train.x.shallow_clone(),
        y: Tensor::from_slice(&labels),
        indices: data.train.indices.clone(),
        source_len: data.train.source_len,
        source: None,
    };
    let mut options = HoldoutOptions::from_config(&Config::default(), Augmentation::None);
    assert_eq!(options.spec.method, Method::Standard);
    options.spec.batch_size = 50;
    options.spec.epochs = 8;
    options.spec.optimizer.lr = 0.05;
    options.spec.optimizer.schedule = "constant".into();
    let mut seeds = Vec::new();
    let mut factory = |seed: u64| -> Result<Box<dyn Classifier>, TrainError> {
        seeds.push(seed);
        Ok(Box::new(SmallCnn::new(seed, false)))
    };
    let a = holdout_atypicality(&noisy, &mut factory, &options).unwrap();
    assert_eq!(seeds.len(), 2);
    assert_ne!(
        seeds[0], seeds[1],
        "each half model starts from its own fresh weights"
    );
    assert_eq!(a.flags.len(), 1000);
    assert_eq!(a.scored, 1000);
    let rate = |keep: fn(usize) -> bool| {
        let picked: Vec<bool> = a
            .flags
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(_, &f)| f)
            .collect();
        picked.iter().filter(|&&f| f).count() as f64 / picked.len() as f64
    };
    let flipped = rate(|i| i % 10 == 0);
    let clean = rate(|i| i % 10 != 0);
    eprintln!("holdout: flipped labels flagged {flipped:.3}, clean labels flagged {clean:.3}");
    assert!(
        flipped > 0.7 && clean < 0.4 && flipped > 2.0 * clean,
        "flipped {flipped:.3}, clean {clean:.3}"
    );
}
