//! Atypicality flags: imported score files (numpy `.npy`, plain and deflated `.npz`, CSV) thresholded at τ and
//! aligned by source index, the setting's parsing, and what is refused (the holdout estimator and the others on
//! real data: `memo_real.rs`).

mod train_support;

use std::io::Write;

use ndarray::Array1;
use ndarray_npy::WriteNpyExt;
use robustd::train::{AtypicalitySetting, ScoreTable, TrainError};
use train_support::fashion_mnist;

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
    // Only regular files are opened: a directory (or a FIFO, which would block) is refused by name.
    let err = ScoreTable::load(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    let fifo = dir.path().join("scores.npy.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let fifo_npy = dir.path().join("fifo.npy");
    std::fs::rename(&fifo, &fifo_npy).unwrap();
    let err = ScoreTable::load(&fifo_npy, None).unwrap_err().to_string();
    assert!(
        err.contains("fifo.npy") && err.contains("not a regular file"),
        "{err}"
    );
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
