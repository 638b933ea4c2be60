//! The dashboard in a real browser: a daemon runs the full pipeline on the demo model (the small Fashion-MNIST CNN
//! trained with PyTorch) and fails a truncated drop; headless Chromium (Debian's `chromium`, installed by
//! scripts/setup.sh) loads `/` and the model's page, and the test reads the DOM Chromium rendered — after the
//! refresh script has run once under the page's Content-Security-Policy — for the models table, the failure with
//! its cause and hint, the plots and the downloads. Screenshots go to `<target>/tmp/http-dashboard/` for a person
//! to look at. The model gauges on `/metrics` are checked against the report too.

mod daemon_support;
mod http_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon_support::*;
use http_support::*;
use robustd::job::JobState;
use robustd::report::ErrorReport;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The pipeline at CI size (as tests/pipeline_daemon.rs), with HTTP on an ephemeral loopback port.
fn pipeline_config(root: &Path) -> String {
    format!(
        "paths: {{watch: {r}/watch, models: {r}/models, state: {r}/state}}\n\
         runtime: {{threads: 1, device: cpu}}\n\
         dataset: {{train_samples: 600, eval_samples: 64}}\n\
         eval: {{attacks: [fgsm, pgd], pgd: {{steps: 5, restarts: 1, step_size_factor: 0.5, random_start: true}}, \
                 eps_curve: [0.0, 0.1]}}\n\
         train: {{method: bat, epochs: 1, batch_size: 64, val_fraction: 0.1, \
                  pgd: {{steps: 3, restarts: 1, step_size_factor: 0.5, random_start: true}}, \
                  bat: {{atypicality: memorization}}}}\n\
         memorization: {{k: 4, epochs: 1}}\n\
         daemon: {{stable_ms: 100, http: {{listen: \"127.0.0.1:0\"}}}}\n",
        r = root.display()
    )
}

/// Runs headless Chromium with the flags this machine needs (no sandbox as root, no background connections to a
/// network that is not there) and `args`; returns its stdout. Killed after two minutes.
fn chromium(profile: &Path, args: &[String]) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium package"
    );
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within two minutes: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "chromium {args:?}: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM after the page's scripts ran for 7 s of virtual time (the refresh script fires every 5 s).
fn dump_dom(profile: &Path, url: &str) -> String {
    chromium(
        profile,
        &[
            "--virtual-time-budget=7000".into(),
            "--dump-dom".into(),
            url.into(),
        ],
    )
}

