//! Reaching the database: the parsed connection settings (the URL's password never printed), a small tokio
//! runtime of the queue's own (the [`crate::queue::Queue`] trait is blocking; its callers are the daemon's loop,
//! job threads and the CLI), a deadpool connection pool (a connection broken by a database restart is dropped
//! and a new one made), and a backoff that makes calls fail at once while the database is unreachable, so no
//! caller waits on a dead server and the outage is logged once, not per call.

use std::future::Future;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::PgError;
use crate::config::{DatabaseUrl, QueueSpec};

/// First wait after a failed connection; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Any one database call gives up after this long (a stuck server must not hang a worker).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Parses the URL into driver settings; the error names the redacted URL and the cause.
pub fn parse_url(
    url: &DatabaseUrl,
    connect_timeout: Duration,
    application: &str,
) -> Result<tokio_postgres::Config, PgError> {
    let mut config =
        tokio_postgres::Config::from_str(url.expose()).map_err(|e| PgError::BadUrl {
            url: url.redacted(),
            cause: e.to_string(),
        })?;
    if config.get_hosts().is_empty() {
        return Err(PgError::BadUrl {
            url: url.redacted(),
            cause: "no host (give host:port, or a socket directory as host=/path)".into(),
        });
    }
    config
        .connect_timeout(connect_timeout)
        .application_name(application)
        .keepalives_idle(Duration::from_secs(30));
    Ok(config)
}

/// The queue's connection to PostgreSQL.
pub struct Db {
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    pub settings: tokio_postgres::Config,
    /// The redacted URL, for messages.
    pub shown: String,
    backoff: Mutex<Backoff>,
}

#[derive(Debug)]
struct Backoff {
    /// While set, calls fail at once until this instant.
    until: Option<Instant>,
    delay: Duration,
    /// The outage being logged (so it is logged once), with its start.
    down_since: Option<Instant>,
}

impl Db {
    pub fn new(spec: &QueueSpec, worker: &str) -> Result<Self, PgError> {
        let url = spec.database_url().ok_or(PgError::NoUrl)?;
        let settings = parse_url(
            &url,
            Duration::from_secs(spec.connect_timeout_s),
            &format!("robustd {worker}"),
        )?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("robustd-pg")
            .enable_all()
            .build()
            .map_err(PgError::Runtime)?;
        let manager = Manager::from_config(
            settings.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeout = Some(Duration::from_secs(spec.connect_timeout_s));
        let pool = {
            let _enter = runtime.enter();
            Pool::builder(manager)
                .max_size(8)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(timeout)
                .create_timeout(timeout)
                .recycle_timeout(timeout)
                .build()
                .map_err(|e| PgError::Pool(e.to_string()))?
        };
        Ok(Self {
            runtime: Some(runtime),
            pool,
            settings,
            shown: url.redacted(),
            backoff: Mutex::new(Backoff {
                until: None,
                delay: FIRST_BACKOFF,
                down_since: None,
            }),
        })
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        match &self.runtime {
            Some(rt) => rt.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }

    /// Runs `fut` on the queue's runtime and waits for it from this (blocking) thread, giving up after
    /// [`CALL_TIMEOUT`]. Safe to call from inside another tokio runtime (the daemon's loop): it only blocks.
    pub fn call<T, F>(&self, fut: F) -> Result<T, PgError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, PgError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle().spawn(async move {
            let out = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
                Ok(out) => out,
                Err(_) => Err(PgError::Timeout(CALL_TIMEOUT)),
            };
            let _ = tx.send(out);
        });
        rx.recv().unwrap_or(Err(PgError::Stopped))
    }

    /// Runs `op` with a pooled connection on the queue's runtime, waiting for it here; fails at once with
    /// [`PgError::Unavailable`] while backing off after a lost connection.
    pub fn with_client<T, F, Fut>(&self, op: F) -> Result<T, PgError>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, PgError>> + Send,
    {
        let (pool, gate) = (self.pool.clone(), self.gate());
        let result = self.call(async move {
            let client = Self::client(&pool, gate).await?;
            op(client).await
        });
        self.note(&result);
        result
    }

    /// The same from async code on the queue's runtime (the lease renewer).
    pub async fn with_client_async<T, F, Fut>(&self, op: F) -> Result<T, PgError>
    where
        F: FnOnce(Object) -> Fut,
        Fut: Future<Output = Result<T, PgError>>,
    {
        let result = match Self::client(&self.pool, self.gate()).await {
            Ok(client) => op(client).await,
            Err(e) => Err(e),
        };
        self.note(&result);
        result
    }

    async fn client(pool: &Pool, gate: GateCheck) -> Result<Object, PgError> {
        if let Some(wait) = gate.0 {
            return Err(PgError::Unavailable { retry_in: wait });
        }
        pool.get().await.map_err(PgError::from_pool)
    }

    fn gate(&self) -> GateCheck {
        let b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        GateCheck(
            b.until
                .and_then(|t| t.checked_duration_since(Instant::now()))
                .filter(|d| !d.is_zero()),
        )
    }

    /// Notes how a call went: a lost connection starts (or lengthens) the backoff and logs the outage once; a
    /// success after an outage logs the recovery.
    pub fn note<T>(&self, result: &Result<T, PgError>) {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Err(e) if e.is_connection() => {
                if b.down_since.is_none() {
                    tracing::warn!(
                        "the job queue's database ({}) is unreachable: {e}; retrying with backoff",
                        self.shown
                    );
                    b.down_since = Some(Instant::now());
                    b.delay = FIRST_BACKOFF;
                } else if b.until.is_some_and(|t| t <= Instant::now()) {
                    b.delay = (b.delay * 2).min(MAX_BACKOFF);
                }
                if b.until.is_none_or(|t| t <= Instant::now()) {
                    b.until = Some(Instant::now() + b.delay);
                }
            }
            Err(PgError::Unavailable { .. }) => {}
            _ => {
                if let Some(since) = b.down_since.take() {
                    tracing::info!(
                        "the job queue's database is reachable again (after {:.1} s)",
                        since.elapsed().as_secs_f64()
                    );
                }
                b.until = None;
                b.delay = FIRST_BACKOFF;
            }
        }
    }
}

/// `Some(wait)` while calls must back off.
#[derive(Debug, Clone, Copy)]
pub struct GateCheck(Option<Duration>);

impl Drop for Db {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's async context panics; this one is only told to stop.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
