//! Where a run's workspace comes from and where it goes afterwards.
//!
//! A job keeps files in its workspace from one run to the next. On one machine that is a
//! directory ([`LocalWorkspaces`]). In a fleet the next run may land on any worker, so
//! [`SharedWorkspaces`] restores the job's last saved workspace into a fresh directory of the
//! attempt before it runs, and saves it back (a compressed archive, size-capped) when it ends.
//! Every attempt has a directory of its own and a save replaces the saved workspace as a whole,
//! so two overlapping runs of one job never write into each other's files or leave a mix of
//! both: the one that ends last is what the next run finds.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use autopilot_proto::{BlobStore, BusError, RunId};
use sha2::{Digest, Sha256};

/// Workspaces of quick runs start empty and are never kept.
pub const EPHEMERAL_PREFIX: &str = "quick-";
/// One fetch or save of a saved workspace gives up after this long…
const BLOB_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// …and is tried again (NATS reconnecting, say) until this much time has passed.
const BLOB_RETRY_FOR: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The saved workspace could not be fetched or stored; trying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// The workspace is larger than the cap; it was not saved.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Io(String),
}

/// One attempt's workspace directory.
#[derive(Debug)]
pub struct CheckedOut {
    pub dir: PathBuf,
    /// Size of the saved workspace restored into it (`None`: nothing was saved yet, or local).
    pub restored_bytes: Option<u64>,
    /// Digest of that archive, so an attempt that changed nothing saves nothing.
    restored_digest: Option<[u8; 32]>,
}

impl CheckedOut {
    /// A directory with nothing restored into it.
    fn fresh(dir: PathBuf) -> Self {
        CheckedOut {
            dir,
            restored_bytes: None,
            restored_digest: None,
        }
    }
}

#[async_trait]
pub trait Workspaces: Send + Sync {
    /// `local` or `shared`, for logs.
    fn name(&self) -> &'static str;
    /// The directory attempt `run` of workspace `name` works in, holding what the last run left.
    async fn check_out(&self, name: &str, run: (RunId, u32)) -> Result<CheckedOut, WorkspaceError>;
    /// Keeps what the attempt left in its directory for the next run; returns the saved size
    /// in bytes (`None` when nothing needs saving). The directory is gone afterwards.
    async fn check_in(
        &self,
        name: &str,
        checked_out: &CheckedOut,
    ) -> Result<Option<u64>, WorkspaceError>;
}

/// Workspaces as directories under one root, kept in place between runs.
pub struct LocalWorkspaces {
    pub root: PathBuf,
}

#[async_trait]
impl Workspaces for LocalWorkspaces {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn check_out(
        &self,
        name: &str,
        _run: (RunId, u32),
    ) -> Result<CheckedOut, WorkspaceError> {
        Ok(CheckedOut::fresh(self.root.join(name)))
    }

    async fn check_in(
        &self,
        _name: &str,
        _checked_out: &CheckedOut,
    ) -> Result<Option<u64>, WorkspaceError> {
        Ok(None)
    }
}

/// Workspaces saved in a blob store shared by the fleet, unpacked per attempt under `root`.
pub struct SharedWorkspaces {
    root: PathBuf,
    blobs: Arc<dyn BlobStore>,
    max_bytes: u64,
}

impl SharedWorkspaces {
    pub fn new(root: PathBuf, blobs: Arc<dyn BlobStore>, max_bytes: u64) -> Self {
        SharedWorkspaces {
            root,
            blobs,
            max_bytes,
        }
    }

    fn attempt_dir(&self, name: &str, (run_id, attempt): (RunId, u32)) -> PathBuf {
        // Names never start with a dot (the worker refuses them), so this cannot clash.
        self.root
            .join(".attempts")
            .join(format!("{name}.{run_id}.{attempt}"))
    }

    /// The blob a workspace is saved as.
    pub fn blob_name(name: &str) -> String {
        format!("{name}.tar.gz")
    }
}

/// The bus's blob bucket that holds saved workspaces (under the NATS prefix).
pub const WORKSPACE_BUCKET: &str = "workspaces";
/// Chunks in the workspace store that no saved workspace is made of are purged once this old:
/// left by a save whose worker died half-way. Far longer than any save takes (each attempt is
/// given up after `BLOB_ATTEMPT_TIMEOUT`), so a save under way is never taken for one.
pub const ORPHANED_CHUNKS_AGE: Duration = Duration::from_secs(60 * 60);

