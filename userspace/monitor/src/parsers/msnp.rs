//! MSN Messenger (MSNP8 to MSNP18), after draft-movva-msn-messenger-protocol-00 (MSNP2,
//! whose command syntax later dialects keep) and the unofficial MSNP8-18 documentation of the
//! protocol's reimplementations (the hypothetic.org and msnpiki command references).
//!
//! Commands are CRLF-terminated text lines: a three-letter (or three-digit error) command, a
//! transaction id on client commands, parameters separated by spaces. Payload commands end in
//! a byte count and are followed by that many bytes: `MSG trid ack len` (client) and
//! `MSG email nick len` (server) carry a MIME message; `UUM`/`UBM` carry the same to and from
//! Yahoo users; `SDG` (MSNP18+) carries routing, reliability and messaging header blocks.
//! `text/plain` payloads are chat messages, `text/x-msmsgsinvite` invitations with an
//! `Application-File` are file offers, typing notices (`text/x-msmsgscontrol`) and everything
//! else are not messages. Other payload commands (`NOT`, `GCF`, `ADL`, `UBX`, ...) are skipped
//! by their length.
//!
//! The client's own address comes from `USR` (and `ANS` on a switchboard); the switchboard's
//! participants (`CAL`, `JOI`, `IRO`, `BYE`) are the recipients of the client's messages.
//! P2P transfers (`application/x-msnmsgrp2p`, MSNP9+) are binary and are not interpreted.

use memchr::{memchr, memmem};

use super::{utf8_or_latin1, Errors, ParseError, StreamState};
use crate::message::{Attachment, Direction, Message, MessageKind, Protocol, TransferKind};

/// Longest command line kept, without its LF. MSNP lines are short (addresses, tickets of a
/// few hundred bytes); a longer line is [`ParseError::TooLarge`] and parsing resumes at the
/// next line.
pub const MAX_LINE: usize = 16 * 1024;

/// Largest message payload kept (`MSG`, `UUM`, `UBM`, `SDG`). Servers cap messages at a few
/// KiB (1664 bytes of `MSG` payload in MSNP8); a larger one is [`ParseError::TooLarge`] and is
/// skipped by its length. Other payloads are always skipped by their length, whatever it is.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Switchboard participants remembered; beyond this a joining one is not added.
const MAX_PARTICIPANTS: usize = 64;

/// Commands followed by a payload whose byte count is their last parameter.
const PAYLOAD_COMMANDS: [&[u8]; 19] = [
    b"MSG", b"UUM", b"UBM", b"SDG", b"NOT", b"GCF", b"UUX", b"UBX", b"ADL", b"RML", b"FQY", b"QRY",
    b"UUN", b"UBN", b"PUT", b"DEL", b"NFY", b"IPG", b"PAG",
];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Line,
    /// A payload up to stream offset `end`.
    Payload { end: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `MSG`, `UUM`, `UBM`: MIME headers and body.
    Mime,
    /// `SDG`: routing, reliability and messaging blocks.
    Sdg,
    Skip,
}

#[derive(Debug)]
struct Pending {
    start: u64,
    kind: Kind,
    /// The address on the command line: the sender (server `MSG`, `UBM`) or the recipient
    /// (client `UUM`).
    party: Option<String>,
    keep: bool,
}

#[derive(Debug, Default)]
struct Side {
    phase: Phase,
    buf: Vec<u8>,
    buf_start: u64,
    skip_line: bool,
    gapped: bool,
    pending: Option<Pending>,
}

/// MSNP state of one connection (notification server or switchboard).
#[derive(Debug, Default)]
pub struct MsnpParser {
    sides: [Side; 2],
    me: Option<String>,
    participants: Vec<String>,
}

fn too_large(offset: u64, limit: usize) -> ParseError {
    ParseError::TooLarge {
        protocol: Protocol::Msnp,
        offset,
        limit,
    }
}

