//! Segment files: names, listing, and a bounded line reader.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::format::MAX_LINE_BYTES;
use super::ArchiveError;

const SEGMENT_PREFIX: &str = "archive-";
const SEGMENT_SUFFIX: &str = ".log";

pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{number:06}{SEGMENT_SUFFIX}"))
}

/// Segment numbers present in `dir`, ascending. Other files are ignored.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>, ArchiveError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(super::io_err(dir))? {
        let entry = entry.map_err(super::io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
        else {
            continue;
        };
        if digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = digits.parse::<u64>() {
                // Only the canonical spelling, so one number never has two files.
                if segment_path(dir, n).file_name() == Some(entry.file_name().as_os_str()) {
                    out.push(n);
                }
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// How a line ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineEnd {
    /// Ended with a newline; the bytes are in [`LineReader::line`].
    Full,
    /// The file ended before a newline (a torn write); the bytes are in [`LineReader::line`].
    Torn,
    /// Longer than [`MAX_LINE_BYTES`]: skipped, not kept.
    TooLong,
}

/// Reads lines of at most [`MAX_LINE_BYTES`] bytes, tracking byte offsets.
pub(crate) struct LineReader {
    inner: BufReader<File>,
    offset: u64,
    line: Vec<u8>,
}

impl LineReader {
    pub fn open(path: &Path, offset: u64) -> io::Result<LineReader> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(LineReader {
            inner: BufReader::with_capacity(256 * 1024, file),
            offset,
            line: Vec::new(),
        })
    }

    /// The bytes of the line last returned (newline included for [`LineEnd::Full`]).
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// The next line: its start offset, its length in the file, and how it ended.
    pub fn next_line(&mut self) -> io::Result<Option<(u64, u64, LineEnd)>> {
        self.line.clear();
        let start = self.offset;
        let mut too_long = false;
        loop {
            let avail = match self.inner.fill_buf() {
                Ok(avail) => avail,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                let len = self.offset - start;
                return Ok(match (len, too_long) {
                    (0, _) => None,
                    (_, true) => Some((start, len, LineEnd::TooLong)),
                    (_, false) => Some((start, len, LineEnd::Torn)),
                });
            }
            let (take, done) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            if !too_long && self.line.len() + take <= MAX_LINE_BYTES {
                self.line.extend_from_slice(&avail[..take]);
            } else {
                too_long = true;
                self.line.clear();
            }
            self.inner.consume(take);
            self.offset += take as u64;
            if done {
                let end = if too_long {
                    LineEnd::TooLong
                } else {
                    LineEnd::Full
                };
                return Ok(Some((start, self.offset - start, end)));
            }
        }
    }
}

/// The last newline-terminated line of a file, if the file ends with a newline and that line
/// is at most [`MAX_LINE_BYTES`] long.
pub(crate) fn last_line(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let window = len.min(MAX_LINE_BYTES as u64 + 1);
    file.seek(SeekFrom::Start(len - window))?;
    let mut tail = Vec::new();
    file.take(window).read_to_end(&mut tail)?;
    let Some(body) = tail.strip_suffix(b"\n") else {
        return Ok(None);
    };
    match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => Ok(Some(tail[i + 1..].to_vec())),
        None if window == len => Ok(Some(tail)),
        None => Ok(None),
    }
}

/// Makes a directory entry change (create, rename, delete) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(super::io_err(dir))
}
