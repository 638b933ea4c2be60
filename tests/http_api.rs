//! The daemon's HTTP face against a real `robustd run` process with real jobs: `/metrics` scraped and parsed as
//! Prometheus would, its counts checked against the jobs that ran; every JSON route read into strict typed
//! documents (the schema) and compared with what the spool and the reports on disk say; a list of traversal
//! attempts, all refused; the bearer token off localhost; the rate limit; the read-only guard and the headers.

mod daemon_support;
mod http_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use daemon_support::*;
use http_support::*;
use robustd::job::{JobRecord, JobState};
use robustd::report::{AccuracySummary, ErrorReport, Report, Verdict};
use serde::Deserialize;

/// A row of `/api/v1/models` (and the head of `/api/v1/models/{name}`): the documented fields, nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ModelRow {
    name: String,
    result: String,
    verdict: Verdict,
    before: Option<AccuracySummary>,
    after: Option<AccuracySummary>,
    method: String,
    atypical_share: Option<f64>,
    finished_at: String,
    device: String,
    runner: Option<String>,
}

/// Splits `keys` off a JSON object, returning them and the rest.
fn take(
    mut value: serde_json::Value,
    keys: &[&str],
) -> (Vec<serde_json::Value>, serde_json::Value) {
    let map = value.as_object_mut().expect("an object");
    let taken = keys
        .iter()
        .map(|k| map.remove(*k).unwrap_or(serde_json::Value::Null))
        .collect();
    (taken, value)
}

/// A job document: a job record (strict) plus `failure`, an error report (strict), for failed jobs.
fn job_doc(value: serde_json::Value) -> (JobRecord, Option<ErrorReport>) {
    let (mut taken, rest) = take(value, &["failure"]);
    let failure = taken.remove(0);
    let record: JobRecord = serde_json::from_value(rest).unwrap();
    let failure = (!failure.is_null()).then(|| serde_json::from_value(failure).unwrap());
    (record, failure)
}

/// A `robustd.api.jobs/v1` document's jobs.
fn job_list(addr: SocketAddr, target: &str) -> Vec<(JobRecord, Option<ErrorReport>)> {
    let list = doc(get(addr, target).json(), "robustd.api.jobs/v1");
    list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        .map(job_doc)
        .collect()
}

/// The document's `schema`, checked, and the rest.
fn doc(value: serde_json::Value, schema: &str) -> serde_json::Value {
    let (taken, rest) = take(value, &["schema"]);
    assert_eq!(taken[0], schema);
    rest
}

fn drop_three(d: &Daemon) {
    drop_fixture(&d.watch(), "lenet_legacy.onnx", "lenet.onnx");
    drop_fixture(&d.watch(), "cnn_bn_legacy.onnx", "cnn.onnx");
    drop_bytes(&d.watch(), "broken.onnx", b"this is not a model");
}

/// One scalar sample (counter, gauge or untyped) by name and labels.
fn scalar(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .find_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// A histogram's observation count (its `+Inf` bucket) by name and labels.
fn observations(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .find_map(|s| match &s.value {
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map(|b| b.count),
            _ => None,
        })
        .unwrap_or(0.0)
}

fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    parse_scrape(&scrape_text(addr))
}

fn parse_scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// `/metrics` once the daemon has recorded `jobs` ended jobs (refused drops included) and two scrapes 200 ms
/// apart agree. A job's metrics are recorded on its thread just after the queue marks it done or failed, so a
/// scrape right after the spool shows the job may not count it yet (Prometheus only ever sees the next scrape).
fn settled_scrape(addr: SocketAddr, jobs: f64) -> prometheus_parse::Scrape {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        let text = scrape_text(addr);
        let m = parse_scrape(&text);
        let ended: f64 = m
            .samples
            .iter()
            .filter(|s| s.metric == "robustd_jobs_finished_total")
            .filter_map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => {
                    Some(v)
                }
                _ => None,
            })
            .sum();
        if ended >= jobs && text == last {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the metrics did not settle on {jobs} ended jobs:\n{text}"
        );
        last = text;
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn scrape_text(addr: SocketAddr) -> String {
    let reply = get(addr, "/metrics");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        reply.headers
    );
    let text = reply.text();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    text
}

