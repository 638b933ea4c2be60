//! One process per job (issue 19), on the real daemon: a job whose process crashes (a segfault or an abort, made
//! by the job process's crash hook as a crash inside native code would be) fails alone, with the signal, the stage
//! and a hint in `error.yaml`, after one more try; the daemon keeps its pid and serves the next drop. A job whose
//! model allocates past `limits.job_memory_mb` (an 800 MB ConstantOfShape under a 768 MiB cap) fails cleanly
//! while a job running beside it finishes. A byte-identical drop that arrives while the first copy runs waits for
//! it and is answered from its result; if the first copy failed, the duplicate runs itself.

mod daemon_support;

use std::path::Path;
use std::time::{Duration, Instant};

use daemon_support::*;
use prost::Message;
use robustd::job::{Job, JobState};
use robustd::onnx::proto::{
    data_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, TensorShapeDimension, TensorShapeProto, TypeProto, TypeTensor, TypeValue,
    ValueInfoProto,
};
use robustd::report::{ErrorReport, MemoryCapKind};

/// Waits until a job named `name` is running (its process started), returning it.
fn wait_running(d: &mut Daemon, name: &str) -> Job {
    d.wait_until(&format!("{name} running"), Duration::from_secs(60), |d| {
        d.jobs(JobState::Running)
            .into_iter()
            .find(|j| j.record.name == name && j.record.stage.is_some())
    })
}

/// Drops a long job (`samples` evaluation samples of the BN CNN) and waits for its STATUS line in the forward
/// stage; returns the line and the pid of the job's process it names.
fn running_job_status(d: &mut Daemon, samples: u64) -> (String, i32) {
    std::fs::write(
        d.watch().join("slow.yaml"),
        format!("dataset: {{eval_samples: {samples}}}\n"),
    )
    .unwrap();
    drop_fixture(&d.watch(), "cnn_bn_legacy.onnx", "slow.onnx");
    let needle = "STATUS=slow@cpu: forward";
    let seen = d.expect_notify(needle, Duration::from_secs(60));
    let line = seen
        .iter()
        .flat_map(|m| m.lines())
        .find(|l| l.starts_with(needle))
        .unwrap()
        .to_owned();
    let pid = line
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no job pid in {line}"));
    (line, pid)
}

fn error_of(job: &Job) -> ErrorReport {
    ErrorReport::read(&job.dir.join("error.yaml")).unwrap()
}

fn named<'a>(jobs: &'a [Job], name: &str) -> &'a Job {
    jobs.iter()
        .find(|j| j.record.name == name)
        .unwrap_or_else(|| panic!("no job {name} in {jobs:?}"))
}

#[test]
fn a_segfaulting_job_fails_alone_with_its_signal_and_the_daemon_serves_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start_with_env(
        root,
        &base_config(root, "daemon: {stable_ms: 100}"),
        &[("ROBUSTD_JOB_PROCESS_CRASH", "segv@forward:crashy")],
    );
    let daemon_pid = d.pid();
    drop_fixture(&d.watch(), "resdw_legacy.onnx", "crashy.onnx");
    d.wait_finished(1, Duration::from_secs(120));
    let failed = d.jobs(JobState::Failed);
    assert_eq!(failed.len(), 1, "{}", d.log_text());
    let err = error_of(&failed[0]);
    assert_eq!(err.stage, "forward", "{err:?}");
    assert!(err.cause.contains("SIGSEGV"), "{err:?}");
    let process = err.process.clone().expect("error.yaml has a process block");
    assert_eq!(process.signal.as_deref(), Some("SIGSEGV"));
    assert_eq!(process.tries, 2, "a crash is tried once more: {process:?}");
    assert_eq!(process.last_stage, "forward");
    assert!(!process.memory_cap_hit);
    assert!(process.peak_rss_mb > 10.0, "{process:?}");
    assert!(
        err.hint.as_deref().unwrap().contains("native code"),
        "{err:?}"
    );
    assert!(
        d.log_text().contains("trying once more"),
        "{}",
        d.log_text()
    );

    // The daemon is the same process and takes the next drop.
    drop_fixture(&d.watch(), "resdw_legacy.onnx", "after.onnx");
    d.wait_finished(2, Duration::from_secs(120));
    assert_eq!(d.pid(), daemon_pid);
    d.assert_alive();
    let done = d.jobs(JobState::Done);
    assert_eq!(done.len(), 1, "{}", d.log_text());
    let limits = job_report(&done[0])
        .job
        .unwrap()
        .limits
        .expect("job.limits");
    assert_eq!(limits.memory_cap, MemoryCapKind::RlimitData);
    assert_eq!(limits.memory_mb, 4096);
    let log = d.log_text();
    assert!(
        log.contains("job process") && log.contains("peak RSS"),
        "{log}"
    );
    let (ok, _) = d.terminate();
    assert!(ok, "{}", d.log_text());
}

