//! AIM/ICQ OSCAR, after AOL's published OSCAR protocol documentation ("AIM/OSCAR Protocol
//! Specification", the FLAP, SNAC, ICBM and Rendezvous chapters) and the iserverd/ICQ
//! protocol notes for the ICQ-specific parts.
//!
//! FLAP frames: `*` (0x2A), channel u8, sequence u16, data length u16, data. Channel 2 carries
//! SNACs (family u16, subtype u16, flags u16, request id u32; flag 0x8000 prefixes a
//! length-counted extra block). Messages are ICBM SNACs: family 0x0004 subtype 0x0006 (the
//! client sends) and 0x0007 (the server delivers): cookie (8), ICBM channel u16, the peer's
//! screen name (u8 length), in 0x0007 the sender's warning level u16 and a counted list of
//! user-info TLVs, then TLVs. ICBM channel 1: TLV 0x0002 holds fragments (id u8, version u8,
//! length u16); fragment 0x01 is text (charset u16, subset u16: 0x0002 UTF-16BE, 0x0003
//! ISO-8859-1, else ASCII). ICBM channel 2: TLV 0x0005 is a rendezvous (type u16, cookie,
//! capability GUID, TLVs); a proposal (type 0) with the file-transfer capability and a file
//! name in TLV 0x2711 is a file offer.
//!
//! The client's own screen name comes from its login (channel 1 sign-on TLV 0x0001, SNAC
//! 0x0017/0x0002 or 0x0006 TLV 0x0001) or the server's self-info (0x0001/0x000F).

use super::frames::{Framer, Reader, Spec};
use super::{utf8_or_latin1, Errors, StreamState};
use crate::message::{Attachment, Direction, Message, MessageKind, Protocol, TransferKind};

/// Largest FLAP frame: its header and a u16 data length.
pub const MAX_FRAME: usize = HEADER + u16::MAX as usize;

const HEADER: usize = 6;

const SPEC: Spec = Spec {
    protocol: Protocol::Oscar,
    header: HEADER,
    magic: b"*",
    len_at: 4,
    resync: false,
};

/// `{09461343-4C7F-11D1-8222-444553540000}`: the file-transfer capability.
const CAP_FILE_TRANSFER: [u8; 16] = [
    0x09, 0x46, 0x13, 0x43, 0x4c, 0x7f, 0x11, 0xd1, 0x82, 0x22, 0x44, 0x45, 0x53, 0x54, 0x00, 0x00,
];

/// OSCAR state of one connection.
#[derive(Debug, Default)]
pub struct OscarParser {
    framers: [Framer; 2],
    me: Option<String>,
}

impl OscarParser {
    pub(crate) fn state(&self, dir: Direction) -> StreamState {
        self.framers[dir.index()].state()
    }

    /// Lost bytes: a frame whose end is still ahead is skipped; otherwise the direction is
    /// lost, since `*` is too common a byte to find the next frame by.
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
        let me = &mut self.me;
        self.framers[dir.index()].feed(&SPEC, offset, data, errors, |start, frame| {
            flap(dir, start, frame, me, out);
        });
    }
}

/// TLVs (type u16, length u16, value) until the end of `r`, or `count` of them.
fn tlvs<'a>(r: &mut Reader<'a>, count: Option<u16>) -> Vec<(u16, &'a [u8])> {
    let mut out = Vec::new();
    while !r.is_empty() && count.is_none_or(|c| out.len() < usize::from(c)) {
        let (Some(t), Some(len)) = (r.u16(), r.u16()) else {
            break;
        };
        let Some(v) = r.take(usize::from(len)) else {
            break;
        };
        out.push((t, v));
    }
    out
}

fn tlv<'a>(tlvs: &[(u16, &'a [u8])], t: u16) -> Option<&'a [u8]> {
    tlvs.iter().find(|(k, _)| *k == t).map(|(_, v)| *v)
}

