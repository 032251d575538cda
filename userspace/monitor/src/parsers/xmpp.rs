//! XMPP (RFC 6120, RFC 6121): `<message>` stanzas and file-transfer offers in `<iq>`s.
//!
//! Two stages. A resumable lexer walks each byte once, tracks tag nesting below the stream
//! root and copies one top-level element (a stanza, or a negotiation element such as
//! `<proceed/>`) into a bounded buffer. When the element is complete, a small non-incremental
//! parser reads it from that buffer into a flat element list, checking the syntax RFC 6120
//! section 11 allows (no DTD, no undeclared entities), and the stanza is interpreted.

use std::borrow::Cow;
use std::collections::VecDeque;

use memchr::{memchr, memchr2, memmem};

use super::{lossy, Errors, ParseError, StreamState};
use crate::message::{Attachment, Direction, Message, MessageKind, Protocol, TransferKind};

/// Largest top-level element kept, in bytes from its `<` to its last `>`. RFC 6120 section
/// 13.12 asks servers to accept stanzas of at least 10,000 bytes; real servers cap them
/// around 64 KiB to 1 MiB. A larger element is lexed to its end without being kept, reported
/// as [`ParseError::TooLarge`], and dropped.
pub const MAX_STANZA: usize = 1 << 20;

/// Deepest element nesting below the stream root. Deeper nesting is
/// [`ParseError::Malformed`] and the direction resynchronises.
pub const MAX_DEPTH: u32 = 256;

/// Upload slot requests (XEP-0363) remembered until their slot arrives, so the slot's URL can be
/// reported with the file name and size of the request; the oldest is forgotten first.
const MAX_PENDING_UPLOADS: usize = 16;

/// Longest element name the resynchronisation looks at (`<stream:stream`, `<client:message`).
const PROBE: usize = 32;

