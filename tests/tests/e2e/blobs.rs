//! The `BlobStore` conformance suite: every case runs on the in-memory blobs and on the JetStream
//! object store (against the nats-server of `TEST_NATS_URL`, in a bucket under a prefix of the
//! test's own). Both must pass the same assertions; where the in-memory store has nothing to
//! compare (no size limit, no bucket shared between processes) the case says so.
//!
//! The contract (`autopilot_proto::BlobStore`): `get` writes the blob into the target file,
//! replacing it, and answers `false` for a missing blob; `put` stores a file, replacing an earlier
//! blob as a whole, so a reader sees the old blob or the new one, never a mix; `delete` forgets a
//! blob, absent being fine. Failures are `BusError`s, never panics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::{
    BlobStore, InMemoryBlobs, JetStreamBus, JetStreamConfig, JobId, ObjectBlobs, WebhookId,
};
use autopilot_tests::components;
use autopilot_worker::workspaces::{SharedWorkspaces, Workspaces};
use futures::StreamExt;
use tempfile::TempDir;

use crate::bus::unique_prefix;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The bucket the JetStream cases use (`<prefix>-blobs`).
const BUCKET: &str = "blobs";

/// Longest a single call may take before the case counts it as hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One blob store under test, with a scratch directory for the files it reads and writes.
struct Blobs {
    store: Arc<dyn BlobStore>,
    files: TempDir,
    /// For the JetStream store: the server and the prefix, to remove what the case made.
    nats: Option<(String, String)>,
}

impl Blobs {
    fn in_memory() -> Blobs {
        Blobs {
            store: Arc::new(InMemoryBlobs::default()),
            files: tempfile::tempdir().expect("scratch dir"),
            nats: None,
        }
    }

    /// The JetStream object store on `TEST_NATS_URL`, holding at most `max_bytes` in all; `None`
    /// (a failure in CI) without a server.
    async fn jetstream(max_bytes: Option<u64>) -> Option<Blobs> {
        let url = components::nats_url()?;
        let prefix = unique_prefix();
        let store = open_bucket(&url, &prefix, max_bytes).await;
        Some(Blobs {
            store: Arc::new(store),
            files: tempfile::tempdir().expect("scratch dir"),
            nats: Some((url, prefix)),
        })
    }

    /// A path in the scratch directory, nothing there yet.
    fn path(&self, name: &str) -> PathBuf {
        self.files.path().join(name)
    }

