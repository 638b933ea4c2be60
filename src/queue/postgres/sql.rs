//! The queue's SQL, in one place, and the mapping of a `robustd.jobs` row back to a [`Job`]. Every change of a
//! running job names its lease token in its `WHERE` clause: that is the fence — an update from a worker whose
//! lease was taken over matches no row.

use std::path::PathBuf;

use tokio_postgres::{GenericClient, Row};

use super::PgError;
use crate::job::{Job, JobKind, JobRecord, JobState};
use crate::report::ErrorReport;

/// The columns [`job_from_row`] reads, in its order (timestamps as RFC 3339 UTC text, like the job records).
macro_rules! job_columns {
    () => {
        "id, key, kind, state, record, input_dir, attempts, worker, lease_token, \
         to_char(queued_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
         to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
         to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
         stage, progress, result_dir, dedup_of, error"
    };
}

pub const INSERT_JOB: &str =
    "INSERT INTO robustd.jobs (id, key, kind, state, name, dropped_as, record, input_dir, \
     error, error_report, finished_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CASE WHEN $4 = 'failed' THEN now() END) \
     ON CONFLICT (id) DO NOTHING";

/// Claims the oldest job this worker may take — queued, or running under an expired lease (its worker vanished;
/// it has not vanished `queue.max_attempts` times yet) — of a kind with a free slot, whose content key runs
/// nowhere: `$1` kinds, `$2` keys running here, `$3` worker, `$4` new lease token, `$5` lease seconds, `$6` max
/// attempts. SKIP LOCKED lets racing workers pass each other's candidates; the unique index on running keys
/// settles two workers taking identical jobs at once.
pub const CLAIM: &str = concat!(
    "UPDATE robustd.jobs SET state = 'running', attempts = attempts + 1, \
         lost_leases = lost_leases + CASE WHEN state = 'running' THEN 1 ELSE 0 END, \
         worker = $3, lease_token = $4, lease_expires_at = now() + make_interval(secs => $5), \
         started_at = now(), stage = NULL, progress = NULL \
     WHERE id IN ( \
         SELECT j.id FROM robustd.jobs j \
         WHERE (j.state = 'queued' \
                OR (j.state = 'running' AND j.lease_expires_at < now() AND j.lost_leases + 1 < $6)) \
           AND j.kind = ANY($1) AND NOT (j.key = ANY($2)) \
           AND NOT EXISTS (SELECT 1 FROM robustd.jobs r \
                           WHERE r.key = j.key AND r.state = 'running' AND r.id <> j.id) \
         ORDER BY j.queued_at, j.id \
         LIMIT 1 FOR UPDATE SKIP LOCKED) \
     RETURNING ",
    job_columns!()
);

/// Renews the leases `$1` ids / `$2` tokens by `$3` seconds; returns the ids still held.
pub const RENEW: &str =
    "UPDATE robustd.jobs j SET lease_expires_at = now() + make_interval(secs => $3) \
     FROM unnest($1::text[], $2::bigint[]) AS h(id, token) \
     WHERE j.id = h.id AND j.lease_token = h.token AND j.state = 'running' \
     RETURNING j.id";

/// A running job's stage and progress, renewing its lease (`$5` seconds).
pub const HEARTBEAT: &str = "UPDATE robustd.jobs SET stage = $3, progress = $4, \
         lease_expires_at = now() + make_interval(secs => $5) \
     WHERE id = $1 AND lease_token = $2 AND state = 'running'";

/// Locks a running job for its publish, if this worker's lease still holds it.
pub const LOCK_LEASED: &str =
    "SELECT 1 FROM robustd.jobs WHERE id = $1 AND lease_token = $2 AND state = 'running' FOR UPDATE";

pub const COMPLETE: &str = concat!(
    "UPDATE robustd.jobs SET state = 'done', finished_at = now(), result_dir = $3, dedup_of = $4, \
         stage = NULL, progress = 1, lease_token = NULL, lease_expires_at = NULL \
     WHERE id = $1 AND lease_token = $2 AND state = 'running' RETURNING ",
    job_columns!()
);

