//! Appending: buffering, sealing, rotation, recovery on open, retention.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::Serialize;

use super::anchor::{read_anchor, write_anchor, Anchor, AnchorState};
use super::encode::write_body;
use super::format::{
    chain_hash, decode_line, encode_line, encode_line_with, BodyOut, Entry, Event, FlowId, Hash,
    UnixMillis,
};
use super::key::SealKey;
use super::lock::lock_dir;
use super::reader::{last_line, list_segments, segment_path, sync_dir, LineEnd, LineReader};
use super::{io_err, ArchiveError};

/// Flows with a gap whose later messages are marked incomplete. At the bound a further gap
/// is still recorded, but its flow's later messages are not marked (counted in
/// [`Archive::untracked_gaps`]).
const MAX_GAPPED_FLOWS: usize = 65_536;

/// Tuning of an [`Archive`]. Times are in milliseconds of the `time` arguments the caller
/// passes (normally wall-clock time).
#[derive(Clone, Debug)]
pub struct ArchiveConfig {
    /// Start a new segment before a record once the current one holds this many bytes.
    pub segment_max_bytes: u64,
    /// Start a new segment once the current one's first record is this old.
    pub segment_max_age_ms: u64,
    /// Seal once the oldest unsealed record is this old (checked on append and tick).
    pub seal_interval_ms: u64,
    /// Seal once this many records are unsealed.
    pub seal_max_records: u64,
    /// Records are collected in memory and written in one `write` once this many bytes are
    /// buffered (0: one `write` per record). The buffer holds at most this plus one record.
    pub write_buffer_bytes: usize,
    /// Write the buffer once its oldest record is this old (checked on append and tick).
    pub flush_interval_ms: u64,
}

impl Default for ArchiveConfig {
    fn default() -> ArchiveConfig {
        ArchiveConfig {
            segment_max_bytes: 64 << 20,
            segment_max_age_ms: 24 * 3600 * 1000,
            seal_interval_ms: 10_000,
            seal_max_records: 100_000,
            write_buffer_bytes: 64 << 10,
            flush_interval_ms: 1000,
        }
    }
}

/// What [`Archive::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The directory held no archive; a new one was started.
    pub created: bool,
    /// The last shutdown was unclean; a recovery record was written.
    pub recovery: Option<RecoveryInfo>,
    /// Segments a crash left behind after a retention cut, deleted now.
    pub removed_segments: Vec<u64>,
}

/// The content of a recovery record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryInfo {
    pub segment: u64,
    /// Where the last segment was cut (its length when nothing had to be cut).
    pub offset: u64,
    pub truncated_bytes: u64,
    pub last_good_seq: u64,
}

/// What [`Archive::retain`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_segments: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Start {
    segment: u64,
    seq: u64,
    prev: Hash,
}

const GENESIS: Start = Start {
    segment: 1,
    seq: 0,
    prev: Hash::ZERO,
};

/// An open archive directory; the only writer (it holds the directory's lock).
pub struct Archive {
    dir: PathBuf,
    /// Holds the directory's `flock` until the archive is dropped (see [`lock_dir`]).
    _lock: File,
    key: SealKey,
    config: ArchiveConfig,
    file: File,
    segment: u64,
    /// Bytes of the current segment, buffered ones included.
    segment_len: u64,
    segment_first_time: Option<UnixMillis>,
    next_seq: u64,
    head: Hash,
    buf: Vec<u8>,
    buf_first_time: Option<UnixMillis>,
    oldest_unsealed: Option<UnixMillis>,
    unsealed: u64,
    start: Start,
    gapped: HashSet<FlowId>,
    untracked_gaps: u64,
    poisoned: bool,
    closed: bool,
}

#[derive(Deserialize)]
struct SeqTime {
    seq: u64,
    time: UnixMillis,
}

impl Archive {
    /// Opens the archive in `dir` (created if absent), recovering from an unclean shutdown.
    ///
    /// Refuses (rather than repairs) what a crash cannot explain: segments without a head
    /// file, a head file that does not authenticate, missing sealed data, and a bad record in
    /// any segment but the last.
    pub fn open(
        dir: impl AsRef<Path>,
        key: SealKey,
        config: ArchiveConfig,
        now: UnixMillis,
    ) -> Result<(Archive, OpenReport), ArchiveError> {
        let dir = dir.as_ref().to_owned();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // Before reading anything: another writer could be appending or recovering.
        let lock = lock_dir(&dir)?;
        let segments = list_segments(&dir)?;
        match read_anchor(&dir, &key)? {
            AnchorState::Valid(anchor) => {
                Archive::resume(dir, lock, key, config, now, &anchor, &segments)
            }
            AnchorState::Invalid(reason) => Err(ArchiveError::AnchorInvalid { dir, reason }),
            AnchorState::Missing if segments.is_empty() || only_torn_genesis(&dir, &segments) => {
                Archive::create(dir, lock, key, config, now)
            }
            AnchorState::Missing => Err(ArchiveError::AnchorMissing { dir }),
        }
    }