    /// A file in the scratch directory holding `bytes`.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("write a scratch file");
        path
    }

    async fn put(&self, name: &str, bytes: &[u8]) {
        let source = self.file(&format!("source-{}", uuid::Uuid::now_v7()), bytes);
        timed(self.store.put(name, &source))
            .await
            .unwrap_or_else(|err| panic!("put {name} ({} bytes): {err}", bytes.len()));
        std::fs::remove_file(source).expect("remove the source file");
    }

    /// The bytes of blob `name`, or `None` when it is missing (then no file is made).
    async fn get(&self, name: &str) -> Option<Vec<u8>> {
        let target = self.path(&format!("target-{}", uuid::Uuid::now_v7()));
        let found = timed(self.store.get(name, &target))
            .await
            .unwrap_or_else(|err| panic!("get {name}: {err}"));
        if found {
            let bytes = read(&target);
            std::fs::remove_file(target).expect("remove the target file");
            Some(bytes)
        } else {
            assert!(!target.exists(), "get of missing {name} made {target:?}");
            None
        }
    }

    async fn delete(&self, name: &str) {
        timed(self.store.delete(name))
            .await
            .unwrap_or_else(|err| panic!("delete {name}: {err}"));
    }

    /// Chunks the store keeps that no stored blob is made of (`subject: messages`): what a save
    /// that lost a race, or failed half-way, would leave behind. The in-memory store keeps each
    /// blob as one value that a `put` replaces whole, so it has none to find.
    async fn orphaned_chunks(&self) -> Vec<String> {
        let Some((url, prefix)) = &self.nats else {
            return Vec::new();
        };
        let bucket = format!("{prefix}-{BUCKET}");
        let client = async_nats::connect(url).await.expect("connect to NATS");
        let stream = async_nats::jetstream::new(client)
            .get_stream(format!("OBJ_{bucket}"))
            .await
            .expect("the bucket's stream");
        let mut subjects = stream
            .info_with_subjects(format!("$O.{bucket}.>"))
            .await
            .expect("the bucket's subjects");
        let (mut chunks, mut metas) = (Vec::new(), Vec::new());
        while let Some(entry) = subjects.next().await {
            let (subject, count) = entry.expect("a subject of the bucket");
            if let Some(nuid) = subject.strip_prefix(&format!("$O.{bucket}.C.")) {
                chunks.push((nuid.to_owned(), subject.clone(), count));
            } else {
                metas.push(subject);
            }
        }
        let mut live = Vec::new();
        for meta in metas {
            let message = stream
                .get_last_raw_message_by_subject(&meta)
                .await
                .expect("a blob's description");
            let info: serde_json::Value =
                serde_json::from_slice(&message.payload).expect("a blob's description is JSON");
            if info["deleted"] != true {
                live.push(info["nuid"].as_str().expect("nuid").to_owned());
            }
        }
        chunks
            .into_iter()
            .filter(|(nuid, _, _)| !live.contains(nuid))
            .map(|(_, subject, count)| format!("{subject}: {count}"))
            .collect()
    }

    /// Removes the JetStream streams the case made (the bucket and the bus's own streams), so
    /// the shared server does not keep them.
    async fn clean_up(self) {
        let Some((url, prefix)) = &self.nats else {
            return;
        };
        let client = async_nats::connect(url).await.expect("connect to NATS");
        let jetstream = async_nats::jetstream::new(client);
        let names: Vec<String> = jetstream
            .stream_names()
            .filter_map(|name| async move { name.ok() })
            .collect()
            .await;
        for name in names
            .into_iter()
            .filter(|name| name.contains(prefix.as_str()))
        {
            jetstream
                .delete_stream(&name)
                .await
                .unwrap_or_else(|err| panic!("delete stream {name}: {err}"));
        }
    }
}

/// The bucket `<prefix>-blobs` through a JetStream bus of its own.
async fn open_bucket(url: &str, prefix: &str, max_bytes: Option<u64>) -> ObjectBlobs {
    let config = JetStreamConfig {
        prefix: prefix.to_owned(),
        request_timeout: Duration::from_secs(10),
        ..JetStreamConfig::default()
    };
    let bus = JetStreamBus::connect(url, config)
        .await
        .expect("connect to TEST_NATS_URL");
    bus.blobs(BUCKET, max_bytes)
        .await
        .expect("open the object store bucket")
}

async fn timed<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| panic!("a blob store call took more than {CALL_TIMEOUT:?}"))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| panic!("read {path:?}: {err}"))
}

/// `len` bytes that look random (xorshift from `seed`), so no two cases' blobs and no two chunks
/// of one blob are alike.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Compares without printing megabytes when they differ.
#[track_caller]
fn assert_bytes(actual: Option<&[u8]>, expected: &[u8], what: &str) {
    let actual = actual.unwrap_or_else(|| panic!("{what}: the blob is missing"));
    assert!(
        actual == expected,
        "{what}: got {} bytes, expected {} (first difference at byte {:?})",
        actual.len(),
        expected.len(),
        actual.iter().zip(expected).position(|(a, b)| a != b)
    );
}

/// The name a job's saved workspace gets, as the worker makes it.
fn workspace_blob_of_job() -> String {
    SharedWorkspaces::blob_name(&format!("job-{}", JobId::new()))
}

// --- The cases -------------------------------------------------------------------------------

/// `get` of a blob never stored answers `false` and leaves the target as it was: absent stays
/// absent, an existing file keeps its content.
async fn a_missing_blob_is_not_found_and_the_target_is_left_alone(blobs: &Blobs) {
    let name = workspace_blob_of_job();
    let absent = blobs.path("absent");
    assert!(!timed(blobs.store.get(&name, &absent)).await.unwrap());
    assert!(!absent.exists(), "no file is made for a missing blob");
    let kept = blobs.file("kept", b"what was there before");
    assert!(!timed(blobs.store.get(&name, &kept)).await.unwrap());
    assert_eq!(read(&kept), b"what was there before");
}

