//! IRC (RFC 1459, RFC 2812, IRCv3 message tags): PRIVMSG and NOTICE, CTCP ACTION and DCC SEND.

use memchr::memchr;

use super::{utf8_or_latin1, Errors, ParseError, StreamState, TLS_HANDSHAKE};
use crate::message::{Attachment, Direction, Message, MessageKind, Protocol, TransferKind};

/// Longest line kept, without its LF: 512 bytes of message (RFC 2812 section 2.3), raised to
/// 8 KiB because many servers accept longer lines, plus 8 KiB of IRCv3 tags (the message-tags
/// specification allows 8191 bytes of tags from the server). A longer line is dropped with
/// [`ParseError::TooLarge`] and parsing resumes at the next line.
pub const MAX_LINE: usize = 16 * 1024;

/// RFC 2812 section 2.3: at most 15 parameters.
const MAX_PARAMS: usize = 15;

#[derive(Debug, Default)]
struct Side {
    /// The incomplete line at the end of the bytes fed so far.
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    line_start: u64,
    /// Dropping bytes up to the next LF: after a gap, or in a line over [`MAX_LINE`].
    skipping: bool,
    /// The client asked for STARTTLS: a TLS record next means the switch happened.
    await_tls: bool,
    encrypted: bool,
}

/// IRC state of one connection.
#[derive(Debug, Default)]
pub struct IrcParser {
    sides: [Side; 2],
    /// The client's nick: from its NICK command, then as the server confirms it (001 welcome,
    /// NICK changes with the client's old nick as prefix).
    client_nick: Option<String>,
}

impl IrcParser {
    pub(crate) fn state(&self, dir: Direction) -> StreamState {
        let side = &self.sides[dir.index()];
        if side.encrypted {
            StreamState::Encrypted
        } else if side.skipping {
            StreamState::Resyncing
        } else {
            StreamState::Readable
        }
    }

