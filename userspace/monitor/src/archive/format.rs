//! Record types and the line framing `{"h":"<hash>","r":<body>}\n`.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::message::{Decision, Direction, Message};

/// Milliseconds since the Unix epoch (UTC).
pub type UnixMillis = u64;

/// The longest line (record) the archive writes or reads, newline included. A larger record
/// is refused with [`super::ArchiveError::RecordTooLarge`]; a longer line read back is
/// reported as malformed and skipped without being held in memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;

const PREFIX: &[u8] = b"{\"h\":\"";
const MID: &[u8] = b"\",\"r\":";
const SUFFIX: &[u8] = b"}\n";
const HEX_LEN: usize = 64;
const BODY_START: usize = PREFIX.len() + HEX_LEN + MID.len();

/// A SHA-256 or HMAC-SHA256 value, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub const ZERO: Hash = Hash([0; 32]);

    /// Parses exactly 64 lowercase hex digits (uppercase is refused so that each hash has
    /// one spelling and a flipped case bit is a change).
    pub fn from_hex(hex: &[u8]) -> Option<Hash> {
        if hex.len() != HEX_LEN {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let [hi, lo] = pair else { return None };
            *byte = (nibble(*hi)? << 4) | nibble(*lo)?;
        }
        Some(Hash(out))
    }

    fn write_hex(&self, out: &mut [u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (pair, byte) in out.chunks_exact_mut(2).zip(self.0) {
            if let [hi, lo] = pair {
                *hi = DIGITS[usize::from(byte >> 4)];
                *lo = DIGITS[usize::from(byte & 0xf)];
            }
        }
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = [0u8; HEX_LEN];
        self.write_hex(&mut hex);
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Hash::from_hex(s.as_bytes())
            .ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits"))
    }
}

/// A monitored TCP flow; the client opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowId {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp {} -> {}", self.client, self.server)
    }
}

/// What the controller records. Serialises exactly as the matching [`Event`] variant.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry<'a> {
    /// A message read from the flow and the content policy's decision on it.
    Message {
        app: &'a str,
        flow: FlowId,
        message: &'a Message,
        decision: &'a Decision,
    },
    /// The flow got the drop verdict.
    FlowBlocked {
        app: &'a str,
        flow: FlowId,
        reason: &'a str,
    },
    /// The controller reset the flow (TCP RST to both ends).
    FlowReset {
        app: &'a str,
        flow: FlowId,
        reason: &'a str,
    },
    /// `bytes` of one direction were lost (not copied, or given up by reassembly): the
    /// messages of this flow recorded after it are marked `incomplete`.
    FlowGap {
        app: &'a str,
        flow: FlowId,
        direction: Direction,
        bytes: u64,
    },
    /// The flow ended (FIN, RST or idle expiry); ends the `incomplete` marking.
    FlowEnd { app: &'a str, flow: FlowId },
    /// Something the monitor noticed about the flow besides its messages: an evasion attempt
    /// (a retransmission that differs from the first copy), or why its content can no longer
    /// be read (TLS, compression, lost framing).
    FlowAnomaly {
        app: &'a str,
        flow: FlowId,
        reason: &'a str,
    },
}

impl Entry<'_> {
    pub fn flow(&self) -> FlowId {
        match *self {
            Entry::Message { flow, .. }
            | Entry::FlowBlocked { flow, .. }
            | Entry::FlowReset { flow, .. }
            | Entry::FlowGap { flow, .. }
            | Entry::FlowEnd { flow, .. }
            | Entry::FlowAnomaly { flow, .. } => flow,
        }
    }
}