impl MsnpParser {
    pub(crate) fn state(&self, dir: Direction) -> StreamState {
        let side = &self.sides[dir.index()];
        if side.gapped || side.skip_line {
            StreamState::Resyncing
        } else {
            StreamState::Readable
        }
    }

    /// Lost bytes: inside a payload whose end is still ahead only that payload is lost;
    /// otherwise parsing resumes at the next line.
    pub(crate) fn gap(&mut self, dir: Direction) {
        self.sides[dir.index()].gapped = true;
    }

    pub(crate) fn feed(
        &mut self,
        dir: Direction,
        offset: u64,
        data: &[u8],
        out: &mut Vec<Message>,
        errors: &mut Errors,
    ) {
        let side = &mut self.sides[dir.index()];
        if side.gapped {
            side.gapped = false;
            match side.phase {
                Phase::Payload { end } if offset <= end => {
                    if let Some(p) = &mut side.pending {
                        p.keep = false;
                    }
                    side.buf.clear();
                }
                _ => {
                    side.phase = Phase::Line;
                    side.buf.clear();
                    side.pending = None;
                    side.skip_line = true;
                }
            }
        }
        let mut i = 0;
        while i < data.len() {
            let side = &mut self.sides[dir.index()];
            let here = offset + i as u64;
            let rest = &data[i..];
            match side.phase {
                Phase::Payload { end } => {
                    let n = usize::try_from(end - here)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    if side.pending.as_ref().is_some_and(|p| p.keep) {
                        side.buf.extend_from_slice(&rest[..n]);
                    }
                    i += n;
                    if here + n as u64 == end {
                        side.phase = Phase::Line;
                        let payload = std::mem::take(&mut side.buf);
                        if let Some(p) = side.pending.take() {
                            if p.keep {
                                self.payload(dir, &p, &payload, out);
                            }
                        }
                        let side = &mut self.sides[dir.index()];
                        side.buf = payload;
                        side.buf.clear();
                    }
                }
                Phase::Line => {
                    let nl = memchr(b'\n', rest);
                    let take = nl.map_or(rest.len(), |n| n + 1);
                    i += take;
                    if side.skip_line {
                        side.skip_line = nl.is_none();
                        continue;
                    }
                    if side.buf.len() + take > MAX_LINE + 1 {
                        let start = if side.buf.is_empty() {
                            here
                        } else {
                            side.buf_start
                        };
                        errors.push(too_large(start, MAX_LINE));
                        side.buf.clear();
                        side.skip_line = nl.is_none();
                        continue;
                    }
                    if side.buf.is_empty() {
                        side.buf_start = here;
                    }
                    side.buf.extend_from_slice(&rest[..take]);
                    if nl.is_some() {
                        let line = std::mem::take(&mut side.buf);
                        let start = side.buf_start;
                        self.line(dir, start, &line, errors);
                        let side = &mut self.sides[dir.index()];
                        if side.buf.is_empty() {
                            side.buf = line;
                            side.buf.clear();
                        }
                    }
                }
            }
        }
    }