/// The key's published result (dedupe: one per key).
pub const PUBLISH: &str = "INSERT INTO robustd.published (key, job, result_dir) VALUES ($1, $2, $3) \
     ON CONFLICT (key) DO UPDATE SET job = excluded.job, result_dir = excluded.result_dir, published_at = now()";

pub const FAIL: &str = concat!(
    "UPDATE robustd.jobs SET state = 'failed', finished_at = now(), error = $3, error_report = $4, \
         lease_token = NULL, lease_expires_at = NULL \
     WHERE id = $1 AND lease_token = $2 AND state = 'running' RETURNING ",
    job_columns!()
);

/// Gives a running job back to the queue (its worker stops without finishing it).
pub const RELEASE: &str = concat!(
    "UPDATE robustd.jobs SET state = 'queued', lease_token = NULL, lease_expires_at = NULL, \
         stage = NULL, progress = NULL \
     WHERE id = $1 AND lease_token = $2 AND state = 'running' RETURNING ",
    job_columns!()
);

/// At a worker's start: the jobs a previous process under the same (configured) worker name left running.
pub const RELEASE_WORKER: &str = "UPDATE robustd.jobs SET state = 'queued', lease_token = NULL, \
         lease_expires_at = NULL, stage = NULL, progress = NULL \
     WHERE state = 'running' AND worker = $1 RETURNING id";

pub const NOTIFY: &str = "SELECT pg_notify('robustd_jobs', $1)";

pub const LIST: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM robustd.jobs WHERE state = $1 ORDER BY queued_at, id"
);

pub const RECENT: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM robustd.jobs WHERE state = $1 ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT $2"
);

pub const GET_PUBLISHED: &str = "SELECT job, result_dir FROM robustd.published WHERE key = $1";

pub const COUNTS: &str = "SELECT state, count(*) FROM robustd.jobs GROUP BY state";

pub const COUNT_QUEUED: &str = "SELECT count(*) FROM robustd.jobs WHERE state = 'queued'";

pub const LIVE_LEASES: &str =
    "SELECT lease_token FROM robustd.jobs WHERE state = 'running' AND lease_token IS NOT NULL";

pub const JOB_EXISTS: &str = "SELECT 1 FROM robustd.jobs WHERE id = $1";

pub const REGISTER_WORKER: &str = "INSERT INTO robustd.workers (id, host, pid, devices, ingest, version) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, devices = excluded.devices, \
         ingest = excluded.ingest, version = excluded.version, started_at = now(), heartbeat_at = now()";

/// Workers silent for a day are forgotten.
pub const FORGET_WORKERS: &str =
    "DELETE FROM robustd.workers WHERE heartbeat_at < now() - interval '1 day'";

pub const WORKER_HEARTBEAT: &str = "UPDATE robustd.workers SET heartbeat_at = now() WHERE id = $1";

pub const UNREGISTER_WORKER: &str = "DELETE FROM robustd.workers WHERE id = $1";

pub const WORKERS: &str = "SELECT id, host, pid, devices, ingest, version, \
         to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
         to_char(heartbeat_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
         extract(epoch FROM now() - heartbeat_at)::float8 \
     FROM robustd.workers ORDER BY host, id";

pub const RUNNING_BY_WORKER: &str =
    "SELECT worker, id, name, stage, progress FROM robustd.jobs WHERE state = 'running' ORDER BY started_at";

pub fn state_name(state: JobState) -> &'static str {
    state.dir_name()
}

pub fn kind_name(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Eval => "eval",
        JobKind::Train => "train",
    }
}