fn io(what: &str) -> impl Fn(std::io::Error) -> WorkspaceError + '_ {
    move |err| WorkspaceError::Io(format!("{what}: {err}"))
}

#[async_trait]
impl Workspaces for SharedWorkspaces {
    fn name(&self) -> &'static str {
        "shared"
    }

    async fn check_out(&self, name: &str, run: (RunId, u32)) -> Result<CheckedOut, WorkspaceError> {
        let dir = self.attempt_dir(name, run);
        // One trip to a blocking thread for the directory, not one per file operation.
        let fresh = dir.clone();
        tokio::task::spawn_blocking(move || {
            if fresh.exists() {
                // Left by an earlier life of this worker.
                std::fs::remove_dir_all(&fresh).map_err(io("clearing the attempt's workspace"))?;
            }
            std::fs::create_dir_all(&fresh).map_err(io("creating the attempt's workspace"))
        })
        .await
        .map_err(|err| WorkspaceError::Io(format!("creating the attempt's workspace: {err}")))??;
        if name.starts_with(EPHEMERAL_PREFIX) {
            return Ok(CheckedOut::fresh(dir));
        }
        // The blob store creates the file only when there is a saved workspace.
        let (run_id, attempt) = run;
        let archive = tempfile::TempPath::try_from_path(
            self.root.join(format!(".{name}.{run_id}.{attempt}.tar.gz")),
        )
        .map_err(io("a path for the saved workspace"))?;
        let blob = Self::blob_name(name);
        let found = with_retry("the saved workspace could not be fetched", || {
            self.blobs.get(&blob, &archive)
        })
        .await?;
        if !found {
            return Ok(CheckedOut::fresh(dir));
        }
        let size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
        let restored_digest = Some(digest(&archive)?);
        let target = dir.clone();
        let archive_path = archive.to_path_buf();
        tokio::task::spawn_blocking(move || unpack(&archive_path, &target))
            .await
            .map_err(|err| WorkspaceError::Io(format!("unpacking the saved workspace: {err}")))??;
        drop(archive);
        Ok(CheckedOut {
            dir,
            restored_bytes: Some(size),
            restored_digest,
        })
    }

    async fn check_in(
        &self,
        name: &str,
        checked_out: &CheckedOut,
    ) -> Result<Option<u64>, WorkspaceError> {
        let dir = &checked_out.dir;
        // Most attempts of a job without files leave their directory empty: one `rmdir`, which
        // fails for a directory that is not.
        if checked_out.restored_digest.is_none() && std::fs::remove_dir(dir).is_ok() {
            return Ok(None);
        }
        let result = self.save(name, checked_out).await;
        if let Err(err) = tokio::fs::remove_dir_all(dir).await {
            tracing::warn!(dir = %dir.display(), error = %err, "could not remove an attempt's workspace");
        }
        result
    }
}

impl SharedWorkspaces {
    async fn save(
        &self,
        name: &str,
        checked_out: &CheckedOut,
    ) -> Result<Option<u64>, WorkspaceError> {
        if name.starts_with(EPHEMERAL_PREFIX) {
            return Ok(None);
        }
        let dir = &checked_out.dir;
        let empty = std::fs::read_dir(dir)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false);
        if empty && checked_out.restored_digest.is_none() {
            // Nothing was saved and nothing was made.
            return Ok(None);
        }
        let archive = tempfile::NamedTempFile::new_in(&self.root)
            .map_err(io("a temporary file for the workspace archive"))?
            .into_temp_path();
        let (source, target, max) = (dir.to_path_buf(), archive.to_path_buf(), self.max_bytes);
        let size = tokio::task::spawn_blocking(move || pack(&source, &target, max))
            .await
            .map_err(|err| WorkspaceError::Io(format!("packing the workspace: {err}")))??;
        if let Some(before) = checked_out.restored_digest {
            if digest(&archive)? == before {
                // The same files as restored (the archive has no timestamps of its own).
                return Ok(None);
            }
        }
        let blob = Self::blob_name(name);
        with_retry("the workspace could not be saved", || {
            self.blobs.put(&blob, &archive)
        })
        .await?;
        Ok(Some(size))
    }
}