/// A daemon serving HTTP (`extra_http` added to `daemon.http`) in a fresh directory, and its address.
fn serve(extra_http: &str) -> (tempfile::TempDir, Daemon, SocketAddr) {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &http_config(tmp.path(), extra_http));
    let addr = http_addr(&d.log);
    (tmp, d, addr)
}

/// SIGTERM; the daemon must exit cleanly.
fn stop(mut d: Daemon) {
    let (ok, _) = d.terminate();
    assert!(ok);
}

#[test]
fn metrics_count_the_jobs_that_ran() {
    let (_tmp, mut d, addr) = serve("");
    drop_three(&d);
    d.wait_finished(3, Duration::from_secs(120));
    let m = settled_scrape(addr, 3.0);

    for (state, n) in [
        ("done", 2.0),
        ("failed", 1.0),
        ("queued", 0.0),
        ("running", 0.0),
    ] {
        assert_eq!(
            scalar(&m, "robustd_jobs", &[("state", state)]),
            Some(n),
            "{state}"
        );
    }
    assert_eq!(scalar(&m, "robustd_queue_depth", &[]), Some(0.0));
    // The broken drop fails either at intake (never started) or when loading: the counts follow the spool.
    let failed = d.jobs(JobState::Failed).remove(0);
    let error: ErrorReport =
        serde_norway::from_str(&std::fs::read_to_string(failed.dir.join("error.yaml")).unwrap())
            .unwrap();
    let started = if failed.record.attempts > 0 { 3.0 } else { 2.0 };
    assert_eq!(
        scalar(&m, "robustd_job_attempts_total", &[]),
        Some(started),
        "the broken drop's record: {:?}\nlog:\n{}",
        failed.record,
        d.log_text()
    );
    assert_eq!(
        scalar(&m, "robustd_jobs_finished_total", &[("outcome", "done")]),
        Some(2.0)
    );
    let failed_outcome = if started == 3.0 { "failed" } else { "rejected" };
    assert_eq!(
        scalar(
            &m,
            "robustd_jobs_finished_total",
            &[("outcome", failed_outcome)]
        ),
        Some(1.0)
    );
    assert_eq!(
        scalar(&m, "robustd_job_failures_total", &[("stage", &error.stage)]),
        Some(1.0),
        "failed in {}",
        error.stage
    );
    assert_eq!(
        observations(&m, "robustd_job_duration_seconds", &[("outcome", "done")]),
        2.0
    );
    assert_eq!(
        observations(&m, "robustd_drop_to_start_seconds", &[]),
        started
    );
    // Every started job went through `load`; the two good ones through the triage stages after it.
    assert_eq!(
        observations(&m, "robustd_stage_duration_seconds", &[("stage", "load")]),
        started
    );
    let stages: Vec<&str> = m
        .samples
        .iter()
        .filter(|s| s.metric == "robustd_stage_duration_seconds")
        .filter_map(|s| s.labels.get("stage"))
        .collect();
    assert!(stages.len() >= 2, "{stages:?}");
    let busy = scalar(
        &m,
        "robustd_device_busy_seconds_total",
        &[("device", "cpu")],
    )
    .unwrap();
    assert!(busy > 0.0, "{busy}");
    // Triage results carry no accuracies: no model gauges.
    assert!(scalar(&m, "robustd_model_clean_accuracy", &[]).is_none());
    stop(d);
}

