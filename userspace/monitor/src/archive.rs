//! The compliance archive: every message of a monitored flow, the policy decision on it, and
//! the flow events around it, recorded in order and tamper-evidently.
//!
//! # Layout
//!
//! A directory holds append-only segment files `archive-000001.log`, `archive-000002.log`, …
//! and one head file `archive.head`. The seal key lives elsewhere (see [`SealKey`]). One
//! [`Archive`] at a time writes a directory: it holds an exclusive `flock` on `archive.lock`
//! (which names its pid) and [`Archive::open`] fails with [`ArchiveError::Locked`] while
//! another holds it. Readers ([`verify`], [`search`], [`export`]) take no lock.
//!
//! Every segment line is one record, a JSON object on one line:
//!
//! ```text
//! {"h":"<64 lowercase hex>","r":{"seq":7,"time":1700000000000,"event":{"type":"message",…}}}
//! ```
//!
//! `h` is SHA-256 over the previous record's `h` (32 bytes; zero for the very first record)
//! followed by the exact bytes of the value of `r`. The chain runs across segments: a segment's
//! first record links to the previous segment's last. `seq` counts records from 0 without gaps.
//! The framing is checked byte for byte (fixed prefix, lowercase hex, fixed suffix, newline), so
//! a line has exactly one reading, and `jq` can read the files as JSON lines.
//!
//! # Seals and the head file
//!
//! A seal record (`"type":"seal"`) carries HMAC-SHA256, under the secret key, of its own
//! sequence number, time and the chain head it closes. Sealing writes the buffered records,
//! fsyncs the segment, then replaces `archive.head` atomically (write, fsync, rename, fsync of
//! the directory). The head file names the last seal (segment, sequence number, end offset,
//! hash) and where the retained chain starts, under its own HMAC. A seal is written when
//! [`ArchiveConfig::seal_interval_ms`] has passed or [`ArchiveConfig::seal_max_records`]
//! records are unsealed, before every rotation, and on [`Archive::close`].
//!
//! # What [`verify`] detects, and what it cannot
//!
//! Without the key nobody can produce a valid seal or head file, so verify detects any change,
//! deletion, insertion or reordering of records up to the last seal, the deletion of any
//! segment up to the one holding the last seal, and a truncation of the newest sealed records.
//! It cannot detect:
//! - changes to records after the last seal made by someone who recomputes the hash chain
//!   (those records are only chained, not yet authenticated), nor their removal;
//! - the removal of a whole newest segment that holds no seal yet;
//! - the replacement of the whole directory, head file included, by an older copy of itself
//!   (a rollback): keep copies of the head file elsewhere (for example, ship each seal to a log
//!   server) if that matters;
//! - anything done by someone who holds the key.
//!
//! # Crashes
//!
//! Each record reaches the file whole in one `write` of a batch (see
//! [`ArchiveConfig::write_buffer_bytes`]); seals fsync. After a kill or power loss,
//! [`Archive::open`] reads the records after the last seal, truncates the last segment at the
//! first record that is torn or does not chain, and appends a sealed recovery record stating
//! the segment, offset, bytes cut and the last good sequence number. It writes a recovery
//! record after every unclean shutdown, also when nothing had to be cut, so that the crash is
//! visible even when whole records were lost. Records still in the write buffer at a kill are
//! lost without trace; they are always part of the unsealed tail.
//!
//! # Retention
//!
//! [`Archive::retain`] deletes the oldest whole segments whose newest record is older than the
//! cut-off. It first appends an authenticated retention record stating where the chain now
//! starts (segment, sequence number, previous hash), seals (the head file carries the same
//! start), and only then deletes the files; [`Archive::open`] finishes a deletion that a crash
//! interrupted.

mod anchor;
mod encode;
mod format;
mod key;
mod lock;
mod reader;
mod search;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use format::{Entry, Event, FlowId, Hash, Record, UnixMillis, MAX_LINE_BYTES};
pub use key::SealKey;
pub use search::{export, search, ExportStats, Filter, Hit, Search};
pub use verify::{verify, Problem, ProblemKind, RecoveryNote, RetentionNote, VerifyReport};
pub use writer::{Archive, ArchiveConfig, OpenReport, RecoveryInfo, RetentionReport};

/// Why an archive operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("key file {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("record of {size} bytes exceeds the limit of {MAX_LINE_BYTES} bytes per line")]
    RecordTooLarge { size: usize },
    #[error("cannot encode record: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("{}: segment files exist but the head file archive.head is missing", dir.display())]
    AnchorMissing { dir: PathBuf },
    #[error("{}: head file archive.head is invalid: {reason}", dir.display())]
    AnchorInvalid { dir: PathBuf, reason: String },
    #[error("segment {segment} at offset {offset}: {what}")]
    Corrupt {
        segment: u64,
        offset: u64,
        what: String,
    },
    /// Another [`Archive`] (in this or another process) has the directory open for writing.
    #[error("{}: the archive is open for writing by another process ({}); one writer per directory", dir.display(), holder(*pid))]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("an earlier write failed, the archive's state on disk is unknown: open it again")]
    Poisoned,
}

fn holder(pid: Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.into();
    move |source| ArchiveError::Io { path, source }
}
