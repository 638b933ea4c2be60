//! `queue.backend: postgres`: the job queue a fleet of workers shares, in a PostgreSQL database (the record of
//! truth), with the jobs' files in a shared store every worker mounts (`queue.shared`: `inputs/<job>/`,
//! `checkpoints/<key>/`; results in `paths.models`).
//!
//! - Intake copies a drop into `inputs/` (staged under a hidden name, renamed into place), then inserts the job —
//!   in that order, so a crash between them leaves files without a job (swept later), never a job without files —
//!   then removes the drop from the inbox.
//! - A claim is one `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING …` ([`sql::CLAIM`])
//!   that also takes jobs whose lease expired, and gives the claim a fresh random lease token.
//! - Leases are renewed by [`lease::Renewer`]; completing, failing, releasing and heartbeating name the token, so a
//!   worker that lost its lease changes nothing ([`QueueError::LeaseLost`]); the publish runs inside the
//!   transaction that locked the job under the token ([`Queue::complete`]).
//! - Idle workers sleep until a NOTIFY or `queue.poll_ms` ([`listen`]).
//! - Connections come from a pool; a lost database makes calls fail fast and the worker retries with backoff
//!   ([`connect`]). Modules: [`connect`], [`schema`] (migrations, version check), [`sql`], [`lease`], [`listen`].

mod connect;
mod lease;
mod listen;
pub mod schema;
mod sql;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use self::connect::Db;
use self::lease::{Leases, Renewer};
use self::listen::ClaimGate;
use super::{
    Claimable, Cleanup, Counts, DropFiles, Publish, Published, Queue, QueueError, Recovery, Spool,
    WorkerInfo, WorkerJob,
};
use crate::config::{Config, MigrateMode};
use crate::durable::{self, copy_atomic, create_dir_all, rename_durable, write_yaml_atomic};
use crate::job::{Job, JobRecord, JobState, CONFIG_FILE, ERROR_FILE, JOB_FILE};
use crate::report::ErrorReport;

/// Checkpoints in the shared store: `<queue.shared>/checkpoints/<key>/`.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Job inputs in the shared store: `<queue.shared>/inputs/<job id>/`.
pub const INPUTS_DIR: &str = "inputs";
/// Input directories without a job (a crash between copy and insert) older than this are removed at start.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, Error)]
pub enum PgError {
    #[error(
        "queue.backend is postgres but no database URL is set (queue.url or ${})",
        crate::config::DATABASE_URL_ENV
    )]
    NoUrl,
    #[error("malformed database URL {url}: {cause}")]
    BadUrl { url: String, cause: String },
    #[error("cannot start the queue's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("connection pool: {0}")]
    Pool(String),
    #[error("cannot connect to {url}: {cause}")]
    Connect { url: String, cause: String },
    #[error("the database holds robustd queue schema version {found}, newer than this robustd knows ({known}): upgrade robustd on this machine")]
    NewerSchema { found: i32, known: i32 },
    #[error("the database holds robustd queue schema version {found}, this robustd needs {known}: run `robustd queue migrate` (or set queue.migrate: auto)")]
    OldSchema { found: i32, known: i32 },
    #[error("migration {version} failed: {cause}")]
    Migration { version: i32, cause: String },
    #[error("database unreachable (retrying in {:.1} s)", retry_in.as_secs_f64())]
    Unavailable { retry_in: Duration },
    #[error("database call timed out after {0:?}")]
    Timeout(Duration),
    #[error("the queue's runtime stopped")]
    Stopped,
    #[error("job {id}: unreadable record in the database: {cause}")]
    BadRecord { id: String, cause: String },
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl PgError {
    fn from_pool(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => Self::Db(e),
            other => Self::Pool(other.to_string()),
        }
    }

    /// Whether the error says the database could not be reached (rather than refusing a statement): the worker
    /// then backs off and retries.
    pub fn is_connection(&self) -> bool {
        match self {
            Self::Db(e) => match e.code() {
                // connection_exception, and the server shutting down or starting up
                Some(code) => {
                    let c = code.code();
                    c.starts_with("08") || c.starts_with("57P")
                }
                None => true,
            },
            Self::Pool(_) | Self::Timeout(_) | Self::Connect { .. } => true,
            _ => false,
        }
    }

    /// Whether the statement failed on a unique index (two workers claimed identical jobs at once).
    fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Db(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION))
    }
}