    fn line(&mut self, dir: Direction, start: u64, line: &[u8], errors: &mut Errors) {
        // The payload starts right after the line as it was on the wire.
        let payload_start = start + line.len() as u64;
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return;
        }
        let mut words = [&[][..]; 8];
        let mut count = 0;
        for w in line.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
            if count < words.len() {
                words[count] = w;
                count += 1;
            } else {
                words[words.len() - 1] = w;
            }
        }
        let cmd = words[0];
        if cmd.len() != 3
            || !cmd
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            errors.push(ParseError::Malformed {
                protocol: Protocol::Msnp,
                offset: start,
                reason: "not an MSNP command",
            });
            return;
        }
        let args = &words[1..count];
        let c2s = dir == Direction::ClientToServer;
        if PAYLOAD_COMMANDS.contains(&cmd) {
            let Some(len) = args
                .last()
                .and_then(|l| std::str::from_utf8(l).ok())
                .and_then(|l| l.parse::<u64>().ok())
            else {
                // `GCF trid name` from the client and the like: no payload.
                return;
            };
            let kind = match cmd {
                b"MSG" | b"UUM" | b"UBM" => Kind::Mime,
                b"SDG" => Kind::Sdg,
                _ => Kind::Skip,
            };
            let party = match (cmd, c2s) {
                (b"MSG" | b"UBM", false) | (b"UUM", true) => {
                    args.get(usize::from(c2s)).map(|a| utf8_or_latin1(a))
                }
                _ => None,
            };
            let mut keep = kind != Kind::Skip;
            if keep && len > MAX_PAYLOAD as u64 {
                errors.push(too_large(start, MAX_PAYLOAD));
                keep = false;
            }
            let side = &mut self.sides[dir.index()];
            side.pending = Some(Pending {
                start,
                kind,
                party,
                keep,
            });
            if len > 0 {
                side.phase = Phase::Payload {
                    end: payload_start.saturating_add(len),
                };
            } else {
                side.pending = None;
            }
            return;
        }
        let arg = |i: usize| args.get(i).map(|a| utf8_or_latin1(a));
        match (cmd, c2s) {
            // `USR trid TWN|SSO I email` (notification server), `USR trid email ticket`
            // (switchboard); the server's `USR trid OK email ...` confirms.
            (b"USR", true) => {
                if let Some(email) = arg(3).filter(|_| args.get(2) == Some(&&b"I"[..])) {
                    self.me = Some(email);
                } else if let Some(email) = arg(1).filter(|e| e.contains('@')) {
                    self.me = Some(email);
                }
            }
            (b"USR", false) if args.get(1) == Some(&&b"OK"[..]) => {
                if let Some(email) = arg(2) {
                    self.me = Some(email);
                }
            }
            (b"ANS", true) => self.me = arg(1).or(self.me.take()),
            (b"CAL", true) => self.join(arg(1)),
            (b"JOI", false) => self.join(arg(0)),
            (b"IRO", false) => self.join(arg(3)),
            (b"BYE", false) => {
                if let Some(email) = arg(0) {
                    let email = email.split(';').next().unwrap_or_default().to_owned();
                    self.participants.retain(|p| *p != email);
                }
            }
            _ => {}
        }
    }

    fn join(&mut self, email: Option<String>) {
        let Some(email) = email else {
            return;
        };
        // MSNP18 adds `;{endpoint-guid}` to addresses.
        let email = email.split(';').next().unwrap_or_default().to_owned();
        if !self.participants.contains(&email) && self.participants.len() < MAX_PARTICIPANTS {
            self.participants.push(email);
        }
    }

    fn payload(&self, dir: Direction, p: &Pending, payload: &[u8], out: &mut Vec<Message>) {
        let c2s = dir == Direction::ClientToServer;
        let (mut sender, mut recipients) = if c2s {
            let to = match &p.party {
                Some(to) => vec![to.clone()],
                None => self.participants.clone(),
            };
            (self.me.clone(), to)
        } else {
            (p.party.clone(), self.me.clone().into_iter().collect())
        };
        let (headers, body) = match p.kind {
            Kind::Skip => return,
            Kind::Mime => split_headers(payload),
            Kind::Sdg => {
                // MSNP18 section "SDG": routing headers, reliability headers, then the
                // messaging headers and the body.
                let (routing, rest) = split_headers(payload);
                let (_, rest) = split_headers(rest);
                if let Some(from) = header(routing, b"From") {
                    sender = Some(address(from));
                }
                if let Some(to) = header(routing, b"To") {
                    recipients = vec![address(to)];
                }
                let (messaging, body) = split_headers(rest);
                match header(messaging, b"Message-Type") {
                    Some(t) if t.eq_ignore_ascii_case(b"Text") => {}
                    _ => return,
                }
                (messaging, body)
            }
        };
        let ct = header(headers, b"Content-Type").unwrap_or_default();
        let media = ct
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let (kind, text, attachments) = if media.eq_ignore_ascii_case(b"text/plain") {
            (MessageKind::Chat, utf8_or_latin1(body), Vec::new())
        } else if media.eq_ignore_ascii_case(b"text/x-msmsgsinvite") {
            // The invitation's body is itself a header block.
            let command = header(body, b"Invitation-Command").unwrap_or_default();
            let Some(file) = header(body, b"Application-File") else {
                return;
            };
            if !command.eq_ignore_ascii_case(b"INVITE") {
                return;
            }
            let size = header(body, b"Application-FileSize")
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.trim().parse().ok());
            let attachment = Attachment {
                transfer: TransferKind::MsnInvite,
                name: utf8_or_latin1(file),
                size,
                mime: None,
                url: None,
            };
            (MessageKind::FileOffer, String::new(), vec![attachment])
        } else {
            // Typing notices, emoticon and ink data, P2P, datacasts (nudges).
            return;
        };
        if text.is_empty() && attachments.is_empty() {
            return;
        }
        if sender.as_deref() == Some("") {
            sender = None;
        }
        out.push(Message {
            protocol: Protocol::Msnp,
            direction: dir,
            kind,
            sender,
            recipients,
            body: text,
            attachments,
            stream_offset: p.start,
        });
    }
}