#[test]
fn every_json_route_matches_its_schema_and_the_files_on_disk() {
    let (_tmp, mut d, addr) = serve("");

    assert_eq!(get(addr, "/healthz").text(), "ok\n");
    let ready = get(addr, "/readyz").json();
    assert_eq!(ready["ready"], true, "{ready}");
    for check in ["spool_recovered", "inbox_watched", "queue_reachable"] {
        assert_eq!(ready["checks"][check], true, "{ready}");
    }
    drop_three(&d);
    d.wait_finished(3, Duration::from_secs(120));

    // Jobs: the spool's records, failed ones with their error.yaml.
    let on_disk: HashMap<String, JobRecord> = [JobState::Done, JobState::Failed]
        .into_iter()
        .flat_map(|s| d.jobs(s))
        .map(|j| (j.record.id.clone(), j.record))
        .collect();
    let jobs = job_list(addr, "/api/v1/jobs");
    assert_eq!(jobs.len(), 3);
    for (record, failure) in &jobs {
        assert_eq!(&on_disk[&record.id], record);
        assert_eq!(failure.is_some(), record.state == JobState::Failed);
    }
    let failed = job_list(addr, "/api/v1/jobs?state=failed");
    assert_eq!(failed.len(), 1);
    let (record, failure) = &failed[0];
    let failure = failure.as_ref().unwrap();
    assert_eq!(record.dropped_as, "broken.onnx");
    assert_eq!(failure.job.as_deref(), Some(record.id.as_str()));
    assert!(failure.hint.is_some());
    let one = doc(
        get(addr, &format!("/api/v1/jobs/{}", record.id)).json(),
        "robustd.api.job/v1",
    );
    assert_eq!(job_doc(one["job"].clone()).0, *record);
    assert_eq!(
        get(addr, "/api/v1/jobs/20990101T000000.000Z-0001-nope").status,
        404
    );
    assert_eq!(get(addr, "/api/v1/jobs?state=lost").status, 400);
    assert_eq!(get(addr, "/api/v1/jobs?colour=red").status, 400);

    // Models: the latest report of each, whole, as JSON.
    let models = doc(get(addr, "/api/v1/models").json(), "robustd.api.models/v1");
    let rows: Vec<ModelRow> = serde_json::from_value(models["models"].clone()).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["cnn", "lenet"]
    );
    for row in &rows {
        let dir = d.models().join(&row.name).join("latest");
        let report: Report =
            serde_norway::from_str(&std::fs::read_to_string(dir.join("report.yaml")).unwrap())
                .unwrap();
        assert_eq!(row.verdict, report.summary.verdict);
        assert_eq!(row.device, report.environment.device);
        assert_eq!(row.finished_at, report.timing.finished_at);
        assert_eq!(row.runner.as_deref(), Some("triage"));
        assert_eq!(row.method, "none");
        assert_eq!(
            std::fs::read_link(&dir).unwrap().to_string_lossy(),
            row.result
        );

        let detail = doc(
            get(addr, &format!("/api/v1/models/{}", row.name)).json(),
            "robustd.api.model/v1",
        );
        let (mut taken, head) = take(
            detail["model"].clone(),
            &["report", "results", "comparison"],
        );
        let _: ModelRow = serde_json::from_value(head).unwrap();
        // Strict schema, and the same numbers (compared as JSON: serde_json's default float parsing is not
        // bit-exact, so both sides go through the same text).
        let served = taken.remove(0);
        let _: Report = serde_json::from_value(served.clone()).unwrap();
        let expected: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(served, expected);
        assert_eq!(taken[0], serde_json::json!([row.result]));
        assert!(taken[1].is_null());

        // A result's files by name, byte for byte: text shown as text, the model itself as a download.
        for (file, content_type, disposition) in [
            (
                "report.yaml".to_owned(),
                "text/plain; charset=utf-8",
                "inline",
            ),
            (
                format!("{}.onnx", row.name),
                "application/octet-stream",
                "attachment",
            ),
        ] {
            let r = get(addr, &format!("/api/v1/models/{}/files/{file}", row.name));
            assert_eq!(r.status, 200, "{file}");
            assert_eq!(r.header("content-type"), Some(content_type), "{file}");
            assert!(r
                .header("content-disposition")
                .unwrap()
                .starts_with(disposition));
            assert_eq!(r.body, std::fs::read(dir.join(&file)).unwrap(), "{file}");
        }
    }
    assert_eq!(get(addr, "/api/v1/models/nope").status, 404);
    assert_eq!(get(addr, "/api/v1/models/lenet/files/nope.png").status, 404);
    assert_eq!(get(addr, "/api/v2/models").status, 404);

    // Read-only: nothing but GET/HEAD, no bodies; every reply carries the CSP and hardening headers.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = request(addr, method, "/api/v1/jobs", &[], b"");
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    assert_eq!(request(addr, "GET", "/healthz", &[], b"{}").status, 413);
    assert_eq!(
        get(addr, &format!("/api/v1/models/{}", "a".repeat(3000))).status,
        414
    );
    for target in ["/", "/healthz", "/api/v1/models", "/nope"] {
        let r = get(addr, target);
        let csp = r.header("content-security-policy").unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
    }
    stop(d);
}