/// What is put comes back byte for byte: an empty file (found, and empty: not the same as
/// missing), a small binary file, and one of a few MiB spread over many chunks (the object store
/// cuts blobs into 128 KiB chunks; this one does not end on a chunk boundary). Reading does not
/// use a blob up, and `get` replaces a longer file that was at the target entirely.
async fn put_then_get_gives_back_the_same_bytes(blobs: &Blobs) {
    let small: Vec<u8> = b"line one\n\0\xff binary\r\n"
        .iter()
        .copied()
        .chain(0..=255)
        .collect();
    let large = noise(3 * MIB + 12_345, 1);
    let cases = [
        ("empty.tar.gz", Vec::new()),
        ("small.tar.gz", small),
        ("large.tar.gz", large),
    ];
    for (name, bytes) in &cases {
        blobs.put(name, bytes).await;
    }
    for (name, bytes) in &cases {
        assert_bytes(blobs.get(name).await.as_deref(), bytes, name);
        assert_bytes(
            blobs.get(name).await.as_deref(),
            bytes,
            &format!("{name}, read again"),
        );
    }
    let target = blobs.file("longer", &noise(4 * MIB, 2));
    assert!(timed(blobs.store.get("small.tar.gz", &target))
        .await
        .unwrap());
    assert_bytes(
        Some(&read(&target)),
        &cases[1].1,
        "small.tar.gz over a longer file",
    );
    assert!(timed(blobs.store.get("empty.tar.gz", &target))
        .await
        .unwrap());
    assert_eq!(read(&target), b"", "an empty blob empties the target");
}

/// A second `put` under a name replaces the blob as a whole: a shorter one leaves no tail of the
/// longer one, an empty one is empty, a longer one is whole.
async fn a_second_put_replaces_the_whole_blob(blobs: &Blobs) {
    let name = workspace_blob_of_job();
    let long = noise(2 * MIB + 7, 3);
    let short = noise(1000, 4);
    let longer = noise(2 * MIB + 300 * KIB, 5);
    blobs.put(&name, &long).await;
    assert_bytes(blobs.get(&name).await.as_deref(), &long, "first");
    blobs.put(&name, &short).await;
    assert_bytes(
        blobs.get(&name).await.as_deref(),
        &short,
        "shorter replacement",
    );
    blobs.put(&name, &[]).await;
    assert_bytes(blobs.get(&name).await.as_deref(), &[], "empty replacement");
    blobs.put(&name, &longer).await;
    assert_bytes(
        blobs.get(&name).await.as_deref(),
        &longer,
        "longer replacement",
    );
}

/// What the readers of [`readers_during_replacements_see_one_whole_blob`] saw.
#[derive(Default, Debug)]
struct Reads {
    /// Reads started while the writer was still replacing.
    while_writing: usize,
    /// Reads that gave a whole version, by version.
    whole: [usize; 2],
    failed: Vec<String>,
    stalled: usize,
}

