//! The daemon on a user's image folder: a drop whose sidecar names a folder inside `paths.datasets` is evaluated
//! on it (the report records the files, fingerprint and preprocessing); a sidecar naming a folder outside the
//! allow-list, or a symlink inside it that leads out, fails the drop at intake with the sidecar's key and cause.

mod daemon_support;

use std::path::Path;
use std::time::Duration;

use daemon_support::*;
use robustd::job::JobState;

#[test]
fn a_sidecar_may_name_an_image_folder_inside_the_allow_list_only() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let fixtures = fixture("images/parity.json")
        .parent()
        .unwrap()
        .to_path_buf();
    let allowed = root.join("datasets");
    copy_dir(&fixtures.join("fmnist"), &allowed.join("fmnist"));
    std::os::unix::fs::symlink(fixtures.join("odd"), allowed.join("leads-out")).unwrap();
    let config = format!(
        "paths: {{watch: {r}/watch, models: {r}/models, state: {r}/state, datasets: [{r}/datasets]}}\n\
         runtime: {{threads: 1, device: cpu}}\n\
         eval: {{attacks: [pgd], pgd: {{steps: 2}}, eps_curve: [0.0], batch_size: 10}}\n\
         train: {{method: none}}\n\
         daemon: {{stable_ms: 100}}\n",
        r = root.display()
    );
    let mut d = Daemon::start(root, &config);
    let model = std::fs::read(fixture("images/tiny224.onnx")).unwrap();
    let sidecar = |path: &Path| {
        format!(
            "dataset: {{name: folder, path: {}, train_samples: 10, eval_samples: 10}}\n\
             model: {{mean: imagenet, std: imagenet}}\n",
            path.display()
        )
    };
    drop_bytes(
        &d.watch(),
        "inside.yaml",
        sidecar(&allowed.join("fmnist")).as_bytes(),
    );
    drop_bytes(&d.watch(), "inside.onnx", &model);
    let (_, report) = d.the_one_done(1, Duration::from_secs(240));
    let dataset = report.dataset.as_ref().unwrap();
    assert_eq!(dataset.name, "folder");
    let files = dataset.files.as_ref().unwrap();
    assert_eq!(files.root, allowed.join("fmnist").display().to_string());
    assert_eq!(files.preprocessing.output, [3, 224, 224]);
    assert_eq!(
        report
            .evaluation
            .as_ref()
            .unwrap()
            .before
            .as_ref()
            .unwrap()
            .samples,
        10
    );

    for (name, path) in [
        ("outside", fixtures.join("fmnist")),
        ("linked", allowed.join("leads-out")),
    ] {
        drop_bytes(
            &d.watch(),
            &format!("{name}.yaml"),
            sidecar(&path).as_bytes(),
        );
        drop_bytes(&d.watch(), &format!("{name}.onnx"), &model);
    }
    d.wait_finished(3, Duration::from_secs(120));
    let failed = d.jobs(JobState::Failed);
    assert_eq!(failed.len(), 2, "{}", d.log_text());
    for job in failed {
        let error = std::fs::read_to_string(job.dir.join("error.yaml")).unwrap();
        assert!(
            error.contains("dataset.path") && error.contains("paths.datasets"),
            "{error}"
        );
    }
    assert_eq!(d.jobs(JobState::Done).len(), 1);
}