/// A record's event as read back: the controller's [`Entry`] kinds and the archive's own
/// housekeeping (seal, recovery, retention).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Message {
        app: String,
        flow: FlowId,
        message: Message,
        decision: Decision,
    },
    FlowBlocked {
        app: String,
        flow: FlowId,
        reason: String,
    },
    FlowReset {
        app: String,
        flow: FlowId,
        reason: String,
    },
    FlowGap {
        app: String,
        flow: FlowId,
        direction: Direction,
        bytes: u64,
    },
    FlowEnd {
        app: String,
        flow: FlowId,
    },
    FlowAnomaly {
        app: String,
        flow: FlowId,
        reason: String,
    },
    /// Authenticates the chain up to `head` (the previous record's hash). `closing` marks a
    /// clean shutdown.
    Seal {
        head: Hash,
        closing: bool,
        mac: Hash,
    },
    /// Written by [`super::Archive::open`] after an unclean shutdown: the last segment was cut
    /// at `offset` (`truncated_bytes` removed); `last_good_seq` is the last record kept.
    Recovery {
        segment: u64,
        offset: u64,
        truncated_bytes: u64,
        last_good_seq: u64,
        mac: Hash,
    },
    /// Segments `deleted_from..=deleted_to` (all newest records older than `cutoff`) were
    /// deleted; the chain now starts in `first_segment` at `first_seq`, linked to `first_prev`.
    Retention {
        cutoff: UnixMillis,
        deleted_from: u64,
        deleted_to: u64,
        first_segment: u64,
        first_seq: u64,
        first_prev: Hash,
        mac: Hash,
    },
}

impl Event {
    /// The application id of the controller's events; `None` for housekeeping.
    pub fn app(&self) -> Option<&str> {
        match self {
            Event::Message { app, .. }
            | Event::FlowBlocked { app, .. }
            | Event::FlowReset { app, .. }
            | Event::FlowGap { app, .. }
            | Event::FlowEnd { app, .. }
            | Event::FlowAnomaly { app, .. } => Some(app),
            Event::Seal { .. } | Event::Recovery { .. } | Event::Retention { .. } => None,
        }
    }
}

/// One record as read back (the value of `r`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub time: UnixMillis,
    /// The flow lost bytes before this record (see [`Entry::FlowGap`]).
    #[serde(default)]
    pub incomplete: bool,
    pub event: Event,
}

#[derive(Serialize)]
pub(crate) struct BodyOut<'a, E> {
    pub seq: u64,
    pub time: UnixMillis,
    #[serde(skip_serializing_if = "is_false")]
    pub incomplete: bool,
    pub event: &'a E,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_false(b: &bool) -> bool {
    !*b
}

/// SHA-256 over the previous record's hash and this record's body bytes.
pub(crate) fn chain_hash(prev: &Hash, body: &[u8]) -> Hash {
    Hash(
        Sha256::new()
            .chain_update(prev.0)
            .chain_update(body)
            .finalize()
            .into(),
    )
}

/// Appends one framed line for `body` to `out`; `seal` computes `h` from the body bytes.
/// On error `out` is left as it was.
pub(crate) fn encode_line<T: Serialize>(
    out: &mut Vec<u8>,
    body: &T,
    seal: impl FnOnce(&[u8]) -> Hash,
) -> Result<Hash, super::ArchiveError> {
    encode_line_with(
        out,
        |out| serde_json::to_writer(out, body).map_err(super::ArchiveError::Encode),
        seal,
    )
}

/// [`encode_line`] with the body written by `write_body`; the hash is computed over the body
/// bytes where they lie in `out`, so they are neither copied nor serialised twice.
pub(crate) fn encode_line_with(
    out: &mut Vec<u8>,
    write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), super::ArchiveError>,
    seal: impl FnOnce(&[u8]) -> Hash,
) -> Result<Hash, super::ArchiveError> {
    let start = out.len();
    out.extend_from_slice(PREFIX);
    out.extend_from_slice(&[b'0'; HEX_LEN]);
    out.extend_from_slice(MID);
    if let Err(e) = write_body(out) {
        out.truncate(start);
        return Err(e);
    }
    let size = out.len() - start + SUFFIX.len();
    if size > MAX_LINE_BYTES {
        out.truncate(start);
        return Err(super::ArchiveError::RecordTooLarge { size });
    }
    let (head, body) = out[start..].split_at_mut(BODY_START);
    let hash = seal(body);
    hash.write_hex(&mut head[PREFIX.len()..PREFIX.len() + HEX_LEN]);
    out.extend_from_slice(SUFFIX);
    Ok(hash)
}