fn flap(dir: Direction, start: u64, frame: &[u8], me: &mut Option<String>, out: &mut Vec<Message>) {
    let channel = frame[1];
    let mut r = Reader::new(frame.get(HEADER..).unwrap_or_default());
    let c2s = dir == Direction::ClientToServer;
    if channel == 1 && c2s {
        // Sign-on: FLAP version u32 then TLVs; old-style logins name the screen name.
        if r.u32().is_some() {
            if let Some(sn) = tlv(&tlvs(&mut r, None), 0x0001) {
                *me = Some(utf8_or_latin1(sn));
            }
        }
        return;
    }
    if channel != 2 {
        return;
    }
    let (Some(family), Some(subtype), Some(flags), Some(_id)) =
        (r.u16(), r.u16(), r.u16(), r.u32())
    else {
        return;
    };
    if flags & 0x8000 != 0 {
        let Some(len) = r.u16() else {
            return;
        };
        if r.take(usize::from(len)).is_none() {
            return;
        }
    }
    match (family, subtype, c2s) {
        (0x0017, 0x0002 | 0x0006, true) => {
            if let Some(sn) = tlv(&tlvs(&mut r, None), 0x0001) {
                *me = Some(utf8_or_latin1(sn));
            }
        }
        (0x0001, 0x000f, false) => {
            if let Some(len) = r.u8() {
                if let Some(sn) = r.take(usize::from(len)) {
                    *me = Some(utf8_or_latin1(sn));
                }
            }
        }
        (0x0004, 0x0006, true) | (0x0004, 0x0007, false) => {
            if let Some(m) = icbm(dir, start, &mut r, me.as_deref()) {
                out.push(m);
            }
        }
        _ => {}
    }
}

fn icbm(dir: Direction, start: u64, r: &mut Reader, me: Option<&str>) -> Option<Message> {
    let c2s = dir == Direction::ClientToServer;
    r.take(8)?;
    let channel = r.u16()?;
    let len = r.u8()?;
    let peer = utf8_or_latin1(r.take(usize::from(len))?);
    if !c2s {
        r.u16()?;
        let count = r.u16()?;
        tlvs(r, Some(count));
    }
    let tlvs = tlvs(r, None);
    let (kind, body, attachments) = match channel {
        1 => {
            let mut frags = Reader::new(tlv(&tlvs, 0x0002)?);
            let mut text = String::new();
            while !frags.is_empty() {
                let (Some(id), Some(_ver), Some(len)) = (frags.u8(), frags.u8(), frags.u16())
                else {
                    break;
                };
                let Some(data) = frags.take(usize::from(len)) else {
                    break;
                };
                if id == 0x01 {
                    let mut f = Reader::new(data);
                    let (Some(charset), Some(_subset)) = (f.u16(), f.u16()) else {
                        continue;
                    };
                    text.push_str(&decode(charset, f.rest()));
                }
            }
            if text.is_empty() {
                return None;
            }
            (MessageKind::Chat, text, Vec::new())
        }
        2 => {
            let mut rv = Reader::new(tlv(&tlvs, 0x0005)?);
            let kind = rv.u16()?;
            rv.take(8)?;
            let cap = rv.take(16)?;
            if kind != 0 || cap != CAP_FILE_TRANSFER {
                return None;
            }
            let inner = tlvs_all(&mut rv);
            let mut service = Reader::new(tlv(&inner, 0x2711)?);
            let (_multiple, _count, size) = (service.u16()?, service.u16()?, service.u32()?);
            let raw = service.rest();
            let name = &raw[..memchr::memchr(0, raw).unwrap_or(raw.len())];
            if name.is_empty() {
                return None;
            }
            let name = match tlv(&inner, 0x2712) {
                Some(enc) if enc.eq_ignore_ascii_case(b"unicode-2-0") => decode(0x0002, name),
                _ => utf8_or_latin1(name),
            };
            let body = tlv(&inner, 0x000c).map(utf8_or_latin1).unwrap_or_default();
            let attachment = Attachment {
                transfer: TransferKind::OscarRendezvous,
                name,
                size: Some(u64::from(size)),
                mime: None,
                url: None,
            };
            (MessageKind::FileOffer, body, vec![attachment])
        }
        _ => return None,
    };
    let (sender, recipients) = if c2s {
        (me.map(str::to_owned), vec![peer])
    } else {
        (Some(peer), me.map(str::to_owned).into_iter().collect())
    };
    Some(Message {
        protocol: Protocol::Oscar,
        direction: dir,
        kind,
        sender,
        recipients,
        body,
        attachments,
        stream_offset: start,
    })
}