const NS_TLS: &[u8] = b"urn:ietf:params:xml:ns:xmpp-tls";
const NS_COMPRESS: &[u8] = b"http://jabber.org/protocol/compress";
const NS_BIND: &[u8] = b"urn:ietf:params:xml:ns:xmpp-bind";
const NS_SI: &[u8] = b"http://jabber.org/protocol/si";
const NS_SI_FT: &[u8] = b"http://jabber.org/protocol/si/profile/file-transfer";
const NS_JINGLE: &[u8] = b"urn:xmpp:jingle:1";
/// XEP-0234 bumps the version at the end (`:3`, `:4`, `:5`); the element shape stayed.
const NS_JINGLE_FT_PREFIX: &[u8] = b"urn:xmpp:jingle:apps:file-transfer:";
/// XEP-0363: `urn:xmpp:http:upload` (0.2, elements) and `urn:xmpp:http:upload:0` (attributes).
const NS_UPLOAD_PREFIX: &[u8] = b"urn:xmpp:http:upload";
const NS_OOB_X: &[u8] = b"jabber:x:oob";
const NS_OOB_IQ: &[u8] = b"jabber:iq:oob";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Lex {
    /// Character data, or blanks between top-level elements.
    #[default]
    Text,
    /// After `<`.
    Lt,
    /// In a start or empty-element tag; `quote` is the open attribute quote (0: none),
    /// `slash` whether the last byte was `/`.
    StartTag {
        quote: u8,
        slash: bool,
    },
    EndTag,
    /// In `<?...?>`; `question` whether the last byte was `?`.
    Pi {
        question: bool,
    },
    /// After `<!`.
    Bang,
    /// After `<!-`.
    BangDash,
    /// After `<![` and that many bytes of `CDATA[`.
    BangCdata(u8),
    Comment {
        dashes: u8,
    },
    Cdata {
        brackets: u8,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mode {
    #[default]
    Normal,
    /// Skipping to the next top-level element start after lost or broken bytes.
    Resync,
    /// The client sent `<starttls/>` or `<compress/>`: if its next non-blank byte is not `<`,
    /// the switch happened (its TLS or zlib bytes came before the server's answer was fed).
    AwaitSwitch(Switch),
    Encrypted,
    Compressed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Switch {
    Tls,
    Compress,
}

/// What [`Side::lex`] stopped for.
#[derive(Clone, Copy)]
enum Event {
    /// End of the chunk.
    Done,
    /// A top-level element is complete in `Side::buf`.
    Item,
    TooLarge(u64),
    /// Broken syntax at stream offset `.0`; the side is resynchronising.
    Malformed(u64, &'static str),
}

#[derive(Debug, Default)]
struct Side {
    mode: Mode,
    lex: Lex,
    /// Open elements below the stream root.
    level: u32,
    /// Inside a top-level element (from its `<`).
    in_item: bool,
    item_start: u64,
    buf: Vec<u8>,
    /// The current element went over [`MAX_STANZA`]: it is lexed, not kept.
    oversized: bool,
    /// After resynchronising, end tags of elements opened before the gap are skipped.
    lenient: bool,
    probe: [u8; PROBE],
    probe_len: usize,
    probe_start: u64,
}

impl Side {
    fn reset(&mut self, mode: Mode) {
        self.mode = mode;
        self.lex = Lex::Text;
        self.level = 0;
        self.in_item = false;
        self.oversized = false;
        self.buf.clear();
        self.probe_len = 0;
    }

    /// Copies `data[from..to]` into the current element's buffer, within [`MAX_STANZA`].
    fn keep(&mut self, data: &[u8], from: usize, to: usize, base: u64) -> Option<u64> {
        if !self.in_item || self.oversized || from >= to {
            return None;
        }
        let len = (base + to as u64).saturating_sub(self.item_start);
        if len > MAX_STANZA as u64 {
            self.oversized = true;
            self.buf = Vec::new();
            return Some(self.item_start);
        }
        self.buf.extend_from_slice(&data[from..to]);
        None
    }

    /// Runs the lexer over `data[i..]` until an event; returns where to go on.
    #[expect(
        clippy::too_many_lines,
        reason = "one state machine, clearer in one place"
    )]
    fn lex(&mut self, data: &[u8], mut i: usize, base: u64) -> (usize, Event) {
        let mut kept = i;
        macro_rules! keep_or_stop {
            ($to:expr) => {{
                let to = $to;
                let over = self.keep(data, kept, to, base);
                kept = to;
                over
            }};
        }
        macro_rules! fail {
            ($at:expr, $reason:expr) => {{
                let at: usize = $at;
                self.reset(Mode::Resync);
                return (at + 1, Event::Malformed(base + at as u64, $reason));
            }};
        }
        while i < data.len() {
            let c = data[i];
            match self.lex {
                Lex::Text => {
                    let rest = &data[i..];
                    let n = memchr(b'<', rest).unwrap_or(rest.len());
                    if self.level == 0 {
                        if let Some(bad) = rest[..n].iter().position(|b| !is_blank(*b)) {
                            fail!(i + bad, "text outside stanzas");
                        }
                        if n < rest.len() {
                            self.in_item = true;
                            self.oversized = false;
                            self.item_start = base + (i + n) as u64;
                            kept = i + n;
                        }
                    }
                    if n < rest.len() {
                        self.lex = Lex::Lt;
                        i += n + 1;
                    } else {
                        i = data.len();
                    }
                }
                Lex::Lt => {
                    self.lex = match c {
                        b'/' => Lex::EndTag,
                        b'?' => Lex::Pi { question: false },
                        b'!' => Lex::Bang,
                        _ if is_name_byte(c) => Lex::StartTag {
                            quote: 0,
                            slash: false,
                        },
                        _ => fail!(i, "bad byte after '<'"),
                    };
                    i += 1;
                }
                Lex::StartTag { quote, slash: _ } if quote != 0 => {
                    let rest = &data[i..];
                    match memchr2(quote, b'<', rest) {
                        Some(n) if rest[n] == b'<' => fail!(i + n, "'<' in an attribute value"),
                        Some(n) => {
                            self.lex = Lex::StartTag {
                                quote: 0,
                                slash: false,
                            };
                            i += n + 1;
                        }
                        None => i = data.len(),
                    }
                }
                Lex::StartTag { quote: _, slash } => {
                    // Names and blanks between attributes: only the last byte before a quote
                    // or the tag's end matters.
                    let rest = &data[i..];
                    let n = rest
                        .iter()
                        .position(|&b| matches!(b, b'"' | b'\'' | b'>' | b'<'))
                        .unwrap_or(rest.len());
                    let slash = if n == 0 { slash } else { rest[n - 1] == b'/' };
                    if n == rest.len() {
                        self.lex = Lex::StartTag { quote: 0, slash };
                        i = data.len();
                        continue;
                    }
                    let c = rest[n];
                    i += n + 1;
                    match c {
                        b'"' | b'\'' => {
                            self.lex = Lex::StartTag {
                                quote: c,
                                slash: false,
                            }
                        }
                        b'<' => fail!(i - 1, "'<' in a tag"),
                        b'>' => {
                            self.lex = Lex::Text;
                            if slash {
                                if self.level == 0 {
                                    return self.item_end(data, kept, i, base);
                                }
                            } else if self.level == 0 {
                                if let Some(at) = keep_or_stop!(i) {
                                    self.level = 1;
                                    return (i, Event::TooLarge(at));
                                }
                                if local(tag_name(&self.buf)) == b"stream" {
                                    // A stream header (RFC 6120 section 4.2), first or after a
                                    // restart: the root stays open, stanzas follow at level 0.
                                    self.in_item = false;
                                    self.buf.clear();
                                    self.lenient = false;
                                } else {
                                    self.level = 1;
                                }
                            } else if self.level >= MAX_DEPTH {
                                fail!(i - 1, "elements nested too deep");
                            } else {
                                self.level += 1;
                            }
                        }
                        _ => {}
                    }
                }
                Lex::EndTag => {
                    let rest = &data[i..];
                    match memchr2(b'>', b'<', rest) {
                        Some(n) if rest[n] == b'<' => fail!(i + n, "'<' in an end tag"),
                        Some(n) => {
                            i += n + 1;
                            self.lex = Lex::Text;
                            match self.level {
                                0 => {
                                    // An end tag at the stream level: the stream's own, or
                                    // (after a resynchronisation) one of an element opened
                                    // before the gap.
                                    let over = keep_or_stop!(i);
                                    let name = tag_name(&self.buf);
                                    let closes_stream = over.is_none() && local(name) == b"stream";
                                    self.in_item = false;
                                    self.buf.clear();
                                    if !closes_stream && !self.lenient {
                                        fail!(i - 1, "end tag without start tag");
                                    }
                                }
                                1 => {
                                    self.level = 0;
                                    return self.item_end(data, kept, i, base);
                                }
                                _ => self.level -= 1,
                            }
                        }
                        None => i = data.len(),
                    }
                }
                Lex::Pi { question } => {
                    i += 1;
                    self.lex = Lex::Pi {
                        question: c == b'?',
                    };
                    if question && c == b'>' {
                        self.lex = Lex::Text;
                        self.end_markup();
                    }
                }
                Lex::Bang => {
                    self.lex = match c {
                        b'-' => Lex::BangDash,
                        b'[' if self.level > 0 => Lex::BangCdata(0),
                        // RFC 6120 section 11.1: no DTD in an XMPP stream.
                        _ => fail!(i, "DOCTYPE or unknown markup"),
                    };
                    i += 1;
                }
                Lex::BangDash => {
                    if c != b'-' {
                        fail!(i, "bad comment start");
                    }
                    self.lex = Lex::Comment { dashes: 0 };
                    i += 1;
                }
                Lex::BangCdata(n) => {
                    if b"CDATA[".get(usize::from(n)) != Some(&c) {
                        fail!(i, "bad CDATA start");
                    }
                    self.lex = if n == 5 {
                        Lex::Cdata { brackets: 0 }
                    } else {
                        Lex::BangCdata(n + 1)
                    };
                    i += 1;
                }
                Lex::Comment { dashes } => {
                    i += 1;
                    self.lex = match c {
                        b'-' => Lex::Comment {
                            dashes: dashes.saturating_add(1),
                        },
                        b'>' if dashes >= 2 => {
                            self.end_markup();
                            Lex::Text
                        }
                        _ => Lex::Comment { dashes: 0 },
                    };
                }
                Lex::Cdata { brackets } => {
                    i += 1;
                    self.lex = match c {
                        b']' => Lex::Cdata {
                            brackets: brackets.saturating_add(1),
                        },
                        b'>' if brackets >= 2 => Lex::Text,
                        _ => Lex::Cdata { brackets: 0 },
                    };
                }
            }
        }
        if let Some(at) = self.keep(data, kept, i, base) {
            return (i, Event::TooLarge(at));
        }
        (i, Event::Done)
    }

    /// A comment or processing instruction ended; at the stream level it is not kept.
    fn end_markup(&mut self) {
        if self.level == 0 {
            self.in_item = false;
            self.buf.clear();
        }
    }

    /// A top-level element ended at `data[..to]`.
    fn item_end(&mut self, data: &[u8], kept: usize, to: usize, base: u64) -> (usize, Event) {
        let over = self.keep(data, kept, to, base);
        self.in_item = false;
        if let Some(at) = over {
            return (to, Event::TooLarge(at));
        }
        if self.oversized {
            self.oversized = false;
            return (to, Event::Done);
        }
        (to, Event::Item)
    }

    /// Looks for the start of a top-level element after lost or broken bytes: `<` and a name
    /// whose local part is one the parser acts on. XML text cannot hold a raw `<`, so outside
    /// CDATA such a match is a real tag; it can still be an element nested in a stanza (a
    /// forwarded `<message>`), which is why end tags at the stream level are then tolerated.
    fn resync(
        &mut self,
        data: &[u8],
        mut i: usize,
        base: u64,
    ) -> (usize, Option<([u8; PROBE], usize, u64)>) {
        while i < data.len() {
            if self.probe_len == 0 {
                let Some(n) = memchr(b'<', &data[i..]) else {
                    return (data.len(), None);
                };
                i += n;
                self.probe[0] = b'<';
                self.probe_len = 1;
                self.probe_start = base + i as u64;
                i += 1;
                continue;
            }
            let c = data[i];
            i += 1;
            if is_blank(c) || c == b'>' || c == b'/' {
                let name = &self.probe[1..self.probe_len];
                let wanted = matches!(
                    local(name),
                    b"message"
                        | b"iq"
                        | b"presence"
                        | b"stream"
                        | b"proceed"
                        | b"starttls"
                        | b"compressed"
                );
                if wanted && self.probe_len < PROBE {
                    self.probe[self.probe_len] = c;
                    let found = (self.probe, self.probe_len + 1, self.probe_start);
                    self.reset(Mode::Normal);
                    self.lenient = true;
                    return (i, Some(found));
                }
                self.probe_len = 0;
            } else if c == b'<' {
                self.probe_len = 1;
                self.probe_start = base + (i - 1) as u64;
            } else if self.probe_len < PROBE - 1 {
                self.probe[self.probe_len] = c;
                self.probe_len += 1;
            } else {
                self.probe_len = 0;
            }
        }
        (i, None)
    }
}

/// XMPP state of one connection.
#[derive(Debug, Default)]
pub struct XmppParser {
    sides: [Side; 2],
    /// The full JID the server bound to the client (RFC 6120 section 7.6.1), the sender of
    /// client stanzas without `from`.
    bound_jid: Option<String>,
    /// Upload slot requests by iq id, oldest first.
    pending_uploads: VecDeque<(String, Attachment)>,
    /// The element lists of the last stanza, kept for the next one.
    scratch: DocScratch,
}

impl XmppParser {
    pub(crate) fn state(&self, dir: Direction) -> StreamState {
        match self.sides[dir.index()].mode {
            Mode::Normal | Mode::AwaitSwitch(_) => StreamState::Readable,
            Mode::Resync => StreamState::Resyncing,
            Mode::Encrypted => StreamState::Encrypted,
            Mode::Compressed => StreamState::Compressed,
        }
    }

    pub(crate) fn gap(&mut self, dir: Direction) {
        let side = &mut self.sides[dir.index()];
        if matches!(
            side.mode,
            Mode::Normal | Mode::Resync | Mode::AwaitSwitch(_)
        ) {
            side.reset(Mode::Resync);
        }
    }

    fn switch_both(&mut self, mode: Mode) {
        for side in &mut self.sides {
            side.reset(mode);
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
        let mut i = 0;
        while i < data.len() {
            let side = &mut self.sides[dir.index()];
            match side.mode {
                Mode::Encrypted | Mode::Compressed => return,
                Mode::AwaitSwitch(switch) => {
                    let c = data[i];
                    if is_blank(c) {
                        i += 1;
                    } else if c == b'<' {
                        side.mode = Mode::Normal;
                    } else {
                        self.switch_both(match switch {
                            Switch::Tls => Mode::Encrypted,
                            Switch::Compress => Mode::Compressed,
                        });
                        return;
                    }
                }
                Mode::Resync => {
                    let (next, found) = side.resync(data, i, offset);
                    i = next;
                    if let Some((probe, len, start)) = found {
                        // The probe ends at the name's delimiter, so lexing it cannot complete
                        // an element or fail; whatever it reports is handled all the same.
                        let (_, event) = side.lex(&probe[..len], 0, start);
                        self.event(dir, event, out, errors);
                    }
                }
                Mode::Normal => {
                    let (next, event) = side.lex(data, i, offset);
                    i = next;
                    self.event(dir, event, out, errors);
                }
            }
        }
    }

    fn event(&mut self, dir: Direction, event: Event, out: &mut Vec<Message>, errors: &mut Errors) {
        match event {
            Event::Done => {}
            Event::TooLarge(offset) => {
                errors.push(ParseError::TooLarge {
                    protocol: Protocol::Xmpp,
                    offset,
                    limit: MAX_STANZA,
                });
            }
            Event::Malformed(offset, reason) => {
                errors.push(ParseError::Malformed {
                    protocol: Protocol::Xmpp,
                    offset,
                    reason,
                });
            }
            Event::Item => {
                let side = &mut self.sides[dir.index()];
                let buf = std::mem::take(&mut side.buf);
                let start = side.item_start;
                if let Err(reason) = self.item(dir, start, &buf, out) {
                    errors.push(ParseError::Malformed {
                        protocol: Protocol::Xmpp,
                        offset: start,
                        reason,
                    });
                }
                let side = &mut self.sides[dir.index()];
                if side.buf.is_empty() {
                    side.buf = buf;
                    side.buf.clear();
                }
            }
        }
    }

    fn item(
        &mut self,
        dir: Direction,
        start: u64,
        bytes: &[u8],
        out: &mut Vec<Message>,
    ) -> Result<(), &'static str> {
        let doc = Doc::parse(bytes, std::mem::take(&mut self.scratch))?;
        let result = self.interpret(dir, start, &doc, out);
        self.scratch = doc.into_scratch();
        result
    }

    fn interpret(
        &mut self,
        dir: Direction,
        start: u64,
        doc: &Doc,
        out: &mut Vec<Message>,
    ) -> Result<(), &'static str> {
        let ns = doc.ns(0);
        // Negotiation elements are matched by name when their namespace was declared on the
        // stream header (which is not part of the element) or not at all.
        let ns_is = |want: &[u8]| ns.is_none_or(|ns| ns == want);
        let c2s = dir == Direction::ClientToServer;
        match local(doc.root_name()) {
            b"message" => self.message(dir, start, doc, out),
            b"iq" => self.iq(dir, start, doc, out),
            // RFC 6120 section 5.4.3.3: TLS starts right after `<proceed/>`.
            b"proceed" if !c2s && ns_is(NS_TLS) => {
                self.switch_both(Mode::Encrypted);
                Ok(())
            }
            b"starttls" if c2s && ns_is(NS_TLS) => {
                self.sides[dir.index()].mode = Mode::AwaitSwitch(Switch::Tls);
                Ok(())
            }
            // XEP-0138 section 5: compression starts right after `<compressed/>`.
            b"compressed" if !c2s && ns_is(NS_COMPRESS) => {
                self.switch_both(Mode::Compressed);
                Ok(())
            }
            b"compress" if c2s && ns_is(NS_COMPRESS) => {
                self.sides[dir.index()].mode = Mode::AwaitSwitch(Switch::Compress);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn sender(&self, dir: Direction, doc: &Doc) -> Result<Option<String>, &'static str> {
        match doc.attr_text(0, b"from")? {
            Some(from) => Ok(Some(from)),
            None if dir == Direction::ClientToServer => Ok(self.bound_jid.clone()),
            None => Ok(None),
        }
    }

    fn message(
        &mut self,
        dir: Direction,
        start: u64,
        doc: &Doc,
        out: &mut Vec<Message>,
    ) -> Result<(), &'static str> {
        let kind = match doc.attr(0, b"type") {
            Some(b"error") => return Ok(()),
            Some(b"headline") => MessageKind::Notice,
            _ => MessageKind::Chat,
        };
        let body = match doc
            .children(0)
            .find(|&c| local(doc.name(c)) == b"body" && is_stanza_ns(doc.ns(c)))
        {
            Some(b) => doc.text(b)?,
            None => String::new(),
        };
        let mut attachments = Vec::new();
        for x in doc
            .children(0)
            .filter(|&c| local(doc.name(c)) == b"x" && doc.ns(c) == Some(NS_OOB_X))
        {
            if let Some(a) = oob(doc, x)? {
                attachments.push(a.0);
            }
        }
        if body.is_empty() && attachments.is_empty() {
            // Chat states, receipts, markers: nothing was said.
            return Ok(());
        }
        // Clients that send a file by OOB put its URL in the body as well (XEP-0066 section 4).
        let only_file = !attachments.is_empty()
            && (body.trim().is_empty()
                || attachments
                    .iter()
                    .any(|a| a.url.as_deref() == Some(body.trim())));
        out.push(Message {
            protocol: Protocol::Xmpp,
            direction: dir,
            kind: if only_file {
                MessageKind::FileOffer
            } else {
                kind
            },
            sender: self.sender(dir, doc)?,
            recipients: doc.attr_text(0, b"to")?.into_iter().collect(),
            body,
            attachments,
            stream_offset: start,
        });
        Ok(())
    }

    fn iq(
        &mut self,
        dir: Direction,
        start: u64,
        doc: &Doc,
        out: &mut Vec<Message>,
    ) -> Result<(), &'static str> {
        let ty = doc.attr(0, b"type").unwrap_or_default();
        let mut attachments = Vec::new();
        let mut descs = Vec::new();
        for c in doc.children(0) {
            let ns = doc.ns(c).unwrap_or_default();
            match (local(doc.name(c)), ty) {
                (b"bind", b"result") if ns == NS_BIND && dir == Direction::ServerToClient => {
                    if let Some(jid) = doc.child(c, b"jid") {
                        self.bound_jid = Some(doc.text(jid)?.trim().to_owned());
                    }
                }
                // XEP-0096 section 4: the offer is an `<si>` with the file-transfer profile.
                (b"si", b"set") if ns == NS_SI && doc.attr(c, b"profile") == Some(NS_SI_FT) => {
                    si_offer(doc, c, &mut attachments, &mut descs)?;
                }
                // XEP-0234 section 6: files offered in session-initiate (or added later).
                (b"jingle", b"set")
                    if ns == NS_JINGLE
                        && matches!(
                            doc.attr(c, b"action"),
                            Some(b"session-initiate" | b"content-add")
                        ) =>
                {
                    jingle_offers(doc, c, &mut attachments, &mut descs)?;
                }
                (b"request", b"get") if ns.starts_with(NS_UPLOAD_PREFIX) => {
                    attachments.push(self.upload_request(doc, c)?);
                }
                (b"slot", b"result") if ns.starts_with(NS_UPLOAD_PREFIX) => {
                    attachments.extend(self.upload_slot(doc, c)?);
                }
                (b"query", b"set") if ns == NS_OOB_IQ => {
                    if let Some((a, desc)) = oob(doc, c)? {
                        attachments.push(a);
                        descs.extend(desc);
                    }
                }
                _ => {}
            }
        }
        if attachments.is_empty() {
            return Ok(());
        }
        out.push(Message {
            protocol: Protocol::Xmpp,
            direction: dir,
            kind: MessageKind::FileOffer,
            sender: self.sender(dir, doc)?,
            recipients: doc.attr_text(0, b"to")?.into_iter().collect(),
            body: descs.join("\n"),
            attachments,
            stream_offset: start,
        });
        Ok(())
    }

    /// XEP-0363 section 4: the slot request names the file before it is uploaded. Version 0
    /// carries the fields as attributes, version 0.2 as child elements.
    fn upload_request(&mut self, doc: &Doc, request: usize) -> Result<Attachment, &'static str> {
        let field = |name: &[u8]| -> Result<Option<String>, &'static str> {
            match doc.attr_text(request, name)? {
                Some(v) => Ok(Some(v)),
                None => doc.child_text(request, name),
            }
        };
        let attachment = Attachment {
            transfer: TransferKind::XmppHttpUpload,
            name: field(b"filename")?.unwrap_or_default(),
            size: field(b"size")?.as_deref().and_then(parse_size),
            mime: field(b"content-type")?,
            url: None,
        };
        if let Some(id) = doc.attr_text(0, b"id")? {
            if self.pending_uploads.len() == MAX_PENDING_UPLOADS {
                self.pending_uploads.pop_front();
            }
            self.pending_uploads.push_back((id, attachment.clone()));
        }
        Ok(attachment)
    }

    /// The slot answering a request: its GET URL is where recipients will fetch the file.
    fn upload_slot(&mut self, doc: &Doc, slot: usize) -> Result<Option<Attachment>, &'static str> {
        let Some(get) = doc.child(slot, b"get") else {
            return Ok(None);
        };
        let url = match doc.attr_text(get, b"url")? {
            Some(url) => url,
            None => doc.text(get)?.trim().to_owned(),
        };
        let request = doc.attr_text(0, b"id")?.and_then(|id| {
            let at = self.pending_uploads.iter().position(|(p, _)| *p == id)?;
            self.pending_uploads.remove(at).map(|(_, a)| a)
        });
        let mut attachment = request.unwrap_or_else(|| Attachment {
            transfer: TransferKind::XmppHttpUpload,
            name: file_name_of_url(&url),
            size: None,
            mime: None,
            url: None,
        });
        attachment.url = Some(url);
        Ok(Some(attachment))
    }
}

