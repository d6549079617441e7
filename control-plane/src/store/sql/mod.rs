//! The SQL store: one implementation for SQLite and PostgreSQL. Both dialects accept `$n`
//! placeholders, `ON CONFLICT` and `RETURNING`, and the schema keeps to types both share, so each
//! query is written once and run on whichever pool the URL chose. Each dialect has its own
//! migrations.
//!
//! This file holds what every aggregate shares: the pools and how they are opened, the SQLite
//! WAL checkpointer, the macros that pick a pool or open a write transaction, and driver error
//! classification. Each aggregate's trait is implemented for [`SqlStore`] in a file of its own,
//! declared below the macros so that they are in scope there (a `macro_rules!` macro is seen by
//! the modules declared after it). Row-binding macros that one aggregate owns and others reuse
//! (`bind_run!` of runs, `bind_events_from!` and `append_events_in!` of events) are imported by
//! path instead, from the file that defines them.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{Store, StoreError, StoreResult};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

enum Pools {
    /// SQLite allows one writer at a time: writes queue for one connection, and those queued
    /// together share a commit ([`group_commit::Writer`]), instead of spinning in SQLite's busy
    /// handler; reads use their own connections (WAL mode).
    Sqlite {
        read: SqlitePool,
        write: Arc<group_commit::Writer>,
    },
    Postgres(PgPool),
}

pub struct SqlStore {
    pools: Pools,
}

/// Runs `$body` with `$pool` bound to the pool for reads.
macro_rules! on_read {
    ($self:ident, $pool:ident => $body:expr) => {
        match &$self.pools {
            Pools::Sqlite { read: $pool, .. } => $body,
            Pools::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body`, one statement, with `$pool` bound to where single-statement writes go: the
/// PostgreSQL pool, or SQLite's writer connection inside its shared transaction
/// ([`group_commit`]; with no savepoint, since SQLite undoes a failed statement by itself).
/// `$body` gives a `Result<_, sqlx::Error>`, `Ok` only once the write is committed.
macro_rules! on_write {
    ($self:ident, $pool:ident => $body:expr) => {
        match &$self.pools {
            Pools::Sqlite { write, .. } => {
                async {
                    let mut write = write.begin_statement().await?;
                    let result = {
                        let $pool = write.connection();
                        $body
                    };
                    write.finish(result).await
                }
                .await
            }
            Pools::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` as one write of SQLite's writer `$write`, bound to `$tx` (a
/// `&mut SqliteConnection`), in a savepoint of the transaction that writes arriving together
/// share; `?` in `$body` rolls the write back. Returns once the write is committed.
macro_rules! in_sqlite_tx {
    ($write:expr, $tx:ident => $body:block) => {{
        let mut write = $write.begin().await.map_err(classify)?;
        let result: StoreResult<_> = async {
            #[allow(unused_mut)]
            let mut $tx = write.connection();
            Ok($body)
        }
        .await;
        write.finish(result).await?
    }};
}

/// Runs `$body` inside a write transaction bound to `$tx`, committing when it succeeds.
macro_rules! in_write_tx {
    ($self:ident, $tx:ident => $body:block) => {
        match &$self.pools {
            Pools::Sqlite { write, .. } => in_sqlite_tx!(write, $tx => $body),
            Pools::Postgres(pool) => {
                let mut $tx = pool.begin().await.map_err(classify)?;
                let out = $body;
                $tx.commit().await.map_err(classify)?;
                out
            }
        }
    };
}

// One file per aggregate's trait implementation, and `deliveries`, the webhook batch write that
// `webhooks` hands over to. Declared after the macros above, which they use without importing
// them; what the macros expand to names `Pools` and `classify`, which each file imports.
mod approvals;
mod dashboard;
mod deliveries;
mod events;
mod group_commit;
mod jobs;
mod leases;
mod memory;
mod oauth;
mod rules;
mod runs;
mod settings;
mod tools;
mod webhooks;
mod workers;

/// How bound values are written in a statement.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Placeholders {
    /// `$1, $2, …` (PostgreSQL).
    Numbered,
    /// `?, ?, …`, bound in order. SQLite looks numbered parameters up by name one by one (a
    /// linear search each), which makes a statement with thousands of them quadratic.
    Anonymous,
}

/// The `index`th bound value (from 1).
pub(super) fn parameter(style: Placeholders, index: usize) -> String {
    match style {
        Placeholders::Anonymous => "?".to_owned(),
        Placeholders::Numbered => format!("${index}"),
    }
}

/// `($1, $2, …), ($n, …)` (or `(?, ?, …), …`) for `rows` rows of `columns` values, numbered
/// from `$first`.
pub(super) fn placeholders(
    style: Placeholders,
    rows: usize,
    columns: usize,
    first: usize,
) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for column in 0..columns {
            if column > 0 {
                out.push_str(", ");
            }
            out.push_str(&parameter(style, first + row * columns + column));
        }
        out.push(')');
    }
    out
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        classify(err)
    }
}