/// The PostgreSQL queue, as a worker (leases renewed, notifications listened to, registered in the fleet) or as
/// a client (`status`, `submit`).
pub struct PgQueue {
    db: Arc<Db>,
    worker: String,
    shared: PathBuf,
    lease: Duration,
    max_attempts: u32,
    /// Whether the worker name was configured (stable across restarts), so jobs it left running are its own.
    named: bool,
    leases: Arc<Leases>,
    gate: Arc<ClaimGate>,
    queued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// Drops intake refuses stay on this machine (`paths.state/failed/`), like the spool's.
    local: Option<Spool>,
}

impl PgQueue {
    /// Connects, checks (or migrates) the schema, registers this worker with its `devices`, and starts the lease
    /// renewer and the listener.
    pub fn open_worker(config: &Config, devices: &[String]) -> Result<Self, PgError> {
        let queue = Self::connect(config, true)?;
        let host = hostname();
        let (id, pid) = (queue.worker.clone(), std::process::id() as i32);
        let devices = devices.to_vec();
        let ingest = config.queue.ingest;
        queue.db.with_client(move |client| async move {
            client.execute(sql::FORGET_WORKERS, &[]).await?;
            client
                .execute(
                    sql::REGISTER_WORKER,
                    &[
                        &id,
                        &host,
                        &pid,
                        &devices,
                        &ingest,
                        &env!("CARGO_PKG_VERSION"),
                    ],
                )
                .await?;
            Ok(())
        })?;
        let handle = queue.db.handle();
        handle.spawn(
            Renewer {
                db: queue.db.clone(),
                leases: queue.leases.clone(),
                worker: queue.worker.clone(),
                lease: queue.lease,
                max_attempts: queue.max_attempts,
                queued: queue.queued.clone(),
                stop: queue.stop.clone(),
            }
            .run(),
        );
        handle.spawn(listen::listen(
            queue.db.settings.clone(),
            queue.gate.clone(),
            queue.stop.clone(),
        ));
        tracing::info!(worker = %queue.worker, db = %queue.db.shown, "joined the job queue");
        Ok(queue)
    }

    /// Connects and checks the schema (a client: `status`, `submit`; `migrate` as `queue.migrate` says).
    pub fn open_client(config: &Config) -> Result<Self, PgError> {
        Self::connect(config, false)
    }

    /// `robustd queue migrate`: brings the schema to this robustd's version; returns `(from, to)`.
    pub fn migrate(config: &Config) -> Result<(i32, i32), PgError> {
        let db = Db::new(&config.queue, "migrate")?;
        let shown = db.shown.clone();
        first_contact(&db, &shown, |mut client| async move {
            schema::migrate(&mut client).await
        })
    }

    fn connect(config: &Config, worker: bool) -> Result<Self, PgError> {
        let spec = &config.queue;
        let shared = spec.shared.clone().ok_or(PgError::NoUrl)?;
        let named = spec.worker.is_some();
        let name = spec
            .worker
            .clone()
            .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
        let db = Db::new(spec, &name)?;
        let auto = spec.migrate == MigrateMode::Auto;
        let shown = db.shown.clone();
        let (from, to) = first_contact(&db, &shown, move |mut client| async move {
            let found = schema::version(&client).await?;
            schema::check(found, auto)?;
            if found < schema::LATEST {
                return schema::migrate(&mut client).await;
            }
            Ok((found, found))
        })?;
        if from != to {
            tracing::info!("migrated the job queue's schema from version {from} to {to}");
        }
        let local = if worker {
            Some(Spool::open(&config.paths.state).map_err(|e| PgError::Pool(e.to_string()))?)
        } else {
            None
        };
        Ok(Self {
            db: Arc::new(db),
            worker: name,
            shared,
            lease: Duration::from_secs(spec.lease_s),
            max_attempts: spec.max_attempts,
            named,
            leases: Arc::default(),
            gate: Arc::new(ClaimGate::new(Duration::from_millis(spec.poll_ms))),
            queued: Arc::default(),
            stop: Arc::default(),
            local,
        })
    }