fn si_offer(
    doc: &Doc,
    si: usize,
    attachments: &mut Vec<Attachment>,
    descs: &mut Vec<String>,
) -> Result<(), &'static str> {
    let Some(file) = doc
        .children(si)
        .find(|&f| local(doc.name(f)) == b"file" && doc.ns(f) == Some(NS_SI_FT))
    else {
        return Ok(());
    };
    attachments.push(Attachment {
        transfer: TransferKind::XmppSi,
        name: doc.attr_text(file, b"name")?.unwrap_or_default(),
        size: doc
            .attr_text(file, b"size")?
            .as_deref()
            .and_then(parse_size),
        mime: doc.attr_text(si, b"mime-type")?,
        url: None,
    });
    descs.extend(doc.child_text(file, b"desc")?);
    Ok(())
}

fn jingle_offers(
    doc: &Doc,
    jingle: usize,
    attachments: &mut Vec<Attachment>,
    descs: &mut Vec<String>,
) -> Result<(), &'static str> {
    for content in doc
        .children(jingle)
        .filter(|&e| local(doc.name(e)) == b"content")
    {
        let is_ft = |e: usize| {
            local(doc.name(e)) == b"description"
                && doc
                    .ns(e)
                    .is_some_and(|n| n.starts_with(NS_JINGLE_FT_PREFIX))
        };
        for description in doc.children(content).filter(|&e| is_ft(e)) {
            for file in doc
                .children(description)
                .filter(|&e| local(doc.name(e)) == b"file")
            {
                attachments.push(Attachment {
                    transfer: TransferKind::XmppJingle,
                    name: doc.child_text(file, b"name")?.unwrap_or_default(),
                    size: doc
                        .child_text(file, b"size")?
                        .as_deref()
                        .and_then(parse_size),
                    mime: doc.child_text(file, b"media-type")?,
                    url: None,
                });
                descs.extend(doc.child_text(file, b"desc")?);
            }
        }
    }
    Ok(())
}

