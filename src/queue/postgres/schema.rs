//! The queue's schema in PostgreSQL (the `robustd` namespace): versioned migrations shipped in the binary,
//! applied in order under an advisory lock (several workers starting at once migrate once), and the version
//! check every worker and client makes at start — a schema from a newer robustd is refused with a clear error
//! rather than misread, an older one is upgraded (`queue.migrate: auto`) or refused with the command to run.

use tokio_postgres::Client;

use super::PgError;

/// Every migration, in order; version N is `MIGRATIONS[N - 1]`.
pub const MIGRATIONS: &[&str] = &[include_str!("migrations/0001_jobs.sql")];

/// The schema version this robustd writes and reads.
pub const LATEST: i32 = MIGRATIONS.len() as i32;

/// The key of the advisory lock migrations take (any fixed number: "robustd" in ASCII).
const MIGRATION_LOCK: i64 = 0x0072_6f62_7573_7464;

/// The schema version in the database; 0 when robustd's schema does not exist yet.
pub async fn version(client: &Client) -> Result<i32, PgError> {
    let exists = client
        .query_one(
            "SELECT to_regclass('robustd.schema_version') IS NOT NULL",
            &[],
        )
        .await?
        .get::<_, bool>(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM robustd.schema_version",
            &[],
        )
        .await?
        .get(0))
}

/// Refuses a schema this robustd cannot use: newer than [`LATEST`] always, older unless `will_migrate`.
pub fn check(found: i32, will_migrate: bool) -> Result<(), PgError> {
    if found > LATEST {
        return Err(PgError::NewerSchema {
            found,
            known: LATEST,
        });
    }
    if found < LATEST && !will_migrate {
        return Err(PgError::OldSchema {
            found,
            known: LATEST,
        });
    }
    Ok(())
}

/// Applies the missing migrations in one transaction; returns `(from, to)` versions.
pub async fn migrate(client: &mut Client) -> Result<(i32, i32), PgError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS robustd;
         CREATE TABLE IF NOT EXISTS robustd.schema_version (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now(),
             robustd    text NOT NULL
         );",
    )
    .await?;
    let from: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM robustd.schema_version",
            &[],
        )
        .await?
        .get(0);
    check(from, true)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql)
            .await
            .map_err(|e| PgError::Migration {
                version,
                cause: e.to_string(),
            })?;
        tx.execute(
            "INSERT INTO robustd.schema_version (version, robustd) VALUES ($1, $2)",
            &[&version, &env!("CARGO_PKG_VERSION")],
        )
        .await?;
    }
    tx.commit().await?;
    Ok((from, LATEST))
}