/// Readers while a writer keeps replacing a blob: each read that completes gives one of the
/// versions whole, never a mix of two, and the blob is never missing in between.
///
/// A read may also fail or stall while a replacement runs, which the contract allows and the
/// worker copes with (it bounds each attempt and tries again). The JetStream store does stall:
/// `put` purges the old blob's chunks once the new one is in place, and a read still streaming
/// those chunks then waits for chunks that are gone (past the 30 s of [`CALL_TIMEOUT`] when this
/// was written). Such reads are given up after `STALLED_READ` and counted; the counts are
/// printed.
async fn readers_during_replacements_see_one_whole_blob(blobs: &Blobs) {
    const STALLED_READ: Duration = Duration::from_secs(5);
    const READERS: usize = 3;
    let name = workspace_blob_of_job();
    let versions = Arc::new([noise(MIB + 3, 6), noise(600 * KIB + 1, 7)]);
    blobs.put(&name, &versions[0]).await;
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (store, versions, name) = (
            Arc::clone(&blobs.store),
            Arc::clone(&versions),
            name.clone(),
        );
        let writing = Arc::clone(&writing);
        let dir = blobs.path("writer");
        std::fs::create_dir(&dir).unwrap();
        tokio::spawn(async move {
            let sources: Vec<PathBuf> = versions
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    let path = dir.join(i.to_string());
                    std::fs::write(&path, bytes).unwrap();
                    path
                })
                .collect();
            for round in 1..=10 {
                timed(store.put(&name, &sources[round % 2]))
                    .await
                    .expect("replace");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            writing.store(false, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let readers: Vec<_> = (0..READERS)
        .map(|reader| {
            let (store, versions, name) = (
                Arc::clone(&blobs.store),
                Arc::clone(&versions),
                name.clone(),
            );
            let writing = Arc::clone(&writing);
            let dir = blobs.path(&format!("reader-{reader}"));
            std::fs::create_dir(&dir).unwrap();
            tokio::spawn(async move {
                let mut reads = Reads::default();
                for read_no in 0.. {
                    let during = writing.load(std::sync::atomic::Ordering::SeqCst);
                    reads.while_writing += usize::from(during);
                    let target = dir.join(read_no.to_string());
                    match tokio::time::timeout(STALLED_READ, store.get(&name, &target)).await {
                        Ok(Ok(true)) => {
                            let bytes = read(&target);
                            let version = versions.iter().position(|v| *v == bytes);
                            let version = version.unwrap_or_else(|| {
                                panic!(
                                    "reader {reader}, read {read_no}: {} bytes that are neither \
                                     version",
                                    bytes.len()
                                )
                            });
                            reads.whole[version] += 1;
                        }
                        Ok(Ok(false)) => panic!(
                            "reader {reader}, read {read_no}: the blob was missing while being \
                             replaced"
                        ),
                        Ok(Err(err)) => reads.failed.push(err.to_string()),
                        Err(_) => reads.stalled += 1,
                    }
                    std::fs::remove_file(&target).ok();
                    if !during {
                        return reads;
                    }
                }
                unreachable!()
            })
        })
        .collect();
    writer.await.expect("writer");
    let mut all = Reads::default();
    for reader in readers {
        let reads = reader.await.expect("reader");
        all.while_writing += reads.while_writing;
        all.whole[0] += reads.whole[0];
        all.whole[1] += reads.whole[1];
        all.failed.extend(reads.failed);
        all.stalled += reads.stalled;
    }
    eprintln!(
        "{} store, {READERS} readers: {all:?}",
        blobs.store.backend()
    );
    assert!(
        all.while_writing >= READERS,
        "reads overlapped the replacements: {all:?}"
    );
    assert!(
        all.whole[0] + all.whole[1] >= READERS,
        "reads completed: {all:?}"
    );
    assert_bytes(
        blobs.get(&name).await.as_deref(),
        &versions[0],
        "after the last replacement",
    );
}

/// `delete` forgets a blob (then `get` is `false` and leaves the target alone); deleting it
/// again, or deleting a name never stored, is fine; the name can be used again afterwards.
async fn delete_forgets_a_blob_and_absent_is_fine(blobs: &Blobs) {
    let name = workspace_blob_of_job();
    blobs.put(&name, &noise(300 * KIB, 8)).await;
    blobs.delete(&name).await;
    assert_eq!(blobs.get(&name).await, None);
    let kept = blobs.file("kept", b"untouched");
    assert!(!timed(blobs.store.get(&name, &kept)).await.unwrap());
    assert_eq!(read(&kept), b"untouched");
    blobs.delete(&name).await;
    blobs.delete(&workspace_blob_of_job()).await;
    let again = noise(10 * KIB, 9);
    blobs.put(&name, &again).await;
    assert_bytes(
        blobs.get(&name).await.as_deref(),
        &again,
        "put after delete",
    );
}

/// Blobs under different names are independent, with names as the worker makes them
/// (`job-<uuid>.tar.gz`, `webhook-<uuid>.tar.gz`) and names that differ only in case, in a
/// suffix or in a separator: writing, replacing or deleting one leaves the others as they were.
async fn blobs_under_different_names_are_independent(blobs: &Blobs) {
    let job = workspace_blob_of_job();
    let webhook = SharedWorkspaces::blob_name(&format!("webhook-{}", WebhookId::new()));
    let names = [
        job.clone(),
        webhook,
        job.to_uppercase(),
        format!("{job}.old"),
        job.trim_end_matches(".tar.gz").to_owned(),
        job.replace('-', "_"),
        format!("nested/{job}"),
    ];
    let contents: Vec<Vec<u8>> = (0..names.len())
        .map(|i| noise(100 * KIB + i, 10 + i as u64))
        .collect();
    for (name, bytes) in names.iter().zip(&contents) {
        blobs.put(name, bytes).await;
    }
    for (name, bytes) in names.iter().zip(&contents) {
        assert_bytes(blobs.get(name).await.as_deref(), bytes, name);
    }
    // Replacing and deleting the first touches nothing else.
    blobs.put(&names[0], b"replaced").await;
    assert_bytes(
        blobs.get(&names[0]).await.as_deref(),
        b"replaced",
        &names[0],
    );
    blobs.delete(&names[0]).await;
    assert_eq!(blobs.get(&names[0]).await, None);
    for (name, bytes) in names.iter().zip(&contents).skip(1) {
        assert_bytes(
            blobs.get(name).await.as_deref(),
            bytes,
            &format!("{name} after the first went"),
        );
    }
}

/// A `put` from a file that does not exist, and a `get` into a directory that does not exist,
/// are errors (not panics), and change nothing: the earlier blob stays, a missing one stays
/// missing.
async fn unreadable_sources_and_unwritable_targets_are_errors(blobs: &Blobs) {
    let stored = workspace_blob_of_job();
    let bytes = noise(200 * KIB, 20);
    blobs.put(&stored, &bytes).await;
    let nowhere = blobs.path("no-such-file");
    let err = timed(blobs.store.put(&stored, &nowhere))
        .await
        .expect_err("put from a missing file");
    assert!(!err.to_string().is_empty());
    assert_bytes(
        blobs.get(&stored).await.as_deref(),
        &bytes,
        "after a failed put",
    );
    let never = workspace_blob_of_job();
    timed(blobs.store.put(&never, &nowhere))
        .await
        .expect_err("put from a missing file");
    assert_eq!(blobs.get(&never).await, None);

    let unwritable = blobs.path("no-such-dir").join("target");
    timed(blobs.store.get(&stored, &unwritable))
        .await
        .expect_err("get into a missing directory");
    assert!(!unwritable.exists());
}

/// Writers replacing one blob at once: the blob ends as one of their versions, whole, and the
/// store keeps the chunks of that version only. Every writer reads what it replaces before
/// the others replace it, the race that left the losers' chunks behind.
async fn puts_at_once_leave_one_whole_blob_and_no_orphaned_chunks(blobs: &Blobs) {
    const WRITERS: usize = 3;
    let name = workspace_blob_of_job();
    let versions: Vec<Vec<u8>> = (0..WRITERS)
        .map(|i| noise(300 * KIB + i, 50 + i as u64))
        .collect();
    for round in 0..3 {
        let puts = versions.iter().enumerate().map(|(i, bytes)| {
            let source = blobs.file(&format!("writer-{round}-{i}"), bytes);
            let store = Arc::clone(&blobs.store);
            let name = name.clone();
            async move { timed(store.put(&name, &source)).await }
        });
        for result in futures::future::join_all(puts).await {
            result.expect("a put at the same time as others");
        }
        let stored = blobs.get(&name).await.expect("the blob");
        assert!(
            versions.contains(&stored),
            "round {round}: {} bytes that are no writer's",
            stored.len()
        );
        assert_eq!(
            blobs.orphaned_chunks().await,
            Vec::<String>::new(),
            "round {round}"
        );
    }
    // A delete racing a put: whichever comes last wins, and nothing is left over either way.
    let source = blobs.file("last-put", &versions[0]);
    let (put, ()) = tokio::join!(timed(blobs.store.put(&name, &source)), blobs.delete(&name));
    put.expect("a put racing a delete");
    if let Some(stored) = blobs.get(&name).await {
        assert_bytes(Some(&stored), &versions[0], "the put that won");
    }
    assert_eq!(blobs.orphaned_chunks().await, Vec::<String>::new());
}

/// Two overlapping runs of one job saving their workspaces at the same moment: the next run
/// finds one of the two whole, and the store keeps nothing of the other.
async fn saves_of_one_workspace_at_once_leave_no_orphaned_chunks(blobs: &Blobs) {
    let root = tempfile::tempdir().expect("workspaces root");
    let workspaces = SharedWorkspaces::new(
        root.path().to_path_buf(),
        Arc::clone(&blobs.store),
        64 * MIB as u64,
    );
    let job = format!("job-{}", JobId::new());
    let attempt = || (autopilot_proto::RunId::new(), 1);
    for round in 0..3u64 {
        let (a, b) = tokio::join!(
            workspaces.check_out(&job, attempt()),
            workspaces.check_out(&job, attempt())
        );
        let (a, b) = (a.expect("check out a"), b.expect("check out b"));
        // Noise does not compress: each archive takes several chunks.
        let contents = [noise(400 * KIB, 60 + round), noise(500 * KIB, 70 + round)];
        std::fs::write(a.dir.join("data"), &contents[0]).unwrap();
        std::fs::write(b.dir.join("data"), &contents[1]).unwrap();
        let (saved_a, saved_b) =
            tokio::join!(workspaces.check_in(&job, &a), workspaces.check_in(&job, &b));
        assert!(saved_a.expect("save a").is_some() && saved_b.expect("save b").is_some());

        let next = workspaces
            .check_out(&job, attempt())
            .await
            .expect("check out the next");
        let found = std::fs::read(next.dir.join("data")).expect("the saved file");
        assert!(
            contents.contains(&found),
            "round {round}: a mix of the two saves"
        );
        workspaces.check_in(&job, &next).await.expect("check in");
        assert_eq!(
            blobs.orphaned_chunks().await,
            Vec::<String>::new(),
            "round {round}"
        );
    }
}

/// Runs each case on both stores: `blobs::in_memory::<case>` and `blobs::jetstream::<case>`.
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod in_memory {
            $(
                #[tokio::test]
                async fn $case() {
                    let blobs = super::Blobs::in_memory();
                    super::$case(&blobs).await;
                }
            )*
        }

        mod jetstream {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(blobs) = super::Blobs::jetstream(None).await else {
                        return;
                    };
                    super::$case(&blobs).await;
                    blobs.clean_up().await;
                }
            )*
        }
    };
}

