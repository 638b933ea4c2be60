//! The report validator: checks a `report.yaml` against schema `robustd.report/v1` — key order (schema, then
//! summary first), types and required fields (the typed structs, unknown keys refused), and the rules types
//! cannot say: accuracies in [0,1], sha256 digests, a verdict consistent with the sections present, a
//! score-based-only evaluation said plainly and consistently (no gradient attacks, no fine-tuning), ordered
//! timestamps, histogram shape, relative artifact paths, and (given the report's directory) that every artifact
//! exists with the recorded digest. Tests use it on every report the daemon writes.

use std::fmt;
use std::path::Path;

use super::schema::{EvalBlock, Report, Verdict, REPORT_SCHEMA, SCORE_BASED_SCOPE};

/// One broken rule: where (a dotted path into the document) and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every issue found (validation does not stop at the first).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid report ({} issue(s)): {}", .0.len(), .0.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("; "))]
pub struct InvalidReport(pub Vec<Issue>);

/// Validates report text. With `dir` (the report's directory) artifacts are checked on disk too.
pub fn validate_report_yaml(text: &str, dir: Option<&Path>) -> Result<Report, InvalidReport> {
    let issue = |path: &str, message: String| {
        InvalidReport(vec![Issue {
            path: path.into(),
            message,
        }])
    };
    let value: serde_norway::Value =
        serde_norway::from_str(text).map_err(|e| issue("$", format!("not YAML: {e}")))?;
    let serde_norway::Value::Mapping(map) = &value else {
        return Err(issue("$", "the document is not a mapping".into()));
    };
    let keys: Vec<&str> = map.keys().filter_map(|k| k.as_str()).take(2).collect();
    if keys != ["schema", "summary"] {
        return Err(issue(
            "$",
            format!("the first keys must be `schema` then `summary`, found {keys:?}"),
        ));
    }
    match map.get("schema").and_then(|v| v.as_str()) {
        Some(REPORT_SCHEMA) => {}
        other => {
            return Err(issue(
                "schema",
                format!("expected `{REPORT_SCHEMA}`, found {other:?}"),
            ))
        }
    }
    let report: Report =
        serde_norway::from_value(value).map_err(|e| issue("$", format!("schema mismatch: {e}")))?;
    let mut checker = Checker::default();
    checker.report(&report, dir);
    if checker.issues.is_empty() {
        Ok(report)
    } else {
        Err(InvalidReport(checker.issues))
    }
}

/// Validates a report file (artifacts are checked relative to its directory).
pub fn validate_report_file(path: &Path) -> Result<Report, InvalidReport> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        InvalidReport(vec![Issue {
            path: path.display().to_string(),
            message: e.to_string(),
        }])
    })?;
    validate_report_yaml(&text, path.parent())
}

