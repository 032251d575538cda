//! MQTT 3.1, 3.1.1 and 5.0: CONNECT names the client, PUBLISH carries the messages.

use std::collections::HashMap;

use super::{lossy, Errors, ParseError, StreamState};
use crate::message::{Direction, Message, MessageKind, Protocol};

/// Largest CONNECT, CONNACK or PUBLISH kept whole (remaining length, bytes). A larger PUBLISH
/// is skipped by its length with [`ParseError::TooLarge`]; the framing stays intact. Other
/// packet types are never buffered, whatever their length.
pub const MAX_PACKET: usize = 1 << 20;

/// Topic aliases (MQTT 5.0 section 3.3.2.3.4) remembered per direction; the peer's Topic Alias
/// Maximum can be up to 65535, the cap keeps a hostile peer from filling memory (aliases beyond
/// it are not learnt, and PUBLISHes that use them report an unknown alias).
pub const MAX_TOPIC_ALIASES: usize = 1024;

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;

#[derive(Debug, Default)]
enum Phase {
    /// Reading the fixed header: packet type byte and up to four length bytes.
    #[default]
    Header,
    /// Reading (or skipping) the rest of a packet.
    Body {
        kind: u8,
        flags: u8,
        remaining: usize,
        keep: bool,
    },
}

#[derive(Debug, Default)]
struct Side {
    phase: Phase,
    header: [u8; 5],
    header_len: usize,
    /// Stream offset of the current packet's first byte.
    start: u64,
    buf: Vec<u8>,
    aliases: HashMap<u16, String>,
    /// Framing lost: a gap or a broken fixed header.
    lost: bool,
}

/// MQTT state of one connection.
#[derive(Debug, Default)]
pub struct MqttParser {
    sides: [Side; 2],
    /// Protocol level from CONNECT (3, 4 or 5); 0 until seen, read as 4.
    level: u8,
    /// The CONNECT client identifier, or the one a v5 server assigned in CONNACK.
    client_id: Option<String>,
}

fn malformed(offset: u64, reason: &'static str) -> ParseError {
    ParseError::Malformed {
        protocol: Protocol::Mqtt,
        offset,
        reason,
    }
}

impl MqttParser {
    pub(crate) fn state(&self, dir: Direction) -> StreamState {
        if self.sides[dir.index()].lost {
            StreamState::Unparseable
        } else {
            StreamState::Readable
        }
    }

