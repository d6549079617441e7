//! SQLite's writer with group commit: writes that arrive together share one transaction and so
//! one sync to disk.
//!
//! With `synchronous=FULL` every commit waits for the WAL to reach the disk (about 2 ms here),
//! and SQLite has one writer. Committing each write on its own would cap the store at a few
//! hundred writes a second, and a burst of short runs (a claim and an end each) would crowd the
//! webhook deliveries out. So a transaction takes the writers that were queued when it began,
//! and the last of them commits for all (or the last one queued, if fewer came; at most
//! `MAX_OPEN` after it began). Writers arriving meanwhile go in the next transaction. A write is
//! answered only once the commit that holds it has returned, so "written" still means "on disk".
//!
//! A write that fails is undone alone: one statement by SQLite itself, several through a
//! savepoint of their own ([`Scope`]). Every call to SQLite's thread costs two thread wake-ups,
//! the writer's scarcest resource under load, so what opens a write is sent in one call
//! (`BEGIN IMMEDIATE; SAVEPOINT write`), and so is what ends it (`RELEASE write; COMMIT`).
//!
//! A write's future may be dropped at any point (a client that went away); the next writer
//! finds the connection as it was left and puts it right: it rolls back the savepoint of a write
//! dropped mid-way, and settles a commit dropped mid-way by asking SQLite whether a transaction
//! is still open. A write of one statement dropped mid-way may be committed with the others, as
//! a request whose answer was lost may have taken effect.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::SqliteConnection;
use tokio::sync::{watch, Mutex, MutexGuard};
use tokio::time::Instant;

/// Most writes in one transaction.
const MAX_WRITES: usize = 512;
/// Longest a transaction stays open, whatever else: about one sync to disk.
const MAX_OPEN: Duration = Duration::from_millis(2);
/// How long a write waits for its commit before it commits itself (the writers that were
/// queued behind it went away without committing).
const COMMIT_FALLBACK: Duration = Duration::from_millis(20);

/// The one connection that writes, and the transaction its writers share.
pub(super) struct Writer {
    slot: Mutex<Slot>,
    /// Writers queued for the connection or holding it.
    queued: AtomicUsize,
    /// The last transaction that ended: its number, and the error if it did not commit.
    ended: watch::Sender<Ended>,
}

#[derive(Default)]
struct Ended {
    number: u64,
    /// The latest transactions that failed to commit, with why (a writer may look only after
    /// later ones ended).
    failed: std::collections::VecDeque<(u64, Failure)>,
}

/// Why a transaction did not commit, kept for every writer of it.
#[derive(Clone)]
struct Failure {
    message: Arc<str>,
    disk_full: bool,
}

impl Failure {
    fn of(err: &sqlx::Error) -> Self {
        Failure {
            message: Arc::from(err.to_string()),
            disk_full: err.disk_full(),
        }
    }

    /// The error each writer of the transaction gets, classified as the original was.
    fn error(&self) -> sqlx::Error {
        let kind = if self.disk_full {
            std::io::ErrorKind::StorageFull
        } else {
            std::io::ErrorKind::Other
        };
        sqlx::Error::Io(std::io::Error::new(
            kind,
            format!("the commit of this write failed: {}", self.message),
        ))
    }
}

/// Failed transactions remembered for writers that look late.
const FAILED_KEPT: usize = 64;

impl Ended {
    fn record(&mut self, number: u64, error: Option<Failure>) {
        self.number = number;
        if let Some(error) = error {
            if self.failed.len() == FAILED_KEPT {
                self.failed.pop_front();
            }
            self.failed.push_back((number, error));
        }
    }
}

struct Slot {
    conn: SqliteConnection,
    /// The open transaction's number (the next one's when none is open).
    number: u64,
    open: Option<Open>,
    /// A write was dropped inside its savepoint.
    savepoint_left: bool,
    /// A commit was dropped before it returned.
    commit_unsettled: bool,
}

struct Open {
    since: Instant,
    writes: usize,
    /// Writers queued when the transaction began (this one among them): it commits once they
    /// have all written, so a writer arriving later waits for the next, not for this one to
    /// fill up.
    expected: usize,
}

const SAVEPOINT: &str = "SAVEPOINT write";
const RELEASE: &str = "RELEASE write";
const UNDO_WRITE: &str = "ROLLBACK TO write; RELEASE write";

