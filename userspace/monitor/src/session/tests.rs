//! Whole conversations, cut into segments as TCP would, fed through a [`Monitor`] and read
//! back from the archive.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;

use super::*;
use crate::archive::{self, ArchiveConfig, Event as Rec, Filter, Record, SealKey};
use crate::content::ContentConfig;
use crate::reassembly::GapPolicy;

const C2S: Direction = Direction::ClientToServer;
const S2C: Direction = Direction::ServerToClient;
const MSS: usize = 1448;
const T0: u64 = 1_700_000_000_000;
const KEY: [u8; 32] = [7; 32];

// ---------------------------------------------------------------------------------------------
// Conversations

/// A message the conversation carries, and where its bytes lie in its direction's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expect {
    dir: Direction,
    sender: Option<String>,
    recipients: Vec<String>,
    body: String,
    start: u64,
    end: u64,
}

/// The bytes each side writes, in order, and the messages among them.
struct Conv {
    protocol: Protocol,
    writes: Vec<(Direction, Vec<u8>)>,
    len: [u64; 2],
    expected: Vec<Expect>,
}

impl Conv {
    fn new(protocol: Protocol) -> Conv {
        Conv {
            protocol,
            writes: Vec::new(),
            len: [0; 2],
            expected: Vec::new(),
        }
    }

    fn raw(&mut self, dir: Direction, bytes: &[u8]) {
        self.len[dir.index()] += bytes.len() as u64;
        self.writes.push((dir, bytes.to_vec()));
    }

    fn message(
        &mut self,
        dir: Direction,
        bytes: &[u8],
        sender: Option<&str>,
        to: &str,
        body: &str,
    ) {
        let start = self.len[dir.index()];
        self.raw(dir, bytes);
        self.expected.push(Expect {
            dir,
            sender: sender.map(Into::into),
            recipients: vec![to.into()],
            body: body.into(),
            start,
            end: self.len[dir.index()],
        });
    }

    fn xmpp() -> Conv {
        let mut c = Conv::new(Protocol::Xmpp);
        c.raw(
            C2S,
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
              xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>",
        );
        c.raw(
            S2C,
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
              xmlns:stream='http://etherx.jabber.org/streams' from='example.com' id='s1' version='1.0'>",
        );
        c
    }

    fn xmpp_chat(&mut self, dir: Direction, from: &str, to: &str, body: &str) {
        let escaped = body
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let stanza = format!(
            "<message from='{from}' to='{to}' type='chat'><body>{escaped}</body></message>"
        );
        self.message(dir, stanza.as_bytes(), Some(from), to, body);
    }

    fn irc(nick: &str) -> Conv {
        let mut c = Conv::new(Protocol::Irc);
        c.raw(
            C2S,
            format!("NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n").as_bytes(),
        );
        c.raw(
            S2C,
            format!(":irc.example 001 {nick} :Welcome\r\n").as_bytes(),
        );
        c
    }

    /// From the client: the sender is the client's nick.
    fn irc_say(&mut self, nick: &str, to: &str, body: &str) {
        let line = format!("PRIVMSG {to} :{body}\r\n");
        self.message(C2S, line.as_bytes(), Some(nick), to, body);
    }

    fn irc_hear(&mut self, from: &str, to: &str, body: &str) {
        let line = format!(":{from}!u@host.example PRIVMSG {to} :{body}\r\n");
        self.message(S2C, line.as_bytes(), Some(from), to, body);
    }

    fn mqtt(client_id: &str) -> Conv {
        let mut c = Conv::new(Protocol::Mqtt);
        let mut body = mqtt_string(b"MQTT");
        body.extend_from_slice(&[4, 0x02, 0, 60]);
        body.extend(mqtt_string(client_id.as_bytes()));
        c.raw(C2S, &mqtt_packet(0x10, &body));
        c.raw(S2C, &mqtt_packet(0x20, &[0, 0]));
        c
    }

    /// A QoS 0 PUBLISH; from the client its sender is the client id, from the broker unknown.
    fn mqtt_publish(&mut self, dir: Direction, client_id: &str, topic: &str, payload: &[u8]) {
        let mut body = mqtt_string(topic.as_bytes());
        body.extend_from_slice(payload);
        let sender = (dir == C2S).then_some(client_id);
        let text = String::from_utf8_lossy(payload).into_owned();
        self.message(dir, &mqtt_packet(0x30, &body), sender, topic, &text);
    }
}

