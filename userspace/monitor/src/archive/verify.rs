//! Offline verification of an archive directory (read-only, streaming).

use std::fmt;
use std::path::Path;

use super::anchor::{read_anchor, Anchor, AnchorState};
use super::format::{chain_hash, decode_line, Event, Hash, Record, UnixMillis};
use super::key::SealKey;
use super::reader::{list_segments, segment_path, LineEnd, LineReader};
use super::{io_err, ArchiveError};

/// At most this many problems are kept in a report; [`VerifyReport::problems_total`] counts
/// them all.
pub const MAX_PROBLEMS: usize = 1000;
/// At most this many recovery and retention notes are kept each.
const MAX_NOTES: usize = 10_000;

/// What is wrong, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub segment: Option<u64>,
    /// Byte offset of the line in the segment.
    pub offset: Option<u64>,
    /// The record's sequence number as stored, when readable.
    pub seq: Option<u64>,
    pub kind: ProblemKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// No head file: the newest segments could have been deleted unnoticed.
    AnchorMissing,
    /// The head file does not authenticate (edited, or verified with another key).
    AnchorInvalid { reason: String },
    /// No segment file at all.
    NoSegments,
    /// Segment files `from..=to` are missing inside the retained range.
    MissingSegments { from: u64, to: u64 },
    /// Not a record line (framing, hash spelling, JSON) or longer than the line limit.
    Malformed { reason: String },
    /// The last segment ends in a partial line: a crash that no open has recovered yet.
    TornTail,
    /// The record's stored hash is not SHA-256(previous hash, body): it or the chain changed.
    HashMismatch,
    /// The sequence number jumped forward: records were deleted.
    MissingRecords { expected: u64, found: u64 },
    /// The sequence number went back: records were reordered, duplicated or inserted.
    OutOfOrder { expected: u64, found: u64 },
    /// A seal whose MAC is wrong or whose head is not the chain head.
    BadSeal,
    /// A recovery or retention record whose MAC is wrong.
    BadHousekeeping,
    /// The last seal named by the head file was not found: sealed records were truncated or
    /// the segments holding them deleted.
    SealedHeadMissing { segment: u64, seq: u64 },
    /// The record at the head file's sequence number is not the seal it names.
    SealedHeadMismatch,
    /// The chain starts later than segment 1 without a retention record that says so.
    UnexplainedStart { segment: u64, seq: u64 },
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::AnchorMissing => f.write_str("head file archive.head missing"),
            ProblemKind::AnchorInvalid { reason } => write!(f, "head file invalid: {reason}"),
            ProblemKind::NoSegments => f.write_str("no segment files"),
            ProblemKind::MissingSegments { from, to } => {
                write!(f, "segments {from}..={to} missing")
            }
            ProblemKind::Malformed { reason } => write!(f, "malformed line: {reason}"),
            ProblemKind::TornTail => {
                f.write_str("torn last line (crash not yet recovered by open)")
            }
            ProblemKind::HashMismatch => {
                f.write_str("hash chain broken: record or predecessor changed")
            }
            ProblemKind::MissingRecords { expected, found } => {
                write!(f, "records missing: expected seq {expected}, found {found}")
            }
            ProblemKind::OutOfOrder { expected, found } => {
                write!(
                    f,
                    "record out of order: expected seq {expected}, found {found}"
                )
            }
            ProblemKind::BadSeal => f.write_str("seal does not authenticate"),
            ProblemKind::BadHousekeeping => {
                f.write_str("recovery or retention record does not authenticate")
            }
            ProblemKind::SealedHeadMissing { segment, seq } => {
                write!(f, "last seal (segment {segment}, seq {seq}) missing: sealed records truncated or deleted")
            }
            ProblemKind::SealedHeadMismatch => {
                f.write_str("record differs from the last seal named by the head file")
            }
            ProblemKind::UnexplainedStart { segment, seq } => {
                write!(
                    f,
                    "chain starts at segment {segment} seq {seq} without a retention record"
                )
            }
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(segment) = self.segment {
            write!(f, "segment {segment}")?;
            if let Some(offset) = self.offset {
                write!(f, " offset {offset}")?;
            }
            if let Some(seq) = self.seq {
                write!(f, " seq {seq}")?;
            }
            f.write_str(": ")?;
        }
        write!(f, "{}", self.kind)
    }
}

/// An authenticated recovery record: a legitimate, recorded loss after a crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryNote {
    /// Where the recovery record is.
    pub segment: u64,
    pub seq: u64,
    pub time: UnixMillis,
    /// What it says was cut.
    pub cut_segment: u64,
    pub cut_offset: u64,
    pub truncated_bytes: u64,
    pub last_good_seq: u64,
}