fn digest(file: &Path) -> Result<[u8; 32], WorkspaceError> {
    let mut hasher = Sha256::new();
    let mut reader = std::fs::File::open(file).map_err(io("reading the workspace archive"))?;
    std::io::copy(&mut reader, &mut hasher).map_err(io("reading the workspace archive"))?;
    Ok(hasher.finalize().into())
}

/// Runs a blob operation, each try bounded in time, trying again while the store is away.
async fn with_retry<T, F, Fut>(what: &str, mut operation: F) -> Result<T, WorkspaceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BusError>>,
{
    let give_up = tokio::time::Instant::now() + BLOB_RETRY_FOR;
    let mut backoff = Duration::from_millis(200);
    loop {
        let error = match tokio::time::timeout(BLOB_ATTEMPT_TIMEOUT, operation()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {BLOB_ATTEMPT_TIMEOUT:?}"),
        };
        if tokio::time::Instant::now() + backoff > give_up {
            return Err(WorkspaceError::Unavailable(format!("{what}: {error}")));
        }
        tracing::warn!(%error, "{what}; trying again");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Writes `dir` as a gzipped tar to `archive`, symlinks as links (never their targets); fails
/// once the archive passes `max_bytes`.
fn pack(dir: &Path, archive: &Path, max_bytes: u64) -> Result<u64, WorkspaceError> {
    let file = std::fs::File::create(archive).map_err(io("creating the workspace archive"))?;
    let capped = Capped {
        inner: file,
        written: 0,
        max: max_bytes,
    };
    // The root's own time is never restored (unpacking skips the root's entry), so it is set
    // to one value: the same files make the same archive, whenever they were checked out.
    if let Ok(root) = std::fs::File::open(dir) {
        let _ = root.set_modified(std::time::UNIX_EPOCH);
    }
    let encoder = flate2::write::GzEncoder::new(capped, flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    let too_large = || {
        WorkspaceError::TooLarge(format!(
            "the workspace is over the limit of {} MiB compressed (AUTOPILOT_WORKSPACE_MAX_MB), so it was not \
             saved: the next run starts from the workspace the previous run saved. Remove files the job does \
             not need (or raise the limit)",
            max_bytes / (1024 * 1024)
        ))
    };
    let result = builder
        .append_dir_all(".", dir)
        .and_then(|()| builder.into_inner())
        .and_then(|encoder| encoder.finish());
    match result {
        Ok(capped) => Ok(capped.written),
        Err(err) if err.kind() == std::io::ErrorKind::FileTooLarge => Err(too_large()),
        Err(err) => Err(WorkspaceError::Io(format!("packing the workspace: {err}"))),
    }
}

fn unpack(archive: &Path, dir: &Path) -> Result<(), WorkspaceError> {
    let file = std::fs::File::open(archive).map_err(io("opening the saved workspace"))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    // `unpack` refuses entries that would land outside `dir` (`..`, absolute paths, through a
    // symlink), which a workspace written by a run could try.
    archive
        .unpack(dir)
        .map_err(|err| WorkspaceError::Io(format!("unpacking the saved workspace: {err}")))
}

/// A writer that refuses to grow past `max` bytes.
struct Capped<W> {
    inner: W,
    written: u64,
    max: u64,
}

impl<W: std::io::Write> std::io::Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.max {
            return Err(std::io::Error::from(std::io::ErrorKind::FileTooLarge));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autopilot_proto::InMemoryBlobs;

    fn shared(root: &Path, max: u64) -> SharedWorkspaces {
        SharedWorkspaces::new(root.to_path_buf(), Arc::new(InMemoryBlobs::default()), max)
    }

    #[tokio::test]
    async fn a_saved_workspace_comes_back_on_another_root() {
        let blobs: Arc<dyn BlobStore> = Arc::new(InMemoryBlobs::default());
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = SharedWorkspaces::new(a.path().into(), Arc::clone(&blobs), 1 << 20);
        let second = SharedWorkspaces::new(b.path().into(), Arc::clone(&blobs), 1 << 20);
        let run = (RunId::new(), 1);
        let out = first.check_out("job-1", run).await.unwrap();
        assert_eq!(out.restored_bytes, None);
        std::fs::create_dir_all(out.dir.join("notes")).unwrap();
        std::fs::write(out.dir.join("notes/a.txt"), "kept").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", out.dir.join("link")).unwrap();
        assert!(first.check_in("job-1", &out).await.unwrap().is_some());
        assert!(
            !out.dir.exists(),
            "the attempt's directory goes after check-in"
        );

        let next = second.check_out("job-1", (RunId::new(), 1)).await.unwrap();
        assert!(next.restored_bytes.is_some());
        assert_eq!(
            std::fs::read_to_string(next.dir.join("notes/a.txt")).unwrap(),
            "kept"
        );
        let link = std::fs::read_link(next.dir.join("link")).unwrap();
        assert_eq!(link, Path::new("/etc/passwd"), "a symlink stays a link");
    }

    #[tokio::test]
    async fn overlapping_attempts_work_apart_and_the_last_save_wins_whole() {
        let root = tempfile::tempdir().unwrap();
        let workspaces = shared(root.path(), 1 << 20);
        let (one, two) = ((RunId::new(), 1), (RunId::new(), 1));
        let a = workspaces.check_out("job-x", one).await.unwrap();
        let b = workspaces.check_out("job-x", two).await.unwrap();
        assert_ne!(a.dir, b.dir);
        std::fs::write(a.dir.join("from"), "a").unwrap();
        std::fs::write(a.dir.join("only-a"), "a").unwrap();
        std::fs::write(b.dir.join("from"), "b").unwrap();
        workspaces.check_in("job-x", &a).await.unwrap();
        workspaces.check_in("job-x", &b).await.unwrap();
        let next = workspaces
            .check_out("job-x", (RunId::new(), 1))
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(next.dir.join("from")).unwrap(), "b");
        assert!(!next.dir.join("only-a").exists(), "no mix of the two saves");
    }

    #[tokio::test]
    async fn a_workspace_past_the_cap_is_refused_and_the_old_one_kept() {
        let root = tempfile::tempdir().unwrap();
        let workspaces = shared(root.path(), 64 * 1024);
        let run = (RunId::new(), 1);
        let out = workspaces.check_out("job-big", run).await.unwrap();
        std::fs::write(out.dir.join("small"), "kept").unwrap();
        workspaces.check_in("job-big", &out).await.unwrap();

        let run = (RunId::new(), 1);
        let out = workspaces.check_out("job-big", run).await.unwrap();
        // Random bytes do not compress.
        let mut noise = vec![0u8; 512 * 1024];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut noise);
        std::fs::write(out.dir.join("noise"), noise).unwrap();
        let err = workspaces.check_in("job-big", &out).await.unwrap_err();
        assert!(matches!(err, WorkspaceError::TooLarge(_)), "{err}");
        assert!(
            err.to_string().contains("AUTOPILOT_WORKSPACE_MAX_MB"),
            "{err}"
        );

        let next = workspaces
            .check_out("job-big", (RunId::new(), 1))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(next.dir.join("small")).unwrap(),
            "kept"
        );
        assert!(!next.dir.join("noise").exists());
    }

    #[tokio::test]
    async fn an_attempt_that_changed_nothing_saves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let workspaces = shared(root.path(), 1 << 20);
        // One attempt: check out, change the files with `edit`, check in; whether it saved.
        let attempt = |edit: Option<&'static str>| {
            let workspaces = &workspaces;
            async move {
                let out = workspaces
                    .check_out("job-same", (RunId::new(), 1))
                    .await
                    .unwrap();
                if let Some(content) = edit {
                    std::fs::write(out.dir.join("a"), content).unwrap();
                }
                workspaces
                    .check_in("job-same", &out)
                    .await
                    .unwrap()
                    .is_some()
            }
        };
        assert!(!attempt(None).await, "empty: nothing to save");
        assert!(attempt(Some("a")).await, "a new file is saved");
        // In another second than the save: the checked-out directory's own time differs.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert!(!attempt(None).await, "unchanged: nothing to save");
        assert!(attempt(Some("changed")).await, "a changed file is saved");
        // Nothing is left behind: no attempt directory, no fetched or packed archive.
        let left: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, [".attempts"], "{left:?}");
        assert_eq!(
            std::fs::read_dir(root.path().join(".attempts"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn quick_run_workspaces_are_never_saved() {
        let root = tempfile::tempdir().unwrap();
        let workspaces = shared(root.path(), 1 << 20);
        let run = (RunId::new(), 1);
        let out = workspaces.check_out("quick-1", run).await.unwrap();
        std::fs::write(out.dir.join("x"), "x").unwrap();
        assert_eq!(workspaces.check_in("quick-1", &out).await.unwrap(), None);
    }
}
