//! The commands on a user's own image folder (Fashion-MNIST test images as PNG/JPEG in class folders, generated at
//! setup) with a 3x224x224 model: `robustd eval` and `robustd finetune` (BAT, random-resized-crop augmentation)
//! end to end, and `robustd memorization`, whose harmful-atypical list and `files.csv` name the image files. Tiny sizes: a few
//! dozen images, one epoch, two PGD steps.

mod cli_support;

use std::path::{Path, PathBuf};

use cli_support::*;
use robustd::report::validate_report_file;

fn folder() -> PathBuf {
    fixture("images/parity.json")
        .parent()
        .unwrap()
        .join("fmnist")
}

/// A config for the folder dataset and the 224×224 model: 60 training and 20 test images, cheap attacks.
fn image_config(dir: &Path) -> PathBuf {
    let path = dir.join("images.yaml");
    let text = format!(
        "runtime: {{threads: 1, device: cpu}}\n\
         model: {{mean: imagenet, std: imagenet, preprocess: {{resize: shorter-side, resize_size: 256}}}}\n\
         dataset: {{name: folder, path: {}, train_samples: 60, eval_samples: 20, loader_threads: 2}}\n\
         eval: {{attacks: [pgd], pgd: {{steps: 2}}, eps_curve: [0.0], batch_size: 10}}\n\
         train: {{method: bat, epochs: 1, batch_size: 16, pgd: {{steps: 2}}, bat: {{atypicality: holdout}}}}\n\
         memorization: {{epochs: 1, k: 2, harmful_top: 5}}\n\
         threat: {{eps: 0.03}}\n",
        folder().display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn eval_and_finetune_run_on_an_image_folder_with_a_224_model() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = image_config(root);
    let model = fixture("images/tiny224.onnx");

    let run = robustd(
        root,
        &["eval", s(&model), "--config", s(&config), "--out", "eval"],
    );
    assert_eq!(run.code, 0, "{}", run.text());
    let report = validate_report_file(&root.join("eval/report.yaml")).unwrap();
    let dataset = report.dataset.as_ref().unwrap();
    assert_eq!(dataset.name, "folder");
    assert_eq!(dataset.test, Some(20));
    assert!(
        dataset.sha256.is_none(),
        "image files carry a fingerprint instead"
    );
    let files = dataset.files.as_ref().expect("the dataset's files section");
    assert_eq!(files.format, "folder");
    assert_eq!(files.fingerprint.len(), 64);
    assert_eq!(files.test_source, "test");
    assert_eq!(files.classes.len(), 10);
    assert_eq!(files.preprocessing.output, [3, 224, 224]);
    assert_eq!(files.preprocessing.resize_size, Some(256));
    assert_eq!(files.preprocessing.center_crop, Some([224, 224]));
    assert_eq!(files.skipped.count, 0);
    let norm = dataset.normalization.as_ref().unwrap();
    assert_eq!(norm.mean, [0.485, 0.456, 0.406]);
    let before = report.evaluation.as_ref().unwrap().before.as_ref().unwrap();
    assert_eq!(before.samples, 20);
    assert_eq!(before.ort_recheck.disagreements, 0);

    let run = robustd(
        root,
        &[
            "finetune",
            s(&model),
            "--config",
            s(&config),
            "--out",
            "tuned",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.text());
    let report = validate_report_file(&root.join("tuned/report.yaml")).unwrap();
    let training = report.training.as_ref().unwrap();
    assert_eq!(training.epochs, 1);
    assert_eq!(training.augmentation, "random-resized-crop");
    assert!(root.join("tuned/tiny224.bat.onnx").is_file());
    let after = report.evaluation.as_ref().unwrap().after.as_ref().unwrap();
    assert_eq!(after.samples, 20);
    // Same files, same fingerprint.
    assert_eq!(
        report
            .dataset
            .as_ref()
            .unwrap()
            .files
            .as_ref()
            .unwrap()
            .fingerprint,
        files.fingerprint
    );
}

#[test]
fn memorization_names_the_harmful_image_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = image_config(root);
    // Every scored sample counts as atypical (a 1-epoch tiny model memorizes nothing measurable), so the harmful
    // list is filled and this checks how it names the files, not what the estimator finds.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("harmful_top: 5", "harmful_top: 5, threshold: -2.0"),
    )
    .unwrap();
    let model = fixture("images/tiny224.onnx");
    let run = robustd(
        root,
        &[
            "memorization",
            s(&model),
            "--config",
            s(&config),
            "--samples",
            "40",
            "--out",
            "memo",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.text());
    let summary = std::fs::read_to_string(root.join("memo/memorization.yaml")).unwrap();
    let harmful: Vec<&str> = summary
        .lines()
        .filter_map(|l| l.trim().strip_prefix("file: "))
        .collect();
    assert!(
        !harmful.is_empty(),
        "no harmful sample named a file:\n{summary}"
    );
    // files.csv maps every scored source index (the npz `index`) to its file and label.
    let table = std::fs::read_to_string(root.join("memo/files.csv")).unwrap();
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows[0], ["index", "file", "label"]);
    assert_eq!(
        rows.len(),
        41,
        "a header and the 40 scored samples:\n{table}"
    );
    let classes = sorted_class_names();
    for row in &rows[1..] {
        let file = row[1];
        let label: usize = row[2].parse().unwrap();
        assert!(folder().join(file).is_file(), "{file}");
        assert_eq!(
            file.split('/').nth(1),
            Some(classes[label].as_str()),
            "{file}"
        );
    }
    for file in harmful {
        assert!(
            file.starts_with("train/") && file.ends_with(".png"),
            "{file}"
        );
        assert!(folder().join(file).is_file(), "{file}");
        assert!(rows.iter().any(|r| r[1] == file), "{file} not in files.csv");
    }
}

/// The class folders of the training split, sorted (torchvision's label order).
fn sorted_class_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder().join("train"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}
