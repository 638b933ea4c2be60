//! The `queue` section: which job queue a daemon uses — the folder spool in `paths.state` (the embedded default,
//! one machine) or a PostgreSQL database shared by a fleet of workers, with the shared store they all mount — and
//! the database URL, a secret that never appears in logs, errors or printed configs ([`DatabaseUrl`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Environment variable holding the database URL when `queue.url` is not set (keeps the password out of files).
pub const DATABASE_URL_ENV: &str = "ROBUSTD_DATABASE_URL";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSpec {
    /// `spool` (a folder in `paths.state`, one machine) or `postgres` (a database shared by several workers).
    pub backend: QueueBackend,
    /// `postgresql://user:password@host:port/db` (or `host=… user=…`); null = `$ROBUSTD_DATABASE_URL`.
    pub url: Option<DatabaseUrl>,
    /// The shared store (postgres): job inputs and checkpoints, on a filesystem every worker mounts; results go
    /// to `paths.models`, which must be shared too.
    pub shared: Option<PathBuf>,
    /// Whether this node watches `paths.watch` and ingests drops (copies them into the shared store, then
    /// enqueues); workers that only run jobs set false. The spool always ingests.
    pub ingest: bool,
    /// `auto` (create or upgrade the schema at start) or `manual` (`robustd queue migrate` does it; a worker
    /// refuses an older schema).
    pub migrate: MigrateMode,
    /// A claim's lease (seconds): renewed every third of it; a job whose worker stops renewing is taken by
    /// another worker once it expires and resumes from its last checkpoint.
    pub lease_s: u64,
    /// How often an idle worker looks for work when no notification arrives (milliseconds); notifications
    /// (LISTEN/NOTIFY) wake it at once.
    pub poll_ms: u64,
    /// Starts of a job whose worker vanished before it fails for good (its error says so).
    pub max_attempts: u32,
    /// This worker's name in `robustd status`; null = `<host>-<pid>`.
    pub worker: Option<String>,
    /// Connecting to the database gives up after this long (seconds); a worker retries with backoff.
    pub connect_timeout_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    Spool,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrateMode {
    Auto,
    Manual,
}

impl Default for QueueSpec {
    fn default() -> Self {
        Self {
            backend: QueueBackend::Spool,
            url: None,
            shared: None,
            ingest: true,
            migrate: MigrateMode::Auto,
            lease_s: 30,
            poll_ms: 2000,
            max_attempts: 3,
            worker: None,
            connect_timeout_s: 5,
        }
    }
}

impl QueueSpec {
    /// The embedded default. Such a section is left out of a serialized config, so the configs (and content keys)
    /// of every result made before the section existed stay the same.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The database URL: `queue.url`, else `$ROBUSTD_DATABASE_URL`.
    pub fn database_url(&self) -> Option<DatabaseUrl> {
        self.url.clone().or_else(|| {
            std::env::var(DATABASE_URL_ENV)
                .ok()
                .filter(|u| !u.trim().is_empty())
                .map(DatabaseUrl)
        })
    }

    /// Checks ranges serde cannot express; `Err((key, message))`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.backend == QueueBackend::Postgres && self.shared.is_none() {
            return Err((
                "queue.shared",
                "queue.backend: postgres needs the shared store (a directory every worker mounts)"
                    .into(),
            ));
        }
        if self.lease_s < 3 {
            return Err((
                "queue.lease_s",
                format!("{} is below 3 seconds", self.lease_s),
            ));
        }
        if !(50..=600_000).contains(&self.poll_ms) {
            return Err((
                "queue.poll_ms",
                format!("{} is not in [50, 600000]", self.poll_ms),
            ));
        }
        if self.max_attempts == 0 {
            return Err(("queue.max_attempts", "must be at least 1".into()));
        }
        if self.connect_timeout_s == 0 {
            return Err(("queue.connect_timeout_s", "must be at least 1".into()));
        }
        if let Some(w) = &self.worker {
            if w.is_empty() || w.len() > 100 || w.chars().any(|c| c.is_control()) {
                return Err(("queue.worker", "1 to 100 printable characters".into()));
            }
        }
        Ok(())
    }
}

/// A PostgreSQL connection string. It carries a password, so `Debug` and `Display` show it redacted
/// ([`DatabaseUrl::redacted`]); only [`DatabaseUrl::expose`] gives the real text, to the driver.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(pub String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`: in URL form the part between `user:` and `@`, in key-value
    /// form the value of `password=`.
    pub fn redacted(&self) -> String {
        let s = self.0.trim();
        if let Some(rest) = s
            .strip_prefix("postgresql://")
            .or_else(|| s.strip_prefix("postgres://"))
        {
            let scheme = &s[..s.len() - rest.len()];
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            let Some(at) = authority.rfind('@') else {
                return s.to_owned();
            };
            let (userinfo, host) = authority.split_at(at);
            let user = userinfo.split(':').next().unwrap_or("");
            let userinfo = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            let tail = redact_query_password(tail);
            return format!("{scheme}{userinfo}{host}{tail}");
        }
        s.split_whitespace()
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `?password=…` in a URL's query.
fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let cases = [
            (
                "postgresql://robustd:s3cret@db.lan:5432/jobs",
                "postgresql://robustd:***@db.lan:5432/jobs",
            ),
            (
                "postgres://u:p%40ss@h/db?sslmode=require",
                "postgres://u:***@h/db?sslmode=require",
            ),
            (
                "postgresql://u@h/db?password=s3cret&x=1",
                "postgresql://u@h/db?password=***&x=1",
            ),
            (
                "postgresql:///db?host=/run/pg",
                "postgresql:///db?host=/run/pg",
            ),
            (
                "host=/tmp user=u password=s3cret dbname=d",
                "host=/tmp user=u password=*** dbname=d",
            ),
        ];
        for (url, shown) in cases {
            let u = DatabaseUrl(url.into());
            assert_eq!(u.redacted(), shown);
            assert!(!format!("{u} {u:?}").contains("s3cret"));
        }
    }
}