/// A model that builds an 800 MB tensor (ConstantOfShape [200M] float, summed and multiplied by zero into the
/// logits of a linear classifier on 1×28×28 inputs): well within `limits.max_tensor_elements`, past a 768 MiB cap.
fn memory_hog() -> Vec<u8> {
    let dim = |d: Dimension| TensorShapeDimension {
        value: Some(d),
        denotation: String::new(),
    };
    let value_info = |name: &str, dims: Vec<TensorShapeDimension>| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TypeTensor {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            denotation: String::new(),
        }),
        ..Default::default()
    };
    let floats = |name: &str, dims: Vec<i64>, values: Vec<f32>| TensorProto {
        name: name.into(),
        dims,
        data_type: data_type::FLOAT,
        float_data: values,
        ..Default::default()
    };
    let node =
        |op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>| NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        };
    let int_attr = |name: &str, i: i64| AttributeProto {
        name: name.into(),
        r#type: robustd::onnx::proto::attribute_type::INT,
        i,
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "hog".into(),
            node: vec![
                node("Flatten", &["x"], "flat", vec![int_attr("axis", 1)]),
                node("MatMul", &["flat", "w"], "mm", vec![]),
                node("Add", &["mm", "b"], "logits", vec![]),
                node("ConstantOfShape", &["big_shape"], "big", vec![]),
                node("ReduceSum", &["big"], "sum", vec![int_attr("keepdims", 0)]),
                node("Mul", &["sum", "zero"], "nothing", vec![]),
                node("Add", &["logits", "nothing"], "y", vec![]),
            ],
            initializer: vec![
                TensorProto {
                    name: "big_shape".into(),
                    dims: vec![1],
                    data_type: data_type::INT64,
                    int64_data: vec![200_000_000],
                    ..Default::default()
                },
                floats(
                    "w",
                    vec![784, 10],
                    (0..7840).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect(),
                ),
                floats("b", vec![10], vec![0.0; 10]),
                floats("zero", vec![], vec![0.0]),
            ],
            input: vec![value_info(
                "x",
                vec![
                    dim(Dimension::DimParam("N".into())),
                    dim(Dimension::DimValue(1)),
                    dim(Dimension::DimValue(28)),
                    dim(Dimension::DimValue(28)),
                ],
            )],
            output: vec![value_info(
                "y",
                vec![
                    dim(Dimension::DimParam("N".into())),
                    dim(Dimension::DimValue(10)),
                ],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

#[test]
fn a_job_past_its_memory_cap_fails_cleanly_while_a_job_beside_it_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start(
        root,
        &base_config(
            root,
            "daemon: {stable_ms: 100, eval_concurrency: 2}\nlimits: {job_memory_mb: 768}",
        ),
    );
    let daemon_pid = d.pid();
    // The job beside it forwards 100000 samples (seconds): it is still running when the hog starts.
    std::fs::write(
        d.watch().join("steady.yaml"),
        "dataset: {eval_samples: 100000}\n",
    )
    .unwrap();
    drop_fixture(&d.watch(), "resdw_legacy.onnx", "steady.onnx");
    wait_running(&mut d, "steady");
    drop_bytes(&d.watch(), "hog.onnx", &memory_hog());
    d.wait_finished(2, Duration::from_secs(300));
    assert_eq!(d.pid(), daemon_pid);
    d.assert_alive();
    let failed = d.jobs(JobState::Failed);
    assert_eq!(failed.len(), 1, "{}", d.log_text());
    let hog = named(&failed, "hog");
    let err = error_of(hog);
    let hint = err.hint.clone().unwrap_or_default();
    assert!(
        hint.contains("limits.job_memory_mb") && hint.contains("768 MiB (RLIMIT_DATA)"),
        "{err:?}\n{}",
        d.log_text()
    );
    let process = err.process.clone().expect("a process block");
    assert!(process.memory_cap_hit, "{process:?}");
    assert_eq!(process.tries, 1, "a memory-cap hit is not tried again");
    let done = d.jobs(JobState::Done);
    let steady = named(&done, "steady");
    // They ran side by side: each started before the other ended.
    let t = |s: &Option<String>| parse_time(s.as_deref().unwrap());
    assert!(t(&steady.record.started_at) < t(&hog.record.finished_at));
    assert!(t(&hog.record.started_at) < t(&steady.record.finished_at));
    let limits = job_report(steady).job.unwrap().limits.unwrap();
    assert_eq!(
        (limits.memory_mb, limits.memory_cap),
        (768, MemoryCapKind::RlimitData)
    );
    println!("hog: {} ({err:?})", err.cause);
    let (ok, _) = d.terminate();
    assert!(ok, "{}", d.log_text());
}

/// Drops `fixture` as NAME.onnx with the sidecar `sidecar` (the same text for every copy, so copies are
/// byte-identical drops with the same resolved config).
fn drop_copy(d: &Daemon, fixture: &str, name: &str, sidecar: &str) {
    std::fs::write(d.watch().join(format!("{name}.yaml")), sidecar).unwrap();
    drop_fixture(&d.watch(), fixture, &format!("{name}.onnx"));
}

#[test]
fn a_duplicate_arriving_while_the_first_runs_waits_and_is_answered_from_its_result() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start(
        root,
        &base_config(root, "daemon: {stable_ms: 100, eval_concurrency: 2}"),
    );
    let sidecar = "dataset: {eval_samples: 20000}\n";
    drop_copy(&d, "cnn_bn_legacy.onnx", "first", sidecar);
    let first = wait_running(&mut d, "first");
    drop_copy(&d, "cnn_bn_legacy.onnx", "copy", sidecar);
    // Queued beside a free slot, it still waits: its key is running.
    d.wait_until("the copy queued", Duration::from_secs(30), |d| {
        d.jobs(JobState::Queued)
            .iter()
            .any(|j| j.record.name == "copy")
            .then_some(())
    });
    assert!(
        d.jobs(JobState::Running)
            .iter()
            .all(|j| j.record.name != "copy"),
        "the duplicate must not run beside the first"
    );
    d.wait_finished(2, Duration::from_secs(180));
    let done = d.jobs(JobState::Done);
    assert_eq!(done.len(), 2, "{}", d.log_text());
    let copy = named(&done, "copy");
    assert_eq!(copy.record.key, first.record.key);
    assert_eq!(
        copy.record.dedup_of.as_deref(),
        Some(first.record.id.as_str())
    );
    assert!(
        copy.record.stage.is_none(),
        "the duplicate never ran: {:?}",
        copy.record
    );
    assert_eq!(
        std::fs::read(copy.record.result_dir.as_ref().unwrap().join("report.yaml")).unwrap(),
        std::fs::read(
            named(&done, "first")
                .record
                .result_dir
                .as_ref()
                .unwrap()
                .join("report.yaml")
        )
        .unwrap()
    );
    let (ok, _) = d.terminate();
    assert!(ok);
}

#[test]
fn a_duplicate_of_a_job_that_failed_runs_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // The first copy's process aborts (as a C++ abort would) in its forward stage; the copy is not hooked.
    let mut d = Daemon::start_with_env(
        root,
        &base_config(root, "daemon: {stable_ms: 100, eval_concurrency: 2}"),
        &[("ROBUSTD_JOB_PROCESS_CRASH", "abort@forward:first")],
    );
    let sidecar = "dataset: {eval_samples: 2000}\n";
    drop_copy(&d, "cnn_bn_legacy.onnx", "first", sidecar);
    wait_running(&mut d, "first");
    drop_copy(&d, "cnn_bn_legacy.onnx", "copy", sidecar);
    d.wait_finished(2, Duration::from_secs(180));
    let failed = d.jobs(JobState::Failed);
    assert_eq!(failed.len(), 1, "{}", d.log_text());
    let err = error_of(named(&failed, "first"));
    let process = err.process.clone().unwrap();
    assert_eq!(process.signal.as_deref(), Some("SIGABRT"), "{err:?}");
    assert_eq!((process.tries, err.stage.as_str()), (2, "forward"));
    let done = d.jobs(JobState::Done);
    let copy = named(&done, "copy");
    assert!(copy.record.dedup_of.is_none(), "{:?}", copy.record);
    let report = job_report(copy);
    let forward = report.model.forward_check.unwrap();
    assert_eq!(
        forward.samples,
        2000 + 2 * forward.batch,
        "the copy ran all of it"
    );
    let (ok, _) = d.terminate();
    assert!(ok);
}