/// The SQL of a write of several statements sent in one call ([`Writer::begin_enclosed`]),
/// wrapped in its savepoint.
pub(super) fn enclose(sql: &str) -> String {
    format!("{SAVEPOINT}; {sql}; {RELEASE}")
}

/// How one write keeps its changes apart from the others' in the shared transaction, so that a
/// write that fails is undone alone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// One statement: SQLite undoes a failed statement by itself.
    Statement,
    /// Several statements, in a savepoint opened before them and released after.
    Savepoint,
    /// Several statements sent in one call, their SQL opening and releasing the savepoint
    /// ([`enclose`]).
    Enclosed,
}

impl Writer {
    pub(super) fn new(conn: SqliteConnection) -> Self {
        Self {
            slot: Mutex::new(Slot {
                conn,
                number: 1,
                open: None,
                savepoint_left: false,
                commit_unsettled: false,
            }),
            queued: AtomicUsize::new(0),
            ended: watch::Sender::new(Ended::default()),
        }
    }

    /// Takes the connection for one write of several statements, in a savepoint of the shared
    /// transaction (begun here when none is open). Hand the write's result to [`Write::finish`].
    pub(super) async fn begin(&self) -> Result<Write<'_>, sqlx::Error> {
        self.begin_as(Scope::Savepoint).await
    }

    /// Takes the connection for a write of one statement: SQLite undoes a statement that fails
    /// by itself, so it needs no savepoint (two calls to SQLite's thread fewer).
    pub(super) async fn begin_statement(&self) -> Result<Write<'_>, sqlx::Error> {
        self.begin_as(Scope::Statement).await
    }

    /// Takes the connection for a write of several statements sent in one call, whose SQL
    /// opens and releases its savepoint itself: made with [`enclose`].
    pub(super) async fn begin_enclosed(&self) -> Result<Write<'_>, sqlx::Error> {
        self.begin_as(Scope::Enclosed).await
    }

    async fn begin_as(&self, scope: Scope) -> Result<Write<'_>, sqlx::Error> {
        let queued = Queued::new(&self.queued);
        let mut slot = self.slot.lock().await;
        self.settle(&mut slot).await?;
        // One call to SQLite's thread for whatever opens.
        let opening = match (slot.open.is_none(), scope == Scope::Savepoint) {
            (true, true) => Some("BEGIN IMMEDIATE; SAVEPOINT write"),
            (true, false) => Some("BEGIN IMMEDIATE"),
            (false, true) => Some(SAVEPOINT),
            (false, false) => None,
        };
        if let Some(sql) = opening {
            let began = slot.open.is_none();
            sqlx::query(sql).execute(&mut slot.conn).await?;
            if began {
                slot.open = Some(Open {
                    since: Instant::now(),
                    writes: 0,
                    expected: self.queued.load(Ordering::Acquire).max(1),
                });
            }
        }
        // An enclosed write's savepoint is open from its first statement on.
        slot.savepoint_left = scope != Scope::Statement;
        Ok(Write {
            writer: self,
            slot,
            queued,
            scope,
        })
    }

    /// Runs `work` on the connection outside any transaction (a checkpoint), committing the
    /// open one first.
    pub(super) async fn outside_transaction<T>(
        &self,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let mut slot = self.slot.lock().await;
        self.settle(&mut slot).await?;
        if slot.open.is_some() {
            self.commit(&mut slot).await?;
        }
        work(&mut slot.conn).await
    }

    /// Puts right what a dropped write left behind.
    async fn settle(&self, slot: &mut MutexGuard<'_, Slot>) -> Result<(), sqlx::Error> {
        if slot.commit_unsettled {
            // The commit went to SQLite; whether it was carried out shows in whether a
            // transaction is still open: ROLLBACK fails when none is.
            let number = slot.number;
            let rolled_back = sqlx::query("ROLLBACK")
                .execute(&mut slot.conn)
                .await
                .is_ok();
            let error = rolled_back.then(|| Failure {
                message: Arc::from("the commit was interrupted; try again"),
                disk_full: false,
            });
            slot.commit_unsettled = false;
            slot.savepoint_left = false;
            slot.open = None;
            slot.number += 1;
            self.ended.send_modify(|ended| ended.record(number, error));
        }
        if slot.savepoint_left {
            // An error is expected here: the write may have been dropped after its release.
            let _ = sqlx::query(UNDO_WRITE).execute(&mut slot.conn).await;
            slot.savepoint_left = false;
        }
        Ok(())
    }

    /// Undoes a write that failed. On some errors (a full disk, an I/O error) SQLite rolls the
    /// whole transaction back, not only the statement: then every write of it is lost, and its
    /// writers are told so.
    async fn undo(&self, slot: &mut MutexGuard<'_, Slot>, scope: Scope, err: &impl WriteError) {
        if scope != Scope::Statement {
            let undone = sqlx::query(UNDO_WRITE)
                .execute(&mut slot.conn)
                .await
                .is_ok();
            slot.savepoint_left = false;
            if undone {
                return;
            }
        }
        // Whether a transaction is still open: BEGIN fails inside one.
        if slot.open.is_none() || sqlx::query("BEGIN").execute(&mut slot.conn).await.is_err() {
            return;
        }
        let _ = sqlx::query("ROLLBACK").execute(&mut slot.conn).await;
        let number = slot.number;
        slot.open = None;
        slot.number += 1;
        let failure = Failure {
            message: Arc::from(format!(
                "SQLite ended the transaction when a write in it failed ({err})"
            )),
            disk_full: err.disk_full(),
        };
        self.ended
            .send_modify(|ended| ended.record(number, Some(failure)));
    }

    /// Commits the open transaction and tells the writers waiting for it.
    async fn commit(&self, slot: &mut MutexGuard<'_, Slot>) -> Result<(), sqlx::Error> {
        self.commit_with(slot, "COMMIT").await
    }

    /// Commits the open transaction through `sql` (`COMMIT`, after whatever ends the last write
    /// in the same call).
    async fn commit_with(
        &self,
        slot: &mut MutexGuard<'_, Slot>,
        sql: &'static str,
    ) -> Result<(), sqlx::Error> {
        let number = slot.number;
        slot.commit_unsettled = true;
        let committed = sqlx::query(sql).execute(&mut slot.conn).await;
        slot.savepoint_left = false;
        slot.commit_unsettled = false;
        let error = match &committed {
            Ok(_) => None,
            Err(err) => {
                // A failed COMMIT may leave the transaction open (SQLITE_BUSY, a full disk):
                // end it, so the next writer starts afresh.
                let _ = sqlx::query("ROLLBACK").execute(&mut slot.conn).await;
                Some(Failure::of(err))
            }
        };
        slot.open = None;
        slot.number += 1;
        self.ended.send_modify(|ended| ended.record(number, error));
        committed.map(|_| ())
    }

    /// Waits until transaction `number` has ended; commits it if nobody else does in time.
    async fn wait_for(&self, number: u64) -> Result<(), sqlx::Error> {
        let mut ended = self.ended.subscribe();
        loop {
            {
                let last = ended.borrow_and_update();
                if last.number >= number {
                    // Numbers only grow, one per transaction: this one has ended, and
                    // committed unless it is among the failed.
                    return match last.failed.iter().find(|(failed, _)| *failed == number) {
                        Some((_, failure)) => Err(failure.error()),
                        None => Ok(()),
                    };
                }
            }
            if tokio::time::timeout(COMMIT_FALLBACK, ended.changed())
                .await
                .is_err()
            {
                let mut slot = self.slot.lock().await;
                self.settle(&mut slot).await?;
                if slot.open.is_some() && slot.number == number {
                    return self.commit(&mut slot).await;
                }
            }
        }
    }
}