/// Classifies a driver error.
fn classify(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        // SQLITE_FULL, PostgreSQL's `disk_full`, and the group commit's report of a commit that
        // failed for it.
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("13" | "53100")) => {
            StoreError::DiskFull
        }
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => StoreError::DiskFull,
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => StoreError::Retryable(err.to_string()),
        // A PostgreSQL server going away or coming back: a connection exception (class 08),
        // the server shutting down or starting up (57P01, 57P02, 57P03), too many connections
        // (53300). Another try, on another connection, may well succeed.
        sqlx::Error::Database(db)
            if db.code().is_some_and(|code| {
                code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
            }) =>
        {
            StoreError::Retryable(db.message().to_owned())
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(err.to_string())
        }
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        // SQLITE_BUSY / SQLITE_LOCKED, and PostgreSQL serialization failures and deadlocks.
        sqlx::Error::Database(db)
            if matches!(
                db.code().as_deref(),
                Some("5" | "6" | "517" | "40001" | "40P01")
            ) =>
        {
            StoreError::Retryable(db.message().to_owned())
        }
        _ => StoreError::Other(err.to_string()),
    }
}

fn rows_into<R, T>(rows: Vec<R>) -> StoreResult<Vec<T>>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}

impl SqlStore {
    /// Connects and migrates. `sqlite:` URLs create the file (and its directory) if needed.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with(url, super::DEFAULT_PG_CONNECTIONS).await
    }

    /// [`SqlStore::connect`] with at most `pg_connections` PostgreSQL connections.
    pub async fn connect_with(url: &str, pg_connections: u32) -> anyhow::Result<Self> {
        let pools = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|err| anyhow::anyhow!("invalid SQLite URL `{url}`: {err}"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit returns once the WAL is on disk, so an acknowledged delivery
                // or fire survives a power loss too, not only a crash of the process (NORMAL's
                // guarantee). Writes that arrive together share one commit, so one sync.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // Statement journals and sorts stay in memory, not in temporary files.
                .pragma("temp_store", "memory");
            if let Some(parent) = options.get_filename().parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", parent.display()))?;
            }
            // No commit checkpoints by itself: one that happened to would wait for the copy into
            // the database file (tens of milliseconds at the tail). `checkpoint_wal` does it
            // beside the writer instead. The writer is one connection held for good (see
            // `group_commit`).
            // Migrated through a pool of one (the migrator's future is not `Send` over a bare
            // connection), whose connection then becomes the writer's.
            let migrate = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
                .await?;
            SQLITE_MIGRATIONS.run(&migrate).await?;
            let conn = migrate.acquire().await?.detach();
            migrate.close().await;
            let write = Arc::new(group_commit::Writer::new(conn));
            let read = SqlitePoolOptions::new()
                .max_connections(4)
                .test_before_acquire(false)
                .connect_with(options.clone().read_only(false))
                .await?;
            tokio::spawn(checkpoint_wal(read.clone(), Arc::clone(&write)));
            Pools::Sqlite { read, write }
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            // A process that stops between two statements of a transaction (paused, swapped
            // out, cut off) keeps that transaction's row locks until its connection ends; the
            // server ends such a session after `IDLE_IN_TRANSACTION`, so a paused replica cannot
            // hold up the others, a new scheduler leader above all, for longer than that.
            let options = url
                .parse::<PgConnectOptions>()
                .map_err(|err| anyhow::anyhow!("invalid PostgreSQL URL: {err}"))?
                .options([(
                    "idle_in_transaction_session_timeout",
                    format!("{}ms", IDLE_IN_TRANSACTION.as_millis()),
                )]);
            let pool = PgPoolOptions::new()
                .max_connections(pg_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(|err| anyhow::anyhow!("cannot connect to PostgreSQL: {err}"))?;
            POSTGRES_MIGRATIONS.run(&pool).await?;
            Pools::Postgres(pool)
        } else {
            anyhow::bail!(
                "unsupported database URL `{}`: use `sqlite://PATH` or `postgres://USER@HOST/DB` (AUTOPILOT_DATABASE_URL)",
                url.split_once("://").map_or(url, |(scheme, _)| scheme)
            );
        };
        Ok(Self { pools })
    }
}

/// Longest a PostgreSQL session may sit inside a transaction waiting for its client; every
/// transaction here is a few statements sent back to back. Shorter than the scheduler lease's
/// default TTL (10 s), so the locks of a paused leader are gone when its successor takes over.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL content (frames since it last started over) from which the writer's connection finishes
/// a checkpoint so the WAL starts over.
const WAL_RESTART_BYTES: i64 = 64 * 1024 * 1024;

