//! HTTP/1.x (RFC 9112) carrying chat web APIs in plain text: the request bodies of Matrix,
//! Mattermost, Rocket.Chat and Slack calls that send a message or a file, and XMPP over BOSH
//! (XEP-0124, XEP-0206). Which calls are read, and what each gives, is in [`api`].
//!
//! Both directions are framed (pipelined requests, `Content-Length` and chunked bodies,
//! responses paired with their requests for `HEAD`, `CONNECT` and status codes without a
//! body); only request bodies of known calls, and the responses to BOSH requests, are kept.
//!
//! Recipients are the room or channel the call names; when it names none (a Matrix media
//! upload, a Mattermost file upload without `channel_id`, a Slack upload without channels) the
//! only recipient is the request path without its query, so the archive still says which API
//! the message went to. The sender is unknown to HTTP (the user is behind a bearer token), so it
//! is `None` unless the body names one (Slack's `username`). XMPP stanzas carried by BOSH are
//! reported as [`Protocol::Xmpp`] messages, with the JIDs of the stanzas.
//!
//! A `101 Switching Protocols` answer (WebSocket, h2c) or a successful `CONNECT` ends the
//! HTTP conversation: both directions become [`StreamState::Upgraded`].

mod api;

use std::collections::VecDeque;

use memchr::memchr;

use super::{xmpp, Errors, ParseError, StreamState};
use crate::message::{Direction, Message, Protocol};

/// Longest request or response head (start line and header fields, with their line ends).
/// RFC 9112 leaves the limit to the implementation; common servers cap it at 8 to 16 KiB. A
/// longer head is [`ParseError::TooLarge`]; its body length is then unknown, so the direction
/// resynchronises at the next line that reads as a start line.
pub const MAX_HEAD: usize = 16 * 1024;

/// Largest body kept for interpretation. The chat calls carry a few KiB of JSON; a larger
/// body of a call that must be read whole is skipped by counting its bytes and reported as
/// [`ParseError::TooLarge`], and parsing resumes at the next message. Multipart uploads keep
/// this much of their start (the part headers with the file names) and count the rest.
pub const MAX_BODY: usize = 1 << 20;

/// Requests waiting for their response (pipelining). Beyond this the oldest is forgotten:
/// its response is then read as the answer to a `GET`.
const MAX_PENDING: usize = 64;

/// Longest chunk-size line (RFC 9112 section 7.1: size, extensions).
const MAX_CHUNK_LINE: usize = 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// Reading a head, line by line, into `Side::buf`.
    #[default]
    Head,
    /// Dropping lines until one reads as a start line (after lost bytes or a broken head).
    Resync,
    /// A `Content-Length` body, up to the stream offset `end`.
    Body {
        end: u64,
    },
    /// A chunk-size line (RFC 9112 section 7.1).
    ChunkSize,
    ChunkData {
        end: u64,
    },
    /// The line end after a chunk's data.
    ChunkEnd,
    /// Trailer fields after the last chunk, up to an empty line.
    Trailer,
    /// A response body delimited by the connection's close: nothing after it is HTTP.
    UntilClose,
    /// The connection switched protocols or became a tunnel.
    Upgraded,
}

/// What is done with a body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Want {
    /// Counted, not kept.
    #[default]
    Discard,
    /// Kept up to [`MAX_BODY`]; a larger body is an error and is not interpreted.
    Whole,
    /// Its first [`MAX_BODY`] bytes are kept and interpreted; the rest is counted.
    Prefix,
}

/// A request waiting for its response.
#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    head: bool,
    connect: bool,
    /// A POST with an XML body: its response may be a BOSH `<body>`.
    xml: bool,
}

/// The head of the message whose body is being read.
#[derive(Debug)]
struct Current {
    start: u64,
    body_start: u64,
    route: api::Route,
    content_type: String,
    /// Bytes of body counted so far.
    len: u64,
    /// The kept prefix is shorter than the body.
    truncated: bool,
    /// Bytes of the body were lost: nothing is reported at its end.
    lost: bool,
}

#[derive(Debug, Default)]
struct Side {
    phase: Phase,
    /// The head being read, or the current line in the other line phases.
    buf: Vec<u8>,
    /// Where the current line starts in `buf` (head phase).
    line_start: usize,
    /// Stream offset of `buf[0]`.
    buf_start: u64,
    /// Dropping bytes up to the next LF (a line over its bound, or cut by a gap).
    skip_line: bool,
    /// Bytes were lost before the next chunk fed.
    gapped: bool,
    want: Want,
    body: Vec<u8>,
    cur: Option<Current>,
}