on_both_stores!(
    a_missing_blob_is_not_found_and_the_target_is_left_alone,
    put_then_get_gives_back_the_same_bytes,
    a_second_put_replaces_the_whole_blob,
    readers_during_replacements_see_one_whole_blob,
    delete_forgets_a_blob_and_absent_is_fine,
    blobs_under_different_names_are_independent,
    unreadable_sources_and_unwritable_targets_are_errors,
    puts_at_once_leave_one_whole_blob_and_no_orphaned_chunks,
    saves_of_one_workspace_at_once_leave_no_orphaned_chunks,
);

// --- What only one of them has ---------------------------------------------------------------

/// The JetStream bucket holds at most `max_bytes` in all, over all its blobs: blobs that fit
/// are stored, a `put` past the limit is an error, and the blob it would have replaced is still
/// there whole. The in-memory store has no limit: the same puts all succeed there.
///
/// A refused `put` takes the chunks it had sent away with it: nothing of it is left to count
/// against the limit, and a blob that fits is stored after it.
#[tokio::test]
async fn the_jetstream_bucket_refuses_blobs_past_its_size_limit() {
    const LIMIT: usize = MIB;
    let first = noise(300 * KIB, 30);
    let too_big = noise(2 * LIMIT, 31);
    let second = noise(600 * KIB, 32);

    let memory = Blobs::in_memory();
    memory.put("first", &first).await;
    memory.put("first", &too_big).await;
    memory.put("second", &second).await;
    assert_bytes(
        memory.get("first").await.as_deref(),
        &too_big,
        "in memory, no limit",
    );

    let Some(blobs) = Blobs::jetstream(Some(LIMIT as u64)).await else {
        return;
    };
    blobs.put("first", &first).await;
    let source = blobs.file("too-big", &too_big);
    let err = timed(blobs.store.put("first", &source))
        .await
        .expect_err("a blob twice the bucket's size");
    eprintln!("refused past the limit: {err}");
    assert_bytes(
        blobs.get("first").await.as_deref(),
        &first,
        "the blob the refused put would have replaced",
    );
    assert_eq!(blobs.orphaned_chunks().await, Vec::<String>::new());
    let fits = noise(500 * KIB, 34);
    blobs.put("after", &fits).await;
    assert_bytes(
        blobs.get("after").await.as_deref(),
        &fits,
        "after a refusal",
    );
    blobs.clean_up().await;

    // The limit is for the bucket, not each blob: two blobs that fit alone do not fit together.
    let Some(blobs) = Blobs::jetstream(Some(LIMIT as u64)).await else {
        return;
    };
    blobs.put("second", &second).await;
    let source = blobs.file("another", &noise(600 * KIB, 33));
    timed(blobs.store.put("another", &source))
        .await
        .expect_err("a second blob past the bucket's limit");
    assert_bytes(
        blobs.get("second").await.as_deref(),
        &second,
        "the blob already there",
    );
    blobs.clean_up().await;
}