/// A line split into its stored hash and body bytes.
pub(crate) struct Frame<'a> {
    pub stored: Hash,
    pub body: &'a [u8],
}

/// Splits a whole line (newline included) exactly as [`encode_line`] builds it.
pub(crate) fn decode_line(line: &[u8]) -> Option<Frame<'_>> {
    let rest = line.strip_prefix(PREFIX)?;
    let (hex, rest) = rest.split_at_checked(HEX_LEN)?;
    let body = rest.strip_prefix(MID)?.strip_suffix(SUFFIX)?;
    // A JSON object body; JSON never needs a raw newline, so the line split is unambiguous.
    if body.first() != Some(&b'{') || body.last() != Some(&b'}') || body.contains(&b'\n') {
        return None;
    }
    Some(Frame {
        stored: Hash::from_hex(hex)?,
        body,
    })
}

impl Event {
    /// What the key authenticates for a housekeeping event: a domain and its fields (all of
    /// fixed size, so their concatenation is unambiguous), the record's `seq` and `time`
    /// included so a valid record cannot be replayed elsewhere. `None` for the controller's
    /// events, which only the chain and the next seal protect.
    pub(crate) fn mac_input(&self, seq: u64, time: UnixMillis) -> Option<(&'static str, Vec<u8>)> {
        let mut fields = Vec::with_capacity(96);
        fields.extend_from_slice(&seq.to_be_bytes());
        fields.extend_from_slice(&time.to_be_bytes());
        let domain = match self {
            Event::Seal { head, closing, .. } => {
                fields.extend_from_slice(&head.0);
                fields.push(u8::from(*closing));
                "imfw-archive/seal/v1"
            }
            Event::Recovery {
                segment,
                offset,
                truncated_bytes,
                last_good_seq,
                ..
            } => {
                for n in [segment, offset, truncated_bytes, last_good_seq] {
                    fields.extend_from_slice(&n.to_be_bytes());
                }
                "imfw-archive/recovery/v1"
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
                for n in [cutoff, deleted_from, deleted_to, first_segment, first_seq] {
                    fields.extend_from_slice(&n.to_be_bytes());
                }
                fields.extend_from_slice(&first_prev.0);
                "imfw-archive/retention/v1"
            }
            _ => return None,
        };
        Some((domain, fields))
    }

    pub(crate) fn mac(&self) -> Option<&Hash> {
        match self {
            Event::Seal { mac, .. }
            | Event::Recovery { mac, .. }
            | Event::Retention { mac, .. } => Some(mac),
            _ => None,
        }
    }

    fn mac_mut(&mut self) -> Option<&mut Hash> {
        match self {
            Event::Seal { mac, .. }
            | Event::Recovery { mac, .. }
            | Event::Retention { mac, .. } => Some(mac),
            _ => None,
        }
    }

    /// Fills in the MAC of a housekeeping event.
    pub(crate) fn authenticate(
        mut self,
        key: &super::SealKey,
        seq: u64,
        time: UnixMillis,
    ) -> Event {
        if let Some((domain, fields)) = self.mac_input(seq, time) {
            let mac = key.mac(domain, &[&fields]);
            if let Some(slot) = self.mac_mut() {
                *slot = mac;
            }
        }
        self
    }

    /// Whether a housekeeping event's MAC is valid (`true` for the controller's events).
    pub(crate) fn authentic(&self, key: &super::SealKey, seq: u64, time: UnixMillis) -> bool {
        match (self.mac_input(seq, time), self.mac()) {
            (Some((domain, fields)), Some(mac)) => key.check(domain, &[&fields], mac),
            _ => true,
        }
    }
}
