//! `robustd status`: the fleet (workers of a shared queue: host, devices, current job and stage, last heartbeat),
//! the queue, running jobs with stage and progress, and the latest results and failures — read from the job queue
//! the config names (the spool directory, or the PostgreSQL database), no daemon needed.

use std::process::ExitCode;

use super::ConfigArg;
use crate::config::QueueBackend;
use crate::durable::read_yaml;
use crate::job::{Job, JobState};
use crate::queue::{self, WorkerInfo};
use crate::report::{Report, REPORT_FILE};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
    /// How many finished and failed jobs to list.
    #[arg(short = 'n', long, default_value_t = 10)]
    pub last: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = args.config.load()?;
    let Some(queue) = queue::connect(&cfg)? else {
        println!(
            "no job spool at {} (the daemon has not run with this config yet)",
            cfg.paths.state.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    match cfg.queue.backend {
        QueueBackend::Spool => println!("spool    {}", cfg.paths.state.display()),
        QueueBackend::Postgres => {
            let url = cfg
                .queue
                .database_url()
                .map(|u| u.redacted())
                .unwrap_or_default();
            println!("queue    postgres {url}");
            let workers = queue.workers()?;
            println!("workers  {}", workers.len());
            for w in &workers {
                println!("  {}", worker_line(w, cfg.queue.lease_s as f64));
                for job in &w.jobs {
                    println!(
                        "      {}  {}  stage {} {}",
                        job.id,
                        job.name,
                        job.stage.as_deref().unwrap_or("starting"),
                        job.progress
                            .map(|p| format!("{:.0}%", p * 100.0))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    let counts = queue.counts()?;
    println!("queued   {}", counts.queued);
    for job in queue.list(JobState::Queued)?.iter().take(args.last) {
        println!(
            "  {}  {}  ({:?})",
            job.id(),
            job.record.dropped_as,
            job.record.kind
        );
    }
    println!("running  {}", counts.running);
    for job in &queue.list(JobState::Running)? {
        let r = &job.record;
        println!(
            "  {}  {}  device {}  stage {} {}  attempt {}  since {}{}",
            r.id,
            r.dropped_as,
            r.device.as_deref().unwrap_or("?"),
            r.stage.as_deref().unwrap_or("starting"),
            r.progress
                .map(|p| format!("{:.0}%", p * 100.0))
                .unwrap_or_default(),
            r.attempts,
            r.started_at.as_deref().unwrap_or("?"),
            r.worker
                .as_deref()
                .map(|w| format!("  on {w}"))
                .unwrap_or_default()
        );
    }
    for (state, title) in [(JobState::Done, "done"), (JobState::Failed, "failed")] {
        let total = counts.get(state) as usize;
        let jobs = queue.recent(state, args.last)?;
        println!(
            "{title:<8} {total}{}",
            if total > args.last {
                format!(" (latest {})", args.last)
            } else {
                String::new()
            }
        );
        for job in &jobs {
            println!("  {}", finished_line(job));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gpu-host-1  pid 4242  cuda:0  heartbeat 3 s ago  2 jobs` (ingesting nodes say so; a worker silent for longer
/// than its lease is flagged).
fn worker_line(w: &WorkerInfo, lease_s: f64) -> String {
    let age = w.heartbeat_age_s;
    let silent = if age > lease_s {
        "  (silent longer than a lease: stopped or unreachable?)"
    } else {
        ""
    };
    format!(
        "{}  host {}  pid {}  {}{}  heartbeat {:.0} s ago ({}){}  {}",
        w.id,
        w.host,
        w.pid,
        w.devices.join(", "),
        if w.ingest { "  ingests" } else { "" },
        age,
        w.heartbeat_at,
        silent,
        match w.jobs.len() {
            0 => "idle".to_owned(),
            n => format!("{n} job(s)"),
        }
    )
}

fn finished_line(job: &Job) -> String {
    let r = &job.record;
    let when = r.finished_at.as_deref().unwrap_or("?");
    match r.state {
        JobState::Failed => format!(
            "{when}  {}  {}",
            r.dropped_as,
            r.error.as_deref().unwrap_or("(see error.yaml)")
        ),
        _ => {
            let dir = r.result_dir.as_deref();
            let verdict = dir
                .and_then(|d| read_yaml::<Report>(&d.join(REPORT_FILE)).ok())
                .and_then(|rep| serde_norway::to_string(&rep.summary.verdict).ok())
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| "?".into());
            let dedup = r
                .dedup_of
                .as_deref()
                .map(|o| format!("  (identical to {o})"))
                .unwrap_or_default();
            let by = r
                .worker
                .as_deref()
                .map(|w| format!("  by {w}"))
                .unwrap_or_default();
            format!(
                "{when}  {}  {verdict}  {}{dedup}{by}",
                r.dropped_as,
                dir.map(|d| d.display().to_string()).unwrap_or_default()
            )
        }
    }
}