    pub(crate) fn gap(&mut self, dir: Direction) {
        let side = &mut self.sides[dir.index()];
        side.buf.clear();
        side.skipping = true;
        side.await_tls = false;
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
            if side.encrypted {
                return;
            }
            let rest = &data[i..];
            if side.await_tls && side.buf.is_empty() && !side.skipping {
                side.await_tls = false;
                if rest.first() == Some(&TLS_HANDSHAKE) {
                    self.sides[0].encrypted = true;
                    self.sides[1].encrypted = true;
                    return;
                }
            }
            let Some(n) = memchr(b'\n', rest) else {
                let here = offset + i as u64;
                if !side.skipping {
                    if side.buf.len() + rest.len() > MAX_LINE {
                        errors.push(too_large(if side.buf.is_empty() {
                            here
                        } else {
                            side.line_start
                        }));
                        side.buf.clear();
                        side.skipping = true;
                    } else {
                        if side.buf.is_empty() {
                            side.line_start = here;
                        }
                        side.buf.extend_from_slice(rest);
                    }
                }
                return;
            };
            let line = &rest[..n];
            let start = offset + i as u64;
            i += n + 1;
            if side.skipping {
                side.skipping = false;
            } else if side.buf.is_empty() {
                if line.len() > MAX_LINE {
                    errors.push(too_large(start));
                } else {
                    self.line(dir, start, line, out, errors);
                }
            } else if side.buf.len() + line.len() > MAX_LINE {
                errors.push(too_large(side.line_start));
                side.buf.clear();
            } else {
                side.buf.extend_from_slice(line);
                let buf = std::mem::take(&mut side.buf);
                let line_start = side.line_start;
                self.line(dir, line_start, &buf, out, errors);
                let side = &mut self.sides[dir.index()];
                side.buf = buf;
                side.buf.clear();
            }
        }
    }

    fn line(
        &mut self,
        dir: Direction,
        offset: u64,
        line: &[u8],
        out: &mut Vec<Message>,
        errors: &mut Errors,
    ) {
        let Some(line) = Line::parse(line) else {
            errors.push(ParseError::Malformed {
                protocol: Protocol::Irc,
                offset,
                reason: "line without a command",
            });
            return;
        };
        if line.command.is_empty() {
            // Empty lines are tolerated (RFC 2812 section 2.3.1: "Empty messages are silently
            // ignored").
            return;
        }
        let command = line.command;
        let from_server = dir == Direction::ServerToClient;
        if command.eq_ignore_ascii_case(b"PRIVMSG") || command.eq_ignore_ascii_case(b"NOTICE") {
            let notice = command.eq_ignore_ascii_case(b"NOTICE");
            if let Some(msg) = self.chat(dir, offset, &line, notice) {
                out.push(msg);
            }
        } else if command.eq_ignore_ascii_case(b"NICK") {
            let Some(new) = line.param(0).filter(|n| !n.is_empty()) else {
                return;
            };
            let new = utf8_or_latin1(new);
            if !from_server {
                self.client_nick = Some(new);
            } else if let (Some(old), Some(ours)) = (line.nick(), &self.client_nick) {
                // RFC 2812 section 3.1.2: the server echoes our own change with the old nick
                // as prefix; nicks compare case-insensitively (section 2.2).
                if utf8_or_latin1(old).eq_ignore_ascii_case(ours) {
                    self.client_nick = Some(new);
                }
            }
        } else if from_server && command == b"001" {
            // RPL_WELCOME's first parameter is the nick the server registered.
            if let Some(nick) = line.param(0).filter(|n| !n.is_empty() && *n != b"*") {
                self.client_nick = Some(utf8_or_latin1(nick));
            }
        } else if from_server && command == b"670" {
            // RPL_STARTTLS (IRCv3 tls extension): TLS starts right after this line.
            self.sides[0].encrypted = true;
            self.sides[1].encrypted = true;
        } else if !from_server && command.eq_ignore_ascii_case(b"STARTTLS") {
            self.sides[dir.index()].await_tls = true;
        }
    }

    fn chat(&self, dir: Direction, offset: u64, line: &Line, notice: bool) -> Option<Message> {
        let targets = line.param(0)?;
        let text = line.param(1).unwrap_or_default();
        let recipients = targets
            .split(|&b| b == b',')
            .filter(|t| !t.is_empty())
            .map(utf8_or_latin1)
            .collect::<Vec<_>>();
        let sender = match dir {
            Direction::ClientToServer => self.client_nick.clone(),
            Direction::ServerToClient => line.nick().map(utf8_or_latin1),
        };
        let mut kind = if notice {
            MessageKind::Notice
        } else {
            MessageKind::Chat
        };
        let mut attachments = Vec::new();
        let body = if let Some(ctcp) = text.strip_prefix(b"\x01") {
            // CTCP: the payload sits between two 0x01 bytes; clients omit the closing one.
            let ctcp = ctcp.strip_suffix(b"\x01").unwrap_or(ctcp);
            let (verb, args) = split_word(ctcp);
            if verb.eq_ignore_ascii_case(b"ACTION") {
                utf8_or_latin1(args)
            } else if verb.eq_ignore_ascii_case(b"DCC") && !notice {
                let (sub, args) = split_word(args);
                if !sub.eq_ignore_ascii_case(b"SEND") {
                    return None;
                }
                let (name, size) = dcc_send(args)?;
                kind = MessageKind::FileOffer;
                attachments.push(Attachment {
                    transfer: TransferKind::DccSend,
                    name: utf8_or_latin1(name),
                    size,
                    mime: None,
                    url: None,
                });
                utf8_or_latin1(ctcp)
            } else {
                // VERSION, PING and other CTCP queries and replies are not messages.
                return None;
            }
        } else {
            utf8_or_latin1(text)
        };
        Some(Message {
            protocol: Protocol::Irc,
            direction: dir,
            kind,
            sender,
            recipients,
            body,
            attachments,
            stream_offset: offset,
        })
    }
}

fn too_large(offset: u64) -> ParseError {
    ParseError::TooLarge {
        protocol: Protocol::Irc,
        offset,
        limit: MAX_LINE,
    }
}

/// One line split into its parts, borrowing from the line.
struct Line<'a> {
    prefix: Option<&'a [u8]>,
    command: &'a [u8],
    params: [&'a [u8]; MAX_PARAMS],
    count: usize,
}