/// One write holding the connection, inside its savepoint.
pub(super) struct Write<'w> {
    writer: &'w Writer,
    slot: MutexGuard<'w, Slot>,
    queued: Queued<'w>,
    scope: Scope,
}

impl Write<'_> {
    pub(super) fn connection(&mut self) -> &mut SqliteConnection {
        &mut self.slot.conn
    }

    /// Ends the write: keeps its changes if `result` is `Ok`, undoes them otherwise, then
    /// commits if no other writer is queued (or the transaction is full or old enough), else
    /// waits for the writer that does. `Ok` only once the changes are on disk.
    pub(super) async fn finish<T, E: From<sqlx::Error> + WriteError>(
        mut self,
        result: Result<T, E>,
    ) -> Result<T, E> {
        let writer = self.writer;
        let slot = &mut self.slot;
        // Released in the same call as the commit when this write commits.
        let mut release = self.scope == Scope::Savepoint;
        if let Err(err) = &result {
            writer.undo(slot, self.scope, err).await;
            release = false;
        } else if self.scope == Scope::Enclosed {
            // Its own SQL released the savepoint.
            slot.savepoint_left = false;
        }
        let Some(open) = slot.open.as_mut() else {
            // SQLite ended the transaction when this write failed; its writers were told.
            return result;
        };
        open.writes += 1;
        let full = open.writes >= open.expected.min(MAX_WRITES) || open.since.elapsed() >= MAX_OPEN;
        // This writer is done with the connection: any other still counted is queued for it.
        self.queued.leave();
        let others = writer.queued.load(Ordering::Acquire);
        if others == 0 || full {
            // A failed write commits too: the writes before it in the transaction wait for it.
            let sql = if release {
                "RELEASE write; COMMIT"
            } else {
                "COMMIT"
            };
            let committed = writer.commit_with(slot, sql).await;
            let value = result?;
            committed?;
            return Ok(value);
        }
        if release {
            sqlx::query(RELEASE).execute(&mut slot.conn).await?;
            slot.savepoint_left = false;
        }
        let value = result?;
        let number = slot.number;
        drop(self);
        writer.wait_for(number).await?;
        Ok(value)
    }
}

