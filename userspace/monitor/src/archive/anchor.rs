//! The head file `archive.head`: where the last seal is and where the retained chain starts,
//! framed like a record but with `h` an HMAC of the body instead of a chain hash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::format::{decode_line, encode_line, Hash};
use super::key::SealKey;
use super::reader::sync_dir;
use super::ArchiveError;

pub(crate) const ANCHOR_FILE: &str = "archive.head";
const ANCHOR_TMP: &str = "archive.head.tmp";
const ANCHOR_DOMAIN: &str = "imfw-archive/head/v1";
/// A head file is a few hundred bytes; anything larger is not ours.
const ANCHOR_MAX: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Anchor {
    /// The segment holding the last seal record.
    pub segment: u64,
    /// The last seal's sequence number, its record hash and the offset just after it.
    pub seq: u64,
    pub hash: Hash,
    pub end: u64,
    /// The last seal was written by a clean close.
    pub closed: bool,
    /// Where the retained chain starts (segment 1, seq 0, zero hash until a retention cut).
    pub start_segment: u64,
    pub start_seq: u64,
    pub start_prev: Hash,
}

pub(crate) enum AnchorState {
    Missing,
    Invalid(String),
    Valid(Anchor),
}

pub(crate) fn write_anchor(dir: &Path, key: &SealKey, anchor: &Anchor) -> Result<(), ArchiveError> {
    let mut line = Vec::with_capacity(512);
    encode_line(&mut line, anchor, |body| key.mac(ANCHOR_DOMAIN, &[body]))?;
    let tmp = dir.join(ANCHOR_TMP);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(super::io_err(&tmp))?;
    file.write_all(&line)
        .and_then(|()| file.sync_all())
        .map_err(super::io_err(&tmp))?;
    let path = dir.join(ANCHOR_FILE);
    fs::rename(&tmp, &path).map_err(super::io_err(&path))?;
    sync_dir(dir)
}

/// Reads and authenticates the head file. Only I/O errors other than "not found" are errors.
pub(crate) fn read_anchor(dir: &Path, key: &SealKey) -> Result<AnchorState, ArchiveError> {
    let path = dir.join(ANCHOR_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(AnchorState::Missing),
        Err(e) => return Err(super::io_err(&path)(e)),
    };
    let mut line = Vec::new();
    file.take(ANCHOR_MAX + 1)
        .read_to_end(&mut line)
        .map_err(super::io_err(&path))?;
    if line.len() as u64 > ANCHOR_MAX {
        return Ok(AnchorState::Invalid("too large".into()));
    }
    let Some(frame) = decode_line(&line) else {
        return Ok(AnchorState::Invalid("malformed".into()));
    };
    if !key.check(ANCHOR_DOMAIN, &[frame.body], &frame.stored) {
        return Ok(AnchorState::Invalid(
            "authentication failed (edited, or another key)".into(),
        ));
    }
    match serde_json::from_slice(frame.body) {
        Ok(anchor) => Ok(AnchorState::Valid(anchor)),
        Err(e) => Ok(AnchorState::Invalid(format!("unreadable: {e}"))),
    }
}