/// The STATUS line names each running job's process and attempt.
#[test]
fn status_shows_the_job_process_pid_and_attempt() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start(root, &base_config(root, "daemon: {stable_ms: 100}"));
    let (line, pid) = running_job_status(&mut d, 20_000);
    assert!(line.contains("attempt 1)"), "{line}");
    assert_ne!(pid, d.pid());
    // The job's process is a child of the daemon, in a process group of its own.
    let fields = stat_fields(pid).unwrap();
    assert_eq!(fields[1].parse::<i32>().unwrap(), d.pid(), "parent");
    assert_eq!(fields[2].parse::<i32>().unwrap(), pid, "process group");
    let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(adj.trim(), "1000");
    d.wait_finished(1, Duration::from_secs(120));
    let (ok, _) = d.terminate();
    assert!(ok);
}

/// A job's process dies with its daemon: SIGKILL the daemon mid-job and the process is gone too.
#[test]
fn the_job_process_dies_with_its_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start(root, &base_config(root, "daemon: {stable_ms: 100}"));
    let (_, pid) = running_job_status(&mut d, 150_000);
    d.kill9();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        assert!(
            Instant::now() < deadline,
            "the job process {pid} outlived its daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_zombie(pid: i32) -> bool {
    stat_fields(pid).is_none_or(|f| f.first().is_some_and(|state| state.starts_with('Z')))
}

/// The fields of `/proc/PID/stat` after the command name (state, parent, process group, ...); `None` once the
/// process is gone.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit(')').next()?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}
