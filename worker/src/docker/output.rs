//! A container's output, as the executor passes it on: the attached stream arrives in chunks
//! of any size, interleaving stdout and stderr; [`LineSplitter`] turns each stream's chunks into
//! lines, and `forward_output` sends them to the run while watching for the line that says the
//! container could not start the program at all.

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::executor::{OutputLine, OutputStream};

/// The attached output of a container, as the Engine API streams it.
type AttachedOutput =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<LogOutput, DockerError>> + Send>>;

/// Splits the attached output, which arrives in chunks of any size, into lines per stream.
/// Returns whether the container's init reported that it could not start the program (that
/// line is not passed on: the executor reports it as a missing program).
pub(super) async fn forward_output(
    mut chunks: AttachedOutput,
    output: mpsc::Sender<OutputLine>,
) -> bool {
    let mut exec_failed = false;
    let mut stdout = LineSplitter::new(OutputStream::Stdout);
    let mut stderr = LineSplitter::new(OutputStream::Stderr);
    while let Some(chunk) = chunks.next().await {
        let lines = match chunk {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                stdout.push(&message)
            }
            Ok(LogOutput::StdErr { message }) => stderr.push(&message),
            Ok(LogOutput::StdIn { .. }) => Vec::new(),
            Err(err) => {
                tracing::debug!(error = %err, "the container's output stream ended");
                break;
            }
        };
        for line in lines {
            if line.stream == OutputStream::Stderr && is_exec_failure(&line.text) {
                exec_failed = true;
                continue;
            }
            if output.send(line).await.is_err() {
                return exec_failed;
            }
        }
    }
    for line in [stdout.finish(), stderr.finish()].into_iter().flatten() {
        let _ = output.send(line).await;
    }
    exec_failed
}

/// The line the container's init (tini), or the model relay, prints when it cannot execute the
/// program.
fn is_exec_failure(line: &str) -> bool {
    (line.starts_with("[FATAL tini") || line.starts_with("[FATAL autopilot-relay]"))
        && line.contains("exec ")
        && line.contains(" failed")
}

/// Turns chunks of bytes into lines, without their line endings (lossy UTF-8, any length); one
/// splitter per stream.
pub struct LineSplitter {
    stream: OutputStream,
    pending: Vec<u8>,
}

impl LineSplitter {
    /// A splitter whose lines are marked as coming from `stream`.
    pub fn new(stream: OutputStream) -> Self {
        LineSplitter {
            stream,
            pending: Vec::new(),
        }
    }

    /// The lines `chunk` completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<OutputLine> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..end]);
            lines.push(self.take());
            rest = &rest[end + 1..];
        }
        self.pending.extend_from_slice(rest);
        lines
    }

    /// The last line, when the output did not end with a line ending.
    pub fn finish(&mut self) -> Option<OutputLine> {
        (!self.pending.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> OutputLine {
        if self.pending.last() == Some(&b'\r') {
            self.pending.pop();
        }
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        OutputLine {
            stream: self.stream,
            text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_become_lines_whatever_their_boundaries() {
        let mut splitter = LineSplitter::new(OutputStream::Stdout);
        let mut lines = splitter.push(b"one\ntw");
        lines.extend(splitter.push(b"o\r\n"));
        lines.extend(splitter.push(b""));
        lines.extend(splitter.push("thr\u{e9}e\n\nfour".as_bytes()));
        lines.extend(splitter.finish());
        let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "thr\u{e9}e", "", "four"]);
        assert!(splitter.finish().is_none());
    }

    #[test]
    fn a_multibyte_character_split_across_chunks_survives() {
        let mut splitter = LineSplitter::new(OutputStream::Stderr);
        let bytes = "é\n".as_bytes();
        assert!(splitter.push(&bytes[..1]).is_empty());
        let lines = splitter.push(&bytes[1..]);
        assert_eq!(lines[0].text, "é");
        assert_eq!(lines[0].stream, OutputStream::Stderr);
    }

    #[test]
    fn only_the_init_or_the_relay_failing_to_exec_counts_as_a_missing_program() {
        assert!(is_exec_failure(
            "[FATAL tini (7)] exec claude failed: No such file or directory"
        ));
        assert!(is_exec_failure(
            "[FATAL autopilot-relay] exec /bin/nothing failed: No such file or directory (os error 2)"
        ));
        // The program's own complaints, however alike, are its output.
        assert!(!is_exec_failure(
            "exec claude failed: No such file or directory"
        ));
        assert!(!is_exec_failure(
            "[FATAL tini (7)] something else went wrong"
        ));
        assert!(!is_exec_failure("[WARN  tini (7)] exec claude failed"));
    }
}