/// A header block up to its empty line, and what follows it. Without an empty line the whole
/// payload is headers.
fn split_headers(payload: &[u8]) -> (&[u8], &[u8]) {
    match memmem::find(payload, b"\r\n\r\n") {
        Some(n) => (&payload[..n], &payload[n + 4..]),
        None => (payload, &[]),
    }
}

/// The value of header `name` (case-insensitive) in a CRLF header block.
fn header<'a>(block: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    block.split(|&b| b == b'\n').find_map(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let colon = memchr(b':', l)?;
        l[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(name)
            .then(|| l[colon + 1..].trim_ascii())
    })
}

/// `1:alice@example.com;{epid}` (MSNP18 network-prefixed address) to `alice@example.com`.
fn address(v: &[u8]) -> String {
    let v = v.split(|&b| b == b';').next().unwrap_or_default();
    let v = match memchr(b':', v) {
        Some(n) if v[..n].iter().all(u8::is_ascii_digit) => &v[n + 1..],
        _ => v,
    };
    utf8_or_latin1(v)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::parsers::testutil::{assert_split_invariant, run_split, run_whole};
    use crate::parsers::Parser;

    const C2S: Direction = Direction::ClientToServer;
    const S2C: Direction = Direction::ServerToClient;

    fn cmd(line: &str, payload: &[u8]) -> Vec<u8> {
        let mut v = format!("{line} {}\r\n", payload.len()).into_bytes();
        v.extend_from_slice(payload);
        v
    }

    fn text(body: &str) -> Vec<u8> {
        format!("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\nX-MMS-IM-Format: FN=Arial; EF=; CO=0; CS=0; PF=22\r\n\r\n{body}").into_bytes()
    }

    #[test]
    fn switchboard_conversation() {
        let typing = b"MIME-Version: 1.0\r\nContent-Type: text/x-msmsgscontrol\r\nTypingUser: alice@hotmail.com\r\n\r\n\r\n";
        let invite = b"MIME-Version: 1.0\r\nContent-Type: text/x-msmsgsinvite; charset=UTF-8\r\n\r\nApplication-Name: File Transfer\r\nApplication-GUID: {5D3E02AB-6190-11d3-BBBB-00C04F795683}\r\nInvitation-Command: INVITE\r\nInvitation-Cookie: 42\r\nApplication-File: budget.xls\r\nApplication-FileSize: 20480\r\n\r\n";
        let c1 = [
            b"USR 1 alice@hotmail.com 17262740.1050826919.32308\r\nCAL 2 bob@hotmail.com\r\n"
                .to_vec(),
            cmd("MSG 3 N", typing),
            cmd("MSG 4 A", &text("hello bob \u{e9}")),
        ]
        .concat();
        let s1 = [
            b"USR 1 OK alice@hotmail.com Alice\r\nCAL 2 RINGING 1191\r\nJOI bob@hotmail.com Bob\r\n"
                .to_vec(),
            cmd("MSG bob@hotmail.com Bob", &text("hi alice")),
            cmd("NOT", b"<NOTIFICATION id=\"1\">MSG 9 9 9\r\n</NOTIFICATION>"),
            b"ACK 4\r\n".to_vec(),
        ]
        .concat();
        let c2 = [
            cmd("MSG 5 N", invite),
            cmd("SDG 6", b"Routing: 1.0\r\nTo: 1:carol@live.com\r\nFrom: 1:alice@hotmail.com;epid={x}\r\n\r\nReliability: 1.0\r\n\r\nMessaging: 2.0\r\nMessage-Type: Text\r\nContent-Type: Text/plain; charset=UTF-8\r\nContent-Length: 5\r\n\r\nsdg!!"),
            cmd("SDG 7", b"Routing: 1.0\r\nTo: 1:carol@live.com\r\nFrom: 1:alice@hotmail.com\r\n\r\nReliability: 1.0\r\n\r\nMessaging: 2.0\r\nMessage-Type: Control/Typing\r\n\r\n"),
            b"BYE\r\n".to_vec(),
        ]
        .concat();
        let s2 = b"BYE bob@hotmail.com\r\n".to_vec();
        let c3 = cmd("MSG 8 A", &text("anyone?"));
        let script: &[(Direction, &[u8])] =
            &[(C2S, &c1), (S2C, &s1), (C2S, &c2), (S2C, &s2), (C2S, &c3)];
        let msgs = assert_split_invariant(Protocol::Msnp, script);
        let got: Vec<_> = msgs
            .iter()
            .map(|m| {
                (
                    m.direction,
                    m.kind,
                    m.sender.clone().unwrap_or_default(),
                    m.recipients.join(","),
                    m.body.clone(),
                )
            })
            .collect();
        let e = |d, k, s: &str, r: &str, b: &str| (d, k, s.to_owned(), r.to_owned(), b.to_owned());
        assert_eq!(
            got,
            vec![
                e(
                    C2S,
                    MessageKind::Chat,
                    "alice@hotmail.com",
                    "bob@hotmail.com",
                    "hello bob é"
                ),
                e(
                    S2C,
                    MessageKind::Chat,
                    "bob@hotmail.com",
                    "alice@hotmail.com",
                    "hi alice"
                ),
                e(
                    C2S,
                    MessageKind::FileOffer,
                    "alice@hotmail.com",
                    "bob@hotmail.com",
                    ""
                ),
                e(
                    C2S,
                    MessageKind::Chat,
                    "alice@hotmail.com",
                    "carol@live.com",
                    "sdg!!"
                ),
                e(C2S, MessageKind::Chat, "alice@hotmail.com", "", "anyone?"),
            ]
        );
        let a = &msgs[2].attachments[0];
        assert_eq!(a.transfer, TransferKind::MsnInvite);
        assert_eq!((a.name.as_str(), a.size), ("budget.xls", Some(20480)));
        assert!(c1[msgs[0].stream_offset as usize..].starts_with(b"MSG 4 A"));
    }

    #[test]
    fn notification_server_login_and_yahoo_interop() {
        let c = [
            b"VER 1 MSNP15 CVR0\r\nCVR 2 0x0409 win 5.1 i386 MSNMSGR 8.5 msmsgs a@live.com\r\nUSR 3 SSO I a@live.com\r\n".to_vec(),
            cmd("ADL 4", b"<ml><d n=\"live.com\"><c n=\"b\" l=\"3\" t=\"1\"/></d></ml>"),
            cmd("UUM 5 y@yahoo.com 32 1", &text("to yahoo")),
        ]
        .concat();
        let s = cmd("UBM y@yahoo.com 32 1", &text("from yahoo"));
        let msgs = assert_split_invariant(Protocol::Msnp, &[(C2S, &c), (S2C, &s)]);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].sender.as_deref(), Some("a@live.com"));
        assert_eq!(msgs[0].recipients, vec!["y@yahoo.com".to_owned()]);
        assert_eq!(msgs[1].sender.as_deref(), Some("y@yahoo.com"));
        assert_eq!(msgs[1].recipients, vec!["a@live.com".to_owned()]);
    }

    #[test]
    fn oversized_payload_and_line_are_skipped() {
        let big = text(&"x".repeat(MAX_PAYLOAD));
        let mut c = cmd("MSG 1 N", &big);
        c.extend(cmd("MSG 2 N", &text("after")));
        let mut long = vec![b'A'; MAX_LINE + 10];
        long.extend_from_slice(b"\r\n");
        c.extend(long);
        c.extend(cmd("MSG 3 N", &text("last")));
        for chunk in [100usize, usize::MAX] {
            let (msgs, _) = run_split(Protocol::Msnp, &[(C2S, &c)], &|len| {
                (0..len).step_by(chunk.min(len)).collect()
            });
            let bodies: Vec<_> = msgs.iter().map(|m| m.body.as_str()).collect();
            assert_eq!(bodies, vec!["after", "last"]);
        }
        let mut p = Parser::new(Protocol::Msnp);
        let _ = p.feed(C2S, 0, &c, &mut Vec::new());
        assert_eq!(p.error_count(), 2);
    }

    #[test]
    fn gaps() {
        let first = cmd("MSG bob@x Bob", &text("lost"));
        let second = cmd("MSG bob@x Bob", &text("kept"));
        // A hole inside a payload: only that message is lost.
        let mut p = Parser::new(Protocol::Msnp);
        let mut out = Vec::new();
        p.feed(S2C, 0, &first[..30], &mut out).unwrap();
        let mut rest = first[40..].to_vec();
        rest.extend_from_slice(&second);
        p.feed(S2C, 40, &rest, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].body, "kept");
        assert_eq!(out[0].stream_offset, first.len() as u64);
        // A hole past the payload: resumes at the next line.
        let mut p = Parser::new(Protocol::Msnp);
        let mut out = Vec::new();
        p.feed(S2C, 0, &first[..10], &mut out).unwrap();
        p.gap(S2C);
        assert_eq!(p.state(S2C), StreamState::Resyncing);
        p.feed(S2C, 500, b"tail of something\r\n", &mut out)
            .unwrap();
        p.feed(S2C, 519, &second, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(p.state(S2C), StreamState::Readable);
    }

    #[test]
    fn malformed_lines_are_errors() {
        let (msgs, errs) = run_whole(Protocol::Msnp, &[(C2S, b"hello world\r\nMSG 1 N x\r\n")]);
        assert!(msgs.is_empty());
        assert_eq!(errs.len(), 1);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_are_split_invariant(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..8),
        ) {
            let script = [(S2C, data.as_slice())];
            let (whole, _) = run_whole(Protocol::Msnp, &script);
            let (split, _) = run_split(Protocol::Msnp, &script, &|_| cuts.clone());
            prop_assert_eq!(whole, split);
        }

        #[test]
        fn mutated_messages_never_panic(
            flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..6),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut c = cmd("MSG 1 N", &text("one"));
            c.extend(cmd("SDG 2", b"Routing: 1.0\r\nFrom: 1:a@b\r\n\r\nReliability: 1.0\r\n\r\nMessage-Type: Text\r\nContent-Type: text/plain\r\n\r\ntwo"));
            for (at, byte) in flips {
                let at = at % c.len();
                c[at] = byte;
            }
            let script = [(C2S, c.as_slice())];
            let (whole, _) = run_whole(Protocol::Msnp, &script);
            let (split, _) = run_split(Protocol::Msnp, &script, &|_| cuts.clone());
            prop_assert_eq!(whole, split);
        }
    }
}