/// A screenshot of `url`, checked to be a real picture (many colours, not a blank page).
fn screenshot(profile: &Path, url: &str, out: &Path) {
    chromium(
        profile,
        &[
            format!("--screenshot={}", out.display()),
            "--window-size=1400,1800".into(),
            url.into(),
        ],
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(out).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    assert!(
        colours.len() > 50,
        "{} looks blank ({} colours)",
        out.display(),
        colours.len()
    );
}

/// As maud escapes text.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// The `<tr ...>...</tr>` whose opening tag contains `marker`.
fn row<'a>(dom: &'a str, marker: &str) -> &'a str {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in\n{dom}"));
    let end = dom[start..].find("</tr>").unwrap() + start;
    &dom[start..end]
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("http-dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_dashboard_shows_the_demo_model_and_a_failed_drop_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut d = Daemon::start(root, &pipeline_config(root));
    let addr = http_addr(&d.log);
    drop_fixture(&d.watch(), "fmnist_cnn_small.onnx", "fmnist_cnn.onnx");
    let model = std::fs::read(fixture("fmnist_cnn_small.onnx")).unwrap();
    drop_bytes(&d.watch(), "truncated.onnx", &model[..model.len() / 2]);
    let (_, report) = d.the_one_done(2, Duration::from_secs(600));
    let failed = d.jobs(JobState::Failed).remove(0);
    let error: ErrorReport =
        serde_norway::from_str(&std::fs::read_to_string(failed.dir.join("error.yaml")).unwrap())
            .unwrap();
    let before = report.summary.before.clone().unwrap();
    let after = report.summary.after.clone().unwrap();
    let base = format!("http://{addr}");
    let profile = root.join("chromium-profile");
    let shots = screenshot_dir();

    // The index, as Chromium rendered it.
    let dom = dump_dom(&profile, &format!("{base}/"));
    let r = row(&dom, "data-model=\"fmnist_cnn\"");
    let verdict = serde_norway::to_string(&report.summary.verdict).unwrap();
    assert!(r.contains(verdict.trim()), "{verdict} not in {r}");
    for v in [
        before.clean_acc,
        before.robust_acc_worst,
        after.clean_acc,
        after.robust_acc_worst,
    ] {
        assert!(r.contains(&pct(v)), "{} not in {r}", pct(v));
    }
    assert!(r.contains("<td>bat</td>"), "{r}");
    assert!(
        r.contains(&pct(report.summary.atypical_share.unwrap())),
        "{r}"
    );
    assert!(r.contains(&report.environment.device), "{r}");
    let f = row(&dom, &format!("data-job=\"{}\"", failed.record.id));
    assert!(f.contains("truncated.onnx"), "{f}");
    assert!(f.contains(&escaped(&error.stage)), "{f}");
    assert!(
        f.contains(&escaped(&error.cause)),
        "{} not in {f}",
        error.cause
    );
    assert!(f.contains(&escaped(error.hint.as_deref().unwrap())), "{f}");
    assert!(dom.contains("Nothing queued or running."), "{dom}");
    // The refresh script ran (the CSP allowed it from /static/) and swapped in a fresh copy of the page.
    assert!(
        dom.contains("<span id=\"updated\">updated "),
        "refresh.js did not run:\n{dom}"
    );
    screenshot(&profile, &format!("{base}/"), &shots.join("index.png"));

    // The model's page: summary, every plot, memorization, downloads.
    let dom = dump_dom(&profile, &format!("{base}/models/fmnist_cnn"));
    assert!(dom.contains("<h1>fmnist_cnn</h1>"), "{dom}");
    assert!(dom.contains(&pct(after.robust_acc_worst)), "{dom}");
    assert!(!report.artifacts.plots.is_empty());
    for plot in &report.artifacts.plots {
        let src = format!("/api/v1/models/fmnist_cnn/files/{plot}");
        assert!(
            dom.contains(&format!("src=\"{src}\"")),
            "{plot} not shown:\n{dom}"
        );
        let image = get(addr, &src);
        assert_eq!(image.status, 200, "{src}");
        assert_eq!(image.header("content-type"), Some("image/png"));
        assert!(image.body.starts_with(b"\x89PNG"), "{src}");
    }
    let tuned = report.artifacts.fine_tuned_model.as_ref().unwrap();
    assert!(
        dom.contains(&format!(
            "id=\"fine-tuned\" href=\"/api/v1/models/fmnist_cnn/files/{}\"",
            tuned.path
        )),
        "{dom}"
    );
    let download = get(
        addr,
        &format!("/api/v1/models/fmnist_cnn/files/{}", tuned.path),
    );
    assert_eq!(robustd::report::sha256_hex(&download.body), tuned.sha256);
    // The memorization histogram: one row per bin, with the report's counts.
    let memo = report.memorization.as_ref().unwrap();
    let histogram = &dom[dom
        .find("id=\"memorization-histogram\"")
        .expect("no histogram")..];
    let histogram = &histogram[..histogram.find("</table>").unwrap()];
    assert_eq!(
        histogram.matches("<meter").count(),
        memo.histogram.counts.len()
    );
    for count in &memo.histogram.counts {
        assert!(
            histogram.contains(&format!("<td class=\"num\">{count}</td>")),
            "{histogram}"
        );
    }
    if !memo.harmful_atypical.is_empty() {
        let harmful = &dom[dom.find("id=\"harmful\"").expect("no harmful table")..];
        let harmful = &harmful[..harmful.find("</table>").unwrap()];
        assert_eq!(
            harmful.matches("<tr>").count() - 1,
            memo.harmful_atypical.len()
        );
    }
    screenshot(
        &profile,
        &format!("{base}/models/fmnist_cnn"),
        &shots.join("model.png"),
    );

    // The model gauges carry the report's numbers.
    let metrics = get(addr, "/metrics").text();
    for (name, phase, method, value) in [
        (
            "robustd_model_clean_accuracy",
            "before",
            "bat",
            before.clean_acc,
        ),
        (
            "robustd_model_robust_accuracy",
            "before",
            "bat",
            before.robust_acc_worst,
        ),
        (
            "robustd_model_clean_accuracy",
            "after",
            "bat",
            after.clean_acc,
        ),
        (
            "robustd_model_robust_accuracy",
            "after",
            "bat",
            after.robust_acc_worst,
        ),
    ] {
        let line = format!("{name}{{model=\"fmnist_cnn\",method=\"{method}\",phase=\"{phase}\"}} ");
        let sample = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"));
        assert_eq!(sample.parse::<f64>().unwrap(), value, "{line}");
    }
    let (ok, _) = d.terminate();
    assert!(ok);
}