impl<'a> Line<'a> {
    /// `None` when a tag or prefix is not followed by a command.
    fn parse(line: &'a [u8]) -> Option<Line<'a>> {
        let mut rest = line.strip_suffix(b"\r").unwrap_or(line);
        if rest.first() == Some(&b'@') {
            // IRCv3 message tags: skipped, none of them changes who said what.
            let (_, after) = split_word(rest);
            if after.is_empty() {
                return None;
            }
            rest = after;
        }
        let mut prefix = None;
        if let Some(p) = rest.strip_prefix(b":") {
            let (p, after) = split_word(p);
            if after.is_empty() {
                return None;
            }
            prefix = Some(p);
            rest = after;
        }
        let (command, mut rest) = split_word(trim_spaces(rest));
        let mut line = Line {
            prefix,
            command,
            params: [&[]; MAX_PARAMS],
            count: 0,
        };
        while !rest.is_empty() && line.count < MAX_PARAMS {
            let param;
            if let Some(trailing) = rest.strip_prefix(b":") {
                param = trailing;
                rest = &[];
            } else if line.count == MAX_PARAMS - 1 {
                // RFC 2812 section 2.3.1: the 15th parameter takes the rest, colon or not.
                param = rest;
                rest = &[];
            } else {
                (param, rest) = split_word(rest);
            }
            line.params[line.count] = param;
            line.count += 1;
        }
        Some(line)
    }

    fn param(&self, i: usize) -> Option<&'a [u8]> {
        if i < self.count {
            self.params.get(i).copied()
        } else {
            None
        }
    }

    /// The nick of a `nick!user@host` prefix, or the server name.
    fn nick(&self) -> Option<&'a [u8]> {
        let prefix = self.prefix?;
        let end = memchr(b'!', prefix)
            .or_else(|| memchr(b'@', prefix))
            .unwrap_or(prefix.len());
        Some(&prefix[..end])
    }
}

fn trim_spaces(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ').unwrap_or(s.len());
    &s[start..]
}

/// The first space-separated word and the rest after the spaces that follow it.
fn split_word(s: &[u8]) -> (&[u8], &[u8]) {
    match memchr(b' ', s) {
        Some(n) => (&s[..n], trim_spaces(&s[n + 1..])),
        None => (s, &[]),
    }
}

/// Arguments of `DCC SEND`: `<filename> <ip> <port> [<size> [<token>]]`, the name possibly in
/// double quotes when it holds spaces. Some clients send names with spaces unquoted, so an
/// unquoted name runs up to the first place where the rest reads as address, port and numbers.
fn dcc_send(args: &[u8]) -> Option<(&[u8], Option<u64>)> {
    let (name, rest) = if let Some(quoted) = args.strip_prefix(b"\"") {
        let end = memchr(b'"', quoted)?;
        (&quoted[..end], trim_spaces(&quoted[end + 1..]))
    } else {
        let mut name_end = None;
        let mut at = 0;
        while let Some(n) = memchr(b' ', &args[at..]) {
            let space = at + n;
            let rest = trim_spaces(&args[space..]);
            if dcc_tail(rest).is_some() {
                name_end = Some(space);
                break;
            }
            at = space + 1;
        }
        let end = name_end?;
        (&args[..end], trim_spaces(&args[end..]))
    };
    if name.is_empty() {
        return None;
    }
    Some((name, dcc_tail(rest)?.size))
}

/// What follows a DCC SEND file name.
struct DccTail {
    size: Option<u64>,
}

