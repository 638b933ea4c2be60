//! `error.yaml`: what a person reads when a job failed — the stage, the cause with its full error chain, and a
//! hint at the fix. Written next to the failed job's files in the spool's `failed/` directory.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::durable::{read_yaml, write_yaml_atomic, ReadError, WriteError};

/// The value of the `schema` key of every error file.
pub const ERROR_SCHEMA: &str = "robustd.error/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReport {
    pub schema: String,
    /// The dropped file's name.
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Where it failed: `intake`, `load`, `validate`, `forward`, `eval_before`, `finetune`, ...
    pub stage: String,
    /// The whole chain on one line, outermost first (`a: b: c`).
    pub cause: String,
    /// The chain, one message per level.
    pub chain: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// RFC 3339, UTC.
    pub time: String,
    /// How the job's process ended, when it crashed or ran into its memory cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
}

/// What the daemon saw of a job's process that crashed (or hit its memory cap).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The signal that killed it (`SIGSEGV`, `SIGABRT`, `SIGKILL`, ...), if one did.
    #[serde(default)]
    pub signal: Option<String>,
    /// Its exit code, if it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub core_dumped: bool,
    /// Whether it ran into its memory cap (an OOM kill in its cgroup, or an allocation refused under
    /// `RLIMIT_DATA`).
    pub memory_cap_hit: bool,
    /// `768 MiB (RLIMIT_DATA)` or `768 MiB (cgroup memory.max)`.
    pub memory_cap: String,
    /// Processes started for the job in this run of the daemon (a crash that may be transient is tried once more).
    pub tries: u32,
    /// Peak resident memory of the last process (MiB).
    pub peak_rss_mb: f64,
    /// The stage it was in.
    pub last_stage: String,
    /// Its last lines on stderr.
    #[serde(default)]
    pub stderr: Vec<String>,
}

impl ErrorReport {
    /// Builds the report from an error and every `source()` beneath it.
    pub fn from_error(
        model: &str,
        job: Option<&str>,
        stage: &str,
        error: &(dyn std::error::Error + 'static),
        hint: Option<String>,
    ) -> Self {
        Self::from_chain(model, job, stage, error_chain(error), hint)
    }

    /// Builds the report from messages already collected (outermost first).
    pub fn from_chain(
        model: &str,
        job: Option<&str>,
        stage: &str,
        chain: Vec<String>,
        hint: Option<String>,
    ) -> Self {
        // Messages can quote what a hostile file holds (a 200 kB YAML key, a node name of megabytes): shorten each
        // level so the file stays something a person reads.
        let chain: Vec<String> = chain
            .into_iter()
            .map(|m| shorten(strip_native_trace(&m), MAX_MESSAGE_CHARS))
            .collect();
        Self {
            schema: ERROR_SCHEMA.to_owned(),
            model: shorten(model, MAX_MESSAGE_CHARS),
            job: job.map(str::to_owned),
            stage: stage.to_owned(),
            cause: shorten(&chain.join(": "), 3 * MAX_MESSAGE_CHARS),
            chain,
            hint,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            process: None,
        }
    }

    /// The report with what is known of the job's process.
    pub fn with_process(mut self, process: Option<ProcessInfo>) -> Self {
        self.process = process;
        self
    }

    /// Writes the file atomically.
    pub fn write(&self, path: &Path) -> Result<(), WriteError> {
        write_yaml_atomic(path, self)
    }

    /// Reads an `error.yaml`.
    pub fn read(path: &Path) -> Result<Self, ReadError> {
        read_yaml(path)
    }
}

/// Longest message kept per level of the chain (characters); longer ones keep their head and tail.
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// A libtorch error message without the C++ stack trace libtorch appends to it (`Exception raised from …` and
/// `frame #N: …` lines): addresses in shared libraries mean nothing to the person reading error.yaml.
fn strip_native_trace(message: &str) -> &str {
    ["\nException raised from", "\nframe #0:"]
        .iter()
        .filter_map(|marker| message.find(marker))
        .min()
        .map_or(message, |at| message[..at].trim_end())
}

/// `text` cut to about `max` characters: the start and the end kept, the middle replaced by a count.
fn shorten(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let head: String = text.chars().take(max * 2 / 3).collect();
    let tail: String = text.chars().skip(count - max / 4).collect();
    format!(
        "{head} […{} characters…] {tail}",
        count - max * 2 / 3 - max / 4
    )
}

/// The messages of `error` and its sources, outermost first; a level whose message repeats the one below it
/// (the `#[error("{0}")]` wrappers) is folded away.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut chain: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(err) = next {
        let message = err.to_string();
        if chain.last() != Some(&message) && !message.is_empty() {
            chain.push(message);
        }
        next = err.source();
    }
    // A wrapper that prints its source's message as a suffix says everything once: drop the repeated inner level.
    let mut folded: Vec<String> = Vec::new();
    for message in chain {
        if let Some(outer) = folded.last() {
            if outer.ends_with(&message) {
                continue;
            }
        }
        folded.push(message);
    }
    folded
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load model.onnx")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_lists_every_level_and_folds_repeats() {
        let err = Outer(std::io::Error::other("unexpected end of file"));
        let report = ErrorReport::from_error("m.onnx", Some("j1"), "load", &err, None);
        assert_eq!(
            report.chain,
            vec!["cannot load model.onnx", "unexpected end of file"]
        );
        assert_eq!(
            report.cause,
            "cannot load model.onnx: unexpected end of file"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("error.yaml");
        report.write(&path).unwrap();
        assert_eq!(ErrorReport::read(&path).unwrap(), report);
    }

    #[test]
    fn libtorch_stack_traces_are_cut_from_messages() {
        let message = "model.onnx: node `cos` (ConstantOfShape): libtorch: [enforce fail at alloc_cpu.cpp:127] \
                       can't allocate memory\nframe #0: c10::ThrowEnforceNotMet(char const*) + 0x6a (0x7f in \
                       libc10.so)\nframe #1: c10::alloc_cpu(unsigned long)";
        let report =
            ErrorReport::from_chain("model.onnx", None, "prepare", vec![message.into()], None);
        assert_eq!(
            report.cause,
            "model.onnx: node `cos` (ConstantOfShape): libtorch: [enforce fail at alloc_cpu.cpp:127] can't \
             allocate memory"
        );
        let raised = "shape mismatch\nException raised from check at /pytorch/x.h:80 (most recent call first):\n";
        assert_eq!(strip_native_trace(raised), "shape mismatch");
    }

    #[test]
    fn huge_messages_are_shortened_keeping_both_ends() {
        let key = "k".repeat(200_000);
        let report = ErrorReport::from_chain(
            "m.onnx",
            None,
            "sidecar",
            vec![format!(
                "m.yaml: unknown field `{key}`, expected one of `paths`"
            )],
            None,
        );
        assert!(
            report.cause.chars().count() < 3 * MAX_MESSAGE_CHARS,
            "{}",
            report.cause.len()
        );
        assert!(report.cause.starts_with("m.yaml: unknown field"));
        assert!(report.cause.ends_with("expected one of `paths`"));
        assert!(report.cause.contains("characters…]"));
    }
}