/// What the traversal attempts aim at: a secret beside `paths.models`, a symlink to it inside a result, and a
/// model directory whose `latest` points out of `paths.models`.
fn plant_targets(root: &Path, models: &Path) -> &'static str {
    const SECRET: &str = "TOPSECRET-robustd-traversal";
    std::fs::write(root.join("secret.txt"), SECRET).unwrap();
    let latest = models.join("lenet").join("latest");
    std::os::unix::fs::symlink(root.join("secret.txt"), latest.join("leak")).unwrap();
    std::fs::create_dir_all(models.join("evil")).unwrap();
    std::os::unix::fs::symlink(root, models.join("evil").join("latest")).unwrap();
    SECRET
}

/// Request targets that try to leave `paths.models` (or the routes): plain, percent-encoded, double-encoded,
/// overlong UTF-8, backslashes, NUL bytes, absolute paths, and symlinks out.
const TRAVERSALS: &[&str] = &[
    "/api/v1/models/lenet/files/../../../secret.txt",
    "/api/v1/models/lenet/files/..%2f..%2f..%2fsecret.txt",
    "/api/v1/models/lenet/files/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "/api/v1/models/lenet/files/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
    "/api/v1/models/lenet/files/%252e%252e%252f%252e%252e%252fsecret.txt",
    "/api/v1/models/lenet/files/..%5c..%5c..%5csecret.txt",
    "/api/v1/models/lenet/files/%2e%2e%5c%2e%2e%5csecret.txt",
    "/api/v1/models/lenet/files/..%255c..%255csecret.txt",
    "/api/v1/models/lenet/files/%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afsecret.txt",
    "/api/v1/models/lenet/files/%e0%80%ae%e0%80%ae/secret.txt",
    "/api/v1/models/lenet/files/..%00/..%00/secret.txt",
    "/api/v1/models/lenet/files/report.yaml%00.png",
    "/api/v1/models/lenet/files//etc/passwd",
    "/api/v1/models/lenet/files/%2fetc%2fpasswd",
    "/api/v1/models/lenet/files/leak",
    "/api/v1/models/lenet/files/plots/../../../../secret.txt",
    "/api/v1/models/lenet/files/plots%2f..%2f..%2f..%2f..%2fsecret.txt",
    "/api/v1/models/lenet/files/....//....//....//secret.txt",
    "/api/v1/models/lenet/files/..;/..;/..;/secret.txt",
    "/api/v1/models/lenet/files/.%2e/.%2e/.%2e/secret.txt",
    "/api/v1/models/lenet/files/%u002e%u002e/secret.txt",
    "/api/v1/models/lenet/files/./../../../secret.txt",
    "/api/v1/models/evil/files/secret.txt",
    "/api/v1/models/evil",
    "/models/evil",
    "/api/v1/models/..%2f..%2fsecret.txt",
    "/api/v1/models/%2e%2e",
    "/api/v1/models/..",
    "/api/v1/models/%2e%2e/files/secret.txt",
    "/api/v1/models/lenet%2f..%2f..%2f/files/secret.txt",
    "/api/v1/models/%2fetc/files/passwd",
    "/api/v1/models/.hidden/files/x",
    "/api/v1/jobs/..%2f..%2fsecret.txt",
    "/api/v1/jobs/../../secret.txt",
    "/models/..%2f..%2fsecret.txt",
    "/static/..%2f..%2fsecret.txt",
    "/static/../../secret.txt",
    "/..%2f..%2fsecret.txt",
    "//etc/passwd",
    "/api/v1/models/lenet/files/~/secret.txt",
];

