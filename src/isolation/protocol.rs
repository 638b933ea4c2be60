//! What the daemon and a job's process say to each other: one JSON object per line. The daemon writes the
//! [`Spec`] first and may later write [`Command::Stop`] on the child's stdin; the child writes [`Event`]s on its
//! stdout (its stdout only: everything else it prints goes to stderr). The outcome of a successful run travels as
//! YAML inside its event, so its floats come back exactly as `report.yaml` would write them (NaN included).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::JobRunnerKind;
use crate::job::JobRecord;

/// The hidden subcommand a job's process runs: `robustd job-process`.
pub const SUBCOMMAND: &str = "job-process";
/// The daemon's pid, in the job process's environment (a failpoint that kills "the daemon" from inside a job
/// kills this pid).
pub const DAEMON_PID_ENV: &str = "ROBUSTD_DAEMON_PID";
/// Set when the daemon logs to journald: the job's process then logs there too, with the job's fields.
pub const JOURNAL_ENV: &str = "ROBUSTD_JOURNAL_LOGS";
/// Test hook, read by the job's process: `SIGNAL@STAGE[:NAME]` (SIGNAL one of `segv`, `bus`, `abort`) makes the
/// process die of that signal as it enters STAGE (of the job whose model is named NAME). The supervisor's crash
/// handling is tested with it; nothing sets it in production.
pub const CRASH_ENV: &str = "ROBUSTD_JOB_PROCESS_CRASH";

/// The job a process runs (the first line on its stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub record: JobRecord,
    /// The job's directory in the queue (model, companions, `config.yaml`).
    pub dir: PathBuf,
    pub lease: Option<i64>,
    pub runner: JobRunnerKind,
    pub output_dir: PathBuf,
    pub checkpoint_dir: PathBuf,
    pub attempt: u32,
}

/// From the daemon, after the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// The daemon is stopping: checkpoint and end with [`Event::Interrupted`] (a SIGTERM means the same).
    Stop,
    /// The answer to [`Event::Resumed`]: the job is still this worker's, go on.
    Proceed,
    /// The answer to [`Event::ClaimCheck`]: whether the job still owns its checkpoint directory.
    Claim { holds: bool },
}

/// From the job's process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// The process is up and has read its spec.
    Started { pid: u32 },
    Progress {
        stage: String,
        fraction: f64,
        new_stage: bool,
    },
    /// The run succeeded: its `JobOutcome` as YAML.
    Outcome { yaml: String },
    /// The run failed in `stage`.
    Failed {
        stage: String,
        chain: Vec<String>,
        hint: Option<String>,
    },
    /// The run stopped for a shutdown after checkpointing.
    Interrupted,
    /// The process waited while the daemon was stopped and now waits for [`Command::Proceed`]: meanwhile the
    /// daemon checks that the job is still its own (its lease), and kills the process if not.
    Resumed,
    /// Before a checkpoint write: does the job still own its checkpoint directory? (The daemon asks its queue —
    /// a fenced heartbeat — and answers with [`Command::Claim`], or kills the process if another worker took the
    /// job over.)
    ClaimCheck,
}

impl Event {
    /// The event as one line (JSON plus `\n`).
    pub fn line(&self) -> String {
        let mut text = serde_json::to_string(self).unwrap_or_else(|e| {
            // Only a non-finite float could fail here, and fractions are clamped before: say so rather than lose
            // the event.
            format!(r#"{{"event":"failed","stage":"protocol","chain":["cannot encode an event: {e}"],"hint":null}}"#)
        });
        text.push('\n');
        text
    }
}

impl Command {
    pub fn line(&self) -> String {
        let mut text = match self {
            Self::Stop => r#"{"command":"stop"}"#.to_owned(),
            Self::Proceed => r#"{"command":"proceed"}"#.to_owned(),
            Self::Claim { holds } => format!(r#"{{"command":"claim","holds":{holds}}}"#),
        };
        text.push('\n');
        text
    }
}

/// What the crash hook asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct CrashHook {
    pub signal: i32,
    pub stage: String,
    pub job_name: Option<String>,
}

impl CrashHook {
    /// Parses `SIGNAL@STAGE[:NAME]`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (signal, rest) = text.split_once('@')?;
        let signal = match signal {
            "segv" => libc::SIGSEGV,
            "bus" => libc::SIGBUS,
            "abort" => libc::SIGABRT,
            _ => return None,
        };
        let (stage, job_name) = match rest.split_once(':') {
            Some((stage, name)) => (stage, Some(name.to_owned())),
            None => (rest, None),
        };
        Some(Self {
            signal,
            stage: stage.to_owned(),
            job_name,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn events_and_commands_are_single_json_lines_that_read_back() {
        let events = [
            Event::Started { pid: 7 },
            Event::Progress {
                stage: "forward".into(),
                fraction: 0.25,
                new_stage: false,
            },
            Event::Outcome {
                yaml: "a: 1\nb: .nan\n".into(),
            },
            Event::Failed {
                stage: "load".into(),
                chain: vec!["m.onnx".into(), "bad\nthing".into()],
                hint: None,
            },
            Event::Interrupted,
            Event::Resumed,
            Event::ClaimCheck,
        ];
        for event in events {
            let line = event.line();
            assert_eq!(line.matches('\n').count(), 1, "{line}");
            assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
        }
        for command in [
            Command::Stop,
            Command::Proceed,
            Command::Claim { holds: true },
            Command::Claim { holds: false },
        ] {
            assert_eq!(
                serde_json::from_str::<Command>(&command.line()).unwrap(),
                command
            );
        }
    }

    #[test]
    fn the_crash_hook_names_a_signal_a_stage_and_optionally_a_job() {
        assert_eq!(
            CrashHook::parse("segv@forward"),
            Some(CrashHook {
                signal: libc::SIGSEGV,
                stage: "forward".into(),
                job_name: None
            })
        );
        assert_eq!(
            CrashHook::parse("abort@load:first").map(|h| (h.signal, h.job_name)),
            Some((libc::SIGABRT, Some("first".into())))
        );
        assert_eq!(CrashHook::parse("kill@load"), None);
        assert_eq!(CrashHook::parse("segv"), None);
    }
}