    /// MQTT has no sync marker: after lost bytes any byte could be a packet start.
    pub(crate) fn gap(&mut self, dir: Direction) {
        let side = &mut self.sides[dir.index()];
        side.lost = true;
        side.buf = Vec::new();
        side.aliases = HashMap::new();
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
            if side.lost {
                return;
            }
            match side.phase {
                Phase::Header => {
                    let byte = data[i];
                    if side.header_len == 0 {
                        side.start = offset + i as u64;
                    }
                    side.header[side.header_len] = byte;
                    side.header_len += 1;
                    i += 1;
                    if side.header_len == 1 {
                        continue;
                    }
                    if byte & 0x80 != 0 {
                        if side.header_len == side.header.len() {
                            // MQTT 3.1.1 section 2.2.3: at most four length bytes.
                            errors.push(malformed(side.start, "remaining length over four bytes"));
                            self.gap(dir);
                            return;
                        }
                        continue;
                    }
                    let remaining = side.header[1..side.header_len]
                        .iter()
                        .rev()
                        .fold(0usize, |acc, b| acc << 7 | usize::from(b & 0x7f));
                    let kind = side.header[0] >> 4;
                    let flags = side.header[0] & 0x0f;
                    side.header_len = 0;
                    if kind == 0 {
                        // Type 0 is reserved in every version: these are not MQTT bytes, or
                        // not where we think a packet starts.
                        errors.push(malformed(side.start, "reserved packet type 0"));
                        self.gap(dir);
                        return;
                    }
                    let mut keep = matches!(kind, CONNECT | CONNACK | PUBLISH);
                    if keep && remaining > MAX_PACKET {
                        errors.push(ParseError::TooLarge {
                            protocol: Protocol::Mqtt,
                            offset: side.start,
                            limit: MAX_PACKET,
                        });
                        keep = false;
                    }
                    let rest = &data[i..];
                    if keep && rest.len() >= remaining {
                        // The whole packet is in this chunk: parse it in place.
                        let start = side.start;
                        i += remaining;
                        self.packet(dir, start, kind, flags, &rest[..remaining], out, errors);
                    } else if remaining > 0 {
                        side.phase = Phase::Body {
                            kind,
                            flags,
                            remaining,
                            keep,
                        };
                    }
                }
                Phase::Body {
                    kind,
                    flags,
                    remaining,
                    keep,
                } => {
                    let take = remaining.min(data.len() - i);
                    if keep {
                        side.buf.extend_from_slice(&data[i..i + take]);
                    }
                    i += take;
                    if take < remaining {
                        side.phase = Phase::Body {
                            kind,
                            flags,
                            remaining: remaining - take,
                            keep,
                        };
                        return;
                    }
                    side.phase = Phase::Header;
                    if keep {
                        let buf = std::mem::take(&mut side.buf);
                        let start = side.start;
                        self.packet(dir, start, kind, flags, &buf, out, errors);
                        let side = &mut self.sides[dir.index()];
                        side.buf = buf;
                        side.buf.clear();
                    }
                }
            }
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per framing path, all plain values"
    )]
    fn packet(
        &mut self,
        dir: Direction,
        start: u64,
        kind: u8,
        flags: u8,
        body: &[u8],
        out: &mut Vec<Message>,
        errors: &mut Errors,
    ) {
        let result = match kind {
            CONNECT if dir == Direction::ClientToServer => self.connect(body),
            CONNACK if dir == Direction::ServerToClient => self.connack(body),
            PUBLISH => self.publish(dir, start, flags, body).map(|m| out.extend(m)),
            _ => Ok(()),
        };
        if let Err(reason) = result {
            errors.push(malformed(start, reason));
        }
    }

    fn connect(&mut self, body: &[u8]) -> Result<(), &'static str> {
        let mut r = Reader(body);
        let name = r.binary()?;
        let level = r.u8()?;
        // MQTT 3.1 says "MQIsdp" with level 3; 3.1.1 and 5.0 say "MQTT" with 4 and 5.
        if !matches!((name, level), (b"MQIsdp", 3) | (b"MQTT", 4 | 5)) {
            return Err("unknown protocol name or level in CONNECT");
        }
        let _flags = r.u8()?;
        let _keep_alive = r.u16()?;
        if level == 5 {
            let len = r.varint()?;
            r.take(len)?;
        }
        let id = r.binary()?;
        self.level = level;
        self.client_id = (!id.is_empty()).then(|| lossy(id).into_owned());
        Ok(())
    }

    fn connack(&mut self, body: &[u8]) -> Result<(), &'static str> {
        if self.level != 5 || body.len() < 3 {
            return Ok(());
        }
        let mut r = Reader(body);
        let _ack_flags = r.u8()?;
        let _reason = r.u8()?;
        let len = r.varint()?;
        let mut props = Reader(r.take(len)?);
        while let Some((id, value)) = props.property()? {
            // 0x12 Assigned Client Identifier (MQTT 5.0 section 3.2.2.3.7): the server named
            // a client that connected with an empty id.
            if id == 0x12 && self.client_id.is_none() {
                self.client_id = Some(lossy(value).into_owned());
            }
        }
        Ok(())
    }

    fn publish(
        &mut self,
        dir: Direction,
        start: u64,
        flags: u8,
        body: &[u8],
    ) -> Result<Option<Message>, &'static str> {
        let qos = (flags >> 1) & 3;
        if qos == 3 {
            return Err("PUBLISH with QoS 3");
        }
        let mut r = Reader(body);
        let topic = r.binary()?;
        if qos > 0 {
            let _packet_id = r.u16()?;
        }
        let mut topic = lossy(topic).into_owned();
        if self.level == 5 {
            let len = r.varint()?;
            let mut props = Reader(r.take(len)?);
            let mut alias = None;
            while let Some((id, value)) = props.property()? {
                if id == 0x23 {
                    alias = Some(u16::from_be_bytes(
                        value.try_into().map_err(|_| "bad topic alias")?,
                    ));
                }
            }
            if let Some(alias) = alias {
                let aliases = &mut self.sides[dir.index()].aliases;
                if topic.is_empty() {
                    topic.clone_from(
                        aliases
                            .get(&alias)
                            .ok_or("PUBLISH with an unknown topic alias")?,
                    );
                } else if aliases.len() < MAX_TOPIC_ALIASES || aliases.contains_key(&alias) {
                    aliases.insert(alias, topic.clone());
                }
            }
        }
        let sender = match dir {
            Direction::ClientToServer => self.client_id.clone(),
            // The broker does not say which client published a message it forwards.
            Direction::ServerToClient => None,
        };
        Ok(Some(Message {
            protocol: Protocol::Mqtt,
            direction: dir,
            kind: MessageKind::Chat,
            sender,
            recipients: vec![topic],
            body: lossy(r.0).into_owned(),
            attachments: Vec::new(),
            stream_offset: start,
        }))
    }
}