/// An authenticated retention record: a legitimate cut of old segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionNote {
    pub segment: u64,
    pub seq: u64,
    pub time: UnixMillis,
    pub cutoff: UnixMillis,
    pub deleted_from: u64,
    pub deleted_to: u64,
}

/// The outcome of [`verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segments read, ascending.
    pub segments: Vec<u64>,
    /// Segments before the retained start (a retention cut a crash interrupted); not read.
    pub ignored_segments: Vec<u64>,
    pub records: u64,
    /// Seals that authenticate.
    pub seals: u64,
    pub last_sealed_seq: Option<u64>,
    /// Records after the last good seal: chained but not yet authenticated.
    pub unsealed_records: u64,
    pub recoveries: Vec<RecoveryNote>,
    pub retentions: Vec<RetentionNote>,
    /// The first [`MAX_PROBLEMS`] problems, in file order.
    pub problems: Vec<Problem>,
    pub problems_total: u64,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems_total == 0
    }

    /// Whether any problem is of the kind `pred` accepts.
    pub fn has(&self, pred: impl Fn(&ProblemKind) -> bool) -> bool {
        self.problems.iter().any(|p| pred(&p.kind))
    }

    fn problem(
        &mut self,
        segment: Option<u64>,
        offset: Option<u64>,
        seq: Option<u64>,
        kind: ProblemKind,
    ) {
        self.problems_total += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem {
                segment,
                offset,
                seq,
                kind,
            });
        }
    }
}

/// The chain state while reading.
struct Walk<'a> {
    key: &'a SealKey,
    anchor: Option<Anchor>,
    /// Next expected sequence number and previous hash; `None` after a break that leaves
    /// nothing to compare against (the next record is taken as it is).
    expect: Option<(u64, Hash)>,
    anchor_seen: bool,
    last_retention: Option<(u64, u64, Hash)>,
}

/// Checks the archive in `dir` with `key`. Errors only when the directory cannot be read;
/// everything wrong inside it is a [`Problem`] in the report.
pub fn verify(dir: &Path, key: &SealKey) -> Result<VerifyReport, ArchiveError> {
    let mut report = VerifyReport::default();
    let all = list_segments(dir)?;
    let anchor = match read_anchor(dir, key)? {
        AnchorState::Valid(anchor) => Some(anchor),
        AnchorState::Missing => {
            report.problem(None, None, None, ProblemKind::AnchorMissing);
            None
        }
        AnchorState::Invalid(reason) => {
            report.problem(None, None, None, ProblemKind::AnchorInvalid { reason });
            None
        }
    };
    let (start_segment, expect) = match anchor {
        Some(a) => (a.start_segment, Some((a.start_seq, a.start_prev))),
        None if all.first() == Some(&1) => (1, Some((0, Hash::ZERO))),
        None => (all.first().copied().unwrap_or(1), None),
    };
    report.ignored_segments = all.iter().copied().filter(|&s| s < start_segment).collect();
    let segments: Vec<u64> = all.into_iter().filter(|&s| s >= start_segment).collect();
    if segments.is_empty() {
        report.problem(None, None, None, ProblemKind::NoSegments);
    }
    let mut walk = Walk {
        key,
        anchor,
        expect,
        anchor_seen: false,
        last_retention: None,
    };
    let mut next_segment = start_segment;
    let last = segments.last().copied();
    for &s in &segments {
        if s != next_segment {
            report.problem(
                Some(s),
                None,
                None,
                ProblemKind::MissingSegments {
                    from: next_segment,
                    to: s - 1,
                },
            );
            // Reported once; the chain picks up at this segment's first record.
            walk.expect = None;
        }
        next_segment = s.saturating_add(1);
        report.segments.push(s);
        let path = segment_path(dir, s);
        let mut lines = LineReader::open(&path, 0).map_err(io_err(&path))?;
        while let Some((offset, len, end)) = lines.next_line().map_err(io_err(&path))? {
            match end {
                LineEnd::Full => walk.record(&mut report, s, offset, offset + len, lines.line()),
                LineEnd::Torn if Some(s) == last => {
                    report.problem(Some(s), Some(offset), None, ProblemKind::TornTail);
                }
                LineEnd::Torn => {
                    let reason = "segment ends inside a line".to_owned();
                    report.problem(
                        Some(s),
                        Some(offset),
                        None,
                        ProblemKind::Malformed { reason },
                    );
                }
                LineEnd::TooLong => {
                    let reason = format!("line of {len} bytes is over the limit");
                    report.problem(
                        Some(s),
                        Some(offset),
                        None,
                        ProblemKind::Malformed { reason },
                    );
                    walk.expect = None;
                }
            }
        }
    }
    if let Some(a) = walk.anchor {
        if !walk.anchor_seen {
            let kind = ProblemKind::SealedHeadMissing {
                segment: a.segment,
                seq: a.seq,
            };
            report.problem(Some(a.segment), Some(a.end), Some(a.seq), kind);
        }
        let start = (a.start_segment, a.start_seq, a.start_prev);
        if start != (1, 0, Hash::ZERO) && walk.last_retention != Some(start) {
            let kind = ProblemKind::UnexplainedStart {
                segment: a.start_segment,
                seq: a.start_seq,
            };
            report.problem(Some(a.start_segment), None, Some(a.start_seq), kind);
        }
    }
    Ok(report)
}

