//! Yahoo Messenger (YMSG, protocol versions 9 to 16), after the protocol descriptions of
//! its reimplementations (libyahoo2's `yahoo2_types.h` service list and the "YMSG protocol"
//! notes by Hu Zheng and the libpurple prpl-yahoo documentation).
//!
//! A packet is a 20-byte header (`YMSG`, version u16, vendor id u16, payload length u16,
//! service u16, status u32, session id u32; all big-endian) and a payload of key/value pairs,
//! each key (decimal) and value ended by the bytes C0 80. Messages are read from services
//! 0x06 (message: key 1 or 4 the sender, 5 the recipient, 14 the text), 0x1D (conference
//! message: 57 the room, 3 the sender), 0xA8 (chat room message: 104 the room, 109 the sender,
//! 117 the text); file offers from 0x46, 0x4D and 0xDC (27 the file name, 28 its size, 20 a
//! URL). Typing notices and everything else give no message.

use memchr::memmem;

use super::frames::{Framer, Spec};
use super::{utf8_or_latin1, Errors, StreamState};
use crate::message::{Attachment, Direction, Message, MessageKind, Protocol, TransferKind};

/// Largest packet: the header and a u16 payload length.
pub const MAX_PACKET: usize = HEADER + u16::MAX as usize;

const HEADER: usize = 20;

const SPEC: Spec = Spec {
    protocol: Protocol::Ymsg,
    header: HEADER,
    magic: b"YMSG",
    len_at: 8,
    resync: true,
};

const SEPARATOR: &[u8] = b"\xc0\x80";

const SERVICE_MESSAGE: u16 = 0x06;
const SERVICE_CONF_MESSAGE: u16 = 0x1d;
const SERVICE_FILE_TRANSFER: u16 = 0x46;
const SERVICE_P2P_FILE: u16 = 0x4d;
const SERVICE_CHAT_MESSAGE: u16 = 0xa8;
const SERVICE_FILE_TRANSFER_15: u16 = 0xdc;

/// YMSG state of one connection.
#[derive(Debug, Default)]
pub struct YmsgParser {
    framers: [Framer; 2],
}

impl YmsgParser {
    pub(crate) fn state(&self, dir: Direction) -> StreamState {
        self.framers[dir.index()].state()
    }

    /// Lost bytes: a packet whose end is still ahead is skipped; otherwise the next `YMSG`
    /// magic is looked for.
    pub(crate) fn gap(&mut self, dir: Direction) {
        self.framers[dir.index()].gap();
    }

    pub(crate) fn feed(
        &mut self,
        dir: Direction,
        offset: u64,
        data: &[u8],
        out: &mut Vec<Message>,
        errors: &mut Errors,
    ) {
        self.framers[dir.index()].feed(&SPEC, offset, data, errors, |start, frame| {
            packet(dir, start, frame, out);
        });
    }
}

/// The key/value pairs of a payload; a trailing key without a value is dropped.
fn pairs(payload: &[u8]) -> Vec<(u32, &[u8])> {
    let mut out = Vec::new();
    let mut key = None;
    let mut at = 0;
    for end in memmem::find_iter(payload, SEPARATOR).chain(std::iter::once(payload.len())) {
        let Some(token) = payload.get(at..end) else {
            break;
        };
        at = end + SEPARATOR.len();
        match key.take() {
            None => {
                key = Some(
                    std::str::from_utf8(token)
                        .ok()
                        .and_then(|k| k.parse::<u32>().ok()),
                );
            }
            Some(Some(k)) => out.push((k, token)),
            Some(None) => {}
        }
    }
    out
}