/// A cursor over a packet body; every read checks the length.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.0.len() {
            return Err("field runs past the packet end");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A two-byte length and that many bytes (UTF-8 string or binary data).
    fn binary(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// Variable byte integer, at most four bytes (MQTT 5.0 section 1.5.5).
    fn varint(&mut self) -> Result<usize, &'static str> {
        let mut value = 0usize;
        for i in 0..4 {
            let b = self.u8()?;
            value |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("variable byte integer over four bytes")
    }

    /// The next MQTT 5.0 property (section 2.2.2.2) as its id and raw value; a string pair's
    /// value is both strings with their lengths.
    fn property(&mut self) -> Result<Option<(u8, &'a [u8])>, &'static str> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let id = self.u8()?;
        let value = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => self.take(1)?,
            0x13 | 0x21 | 0x22 | 0x23 => self.take(2)?,
            0x02 | 0x11 | 0x18 | 0x27 => self.take(4)?,
            0x0B => {
                let before = self.0;
                self.varint()?;
                &before[..before.len() - self.0.len()]
            }
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => self.binary()?,
            0x26 => {
                let before = self.0;
                self.binary()?;
                self.binary()?;
                &before[..before.len() - self.0.len()]
            }
            _ => return Err("unknown property"),
        };
        Ok(Some((id, value)))
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

    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let mut len = body.len();
        loop {
            let mut b = (len & 0x7f) as u8;
            len >>= 7;
            if len > 0 {
                b |= 0x80;
            }
            out.push(b);
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(body);
        out
    }

    fn string(s: &[u8]) -> Vec<u8> {
        let mut out = (s.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(s);
        out
    }

    fn connect(level: u8, id: &str, props: &[u8]) -> Vec<u8> {
        let mut body = string(if level == 3 { b"MQIsdp" } else { b"MQTT" });
        body.extend_from_slice(&[level, 0x02, 0, 60]);
        if level == 5 {
            body.push(props.len() as u8);
            body.extend_from_slice(props);
        }
        body.extend(string(id.as_bytes()));
        packet(0x10, &body)
    }

    fn publish(qos: u8, topic: &str, v5_props: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
        let mut body = string(topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&[0, 7]);
        }
        if let Some(props) = v5_props {
            body.push(props.len() as u8);
            body.extend_from_slice(props);
        }
        body.extend_from_slice(payload);
        packet(0x30 | qos << 1, &body)
    }

    fn v311() -> Vec<(Direction, Vec<u8>)> {
        vec![
            (C2S, connect(4, "sensor-7", &[])),
            (S2C, packet(0x20, &[0, 0])),
            (
                C2S,
                [
                    packet(0x82, &[0, 1, 0, 3, b'a', b'/', b'b', 0]),
                    publish(0, "home/temp", None, b"21.5"),
                ]
                .concat(),
            ),
            (
                S2C,
                [
                    packet(0x90, &[0, 1, 0]),
                    publish(1, "a/b", None, b"caf\xc3\xa9 \xff"),
                ]
                .concat(),
            ),
            (
                C2S,
                [
                    packet(0x40, &[0, 7]),
                    publish(2, "home/door", None, b"open"),
                    packet(0xc0, &[]),
                ]
                .concat(),
            ),
        ]
    }

    fn v5() -> Vec<(Direction, Vec<u8>)> {
        // User property, session expiry and receive maximum in CONNECT.
        let connect_props = [
            &[0x11, 0, 0, 0, 10, 0x21, 0, 5][..],
            &[0x26],
            &string(b"k"),
            &string(b"v"),
        ]
        .concat();
        // Server assigns an id: the client connected with an empty one.
        let connack_props = [&[0x12][..], &string(b"auto-1234"), &[0x22, 0, 10]].concat();
        let mut connack = vec![0, 0, connack_props.len() as u8];
        connack.extend_from_slice(&connack_props);
        let pub_props = [
            &[0x01, 1, 0x02, 0, 0, 0, 60, 0x03][..],
            &string(b"text/plain"),
            &[0x23, 0, 4],
            &[0x0B, 0x81, 0x01],
        ]
        .concat();
        vec![
            (C2S, connect(5, "", &connect_props)),
            (S2C, packet(0x20, &connack)),
            (C2S, publish(1, "chat/room1", Some(&pub_props), b"hello v5")),
            // Topic alias 4 used with an empty topic.
            (C2S, publish(0, "", Some(&[0x23, 0, 4]), b"again")),
            (
                S2C,
                publish(
                    0,
                    "chat/room1",
                    Some(&[0x26, 0, 1, b'a', 0, 1, b'b']),
                    b"from broker",
                ),
            ),
        ]
    }

    fn script(steps: &[(Direction, Vec<u8>)]) -> Vec<(Direction, &[u8])> {
        steps.iter().map(|(d, b)| (*d, b.as_slice())).collect()
    }

    fn summary(msgs: &[Message]) -> Vec<(Direction, Option<&str>, &str, &str)> {
        msgs.iter()
            .map(|m| {
                (
                    m.direction,
                    m.sender.as_deref(),
                    m.recipients[0].as_str(),
                    m.body.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn mqtt_311_conversation() {
        let steps = v311();
        let msgs = assert_split_invariant(Protocol::Mqtt, &script(&steps));
        assert_eq!(
            summary(&msgs),
            vec![
                (C2S, Some("sensor-7"), "home/temp", "21.5"),
                (S2C, None, "a/b", "café \u{fffd}"),
                (C2S, Some("sensor-7"), "home/door", "open"),
            ]
        );
        assert!(msgs
            .iter()
            .all(|m| m.kind == MessageKind::Chat && m.recipients.len() == 1));
        // The second c2s step starts at 22 (CONNECT is 22 bytes); the SUBSCRIBE is 10.
        assert_eq!(msgs[0].stream_offset, 22 + 10);
    }

    #[test]
    fn mqtt_5_properties_and_aliases() {
        let steps = v5();
        let msgs = assert_split_invariant(Protocol::Mqtt, &script(&steps));
        assert_eq!(
            summary(&msgs),
            vec![
                (C2S, Some("auto-1234"), "chat/room1", "hello v5"),
                (C2S, Some("auto-1234"), "chat/room1", "again"),
                (S2C, None, "chat/room1", "from broker"),
            ]
        );
    }

    #[test]
    fn mqtt_31_is_read_like_311() {
        let steps = [(
            C2S,
            [connect(3, "old", &[]), publish(0, "t", None, b"x")].concat(),
        )];
        let (msgs, errs) = run_whole(Protocol::Mqtt, &script(&steps));
        assert!(errs.is_empty());
        assert_eq!(summary(&msgs), vec![(C2S, Some("old"), "t", "x")]);
    }

    #[test]
    fn oversized_publish_is_skipped_by_length() {
        let big = vec![b'z'; MAX_PACKET];
        let steps = [(
            C2S,
            [
                connect(4, "c", &[]),
                publish(0, "big", None, &big),
                publish(0, "small", None, b"ok"),
            ]
            .concat(),
        )];
        for cut in [1, 4096, 1 << 19, usize::MAX] {
            let (msgs, errs) = run_split(Protocol::Mqtt, &script(&steps), &|len| {
                (0..len).step_by(cut.min(len)).collect()
            });
            assert_eq!(errs.len(), 1);
            let at = connect(4, "c", &[]).len() as u64;
            assert_eq!(
                errs[0],
                ParseError::TooLarge {
                    protocol: Protocol::Mqtt,
                    offset: at,
                    limit: MAX_PACKET
                }
            );
            assert_eq!(summary(&msgs), vec![(C2S, Some("c"), "small", "ok")]);
        }
    }

    #[test]
    fn framing_errors_make_the_direction_unparseable() {
        let mut p = Parser::new(Protocol::Mqtt);
        let mut out = Vec::new();
        let err = p
            .feed(C2S, 0, &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], &mut out)
            .unwrap_err();
        assert!(matches!(err, ParseError::Malformed { offset: 0, .. }));
        assert_eq!(p.state(C2S), StreamState::Unparseable);
        assert_eq!(p.state(S2C), StreamState::Readable);
        p.feed(C2S, 6, &publish(0, "t", None, b"x"), &mut out)
            .unwrap();
        assert!(out.is_empty());

        let mut p = Parser::new(Protocol::Mqtt);
        assert!(p.feed(C2S, 0, &[0x00, 0x00], &mut out).is_err());
        assert_eq!(p.state(C2S), StreamState::Unparseable);
    }

    #[test]
    fn gap_makes_the_direction_unparseable() {
        let mut p = Parser::new(Protocol::Mqtt);
        let mut out = Vec::new();
        p.feed(S2C, 0, &publish(0, "t", None, b"x"), &mut out)
            .unwrap();
        p.gap(S2C);
        assert_eq!(p.state(S2C), StreamState::Unparseable);
        assert!(p.is_inspectable());
        p.feed(S2C, 100, &publish(0, "t", None, b"y"), &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn malformed_packets_are_skipped_and_framing_kept() {
        let steps = [(
            C2S,
            [
                connect(4, "c", &[]),
                packet(0x36, &string(b"qos3")),
                packet(0x30, &[0, 9, b'a']),
                packet(0x32, &string(b"no-id")),
                publish(0, "fine", None, b"ok"),
            ]
            .concat(),
        )];
        let mut p = Parser::new(Protocol::Mqtt);
        let mut out = Vec::new();
        assert!(p.feed(C2S, 0, &steps[0].1, &mut out).is_err());
        assert_eq!(p.error_count(), 3);
        assert_eq!(summary(&out), vec![(C2S, Some("c"), "fine", "ok")]);
        // v5 unknown property and unknown alias.
        let steps = [(
            C2S,
            [
                connect(5, "c", &[]),
                publish(0, "t", Some(&[0x7f, 0]), b""),
                publish(0, "", Some(&[0x23, 0, 9]), b""),
            ]
            .concat(),
        )];
        let mut p = Parser::new(Protocol::Mqtt);
        assert!(p.feed(C2S, 0, &steps[0].1, &mut out).is_err());
        assert_eq!(p.error_count(), 2);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_are_split_invariant(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..8),
        ) {
            let s = [(C2S, data.as_slice())];
            let (whole, _) = run_whole(Protocol::Mqtt, &s);
            let (split, _) = run_split(Protocol::Mqtt, &s, &|_| cuts.clone());
            prop_assert_eq!(whole, split);
        }

        #[test]
        fn mutated_conversations_never_panic(
            v5_script in any::<bool>(),
            flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..4),
            cuts in proptest::collection::vec(0usize..100, 0..8),
        ) {
            let mut steps = if v5_script { v5() } else { v311() };
            let total: usize = steps.iter().map(|s| s.1.len()).sum();
            for (at, byte) in flips {
                let mut at = at % total;
                for step in &mut steps {
                    if at < step.1.len() { step.1[at] = byte; break; }
                    at -= step.1.len();
                }
            }
            let (whole, _) = run_whole(Protocol::Mqtt, &script(&steps));
            let (split, _) = run_split(Protocol::Mqtt, &script(&steps), &|_| cuts.clone());
            prop_assert_eq!(whole, split);
        }
    }
}