fn tlvs_all<'a>(r: &mut Reader<'a>) -> Vec<(u16, &'a [u8])> {
    tlvs(r, None)
}

/// ICBM text charsets: 0x0002 UTF-16BE (an odd last byte is dropped), 0x0003 ISO-8859-1,
/// anything else ASCII, read as UTF-8 or Latin-1.
fn decode(charset: u16, bytes: &[u8]) -> String {
    match charset {
        0x0002 => {
            let units = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect()
        }
        0x0003 => bytes.iter().map(|&b| char::from(b)).collect(),
        _ => utf8_or_latin1(bytes),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::parsers::testutil::{assert_split_invariant, run_split, run_whole};
    use crate::parsers::Parser;

    const C2S: Direction = Direction::ClientToServer;
    const S2C: Direction = Direction::ServerToClient;

    fn flap(channel: u8, seq: u16, data: &[u8]) -> Vec<u8> {
        let mut v = vec![b'*', channel];
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn tlv(t: u16, v: &[u8]) -> Vec<u8> {
        let mut out = t.to_be_bytes().to_vec();
        out.extend_from_slice(&u16::try_from(v.len()).unwrap().to_be_bytes());
        out.extend_from_slice(v);
        out
    }

    fn snac(family: u16, subtype: u16, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&family.to_be_bytes());
        v.extend_from_slice(&subtype.to_be_bytes());
        v.extend_from_slice(&0u16.to_be_bytes());
        v.extend_from_slice(&7u32.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn text_tlv(charset: u16, text: &[u8]) -> Vec<u8> {
        let mut frags = vec![0x05, 0x01, 0x00, 0x01, 0x01];
        let mut t = charset.to_be_bytes().to_vec();
        t.extend_from_slice(&[0, 0]);
        t.extend_from_slice(text);
        frags.extend_from_slice(&[0x01, 0x01]);
        frags.extend_from_slice(&u16::try_from(t.len()).unwrap().to_be_bytes());
        frags.extend(t);
        tlv(0x0002, &frags)
    }

    fn icbm(subtype: u16, channel: u16, peer: &str, tlvs: &[u8]) -> Vec<u8> {
        let mut b = b"COOKIE!!".to_vec();
        b.extend_from_slice(&channel.to_be_bytes());
        b.push(u8::try_from(peer.len()).unwrap());
        b.extend_from_slice(peer.as_bytes());
        if subtype == 7 {
            b.extend_from_slice(&0u16.to_be_bytes());
            b.extend_from_slice(&2u16.to_be_bytes());
            b.extend(tlv(0x0001, &[0, 0x10]));
            b.extend(tlv(0x0006, &[0, 0, 0, 0]));
        }
        b.extend_from_slice(tlvs);
        snac(0x0004, subtype, &b)
    }

    fn file_offer(name: &[u8], size: u32) -> Vec<u8> {
        let mut rv = 0u16.to_be_bytes().to_vec();
        rv.extend_from_slice(b"COOKIE!!");
        rv.extend_from_slice(&CAP_FILE_TRANSFER);
        rv.extend(tlv(0x000a, &[0, 1]));
        rv.extend(tlv(0x000c, b"here it is"));
        let mut svc = vec![0, 1, 0, 1];
        svc.extend_from_slice(&size.to_be_bytes());
        svc.extend_from_slice(name);
        svc.push(0);
        rv.extend(tlv(0x2711, &svc));
        tlv(0x0005, &rv)
    }

    #[test]
    fn conversation() {
        let mut signon = 1u32.to_be_bytes().to_vec();
        signon.extend(tlv(0x0001, b"alice123"));
        let c = [
            flap(1, 1, &signon),
            flap(
                2,
                2,
                &icbm(
                    6,
                    1,
                    "bob456",
                    &[text_tlv(0, b"<HTML>hi bob</HTML>"), tlv(0x0003, &[])].concat(),
                ),
            ),
            flap(
                2,
                3,
                &icbm(6, 2, "bob456", &file_offer(b"tax.pdf", 123_456)),
            ),
            flap(5, 4, &[]),
        ]
        .concat();
        let utf16: Vec<u8> = "h\u{e9}llo \u{263a}"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        let s = [
            flap(2, 1, &icbm(7, 1, "bob456", &text_tlv(2, &utf16))),
            flap(2, 2, &icbm(7, 1, "carol", &text_tlv(3, b"caf\xe9"))),
            flap(2, 3, &snac(0x0004, 0x0014, b"typing")),
        ]
        .concat();
        let msgs = assert_split_invariant(Protocol::Oscar, &[(C2S, &c), (S2C, &s)]);
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
                    "alice123",
                    "bob456",
                    "<HTML>hi bob</HTML>"
                ),
                e(
                    C2S,
                    MessageKind::FileOffer,
                    "alice123",
                    "bob456",
                    "here it is"
                ),
                e(S2C, MessageKind::Chat, "bob456", "alice123", "héllo ☺"),
                e(S2C, MessageKind::Chat, "carol", "alice123", "café"),
            ]
        );
        let a = &msgs[1].attachments[0];
        assert_eq!(
            (a.transfer, a.name.as_str(), a.size),
            (TransferKind::OscarRendezvous, "tax.pdf", Some(123_456))
        );
    }

    #[test]
    fn self_info_names_the_client() {
        let mut info = vec![5];
        info.extend_from_slice(b"dave1");
        info.extend_from_slice(&[0, 0, 0, 0]);
        let s = flap(2, 1, &snac(0x0001, 0x000f, &info));
        let c = flap(2, 1, &icbm(6, 1, "erin", &text_tlv(0, b"x")));
        let (msgs, _) = run_whole(Protocol::Oscar, &[(S2C, &s), (C2S, &c)]);
        assert_eq!(msgs[0].sender.as_deref(), Some("dave1"));
    }

    #[test]
    fn gaps_and_broken_framing() {
        let a = flap(2, 1, &icbm(7, 1, "bob", &text_tlv(0, b"lost")));
        let b = flap(2, 2, &icbm(7, 1, "bob", &text_tlv(0, b"kept")));
        let mut p = Parser::new(Protocol::Oscar);
        let mut out = Vec::new();
        p.feed(S2C, 0, &a[..10], &mut out).unwrap();
        let mut rest = a[20..].to_vec();
        rest.extend_from_slice(&b);
        p.feed(S2C, 20, &rest, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].body, "kept");
        // A hole across a frame end: the direction is lost.
        p.feed(S2C, (a.len() + b.len() + 50) as u64, &b, &mut out)
            .unwrap();
        assert_eq!(p.state(S2C), StreamState::Unparseable);
        assert!(p.is_inspectable(), "the other direction is still read");
        // A frame without its marker.
        let (msgs, errs) = run_whole(Protocol::Oscar, &[(C2S, b"GET / HTTP/1.1\r\n")]);
        assert!(msgs.is_empty());
        assert_eq!(errs.len(), 1);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_are_split_invariant(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..700, 0..8),
            subtype in 6u16..8,
        ) {
            // Random SNAC bodies inside valid frames reach the ICBM decoding.
            let mut data = flap(2, 1, &snac(4, subtype, &body));
            data.extend_from_slice(&body);
            let script = [(S2C, data.as_slice()), (C2S, data.as_slice())];
            let (whole, _) = run_whole(Protocol::Oscar, &script);
            let (split, _) = run_split(Protocol::Oscar, &script, &|_| cuts.clone());
            prop_assert_eq!(whole, split);
        }
    }
}