/// Keeps the WAL bounded without making the writer wait for copies. A read connection copies
/// what is in the WAL while the writer goes on (`PASSIVE` never waits for it). When the writer
/// pauses long enough for that copy to catch up, its next transaction starts the WAL over by
/// itself. Under a load that never pauses the WAL only grows, so once its content passes
/// `WAL_RESTART_BYTES` the writer's own connection copies the last frames, between two of its
/// transactions, and the WAL starts over. The measure is the WAL's content as the checkpoint
/// reports it, not the file, which keeps its largest size: a writer checkpoint costs two
/// `fsync`s on the writer's path. Runs until the pools close; a failed checkpoint is retried at
/// the next tick.
async fn checkpoint_wal(read: SqlitePool, write: Arc<group_commit::Writer>) {
    // `wal_checkpoint` answers (busy, frames in the WAL, frames copied).
    async fn checkpoint(conn: &mut sqlx::SqliteConnection) -> Result<(i64, i64, i64), sqlx::Error> {
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(conn)
            .await
    }
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&read)
        .await
        .unwrap_or(4096);
    while !read.is_closed() {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        let frames = match read.acquire().await {
            Ok(mut conn) => checkpoint(&mut conn).await.map(|(_, frames, _)| frames),
            Err(err) => Err(err),
        };
        let frames = frames.unwrap_or_else(|err| {
            if !read.is_closed() {
                tracing::debug!(error = %err, "WAL checkpoint failed; retrying");
            }
            0
        });
        if frames * page_size > WAL_RESTART_BYTES {
            if let Err(err) = write
                .outside_transaction(async |conn| checkpoint(conn).await)
                .await
            {
                tracing::debug!(error = %err, "WAL checkpoint by the writer failed; retrying");
            }
        }
    }
}

impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        match self.pools {
            Pools::Sqlite { .. } => "sqlite",
            Pools::Postgres(_) => "postgres",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_going_away_is_worth_another_try() {
        for err in [
            sqlx::Error::Protocol("unexpected end of file".into()),
            sqlx::Error::WorkerCrashed,
            sqlx::Error::PoolTimedOut,
        ] {
            assert!(
                matches!(classify(err), StoreError::Retryable(_)),
                "should be retryable"
            );
        }
        assert!(matches!(
            classify(sqlx::Error::RowNotFound),
            StoreError::NotFound
        ));
    }
    use crate::store::LeaseStore;

    /// The durability promise of a `202`: every SQLite connection commits with
    /// `synchronous=FULL` (2) in WAL mode.
    #[tokio::test]
    async fn sqlite_commits_are_synced_to_disk_before_they_return() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("autopilot.db").display());
        let store = SqlStore::connect(&url).await.unwrap();
        let Pools::Sqlite { read, write } = &store.pools else {
            panic!("a sqlite: URL opens SQLite");
        };
        async fn pragmas(conn: &mut sqlx::SqliteConnection) -> Result<(i64, String), sqlx::Error> {
            let synchronous = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await?;
            let journal = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await?;
            Ok((synchronous, journal))
        }
        let writer = write
            .outside_transaction(async |conn| pragmas(conn).await)
            .await
            .unwrap();
        let reader = pragmas(&mut read.acquire().await.unwrap()).await.unwrap();
        for (synchronous, journal) in [writer, reader] {
            assert_eq!(synchronous, 2, "synchronous=FULL");
            assert_eq!(journal, "wal");
        }
    }

    /// A transaction whose process stopped mid-way (SIGSTOP of a scheduler leader) must not
    /// hold its locks past `IDLE_IN_TRANSACTION`: the server ends that session, and a writer
    /// waiting on the same row goes on.
    #[tokio::test]
    async fn postgres_ends_a_transaction_left_idle_so_its_locks_free_up() {
        use sqlx::Connection;
        let admin_url = match std::env::var("TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
                panic!("CI=true and TEST_DATABASE_URL is not set: run `bash tests/run.sh`")
            }
            _ => {
                eprintln!("skipped: no TEST_DATABASE_URL (set it to a PostgreSQL server)");
                return;
            }
        };
        let name = format!("autopilot_unit_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        let store = SqlStore::connect(&format!("{base}/{name}")).await.unwrap();
        let Pools::Postgres(pool) = &store.pools else {
            panic!("a postgres: URL opens PostgreSQL");
        };

        // A transaction takes the row and then its client goes silent.
        let mut stalled = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO leases (name, holder, token, expires_at_ms) VALUES ('l', 'a', 1, 0)",
        )
        .execute(&mut *stalled)
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let token = store
            .acquire_lease("l", "b", Duration::from_secs(10), chrono::Utc::now())
            .await
            .unwrap();
        let waited = started.elapsed();
        assert_eq!(
            token,
            Some(1),
            "the stalled insert never committed; `b` takes the lease"
        );
        assert!(
            waited >= IDLE_IN_TRANSACTION - Duration::from_millis(500)
                && waited < IDLE_IN_TRANSACTION + Duration::from_secs(5),
            "the writer waited {waited:?} for the stalled transaction"
        );
        let ended = sqlx::query("SELECT 1").execute(&mut *stalled).await;
        assert!(ended.is_err(), "the server ended the stalled session");
        drop(stalled);
        pool.close().await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}
