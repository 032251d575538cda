//! Incremental parsers that turn the in-order byte streams of a monitored TCP flow into
//! [`Message`]s.
//!
//! The controller owns one [`Parser`] per flow and feeds it the reassembled bytes of both
//! directions as they arrive, in chunks that may split anywhere (inside a UTF-8 sequence, an XML
//! entity, an MQTT length field). Feeding the same bytes in any split gives the same messages.
//!
//! Every buffer is bounded; the bounds are [`xmpp::MAX_STANZA`], [`irc::MAX_LINE`],
//! [`mqtt::MAX_PACKET`], [`http::MAX_HEAD`] and [`http::MAX_BODY`], [`msnp::MAX_LINE`] and
//! [`msnp::MAX_PAYLOAD`]; YMSG and OSCAR frames carry a 16-bit length, so they are bounded by
//! their format ([`ymsg::MAX_PACKET`], [`oscar::MAX_FRAME`]). An item beyond its bound is dropped with [`ParseError::TooLarge`] and
//! parsing goes on after it. Lost bytes are announced with [`Parser::gap`]; whether a direction
//! can still be read is [`Parser::state`].

mod frames;
pub mod http;
pub mod irc;
pub mod mqtt;
pub mod msnp;
pub mod oscar;
pub mod xmpp;
pub mod ymsg;

use thiserror::Error;

use crate::message::{Direction, Message, Protocol};

/// Why bytes of a direction could not be turned into messages. Parsing goes on after an error
/// where the protocol allows it; [`Parser::state`] says whether it does.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ParseError {
    /// A stanza, line or packet beyond the protocol's bound; it is skipped.
    #[error("{protocol:?} item at stream offset {offset} exceeds {limit} bytes")]
    TooLarge {
        protocol: Protocol,
        offset: u64,
        limit: usize,
    },
    /// Bytes that break the protocol's syntax.
    #[error("malformed {protocol:?} at stream offset {offset}: {reason}")]
    Malformed {
        protocol: Protocol,
        offset: u64,
        reason: &'static str,
    },
}

/// Whether a direction's content can still be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamState {
    /// Bytes are parsed into messages.
    Readable,
    /// Bytes were lost or broke the syntax; the parser skips to the next line (IRC) or stanza
    /// start (XMPP) and reads on from there.
    Resyncing,
    /// The stream switched to TLS (XMPP or IRC STARTTLS, or TLS from the first byte): nothing
    /// after the switch can be inspected.
    Encrypted,
    /// XMPP stream compression (XEP-0138) was negotiated: nothing after it is inspected.
    Compressed,
    /// Bytes were lost or the framing broke where the protocol gives no way to find the next
    /// message boundary (MQTT, OSCAR): nothing more is parsed in this direction.
    Unparseable,
    /// The connection left the protocol for one without a parser (HTTP `101 Switching
    /// Protocols` to a WebSocket or h2c, a `CONNECT` tunnel): nothing more is parsed.
    Upgraded,
}

impl StreamState {
    /// Whether bytes fed from now on can still produce messages.
    pub fn is_inspectable(self) -> bool {
        matches!(self, StreamState::Readable | StreamState::Resyncing)
    }
}

/// Collects the errors of one feed: the first is returned, all are counted.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    first: Option<ParseError>,
    count: u64,
}

impl Errors {
    pub(crate) fn push(&mut self, e: ParseError) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(e);
        }
    }
}

#[derive(Debug)]
enum Engine {
    Xmpp(xmpp::XmppParser),
    Irc(irc::IrcParser),
    Mqtt(mqtt::MqttParser),
    Http(Box<http::HttpParser>),
    Msnp(msnp::MsnpParser),
    Ymsg(ymsg::YmsgParser),
    Oscar(oscar::OscarParser),
}

/// The parser of one flow, both directions.
#[derive(Debug)]
pub struct Parser {
    protocol: Protocol,
    engine: Engine,
    /// Stream offset of the next byte expected per direction; `None` before the first feed.
    next: [Option<u64>; 2],
    /// TLS from the first byte (e.g. XMPP direct TLS, IRC on 6697, MQTT on 8883).
    tls_from_start: bool,
    errors: u64,
}

/// First byte of a TLS record carrying a handshake message (RFC 8446 section 5.1). It is not
/// a valid first byte for any of the plain-text protocols: an XMPP stream starts with `<` or
/// whitespace, an IRC line with a letter, `:` or `@`, an MQTT CONNECT with 0x10, an HTTP
/// message with a method or `HTTP/`, MSNP with `VER`, YMSG with `Y` and OSCAR with `*`.
pub(crate) const TLS_HANDSHAKE: u8 = 0x16;