#[derive(Default)]
struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }

    fn fraction(&mut self, path: &str, v: f64) {
        if !(0.0..=1.0).contains(&v) {
            self.fail(path, format!("{v} is not an accuracy in [0, 1]"));
        }
    }

    fn non_negative(&mut self, path: &str, v: f64) {
        if !(v.is_finite() && v >= 0.0) {
            self.fail(path, format!("{v} must be a finite number >= 0"));
        }
    }

    fn sha256(&mut self, path: &str, digest: &str) {
        if digest.len() != 64
            || !digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            self.fail(path, format!("`{digest}` is not a lowercase hex sha256"));
        }
    }

    fn relative_file(&mut self, path: &str, file: &str, dir: Option<&Path>, digest: Option<&str>) {
        let p = Path::new(file);
        if p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            self.fail(
                path,
                format!("`{file}` must be a relative path inside the report's directory"),
            );
            return;
        }
        let Some(dir) = dir else { return };
        match std::fs::read(dir.join(p)) {
            Err(e) => self.fail(path, format!("`{file}`: {e}")),
            Ok(bytes) => {
                if let Some(want) = digest {
                    let got = sha256_hex(&bytes);
                    if got != want {
                        self.fail(
                            path,
                            format!("`{file}` has sha256 {got}, the report says {want}"),
                        );
                    }
                }
            }
        }
    }

    fn report(&mut self, r: &Report, dir: Option<&Path>) {
        let s = &r.summary;
        if s.model != r.model.file {
            self.fail(
                "summary.model",
                format!("`{}` differs from model.file `{}`", s.model, r.model.file),
            );
        }
        self.non_negative("summary.threat_model.eps", s.threat_model.eps);
        if !["linf", "l2"].contains(&s.threat_model.norm.as_str()) {
            self.fail(
                "summary.threat_model.norm",
                format!("`{}`: expected linf or l2", s.threat_model.norm),
            );
        }
        for (name, acc) in [("before", &s.before), ("after", &s.after)] {
            if let Some(a) = acc {
                self.fraction(&format!("summary.{name}.clean_acc"), a.clean_acc);
                self.fraction(
                    &format!("summary.{name}.robust_acc_worst"),
                    a.robust_acc_worst,
                );
            }
        }
        if let Some(share) = s.atypical_share {
            self.fraction("summary.atypical_share", share);
        }
        self.verdict(r);
        self.scope(r);

        self.sha256("model.sha256", &r.model.sha256);
        if r.model.inputs.is_empty() || r.model.outputs.is_empty() {
            self.fail(
                "model",
                "a classifier has at least one input and one output",
            );
        }
        for (i, f) in r.model.external_data.iter().enumerate() {
            self.sha256(&format!("model.external_data[{i}].sha256"), &f.sha256);
        }
        if let Some(fc) = &r.model.forward_check {
            if !fc.all_finite {
                self.fail(
                    "model.forward_check.all_finite",
                    "a report is only written for finite logits",
                );
            }
        }

        if let Some(ev) = &r.evaluation {
            for (name, block) in [("before", &ev.before), ("after", &ev.after)] {
                if let Some(b) = block {
                    self.eval_block(&format!("evaluation.{name}"), b);
                }
            }
        }
        if let Some(m) = &r.memorization {
            self.fraction("memorization.subset_ratio", m.subset_ratio);
            self.fraction("memorization.atypical_share", m.atypical_share);
            let h = &m.histogram;
            if h.bins.len() != h.counts.len() + 1 {
                self.fail(
                    "memorization.histogram",
                    format!(
                        "{} bin edges for {} counts (need counts + 1)",
                        h.bins.len(),
                        h.counts.len()
                    ),
                );
            }
            if !h.bins.windows(2).all(|w| w[0] < w[1]) {
                self.fail("memorization.histogram.bins", "bin edges must increase");
            }
            if let Some(c) = &m.self_check {
                for (key, value) in [
                    ("memorization.self_check.in_subset_acc", c.in_subset_acc),
                    (
                        "memorization.self_check.in_subset_acc_min",
                        c.in_subset_acc_min,
                    ),
                    ("memorization.self_check.held_out_acc", c.held_out_acc),
                    ("memorization.self_check.test_acc", c.test_acc),
                    (
                        "memorization.self_check.split_half_top_decile",
                        c.split_half_top_decile,
                    ),
                ] {
                    if let Some(v) = value {
                        self.fraction(key, v);
                    }
                }
                if c.split_half_spearman
                    .is_some_and(|r| !(-1.0..=1.0).contains(&r))
                {
                    self.fail(
                        "memorization.self_check.split_half_spearman",
                        "a rank correlation lies in [-1, 1]",
                    );
                }
                if c.reliable != c.warnings.is_empty() {
                    self.fail(
                        "memorization.self_check.reliable",
                        "reliable exactly when there are no warnings",
                    );
                }
            }
        }
        if let Some(t) = &r.training {
            self.non_negative("training.seconds", t.seconds);
            if t.best_epoch > t.epochs {
                self.fail(
                    "training.best_epoch",
                    format!("{} > epochs {}", t.best_epoch, t.epochs),
                );
            }
            if let Some(log) = &t.log {
                self.relative_file("training.log", &log.to_string_lossy(), dir, None);
            }
        }

        let a = &r.artifacts;
        self.sha256("artifacts.original_model.sha256", &a.original_model.sha256);
        self.relative_file(
            "artifacts.original_model",
            &a.original_model.path,
            dir,
            Some(&a.original_model.sha256),
        );
        if let Some(ft) = &a.fine_tuned_model {
            self.sha256("artifacts.fine_tuned_model.sha256", &ft.sha256);
            self.relative_file(
                "artifacts.fine_tuned_model",
                &ft.path,
                dir,
                Some(&ft.sha256),
            );
        }
        for (i, plot) in a.plots.iter().enumerate() {
            self.relative_file(&format!("artifacts.plots[{i}]"), plot, dir, None);
        }
        if s.artifacts.plots != a.plots {
            self.fail("summary.artifacts.plots", "differs from artifacts.plots");
        }
        if s.artifacts.fine_tuned_model.as_deref()
            != a.fine_tuned_model.as_ref().map(|f| f.path.as_str())
        {
            self.fail(
                "summary.artifacts.fine_tuned_model",
                "differs from artifacts.fine_tuned_model.path",
            );
        }
        if let Some(job) = &r.job {
            self.sha256("job.config_sha256", &job.config_sha256);
        }
        self.timing(r);
    }

    fn verdict(&mut self, r: &Report) {
        let s = &r.summary;
        let after_present = s.after.is_some()
            || r.evaluation.as_ref().is_some_and(|e| e.after.is_some())
            || r.training.is_some()
            || r.artifacts.fine_tuned_model.is_some();
        match s.verdict {
            Verdict::EvaluationOnly if after_present => self.fail(
                "summary.verdict",
                "evaluation-only, yet the report has fine-tuning results",
            ),
            Verdict::Improved | Verdict::Unchanged | Verdict::Degraded => {
                for (ok, what) in [
                    (s.before.is_some(), "summary.before"),
                    (s.after.is_some(), "summary.after"),
                    (r.training.is_some(), "training"),
                    (
                        r.artifacts.fine_tuned_model.is_some(),
                        "artifacts.fine_tuned_model",
                    ),
                ] {
                    if !ok {
                        self.fail("summary.verdict", format!("{:?} needs {what}", s.verdict));
                    }
                }
            }
            _ => {}
        }
    }

    /// A model with unsupported ops is evaluated score-based only, and the report says so in `summary.scope`;
    /// such a report has no gradient attacks, no fine-tuning and verdict `evaluation-only`.
    fn scope(&mut self, r: &Report) {
        let unsupported = r
            .model
            .form
            .as_ref()
            .is_some_and(|f| !f.unsupported_ops.is_empty());
        let said = r
            .summary
            .scope
            .as_deref()
            .is_some_and(|s| s.starts_with(SCORE_BASED_SCOPE));
        if unsupported != said {
            self.fail(
                "summary.scope",
                format!(
                    "model.form.unsupported_ops is {}, so the scope must {}start with `{SCORE_BASED_SCOPE}`",
                    if unsupported { "non-empty" } else { "empty" },
                    if unsupported { "" } else { "not " }
                ),
            );
        }
        if !unsupported {
            return;
        }
        if r.summary.verdict != Verdict::EvaluationOnly {
            self.fail(
                "summary.verdict",
                "a score-based evaluation is evaluation-only",
            );
        }
        if let Some(before) = r.evaluation.as_ref().and_then(|e| e.before.as_ref()) {
            for name in before.attacks.0.iter().map(|(n, _)| n) {
                if name != "square" {
                    self.fail(
                        format!("evaluation.before.attacks.{name}"),
                        "a score-based evaluation runs no gradient attack",
                    );
                }
            }
        }
    }

    fn eval_block(&mut self, path: &str, b: &EvalBlock) {
        self.fraction(&format!("{path}.clean_acc"), b.clean_acc);
        self.fraction(&format!("{path}.worst_case_acc"), b.worst_case_acc);
        for (name, a) in &b.attacks.0 {
            self.fraction(&format!("{path}.attacks.{name}.robust_acc"), a.robust_acc);
            self.non_negative(&format!("{path}.attacks.{name}.seconds"), a.seconds);
            if a.robust_acc + 1e-9 < b.worst_case_acc {
                self.fail(
                    format!("{path}.worst_case_acc"),
                    format!(
                        "{} is above attack {name}'s {}",
                        b.worst_case_acc, a.robust_acc
                    ),
                );
            }
        }
        if b.worst_case_acc > b.clean_acc + 1e-9 {
            self.fail(
                format!("{path}.worst_case_acc"),
                "robust accuracy above clean accuracy",
            );
        }
        for (eps, acc) in &b.robust_acc_vs_eps.0 {
            self.non_negative(&format!("{path}.robust_acc_vs_eps.{eps}"), *eps);
            self.fraction(&format!("{path}.robust_acc_vs_eps.{eps}"), *acc);
        }
        if let Some(g) = &b.groups {
            for (split, pair) in [("train", &g.train), ("test", &g.test)] {
                if let Some(pair) = pair {
                    for (kind, acc) in [("typical", &pair.typical), ("atypical", &pair.atypical)] {
                        self.fraction(&format!("{path}.groups.{split}.{kind}.clean"), acc.clean);
                        self.fraction(&format!("{path}.groups.{split}.{kind}.robust"), acc.robust);
                    }
                }
            }
        }
        let o = &b.ort_recheck;
        self.non_negative(
            &format!("{path}.ort_recheck.max_logit_diff"),
            o.max_logit_diff,
        );
        self.non_negative(
            &format!("{path}.ort_recheck.clean_max_logit_diff"),
            o.clean_max_logit_diff,
        );
    }

    fn timing(&mut self, r: &Report) {
        let t = &r.timing;
        let mut stamps = Vec::new();
        for (name, text) in [
            ("queued_at", &t.queued_at),
            ("started_at", &t.started_at),
            ("finished_at", &t.finished_at),
        ] {
            match humantime::parse_rfc3339(text) {
                Ok(at) => stamps.push(at),
                Err(e) => self.fail(format!("timing.{name}"), format!("`{text}`: {e}")),
            }
        }
        if stamps.len() == 3 && !(stamps[0] <= stamps[1] && stamps[1] <= stamps[2]) {
            self.fail("timing", "expected queued_at <= started_at <= finished_at");
        }
        self.non_negative("timing.seconds", t.seconds);
        if let Some(startup) = t.startup_seconds {
            self.non_negative("timing.startup_seconds", startup);
        }
        for st in &t.stages {
            self.non_negative(&format!("timing.stages.{}", st.name), st.seconds);
            for part in &st.parts {
                self.non_negative(
                    &format!("timing.stages.{}.{}", st.name, part.name),
                    part.seconds,
                );
            }
        }
    }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
