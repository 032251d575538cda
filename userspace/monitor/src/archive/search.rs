//! Streaming search and JSON-lines export. Reads one line at a time; does not verify (run
//! [`super::verify`] for that).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::format::{decode_line, Event, Record, UnixMillis};
use super::reader::{list_segments, segment_path, LineEnd, LineReader};
use super::{io_err, ArchiveError};

/// Which records to find. Every criterion that is set must hold; none set finds everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Records at or after this time.
    pub from: Option<UnixMillis>,
    /// Records before this time.
    pub until: Option<UnixMillis>,
    /// The application id (ASCII case-insensitive); matches messages and flow events.
    pub app: Option<String>,
    /// A substring (case-insensitive) of the sender or of a recipient; matches messages.
    pub party: Option<String>,
    /// A substring (case-insensitive) of the body; matches messages.
    pub text: Option<String>,
}

/// The filter with its needles lowercased once.
#[derive(Clone, Debug)]
struct Prepared {
    from: Option<UnixMillis>,
    until: Option<UnixMillis>,
    app: Option<String>,
    party: Option<String>,
    text: Option<String>,
}

impl Filter {
    fn prepare(&self) -> Prepared {
        Prepared {
            from: self.from,
            until: self.until,
            app: self.app.clone(),
            party: self.party.as_deref().map(str::to_lowercase),
            text: self.text.as_deref().map(str::to_lowercase),
        }
    }

    /// Whether `record` meets every criterion.
    pub fn matches(&self, record: &Record) -> bool {
        self.prepare().matches(record)
    }
}

impl Prepared {
    fn matches(&self, record: &Record) -> bool {
        if self.from.is_some_and(|from| record.time < from)
            || self.until.is_some_and(|until| record.time >= until)
        {
            return false;
        }
        if let Some(app) = &self.app {
            if !record
                .event
                .app()
                .is_some_and(|a| a.eq_ignore_ascii_case(app))
            {
                return false;
            }
        }
        if self.party.is_none() && self.text.is_none() {
            return true;
        }
        let Event::Message { message, .. } = &record.event else {
            return false;
        };
        if let Some(party) = &self.party {
            let sender = message
                .sender
                .as_deref()
                .is_some_and(|s| contains_folded(s, party));
            if !sender && !message.recipients.iter().any(|r| contains_folded(r, party)) {
                return false;
            }
        }
        self.text
            .as_deref()
            .is_none_or(|text| contains_folded(&message.body, text))
    }
}

/// Whether `hay` contains `needle` (already lowercased) ignoring case. ASCII text is
/// compared in place; other text is lowercased first.
fn contains_folded(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    if hay.is_ascii() && needle.is_ascii() {
        hay.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    } else {
        hay.to_lowercase().contains(needle)
    }
}

/// One record found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub segment: u64,
    pub offset: u64,
    pub record: Record,
}

/// An iterator over the records that match, in archive order. A line that cannot be read
/// gives one `Err` item ([`ArchiveError::Corrupt`]) and the search goes on; a segment that
/// vanished (retention) is skipped.
pub struct Search {
    dir: PathBuf,
    segments: std::vec::IntoIter<u64>,
    current: Option<(u64, LineReader)>,
    filter: Prepared,
}

/// Searches the archive in `dir`, streaming (one line in memory at a time).
pub fn search(dir: &Path, filter: &Filter) -> Result<Search, ArchiveError> {
    Ok(Search {
        dir: dir.to_owned(),
        segments: list_segments(dir)?.into_iter(),
        current: None,
        filter: filter.prepare(),
    })
}

impl Search {
    /// The next matching line as stored, with where it is and its record.
    fn next_line(&mut self, mut emit: impl FnMut(&[u8], Hit)) -> Option<Result<(), ArchiveError>> {
        loop {
            let Some((segment, lines)) = &mut self.current else {
                let segment = self.segments.next()?;
                let path = segment_path(&self.dir, segment);
                match LineReader::open(&path, 0) {
                    Ok(lines) => self.current = Some((segment, lines)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Some(Err(io_err(path)(e))),
                }
                continue;
            };
            let segment = *segment;
            let next = match lines.next_line() {
                Ok(next) => next,
                Err(e) => {
                    self.current = None;
                    return Some(Err(io_err(segment_path(&self.dir, segment))(e)));
                }
            };
            let Some((offset, _, end)) = next else {
                self.current = None;
                continue;
            };
            let corrupt = |what: &str| ArchiveError::Corrupt {
                segment,
                offset,
                what: what.to_owned(),
            };
            if end != LineEnd::Full {
                return Some(Err(corrupt("torn or over-long line")));
            }
            let line = lines.line();
            let Some(frame) = decode_line(line) else {
                return Some(Err(corrupt("malformed line")));
            };
            let record = match serde_json::from_slice::<Record>(frame.body) {
                Ok(record) => record,
                Err(e) => return Some(Err(corrupt(&format!("record body: {e}")))),
            };
            if self.filter.matches(&record) {
                emit(
                    line,
                    Hit {
                        segment,
                        offset,
                        record,
                    },
                );
                return Some(Ok(()));
            }
        }
    }
}

impl Iterator for Search {
    type Item = Result<Hit, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut hit = None;
        match self.next_line(|_, h| hit = Some(h))? {
            Ok(()) => hit.map(Ok),
            Err(e) => Some(Err(e)),
        }
    }
}

/// What [`export`] wrote and skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    pub records: u64,
    /// Lines that could not be read (run verify to learn more).
    pub skipped: u64,
}

/// Writes each matching record's line exactly as stored (`{"h":…,"r":…}`, one JSON object per
/// line, so the export can be checked against the archive) to `out`.
pub fn export(
    dir: &Path,
    filter: &Filter,
    out: &mut dyn Write,
) -> Result<ExportStats, ArchiveError> {
    let mut stats = ExportStats::default();
    let mut search = search(dir, filter)?;
    let mut written: io::Result<()> = Ok(());
    while let Some(step) = search.next_line(|line, _| written = out.write_all(line)) {
        match step {
            Ok(()) => {
                std::mem::replace(&mut written, Ok(())).map_err(io_err("export output"))?;
                stats.records += 1;
            }
            Err(ArchiveError::Corrupt { .. }) => stats.skipped += 1,
            Err(e) => return Err(e),
        }
    }
    out.flush().map_err(io_err("export output"))?;
    Ok(stats)
}