fn mqtt_string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A chat body of about `len` bytes, different for each `n`.
fn body(n: usize, len: usize) -> String {
    let mut s = format!("message {n}:");
    let words = [
        "lorem", "ipsum", "dolor", "sit", "amet", "café", "naïve", "zebra",
    ];
    let mut i = n;
    while s.len() < len {
        s.push(' ');
        s.push_str(words[i % words.len()]);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    s
}

fn xmpp_conversation() -> Conv {
    let mut c = Conv::xmpp();
    for n in 0..30 {
        let len = [40, 300, 1500, 3500, 120][n % 5];
        if n % 3 == 2 {
            c.xmpp_chat(
                S2C,
                "romeo@example.net/orchard",
                "juliet@example.com/balcony",
                &body(n, len),
            );
        } else {
            c.xmpp_chat(
                C2S,
                "juliet@example.com/balcony",
                "romeo@example.net",
                &body(n, len),
            );
        }
    }
    c
}

fn irc_conversation() -> Conv {
    let mut c = Conv::irc("alice");
    for n in 0..40 {
        let len = [30, 200, 400, 90][n % 4];
        if n % 4 == 1 {
            c.irc_hear("bob", "#ops", &body(n, len));
        } else {
            c.irc_say(
                "alice",
                if n % 5 == 0 { "bob" } else { "#ops" },
                &body(n, len),
            );
        }
    }
    c
}

fn mqtt_conversation() -> Conv {
    let mut c = Conv::mqtt("sensor-7");
    for n in 0..30 {
        let len = [20, 700, 2000, 150][n % 4];
        let b = body(n, len);
        if n % 3 == 1 {
            c.mqtt_publish(S2C, "sensor-7", "cmd/sensor-7", b.as_bytes());
        } else {
            c.mqtt_publish(C2S, "sensor-7", &format!("tele/{}", n % 4), b.as_bytes());
        }
    }
    c
}

// ---------------------------------------------------------------------------------------------
// Segments

#[derive(Clone, Debug)]
struct Wire {
    dir: Direction,
    seq: u32,
    syn: bool,
    fin: bool,
    rst: bool,
    payload: Vec<u8>,
}

impl Wire {
    fn segment(&self) -> Segment<'_> {
        Segment {
            direction: self.dir,
            seq: self.seq,
            syn: self.syn,
            fin: self.fin,
            rst: self.rst,
            payload: &self.payload,
            wire_len: self.payload.len() as u32,
        }
    }

    fn end(&self) -> u32 {
        self.seq
            .wrapping_add(self.payload.len() as u32)
            .wrapping_add(u32::from(self.syn || self.fin))
    }
}

/// Client and server ISNs: the client's wraps within the conversation.
const ISN: [u32; 2] = [u32::MAX - 5000, 1_000_000];

/// SYN, SYN-ACK, then each run of writes in one direction cut into MSS segments (so messages
/// straddle segments), then FINs when `fin`.
fn wire(conv: &Conv, fin: bool) -> Vec<Wire> {
    let mut out = Vec::new();
    let mut next = ISN;
    for dir in [C2S, S2C] {
        out.push(Wire {
            dir,
            seq: next[dir.index()],
            syn: true,
            fin: false,
            rst: false,
            payload: Vec::new(),
        });
        next[dir.index()] = next[dir.index()].wrapping_add(1);
    }
    let mut i = 0;
    while let Some((dir, _)) = conv.writes.get(i) {
        let dir = *dir;
        let mut run = Vec::new();
        while let Some((d, bytes)) = conv.writes.get(i).filter(|w| w.0 == dir) {
            let _ = d;
            run.extend_from_slice(bytes);
            i += 1;
        }
        for chunk in run.chunks(MSS) {
            let seq = next[dir.index()];
            next[dir.index()] = seq.wrapping_add(chunk.len() as u32);
            out.push(Wire {
                dir,
                seq,
                syn: false,
                fin: false,
                rst: false,
                payload: chunk.to_vec(),
            });
        }
    }
    if fin {
        for dir in [C2S, S2C] {
            out.push(Wire {
                dir,
                seq: next[dir.index()],
                syn: false,
                fin: true,
                rst: false,
                payload: Vec::new(),
            });
        }
    }
    out
}

/// Reorders and retransmits: every fifth segment swaps with the next one of its direction,
/// and every fourth data segment is sent again three positions later.
fn disorder(mut segs: Vec<Wire>) -> Vec<Wire> {
    let mut i = 2;
    while i < segs.len() {
        let dir = segs[i].dir;
        if let Some(j) = (i + 1..segs.len().min(i + 5)).find(|&j| segs[j].dir == dir) {
            segs.swap(i, j);
        }
        i += 5;
    }
    let mut out = Vec::new();
    let mut again: Vec<(usize, Wire)> = Vec::new();
    for (n, s) in segs.into_iter().enumerate() {
        if n % 4 == 3 && !s.payload.is_empty() {
            again.push((n + 3, s.clone()));
        }
        out.push(s);
        again.retain(|(at, w)| {
            if *at == n {
                out.push(w.clone());
                false
            } else {
                true
            }
        });
    }
    out.extend(again.into_iter().map(|(_, w)| w));
    out
}

// ---------------------------------------------------------------------------------------------
// Harness