/// The JetStream bucket is shared: several processes open it at once (each creating it when
/// missing) and read back what another one stored, as workers do with saved workspaces. The
/// in-memory store lives in one process and has nothing to share.
#[tokio::test]
async fn jetstream_blobs_are_shared_by_every_bus_that_opens_the_bucket() {
    let Some(url) = components::nats_url() else {
        return;
    };
    let prefix = unique_prefix();
    let (one, two, three) = tokio::join!(
        open_bucket(&url, &prefix, None),
        open_bucket(&url, &prefix, None),
        open_bucket(&url, &prefix, None),
    );
    let blobs = Blobs {
        store: Arc::new(one),
        files: tempfile::tempdir().unwrap(),
        nats: Some((url.clone(), prefix.clone())),
    };
    let name = workspace_blob_of_job();
    let bytes = noise(MIB + 1, 40);
    blobs.put(&name, &bytes).await;
    for (other, label) in [(&two as &dyn BlobStore, "second"), (&three, "third")] {
        let target = blobs.path(label);
        assert!(
            timed(other.get(&name, &target)).await.unwrap(),
            "{label} bus finds it"
        );
        assert_bytes(Some(&read(&target)), &bytes, label);
    }
    timed(two.delete(&name)).await.unwrap();
    assert_eq!(blobs.get(&name).await, None, "deleted through another bus");
    blobs.clean_up().await;
}