    pub fn worker_name(&self) -> &str {
        &self.worker
    }

    fn inputs(&self) -> PathBuf {
        self.shared.join(INPUTS_DIR)
    }

    fn token(job: &Job) -> Result<i64, QueueError> {
        job.lease.ok_or_else(|| QueueError::LeaseLost {
            id: job.id().to_owned(),
        })
    }

    /// Runs a fenced update (`$1` id, `$2` token, then `extra`) returning the job's row; no row = lease lost.
    fn fenced(
        &self,
        job: &Job,
        statement: &'static str,
        extra: Vec<Option<String>>,
    ) -> Result<Job, QueueError> {
        let token = Self::token(job)?;
        let row = self.retrying(|| {
            let (id, extra) = (job.id().to_owned(), extra.clone());
            self.db.with_client(move |mut client| async move {
                let tx = client.transaction().await?;
                let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&id, &token];
                for e in &extra {
                    params.push(e);
                }
                let row = tx.query_opt(statement, &params).await?;
                if row.is_some() {
                    tx.execute(sql::NOTIFY, &[&id]).await?;
                }
                tx.commit().await?;
                row.map(|r| sql::job_from_row(&r)).transpose()
            })
        })?;
        self.leases.release(job.id());
        row.ok_or_else(|| QueueError::LeaseLost {
            id: job.id().to_owned(),
        })
    }

    /// Retries `op` while the database is unreachable, up to one lease (after that another worker may own the
    /// job anyway).
    fn retrying<T>(&self, mut op: impl FnMut() -> Result<T, PgError>) -> Result<T, PgError> {
        let deadline = std::time::Instant::now() + self.lease;
        loop {
            match op() {
                Err(e) if is_outage(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(250));
                }
                other => return other,
            }
        }
    }

    /// Records a published result in a transaction of its own (after the publish's own transaction was lost),
    /// retrying while the database is away: the result is in place, only its record is missing.
    fn record_done(
        &self,
        job: &Job,
        result_dir: &Path,
        dedup_of: Option<&str>,
    ) -> Result<Option<Job>, PgError> {
        let token = Self::token(job).map_err(|_| PgError::Stopped)?;
        let (id, key) = (job.id().to_owned(), job.record.key.clone());
        let dir = result_dir.to_string_lossy().into_owned();
        let dedup_of = dedup_of.map(str::to_owned);
        self.retrying(|| {
            let (id, key, dir, dedup_of) = (id.clone(), key.clone(), dir.clone(), dedup_of.clone());
            self.db.with_client(move |mut client| async move {
                let tx = client.transaction().await?;
                let done =
                    sql::record_done(&*tx, &id, token, &key, &dir, dedup_of.as_deref()).await?;
                tx.commit().await?;
                Ok(done)
            })
        })
    }

    /// Copies the drop into `inputs/<id>/` (staged, then renamed into place) with its config and record.
    fn stage_inputs(
        &self,
        record: &JobRecord,
        config_yaml: &str,
        files: &DropFiles,
    ) -> Result<PathBuf, QueueError> {
        let inputs = self.inputs();
        let dir = inputs.join(&record.id);
        let staging = inputs.join(format!(".{}.partial", record.id));
        create_dir_all(&staging)?;
        let built = (|| {
            for (src, name) in files {
                copy_atomic(src, &staging.join(name))?;
            }
            durable::write_atomic(&staging.join(CONFIG_FILE), config_yaml.as_bytes())?;
            write_yaml_atomic(&staging.join(JOB_FILE), record)?;
            durable::sync_dir(&staging).map_err(|e| durable::WriteError::io(&staging, e))?;
            rename_durable(&staging, &dir)
        })();
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.into());
        }
        Ok(dir)
    }

    /// Removes input directories a crash left without a job (older than [`ORPHAN_AGE`]; the drop is still in its
    /// inbox, since intake removes it only after the insert).
    fn sweep_orphan_inputs(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.inputs()) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > ORPHAN_AGE);
            if !old {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = name.ends_with(".partial") || {
                let id = name.clone();
                matches!(
                    self.db.with_client(move |client| async move {
                        Ok(client.query_opt(sql::JOB_EXISTS, &[&id]).await?.is_none())
                    }),
                    Ok(true)
                )
            };
            if orphan && std::fs::remove_dir_all(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Ends the transaction a pooled connection is in; a connection that cannot is closed instead.
    fn end_transaction(&self, client: deadpool_postgres::Object, statement: &'static str) {
        let _ = self.db.with_client(move |_| async move {
            if let Err(e) = client.batch_execute(statement).await {
                drop(deadpool_postgres::Object::take(client));
                return Err(e.into());
            }
            Ok(())
        });
    }

    fn insert(&self, job: &Job, error: Option<&ErrorReport>) -> Result<(), QueueError> {
        let r = &job.record;
        let record_yaml = serde_norway::to_string(r).unwrap_or_default();
        let params: Vec<String> = vec![
            r.id.clone(),
            r.key.clone(),
            sql::kind_name(r.kind).to_owned(),
            sql::state_name(r.state).to_owned(),
            r.name.clone(),
            r.dropped_as.clone(),
            record_yaml,
            job.dir.to_string_lossy().into_owned(),
        ];
        let cause = error.map(|e| e.cause.clone());
        let report = error.map(|e| serde_norway::to_string(e).unwrap_or_default());
        let id = r.id.clone();
        self.db.with_client(move |mut client| async move {
            let tx = client.transaction().await?;
            let p = &params;
            tx.execute(
                sql::INSERT_JOB,
                &[
                    &p[0], &p[1], &p[2], &p[3], &p[4], &p[5], &p[6], &p[7], &cause, &report,
                ],
            )
            .await?;
            tx.execute(sql::NOTIFY, &[&id]).await?;
            tx.commit().await?;
            Ok(())
        })?;
        Ok(())
    }
}

/// The first call to the database: a failure here is the error that stops the worker before it starts, so it
/// says what was tried (the redacted URL) and what went wrong.
fn first_contact<T, F, Fut>(db: &Db, shown: &str, op: F) -> Result<T, PgError>
where
    T: Send + 'static,
    F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, PgError>> + Send,
{
    db.with_client(op).map_err(|e| match e {
        PgError::Db(err) => PgError::Connect {
            url: shown.to_owned(),
            cause: connect_cause(&err),
        },
        PgError::Pool(cause) => PgError::Connect {
            url: shown.to_owned(),
            cause,
        },
        other => other,
    })
}

/// The driver's error with its source (for a refused connection the OS error; for a server error its message).
fn connect_cause(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    crate::report::error_chain(e).join(": ")
}

impl Queue for PgQueue {
    fn recover(&self, _inbox: &Path) -> Result<Recovery, QueueError> {
        let mut rec = Recovery::default();
        if self.named {
            let worker = self.worker.clone();
            rec.resumed = self.db.with_client(move |client| async move {
                let rows = client.query(sql::RELEASE_WORKER, &[&worker]).await?;
                if !rows.is_empty() {
                    client.execute(sql::NOTIFY, &[&worker]).await?;
                }
                Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
            })?;
        }
        create_dir_all(&self.inputs())?;
        let swept = self.sweep_orphan_inputs();
        if swept > 0 {
            tracing::info!(
                "removed {swept} input director(ies) left without a job by an interrupted intake"
            );
        }
        Ok(rec)
    }

    fn enqueue(
        &self,
        mut record: JobRecord,
        config_yaml: &str,
        files: DropFiles,
    ) -> Result<Job, QueueError> {
        record.state = JobState::Queued;
        let dir = self.stage_inputs(&record, config_yaml, &files)?;
        let job = Job::new(record, dir);
        if let Err(e) = self.insert(&job, None) {
            // Not queued: the drop stays in the inbox and is taken again later.
            let _ = std::fs::remove_dir_all(&job.dir);
            return Err(e);
        }
        for (src, _) in &files {
            if let Err(e) = std::fs::remove_file(src) {
                tracing::warn!(
                    "queued, but cannot remove {} from the inbox: {e}",
                    src.display()
                );
            }
        }
        Ok(job)
    }

    fn reject(
        &self,
        mut record: JobRecord,
        files: DropFiles,
        error: &ErrorReport,
    ) -> Result<Job, QueueError> {
        let job = match &self.local {
            // A worker's inbox: the refused files stay on this machine, in `paths.state/failed/<id>/`.
            Some(local) => local.reject(record, files, error)?,
            // `robustd submit`: the submitter keeps the originals and reads the error; the fleet sees the record.
            None => {
                record.state = JobState::Failed;
                record.error = Some(error.cause.clone());
                let dir = files
                    .first()
                    .and_then(|(src, _)| src.parent())
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                Job::new(record, dir)
            }
        };
        if let Err(e) = self.insert(&job, Some(error)) {
            tracing::warn!(job = %job.id(), "refused drop not recorded in the queue: {e}");
        }
        Ok(job)
    }

    fn claim(&self, can: &Claimable) -> Result<Option<Job>, QueueError> {
        if can.kinds.is_empty() || !self.gate.should_query(can) {
            return Ok(None);
        }
        let kinds: Vec<String> = can
            .kinds
            .iter()
            .map(|k| sql::kind_name(*k).to_owned())
            .collect();
        let busy = can.busy_keys.clone();
        let worker = self.worker.clone();
        let token: i64 = rand::random();
        let lease_s = self.lease.as_secs_f64();
        let max = self.max_attempts as i32;
        let claimed = self.db.with_client(move |client| async move {
            let row = client
                .query_opt(
                    sql::CLAIM,
                    &[&kinds, &busy, &worker, &token, &lease_s, &max],
                )
                .await?;
            row.map(|r| sql::job_from_row(&r)).transpose()
        });
        match claimed {
            Ok(Some(job)) => {
                self.leases.hold(job.id(), token);
                self.gate.claimed(None);
                Ok(Some(job))
            }
            Ok(None) => {
                self.gate.claimed(Some(can));
                Ok(None)
            }
            // Two workers took identical jobs at once: this one tries again at the next tick.
            Err(e) if e.is_unique_violation() => Ok(None),
            // Unreachable: logged once by the connection; the loop tries again at its next tick.
            Err(e) if is_outage(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn heartbeat(&self, job: &Job) -> Result<(), QueueError> {
        let token = Self::token(job)?;
        if self.leases.is_lost(job.id(), token) {
            return Err(QueueError::LeaseLost {
                id: job.id().to_owned(),
            });
        }
        let id = job.id().to_owned();
        let (stage, progress) = (job.record.stage.clone(), job.record.progress);
        let lease_s = self.lease.as_secs_f64();
        match self.db.with_client(move |client| async move {
            Ok(client
                .execute(sql::HEARTBEAT, &[&id, &token, &stage, &progress, &lease_s])
                .await?)
        }) {
            Ok(1) => Ok(()),
            Ok(_) => {
                self.leases.mark_lost(job.id(), token);
                Err(QueueError::LeaseLost {
                    id: job.id().to_owned(),
                })
            }
            // The renewer keeps the lease; progress shows again once the database is back.
            Err(e) if is_outage(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn complete(
        &self,
        job: &Job,
        publish: Publish<'_>,
        dedup_of: Option<&str>,
    ) -> Result<Job, QueueError> {
        let token = Self::token(job)?;
        // Lock the job under this worker's lease; the publish happens while the lock is held, so no other worker
        // can take the job over in between, and a worker that lost the lease never publishes.
        let locked = self.retrying(|| {
            let id = job.id().to_owned();
            self.db.with_client(move |client| async move {
                client.batch_execute("BEGIN").await?;
                match client.query_opt(sql::LOCK_LEASED, &[&id, &token]).await {
                    Ok(row) => Ok((client, row.is_some())),
                    Err(e) => {
                        // Never back into the pool inside a transaction.
                        drop(deadpool_postgres::Object::take(client));
                        Err(e.into())
                    }
                }
            })
        });
        let (client, held) = match locked {
            Ok(v) => v,
            Err(e) => {
                self.leases.release(job.id());
                return Err(e.into());
            }
        };
        if !held {
            self.end_transaction(client, "ROLLBACK");
            self.leases.release(job.id());
            return Err(QueueError::LeaseLost {
                id: job.id().to_owned(),
            });
        }
        let result_dir = match publish() {
            Ok(dir) => dir,
            Err(e) => {
                self.end_transaction(client, "ROLLBACK");
                return Err(QueueError::Publish(e));
            }
        };
        let (id, key) = (job.id().to_owned(), job.record.key.clone());
        let dir = result_dir.to_string_lossy().into_owned();
        let dedup = dedup_of.map(str::to_owned);
        let recorded = self.db.with_client(move |_| async move {
            let done = sql::record_done(&**client, &id, token, &key, &dir, dedup.as_deref()).await;
            match done {
                Ok(done) => {
                    client.batch_execute("COMMIT").await?;
                    Ok(done)
                }
                Err(e) => {
                    drop(deadpool_postgres::Object::take(client));
                    Err(e)
                }
            }
        });
        let recorded = match recorded {
            // The result is in place; record it in a new transaction once the database answers again.
            Err(e) if is_outage(&e) => self.record_done(job, &result_dir, dedup_of),
            other => other,
        };
        self.leases.release(job.id());
        let done = recorded?.ok_or_else(|| QueueError::LeaseLost {
            id: job.id().to_owned(),
        })?;
        // The result keeps the model; the job's inputs go.
        if let Err(e) = std::fs::remove_dir_all(&job.dir) {
            tracing::warn!(job = %job.id(), "cannot remove its inputs {}: {e}", job.dir.display());
        }
        Ok(done)
    }

    fn fail(
        &self,
        job: &Job,
        error: &ErrorReport,
        cleanup: Cleanup<'_>,
    ) -> Result<Job, QueueError> {
        let report = serde_norway::to_string(error).unwrap_or_default();
        let failed = self.fenced(
            job,
            sql::FAIL,
            vec![Some(error.cause.clone()), Some(report)],
        )?;
        // Only once the fenced mark took: a worker that lost the job must not remove the checkpoints the worker
        // that owns it now resumes from.
        cleanup();
        // Next to the inputs as well, like the spool's failed/<id>/error.yaml.
        if let Err(e) = error.write(&job.dir.join(ERROR_FILE)) {
            tracing::warn!(job = %job.id(), "cannot write its error.yaml: {e}");
        }
        Ok(failed)
    }

    fn requeue(&self, job: &Job) -> Result<Job, QueueError> {
        self.fenced(job, sql::RELEASE, Vec::new())
    }

    fn release(&self, job: &Job) -> Result<(), QueueError> {
        self.requeue(job).map(|_| ())
    }

    fn published(&self, key: &str) -> Option<Published> {
        let key = key.to_owned();
        self.db
            .with_client(move |client| async move {
                Ok(client
                    .query_opt(sql::GET_PUBLISHED, &[&key])
                    .await?
                    .map(|r| Published {
                        job: r.get(0),
                        result_dir: PathBuf::from(r.get::<_, String>(1)),
                    }))
            })
            .ok()
            .flatten()
    }

    fn list(&self, state: JobState) -> Result<Vec<Job>, QueueError> {
        let state = sql::state_name(state);
        Ok(self.db.with_client(move |client| async move {
            client
                .query(sql::LIST, &[&state])
                .await?
                .iter()
                .map(sql::job_from_row)
                .collect()
        })?)
    }

    fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn recent(&self, state: JobState, n: usize) -> Result<Vec<Job>, QueueError> {
        let state = sql::state_name(state);
        let n = n as i64;
        Ok(self.db.with_client(move |client| async move {
            client
                .query(sql::RECENT, &[&state, &n])
                .await?
                .iter()
                .map(sql::job_from_row)
                .collect()
        })?)
    }

    fn counts(&self) -> Result<Counts, QueueError> {
        let rows = self.db.with_client(move |client| async move {
            Ok(client
                .query(sql::COUNTS, &[])
                .await?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                .collect::<Vec<_>>())
        })?;
        let mut counts = Counts::default();
        for (state, n) in rows {
            if let Some(s) = JobState::ALL
                .into_iter()
                .find(|s| sql::state_name(*s) == state)
            {
                counts.set(s, n.max(0) as u64);
            }
        }
        Ok(counts)
    }

    fn workers(&self) -> Result<Vec<WorkerInfo>, QueueError> {
        let (workers, running) = self.db.with_client(move |client| async move {
            let workers = client.query(sql::WORKERS, &[]).await?;
            let running = client.query(sql::RUNNING_BY_WORKER, &[]).await?;
            Ok((workers, running))
        })?;
        Ok(workers
            .iter()
            .map(|w| {
                let id: String = w.get(0);
                let jobs = running
                    .iter()
                    .filter(|r| r.get::<_, Option<String>>(0).as_deref() == Some(id.as_str()))
                    .map(|r| WorkerJob {
                        id: r.get(1),
                        name: r.get(2),
                        stage: r.get(3),
                        progress: r.get(4),
                    })
                    .collect();
                WorkerInfo {
                    host: w.get(1),
                    pid: w.get::<_, i32>(2).max(0) as u32,
                    devices: w.get(3),
                    ingest: w.get(4),
                    version: w.get(5),
                    started_at: w.get::<_, Option<String>>(6).unwrap_or_default(),
                    heartbeat_at: w.get::<_, Option<String>>(7).unwrap_or_default(),
                    heartbeat_age_s: w.get::<_, Option<f64>>(8).unwrap_or(f64::NAN),
                    jobs,
                    id,
                }
            })
            .collect())
    }

    fn wakeup(&self) -> Arc<tokio::sync::Notify> {
        self.gate.wake.clone()
    }

    fn lost_leases(&self) -> Vec<String> {
        self.leases.lost()
    }

    fn live_leases(&self) -> Result<Vec<i64>, QueueError> {
        Ok(self.db.with_client(move |client| async move {
            Ok(client
                .query(sql::LIVE_LEASES, &[])
                .await?
                .iter()
                .map(|r| r.get::<_, i64>(0))
                .collect())
        })?)
    }

    fn close(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let worker = self.worker.clone();
        if let Err(e) = self.db.with_client(move |client| async move {
            client.execute(sql::UNREGISTER_WORKER, &[&worker]).await?;
            Ok(())
        }) {
            tracing::warn!("cannot leave the fleet cleanly: {e}");
        }
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Whether `e` means the database is away for now (retry later) rather than refusing something.
fn is_outage(e: &PgError) -> bool {
    e.is_connection() || matches!(e, PgError::Unavailable { .. })
}
