//! Outcome files: a job's `on_end` handlers with `write` have the run's worker write the
//! attempt's outcome as JSON into the workspace once the run's process has ended, before the
//! workspace is saved, so the next run finds it.
//!
//! The run could have left links in its workspace to lead this (more privileged) process
//! elsewhere: no part of the path may be a link, directories are made one by one, and the file
//! is written under a fresh name and renamed into place (a rename replaces a link, never
//! follows it). Nothing of the run is still running to swap a part meanwhile. What is made
//! belongs to the workspace's owner, as the run's own files do.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use autopilot_proto::{OutcomeFile, RunOutcome, RunSpec};
use chrono::Utc;
use serde_json::{json, Value};

/// The most of a result or error a file keeps.
const MAX_TEXT_BYTES: usize = 64 * 1024;

/// The outcome as the files hold it.
pub fn body(spec: &RunSpec, outcome: &RunOutcome) -> Value {
    let cap = |text: &Option<String>| {
        text.as_deref().map(|text| {
            let mut end = text.len().min(MAX_TEXT_BYTES);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        })
    };
    json!({
        "run_id": spec.run_id,
        "job_id": spec.job_id,
        "attempt": spec.attempt,
        "status": outcome.final_status().as_str(),
        "result": cap(&outcome.result),
        "error": cap(&outcome.error),
        "exit_code": outcome.exit_code,
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at.unwrap_or_else(Utc::now),
        "tokens": {
            "input": outcome.usage.input_tokens,
            "output": outcome.usage.output_tokens,
            "cache_read": outcome.usage.cache_read_tokens,
            "cache_write": outcome.usage.cache_write_tokens,
        },
        "cost_usd": outcome.cost_usd,
    })
}

/// Writes each of `files` whose `on` takes the outcome's end into `workspace`; returns each
/// path written or why not.
pub fn write_all(
    workspace: &Path,
    files: &[OutcomeFile],
    spec: &RunSpec,
    outcome: &RunOutcome,
) -> Vec<(String, Result<(), String>)> {
    let status = outcome.final_status();
    let bytes = serde_json::to_vec_pretty(&body(spec, outcome)).unwrap_or_default();
    files
        .iter()
        .filter(|file| file.on.matches(status))
        .map(|file| (file.path.clone(), write(workspace, &file.path, &bytes)))
        .collect()
}

/// Writes `bytes` to `path` under `workspace`, through no link.
pub fn write(workspace: &Path, path: &str, bytes: &[u8]) -> Result<(), String> {
    let parts: Vec<&str> = path.split('/').collect();
    let valid = !path.starts_with('/')
        && parts
            .iter()
            .all(|part| !part.is_empty() && *part != "." && *part != "..");
    let Some((name, dirs)) = parts.split_last().filter(|_| valid) else {
        return Err(format!("`{path}` is not a path inside the workspace"));
    };
    let owner = std::fs::metadata(workspace)
        .map(|meta| (meta.uid(), meta.gid()))
        .map_err(|err| format!("cannot read the workspace: {err}"))?;
    let give = |made: &Path| {
        // As root, what is made here belongs to the workspace's owner (the run's user).
        let _ = std::os::unix::fs::chown(made, Some(owner.0), Some(owner.1));
    };
    let mut dir = workspace.to_path_buf();
    for part in dirs {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!(
                    "`{}` is a link; nothing was written",
                    shown(&dir, workspace)
                ))
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(format!("`{}` is not a directory", shown(&dir, workspace)))
            }
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir)
                    .map_err(|err| format!("cannot make `{}`: {err}", shown(&dir, workspace)))?;
                give(&dir);
            }
            Err(err) => return Err(err.to_string()),
        }
    }
    let target = dir.join(name);
    if std::fs::symlink_metadata(&target).is_ok_and(|meta| meta.is_dir()) {
        return Err(format!("`{path}` is a directory"));
    }
    let temporary = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::now_v7().simple()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        give(&temporary);
        std::fs::rename(&temporary, &target)
    })();
    written.map_err(|err| {
        let _ = std::fs::remove_file(&temporary);
        format!("cannot write `{path}`: {err}")
    })
}

fn shown(path: &Path, workspace: &Path) -> String {
    path.strip_prefix(workspace)
        .map(PathBuf::from)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_written_with_its_directories_and_replaced_the_next_time() {
        let workspace = tempfile::tempdir().unwrap();
        write(workspace.path(), ".autopilot/runs/last.json", b"one").unwrap();
        write(workspace.path(), ".autopilot/runs/last.json", b"two").unwrap();
        let read = std::fs::read(workspace.path().join(".autopilot/runs/last.json")).unwrap();
        assert_eq!(read, b"two");
        let left: Vec<_> = std::fs::read_dir(workspace.path().join(".autopilot/runs"))
            .unwrap()
            .collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
    }

    #[test]
    fn links_in_the_path_are_never_followed() {
        let workspace = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), workspace.path().join("out")).unwrap();
        let error = write(workspace.path(), "out/x.json", b"x").unwrap_err();
        assert!(error.contains("is a link"), "{error}");
        // A link at the file's own place is replaced, not followed.
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"keep").unwrap();
        std::os::unix::fs::symlink(&secret, workspace.path().join("last.json")).unwrap();
        write(workspace.path(), "last.json", b"outcome").unwrap();
        assert_eq!(std::fs::read(&secret).unwrap(), b"keep");
        assert_eq!(
            std::fs::read(workspace.path().join("last.json")).unwrap(),
            b"outcome"
        );
        assert!(write(workspace.path(), "../x", b"x").is_err());
        assert!(write(workspace.path(), "/etc/x", b"x").is_err());
    }
}