impl Side {
    fn resync(&mut self, skip_line: bool) {
        self.phase = Phase::Resync;
        self.buf.clear();
        self.line_start = 0;
        self.skip_line = skip_line;
        self.cur = None;
        self.want = Want::Discard;
        self.body.clear();
    }
}

/// HTTP state of one connection.
#[derive(Debug, Default)]
pub struct HttpParser {
    sides: [Side; 2],
    pending: VecDeque<Pending>,
    /// Reads the stanzas of BOSH bodies, both directions, so that the JID the server binds
    /// (in a response) names the sender of the client's stanzas.
    bosh: xmpp::XmppParser,
}

fn malformed(offset: u64, reason: &'static str) -> ParseError {
    ParseError::Malformed {
        protocol: Protocol::Http,
        offset,
        reason,
    }
}

fn too_large(offset: u64, limit: usize) -> ParseError {
    ParseError::TooLarge {
        protocol: Protocol::Http,
        offset,
        limit,
    }
}

impl HttpParser {
    pub(crate) fn state(&self, dir: Direction) -> StreamState {
        let side = &self.sides[dir.index()];
        match side.phase {
            Phase::Upgraded => StreamState::Upgraded,
            Phase::Resync => StreamState::Resyncing,
            _ if side.gapped => StreamState::Resyncing,
            _ => StreamState::Readable,
        }
    }

    /// Lost bytes. Inside a body whose end is known the next feed's offset says whether the
    /// body's end is still ahead: then only that message is lost. Otherwise the direction
    /// resynchronises at the next start line.
    pub(crate) fn gap(&mut self, dir: Direction) {
        self.sides[dir.index()].gapped = true;
    }

    fn after_gap(side: &mut Side, offset: u64) {
        side.gapped = false;
        match side.phase {
            Phase::Upgraded | Phase::UntilClose => {}
            Phase::Body { end } | Phase::ChunkData { end } if offset <= end => {
                side.want = Want::Discard;
                side.body.clear();
                if let Some(cur) = &mut side.cur {
                    cur.lost = true;
                }
            }
            _ => side.resync(true),
        }
    }

    pub(crate) fn feed(
        &mut self,
        dir: Direction,
        offset: u64,
        data: &[u8],
        out: &mut Vec<Message>,
        errors: &mut Errors,
    ) {
        if self.sides[dir.index()].gapped {
            Self::after_gap(&mut self.sides[dir.index()], offset);
        }
        let mut i = 0;
        while i < data.len() {
            let side = &mut self.sides[dir.index()];
            let here = offset + i as u64;
            let rest = &data[i..];
            match side.phase {
                Phase::Upgraded | Phase::UntilClose => return,
                Phase::Body { end } | Phase::ChunkData { end } => {
                    let n = usize::try_from(end - here)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    Self::collect(side, &rest[..n], errors);
                    i += n;
                    if here + n as u64 == end {
                        if matches!(side.phase, Phase::Body { .. }) {
                            side.phase = Phase::Head;
                            self.finish(dir, out, errors);
                        } else {
                            side.phase = Phase::ChunkEnd;
                        }
                    }
                }
                Phase::Head
                | Phase::Resync
                | Phase::ChunkSize
                | Phase::ChunkEnd
                | Phase::Trailer => {
                    let nl = memchr(b'\n', rest);
                    let take = nl.map_or(rest.len(), |n| n + 1);
                    i += take;
                    if side.skip_line {
                        side.skip_line = nl.is_none();
                        continue;
                    }
                    let limit = match side.phase {
                        Phase::ChunkSize | Phase::ChunkEnd => MAX_CHUNK_LINE,
                        _ => MAX_HEAD,
                    };
                    if side.buf.len() + take > limit {
                        let start = if side.buf.is_empty() {
                            here
                        } else {
                            side.buf_start
                        };
                        match side.phase {
                            Phase::Head | Phase::Trailer => {
                                errors.push(too_large(start, MAX_HEAD));
                            }
                            Phase::Resync => {}
                            _ => errors.push(malformed(start, "chunk-size line too long")),
                        }
                        side.resync(nl.is_none());
                        continue;
                    }
                    if side.buf.is_empty() {
                        side.buf_start = here;
                    }
                    side.buf.extend_from_slice(&rest[..take]);
                    if nl.is_some() {
                        self.line(dir, out, errors);
                    }
                }
            }
        }
    }