/// XEP-0066: `<url>` and an optional `<desc>` inside `<x>` (messages) or `<query>` (iq).
fn oob(doc: &Doc, e: usize) -> Result<Option<(Attachment, Option<String>)>, &'static str> {
    let Some(url) = doc.child_text(e, b"url")? else {
        return Ok(None);
    };
    let url = url.trim().to_owned();
    let attachment = Attachment {
        transfer: TransferKind::OutOfBand,
        name: file_name_of_url(&url),
        size: None,
        mime: None,
        url: Some(url),
    };
    Ok(Some((attachment, doc.child_text(e, b"desc")?)))
}

/// The last path segment of a URL, percent-decoded: the name a file sent by URL will get.
fn file_name_of_url(url: &str) -> String {
    let path = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest.split_once('/').map_or("", |(_, p)| p));
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let segment = path.rsplit('/').next().unwrap_or_default().as_bytes();
    let mut decoded = Vec::with_capacity(segment.len());
    let mut i = 0;
    while i < segment.len() {
        let hex = segment
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (segment[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                decoded.push(b);
                i += 3;
            }
            (b, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    lossy(&decoded).into_owned()
}

fn parse_size(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

/// Stanza children in the default content namespace (RFC 6120 section 4.8.3).
fn is_stanza_ns(ns: Option<&[u8]>) -> bool {
    ns.is_none_or(|ns| {
        matches!(
            ns,
            b"jabber:client" | b"jabber:server" | b"jabber:component:accept"
        )
    })
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Bytes that can start an element name: XML name start characters, and any non-ASCII byte
/// (a UTF-8 encoded name character; validated no further).
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':' || b >= 0x80
}

/// The name of the tag `<name ...` or `</name>` at the start of `tag`.
fn tag_name(tag: &[u8]) -> &[u8] {
    let tag = tag.strip_prefix(b"<").unwrap_or(tag);
    let tag = tag.strip_prefix(b"/").unwrap_or(tag);
    let end = tag
        .iter()
        .position(|&b| is_blank(b) || b == b'>' || b == b'/')
        .unwrap_or(tag.len());
    &tag[..end]
}

/// A qualified name without its prefix.
fn local(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|&b| b == b':') {
        Some(k) => &name[k + 1..],
        None => name,
    }
}

#[derive(Debug)]
struct Elem<'a> {
    name: &'a [u8],
    parent: Option<usize>,
    attrs: std::ops::Range<usize>,
}

/// One complete top-level element, parsed into a flat list in document order (element 0 is
/// the root); names, attribute values and text borrow from the element's bytes.
struct Doc<'a> {
    elems: Vec<Elem<'a>>,
    attrs: Vec<(&'a [u8], &'a [u8])>,
    /// Character data by element: (element, is CDATA, raw bytes).
    texts: Vec<(usize, bool, &'a [u8])>,
    /// The open elements while parsing (empty after); only its allocation is kept.
    stack: Vec<usize>,
}

/// The allocations of a [`Doc`] between two stanzas, emptied: every stanza would otherwise
/// allocate (and grow) four lists.
#[derive(Debug, Default)]
struct DocScratch {
    elems: Vec<Elem<'static>>,
    attrs: Vec<(&'static [u8], &'static [u8])>,
    texts: Vec<(usize, bool, &'static [u8])>,
    stack: Vec<usize>,
}

/// An empty list of another lifetime in the same allocation: the elements have the same
/// layout, so collecting in place keeps the buffer (std's in-place iteration of `Vec`).
fn recycle<T, U>(v: Vec<T>) -> Vec<U> {
    v.into_iter().filter_map(|_| None).collect()
}

impl<'a> Doc<'a> {
    /// Parses `s`, filling the lists of `scratch` (given back by [`Doc::into_scratch`]).
    fn parse(s: &'a [u8], scratch: DocScratch) -> Result<Doc<'a>, &'static str> {
        let mut doc = Doc {
            elems: recycle(scratch.elems),
            attrs: recycle(scratch.attrs),
            texts: recycle(scratch.texts),
            stack: scratch.stack,
        };
        let mut stack = std::mem::take(&mut doc.stack);
        stack.clear();
        let mut i = 0;
        while i < s.len() {
            let rest = &s[i..];
            if rest[0] != b'<' {
                let n = memchr(b'<', rest).unwrap_or(rest.len());
                match stack.last() {
                    Some(&e) => doc.texts.push((e, false, &rest[..n])),
                    None if rest[..n].iter().all(|&b| is_blank(b)) => {}
                    None => return Err("text after the element"),
                }
                i += n;
            } else if let Some(tag) = rest.strip_prefix(b"</") {
                let end = memchr(b'>', tag).ok_or("unterminated end tag")?;
                let name = tag[..end].trim_ascii_end();
                let open = stack.pop().ok_or("end tag without start tag")?;
                if doc.elems[open].name != name {
                    return Err("end tag does not match its start tag");
                }
                i += 2 + end + 1;
            } else if let Some(body) = rest.strip_prefix(b"<!--") {
                i += 4 + memmem::find(body, b"-->").ok_or("unterminated comment")? + 3;
            } else if let Some(body) = rest.strip_prefix(b"<![CDATA[") {
                let end = memmem::find(body, b"]]>").ok_or("unterminated CDATA section")?;
                let &e = stack.last().ok_or("CDATA outside an element")?;
                doc.texts.push((e, true, &body[..end]));
                i += 9 + end + 3;
            } else if let Some(body) = rest.strip_prefix(b"<?") {
                i +=
                    2 + memmem::find(body, b"?>").ok_or("unterminated processing instruction")? + 2;
            } else if rest.starts_with(b"<!") {
                return Err("DOCTYPE or unknown markup");
            } else {
                if stack.is_empty() && !doc.elems.is_empty() {
                    return Err("second element after the root");
                }
                let (len, empty) = doc.start_tag(rest, stack.last().copied())?;
                if !empty {
                    stack.push(doc.elems.len() - 1);
                }
                i += len;
            }
        }
        if doc.elems.is_empty() || !stack.is_empty() {
            return Err("incomplete element");
        }
        doc.stack = stack;
        Ok(doc)
    }

    /// The emptied lists, for the next stanza.
    fn into_scratch(self) -> DocScratch {
        DocScratch {
            elems: recycle(self.elems),
            attrs: recycle(self.attrs),
            texts: recycle(self.texts),
            stack: self.stack,
        }
    }

    /// Reads `<name attr='value' ...>` or `.../>` at the start of `s`; returns its length and
    /// whether it was an empty-element tag.
    fn start_tag(
        &mut self,
        s: &'a [u8],
        parent: Option<usize>,
    ) -> Result<(usize, bool), &'static str> {
        let mut j = 1;
        let name = take_name(s, &mut j)?;
        let first_attr = self.attrs.len();
        let empty = loop {
            while s.get(j).is_some_and(|&b| is_blank(b)) {
                j += 1;
            }
            match s.get(j) {
                Some(b'>') => {
                    j += 1;
                    break false;
                }
                Some(b'/') if s.get(j + 1) == Some(&b'>') => {
                    j += 2;
                    break true;
                }
                Some(_) => {
                    let attr = take_name(s, &mut j)?;
                    while s.get(j).is_some_and(|&b| is_blank(b)) {
                        j += 1;
                    }
                    if s.get(j) != Some(&b'=') {
                        return Err("attribute without value");
                    }
                    j += 1;
                    while s.get(j).is_some_and(|&b| is_blank(b)) {
                        j += 1;
                    }
                    let quote = *s
                        .get(j)
                        .filter(|&&q| q == b'"' || q == b'\'')
                        .ok_or("unquoted attribute value")?;
                    let value = &s[j + 1..];
                    let end = memchr(quote, value).ok_or("unterminated attribute value")?;
                    let value = &value[..end];
                    if memchr(b'<', value).is_some() {
                        return Err("'<' in an attribute value");
                    }
                    self.attrs.push((attr, value));
                    j += 1 + end + 1;
                }
                None => return Err("unterminated start tag"),
            }
        };
        self.elems.push(Elem {
            name,
            parent,
            attrs: first_attr..self.attrs.len(),
        });
        Ok((j, empty))
    }

    fn root_name(&self) -> &'a [u8] {
        self.name(0)
    }

    fn name(&self, e: usize) -> &'a [u8] {
        self.elems.get(e).map_or(&[][..], |e| e.name)
    }

    fn attrs(&self, e: usize) -> &[(&'a [u8], &'a [u8])] {
        self.elems
            .get(e)
            .and_then(|e| self.attrs.get(e.attrs.clone()))
            .unwrap_or_default()
    }

    /// Raw attribute value (namespace URIs, types and profiles never need entity decoding).
    fn attr(&self, e: usize, name: &[u8]) -> Option<&'a [u8]> {
        self.attrs(e)
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    fn attr_text(&self, e: usize, name: &[u8]) -> Result<Option<String>, &'static str> {
        self.attr(e, name)
            .map(|v| decode(v).map(Cow::into_owned))
            .transpose()
    }

    /// The namespace of element `e`: its prefix's (or the default) declaration on it or its
    /// nearest ancestor; `None` when declared outside this element (on the stream header).
    fn ns(&self, e: usize) -> Option<&'a [u8]> {
        let name = self.name(e);
        let prefix = name.iter().rposition(|&b| b == b':').map(|k| &name[..k]);
        let mut cur = Some(e);
        while let Some(at) = cur {
            for (k, v) in self.attrs(at) {
                let declares = match prefix {
                    None => *k == b"xmlns",
                    Some(p) => k.strip_prefix(b"xmlns:") == Some(p),
                };
                if declares {
                    return Some(v);
                }
            }
            cur = self.elems.get(at).and_then(|e| e.parent);
        }
        None
    }

    fn children(&self, e: usize) -> impl Iterator<Item = usize> + '_ {
        self.elems
            .iter()
            .enumerate()
            .skip(e + 1)
            .filter(move |(_, c)| c.parent == Some(e))
            .map(|(i, _)| i)
    }

    fn child(&self, e: usize, name: &[u8]) -> Option<usize> {
        self.children(e).find(|&c| local(self.name(c)) == name)
    }

    fn child_text(&self, e: usize, name: &[u8]) -> Result<Option<String>, &'static str> {
        self.child(e, name).map(|c| self.text(c)).transpose()
    }

    /// The element's own character data, entities decoded, CDATA as is.
    fn text(&self, e: usize) -> Result<String, &'static str> {
        let mut out = String::new();
        for &(_, cdata, raw) in self.texts.iter().filter(|t| t.0 == e) {
            if cdata {
                out.push_str(&lossy(raw));
            } else {
                out.push_str(&decode(raw)?);
            }
        }
        Ok(out)
    }
}