/// A unique directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "imfw-session-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn archive(&self) -> Archive {
        Archive::open(
            &self.0,
            SealKey::from_bytes(KEY),
            ArchiveConfig::default(),
            T0,
        )
        .unwrap()
        .0
    }

    fn records(&self) -> Vec<Record> {
        archive::search(&self.0, &Filter::default())
            .unwrap()
            .map(|h| h.unwrap().record)
            .collect()
    }

    fn verify_ok(&self) {
        let report = archive::verify(&self.0, &SealKey::from_bytes(KEY)).unwrap();
        assert!(report.is_ok(), "{report:?}");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn flow_id(n: u16) -> FlowId {
    FlowId {
        client: format!("192.0.2.10:{}", 40000 + n).parse().unwrap(),
        server: "198.51.100.5:5222".parse().unwrap(),
    }
}

fn meta(n: u16, protocol: Protocol) -> FlowMeta {
    FlowMeta {
        id: flow_id(n),
        app: format!("{protocol:?}").to_lowercase(),
        protocol,
    }
}

fn policy(yaml: &str) -> Arc<ContentPolicy> {
    let cfg: ContentConfig = serde_yaml::from_str(yaml).unwrap();
    Arc::new(ContentPolicy::compile(&cfg).unwrap())
}

fn no_rules() -> Arc<ContentPolicy> {
    Arc::new(ContentPolicy::default())
}

const FALCON: &str = "rules:\n  - {name: falcon, action: block, keywords: [project falcon]}\n";

fn config() -> MonitorConfig {
    MonitorConfig {
        reassembly: reassembly::Config {
            fin_grace_ns: 1_000_000,
            ..reassembly::Config::default()
        },
        ..MonitorConfig::default()
    }
}

/// Feeds `segs` one microsecond apart; returns the actions with the index of their segment.
fn feed(m: &mut Monitor, meta: &FlowMeta, segs: &[Wire], t_ns: &mut u64) -> Vec<(usize, Action)> {
    let mut actions = Vec::new();
    let mut out = Vec::new();
    for (i, w) in segs.iter().enumerate() {
        *t_ns += 1_000;
        m.segment(meta, &w.segment(), *t_ns, T0 + *t_ns / 1_000_000, &mut out);
        actions.extend(out.drain(..).map(|a| (i, a)));
    }
    actions
}

/// The archived messages as (direction, sender, recipients, body, incomplete).
type Row = (Direction, Option<String>, Vec<String>, String, bool);

fn messages(records: &[Record], flow: FlowId) -> Vec<Row> {
    records
        .iter()
        .filter_map(|r| match &r.event {
            Rec::Message {
                flow: f, message, ..
            } if *f == flow => Some((
                message.direction,
                message.sender.clone(),
                message.recipients.clone(),
                message.body.clone(),
                r.incomplete,
            )),
            _ => None,
        })
        .collect()
}

fn rows(expected: &[Expect], dir: Direction) -> Vec<Row> {
    expected
        .iter()
        .filter(|e| e.dir == dir)
        .map(|e| {
            (
                e.dir,
                e.sender.clone(),
                e.recipients.clone(),
                e.body.clone(),
                false,
            )
        })
        .collect()
}

fn of_dir(rows: &[Row], dir: Direction) -> Vec<Row> {
    rows.iter().filter(|r| r.0 == dir).cloned().collect()
}

/// The kinds of the flow's non-message records, in order.
fn flow_events(records: &[Record], flow: FlowId) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.event {
            Rec::FlowGap { flow: f, .. } if *f == flow => Some("gap".to_owned()),
            Rec::FlowBlocked { flow: f, .. } if *f == flow => Some("blocked".to_owned()),
            Rec::FlowAnomaly { flow: f, .. } if *f == flow => Some("anomaly".to_owned()),
            Rec::FlowEnd { flow: f, .. } if *f == flow => Some("end".to_owned()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

fn archives_whole_conversation(conv: &Conv, tag: &str) {
    let t = TempDir::new(tag);
    let mut m = Monitor::new(config(), no_rules(), Some(t.archive()));
    let meta = meta(1, conv.protocol);
    let segs = disorder(wire(conv, true));
    let mut t_ns = 0;
    let actions = feed(&mut m, &meta, &segs, &mut t_ns);
    assert!(actions.is_empty(), "{actions:?}");
    let stats = m.stats();
    assert_eq!(stats.messages, conv.expected.len() as u64);
    assert_eq!(stats.gaps, 0);
    assert_eq!(stats.conflicts, 0);
    assert_eq!(stats.parse_errors, 0);
    assert_eq!(stats.flows, 0, "both FINs end the flow");
    assert_eq!(stats.tracked, 1, "its tombstone stays");
    assert_eq!(stats.held_bytes, 0);
    assert_eq!(stats.archive_errors, 0);
    m.close(T0 + 1000).unwrap();

    let records = t.records();
    let got = messages(&records, meta.id);
    assert_eq!(got.len(), conv.expected.len());
    for dir in [C2S, S2C] {
        assert_eq!(of_dir(&got, dir), rows(&conv.expected, dir), "{dir:?}");
    }
    assert_eq!(flow_events(&records, meta.id), ["end"]);
    t.verify_ok();
}

#[test]
fn xmpp_conversation_is_archived_in_order() {
    let conv = xmpp_conversation();
    assert!(conv.len[0] > 3 * MSS as u64 && conv.len[1] > 3 * MSS as u64);
    archives_whole_conversation(&conv, "xmpp");
}

#[test]
fn irc_conversation_is_archived_in_order() {
    archives_whole_conversation(&irc_conversation(), "irc");
}

#[test]
fn mqtt_conversation_is_archived_in_order() {
    archives_whole_conversation(&mqtt_conversation(), "mqtt");
}

#[test]
fn the_disorder_really_reorders_and_retransmits() {
    let segs = wire(&irc_conversation(), true);
    let mixed = disorder(segs.clone());
    assert!(mixed.len() > segs.len() + 3);
    let order = |d: Direction, s: &[Wire]| {
        s.iter()
            .filter(|w| w.dir == d)
            .map(|w| w.seq)
            .collect::<Vec<_>>()
    };
    assert_ne!(order(C2S, &segs), order(C2S, &mixed));
}

/// Where the first message containing `needle` ends, and the segment that completes it.
fn completing_segment(conv: &Conv, segs: &[Wire], needle: &str) -> (Direction, usize) {
    let e = conv
        .expected
        .iter()
        .find(|e| e.body.contains(needle))
        .unwrap();
    let isn = ISN[e.dir.index()];
    let last = isn.wrapping_add(1).wrapping_add(e.end as u32 - 1);
    let i = segs
        .iter()
        .position(|w| {
            w.dir == e.dir
                && !w.payload.is_empty()
                && last.wrapping_sub(w.seq) < w.payload.len() as u32
        })
        .unwrap();
    (e.dir, i)
}

#[test]
fn a_block_rule_blocks_once_with_the_rst_sequence_numbers() {
    let mut conv = irc_conversation();
    for n in 0..5 {
        conv.irc_say("alice", "#ops", &body(100 + n, 300));
    }
    conv.irc_say("alice", "#ops", "the plans for Project Falcon are ready");
    for n in 0..10 {
        conv.irc_hear("bob", "#ops", &body(200 + n, 300));
        conv.irc_say("alice", "#ops", &body(300 + n, 300));
    }
    let segs = wire(&conv, true);
    let (dir, k) = completing_segment(&conv, &segs, "Falcon");
    assert_eq!(dir, C2S);

    let t = TempDir::new("block");
    let mut m = Monitor::new(config(), policy(FALCON), Some(t.archive()));
    let meta = meta(1, Protocol::Irc);
    let mut t_ns = 0;
    let actions = feed(&mut m, &meta, &segs, &mut t_ns);
    // What each side expects next once segment k passed.
    let next = |d: Direction| {
        segs[..=k]
            .iter()
            .filter(|w| w.dir == d)
            .map(Wire::end)
            .next_back()
            .unwrap()
    };
    assert_eq!(actions.len(), 1, "{actions:?}");
    let (at, action) = &actions[0];
    assert_eq!(*at, k);
    let Action::Block { flow, reason, rst } = action else {
        panic!("{action:?}");
    };
    assert_eq!(*flow, meta.id);
    assert!(reason.contains("falcon"), "{reason}");
    assert_eq!(
        *rst,
        Some(RstSeqs {
            client_next: next(C2S),
            server_next: next(S2C),
        })
    );
    let stats = m.stats();
    assert_eq!(stats.blocked, 1);
    assert_eq!(stats.ignored_segments, (segs.len() - k - 1) as u64);
    assert_eq!(stats.flows, 0);
    m.close(T0 + 1000).unwrap();

    // Archived: every message completed by segment k or before, none after.
    let records = t.records();
    let got = messages(&records, meta.id);
    let end_of_k = u64::from(segs[k].end().wrapping_sub(ISN[0].wrapping_add(1)));
    let passed: Vec<Expect> = conv
        .expected
        .iter()
        .filter(|e| {
            let seg_end = segs[..=k]
                .iter()
                .filter(|w| w.dir == e.dir && !w.payload.is_empty())
                .map(|w| u64::from(w.end().wrapping_sub(ISN[e.dir.index()].wrapping_add(1))))
                .max()
                .unwrap_or(0);
            e.end <= seg_end
        })
        .cloned()
        .collect();
    assert!(passed.iter().any(|e| e.body.contains("Falcon")));
    assert!(passed.len() < conv.expected.len());
    assert!(passed
        .iter()
        .filter(|e| e.dir == C2S)
        .all(|e| e.end <= end_of_k));
    for d in [C2S, S2C] {
        assert_eq!(of_dir(&got, d), rows(&passed, d));
    }
    let blocked = records.iter().find_map(|r| match &r.event {
        Rec::FlowBlocked { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(blocked.unwrap().contains("project falcon"));
    assert_eq!(flow_events(&records, meta.id), ["blocked", "end"]);
    // The blocking message's decision says block.
    let decision = records.iter().find_map(|r| match &r.event {
        Rec::Message {
            message, decision, ..
        } if message.body.contains("Falcon") => Some(decision.clone()),
        _ => None,
    });
    assert_eq!(decision.unwrap().action, message::Action::Block);
    t.verify_ok();
}

/// The IRC conversation with one client segment in the middle lost.
fn lossy_irc() -> (Conv, Vec<Wire>, Wire) {
    let conv = irc_conversation();
    let mut segs = wire(&conv, true);
    let lost_at = segs
        .iter()
        .enumerate()
        .filter(|(_, w)| w.dir == C2S && !w.payload.is_empty())
        .map(|(i, _)| i)
        .nth(3)
        .unwrap();
    let lost = segs.remove(lost_at);
    (conv, segs, lost)
}

#[test]
fn a_lost_segment_is_a_gap_and_later_messages_are_incomplete() {
    let (conv, segs, lost) = lossy_irc();
    let t = TempDir::new("gap");
    let mut m = Monitor::new(config(), no_rules(), Some(t.archive()));
    let meta = meta(1, Protocol::Irc);
    let mut t_ns = 0;
    let mut actions = feed(&mut m, &meta, &segs, &mut t_ns);
    // The hole waits for a retransmission until the FIN's grace or its timeout passes.
    assert_eq!(m.stats().gaps, 0);
    assert!(m.stats().held_bytes > 0);
    let mut out = Vec::new();
    m.poll(t_ns + 10_000_000_000, T0 + 20_000, &mut out);
    actions.extend(out.drain(..).map(|a| (0, a)));
    assert!(actions.is_empty(), "{actions:?}");
    let stats = m.stats();
    assert_eq!(stats.skipped_bytes, lost.payload.len() as u64);
    assert_eq!(stats.flows, 0);
    m.close(T0 + 30_000).unwrap();

    let records = t.records();
    let lost_start = u64::from(lost.seq.wrapping_sub(ISN[0].wrapping_add(1)));
    let lost_end = lost_start + lost.payload.len() as u64;
    let gap_at = records
        .iter()
        .position(|r| matches!(r.event, Rec::FlowGap { .. }))
        .unwrap();
    let Rec::FlowGap {
        direction, bytes, ..
    } = &records[gap_at].event
    else {
        unreachable!()
    };
    assert_eq!((*direction, *bytes), (C2S, lost.payload.len() as u64));
    let got = messages(&records, meta.id);
    // Messages before the gap record are complete, all after it incomplete.
    let before = messages(&records[..gap_at], meta.id);
    assert!(before.iter().all(|r| !r.4));
    assert!(got[before.len()..].iter().all(|r| r.4));
    // Client messages: all but those the hole cut, and the line starting right at its end
    // (the parser cannot know a line started there: it resumes after the next LF); those
    // after it marked incomplete.
    let expect_c2s: Vec<Row> = conv
        .expected
        .iter()
        .filter(|e| e.dir == C2S && (e.end <= lost_start || e.start > lost_end))
        .map(|e| {
            (
                C2S,
                e.sender.clone(),
                e.recipients.clone(),
                e.body.clone(),
                e.start >= lost_end,
            )
        })
        .collect();
    assert!(expect_c2s.len() < rows(&conv.expected, C2S).len());
    assert_eq!(of_dir(&got, C2S), expect_c2s);
    // The server's side lost nothing.
    let s2c: Vec<(Option<String>, String)> =
        of_dir(&got, S2C).into_iter().map(|r| (r.1, r.3)).collect();
    let expect_s2c: Vec<(Option<String>, String)> = rows(&conv.expected, S2C)
        .into_iter()
        .map(|r| (r.1, r.3))
        .collect();
    assert_eq!(s2c, expect_s2c);
    assert_eq!(flow_events(&records, meta.id), ["gap", "end"]);
    t.verify_ok();
}

#[test]
fn under_gap_policy_drop_a_lost_segment_blocks_the_flow() {
    let (_, segs, lost) = lossy_irc();
    let t = TempDir::new("drop");
    let mut cfg = config();
    cfg.reassembly.gap_policy = GapPolicy::Drop;
    let mut m = Monitor::new(cfg, no_rules(), Some(t.archive()));
    let meta = meta(1, Protocol::Irc);
    let mut t_ns = 0;
    let mut actions: Vec<Action> = feed(&mut m, &meta, &segs, &mut t_ns)
        .into_iter()
        .map(|a| a.1)
        .collect();
    m.poll(t_ns + 10_000_000_000, T0 + 20_000, &mut actions);
    assert_eq!(actions.len(), 1, "{actions:?}");
    let Action::Block { reason, rst, .. } = &actions[0] else {
        panic!("{actions:?}");
    };
    assert!(
        reason.contains("lost bytes") && reason.contains("drop"),
        "{reason}"
    );
    // The client's side was delivered up to the hole.
    assert_eq!(rst.unwrap().client_next, lost.seq);
    assert_eq!(m.stats().blocked, 1);
    assert_eq!(m.stats().held_bytes, 0);
    m.close(T0 + 30_000).unwrap();
    let records = t.records();
    assert_eq!(flow_events(&records, meta.id), ["blocked", "end"]);
    t.verify_ok();
}

#[test]
fn starttls_stops_the_copies_once() {
    let mut conv = Conv::xmpp();
    conv.xmpp_chat(C2S, "a@example.com", "b@example.com", "before tls");
    conv.raw(C2S, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    conv.raw(S2C, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    let mut tls = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    tls.extend(std::iter::repeat_n(0xab, 3000));
    conv.raw(C2S, &tls);
    conv.raw(S2C, &tls);
    let segs = wire(&conv, true);

    let t = TempDir::new("starttls");
    let mut m = Monitor::new(config(), no_rules(), Some(t.archive()));
    let meta = meta(1, Protocol::Xmpp);
    let mut t_ns = 0;
    let actions = feed(&mut m, &meta, &segs, &mut t_ns);
    assert_eq!(actions.len(), 1, "{actions:?}");
    let (at, Action::StopCopy { flow, reason }) = &actions[0] else {
        panic!("{actions:?}");
    };
    assert_eq!(*flow, meta.id);
    assert!(reason.contains("TLS"), "{reason}");
    assert!(segs[*at].payload.starts_with(b"<proceed"));
    let stats = m.stats();
    assert_eq!(stats.stopped, 1);
    assert_eq!(stats.ignored_segments, (segs.len() - at - 1) as u64);
    assert_eq!(stats.messages, 1);
    m.close(T0 + 1000).unwrap();
    let records = t.records();
    assert_eq!(flow_events(&records, meta.id), ["anomaly", "end"]);
    assert!(records.iter().any(|r| matches!(&r.event,
        Rec::FlowAnomaly { reason, .. } if reason.contains("TLS"))));
    t.verify_ok();
}

#[test]
fn irc_starttls_stops_the_copies_too() {
    let mut conv = Conv::irc("alice");
    conv.raw(C2S, b"STARTTLS\r\n");
    conv.raw(S2C, b":irc.example 670 alice :STARTTLS successful\r\n");
    conv.raw(C2S, &[0x16, 0x03, 0x01, 0x00, 0x10]);
    conv.raw(S2C, &[0x16, 0x03, 0x03, 0x00, 0x10]);
    let segs = wire(&conv, false);
    let mut m = Monitor::new(config(), no_rules(), None);
    let mut t_ns = 0;
    let actions = feed(&mut m, &meta(1, Protocol::Irc), &segs, &mut t_ns);
    assert!(
        matches!(actions.as_slice(), [(_, Action::StopCopy { .. })]),
        "{actions:?}"
    );
}

#[test]
fn one_unreadable_direction_is_recorded_and_the_other_still_read() {
    // An MQTT hole: that direction has no boundary to resume at, the other goes on.
    let mut conv = mqtt_conversation();
    conv.mqtt_publish(S2C, "sensor-7", "cmd/last", b"still read");
    let mut segs = wire(&conv, false);
    let lost = segs
        .iter()
        .position(|w| w.dir == C2S && w.payload.len() == MSS)
        .unwrap();
    segs.remove(lost);
    let t = TempDir::new("mqtt-gap");
    let mut m = Monitor::new(config(), no_rules(), Some(t.archive()));
    let meta = meta(1, Protocol::Mqtt);
    let mut t_ns = 0;
    let mut actions: Vec<Action> = feed(&mut m, &meta, &segs, &mut t_ns)
        .into_iter()
        .map(|a| a.1)
        .collect();
    m.ring_loss(&meta.id, t_ns, T0 + 5, &mut actions);
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(m.stats().gaps, 1);
    assert_eq!(m.stats().flows, 1);
    m.close(T0 + 1000).unwrap();
    let records = t.records();
    assert_eq!(flow_events(&records, meta.id), ["gap", "anomaly", "end"]);
    let got = messages(&records, meta.id);
    assert_eq!(got.last().unwrap().3, "still read");
    assert!(records.iter().any(|r| matches!(&r.event,
        Rec::FlowAnomaly { reason, .. } if reason.starts_with("client-to-server unreadable"))));
    t.verify_ok();
}

#[test]
fn the_least_recently_active_flow_is_evicted() {
    let t = TempDir::new("evict");
    let mut cfg = config();
    cfg.max_flows = 2;
    let mut m = Monitor::new(cfg, no_rules(), Some(t.archive()));
    let mut conv = Conv::irc("alice");
    conv.irc_say("alice", "#a", "first");
    conv.raw(S2C, b"PING :x\r\n");
    conv.irc_say("alice", "#a", "second");
    conv.irc_say("alice", "#a", "third");
    let segs = wire(&conv, false);
    assert_eq!(segs.len(), 7);
    let mut t_ns = 0;
    let (fa, fb, fc) = (
        meta(1, Protocol::Irc),
        meta(2, Protocol::Irc),
        meta(3, Protocol::Irc),
    );
    feed(&mut m, &fa, &segs[..2], &mut t_ns);
    // Flow b holds its last segment beyond a hole when it is evicted.
    let mut b_segs = segs[..4].to_vec();
    b_segs.push(segs[6].clone());
    feed(&mut m, &fb, &b_segs, &mut t_ns);
    feed(&mut m, &fa, &segs[2..], &mut t_ns);
    assert!(m.stats().held_bytes > 0);
    let actions = feed(&mut m, &fc, &segs, &mut t_ns);
    assert!(actions.is_empty());
    let stats = m.stats();
    assert_eq!(stats.evictions, 1);
    assert_eq!(stats.tracked, 2);
    assert_eq!(stats.flows, 2);
    assert_eq!(
        stats.held_bytes, 0,
        "the evicted flow's held bytes went back"
    );
    m.close(T0 + 1000).unwrap();
    let records = t.records();
    // b was finished: its hole became a gap and what it held was parsed.
    assert_eq!(flow_events(&records, fb.id), ["gap", "end"]);
    let b_end = records
        .iter()
        .position(|r| matches!(&r.event, Rec::FlowEnd { flow, .. } if *flow == fb.id))
        .unwrap();
    let c_first = records
        .iter()
        .position(|r| r.event_flow() == Some(fc.id))
        .unwrap();
    assert!(b_end < c_first, "b ended before c started");
    // After the gap IRC resumes at the next line: "second" is skipped, "third" read.
    let b_msgs = messages(&records, fb.id);
    assert_eq!(b_msgs.len(), 1);
    assert_eq!(b_msgs[0].3, "third");
    assert!(b_msgs[0].4, "after the gap");
    assert_eq!(messages(&records, fa.id).len(), 3);
    assert_eq!(messages(&records, fc.id).len(), 3);
    t.verify_ok();
}

trait EventFlow {
    fn event_flow(&self) -> Option<FlowId>;
}

impl EventFlow for Record {
    fn event_flow(&self) -> Option<FlowId> {
        match &self.event {
            Rec::Message { flow, .. }
            | Rec::FlowBlocked { flow, .. }
            | Rec::FlowReset { flow, .. }
            | Rec::FlowGap { flow, .. }
            | Rec::FlowEnd { flow, .. }
            | Rec::FlowAnomaly { flow, .. } => Some(*flow),
            _ => None,
        }
    }
}

#[test]
fn a_policy_reload_applies_to_the_next_message() {
    let t = TempDir::new("reload");
    let mut m = Monitor::new(config(), no_rules(), Some(t.archive()));
    let meta = meta(1, Protocol::Irc);
    let mut conv = Conv::irc("alice");
    conv.irc_say("alice", "#a", "project falcon, take one");
    // A server line between keeps the two client lines in separate segments.
    conv.raw(S2C, b"PING :x\r\n");
    conv.irc_say("alice", "#a", "project falcon, take two");
    let segs = wire(&conv, false);
    let mut t_ns = 0;
    let first_end = segs
        .iter()
        .position(|w| w.payload.ends_with(b"take one\r\n"))
        .unwrap();
    assert!(feed(&mut m, &meta, &segs[..=first_end], &mut t_ns).is_empty());
    m.set_policy(policy(FALCON));
    let actions = feed(&mut m, &meta, &segs[first_end + 1..], &mut t_ns);
    assert!(
        matches!(actions.as_slice(), [(_, Action::Block { .. })]),
        "{actions:?}"
    );
    m.close(T0 + 1000).unwrap();
    let decisions: Vec<message::Action> = t
        .records()
        .iter()
        .filter_map(|r| match &r.event {
            Rec::Message { decision, .. } => Some(decision.action),
            _ => None,
        })
        .collect();
    assert_eq!(decisions, [message::Action::Allow, message::Action::Block]);
}

#[test]
fn a_conflicting_retransmission_is_recorded_as_an_anomaly() {
    let mut conv = Conv::irc("alice");
    conv.irc_say("alice", "#a", "meet at noon");
    let mut segs = wire(&conv, false);
    let last = segs.last().unwrap().clone();
    assert!(last.payload.ends_with(b"noon\r\n"));
    let mut forged = last.clone();
    let n = forged.payload.len();
    forged.payload[n - 6..n - 2].copy_from_slice(b"nine");
    // Sent again and again: recorded up to the cap, then only counted.
    for _ in 0..MAX_CONFLICT_RECORDS + 5 {
        segs.push(forged.clone());
    }
    let t = TempDir::new("conflict");
    let mut m = Monitor::new(config(), no_rules(), Some(t.archive()));
    let meta = meta(1, Protocol::Irc);
    let mut t_ns = 0;
    assert!(feed(&mut m, &meta, &segs, &mut t_ns).is_empty());
    assert_eq!(m.stats().conflicts, u64::from(MAX_CONFLICT_RECORDS) + 5);
    m.close(T0 + 1000).unwrap();
    let records = t.records();
    let mut expect = vec!["anomaly"; MAX_CONFLICT_RECORDS as usize];
    expect.push("end");
    assert_eq!(flow_events(&records, meta.id), expect);
    let reason = records
        .iter()
        .find_map(|r| match &r.event {
            Rec::FlowAnomaly { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(reason.contains("conflicting retransmission"), "{reason}");
    let last = records
        .iter()
        .rev()
        .find_map(|r| match &r.event {
            Rec::FlowAnomaly { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(last.ends_with("only counted"), "{last}");
    // The first copy wins, as in the receiver.
    assert_eq!(messages(&records, meta.id)[0].3, "meet at noon");
    t.verify_ok();
}

#[test]
fn archive_errors_are_counted_and_the_pipeline_goes_on() {
    // A message whose record exceeds the archive's line limit once JSON-escaped.
    let mut conv = Conv::mqtt("big");
    conv.mqtt_publish(C2S, "big", "t", &vec![1u8; 300_000]);
    conv.mqtt_publish(C2S, "big", "t", b"small one");
    let segs = wire(&conv, true);
    let t = TempDir::new("archive-error");
    let mut m = Monitor::new(config(), no_rules(), Some(t.archive()));
    let meta = meta(1, Protocol::Mqtt);
    let mut t_ns = 0;
    assert!(feed(&mut m, &meta, &segs, &mut t_ns).is_empty());
    let stats = m.stats();
    assert_eq!(stats.messages, 2);
    assert_eq!(stats.archive_errors, 1);
    assert!(
        stats
            .last_archive_error
            .as_deref()
            .unwrap()
            .contains("exceeds"),
        "{stats:?}"
    );
    m.close(T0 + 1000).unwrap();
    let records = t.records();
    let got = messages(&records, meta.id);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].3, "small one");
    t.verify_ok();
}

#[test]
fn unknown_flows_ring_losses_and_rsts_create_nothing() {
    let mut m = Monitor::new(config(), no_rules(), None);
    let mut out = Vec::new();
    m.ring_loss(&flow_id(9), 1, T0, &mut out);
    let rst = Segment {
        rst: true,
        ..Segment::data(C2S, 5, &[])
    };
    m.segment(&meta(9, Protocol::Irc), &rst, 2, T0, &mut out);
    m.end_flow(&flow_id(9), T0);
    assert!(out.is_empty());
    let stats = m.stats();
    assert_eq!(
        (stats.tracked, stats.flows_started, stats.ignored_segments),
        (0, 0, 1)
    );
}

#[test]
fn tombstones_absorb_late_copies_then_expire() {
    let mut conv = Conv::irc("alice");
    conv.irc_say("alice", "#a", "hello");
    let segs = wire(&conv, true);
    let mut m = Monitor::new(config(), no_rules(), None);
    let meta = meta(1, Protocol::Irc);
    let mut t_ns = 0;
    feed(&mut m, &meta, &segs, &mut t_ns);
    let ended_at = t_ns;
    assert_eq!((m.stats().flows, m.stats().tracked), (0, 1));
    // A late retransmission does not start a new flow in mid-stream.
    feed(&mut m, &meta, &segs[2..3], &mut t_ns);
    let stats = m.stats();
    assert_eq!(
        (stats.flows_started, stats.ignored_segments, stats.messages),
        (1, 1, 1)
    );
    let mut out = Vec::new();
    let idle = config().reassembly.idle_timeout_ns;
    m.poll(ended_at + idle - 1, T0, &mut out);
    assert_eq!(m.stats().tracked, 1);
    m.poll(ended_at + idle, T0, &mut out);
    assert_eq!(m.stats().tracked, 0);
    assert!(out.is_empty());
}

#[test]
fn end_flow_parses_what_is_held_and_records_the_end() {
    let t = TempDir::new("end-flow");
    let mut m = Monitor::new(config(), no_rules(), Some(t.archive()));
    let mut conv = Conv::irc("alice");
    conv.irc_say("alice", "#a", "one");
    conv.raw(S2C, b"PING :x\r\n");
    conv.irc_say("alice", "#a", "two");
    conv.irc_say("alice", "#a", "three");
    let segs = wire(&conv, false);
    let meta = meta(1, Protocol::Irc);
    let mut t_ns = 0;
    // The client's "one" segment is lost; "two three" is held behind it.
    let kept: Vec<Wire> = segs
        .iter()
        .filter(|w| !w.payload.ends_with(b"one\r\n"))
        .cloned()
        .collect();
    assert_eq!(kept.len(), segs.len() - 1);
    feed(&mut m, &meta, &kept, &mut t_ns);
    assert!(m.stats().held_bytes > 0);
    m.end_flow(&meta.id, T0 + 10);
    let stats = m.stats();
    assert_eq!(
        (
            stats.flows,
            stats.tracked,
            stats.held_bytes,
            stats.evictions
        ),
        (0, 0, 0, 0)
    );
    m.close(T0 + 20).unwrap();
    let records = t.records();
    assert_eq!(flow_events(&records, meta.id), ["gap", "end"]);
    let bodies: Vec<String> = messages(&records, meta.id)
        .into_iter()
        .map(|r| r.3)
        .collect();
    assert_eq!(bodies, ["three"]);
    t.verify_ok();
}

#[test]
fn close_ends_live_flows_and_seals() {
    let t = TempDir::new("close");
    let mut m = Monitor::new(config(), no_rules(), Some(t.archive()));
    let conv = xmpp_conversation();
    let segs = wire(&conv, false);
    let mut t_ns = 0;
    feed(&mut m, &meta(1, Protocol::Xmpp), &segs, &mut t_ns);
    feed(
        &mut m,
        &meta(2, Protocol::Xmpp),
        &segs[..segs.len() / 2],
        &mut t_ns,
    );
    let stats = m.close(T0 + 1000).unwrap();
    assert_eq!((stats.flows, stats.tracked), (0, 0));
    let records = t.records();
    assert_eq!(flow_events(&records, flow_id(1)), ["end"]);
    assert_eq!(flow_events(&records, flow_id(2)), ["end"]);
    assert_eq!(messages(&records, flow_id(1)).len(), conv.expected.len());
    assert!(matches!(
        records.last().unwrap().event,
        Rec::Seal { closing: true, .. }
    ));
    t.verify_ok();
}

/// Random segments for a few flows: wild sequence numbers, flags and bytes that look like
/// the protocols, mixed with ring losses, polls and ends.
#[derive(Clone, Debug)]
enum Op {
    Seg {
        flow: u16,
        c2s: bool,
        seq: u32,
        flags: u8,
        payload: Vec<u8>,
        truncated: u16,
    },
    Loss(u16),
    Poll(u32),
    End(u16),
}

fn op() -> impl Strategy<Value = Op> {
    let bytes = prop_oneof![
        Just(b"PRIVMSG #a :project falcon\r\n".to_vec()),
        Just(b"<message from='a' to='b'><body>hi</body></message>".to_vec()),
        Just(vec![0x30, 0x05, 0x00, 0x01, b't', b'x', b'y']),
        Just(vec![0x16, 0x03, 0x01]),
        Just(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..200),
    ];
    prop_oneof![
        8 => (0u16..4, any::<bool>(), 0u32..3000, any::<u8>(), bytes, 0u16..3)
            .prop_map(|(flow, c2s, seq, flags, payload, truncated)| Op::Seg {
                flow,
                c2s,
                seq: seq.wrapping_add(u32::MAX - 1000),
                flags,
                payload,
                truncated,
            }),
        1 => (0u16..4).prop_map(Op::Loss),
        1 => (0u32..5000).prop_map(Op::Poll),
        1 => (0u16..4).prop_map(Op::End),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_input_never_panics_and_returns_every_held_byte(
        ops in proptest::collection::vec(op(), 1..120),
        drop_gaps in any::<bool>(),
    ) {
        let mut cfg = MonitorConfig {
            max_flows: 3,
            total_budget_bytes: 2000,
            ..MonitorConfig::default()
        };
        cfg.reassembly.max_held_bytes = 1500;
        cfg.reassembly.hole_timeout_ns = 1_000_000_000;
        cfg.reassembly.idle_timeout_ns = 3_000_000_000;
        if drop_gaps {
            cfg.reassembly.gap_policy = GapPolicy::Drop;
        }
        let mut m = Monitor::new(cfg, policy(FALCON), None);
        let protocols = [Protocol::Irc, Protocol::Xmpp, Protocol::Mqtt, Protocol::Irc];
        let mut out = Vec::new();
        let mut now = 0u64;
        for op in ops {
            now += 1_000_000;
            match op {
                Op::Seg { flow, c2s, seq, flags, payload, truncated } => {
                    let seg = Segment {
                        direction: if c2s { C2S } else { S2C },
                        seq,
                        syn: flags & 1 != 0,
                        fin: flags & 2 != 0,
                        rst: flags & 4 != 0 && flags & 8 != 0,
                        payload: &payload,
                        wire_len: payload.len() as u32 + u32::from(truncated),
                    };
                    let meta = meta(flow, protocols[usize::from(flow)]);
                    m.segment(&meta, &seg, now, T0, &mut out);
                }
                Op::Loss(flow) => m.ring_loss(&flow_id(flow), now, T0, &mut out),
                Op::Poll(ms) => {
                    now += u64::from(ms) * 1_000_000;
                    m.poll(now, T0, &mut out);
                }
                Op::End(flow) => m.end_flow(&flow_id(flow), T0),
            }
            let stats = m.stats();
            prop_assert!(stats.tracked <= 3);
            prop_assert!(stats.flows <= stats.tracked);
            prop_assert!(stats.held_bytes <= 2000);
        }
        // At most one action per flow start.
        let stats = m.stats();
        prop_assert!(out.len() as u64 <= stats.flows_started);
        prop_assert_eq!(stats.blocked + stats.stopped, out.len() as u64);
        let done = m.close(T0).unwrap();
        prop_assert_eq!(done.held_bytes, 0);
        prop_assert_eq!(done.flows, 0);
    }
}