impl Walk<'_> {
    fn record(
        &mut self,
        report: &mut VerifyReport,
        segment: u64,
        offset: u64,
        end: u64,
        line: &[u8],
    ) {
        let at = (Some(segment), Some(offset));
        let Some(frame) = decode_line(line) else {
            let reason = "not a {\"h\":…,\"r\":…} line".to_owned();
            report.problem(at.0, at.1, None, ProblemKind::Malformed { reason });
            self.expect = None;
            return;
        };
        let parsed = serde_json::from_slice::<Record>(frame.body);
        let seq = parsed.as_ref().ok().map(|r| r.seq);
        let prev = self.expect.map(|(_, prev)| prev);
        if let Some((expected, prev)) = self.expect {
            let chained = chain_hash(&prev, frame.body) == frame.stored;
            let kind = match seq {
                Some(found) if found > expected => {
                    Some(ProblemKind::MissingRecords { expected, found })
                }
                Some(found) if found < expected => {
                    Some(ProblemKind::OutOfOrder { expected, found })
                }
                _ if !chained => Some(ProblemKind::HashMismatch),
                _ => None,
            };
            if let Some(kind) = kind {
                report.problem(at.0, at.1, seq, kind);
            }
        }
        let record = match parsed {
            Ok(record) => record,
            Err(e) => {
                report.problem(
                    at.0,
                    at.1,
                    None,
                    ProblemKind::Malformed {
                        reason: format!("record body: {e}"),
                    },
                );
                self.expect = None;
                return;
            }
        };
        self.expect = Some((record.seq.saturating_add(1), frame.stored));
        report.records += 1;
        report.unsealed_records += 1;

        self.note_event(report, segment, at.1, prev, &record);

        if let Some(a) = self.anchor {
            if record.seq == a.seq && !self.anchor_seen {
                self.anchor_seen = true;
                let is_seal = matches!(record.event, Event::Seal { .. });
                if segment != a.segment || end != a.end || frame.stored != a.hash || !is_seal {
                    report.problem(at.0, at.1, seq, ProblemKind::SealedHeadMismatch);
                }
            }
        }
    }

    /// Checks and notes seals, recoveries and retention cuts.
    fn note_event(
        &mut self,
        report: &mut VerifyReport,
        segment: u64,
        offset: Option<u64>,
        prev: Option<Hash>,
        record: &Record,
    ) {
        let at = (Some(segment), offset);
        let seq = Some(record.seq);
        let authentic = record.event.authentic(self.key, record.seq, record.time);
        match &record.event {
            Event::Seal { head, .. } => {
                if authentic && prev.is_none_or(|prev| prev == *head) {
                    report.seals += 1;
                    report.last_sealed_seq = Some(record.seq);
                    report.unsealed_records = 0;
                } else {
                    report.problem(at.0, at.1, seq, ProblemKind::BadSeal);
                }
            }
            Event::Recovery {
                segment: cut_segment,
                offset: cut_offset,
                truncated_bytes,
                last_good_seq,
                ..
            } => {
                if !authentic {
                    report.problem(at.0, at.1, seq, ProblemKind::BadHousekeeping);
                } else if report.recoveries.len() < MAX_NOTES {
                    report.recoveries.push(RecoveryNote {
                        segment,
                        seq: record.seq,
                        time: record.time,
                        cut_segment: *cut_segment,
                        cut_offset: *cut_offset,
                        truncated_bytes: *truncated_bytes,
                        last_good_seq: *last_good_seq,
                    });
                }
            }
            Event::Retention {
                cutoff,
                deleted_from,
                deleted_to,
                first_segment,
                first_seq,
                first_prev,
                ..
            } => {
                if authentic {
                    self.last_retention = Some((*first_segment, *first_seq, *first_prev));
                    if report.retentions.len() < MAX_NOTES {
                        report.retentions.push(RetentionNote {
                            segment,
                            seq: record.seq,
                            time: record.time,
                            cutoff: *cutoff,
                            deleted_from: *deleted_from,
                            deleted_to: *deleted_to,
                        });
                    }
                } else {
                    report.problem(at.0, at.1, seq, ProblemKind::BadHousekeeping);
                }
            }
            _ => {}
        }
    }
}