#[expect(clippy::too_many_lines, reason = "one arm per service, each short")]
fn packet(dir: Direction, start: u64, frame: &[u8], out: &mut Vec<Message>) {
    let service = u16::from_be_bytes([frame[10], frame[11]]);
    let kv = pairs(frame.get(HEADER..).unwrap_or_default());
    let get = |k: u32| {
        kv.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| utf8_or_latin1(v))
    };
    let c2s = dir == Direction::ClientToServer;
    let msg = |kind, sender: Option<String>, recipients: Vec<String>, body, attachments| Message {
        protocol: Protocol::Ymsg,
        direction: dir,
        kind,
        sender: sender.filter(|s| !s.is_empty()),
        recipients,
        body,
        attachments,
        stream_offset: start,
    };
    match service {
        SERVICE_MESSAGE => {
            // Offline messages come several to a packet, each with its sender (4), recipient
            // (5) and text (14) in that order; a live message has one of each in any order.
            let texts = kv.iter().filter(|(k, _)| *k == 14).count();
            let (mut from, mut to) = (None, None);
            for (k, v) in &kv {
                match k {
                    1 if c2s || from.is_none() => from = Some(utf8_or_latin1(v)),
                    4 if !c2s || from.is_none() => from = Some(utf8_or_latin1(v)),
                    5 => to = Some(utf8_or_latin1(v)),
                    14 => {
                        let text = utf8_or_latin1(v);
                        if text.is_empty() {
                            continue;
                        }
                        let (sender, recipient) = if texts == 1 {
                            let sender = if c2s {
                                get(1).or_else(|| get(4))
                            } else {
                                get(4).or_else(|| get(1))
                            };
                            (sender, get(5))
                        } else {
                            (from.clone(), to.clone())
                        };
                        out.push(msg(
                            MessageKind::Chat,
                            sender,
                            recipient.into_iter().collect(),
                            text,
                            Vec::new(),
                        ));
                    }
                    _ => {}
                }
            }
        }
        SERVICE_CONF_MESSAGE => {
            let Some(text) = get(14).filter(|t| !t.is_empty()) else {
                return;
            };
            let sender = if c2s {
                get(1)
            } else {
                get(3).or_else(|| get(1))
            };
            out.push(msg(
                MessageKind::Chat,
                sender,
                get(57).into_iter().collect(),
                text,
                Vec::new(),
            ));
        }
        SERVICE_CHAT_MESSAGE => {
            let Some(text) = get(117).filter(|t| !t.is_empty()) else {
                return;
            };
            out.push(msg(
                MessageKind::Chat,
                get(109),
                get(104).into_iter().collect(),
                text,
                Vec::new(),
            ));
        }
        SERVICE_FILE_TRANSFER | SERVICE_P2P_FILE | SERVICE_FILE_TRANSFER_15 => {
            let mut attachments: Vec<Attachment> = Vec::new();
            for (k, v) in &kv {
                match k {
                    27 => attachments.push(Attachment {
                        transfer: TransferKind::YmsgFileTransfer,
                        name: utf8_or_latin1(v),
                        size: None,
                        mime: None,
                        url: None,
                    }),
                    28 => {
                        if let Some(a) = attachments.last_mut().filter(|a| a.size.is_none()) {
                            a.size = std::str::from_utf8(v)
                                .ok()
                                .and_then(|s| s.trim().parse().ok());
                        }
                    }
                    20 => {
                        if let Some(a) = attachments.last_mut() {
                            a.url = Some(utf8_or_latin1(v));
                        }
                    }
                    _ => {}
                }
            }
            if attachments.is_empty() {
                return;
            }
            let sender = if c2s {
                get(1).or_else(|| get(4))
            } else {
                get(4).or_else(|| get(1))
            };
            let body = get(14).unwrap_or_default();
            out.push(msg(
                MessageKind::FileOffer,
                sender,
                get(5).into_iter().collect(),
                body,
                attachments,
            ));
        }
        _ => {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::parsers::testutil::{assert_split_invariant, run_split, run_whole};
    use crate::parsers::Parser;

    const C2S: Direction = Direction::ClientToServer;
    const S2C: Direction = Direction::ServerToClient;

    pub(crate) fn ymsg(service: u16, kv: &[(u32, &[u8])]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (k, v) in kv {
            payload.extend_from_slice(k.to_string().as_bytes());
            payload.extend_from_slice(SEPARATOR);
            payload.extend_from_slice(v);
            payload.extend_from_slice(SEPARATOR);
        }
        let mut p = b"YMSG".to_vec();
        p.extend_from_slice(&16u16.to_be_bytes());
        p.extend_from_slice(&0u16.to_be_bytes());
        p.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        p.extend_from_slice(&service.to_be_bytes());
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&0x1234u32.to_be_bytes());
        p.extend(payload);
        p
    }

    #[test]
    #[expect(clippy::too_many_lines, reason = "one conversation, spelled out")]
    fn conversation() {
        let c = [
            ymsg(
                0x4b,
                &[(4, b"alice"), (5, b"bob"), (13, b"1"), (49, b"TYPING")],
            ),
            ymsg(
                SERVICE_MESSAGE,
                &[
                    (1, b"alice"),
                    (5, b"bob"),
                    (14, b"hi bob \xe9"),
                    (97, b"0"),
                    (63, b";0"),
                ],
            ),
            ymsg(
                SERVICE_FILE_TRANSFER_15,
                &[
                    (1, b"alice"),
                    (5, b"bob"),
                    (265, b"id1"),
                    (222, b"1"),
                    (27, b"plan.doc"),
                    (28, b"4096"),
                    (27, b"b.png"),
                    (28, b"9"),
                ],
            ),
            ymsg(
                SERVICE_CONF_MESSAGE,
                &[
                    (1, b"alice"),
                    (53, b"bob"),
                    (57, b"team-room"),
                    (14, b"conf hello"),
                    (97, b"1"),
                ],
            ),
        ]
        .concat();
        let s = [
            ymsg(
                SERVICE_MESSAGE,
                &[(5, b"alice"), (4, b"bob"), (14, b"yo \xc3\xa9"), (97, b"1")],
            ),
            // Offline messages: two in one packet.
            ymsg(
                SERVICE_MESSAGE,
                &[
                    (5, b"alice"),
                    (31, b"6"),
                    (32, b"6"),
                    (4, b"carol"),
                    (14, b"off1"),
                    (31, b"6"),
                    (4, b"dave"),
                    (14, b"off2"),
                ],
            ),
            ymsg(
                SERVICE_CHAT_MESSAGE,
                &[(104, b"Lobby:1"), (109, b"eve"), (117, b"chat room text")],
            ),
            ymsg(
                SERVICE_FILE_TRANSFER,
                &[
                    (5, b"alice"),
                    (4, b"bob"),
                    (14, b"take this"),
                    (27, b"x.zip"),
                    (28, b"77"),
                    (20, b"http://fs.example/x.zip"),
                ],
            ),
        ]
        .concat();
        let msgs = assert_split_invariant(Protocol::Ymsg, &[(C2S, &c), (S2C, &s)]);
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
                e(C2S, MessageKind::Chat, "alice", "bob", "hi bob é"),
                e(C2S, MessageKind::FileOffer, "alice", "bob", ""),
                e(C2S, MessageKind::Chat, "alice", "team-room", "conf hello"),
                e(S2C, MessageKind::Chat, "bob", "alice", "yo é"),
                e(S2C, MessageKind::Chat, "carol", "alice", "off1"),
                e(S2C, MessageKind::Chat, "dave", "alice", "off2"),
                e(S2C, MessageKind::Chat, "eve", "Lobby:1", "chat room text"),
                e(S2C, MessageKind::FileOffer, "bob", "alice", "take this"),
            ]
        );
        let files: Vec<_> = msgs[1]
            .attachments
            .iter()
            .map(|a| (a.name.as_str(), a.size))
            .collect();
        assert_eq!(files, vec![("plan.doc", Some(4096)), ("b.png", Some(9))]);
        assert_eq!(
            msgs[7].attachments[0].url.as_deref(),
            Some("http://fs.example/x.zip")
        );
        assert_eq!(
            msgs[7].attachments[0].transfer,
            TransferKind::YmsgFileTransfer
        );
        assert!(c[msgs[1].stream_offset as usize..].starts_with(b"YMSG"));
    }

    #[test]
    fn gaps_and_garbage_resync_at_the_magic() {
        let a = ymsg(SERVICE_MESSAGE, &[(4, b"bob"), (14, b"lost")]);
        let b = ymsg(SERVICE_MESSAGE, &[(4, b"bob"), (14, b"kept")]);
        // A hole inside a packet whose length was read: that packet is skipped.
        let mut p = Parser::new(Protocol::Ymsg);
        let mut out = Vec::new();
        p.feed(S2C, 0, &a[..25], &mut out).unwrap();
        let mut rest = a[30..].to_vec();
        rest.extend_from_slice(&b);
        p.feed(S2C, 30, &rest, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].stream_offset, a.len() as u64);
        // A hole in a header: the next magic is found.
        let mut p = Parser::new(Protocol::Ymsg);
        let mut out = Vec::new();
        p.feed(S2C, 0, &a[..5], &mut out).unwrap();
        p.gap(S2C);
        assert_eq!(p.state(S2C), StreamState::Resyncing);
        let mut rest = b"junkYMjunk".to_vec();
        rest.extend_from_slice(&b);
        p.feed(S2C, 100, &rest, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].stream_offset, 110);
        assert_eq!(p.state(S2C), StreamState::Readable);
        // Bytes without the magic are an error; the next packet is read.
        let mut garbage = vec![b'x'; 20];
        garbage.extend_from_slice(&b);
        let (msgs, errs) = run_whole(Protocol::Ymsg, &[(C2S, &garbage)]);
        assert_eq!(msgs.len(), 1);
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn largest_packet() {
        let text = vec![b'a'; u16::MAX as usize - 20];
        let big = ymsg(SERVICE_MESSAGE, &[(1, b"me"), (14, &text)]);
        assert!(big.len() <= MAX_PACKET);
        let (msgs, errs) = run_split(Protocol::Ymsg, &[(C2S, &big)], &|len| {
            (0..len).step_by(4096).collect()
        });
        assert!(errs.is_empty());
        assert_eq!(msgs[0].body.len(), text.len());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_are_split_invariant(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..8),
            magic in any::<bool>(),
        ) {
            let mut data = data;
            if magic {
                data.splice(0..0, b"YMSG\x00\x10\x00\x00\x00\x20\x00\x06".iter().copied());
            }
            let script = [(S2C, data.as_slice())];
            let (whole, _) = run_whole(Protocol::Ymsg, &script);
            let (split, _) = run_split(Protocol::Ymsg, &script, &|_| cuts.clone());
            prop_assert_eq!(whole, split);
        }
    }
}