/// What a failed write tells the writer: whether the disk was full, and the message for the
/// other writes of a transaction SQLite gave up.
pub(super) trait WriteError: std::fmt::Display {
    fn disk_full(&self) -> bool;
}

impl WriteError for sqlx::Error {
    fn disk_full(&self) -> bool {
        match self {
            sqlx::Error::Database(db) => db.code().as_deref() == Some("13"),
            sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

impl WriteError for crate::store::StoreError {
    fn disk_full(&self) -> bool {
        matches!(self, crate::store::StoreError::DiskFull)
    }
}

/// Counts a writer as queued from its arrival until it is done with the connection.
struct Queued<'w> {
    count: &'w AtomicUsize,
    counted: bool,
}

impl<'w> Queued<'w> {
    fn new(count: &'w AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self {
            count,
            counted: true,
        }
    }

    fn leave(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::Connection;

    async fn writer(dir: &tempfile::TempDir) -> (Arc<Writer>, SqliteConnectOptions) {
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("w.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
        let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .execute(&mut conn)
            .await
            .unwrap();
        (Arc::new(Writer::new(conn)), options)
    }

    async fn insert(writer: &Writer, n: i64) -> Result<(), sqlx::Error> {
        insert_as(writer, Scope::Savepoint, n, None).await
    }

    /// Inserts `first` and then `second` as one write of the given scope (one statement when
    /// `second` is `None`).
    async fn insert_as(
        writer: &Writer,
        scope: Scope,
        first: i64,
        second: Option<i64>,
    ) -> Result<(), sqlx::Error> {
        let mut write = writer.begin_as(scope).await?;
        let conn = write.connection();
        let result = match (scope, second) {
            (Scope::Enclosed, Some(second)) => {
                let sql = enclose("INSERT INTO t (n) VALUES (?); INSERT INTO t (n) VALUES (?)");
                sqlx::query(&sql)
                    .bind(first)
                    .bind(second)
                    .execute(conn)
                    .await
            }
            (_, Some(second)) => {
                let done = sqlx::query("INSERT INTO t (n) VALUES ($1)")
                    .bind(first)
                    .execute(&mut *conn)
                    .await;
                match done {
                    Ok(_) => {
                        sqlx::query("INSERT INTO t (n) VALUES ($1)")
                            .bind(second)
                            .execute(conn)
                            .await
                    }
                    Err(err) => Err(err),
                }
            }
            (_, None) => {
                sqlx::query("INSERT INTO t (n) VALUES ($1)")
                    .bind(first)
                    .execute(conn)
                    .await
            }
        };
        write.finish(result.map(|_| ())).await
    }

    /// What another connection sees: only committed rows.
    async fn committed(options: &SqliteConnectOptions) -> Vec<i64> {
        let mut conn = SqliteConnection::connect_with(options).await.unwrap();
        sqlx::query_scalar("SELECT n FROM t ORDER BY n")
            .fetch_all(&mut conn)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_arriving_together_share_commits_and_each_is_on_disk_when_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, options) = writer(&dir).await;
        let tasks: Vec<_> = (0..200)
            .map(|n| {
                let writer = Arc::clone(&writer);
                let options = options.clone();
                tokio::spawn(async move {
                    insert(&writer, n).await.unwrap();
                    // Answered means committed: a connection of its own sees the row.
                    assert!(committed(&options).await.contains(&n), "row {n} committed");
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(committed(&options).await, (0..200).collect::<Vec<_>>());
        let transactions = writer.slot.lock().await.number - 1;
        assert!(
            transactions < 200,
            "200 concurrent writes took {transactions} commits"
        );
    }

    #[tokio::test]
    async fn a_write_dropped_mid_way_is_undone_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, options) = writer(&dir).await;
        {
            let mut write = writer.begin().await.unwrap();
            sqlx::query("INSERT INTO t (n) VALUES (1)")
                .execute(write.connection())
                .await
                .unwrap();
            // Dropped without `finish`, as a cancelled request would.
        }
        insert(&writer, 2).await.unwrap();
        assert_eq!(committed(&options).await, [2]);
        let checkpoint = writer
            .outside_transaction(async |conn| {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(conn)
                    .await
            })
            .await;
        assert!(checkpoint.is_ok(), "{checkpoint:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_of_any_scope_is_undone_alone() {
        for (scope, two) in [
            (Scope::Statement, false),
            (Scope::Savepoint, true),
            (Scope::Enclosed, true),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (writer, options) = writer(&dir).await;
            insert(&writer, 7).await.unwrap();
            // Write 20 breaks the key: with two statements its first one (1020) must go too.
            let tasks: Vec<_> = (0..50)
                .map(|n| {
                    let writer = Arc::clone(&writer);
                    tokio::spawn(async move {
                        let (first, second) = match (n, two) {
                            (20, true) => (1000 + n, Some(7)),
                            (20, false) => (7, None),
                            (_, true) => (100 + n, Some(1000 + n)),
                            (_, false) => (100 + n, None),
                        };
                        (n, insert_as(&writer, scope, first, second).await)
                    })
                })
                .collect();
            for task in tasks {
                let (n, result) = task.await.unwrap();
                assert_eq!(result.is_err(), n == 20, "write {n}: {result:?}");
            }
            let rows = committed(&options).await;
            let expected = 1 + 49 * if two { 2 } else { 1 };
            assert_eq!(rows.len(), expected, "{rows:?}");
            assert!(
                !rows.contains(&1020),
                "the failed write's first statement stayed"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_write_is_answered_ok_when_sqlite_gave_up_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, options) = writer(&dir).await;
        // Write 20 fails after ending the shared transaction, as SQLite does by itself on some
        // errors: the writes before it in that transaction are lost, and must not say `Ok`.
        let tasks: Vec<_> = (0..60)
            .map(|n| {
                let writer = Arc::clone(&writer);
                tokio::spawn(async move {
                    if n != 20 {
                        return (n, insert_as(&writer, Scope::Statement, n, None).await);
                    }
                    let mut write = writer.begin_statement().await.unwrap();
                    sqlx::query("ROLLBACK")
                        .execute(write.connection())
                        .await
                        .unwrap();
                    let failed: Result<(), sqlx::Error> = Err(sqlx::Error::Protocol(
                        "a write that ended the transaction".into(),
                    ));
                    (n, write.finish(failed).await)
                })
            })
            .collect();
        let mut answered = Vec::new();
        for task in tasks {
            let (n, result) = task.await.unwrap();
            if result.is_ok() {
                answered.push(n);
            }
        }
        let rows = committed(&options).await;
        for n in &answered {
            assert!(
                rows.contains(n),
                "write {n} was answered Ok but is not on disk"
            );
        }
        assert!(!answered.contains(&20));
        // The writer goes on.
        insert(&writer, 1000).await.unwrap();
        assert!(committed(&options).await.contains(&1000));
    }
}