impl Parser {
    pub fn new(protocol: Protocol) -> Parser {
        let engine = match protocol {
            Protocol::Xmpp => Engine::Xmpp(xmpp::XmppParser::default()),
            Protocol::Irc => Engine::Irc(irc::IrcParser::default()),
            Protocol::Mqtt => Engine::Mqtt(mqtt::MqttParser::default()),
            Protocol::Http => Engine::Http(Box::default()),
            Protocol::Msnp => Engine::Msnp(msnp::MsnpParser::default()),
            Protocol::Ymsg => Engine::Ymsg(ymsg::YmsgParser::default()),
            Protocol::Oscar => Engine::Oscar(oscar::OscarParser::default()),
        };
        Parser {
            protocol,
            engine,
            next: [None, None],
            tls_from_start: false,
            errors: 0,
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Parses `data`, the bytes of direction `dir` starting at `stream_offset` (0 = first
    /// payload byte of that direction), and appends the messages completed by them to `out`.
    ///
    /// Chunks should come in order; bytes before the expected offset (retransmissions) are
    /// skipped, a chunk that starts after it counts as a [`gap`](Parser::gap), and so does a
    /// first chunk that does not start at offset 0. The whole chunk is always consumed; when
    /// errors occurred the first is returned (messages found before and after it are still in
    /// `out`) and [`state`](Parser::state) says whether the direction is still read.
    pub fn feed(
        &mut self,
        dir: Direction,
        stream_offset: u64,
        data: &[u8],
        out: &mut Vec<Message>,
    ) -> Result<(), ParseError> {
        if data.is_empty() {
            return Ok(());
        }
        let (offset, data) = match self.next[dir.index()] {
            None if stream_offset != 0 => {
                self.gap(dir);
                (stream_offset, data)
            }
            None => {
                if data.first() == Some(&TLS_HANDSHAKE) {
                    self.tls_from_start = true;
                }
                (stream_offset, data)
            }
            Some(next) if stream_offset > next => {
                self.gap(dir);
                (stream_offset, data)
            }
            Some(next) => {
                let overlap = usize::try_from(next - stream_offset).unwrap_or(usize::MAX);
                (next, data.get(overlap..).unwrap_or_default())
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        self.next[dir.index()] = Some(offset + data.len() as u64);
        if !self.state(dir).is_inspectable() {
            return Ok(());
        }
        let mut errors = Errors::default();
        match &mut self.engine {
            Engine::Xmpp(p) => p.feed(dir, offset, data, out, &mut errors),
            Engine::Irc(p) => p.feed(dir, offset, data, out, &mut errors),
            Engine::Mqtt(p) => p.feed(dir, offset, data, out, &mut errors),
            Engine::Http(p) => p.feed(dir, offset, data, out, &mut errors),
            Engine::Msnp(p) => p.feed(dir, offset, data, out, &mut errors),
            Engine::Ymsg(p) => p.feed(dir, offset, data, out, &mut errors),
            Engine::Oscar(p) => p.feed(dir, offset, data, out, &mut errors),
        }
        self.errors += errors.count;
        errors.first.map_or(Ok(()), Err)
    }

    /// Bytes of direction `dir` were lost (the reassembly gave up on a hole). XMPP resumes at
    /// the next stanza start, IRC at the next line; MQTT has no way to find the next packet
    /// boundary, so that direction becomes [`StreamState::Unparseable`].
    pub fn gap(&mut self, dir: Direction) {
        match &mut self.engine {
            Engine::Xmpp(p) => p.gap(dir),
            Engine::Irc(p) => p.gap(dir),
            Engine::Mqtt(p) => p.gap(dir),
            Engine::Http(p) => p.gap(dir),
            Engine::Msnp(p) => p.gap(dir),
            Engine::Ymsg(p) => p.gap(dir),
            Engine::Oscar(p) => p.gap(dir),
        }
    }

    /// Whether direction `dir` can still be read.
    pub fn state(&self, dir: Direction) -> StreamState {
        if self.tls_from_start {
            return StreamState::Encrypted;
        }
        match &self.engine {
            Engine::Xmpp(p) => p.state(dir),
            Engine::Irc(p) => p.state(dir),
            Engine::Mqtt(p) => p.state(dir),
            Engine::Http(p) => p.state(dir),
            Engine::Msnp(p) => p.state(dir),
            Engine::Ymsg(p) => p.state(dir),
            Engine::Oscar(p) => p.state(dir),
        }
    }

    /// Whether any direction can still produce messages; when not, the controller can stop
    /// copying the flow's payload.
    pub fn is_inspectable(&self) -> bool {
        self.state(Direction::ClientToServer).is_inspectable()
            || self.state(Direction::ServerToClient).is_inspectable()
    }

    /// All errors met so far, both directions (a feed returns only its first).
    pub fn error_count(&self) -> u64 {
        self.errors
    }
}

/// UTF-8 with invalid sequences replaced by U+FFFD; validating first is much faster than the
/// replacing decoder on the common, valid input.
pub(crate) fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Text as UTF-8 when it is, else as Latin-1 (IRC predates UTF-8; RFC 2812 section 2.2 leaves
/// the character set open, and Latin-1 maps every byte to a character).
pub(crate) fn utf8_or_latin1(bytes: &[u8]) -> String {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::{ParseError, Parser};
    use crate::message::{Direction, Message, Protocol};

    /// One direction's bytes, in conversation order.
    pub type Script<'a> = &'a [(Direction, &'a [u8])];

    /// Feeds each step whole; returns messages and errors.
    pub fn run_whole(protocol: Protocol, script: Script) -> (Vec<Message>, Vec<ParseError>) {
        run_split(protocol, script, &|_| vec![])
    }

    /// Feeds each step cut at the positions `cuts` gives for its length.
    pub fn run_split(
        protocol: Protocol,
        script: Script,
        cuts: &dyn Fn(usize) -> Vec<usize>,
    ) -> (Vec<Message>, Vec<ParseError>) {
        let mut p = Parser::new(protocol);
        let mut out = Vec::new();
        let mut errs = Vec::new();
        let mut offs = [0u64; 2];
        for (dir, bytes) in script {
            let mut points = cuts(bytes.len());
            points.retain(|&c| c > 0 && c < bytes.len());
            points.sort_unstable();
            points.dedup();
            points.push(bytes.len());
            let mut start = 0;
            for end in points {
                let chunk = &bytes[start..end];
                if let Err(e) = p.feed(*dir, offs[dir.index()], chunk, &mut out) {
                    errs.push(e);
                }
                offs[dir.index()] += chunk.len() as u64;
                start = end;
            }
        }
        (out, errs)
    }

    /// Asserts that every single cut, and byte-by-byte feeding, give the messages of one feed.
    pub fn assert_split_invariant(protocol: Protocol, script: Script) -> Vec<Message> {
        let (whole, _) = run_whole(protocol, script);
        let longest = script.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
        for cut in 1..longest {
            let (split, _) = run_split(protocol, script, &|_| vec![cut]);
            assert_eq!(split, whole, "cut at {cut}");
        }
        let (bytewise, _) = run_split(protocol, script, &|len| (1..len).collect());
        assert_eq!(bytewise, whole, "byte by byte");
        whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_from_the_first_byte_is_not_inspected() {
        for protocol in [
            Protocol::Xmpp,
            Protocol::Irc,
            Protocol::Mqtt,
            Protocol::Http,
            Protocol::Msnp,
            Protocol::Ymsg,
            Protocol::Oscar,
        ] {
            let mut p = Parser::new(protocol);
            let mut out = Vec::new();
            p.feed(
                Direction::ClientToServer,
                0,
                &[0x16, 0x03, 0x01, 0x02, 0x00],
                &mut out,
            )
            .unwrap();
            assert_eq!(p.state(Direction::ClientToServer), StreamState::Encrypted);
            assert_eq!(p.state(Direction::ServerToClient), StreamState::Encrypted);
            assert!(!p.is_inspectable());
            p.feed(
                Direction::ServerToClient,
                0,
                b"PRIVMSG #a :hi\r\n",
                &mut out,
            )
            .unwrap();
            assert!(out.is_empty());
        }
    }

    #[test]
    fn retransmitted_bytes_are_skipped_and_holes_are_gaps() {
        let mut p = Parser::new(Protocol::Irc);
        let mut out = Vec::new();
        let c2s = Direction::ClientToServer;
        p.feed(c2s, 0, b"NICK al", &mut out).unwrap();
        // Overlaps the first chunk by two bytes.
        p.feed(c2s, 5, b"alice\r\nPRIVMSG bob :one\r\n", &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].sender.as_deref(), Some("alice"));
        assert_eq!(out[0].body, "one");
        // A hole: the line it falls into is lost, the next one is read.
        p.feed(c2s, 100, b"xt\r\nPRIVMSG bob :two\r\n", &mut out)
            .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].body, "two");
        assert_eq!(out[1].stream_offset, 104);
    }

    #[test]
    fn a_flow_seen_from_the_middle_resynchronises() {
        let mut p = Parser::new(Protocol::Irc);
        let mut out = Vec::new();
        p.feed(
            Direction::ServerToClient,
            50,
            b"tail\r\n:a!u@h PRIVMSG #c :x\r\n",
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].sender.as_deref(), Some("a"));
    }
}
