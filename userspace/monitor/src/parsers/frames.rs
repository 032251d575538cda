//! Length-prefixed binary framing shared by YMSG and OSCAR: a fixed header that starts with
//! a magic and holds a big-endian u16 payload length. The u16 bounds every frame, so a frame
//! is always kept whole.

use memchr::memchr;

use super::{Errors, ParseError, StreamState};
use crate::message::Protocol;

pub(crate) struct Spec {
    pub protocol: Protocol,
    pub header: usize,
    pub magic: &'static [u8],
    /// Offset of the u16 payload length in the header.
    pub len_at: usize,
    /// After lost or broken bytes, look for the next magic (YMSG's four bytes are rare in
    /// payloads); without it the direction is lost (OSCAR's one-byte `*` is not a marker).
    pub resync: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Framer {
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    start: u64,
    /// Dropping a frame whose bytes were partly lost, up to this stream offset.
    skip_to: Option<u64>,
    resyncing: bool,
    /// Bytes of the magic matched while resynchronising.
    magic_seen: usize,
    lost: bool,
    gapped: bool,
}

impl Framer {
    pub(crate) fn state(&self) -> StreamState {
        if self.lost {
            StreamState::Unparseable
        } else if self.resyncing || self.gapped {
            StreamState::Resyncing
        } else {
            StreamState::Readable
        }
    }

    pub(crate) fn gap(&mut self) {
        self.gapped = true;
    }

    fn frame_end(&self, spec: &Spec) -> Option<u64> {
        let len = self.buf.get(spec.len_at..spec.len_at + 2)?;
        if self.buf.len() < spec.header {
            return None;
        }
        Some(self.start + (spec.header + usize::from(u16::from_be_bytes([len[0], len[1]]))) as u64)
    }

    /// Lost bytes before `offset`: a frame whose end is known and still ahead is skipped to
    /// its end; otherwise the side resynchronises or is lost.
    fn after_gap(&mut self, spec: &Spec, offset: u64) {
        self.gapped = false;
        if self.lost {
            return;
        }
        let end = self.skip_to.or_else(|| self.frame_end(spec));
        self.buf.clear();
        match end {
            Some(end) if offset <= end => self.skip_to = Some(end),
            _ => {
                self.skip_to = None;
                if spec.resync {
                    self.resyncing = true;
                    self.magic_seen = 0;
                } else {
                    self.lost = true;
                }
            }
        }
    }

    /// Feeds `data` (at stream `offset`); calls `frame(start, bytes)` for each complete frame.
    pub(crate) fn feed(
        &mut self,
        spec: &Spec,
        offset: u64,
        data: &[u8],
        errors: &mut Errors,
        mut frame: impl FnMut(u64, &[u8]),
    ) {
        if self.gapped {
            self.after_gap(spec, offset);
        }
        let mut i = 0;
        while i < data.len() && !self.lost {
            let here = offset + i as u64;
            let rest = &data[i..];
            if let Some(end) = self.skip_to {
                let n = usize::try_from(end.saturating_sub(here))
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                i += n;
                if here + n as u64 >= end {
                    self.skip_to = None;
                }
                continue;
            }
            if self.resyncing {
                if self.magic_seen == 0 {
                    let Some(k) = memchr(spec.magic[0], rest) else {
                        return;
                    };
                    i += k + 1;
                    self.start = here + k as u64;
                    self.magic_seen = 1;
                } else if spec.magic.get(self.magic_seen) == Some(&rest[0]) {
                    i += 1;
                    self.magic_seen += 1;
                } else {
                    // The magic does not overlap itself: the byte is looked at afresh.
                    self.magic_seen = 0;
                    continue;
                }
                if self.magic_seen == spec.magic.len() {
                    self.resyncing = false;
                    self.buf.clear();
                    self.buf.extend_from_slice(spec.magic);
                }
                continue;
            }
            if self.buf.is_empty() {
                self.start = here;
            }
            let need = match self.frame_end(spec) {
                Some(end) => usize::try_from(end - self.start).unwrap_or(usize::MAX),
                None => spec.header,
            };
            let take = (need - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            i += take;
            if self.buf.len() == spec.header && !self.buf.starts_with(spec.magic) {
                errors.push(ParseError::Malformed {
                    protocol: spec.protocol,
                    offset: self.start,
                    reason: "frame without its start marker",
                });
                self.buf.clear();
                if spec.resync {
                    self.resyncing = true;
                    self.magic_seen = 0;
                } else {
                    self.lost = true;
                }
                continue;
            }
            if self
                .frame_end(spec)
                .is_some_and(|end| self.start + self.buf.len() as u64 == end)
            {
                frame(self.start, &self.buf);
                self.buf.clear();
            }
        }
    }
}

/// Big-endian reads over a frame, `None` past its end.
pub(crate) struct Reader<'a> {
    pub bytes: &'a [u8],
    pub at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = self.bytes.get(self.at..).unwrap_or_default();
        self.at = self.bytes.len();
        s
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }
}