/// `<ip> <port> [<size> [<token>]]` after the file name; `None` when it does not read so.
fn dcc_tail(rest: &[u8]) -> Option<DccTail> {
    let mut words = rest.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let ip = words.next()?;
    // The address is a decimal u32 (the classic form), or a dotted or IPv6 literal.
    let ip_ok = ip.iter().all(u8::is_ascii_digit)
        || ip
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b'.' || b == b':')
            && ip.iter().any(|&b| b == b'.' || b == b':');
    if !ip_ok {
        return None;
    }
    std::str::from_utf8(words.next()?)
        .ok()?
        .parse::<u16>()
        .ok()?;
    let size = match words.next() {
        Some(w) => Some(std::str::from_utf8(w).ok()?.parse::<u64>().ok()?),
        None => None,
    };
    if let Some(token) = words.next() {
        if !token.iter().all(u8::is_ascii_digit) {
            return None;
        }
    }
    if words.next().is_some() {
        return None;
    }
    Some(DccTail { size })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::parsers::testutil::{assert_split_invariant, run_split, run_whole};
    use crate::parsers::{Parser, StreamState};

    const C2S: Direction = Direction::ClientToServer;
    const S2C: Direction = Direction::ServerToClient;

    const CONVERSATION: &[(Direction, &[u8])] = &[
        (
            C2S,
            b"CAP LS 302\r\nNICK alice\r\nUSER alice 0 * :Alice\r\n",
        ),
        (
            S2C,
            b":irc.example 433 * alice :Nickname is already in use\r\n",
        ),
        (C2S, b"NICK alice_\r\n"),
        (
            S2C,
            b":irc.example 001 alice_ :Welcome to the network alice_\r\n",
        ),
        (
            C2S,
            b"JOIN #rust\r\nPRIVMSG #rust,bob :hello \xc3\xa9t\xc3\xa9\r\n",
        ),
        (
            S2C,
            b"@time=2024-01-01T00:00:00Z;msgid=abc :bob!b@host PRIVMSG #rust :hi alice\n\
              :carol!c@h NOTICE alice_ :caf\xe9\r\n\
              :dave!d@h PRIVMSG #rust :\x01ACTION waves\x01\r\n\
              :dave!d@h PRIVMSG alice_ :\x01VERSION\x01\r\n",
        ),
        (C2S, b"NICK alice2\r\n"),
        (S2C, b":alice_!a@h NICK :alice2\r\n"),
        (
            C2S,
            b"PRIVMSG bob :\x01DCC SEND \"my report.pdf\" 3232235777 5000 123456\x01\r\n\
              PRIVMSG bob :\x01DCC SEND notes.txt 10.0.0.1 6000\x01\r\n",
        ),
    ];

    #[test]
    fn conversation() {
        let msgs = assert_split_invariant(Protocol::Irc, CONVERSATION);
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
        assert_eq!(
            summary,
            vec![
                (
                    C2S,
                    MessageKind::Chat,
                    Some("alice_"),
                    vec!["#rust".into(), "bob".into()],
                    "hello été"
                ),
                (
                    S2C,
                    MessageKind::Chat,
                    Some("bob"),
                    vec!["#rust".into()],
                    "hi alice"
                ),
                (
                    S2C,
                    MessageKind::Notice,
                    Some("carol"),
                    vec!["alice_".into()],
                    "café"
                ),
                (
                    S2C,
                    MessageKind::Chat,
                    Some("dave"),
                    vec!["#rust".into()],
                    "waves"
                ),
                (
                    C2S,
                    MessageKind::FileOffer,
                    Some("alice2"),
                    vec!["bob".into()],
                    "DCC SEND \"my report.pdf\" 3232235777 5000 123456"
                ),
                (
                    C2S,
                    MessageKind::FileOffer,
                    Some("alice2"),
                    vec!["bob".into()],
                    "DCC SEND notes.txt 10.0.0.1 6000"
                ),
            ]
        );
        let dcc = &msgs[4].attachments[0];
        assert_eq!(dcc.transfer, TransferKind::DccSend);
        assert_eq!(dcc.name, "my report.pdf");
        assert_eq!(dcc.size, Some(123_456));
        assert_eq!(msgs[5].attachments[0].name, "notes.txt");
        assert_eq!(msgs[5].attachments[0].size, None);
        // Offsets point at the line starts in their direction's stream.
        let c2s_stream: Vec<u8> = CONVERSATION
            .iter()
            .filter(|s| s.0 == C2S)
            .flat_map(|s| s.1.iter().copied())
            .collect();
        for m in msgs.iter().filter(|m| m.direction == C2S) {
            assert!(c2s_stream[m.stream_offset as usize..].starts_with(b"PRIVMSG"));
        }
    }

    #[test]
    fn dcc_names() {
        assert_eq!(
            dcc_send(b"\"a b c.zip\" 1.2.3.4 1 9"),
            Some((&b"a b c.zip"[..], Some(9)))
        );
        assert_eq!(
            dcc_send(b"holiday photo.jpg 3232235777 5000 42"),
            Some((&b"holiday photo.jpg"[..], Some(42)))
        );
        // Passive DCC: port 0 and a token.
        assert_eq!(
            dcc_send(b"x.bin 0 0 100 7"),
            Some((&b"x.bin"[..], Some(100)))
        );
        assert_eq!(
            dcc_send(b"::1-file 2001:db8::1 5000"),
            Some((&b"::1-file"[..], None))
        );
        assert_eq!(dcc_send(b"\"unterminated 1.2.3.4 5 6"), None);
        assert_eq!(dcc_send(b"file.txt 1.2.3.4 notaport"), None);
        assert_eq!(dcc_send(b"file.txt"), None);
        assert_eq!(dcc_send(b"\"\" 1.2.3.4 5"), None);
    }

    #[test]
    fn long_lines_hit_the_bound_and_parsing_resumes() {
        let mut long = b"PRIVMSG #a :".to_vec();
        long.resize(MAX_LINE + 1, b'x');
        long.extend_from_slice(b"\nPRIVMSG #a :after\n");
        let mut exact = b"PRIVMSG #a :".to_vec();
        exact.resize(MAX_LINE, b'y');
        exact.push(b'\n');
        for chunk in [1usize, 1000, usize::MAX] {
            let (msgs, errs) = run_split(Protocol::Irc, &[(C2S, &long), (C2S, &exact)], &|len| {
                (0..len).step_by(chunk.min(len.max(1))).collect()
            });
            assert_eq!(errs.len(), 1, "chunk {chunk}");
            assert!(matches!(
                errs[0],
                ParseError::TooLarge {
                    offset: 0,
                    limit: MAX_LINE,
                    ..
                }
            ));
            assert_eq!(msgs.len(), 2);
            assert_eq!(msgs[0].body, "after");
            assert_eq!(msgs[1].body.len(), MAX_LINE - 12);
        }
    }

    #[test]
    fn starttls_stops_inspection() {
        let mut p = Parser::new(Protocol::Irc);
        let mut out = Vec::new();
        p.feed(C2S, 0, b"STARTTLS\r\n", &mut out).unwrap();
        p.feed(
            S2C,
            0,
            b":irc.example 670 * :STARTTLS successful\r\n",
            &mut out,
        )
        .unwrap();
        assert_eq!(p.state(C2S), StreamState::Encrypted);
        assert_eq!(p.state(S2C), StreamState::Encrypted);
        p.feed(S2C, 43, b":x PRIVMSG #a :b\r\n", &mut out).unwrap();
        assert!(out.is_empty());

        // The client's TLS record seen before the server's reply.
        let mut p = Parser::new(Protocol::Irc);
        p.feed(C2S, 0, b"STARTTLS\r\n", &mut out).unwrap();
        p.feed(C2S, 10, &[0x16, 0x03, 0x01], &mut out).unwrap();
        assert!(!p.is_inspectable());

        // Refused STARTTLS: the client goes on in plain text.
        let mut p = Parser::new(Protocol::Irc);
        p.feed(C2S, 0, b"STARTTLS\r\nNICK a\r\nPRIVMSG b :c\r\n", &mut out)
            .unwrap();
        assert_eq!(p.state(C2S), StreamState::Readable);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn gap_resyncs_at_next_line() {
        let mut p = Parser::new(Protocol::Irc);
        let mut out = Vec::new();
        p.feed(S2C, 0, b":a!u@h PRIVMSG #c :first part", &mut out)
            .unwrap();
        p.gap(S2C);
        assert_eq!(p.state(S2C), StreamState::Resyncing);
        p.feed(
            S2C,
            500,
            b"lost end\r\n:b!u@h PRIVMSG #c :next\r\n",
            &mut out,
        )
        .unwrap();
        assert_eq!(p.state(S2C), StreamState::Readable);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].body, "next");
        assert_eq!(out[0].stream_offset, 510);
    }

    #[test]
    fn malformed_lines() {
        let (msgs, errs) = run_whole(
            Protocol::Irc,
            &[(S2C, b":only-prefix\r\n@tags-only\r\n\r\n:a PRIVMSG\r\n")],
        );
        assert!(msgs.is_empty());
        assert_eq!(errs.len(), 1, "one error per feed is returned");
        let mut p = Parser::new(Protocol::Irc);
        let _ = p.feed(S2C, 0, b":only-prefix\r\n@tags-only\r\n", &mut Vec::new());
        assert_eq!(p.error_count(), 2);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_are_split_invariant(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..8),
        ) {
            let script = [(S2C, data.as_slice())];
            let (whole, _) = run_whole(Protocol::Irc, &script);
            let (split, _) = run_split(Protocol::Irc, &script, &|_| cuts.clone());
            prop_assert_eq!(whole, split);
        }

        #[test]
        fn mutated_conversations_never_panic(
            flips in proptest::collection::vec((0usize..2000, any::<u8>()), 1..6),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut steps: Vec<(Direction, Vec<u8>)> = CONVERSATION.iter().map(|(d, b)| (*d, b.to_vec())).collect();
            let total: usize = steps.iter().map(|s| s.1.len()).sum();
            for (at, byte) in flips {
                let mut at = at % total;
                for step in &mut steps {
                    if at < step.1.len() { step.1[at] = byte; break; }
                    at -= step.1.len();
                }
            }
            let script: Vec<(Direction, &[u8])> = steps.iter().map(|(d, b)| (*d, b.as_slice())).collect();
            let (whole, _) = run_whole(Protocol::Irc, &script);
            let (split, _) = run_split(Protocol::Irc, &script, &|_| cuts.clone());
            prop_assert_eq!(whole, split);
        }
    }
}