/// Bytes of an XML name, from `s[*j]` up to a delimiter.
fn take_name<'a>(s: &'a [u8], j: &mut usize) -> Result<&'a [u8], &'static str> {
    let start = *j;
    while let Some(&b) = s.get(*j) {
        if is_blank(b) || matches!(b, b'/' | b'>' | b'=' | b'<' | b'"' | b'\'' | b'&') {
            break;
        }
        *j += 1;
    }
    let name = &s[start..*j];
    if name.is_empty() || !name.first().is_some_and(|&b| is_name_byte(b)) {
        return Err("bad element or attribute name");
    }
    Ok(name)
}

/// Decodes the five predefined entities and character references (XML 1.0 section 4.1);
/// invalid UTF-8 becomes U+FFFD. RFC 6120 section 11.1 forbids any other entity.
fn decode(raw: &[u8]) -> Result<Cow<'_, str>, &'static str> {
    if memchr(b'&', raw).is_none() {
        return Ok(lossy(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(n) = memchr(b'&', rest) {
        out.push_str(&lossy(&rest[..n]));
        let after = &rest[n + 1..];
        let semi =
            memchr(b';', &after[..after.len().min(12)]).ok_or("unterminated entity reference")?;
        let ch = match &after[..semi] {
            b"lt" => '<',
            b"gt" => '>',
            b"amp" => '&',
            b"quot" => '"',
            b"apos" => '\'',
            [b'#', b'x', hex @ ..] => char_ref(hex, 16)?,
            [b'#', dec @ ..] => char_ref(dec, 10)?,
            _ => return Err("unknown entity"),
        };
        out.push(ch);
        rest = &after[semi + 1..];
    }
    out.push_str(&lossy(rest));
    Ok(Cow::Owned(out))
}

fn char_ref(digits: &[u8], radix: u32) -> Result<char, &'static str> {
    let digits = std::str::from_utf8(digits).map_err(|_| "bad character reference")?;
    if digits.is_empty() || digits.starts_with('+') {
        return Err("bad character reference");
    }
    u32::from_str_radix(digits, radix)
        .ok()
        .and_then(char::from_u32)
        .filter(|&c| c != '\0')
        .ok_or("bad character reference")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::parsers::testutil::{assert_split_invariant, run_split, run_whole};
    use crate::parsers::Parser;

    const C2S: Direction = Direction::ClientToServer;
    const S2C: Direction = Direction::ServerToClient;

    const CONVERSATION: &[(Direction, &[u8])] = &[
        (
            C2S,
            b"<?xml version='1.0'?>\n<stream:stream to='example.com' version='1.0' \
              xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        ),
        (
            S2C,
            b"<?xml version='1.0'?><stream:stream from='example.com' id='s1' version='1.0' \
              xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>\
              <stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
              <mechanism>PLAIN</mechanism></mechanisms></stream:features>",
        ),
        (C2S, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldABwYXNz</auth>"),
        (S2C, b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"),
        // RFC 6120 section 6.4.6: the stream restarts after SASL.
        (
            C2S,
            b"<stream:stream to='example.com' version='1.0' xmlns='jabber:client' \
              xmlns:stream='http://etherx.jabber.org/streams'>\
              <iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
              <resource>balcony</resource></bind></iq>",
        ),
        (
            S2C,
            b"<stream:stream from='example.com' id='s2' version='1.0' xmlns='jabber:client' \
              xmlns:stream='http://etherx.jabber.org/streams'><stream:features>\
              <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>\n\
              <iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
              <jid>juliet@example.com/balcony</jid></bind></iq>",
        ),
        (
            C2S,
            b"<presence><show>chat</show></presence> \n\
              <message to='romeo@example.net' type='chat' id='m1'>\
              <body>Art thou &amp; a Montague? &#x263A;&#9731; <![CDATA[<b>&amp;</b>]]> caf\xc3\xa9</body>\
              <active xmlns='http://jabber.org/protocol/chatstates'/></message>\
              <message to='romeo@example.net'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>\
              <!-- a comment between stanzas -->\
              <message to='romeo@example.net'><body>https://up.example.com/a/b/My%20Photo.jpg?x=1</body>\
              <x xmlns='jabber:x:oob'><url>https://up.example.com/a/b/My%20Photo.jpg?x=1</url></x></message>",
        ),
        (
            C2S,
            b"<iq type='set' id='si1' to='romeo@example.net/orchard'>\
              <si xmlns='http://jabber.org/protocol/si' id='a0' mime-type='text/plain' \
              profile='http://jabber.org/protocol/si/profile/file-transfer'>\
              <file xmlns='http://jabber.org/protocol/si/profile/file-transfer' name='test.txt' size='1022'>\
              <desc>This is a test.</desc></file>\
              <feature xmlns='http://jabber.org/protocol/feature-neg'/></si></iq>\
              <iq type='set' id='j1' to='romeo@example.net/orchard'>\
              <jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' sid='851ba2'>\
              <content creator='initiator' name='a-file-offer' senders='initiator'>\
              <description xmlns='urn:xmpp:jingle:apps:file-transfer:5'><file>\
              <media-type>image/jpeg</media-type><name>&quot;summer&quot;.jpg</name><size>3032449</size>\
              </file></description><transport xmlns='urn:xmpp:jingle:transports:s5b:1'/></content>\
              </jingle></iq>\
              <iq type='get' id='u1' to='upload.example.com'>\
              <request xmlns='urn:xmpp:http:upload:0' filename='tr\xc3\xa8s cool.jpg' size='23456' content-type='image/jpeg'/></iq>",
        ),
        (
            S2C,
            b"<message from='romeo@example.net/orchard' to='juliet@example.com/balcony' type='chat'>\
              <body>Neither, fair saint</body></message>\
              <message from='example.com' to='juliet@example.com' type='headline'><body>Maintenance at 2am</body></message>\
              <message from='romeo@example.net' type='error'><body>lost</body></message>\
              <cl:message xmlns:cl='jabber:client' from='nurse@example.com' to='juliet@example.com'>\
              <cl:body>Madam!</cl:body></cl:message>\
              <iq from='upload.example.com' id='u1' to='juliet@example.com/balcony' type='result'>\
              <slot xmlns='urn:xmpp:http:upload:0'>\
              <put url='https://up.example.com/put/tr%C3%A8s%20cool.jpg'/>\
              <get url='https://up.example.com/get/tr%C3%A8s%20cool.jpg'/></slot></iq>\
              </stream:stream>",
        ),
    ];

    #[test]
    #[expect(
        clippy::too_many_lines,
        reason = "one conversation, checked message by message"
    )]
    fn conversation() {
        let msgs = assert_split_invariant(Protocol::Xmpp, CONVERSATION);
        let summary: Vec<_> = msgs
            .iter()
            .map(|m| {
                (
                    m.direction,
                    m.kind,
                    m.sender.as_deref(),
                    m.recipients.clone(),
                    m.body.as_str(),
                )
            })
            .collect();
        let full = "juliet@example.com/balcony";
        let juliet = Some(full);
        assert_eq!(
            summary,
            vec![
                (
                    C2S,
                    MessageKind::Chat,
                    juliet,
                    vec!["romeo@example.net".into()],
                    "Art thou & a Montague? \u{263A}\u{2603} <b>&amp;</b> café"
                ),
                (
                    C2S,
                    MessageKind::FileOffer,
                    juliet,
                    vec!["romeo@example.net".into()],
                    "https://up.example.com/a/b/My%20Photo.jpg?x=1"
                ),
                (
                    C2S,
                    MessageKind::FileOffer,
                    juliet,
                    vec!["romeo@example.net/orchard".into()],
                    "This is a test."
                ),
                (
                    C2S,
                    MessageKind::FileOffer,
                    juliet,
                    vec!["romeo@example.net/orchard".into()],
                    ""
                ),
                (
                    C2S,
                    MessageKind::FileOffer,
                    juliet,
                    vec!["upload.example.com".into()],
                    ""
                ),
                (
                    S2C,
                    MessageKind::Chat,
                    Some("romeo@example.net/orchard"),
                    vec![full.into()],
                    "Neither, fair saint"
                ),
                (
                    S2C,
                    MessageKind::Notice,
                    Some("example.com"),
                    vec!["juliet@example.com".into()],
                    "Maintenance at 2am"
                ),
                (
                    S2C,
                    MessageKind::Chat,
                    Some("nurse@example.com"),
                    vec!["juliet@example.com".into()],
                    "Madam!"
                ),
                (
                    S2C,
                    MessageKind::FileOffer,
                    Some("upload.example.com"),
                    vec![full.into()],
                    ""
                ),
            ]
        );
        let attachment = |i: usize| msgs[i].attachments.clone();
        assert!(attachment(0).is_empty());
        let oob = Attachment {
            transfer: TransferKind::OutOfBand,
            name: "My Photo.jpg".into(),
            size: None,
            mime: None,
            url: Some("https://up.example.com/a/b/My%20Photo.jpg?x=1".into()),
        };
        assert_eq!(attachment(1), vec![oob]);
        let si = Attachment {
            transfer: TransferKind::XmppSi,
            name: "test.txt".into(),
            size: Some(1022),
            mime: Some("text/plain".into()),
            url: None,
        };
        assert_eq!(attachment(2), vec![si]);
        let jingle = Attachment {
            transfer: TransferKind::XmppJingle,
            name: "\"summer\".jpg".into(),
            size: Some(3_032_449),
            mime: Some("image/jpeg".into()),
            url: None,
        };
        assert_eq!(attachment(3), vec![jingle]);
        let mut upload = Attachment {
            transfer: TransferKind::XmppHttpUpload,
            name: "très cool.jpg".into(),
            size: Some(23456),
            mime: Some("image/jpeg".into()),
            url: None,
        };
        assert_eq!(attachment(4), vec![upload.clone()]);
        upload.url = Some("https://up.example.com/get/tr%C3%A8s%20cool.jpg".into());
        assert_eq!(attachment(8), vec![upload]);
        // Offsets point at each stanza's '<'.
        let c2s: Vec<u8> = CONVERSATION
            .iter()
            .filter(|s| s.0 == C2S)
            .flat_map(|s| s.1.iter().copied())
            .collect();
        for m in msgs.iter().filter(|m| m.direction == C2S) {
            let at = &c2s[m.stream_offset as usize..];
            assert!(
                at.starts_with(b"<message") || at.starts_with(b"<iq"),
                "{m:?}"
            );
        }
    }

    #[test]
    fn entities_split_anywhere() {
        let stanza: &[u8] = b"<message from='a@b' to='c@d'><body>x &amp; y &lt;&#x1F600;&#128512;\xf0\x9f\x98\x80</body></message>";
        let msgs =
            assert_split_invariant(Protocol::Xmpp, &[(S2C, b"<stream:stream>"), (S2C, stanza)]);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].body, "x & y <\u{1F600}\u{1F600}\u{1F600}");
    }

    #[test]
    fn starttls_stops_inspection() {
        let mut p = Parser::new(Protocol::Xmpp);
        let mut out = Vec::new();
        p.feed(
            C2S,
            0,
            b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
            &mut out,
        )
        .unwrap();
        p.feed(
            S2C,
            0,
            b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
            &mut out,
        )
        .unwrap();
        p.feed(
            C2S,
            63,
            b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            &mut out,
        )
        .unwrap();
        assert_eq!(p.state(C2S), StreamState::Readable);
        p.feed(
            S2C,
            63,
            b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            &mut out,
        )
        .unwrap();
        assert_eq!(p.state(C2S), StreamState::Encrypted);
        assert_eq!(p.state(S2C), StreamState::Encrypted);
        assert!(!p.is_inspectable());
        p.feed(
            S2C,
            114,
            b"<message from='a'><body>secret</body></message>",
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());

        // The client's ClientHello fed before the server's <proceed/>.
        let mut p = Parser::new(Protocol::Xmpp);
        p.feed(
            C2S,
            0,
            b"<stream:stream><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/> \x16\x03\x01",
            &mut out,
        )
        .unwrap();
        assert_eq!(p.state(C2S), StreamState::Encrypted);
        assert_eq!(p.state(S2C), StreamState::Encrypted);

        // Refused: the client goes on in plain text.
        let mut p = Parser::new(Protocol::Xmpp);
        p.feed(
            C2S,
            0,
            b"<stream:stream><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\n<message><body>hi</body></message>",
            &mut out,
        )
        .unwrap();
        assert_eq!(p.state(C2S), StreamState::Readable);
        assert_eq!(out.len(), 1);

        // Compression (XEP-0138) hides the content as well.
        let mut p = Parser::new(Protocol::Xmpp);
        p.feed(
            S2C,
            0,
            b"<stream:stream><compressed xmlns='http://jabber.org/protocol/compress'/>",
            &mut out,
        )
        .unwrap();
        assert_eq!(p.state(C2S), StreamState::Compressed);
        assert!(!p.is_inspectable());
    }

    #[test]
    fn oversized_stanza_hits_the_bound() {
        let mut big = b"<message to='a@b'><body>".to_vec();
        big.resize(MAX_STANZA + 10, b'x');
        big.extend_from_slice(
            b"<inner/></body></message><message to='a@b'><body>after</body></message>",
        );
        let header: &[u8] = b"<stream:stream>";
        for step in [7usize, 65536, usize::MAX] {
            let (msgs, errs) = run_split(Protocol::Xmpp, &[(C2S, header), (C2S, &big)], &|len| {
                (0..len).step_by(step.min(len)).collect()
            });
            assert_eq!(
                errs,
                vec![ParseError::TooLarge {
                    protocol: Protocol::Xmpp,
                    offset: 15,
                    limit: MAX_STANZA
                }]
            );
            assert_eq!(msgs.len(), 1);
            assert_eq!(msgs[0].body, "after");
        }
        // Exactly at the bound is kept.
        let mut exact = b"<message to='a@b'><body>".to_vec();
        exact.resize(MAX_STANZA - b"</body></message>".len(), b'y');
        exact.extend_from_slice(b"</body></message>");
        let (msgs, errs) = run_whole(Protocol::Xmpp, &[(C2S, header), (C2S, &exact)]);
        assert!(errs.is_empty());
        assert_eq!(msgs.len(), 1);
    }

    #[test]
    fn malformed_stanzas_are_errors_and_parsing_goes_on() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"<message><body>a &nbsp; b</body></message>",
                "unknown entity",
            ),
            (
                b"<message><body>a &#0; b</body></message>",
                "bad character reference",
            ),
            (
                b"<message><body>x</bodx></message>",
                "end tag does not match its start tag",
            ),
            (
                b"<message a=b><body>x</body></message>",
                "unquoted attribute value",
            ),
            (b"<!DOCTYPE x>", "DOCTYPE or unknown markup"),
            (
                b"<message><body>a < b</body></message>",
                "bad byte after '<'",
            ),
            (b"</message>", "end tag without start tag"),
            (b"hello", "text outside stanzas"),
        ];
        for (bad, reason) in cases {
            let (msgs, errs) = run_whole(
                Protocol::Xmpp,
                &[
                    (S2C, b"<stream:stream>"),
                    (S2C, bad),
                    (S2C, b"<message from='z'><body>next</body></message>"),
                ],
            );
            assert!(
                matches!(errs.first(), Some(ParseError::Malformed { reason: r, .. }) if r == reason),
                "{}: {errs:?}",
                lossy(bad)
            );
            assert_eq!(msgs.len(), 1, "{}", lossy(bad));
            assert_eq!(msgs[0].body, "next");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut deep = b"<message>".to_vec();
        for _ in 0..MAX_DEPTH {
            deep.extend_from_slice(b"<a>");
        }
        let (msgs, errs) = run_whole(Protocol::Xmpp, &[(S2C, b"<stream:stream>"), (S2C, &deep)]);
        assert!(msgs.is_empty());
        assert!(matches!(
            errs[..],
            [ParseError::Malformed {
                reason: "elements nested too deep",
                ..
            }]
        ));
    }

    #[test]
    fn gap_resyncs_at_next_stanza() {
        let mut p = Parser::new(Protocol::Xmpp);
        let mut out = Vec::new();
        p.feed(
            S2C,
            0,
            b"<stream:stream><message from='a'><body>lost",
            &mut out,
        )
        .unwrap();
        p.gap(S2C);
        assert_eq!(p.state(S2C), StreamState::Resyncing);
        // The gap ends inside a carbon copy (XEP-0280): the forwarded <message> is found,
        // then the end tags of the elements around it are skipped.
        let after_gap: &[u8] = b"ceived xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
              <message from='b' to='c'><body>inner</body></message></forwarded></received></message>\
              <message from='d'><body>next</body></message>";
        for (k, chunk) in after_gap.chunks(40).enumerate() {
            p.feed(S2C, 1000 + 40 * k as u64, chunk, &mut out).unwrap();
        }
        assert_eq!(p.state(S2C), StreamState::Readable);
        let bodies: Vec<_> = out
            .iter()
            .map(|m| (m.sender.as_deref(), m.body.as_str()))
            .collect();
        assert_eq!(bodies, vec![(Some("b"), "inner"), (Some("d"), "next")]);
        assert_eq!(out[0].stream_offset, 1000 + 72);
    }

    #[test]
    fn resync_probe_split_across_chunks() {
        let tail: &[u8] = b"garbage <mess junk<presence/> <mess";
        let rest: &[u8] = b"age from='x'><body>found</body></message>";
        for cut in 0..tail.len() {
            let mut p = Parser::new(Protocol::Xmpp);
            let mut out = Vec::new();
            p.gap(S2C);
            p.feed(S2C, 0, &tail[..cut], &mut out).unwrap();
            p.feed(S2C, cut as u64, &tail[cut..], &mut out).unwrap();
            p.feed(S2C, tail.len() as u64, rest, &mut out).unwrap();
            assert_eq!(out.len(), 1, "cut {cut}");
            assert_eq!(out[0].body, "found");
            assert_eq!(out[0].stream_offset, 30);
        }
    }

    #[test]
    fn offer_variants() {
        let (msgs, errs) = run_whole(
            Protocol::Xmpp,
            &[
                (S2C, b"<stream:stream>"),
                (
                    C2S,
                    b"<stream:stream>\
                      <iq type='get' id='u2' to='up.example'><request xmlns='urn:xmpp:http:upload'>\
                      <filename>old.png</filename><size>12</size><content-type>image/png</content-type>\
                      </request></iq>\
                      <iq type='set' id='o1' to='r@x/y'><query xmlns='jabber:iq:oob'>\
                      <url>http://files.example/dir/report.pdf</url><desc>Q3</desc></query></iq>\
                      <iq type='set' id='j2' to='r@x/y'><jingle xmlns='urn:xmpp:jingle:1' action='session-accept'>\
                      <content name='c'><description xmlns='urn:xmpp:jingle:apps:file-transfer:5'>\
                      <file><name>accepted.bin</name></file></description></content></jingle></iq>\
                      <iq type='set' id='j3' to='r@x/y'><jingle xmlns='urn:xmpp:jingle:1' action='session-initiate'>\
                      <content name='c'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></content></jingle></iq>\
                      <message to='r@x'><body>see this</body><x xmlns='jabber:x:oob'><url>https://h/x.zip</url></x></message>",
                ),
                (
                    S2C,
                    b"<iq type='result' id='u2' from='up.example'><slot xmlns='urn:xmpp:http:upload'>\
                      <put>https://up.example/put/old.png</put><get>https://up.example/get/old.png</get></slot></iq>\
                      <iq type='result' id='nomatch' from='up.example'><slot xmlns='urn:xmpp:http:upload:0'>\
                      <get url='https://up.example/get/a%20b.txt?sig=1'/></slot></iq>",
                ),
            ],
        );
        assert!(errs.is_empty(), "{errs:?}");
        let got: Vec<_> = msgs
            .iter()
            .map(|m| {
                let a = &m.attachments[0];
                (
                    m.kind,
                    a.transfer,
                    a.name.as_str(),
                    a.size,
                    a.mime.as_deref(),
                    a.url.as_deref(),
                    m.body.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    MessageKind::FileOffer,
                    TransferKind::XmppHttpUpload,
                    "old.png",
                    Some(12),
                    Some("image/png"),
                    None,
                    ""
                ),
                (
                    MessageKind::FileOffer,
                    TransferKind::OutOfBand,
                    "report.pdf",
                    None,
                    None,
                    Some("http://files.example/dir/report.pdf"),
                    "Q3"
                ),
                // A message with text and a URL stays a chat message carrying an attachment.
                (
                    MessageKind::Chat,
                    TransferKind::OutOfBand,
                    "x.zip",
                    None,
                    None,
                    Some("https://h/x.zip"),
                    "see this"
                ),
                (
                    MessageKind::FileOffer,
                    TransferKind::XmppHttpUpload,
                    "old.png",
                    Some(12),
                    Some("image/png"),
                    Some("https://up.example/get/old.png"),
                    ""
                ),
                (
                    MessageKind::FileOffer,
                    TransferKind::XmppHttpUpload,
                    "a b.txt",
                    None,
                    None,
                    Some("https://up.example/get/a%20b.txt?sig=1"),
                    ""
                ),
            ]
        );
    }

    #[test]
    fn sender_without_bind_is_unknown_and_bind_comes_from_the_server_only() {
        let (msgs, _) = run_whole(
            Protocol::Xmpp,
            &[
                (
                    C2S,
                    b"<stream:stream><iq type='result' id='x'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                      <jid>spoof@evil/x</jid></bind></iq><message to='a@b'><body>hi</body></message>",
                ),
            ],
        );
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].sender, None);
    }

    fn arb_script() -> impl Strategy<Value = Vec<(Direction, Vec<u8>)>> {
        proptest::collection::vec((0usize..3000, any::<u8>()), 1..6).prop_map(|flips| {
            let mut steps: Vec<(Direction, Vec<u8>)> =
                CONVERSATION.iter().map(|(d, b)| (*d, b.to_vec())).collect();
            let total: usize = steps.iter().map(|s| s.1.len()).sum();
            for (at, byte) in flips {
                let mut at = at % total;
                for step in &mut steps {
                    if at < step.1.len() {
                        step.1[at] = byte;
                        break;
                    }
                    at -= step.1.len();
                }
            }
            steps
        })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_are_split_invariant(
            data in proptest::collection::vec(prop_oneof![any::<u8>(), Just(b'<'), Just(b'>'), Just(b'/'), Just(b'&')], 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..8),
        ) {
            let s = [(S2C, &b"<stream:stream>"[..]), (S2C, data.as_slice())];
            let (whole, _) = run_whole(Protocol::Xmpp, &s);
            let (split, _) = run_split(Protocol::Xmpp, &s, &|_| cuts.clone());
            prop_assert_eq!(whole, split);
        }

        #[test]
        fn mutated_conversations_are_split_invariant(steps in arb_script(), cuts in proptest::collection::vec(0usize..700, 0..10)) {
            let script: Vec<(Direction, &[u8])> = steps.iter().map(|(d, b)| (*d, b.as_slice())).collect();
            let (whole, _) = run_whole(Protocol::Xmpp, &script);
            let (split, _) = run_split(Protocol::Xmpp, &script, &|_| cuts.clone());
            prop_assert_eq!(whole, split);
        }
    }
}