    fn create(
        dir: PathBuf,
        lock: File,
        key: SealKey,
        config: ArchiveConfig,
        now: UnixMillis,
    ) -> Result<(Archive, OpenReport), ArchiveError> {
        let path = segment_path(&dir, GENESIS.segment);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut archive = Archive::new(dir, lock, key, config, file, GENESIS);
        archive.seal_inner(now, false)?;
        Ok((
            archive,
            OpenReport {
                created: true,
                ..OpenReport::default()
            },
        ))
    }

    fn new(
        dir: PathBuf,
        lock: File,
        key: SealKey,
        config: ArchiveConfig,
        file: File,
        start: Start,
    ) -> Archive {
        Archive {
            dir,
            _lock: lock,
            key,
            buf: Vec::with_capacity(config.write_buffer_bytes.min(16 << 20)),
            config,
            file,
            segment: start.segment,
            segment_len: 0,
            segment_first_time: None,
            next_seq: start.seq,
            head: start.prev,
            buf_first_time: None,
            oldest_unsealed: None,
            unsealed: 0,
            start,
            gapped: HashSet::new(),
            untracked_gaps: 0,
            poisoned: false,
            closed: false,
        }
    }

    fn resume(
        dir: PathBuf,
        lock: File,
        key: SealKey,
        config: ArchiveConfig,
        now: UnixMillis,
        anchor: &Anchor,
        segments: &[u64],
    ) -> Result<(Archive, OpenReport), ArchiveError> {
        let corrupt = |segment, offset, what: &str| ArchiveError::Corrupt {
            segment,
            offset,
            what: what.to_owned(),
        };
        let mut report = OpenReport::default();
        for &s in segments.iter().filter(|&&s| s < anchor.start_segment) {
            let path = segment_path(&dir, s);
            fs::remove_file(&path).map_err(io_err(&path))?;
            report.removed_segments.push(s);
        }
        if !report.removed_segments.is_empty() {
            sync_dir(&dir)?;
        }
        let tail: Vec<u64> = segments
            .iter()
            .copied()
            .filter(|&s| s >= anchor.segment)
            .collect();
        if tail.first() != Some(&anchor.segment) {
            return Err(corrupt(
                anchor.segment,
                anchor.end,
                "the segment holding the last seal is missing",
            ));
        }
        for (i, pair) in tail.windows(2).enumerate() {
            if let [a, b] = pair {
                if *b != a + 1 {
                    return Err(corrupt(
                        a + 1,
                        0,
                        &format!("segment missing (after {} of {})", i + 1, tail.len()),
                    ));
                }
            }
        }

        let last = tail.last().copied().unwrap_or(anchor.segment);
        let (head, next_seq, cut) = scan_unsealed(&dir, anchor, &tail)?;

        let path = segment_path(&dir, last);
        if let Some((offset, _)) = cut {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            file.set_len(offset)
                .and_then(|()| file.sync_all())
                .map_err(io_err(&path))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let segment_len = file.metadata().map_err(io_err(&path))?.len();
        let start = Start {
            segment: anchor.start_segment,
            seq: anchor.start_seq,
            prev: anchor.start_prev,
        };
        let mut archive = Archive::new(dir, lock, key, config, file, start);
        archive.segment = last;
        archive.segment_len = segment_len;
        archive.segment_first_time = first_time(&path).map_err(io_err(&path))?;
        archive.next_seq = next_seq;
        archive.head = head;

        let clean = anchor.closed && next_seq == anchor.seq + 1 && cut.is_none();
        if !clean {
            let (offset, truncated_bytes) = cut.unwrap_or((segment_len, 0));
            let info = RecoveryInfo {
                segment: last,
                offset,
                truncated_bytes,
                last_good_seq: next_seq - 1,
            };
            let event = Event::Recovery {
                segment: info.segment,
                offset: info.offset,
                truncated_bytes: info.truncated_bytes,
                last_good_seq: info.last_good_seq,
                mac: Hash::ZERO,
            };
            archive.push_housekeeping(now, event)?;
            archive.seal_inner(now, false)?;
            report.recovery = Some(info);
        }
        Ok((archive, report))
    }

    /// Records one entry; returns its sequence number. May rotate (before), write the
    /// buffer and seal (after), as [`ArchiveConfig`] says.
    pub fn append(&mut self, time: UnixMillis, entry: &Entry<'_>) -> Result<u64, ArchiveError> {
        self.usable()?;
        if self.rotation_due(time) {
            self.rotate(time)?;
        }
        let flow = entry.flow();
        let incomplete = matches!(entry, Entry::Message { .. })
            && !self.gapped.is_empty()
            && self.gapped.contains(&flow);
        let seq = self.push_entry(time, incomplete, entry)?;
        match entry {
            Entry::FlowGap { .. } => {
                if self.gapped.len() < MAX_GAPPED_FLOWS || self.gapped.contains(&flow) {
                    self.gapped.insert(flow);
                } else {
                    self.untracked_gaps += 1;
                }
            }
            Entry::FlowEnd { .. } | Entry::FlowReset { .. } => {
                self.gapped.remove(&flow);
            }
            Entry::Message { .. } | Entry::FlowBlocked { .. } | Entry::FlowAnomaly { .. } => {}
        }
        if self.unsealed >= self.config.seal_max_records || self.seal_time_due(time) {
            self.seal_inner(time, false)?;
        } else if self.buf.len() >= self.config.write_buffer_bytes || self.flush_time_due(time) {
            self.flush()?;
        }
        Ok(seq)
    }

    /// Does the time-driven work (seal, write the buffer, rotate by age) when no records
    /// arrive; call it about once a second.
    pub fn tick(&mut self, now: UnixMillis) -> Result<(), ArchiveError> {
        self.usable()?;
        if self.seal_time_due(now) {
            self.seal_inner(now, false)?;
        } else if self.flush_time_due(now) {
            self.flush()?;
        }
        if self.rotation_due(now) {
            self.rotate(now)?;
        }
        Ok(())
    }

    /// Writes the buffered records (no fsync).
    pub fn flush(&mut self) -> Result<(), ArchiveError> {
        self.usable()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        // One write of whole records: a kill tears at most the last one, which open cuts.
        if let Err(e) = self.file.write_all(&self.buf) {
            self.poisoned = true;
            return Err(io_err(segment_path(&self.dir, self.segment))(e));
        }
        self.buf.clear();
        self.buf_first_time = None;
        Ok(())
    }

    /// Seals now: writes the buffer and a seal record, fsyncs, updates the head file.
    pub fn seal(&mut self, now: UnixMillis) -> Result<(), ArchiveError> {
        self.usable()?;
        self.seal_inner(now, false)
    }

    /// Seals with a closing seal, so that the next open finds a clean shutdown.
    pub fn close(mut self, now: UnixMillis) -> Result<(), ArchiveError> {
        self.usable()?;
        self.seal_inner(now, true)?;
        self.closed = true;
        Ok(())
    }

    /// Deletes the oldest segments whose newest record is older than `now - max_age_ms`
    /// (never the current segment, never one after a segment that is kept), after recording
    /// and sealing the cut.
    pub fn retain(
        &mut self,
        now: UnixMillis,
        max_age_ms: u64,
    ) -> Result<RetentionReport, ArchiveError> {
        self.usable()?;
        let cutoff = now.saturating_sub(max_age_ms);
        let mut cut: Option<(u64, u64, Hash)> = None;
        let mut expected = self.start.segment;
        for s in list_segments(&self.dir)? {
            if s < expected {
                continue;
            }
            if s != expected || s >= self.segment {
                break;
            }
            let path = segment_path(&self.dir, s);
            let line = last_line(&path).map_err(io_err(&path))?;
            let last = line.as_deref().and_then(decode_line).and_then(|frame| {
                let st = serde_json::from_slice::<SeqTime>(frame.body).ok()?;
                Some((st, frame.stored))
            });
            match last {
                Some((st, hash)) if st.time < cutoff => cut = Some((s, st.seq, hash)),
                _ => break,
            }
            expected += 1;
        }
        let Some((last_deleted, last_seq, last_hash)) = cut else {
            return Ok(RetentionReport::default());
        };
        let first = self.start.segment;
        let start = Start {
            segment: last_deleted + 1,
            seq: last_seq.saturating_add(1),
            prev: last_hash,
        };
        let event = Event::Retention {
            cutoff,
            deleted_from: first,
            deleted_to: last_deleted,
            first_segment: start.segment,
            first_seq: start.seq,
            first_prev: start.prev,
            mac: Hash::ZERO,
        };
        self.push_housekeeping(now, event)?;
        self.start = start;
        self.seal_inner(now, false)?;
        let mut report = RetentionReport::default();
        for s in first..=last_deleted {
            let path = segment_path(&self.dir, s);
            match fs::remove_file(&path) {
                Ok(()) => report.deleted_segments.push(s),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(path)(e)),
            }
        }
        sync_dir(&self.dir)?;
        Ok(report)
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last record.
    pub fn head(&self) -> Hash {
        self.head
    }

    /// The number of the segment being written.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// Gaps whose flow's later messages could not be marked incomplete (see
    /// [`MAX_GAPPED_FLOWS`]).
    pub fn untracked_gaps(&self) -> u64 {
        self.untracked_gaps
    }

    fn usable(&self) -> Result<(), ArchiveError> {
        if self.poisoned {
            Err(ArchiveError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn rotation_due(&self, time: UnixMillis) -> bool {
        self.segment_len > 0
            && (self.segment_len >= self.config.segment_max_bytes
                || self.segment_first_time.is_some_and(|first| {
                    time.saturating_sub(first) >= self.config.segment_max_age_ms
                }))
    }

    fn seal_time_due(&self, time: UnixMillis) -> bool {
        self.oldest_unsealed
            .is_some_and(|t| time.saturating_sub(t) >= self.config.seal_interval_ms)
    }

    fn flush_time_due(&self, time: UnixMillis) -> bool {
        self.buf_first_time
            .is_some_and(|t| time.saturating_sub(t) >= self.config.flush_interval_ms)
    }

    fn push<E: Serialize>(
        &mut self,
        time: UnixMillis,
        incomplete: bool,
        event: &E,
    ) -> Result<u64, ArchiveError> {
        let seq = self.next_seq;
        let before = self.buf.len();
        let prev = self.head;
        let body = BodyOut {
            seq,
            time,
            incomplete,
            event,
        };
        self.head = encode_line(&mut self.buf, &body, |bytes| chain_hash(&prev, bytes))?;
        self.pushed(time, before);
        Ok(seq)
    }

    /// [`Archive::push`] for the controller's entries, through the direct encoder.
    fn push_entry(
        &mut self,
        time: UnixMillis,
        incomplete: bool,
        entry: &Entry<'_>,
    ) -> Result<u64, ArchiveError> {
        let seq = self.next_seq;
        let before = self.buf.len();
        let prev = self.head;
        self.head = encode_line_with(
            &mut self.buf,
            |out| {
                write_body(out, seq, time, incomplete, entry);
                Ok(())
            },
            |bytes| chain_hash(&prev, bytes),
        )?;
        self.pushed(time, before);
        Ok(seq)
    }

    /// Book-keeping after a record was added to the buffer at `before`.
    fn pushed(&mut self, time: UnixMillis, before: usize) {
        self.segment_len += (self.buf.len() - before) as u64;
        self.next_seq += 1;
        self.unsealed += 1;
        self.buf_first_time.get_or_insert(time);
        self.oldest_unsealed.get_or_insert(time);
        self.segment_first_time.get_or_insert(time);
    }

    fn push_housekeeping(&mut self, time: UnixMillis, event: Event) -> Result<u64, ArchiveError> {
        let event = event.authenticate(&self.key, self.next_seq, time);
        self.push(time, false, &event)
    }

    fn seal_inner(&mut self, time: UnixMillis, closing: bool) -> Result<(), ArchiveError> {
        let seal = Event::Seal {
            head: self.head,
            closing,
            mac: Hash::ZERO,
        };
        let seq = self.push_housekeeping(time, seal)?;
        self.flush()?;
        if let Err(e) = self.file.sync_data() {
            self.poisoned = true;
            return Err(io_err(segment_path(&self.dir, self.segment))(e));
        }
        let anchor = Anchor {
            segment: self.segment,
            seq,
            hash: self.head,
            end: self.segment_len,
            closed: closing,
            start_segment: self.start.segment,
            start_seq: self.start.seq,
            start_prev: self.start.prev,
        };
        if let Err(e) = write_anchor(&self.dir, &self.key, &anchor) {
            self.poisoned = true;
            return Err(e);
        }
        self.oldest_unsealed = None;
        self.unsealed = 0;
        Ok(())
    }

    fn rotate(&mut self, time: UnixMillis) -> Result<(), ArchiveError> {
        self.seal_inner(time, false)?;
        let Some(next) = self.segment.checked_add(1) else {
            self.poisoned = true;
            let what = "no segment number left".to_owned();
            return Err(ArchiveError::Corrupt {
                segment: self.segment,
                offset: self.segment_len,
                what,
            });
        };
        let path = segment_path(&self.dir, next);
        let file = match OpenOptions::new().append(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(e) => {
                self.poisoned = true;
                return Err(io_err(path)(e));
            }
        };
        sync_dir(&self.dir)?;
        self.file = file;
        self.segment = next;
        self.segment_len = 0;
        self.segment_first_time = None;
        Ok(())
    }
}

impl Drop for Archive {
    /// Writes what is buffered (no seal: the next open records an unclean shutdown).
    fn drop(&mut self) {
        if !self.closed && !self.poisoned {
            let _ = self.flush();
        }
    }
}

/// Where the last segment is cut after a crash, and how many bytes go.
type Cut = (u64, u64);

/// Reads the records after the last seal and keeps the longest prefix that chains: returns
/// the chain head, the next sequence number and, when the last segment must be cut, where
/// and how many bytes.
fn scan_unsealed(
    dir: &Path,
    anchor: &Anchor,
    tail: &[u64],
) -> Result<(Hash, u64, Option<Cut>), ArchiveError> {
    let corrupt = |segment, offset, what: &str| ArchiveError::Corrupt {
        segment,
        offset,
        what: what.to_owned(),
    };
    let last = tail.last().copied().unwrap_or(anchor.segment);
    // Records after the last seal: keep the longest prefix that chains.
    let mut head = anchor.hash;
    let mut next_seq = anchor.seq + 1;
    let mut cut = None;
    'segments: for &s in tail {
        let path = segment_path(dir, s);
        let from = if s == anchor.segment { anchor.end } else { 0 };
        let len = fs::metadata(&path).map_err(io_err(&path))?.len();
        if len < from {
            return Err(corrupt(s, len, "sealed records are missing"));
        }
        let mut lines = LineReader::open(&path, from).map_err(io_err(&path))?;
        while let Some((offset, _, end)) = lines.next_line().map_err(io_err(&path))? {
            let good = (end == LineEnd::Full)
                .then(|| decode_line(lines.line()))
                .flatten()
                .filter(|frame| chain_hash(&head, frame.body) == frame.stored)
                .and_then(|frame| {
                    Some((
                        frame.stored,
                        serde_json::from_slice::<SeqTime>(frame.body).ok()?,
                    ))
                })
                .filter(|(_, st)| st.seq == next_seq);
            match good {
                Some((hash, _)) => {
                    head = hash;
                    next_seq += 1;
                }
                None if s == last => {
                    cut = Some((offset, len - offset));
                    break 'segments;
                }
                None => {
                    return Err(corrupt(
                        s,
                        offset,
                        "bad record before the last segment (not a crash)",
                    ))
                }
            }
        }
    }

    Ok((head, next_seq, cut))
}

/// A crash while creating an archive leaves segment 1 with at most a torn genesis seal and
/// no head file: that is safe to start over.
fn only_torn_genesis(dir: &Path, segments: &[u64]) -> bool {
    if segments != [GENESIS.segment] {
        return false;
    }
    let path = segment_path(dir, GENESIS.segment);
    let Ok(mut lines) = LineReader::open(&path, 0) else {
        return false;
    };
    match lines.next_line() {
        Ok(None | Some((_, _, LineEnd::Torn))) => true,
        Ok(Some((_, _, LineEnd::Full))) => {
            let genesis = decode_line(lines.line())
                .is_some_and(|frame| chain_hash(&Hash::ZERO, frame.body) == frame.stored);
            genesis && matches!(lines.next_line(), Ok(None))
        }
        _ => false,
    }
}

fn first_time(path: &Path) -> io::Result<Option<UnixMillis>> {
    let mut lines = LineReader::open(path, 0)?;
    Ok(match lines.next_line()? {
        Some((_, _, LineEnd::Full)) => decode_line(lines.line())
            .and_then(|frame| serde_json::from_slice::<SeqTime>(frame.body).ok())
            .map(|st| st.time),
        _ => None,
    })
}