/// Chunks nothing describes, as a put cut short by the death of its process leaves them, are
/// purged by the sweep once older than the age it is given; fresh ones (a put may still be
/// sending them) and the chunks of stored blobs stay. The in-memory store has no chunks.
#[tokio::test]
async fn the_jetstream_sweep_purges_chunks_nothing_describes() {
    let Some(url) = components::nats_url() else {
        return;
    };
    let prefix = unique_prefix();
    let store = Arc::new(open_bucket(&url, &prefix, None).await);
    let blobs = Blobs {
        store: Arc::clone(&store) as Arc<dyn BlobStore>,
        files: tempfile::tempdir().unwrap(),
        nats: Some((url.clone(), prefix.clone())),
    };
    let name = workspace_blob_of_job();
    let kept = noise(300 * KIB, 80);
    blobs.put(&name, &kept).await;
    // A put that never got as far as its description.
    let jetstream = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let abandoned = format!("$O.{prefix}-{BUCKET}.C.abandoned-upload");
    for chunk in 0..3u64 {
        jetstream
            .publish(abandoned.clone(), noise(1000, 90 + chunk).into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(blobs.orphaned_chunks().await, [format!("{abandoned}: 3")]);

    let hour = Duration::from_secs(3600);
    assert_eq!(timed(store.sweep_orphaned_chunks(hour)).await.unwrap(), 0);
    assert_eq!(
        blobs.orphaned_chunks().await.len(),
        1,
        "fresh chunks may be a put under way"
    );
    // The second mark of the chunks' time stamp must pass for an age of one second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = Duration::from_secs(1);
    assert_eq!(timed(store.sweep_orphaned_chunks(second)).await.unwrap(), 1);
    assert_eq!(blobs.orphaned_chunks().await, Vec::<String>::new());
    assert_bytes(blobs.get(&name).await.as_deref(), &kept, "a stored blob");
    blobs.clean_up().await;
}
