//! `robustd status`: the queue, running jobs with stage and progress, and the latest results, read from the spool
//! directory (no server needed; works while the daemon runs or not).

use std::process::ExitCode;

use super::ConfigArg;
use crate::durable::read_yaml;
use crate::job::{Job, JobState};
use crate::queue::{Queue, Spool};
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
    let state = &cfg.paths.state;
    let Some(spool) = Spool::existing(state) else {
        println!(
            "no job spool at {} (the daemon has not run with this config yet)",
            state.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    println!("spool    {}", state.display());
    let queued = spool.list(JobState::Queued)?;
    println!("queued   {}", queued.len());
    for job in queued.iter().take(args.last) {
        println!(
            "  {}  {}  ({:?})",
            job.id(),
            job.record.dropped_as,
            job.record.kind
        );
    }
    let running = spool.list(JobState::Running)?;
    println!("running  {}", running.len());
    for job in &running {
        let r = &job.record;
        println!(
            "  {}  {}  stage {} {}  attempt {}  since {}",
            r.id,
            r.dropped_as,
            r.stage.as_deref().unwrap_or("starting"),
            r.progress
                .map(|p| format!("{:.0}%", p * 100.0))
                .unwrap_or_default(),
            r.attempts,
            r.started_at.as_deref().unwrap_or("?")
        );
    }
    for (state, title) in [(JobState::Done, "done"), (JobState::Failed, "failed")] {
        let mut jobs = spool.list(state)?;
        jobs.sort_by(|a, b| b.record.finished_at.cmp(&a.record.finished_at));
        println!(
            "{title:<8} {}{}",
            jobs.len(),
            if jobs.len() > args.last {
                format!(" (latest {})", args.last)
            } else {
                String::new()
            }
        );
        for job in jobs.iter().take(args.last) {
            println!("  {}", finished_line(job));
        }
    }
    Ok(ExitCode::SUCCESS)
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
            format!(
                "{when}  {}  {verdict}  {}{dedup}",
                r.dropped_as,
                dir.map(|d| d.display().to_string()).unwrap_or_default()
            )
        }
    }
}