/// A job from a row of [`job_columns!`]: the record as ingested, brought up to date from the row.
pub fn job_from_row(row: &Row) -> Result<Job, PgError> {
    let id: String = row.try_get(0)?;
    let text: String = row.try_get(4)?;
    let mut record: JobRecord = serde_norway::from_str(&text).map_err(|e| PgError::BadRecord {
        id: id.clone(),
        cause: e.to_string(),
    })?;
    record.id = id;
    record.key = row.try_get(1)?;
    let kind: String = row.try_get(2)?;
    record.kind = if kind == "train" {
        JobKind::Train
    } else {
        JobKind::Eval
    };
    let state: String = row.try_get(3)?;
    record.state = JobState::ALL
        .into_iter()
        .find(|s| state_name(*s) == state)
        .unwrap_or(JobState::Failed);
    record.attempts = row.try_get::<_, i32>(6)?.max(0) as u32;
    record.worker = row.try_get(7)?;
    let lease: Option<i64> = row.try_get(8)?;
    if let Some(queued_at) = row.try_get::<_, Option<String>>(9)? {
        record.queued_at = queued_at;
    }
    record.started_at = row.try_get(10)?;
    record.finished_at = row.try_get(11)?;
    record.stage = row.try_get(12)?;
    record.progress = row.try_get(13)?;
    record.result_dir = row.try_get::<_, Option<String>>(14)?.map(PathBuf::from);
    record.dedup_of = row.try_get(15)?;
    record.error = row.try_get(16)?;
    let dir: String = row.try_get(5)?;
    Ok(Job {
        record,
        dir: PathBuf::from(dir),
        lease: if state == "running" { lease } else { None },
    })
}

/// Marks a running job done under its lease (`None`: the lease is lost) and, unless it was answered from another
/// job's result, makes its result the key's published one; notifies waiting workers.
pub async fn record_done(
    client: &impl GenericClient,
    id: &str,
    token: i64,
    key: &str,
    dir: &str,
    dedup_of: Option<&str>,
) -> Result<Option<Job>, PgError> {
    let Some(row) = client
        .query_opt(COMPLETE, &[&id, &token, &dir, &dedup_of])
        .await?
    else {
        return Ok(None);
    };
    if dedup_of.is_none() {
        client.execute(PUBLISH, &[&key, &id, &dir]).await?;
    }
    client.execute(NOTIFY, &[&id]).await?;
    job_from_row(&row).map(Some)
}

/// Fails jobs whose lease expired after their worker vanished `max` times, each with an error report saying so;
/// returns their ids.
pub async fn fail_vanished(client: &impl GenericClient, max: i32) -> Result<Vec<String>, PgError> {
    let rows = client
        .query(
            "SELECT id, dropped_as, worker, stage, lost_leases FROM robustd.jobs \
             WHERE state = 'running' AND lease_expires_at < now() AND lost_leases + 1 >= $1",
            &[&max],
        )
        .await?;
    let mut failed = Vec::new();
    for row in rows {
        let id: String = row.try_get(0)?;
        let dropped_as: String = row.try_get(1)?;
        let worker: Option<String> = row.try_get(2)?;
        let stage: Option<String> = row.try_get(3)?;
        let lost: i32 = row.try_get(4)?;
        let report = ErrorReport::from_chain(
            &dropped_as,
            Some(&id),
            stage.as_deref().unwrap_or("run"),
            vec![
                dropped_as.clone(),
                format!(
                    "the worker running it vanished {} times (the last one: {}) without finishing it",
                    lost + 1,
                    worker.as_deref().unwrap_or("unknown")
                ),
            ],
            Some(format!(
                "a worker dies on this job (out of memory? killed? a crash in a native library?): see the last \
                 worker's log; queue.max_attempts ({max}) sets how many starts a job gets"
            )),
        );
        let yaml = serde_norway::to_string(&report).unwrap_or_default();
        let n = client
            .execute(
                "UPDATE robustd.jobs SET state = 'failed', finished_at = now(), error = $2, error_report = $3, \
                     lease_token = NULL, lease_expires_at = NULL, lost_leases = lost_leases + 1 \
                 WHERE id = $1 AND state = 'running' AND lease_expires_at < now()",
                &[&id, &report.cause, &yaml],
            )
            .await?;
        if n == 1 {
            client.execute(NOTIFY, &[&id]).await?;
            failed.push(id);
        }
    }
    Ok(failed)
}