#[test]
fn traversal_attempts_are_all_refused() {
    assert!(TRAVERSALS.len() >= 30);
    let (tmp, mut d, addr) = serve("");
    let root = tmp.path();
    drop_fixture(&d.watch(), "lenet_legacy.onnx", "lenet.onnx");
    d.wait_finished(1, Duration::from_secs(120));
    let secret = plant_targets(root, &d.models());

    // The route works for a legitimate file, and the secret is reachable on disk through the planted links.
    assert_eq!(
        get(addr, "/api/v1/models/lenet/files/report.yaml").status,
        200
    );
    assert_eq!(
        std::fs::read_to_string(d.models().join("lenet/latest/leak")).unwrap(),
        secret
    );
    for target in TRAVERSALS {
        let r = get(addr, target);
        assert!(
            (400..500).contains(&r.status),
            "{target}: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains(secret), "{target} leaked the secret");
        assert!(!r.text().contains("root:"), "{target} leaked /etc/passwd");
    }
    stop(d);
}

#[test]
fn a_bearer_token_is_required_off_localhost() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    // Without a token file, a non-loopback address is refused before the daemon starts.
    let config = root.join("open.yaml");
    std::fs::write(
        &config,
        http_config(root, "").replace("127.0.0.1:0", "0.0.0.0:0"),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("daemon.http.token_file"), "{stderr}");

    let token_file = root.join("token");
    std::fs::write(&token_file, "c0rrect-h0rse-battery\n").unwrap();
    let yaml = http_config(root, &format!(", token_file: {}", token_file.display()))
        .replace("127.0.0.1:0", "0.0.0.0:0");
    let d = Daemon::start(root, &yaml);
    let port = http_addr(&d.log).port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for (header, status) in [
        (None, 401),
        (Some("Bearer wrong"), 401),
        (Some("Bearer c0rrect-h0rse-batter"), 401),
        (Some("Bearer c0rrect-h0rse-battery-"), 401),
        (Some("Basic c0rrect-h0rse-battery"), 401),
        (Some("Bearer c0rrect-h0rse-battery"), 200),
    ] {
        for target in ["/metrics", "/api/v1/jobs", "/", "/healthz"] {
            let headers: Vec<(&str, &str)> =
                header.map(|h| ("Authorization", h)).into_iter().collect();
            let r = request(addr, "GET", target, &headers, b"");
            assert_eq!(r.status, status, "{target} with {header:?}: {}", r.text());
            if status == 401 {
                assert_eq!(
                    r.header("www-authenticate"),
                    Some("Bearer realm=\"robustd\"")
                );
            }
        }
    }
    stop(d);
}

#[test]
fn requests_beyond_the_rate_get_429() {
    let (_tmp, d, addr) = serve(", requests_per_s: 1");
    let statuses: Vec<u16> = (0..12).map(|_| get(addr, "/healthz").status).collect();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    // A burst of two is allowed; the loop is far faster than one request a second (a slow machine may let one
    // or two more through as the bucket refills).
    assert!(refused >= 8, "{statuses:?}");
    std::thread::sleep(Duration::from_millis(2500));
    let m = scrape(addr);
    assert_eq!(
        scalar(&m, "robustd_http_refused_total", &[("reason", "rate")]),
        Some(refused as f64)
    );
    stop(d);
}