    /// Keeps body bytes as `want` says.
    fn collect(side: &mut Side, bytes: &[u8], errors: &mut Errors) {
        let Some(cur) = &mut side.cur else {
            return;
        };
        cur.len += bytes.len() as u64;
        match side.want {
            Want::Discard => {}
            Want::Whole => {
                if side.body.len() + bytes.len() > MAX_BODY {
                    errors.push(too_large(cur.start, MAX_BODY));
                    side.want = Want::Discard;
                    side.body.clear();
                    cur.lost = true;
                } else {
                    side.body.extend_from_slice(bytes);
                }
            }
            Want::Prefix => {
                let room = MAX_BODY - side.body.len();
                if bytes.len() > room {
                    cur.truncated = true;
                }
                side.body.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        }
    }

    /// A complete line is at the end of `buf`.
    fn line(&mut self, dir: Direction, out: &mut Vec<Message>, errors: &mut Errors) {
        let side = &mut self.sides[dir.index()];
        let line = trim_eol(side.buf.get(side.line_start..).unwrap_or_default());
        match side.phase {
            Phase::Resync => {
                if let Some(at) = start_line_within(dir, line) {
                    side.buf.drain(..at);
                    side.buf_start += at as u64;
                    side.phase = Phase::Head;
                    side.line_start = side.buf.len();
                } else {
                    side.buf.clear();
                }
            }
            Phase::Head if side.line_start == 0 => {
                if line.is_empty() {
                    // RFC 9112 section 2.2: an empty line before a request line is ignored
                    // (some clients send CRLF after a body).
                    side.buf.clear();
                } else if is_start_line(dir, line) {
                    side.line_start = side.buf.len();
                } else {
                    let at = side.buf_start;
                    errors.push(malformed(at, "not an HTTP start line"));
                    side.resync(false);
                }
            }
            Phase::Head => {
                if line.is_empty() {
                    let head = std::mem::take(&mut side.buf);
                    let start = side.buf_start;
                    side.line_start = 0;
                    self.head(dir, start, &head, out, errors);
                    let side = &mut self.sides[dir.index()];
                    if side.buf.is_empty() {
                        side.buf = head;
                        side.buf.clear();
                    }
                } else {
                    side.line_start = side.buf.len();
                }
            }
            Phase::ChunkSize => {
                let chunk = chunk_size(line);
                let at = side.buf_start;
                // The chunk's data starts right after its size line.
                let data_start = at + side.buf.len() as u64;
                side.buf.clear();
                match chunk {
                    Some(0) => side.phase = Phase::Trailer,
                    Some(n) => {
                        side.phase = Phase::ChunkData {
                            end: data_start.saturating_add(n),
                        };
                    }
                    None => {
                        errors.push(malformed(at, "bad chunk size"));
                        side.resync(false);
                    }
                }
            }
            Phase::ChunkEnd => {
                let empty = line.is_empty();
                let at = side.buf_start;
                side.buf.clear();
                if empty {
                    side.phase = Phase::ChunkSize;
                } else {
                    errors.push(malformed(at, "chunk data longer than its size"));
                    side.resync(false);
                }
            }
            Phase::Trailer => {
                if line.is_empty() {
                    side.buf.clear();
                    side.phase = Phase::Head;
                    self.finish(dir, out, errors);
                } else {
                    // Trailer fields are not interpreted.
                    side.buf.clear();
                }
            }
            Phase::Body { .. } | Phase::ChunkData { .. } | Phase::UntilClose | Phase::Upgraded => {}
        }
    }

    #[expect(
        clippy::too_many_lines,
        reason = "request and response framing rules side by side"
    )]
    /// A complete head `head` (start line, fields, empty line) starting at stream offset
    /// `start`.
    fn head(
        &mut self,
        dir: Direction,
        start: u64,
        head: &[u8],
        out: &mut Vec<Message>,
        errors: &mut Errors,
    ) {
        let body_start = start + head.len() as u64;
        let fields = match Fields::parse(head) {
            Ok(f) => f,
            Err(reason) => {
                errors.push(malformed(start, reason));
                self.sides[dir.index()].resync(false);
                return;
            }
        };
        // RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length; a request
        // whose coding is not chunked last cannot be framed.
        let length = if fields.transfer_encoding {
            if fields.chunked {
                Length::Chunked
            } else if dir == Direction::ClientToServer {
                errors.push(malformed(start, "request body coding is not chunked"));
                self.sides[dir.index()].resync(false);
                return;
            } else {
                Length::UntilClose
            }
        } else if let Some(n) = fields.content_length {
            Length::Exactly(n)
        } else {
            Length::None
        };
        let (route, want, length) = match dir {
            Direction::ClientToServer => {
                let method = fields.method;
                if self.pending.len() == MAX_PENDING {
                    self.pending.pop_front();
                }
                self.pending.push_back(Pending {
                    head: method == b"HEAD",
                    connect: method == b"CONNECT",
                    xml: method == b"POST" && api::is_xml(&fields.content_type),
                });
                let req = api::Request {
                    method,
                    target: fields.target,
                    content_type: &fields.content_type,
                    content_length: fields.content_length,
                };
                let (route, want) = api::route(&req, start, out);
                // RFC 9112 section 6.3 point 7: a request without a length has no body.
                let length = if length == Length::UntilClose {
                    Length::None
                } else {
                    length
                };
                (route, want, length)
            }
            Direction::ServerToClient => {
                let status = fields.status;
                let informational = (100..200).contains(&status);
                let req = if informational && status != 101 {
                    Pending::default()
                } else {
                    self.pending.pop_front().unwrap_or_default()
                };
                if status == 101 || (req.connect && (200..300).contains(&status)) {
                    for side in &mut self.sides {
                        side.resync(false);
                        side.phase = Phase::Upgraded;
                    }
                    return;
                }
                let length = if informational || status == 204 || status == 304 || req.head {
                    Length::None
                } else if length == Length::None {
                    Length::UntilClose
                } else {
                    length
                };
                let bosh = req.xml && api::is_xml(&fields.content_type);
                if bosh {
                    (api::Route::BoshResponse, Want::Whole, length)
                } else {
                    (api::Route::None, Want::Discard, length)
                }
            }
        };
        let side = &mut self.sides[dir.index()];
        side.body.clear();
        side.want = want;
        side.cur = Some(Current {
            start,
            body_start,
            route,
            content_type: fields.content_type,
            len: 0,
            truncated: false,
            lost: false,
        });
        match length {
            Length::None => {
                side.phase = Phase::Head;
                self.finish(dir, out, errors);
            }
            Length::Exactly(n) => {
                if want == Want::Whole && n > MAX_BODY as u64 {
                    errors.push(too_large(start, MAX_BODY));
                    side.want = Want::Discard;
                    if let Some(cur) = &mut side.cur {
                        cur.lost = true;
                    }
                }
                if n == 0 {
                    side.phase = Phase::Head;
                    self.finish(dir, out, errors);
                } else {
                    side.phase = Phase::Body {
                        end: body_start.saturating_add(n),
                    };
                }
            }
            Length::Chunked => side.phase = Phase::ChunkSize,
            Length::UntilClose => side.phase = Phase::UntilClose,
        }
    }

    /// The body of the current message is complete (or there is none).
    fn finish(&mut self, dir: Direction, out: &mut Vec<Message>, errors: &mut Errors) {
        let side = &mut self.sides[dir.index()];
        let Some(cur) = side.cur.take() else {
            return;
        };
        let body = std::mem::take(&mut side.body);
        side.want = Want::Discard;
        if !cur.lost {
            let done = api::Body {
                bytes: &body,
                len: cur.len,
                truncated: cur.truncated,
                content_type: &cur.content_type,
                start: cur.start,
                bytes_start: cur.body_start,
            };
            match &cur.route {
                api::Route::None => {}
                api::Route::BoshRequest | api::Route::BoshResponse => {
                    self.bosh_body(dir, &done, out, errors);
                }
                route => {
                    if let Err(reason) = api::interpret(route, &done, out) {
                        errors.push(malformed(cur.start, reason));
                    }
                }
            }
        }
        let side = &mut self.sides[dir.index()];
        if side.body.is_empty() {
            side.body = body;
            side.body.clear();
        }
    }

    /// XEP-0124 section 7: the payload is a `<body/>` wrapper around complete stanzas. The
    /// stanzas are handed to an XMPP parser as if they were the children of a stream.
    fn bosh_body(
        &mut self,
        dir: Direction,
        body: &api::Body,
        out: &mut Vec<Message>,
        errors: &mut Errors,
    ) {
        let Some((at, inner)) = api::bosh_inner(body.bytes) else {
            return;
        };
        // Each body holds whole stanzas: the XMPP parser starts afresh at each (a broken one
        // does not spill into the next), keeping what it learnt (the bound JID).
        self.bosh.gap(dir);
        let start = body.bytes_start + at as u64;
        self.bosh.feed(dir, start, inner, out, errors);
        if !self.bosh.state(dir).is_inspectable() {
            // XEP-0206 section 5: TLS and compression are not negotiated inside BOSH; a
            // `<proceed/>` or `<compressed/>` there must not blind the parser.
            self.bosh = xmpp::XmppParser::default();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Length {
    None,
    Exactly(u64),
    Chunked,
    UntilClose,
}

/// The line without its LF and an optional CR before it.
fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// RFC 9112 section 7.1: hex digits, then optional `;` extensions.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let end = memchr(b';', line).unwrap_or(line.len());
    let digits = line[..end].trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    let mut n = 0u64;
    for &d in digits {
        n = n * 16 + u64::from(char::from(d).to_digit(16)?);
    }
    Some(n)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A request line (`method SP target SP HTTP/1.x`, RFC 9112 section 3) client-to-server, a
/// status line (`HTTP/1.x SP 3DIGIT`, section 4) server-to-client.
fn is_start_line(dir: Direction, line: &[u8]) -> bool {
    match dir {
        Direction::ClientToServer => {
            let mut words = line.split(|&b| b == b' ');
            let (Some(method), Some(target), Some(version), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return false;
            };
            !method.is_empty()
                && method.iter().all(|&b| is_token_byte(b))
                && !target.is_empty()
                && is_version(version)
        }
        Direction::ServerToClient => {
            line.len() >= 12
                && is_version(&line[..8])
                && line[8] == b' '
                && line[9..12].iter().all(u8::is_ascii_digit)
                && line.get(12).is_none_or(|&b| b == b' ')
        }
    }
}

/// Methods recognised at the end of a word when resynchronising (RFC 9110 section 9).
const METHODS: [&[u8]; 8] = [
    b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS", b"CONNECT",
];

/// Where a start line begins in `line` when resynchronising. A body does not end with a line
/// end, so after lost bytes the next start line is often glued to the end of a body: a
/// request line is found by its version at the end and a known method before its target, a
/// status line by its version.
fn start_line_within(dir: Direction, line: &[u8]) -> Option<usize> {
    if is_start_line(dir, line) {
        return Some(0);
    }
    match dir {
        Direction::ClientToServer => {
            let version_at = line.len().checked_sub(9)?;
            if line[version_at] != b' ' || !is_version(&line[version_at + 1..]) {
                return None;
            }
            let target_at = memchr::memrchr(b' ', &line[..version_at])?;
            let word = &line[..target_at];
            let at = METHODS
                .iter()
                .find(|m| word.ends_with(m))
                .map(|m| target_at - m.len())?;
            is_start_line(dir, &line[at..]).then_some(at)
        }
        Direction::ServerToClient => {
            memchr::memmem::find_iter(line, b"HTTP/1.").find(|&at| is_start_line(dir, &line[at..]))
        }
    }
}

fn is_version(v: &[u8]) -> bool {
    v.len() == 8 && v.starts_with(b"HTTP/1.") && v[7].is_ascii_digit()
}

/// The parts of a head the framing and the routes need.
struct Fields<'a> {
    method: &'a [u8],
    target: &'a [u8],
    status: u16,
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    content_type: String,
}

impl<'a> Fields<'a> {
    fn parse(head: &'a [u8]) -> Result<Fields<'a>, &'static str> {
        let mut lines = head.split(|&b| b == b'\n').map(trim_eol);
        let start = lines.next().unwrap_or_default();
        let mut f = Fields {
            method: &[],
            target: &[],
            status: 0,
            content_length: None,
            transfer_encoding: false,
            chunked: false,
            content_type: String::new(),
        };
        if start.starts_with(b"HTTP/") {
            f.status = std::str::from_utf8(start.get(9..12).unwrap_or_default())
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("bad status code")?;
        } else {
            let mut words = start.split(|&b| b == b' ');
            f.method = words.next().unwrap_or_default();
            f.target = words.next().unwrap_or_default();
        }
        for line in lines {
            if line.is_empty() || line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
                // The final empty line; obsolete line folding (RFC 9112 section 5.2) is not
                // interpreted.
                continue;
            }
            let colon = memchr(b':', line).ok_or("header field without a colon")?;
            let name = &line[..colon];
            let value = line[colon + 1..].trim_ascii();
            if name.eq_ignore_ascii_case(b"content-length") {
                // RFC 9110 section 8.6: a list of identical values is accepted, differing
                // ones make the framing unknowable.
                for v in value.split(|&b| b == b',') {
                    let v = v.trim_ascii();
                    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) || v.len() > 19 {
                        return Err("bad Content-Length");
                    }
                    let n = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or("bad Content-Length")?;
                    if f.content_length.is_some_and(|m| m != n) {
                        return Err("conflicting Content-Length");
                    }
                    f.content_length = Some(n);
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                f.transfer_encoding = true;
                let last = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                f.chunked = last.eq_ignore_ascii_case(b"chunked");
            } else if name.eq_ignore_ascii_case(b"content-type") {
                f.content_type = super::lossy(value).into_owned();
            }
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests;
