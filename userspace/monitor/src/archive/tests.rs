//! Tests on real files in unique directories under the system temp dir.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;

use super::format::{chain_hash, decode_line};
use super::reader::{list_segments, segment_path};
use super::*;
use crate::message::{Action, Decision, Direction, Message, MessageKind, Protocol, RuleMatch};

const T0: u64 = 1_700_000_000_000;
const DAY: u64 = 24 * 3600 * 1000;

/// A unique directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "imfw-archive-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn dir(&self) -> PathBuf {
        self.0.join("archive")
    }

    fn key(&self) -> SealKey {
        SealKey::load_or_create(&self.0.join("seal.key")).unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn flow(n: u16) -> FlowId {
    FlowId {
        client: format!("192.0.2.10:{}", 40000 + n).parse().unwrap(),
        server: "198.51.100.5:5222".parse().unwrap(),
    }
}

fn message(sender: &str, recipients: &[&str], body: &str) -> Message {
    Message {
        protocol: Protocol::Xmpp,
        direction: Direction::ClientToServer,
        kind: MessageKind::Chat,
        sender: Some(sender.to_owned()),
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
        body: body.to_owned(),
        attachments: Vec::new(),
        stream_offset: 0,
    }
}

fn append_message(a: &mut Archive, time: u64, sender: &str, body: &str) -> u64 {
    let m = message(sender, &["bob@example.org"], body);
    a.append(
        time,
        &Entry::Message {
            app: "xmpp",
            flow: flow(1),
            message: &m,
            decision: &Decision::allow(),
        },
    )
    .unwrap()
}

fn config(segment_max_bytes: u64, seal_max_records: u64) -> ArchiveConfig {
    ArchiveConfig {
        segment_max_bytes,
        seal_max_records,
        write_buffer_bytes: 0,
        ..ArchiveConfig::default()
    }
}

/// A closed archive of `n` messages, sealed every 4 records, about three records a segment.
fn fixture(t: &TempDir, n: u64) -> SealKey {
    let key = t.key();
    let (mut a, report) = Archive::open(t.dir(), key.clone(), config(1500, 4), T0).unwrap();
    assert!(report.created);
    for i in 0..n {
        append_message(
            &mut a,
            T0 + i,
            "alice@example.org",
            &format!("hello number {i}"),
        );
    }
    a.close(T0 + n).unwrap();
    key
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    fs::read(path)
        .unwrap()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    fs::write(path, lines.concat()).unwrap();
}

fn kinds(report: &VerifyReport) -> Vec<ProblemKind> {
    report.problems.iter().map(|p| p.kind.clone()).collect()
}

/// Index of the first message line in a segment after its first line.
fn first_message(lines: &[Vec<u8>]) -> usize {
    lines
        .iter()
        .skip(1)
        .position(|l| l.windows(16).any(|w| w == b"\"type\":\"message\""))
        .unwrap()
        + 1
}

/// A line for `body` chained to `prev`, as an attacker without the key can make one.
fn frame(prev: &Hash, body: &[u8]) -> Vec<u8> {
    let mut line = format!("{{\"h\":\"{}\",\"r\":", chain_hash(prev, body)).into_bytes();
    line.extend_from_slice(body);
    line.extend_from_slice(b"}\n");
    line
}

/// Record bodies with their segment numbers.
type Bodies = Vec<(u64, Vec<u8>)>;
type Edit = fn(&mut Bodies);

/// A keyless attacker's rewrite: edits the record bodies, then renumbers and rehashes the
/// whole chain (seal heads included) so that every hash is right again.
fn rechain(dir: &Path, edit: impl FnOnce(&mut Bodies)) {
    let segments = list_segments(dir).unwrap();
    let mut bodies = Vec::new();
    for &s in &segments {
        for line in lines(&segment_path(dir, s)) {
            bodies.push((s, decode_line(&line).unwrap().body.to_vec()));
        }
    }
    edit(&mut bodies);
    let mut files: Vec<(u64, Vec<u8>)> = segments.iter().map(|&s| (s, Vec::new())).collect();
    let mut prev = Hash::ZERO;
    for (seq, (segment, body)) in bodies.into_iter().enumerate() {
        let text = String::from_utf8(body).unwrap();
        let rest = text.split_once(",\"time\"").unwrap().1;
        let mut text = format!("{{\"seq\":{seq},\"time\"{rest}");
        if let Some(at) = text.find("\"type\":\"seal\",\"head\":\"") {
            let from = at + "\"type\":\"seal\",\"head\":\"".len();
            text.replace_range(from..from + 64, &prev.to_string());
        }
        let file = files.iter_mut().find(|(s, _)| *s == segment).unwrap();
        let line = frame(&prev, text.as_bytes());
        prev = decode_line(&line).unwrap().stored;
        file.1.extend_from_slice(&line);
    }
    for (s, bytes) in files {
        fs::write(segment_path(dir, s), bytes).unwrap();
    }
}

#[test]
fn append_seal_reopen_verify() {
    let t = TempDir::new("roundtrip");
    let key = t.key();
    let (mut a, report) =
        Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0).unwrap();
    assert!(report.created);
    assert_eq!(report.recovery, None);
    let block = Decision {
        action: Action::Block,
        matches: vec![RuleMatch {
            rule: "secrets".into(),
            action: Action::Block,
            reason: "keyword".into(),
        }],
    };
    let m = message("alice@example.org", &["bob@example.org"], "the secret plan");
    let seq = a
        .append(
            T0 + 1,
            &Entry::Message {
                app: "xmpp",
                flow: flow(1),
                message: &m,
                decision: &block,
            },
        )
        .unwrap();
    assert_eq!(seq, 1, "seq 0 is the genesis seal");
    a.append(
        T0 + 2,
        &Entry::FlowBlocked {
            app: "xmpp",
            flow: flow(1),
            reason: "rule secrets",
        },
    )
    .unwrap();
    a.seal(T0 + 3).unwrap();
    for i in 0..5 {
        append_message(&mut a, T0 + 10 + i, "carol@example.org", "more");
    }
    a.close(T0 + 20).unwrap();

    let (mut a, report) =
        Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0 + 30).unwrap();
    assert_eq!(
        report,
        OpenReport::default(),
        "a clean close needs no recovery"
    );
    append_message(&mut a, T0 + 31, "dave@example.org", "after reopen");
    a.close(T0 + 32).unwrap();

    let report = verify(&t.dir(), &key).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    // genesis seal, 2 records, seal, 5 messages, closing seal, 1 message, closing seal
    assert_eq!(report.records, 12);
    assert_eq!(report.seals, 4);
    assert_eq!(report.last_sealed_seq, Some(11));
    assert_eq!(report.unsealed_records, 0);
    assert!(report.recoveries.is_empty());

    let hits: Vec<Hit> = search(&t.dir(), &Filter::default())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(hits.len(), 12);
    assert!(hits
        .iter()
        .enumerate()
        .all(|(i, h)| h.record.seq == i as u64));
    let Event::Message {
        app,
        flow: f,
        message: m2,
        decision,
    } = &hits[1].record.event
    else {
        panic!()
    };
    assert_eq!(
        (app.as_str(), *f, m2, decision),
        ("xmpp", flow(1), &m, &block)
    );
    assert_eq!(hits[1].record.time, T0 + 1);
    assert!(
        matches!(&hits[2].record.event, Event::FlowBlocked { reason, .. } if reason == "rule secrets")
    );
}

#[test]
fn flow_id_displays_as_in_the_issue() {
    assert_eq!(
        flow(0).to_string(),
        "tcp 192.0.2.10:40000 -> 198.51.100.5:5222"
    );
}

#[test]
fn gap_marks_later_messages_of_its_flow_incomplete() {
    let t = TempDir::new("gap");
    let key = t.key();
    let (mut a, _) = Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0).unwrap();
    let m = message("a@x", &["b@x"], "hi");
    let d = Decision::allow();
    let msg = |f| Entry::Message {
        app: "xmpp",
        flow: flow(f),
        message: &m,
        decision: &d,
    };
    let before = a.append(T0, &msg(1)).unwrap();
    a.append(
        T0,
        &Entry::FlowGap {
            app: "xmpp",
            flow: flow(1),
            direction: Direction::ServerToClient,
            bytes: 1460,
        },
    )
    .unwrap();
    let during = a.append(T0, &msg(1)).unwrap();
    let other = a.append(T0, &msg(2)).unwrap();
    a.append(
        T0,
        &Entry::FlowEnd {
            app: "xmpp",
            flow: flow(1),
        },
    )
    .unwrap();
    let after = a.append(T0, &msg(1)).unwrap();
    a.close(T0).unwrap();

    let incomplete: Vec<(u64, bool)> = search(&t.dir(), &Filter::default())
        .unwrap()
        .map(|h| h.unwrap().record)
        .filter(|r| matches!(r.event, Event::Message { .. }))
        .map(|r| (r.seq, r.incomplete))
        .collect();
    assert_eq!(
        incomplete,
        [
            (before, false),
            (during, true),
            (other, false),
            (after, false)
        ]
    );
    let gap = search(&t.dir(), &Filter::default())
        .unwrap()
        .map(|h| h.unwrap().record.event)
        .find_map(|e| match e {
            Event::FlowGap {
                bytes, direction, ..
            } => Some((bytes, direction)),
            _ => None,
        });
    assert_eq!(gap, Some((1460, Direction::ServerToClient)));
    assert!(verify(&t.dir(), &key).unwrap().is_ok());
}

#[test]
fn anomaly_records_read_back_and_keep_the_incomplete_marking() {
    let t = TempDir::new("anomaly");
    let key = t.key();
    let (mut a, _) = Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0).unwrap();
    let m = message("a@x", &["b@x"], "hi");
    let d = Decision::allow();
    a.append(
        T0,
        &Entry::FlowGap {
            app: "xmpp",
            flow: flow(1),
            direction: Direction::ClientToServer,
            bytes: 10,
        },
    )
    .unwrap();
    let anomaly = Entry::FlowAnomaly {
        app: "xmpp",
        flow: flow(1),
        reason: "conflicting retransmission",
    };
    assert_eq!(anomaly.flow(), flow(1));
    a.append(T0 + 1, &anomaly).unwrap();
    a.append(
        T0 + 2,
        &Entry::Message {
            app: "xmpp",
            flow: flow(1),
            message: &m,
            decision: &d,
        },
    )
    .unwrap();
    a.close(T0 + 3).unwrap();
    let records: Vec<Record> = search(
        &t.dir(),
        &Filter {
            app: Some("XMPP".into()),
            ..Filter::default()
        },
    )
    .unwrap()
    .map(|h| h.unwrap().record)
    .collect();
    assert_eq!(records.len(), 3);
    assert_eq!(
        records[1].event,
        Event::FlowAnomaly {
            app: "xmpp".into(),
            flow: flow(1),
            reason: "conflicting retransmission".into(),
        }
    );
    assert_eq!(records[1].event.app(), Some("xmpp"));
    // An anomaly neither starts nor ends the incomplete marking.
    assert!(records[2].incomplete);
    assert!(verify(&t.dir(), &key).unwrap().is_ok());
}

#[test]
fn rotation_by_size_and_age_keeps_one_chain() {
    let t = TempDir::new("rotate");
    let key = t.key();
    let cfg = ArchiveConfig {
        segment_max_age_ms: 1000,
        ..config(2000, 1000)
    };
    let (mut a, _) = Archive::open(t.dir(), key.clone(), cfg, T0).unwrap();
    for i in 0..20 {
        append_message(&mut a, T0 + i, "alice@example.org", "fill the segment");
    }
    let by_size = a.segment();
    assert!(
        by_size >= 4,
        "20 records of ~400 bytes in segments of 2000 bytes: {by_size}"
    );
    append_message(&mut a, T0 + 5000, "alice@example.org", "an hour later");
    assert_eq!(
        a.segment(),
        by_size + 1,
        "the segment's first record is over the age limit"
    );
    a.tick(T0 + 9000).unwrap();
    assert_eq!(a.segment(), by_size + 2, "tick rotates by age too");
    a.close(T0 + 9001).unwrap();
    assert_eq!(
        list_segments(&t.dir()).unwrap(),
        (1..=by_size + 2).collect::<Vec<_>>()
    );
    for s in 1..=by_size + 1 {
        let last = lines(&segment_path(&t.dir(), s)).pop().unwrap();
        assert!(
            String::from_utf8(last)
                .unwrap()
                .contains("\"type\":\"seal\""),
            "segment {s} ends sealed"
        );
    }
    let report = verify(&t.dir(), &key).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.segments.len() as u64, by_size + 2);
}

#[test]
fn seals_and_flushes_by_time_and_count() {
    let t = TempDir::new("timers");
    let key = t.key();
    let cfg = ArchiveConfig {
        seal_interval_ms: 100,
        seal_max_records: 3,
        write_buffer_bytes: 1 << 20,
        flush_interval_ms: 10,
        ..ArchiveConfig::default()
    };
    let (mut a, _) = Archive::open(t.dir(), key.clone(), cfg, T0).unwrap();
    let len = || fs::metadata(segment_path(&t.dir(), 1)).unwrap().len();
    let sealed = || verify(&t.dir(), &t.key()).unwrap().last_sealed_seq;
    let empty = len();
    append_message(&mut a, T0, "a@x", "buffered");
    assert_eq!(len(), empty, "held in the buffer");
    a.tick(T0 + 10).unwrap();
    assert!(len() > empty, "written after the flush interval");
    assert_eq!(sealed(), Some(0));
    a.tick(T0 + 100).unwrap();
    assert_eq!(sealed(), Some(2), "sealed after the seal interval");
    for i in 0..3 {
        append_message(&mut a, T0 + 101, "a@x", &format!("{i}"));
    }
    assert_eq!(sealed(), Some(6), "sealed after three records");
    drop(a);
    assert!(verify(&t.dir(), &key).unwrap().is_ok());
}

#[test]
fn too_large_record_is_refused_and_the_archive_goes_on() {
    let t = TempDir::new("large");
    let key = t.key();
    let (mut a, _) = Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0).unwrap();
    let big = message("a@x", &["b@x"], &"x".repeat(MAX_LINE_BYTES));
    let err = a.append(
        T0,
        &Entry::Message {
            app: "xmpp",
            flow: flow(1),
            message: &big,
            decision: &Decision::allow(),
        },
    );
    assert!(
        matches!(err, Err(ArchiveError::RecordTooLarge { .. })),
        "{err:?}"
    );
    assert_eq!(append_message(&mut a, T0, "a@x", "small"), 1);
    a.close(T0).unwrap();
    assert!(verify(&t.dir(), &key).unwrap().is_ok());
}

// ---- tampering ----

#[test]
fn fixture_verifies() {
    let t = TempDir::new("fixture");
    let key = fixture(&t, 8);
    let report = verify(&t.dir(), &key).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.segments.len() >= 3, "{:?}", report.segments);
    assert_eq!(report.unsealed_records, 0);
}

/// Every file of the fixture, for byte flips.
fn fixture_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|s| segment_path(dir, s))
        .collect();
    files.push(dir.join("archive.head"));
    files
        .into_iter()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect()
}

fn flipped_fails(
    dir: &Path,
    key: &SealKey,
    path: &Path,
    original: &[u8],
    at: usize,
    xor: u8,
) -> bool {
    let mut bytes = original.to_vec();
    bytes[at] ^= xor;
    fs::write(path, &bytes).unwrap();
    let report = verify(dir, key).unwrap();
    fs::write(path, original).unwrap();
    !report.is_ok()
}

#[test]
fn every_flipped_byte_is_detected() {
    let t = TempDir::new("flip-all");
    let key = fixture(&t, 5);
    for (path, original) in fixture_files(&t.dir()) {
        for at in 0..original.len() {
            assert!(
                flipped_fails(&t.dir(), &key, &path, &original, at, 0x20),
                "{} byte {at}",
                path.display()
            );
        }
    }
    assert!(verify(&t.dir(), &key).unwrap().is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_flip_anywhere_is_detected(file in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), xor in 1u8..) {
        let t = TempDir::new("flip-prop");
        let key = fixture(&t, 5);
        let files = fixture_files(&t.dir());
        let (path, original) = &files[file.index(files.len())];
        prop_assert!(flipped_fails(&t.dir(), &key, path, original, at.index(original.len()), xor));
    }
}

#[test]
fn flipped_body_byte_reports_hash_mismatch_at_its_record() {
    let t = TempDir::new("flip-kind");
    let key = fixture(&t, 8);
    let path = segment_path(&t.dir(), 2);
    let mut l = lines(&path);
    let i = first_message(&l);
    let offset: usize = l[..i].iter().map(Vec::len).sum();
    let text = String::from_utf8(l[i].clone())
        .unwrap()
        .replace("hello", "jello");
    l[i] = text.into_bytes();
    write_lines(&path, &l);
    let report = verify(&t.dir(), &key).unwrap();
    assert_eq!(kinds(&report), [ProblemKind::HashMismatch]);
    assert_eq!(report.problems[0].segment, Some(2));
    assert_eq!(report.problems[0].offset, Some(offset as u64));
}

#[test]
fn truncation_of_sealed_records_is_detected() {
    let t = TempDir::new("truncate");
    let key = fixture(&t, 8);
    let last = *list_segments(&t.dir()).unwrap().last().unwrap();
    let path = segment_path(&t.dir(), last);
    let mut l = lines(&path);
    l.pop();
    write_lines(&path, &l);
    let report = verify(&t.dir(), &key).unwrap();
    assert!(report
        .has(|k| matches!(k, ProblemKind::SealedHeadMissing { segment, .. } if *segment == last)));

    // Cutting inside a line leaves a torn tail as well.
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let report = verify(&t.dir(), &key).unwrap();
    assert!(report.has(|k| *k == ProblemKind::TornTail));
}

#[test]
fn deleted_record_is_detected() {
    let t = TempDir::new("delete");
    let key = fixture(&t, 8);
    let path = segment_path(&t.dir(), 2);
    let mut l = lines(&path);
    let i = first_message(&l);
    let removed = l.remove(i);
    let seq = serde_json::from_slice::<Record>(decode_line(&removed).unwrap().body)
        .unwrap()
        .seq;
    write_lines(&path, &l);
    let report = verify(&t.dir(), &key).unwrap();
    assert_eq!(
        kinds(&report),
        [ProblemKind::MissingRecords {
            expected: seq,
            found: seq + 1
        }]
    );
}

#[test]
fn reordered_records_are_detected() {
    let t = TempDir::new("reorder");
    let key = fixture(&t, 8);
    let path = segment_path(&t.dir(), 2);
    let mut l = lines(&path);
    let i = first_message(&l);
    l.swap(i, i + 1);
    write_lines(&path, &l);
    let report = verify(&t.dir(), &key).unwrap();
    assert!(
        report.has(|k| matches!(k, ProblemKind::OutOfOrder { .. })),
        "{:?}",
        report.problems
    );
}

#[test]
fn inserted_forged_record_is_detected() {
    let t = TempDir::new("insert");
    let key = fixture(&t, 8);
    let path = segment_path(&t.dir(), 2);
    let mut l = lines(&path);
    let i = first_message(&l);
    // A forged record that chains to its predecessor and takes the next number.
    let prev = decode_line(&l[i - 1]).unwrap().stored;
    let body = String::from_utf8(decode_line(&l[i]).unwrap().body.to_vec())
        .unwrap()
        .replace("hello", "forged");
    l.insert(i, frame(&prev, body.as_bytes()));
    write_lines(&path, &l);
    let report = verify(&t.dir(), &key).unwrap();
    assert!(
        report.has(|k| matches!(k, ProblemKind::OutOfOrder { .. })),
        "{:?}",
        report.problems
    );
}

#[test]
fn rechaining_without_the_key_is_detected_by_the_seals() {
    // Control: the attacker's tool reproduces an untouched archive byte for byte.
    let t = TempDir::new("rechain");
    let key = fixture(&t, 8);
    rechain(&t.dir(), |_| {});
    assert!(verify(&t.dir(), &key).unwrap().is_ok());

    let edits: [(&str, Edit); 3] = [
        ("edit", |b| {
            let i = b
                .iter()
                .position(|(_, body)| body.windows(5).any(|w| w == b"hello"))
                .unwrap();
            let text = String::from_utf8(b[i].1.clone())
                .unwrap()
                .replace("hello", "bye");
            b[i].1 = text.into_bytes();
        }),
        ("insert", |b| {
            let i = b
                .iter()
                .position(|(_, body)| body.windows(5).any(|w| w == b"hello"))
                .unwrap();
            let forged = b[i].clone();
            b.insert(i, forged);
        }),
        ("delete", |b| {
            let i = b
                .iter()
                .position(|(_, body)| body.windows(5).any(|w| w == b"hello"))
                .unwrap();
            b.remove(i);
        }),
    ];
    for (name, edit) in edits {
        let t = TempDir::new("rechain-edit");
        let key = fixture(&t, 8);
        rechain(&t.dir(), edit);
        let report = verify(&t.dir(), &key).unwrap();
        assert!(
            report.has(|k| *k == ProblemKind::BadSeal),
            "{name}: {:?}",
            report.problems
        );
        assert!(
            report.has(|k| matches!(
                k,
                ProblemKind::SealedHeadMismatch | ProblemKind::SealedHeadMissing { .. }
            )),
            "{name}: {:?}",
            report.problems
        );
        assert!(
            !report.has(|k| matches!(k, ProblemKind::HashMismatch)),
            "{name}: the chain itself is consistent"
        );
    }
}

#[test]
fn deleted_middle_segment_is_detected() {
    let t = TempDir::new("del-middle");
    let key = fixture(&t, 8);
    fs::remove_file(segment_path(&t.dir(), 2)).unwrap();
    let report = verify(&t.dir(), &key).unwrap();
    assert_eq!(
        kinds(&report),
        [ProblemKind::MissingSegments { from: 2, to: 2 }]
    );
    assert_eq!(report.problems[0].segment, Some(3));
}

#[test]
fn deleted_first_segment_is_detected() {
    let t = TempDir::new("del-first");
    let key = fixture(&t, 8);
    fs::remove_file(segment_path(&t.dir(), 1)).unwrap();
    let report = verify(&t.dir(), &key).unwrap();
    assert_eq!(
        kinds(&report),
        [ProblemKind::MissingSegments { from: 1, to: 1 }]
    );
}

#[test]
fn deleted_last_segment_is_detected() {
    let t = TempDir::new("del-last");
    let key = fixture(&t, 8);
    let last = *list_segments(&t.dir()).unwrap().last().unwrap();
    fs::remove_file(segment_path(&t.dir(), last)).unwrap();
    let report = verify(&t.dir(), &key).unwrap();
    assert!(report
        .has(|k| matches!(k, ProblemKind::SealedHeadMissing { segment, .. } if *segment == last)));
}

#[test]
fn another_key_fails() {
    let t = TempDir::new("key");
    fixture(&t, 8);
    let other = SealKey::from_bytes([7; 32]);
    let report = verify(&t.dir(), &other).unwrap();
    assert!(report.has(|k| matches!(k, ProblemKind::AnchorInvalid { .. })));
    assert!(report.has(|k| *k == ProblemKind::BadSeal));
    let err = Archive::open(t.dir(), other, ArchiveConfig::default(), T0).err();
    assert!(
        matches!(err, Some(ArchiveError::AnchorInvalid { .. })),
        "{err:?}"
    );
}

#[test]
fn missing_head_file_is_reported_and_refused() {
    let t = TempDir::new("no-head");
    let key = fixture(&t, 8);
    fs::remove_file(t.dir().join("archive.head")).unwrap();
    let report = verify(&t.dir(), &key).unwrap();
    assert_eq!(kinds(&report), [ProblemKind::AnchorMissing]);
    let err = Archive::open(t.dir(), key, ArchiveConfig::default(), T0).err();
    assert!(
        matches!(err, Some(ArchiveError::AnchorMissing { .. })),
        "{err:?}"
    );
}

#[test]
fn open_refuses_a_bad_record_before_the_last_segment() {
    // Rotation seals every segment, so a bad record after the last seal but before the last
    // segment cannot come from a crash: here, an older (authentic) head file put back.
    let t = TempDir::new("open-corrupt");
    let key = t.key();
    let (mut a, _) = Archive::open(t.dir(), key.clone(), config(1500, 1000), T0).unwrap();
    let old_head = fs::read(t.dir().join("archive.head")).unwrap();
    while a.segment() < 4 {
        append_message(&mut a, T0, "a@x", "rotating");
    }
    a.close(T0).unwrap();
    fs::write(t.dir().join("archive.head"), old_head).unwrap();
    let path = segment_path(&t.dir(), 2);
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 1;
    fs::write(&path, bytes).unwrap();
    let err = Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0).err();
    assert!(
        matches!(
            err,
            Some(ArchiveError::Corrupt {
                segment: 2,
                offset: 0,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(verify(&t.dir(), &key)
        .unwrap()
        .has(|k| *k == ProblemKind::HashMismatch));
}

// ---- crashes ----

#[test]
fn crash_at_every_offset_of_the_unsealed_tail_is_recovered() {
    let t = TempDir::new("crash");
    let key = t.key();
    let (mut a, _) = Archive::open(t.dir(), key.clone(), config(1 << 20, 1000), T0).unwrap();
    for i in 0..3 {
        append_message(&mut a, T0 + i, "a@x", "sealed");
    }
    a.seal(T0 + 3).unwrap();
    let path = segment_path(&t.dir(), 1);
    let sealed_end = fs::metadata(&path).unwrap().len();
    let sealed_seq = a.next_seq() - 1;
    // Short records keep the number of cuts (each one an open with fsyncs) small.
    append_message(&mut a, T0 + 4, "a@x", "unsealed");
    for i in 0..2 {
        a.append(
            T0 + 5 + i,
            &Entry::FlowEnd {
                app: "irc",
                flow: flow(2),
            },
        )
        .unwrap();
    }
    drop(a);
    let full = fs::read(&path).unwrap();
    let head = fs::read(t.dir().join("archive.head")).unwrap();
    // Record ends in the tail, with the sequence number of the record that ends there.
    let mut ends = vec![(sealed_end, sealed_seq)];
    for (n, line) in full[sealed_end as usize..]
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
    {
        ends.push((
            ends.last().unwrap().0 + line.len() as u64,
            sealed_seq + 1 + n as u64,
        ));
    }

    let work = TempDir::new("crash-work");
    fs::create_dir_all(work.dir()).unwrap();
    for cut in sealed_end..=full.len() as u64 {
        let wpath = segment_path(&work.dir(), 1);
        fs::write(&wpath, &full[..cut as usize]).unwrap();
        fs::write(work.dir().join("archive.head"), &head).unwrap();
        let &(good_end, good_seq) = ends.iter().rev().find(|(end, _)| *end <= cut).unwrap();

        let (a, report) =
            Archive::open(work.dir(), key.clone(), ArchiveConfig::default(), T0 + 100).unwrap();
        let expected = RecoveryInfo {
            segment: 1,
            offset: good_end,
            truncated_bytes: cut - good_end,
            last_good_seq: good_seq,
        };
        assert_eq!(report.recovery, Some(expected), "cut at {cut}");
        drop(a);

        let report = verify(&work.dir(), &key).unwrap();
        assert!(report.is_ok(), "cut at {cut}: {:?}", report.problems);
        assert_eq!(report.recoveries.len(), 1, "cut at {cut}");
        let note = &report.recoveries[0];
        assert_eq!(
            (note.cut_offset, note.truncated_bytes, note.last_good_seq),
            (good_end, cut - good_end, good_seq)
        );
        assert_eq!(
            note.seq,
            good_seq + 1,
            "the recovery record follows the last good one"
        );
        assert_eq!(
            fs::read(&wpath).unwrap()[..good_end as usize],
            full[..good_end as usize]
        );
    }
}

#[test]
fn unrecovered_crash_shows_as_torn_tail_and_a_second_open_is_clean() {
    let t = TempDir::new("torn");
    let key = t.key();
    let (mut a, _) = Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0).unwrap();
    append_message(&mut a, T0, "a@x", "will be torn");
    drop(a);
    let path = segment_path(&t.dir(), 1);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let report = verify(&t.dir(), &key).unwrap();
    assert_eq!(kinds(&report), [ProblemKind::TornTail]);

    let (a, report) = Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0).unwrap();
    assert_eq!(report.recovery.map(|r| r.last_good_seq), Some(0));
    a.close(T0).unwrap();
    let (_a, report) = Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0).unwrap();
    assert_eq!(report.recovery, None);
}

#[test]
fn crash_right_after_rotation_is_recovered() {
    let t = TempDir::new("crash-rotate");
    let key = t.key();
    let (mut a, _) = Archive::open(t.dir(), key.clone(), config(1500, 1000), T0).unwrap();
    while a.segment() < 3 {
        append_message(&mut a, T0, "a@x", "filling");
    }
    drop(a);
    // Lose everything written to the newest segment.
    fs::write(segment_path(&t.dir(), 3), b"").unwrap();
    let (a, report) = Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0).unwrap();
    let recovery = report.recovery.unwrap();
    assert_eq!(
        (recovery.segment, recovery.offset, recovery.truncated_bytes),
        (3, 0, 0)
    );
    a.close(T0).unwrap();
    let report = verify(&t.dir(), &key).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.recoveries.len(), 1);
}

#[test]
fn crash_while_creating_starts_over() {
    let t = TempDir::new("crash-create");
    let key = t.key();
    fs::create_dir_all(t.dir()).unwrap();
    fs::write(segment_path(&t.dir(), 1), b"{\"h\":\"00").unwrap();
    let (a, report) = Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0).unwrap();
    assert!(report.created);
    a.close(T0).unwrap();
    assert!(verify(&t.dir(), &key).unwrap().is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever a segment holds, open and verify return a value and never panic.
    #[test]
    fn garbage_segments_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), keep_head: bool) {
        let t = TempDir::new("garbage");
        let key = fixture(&t, 2);
        fs::write(segment_path(&t.dir(), 1), &bytes).unwrap();
        if !keep_head {
            fs::remove_file(t.dir().join("archive.head")).unwrap();
        }
        prop_assert!(!verify(&t.dir(), &key).unwrap().is_ok());
        let _ = Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0);
        let _ = search(&t.dir(), &Filter::default()).unwrap().count();
    }

    #[test]
    fn decode_line_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_line(&bytes);
    }
}

// ---- search, export ----

fn search_fixture(t: &TempDir) -> SealKey {
    let key = t.key();
    let (mut a, _) = Archive::open(t.dir(), key.clone(), config(3000, 5), T0).unwrap();
    let d = Decision::allow();
    let rows: [(&str, &str, &[&str], &str, u64); 5] = [
        (
            "xmpp",
            "Alice@Example.org",
            &["bob@example.org"],
            "Lunch at noon?",
            10,
        ),
        (
            "xmpp",
            "bob@example.org",
            &["alice@example.org"],
            "Sure, the USUAL place",
            20,
        ),
        ("irc", "carol", &["#Ops"], "deploying release 42", 30),
        ("mqtt", "sensor-7", &["plant/ALICE/temp"], "21.5", 40),
        ("irc", "dave", &["carol"], "Ärger im Büro", 50),
    ];
    for (app, sender, recipients, body, time) in rows {
        let m = message(sender, recipients, body);
        a.append(
            T0 + time,
            &Entry::Message {
                app,
                flow: flow(1),
                message: &m,
                decision: &d,
            },
        )
        .unwrap();
    }
    a.append(
        T0 + 60,
        &Entry::FlowReset {
            app: "irc",
            flow: flow(1),
            reason: "blocked keyword",
        },
    )
    .unwrap();
    a.close(T0 + 70).unwrap();
    key
}

fn bodies(dir: &Path, filter: &Filter) -> Vec<String> {
    search(dir, filter)
        .unwrap()
        .filter_map(|h| match h.unwrap().record.event {
            Event::Message { message, .. } => Some(message.body),
            Event::FlowReset { reason, .. } => Some(format!("reset: {reason}")),
            _ => None,
        })
        .collect()
}

#[test]
fn search_filters() {
    let t = TempDir::new("search");
    search_fixture(&t);
    let dir = t.dir();
    let f = |from: Option<u64>,
             until: Option<u64>,
             app: Option<&str>,
             party: Option<&str>,
             text: Option<&str>| Filter {
        from: from.map(|d| T0 + d),
        until: until.map(|d| T0 + d),
        app: app.map(Into::into),
        party: party.map(Into::into),
        text: text.map(Into::into),
    };
    assert_eq!(bodies(&dir, &f(None, None, None, None, None)).len(), 6);
    assert_eq!(
        bodies(&dir, &f(Some(20), Some(40), None, None, None)),
        ["Sure, the USUAL place", "deploying release 42"]
    );
    assert_eq!(
        bodies(&dir, &f(None, None, Some("IRC"), None, None)),
        [
            "deploying release 42",
            "Ärger im Büro",
            "reset: blocked keyword"
        ]
    );
    assert_eq!(
        bodies(&dir, &f(None, None, None, Some("alice"), None)),
        ["Lunch at noon?", "Sure, the USUAL place", "21.5"],
        "sender or recipient, any case"
    );
    assert_eq!(
        bodies(&dir, &f(None, None, None, None, Some("usual"))),
        ["Sure, the USUAL place"]
    );
    assert_eq!(
        bodies(&dir, &f(None, None, None, None, Some("ÄRGER IM"))),
        ["Ärger im Büro"]
    );
    assert_eq!(
        bodies(&dir, &f(None, None, Some("irc"), Some("CAROL"), None)),
        ["deploying release 42", "Ärger im Büro"]
    );
    assert_eq!(
        bodies(
            &dir,
            &f(Some(0), Some(100), Some("xmpp"), Some("bob"), Some("lunch"))
        ),
        ["Lunch at noon?"]
    );
    assert!(bodies(&dir, &f(None, None, Some("xmpp"), None, Some("release"))).is_empty());
}

#[test]
fn export_writes_the_stored_lines() {
    let t = TempDir::new("export");
    let key = search_fixture(&t);
    let mut out = Vec::new();
    let stats = export(&t.dir(), &Filter::default(), &mut out).unwrap();
    let all: Vec<u8> = list_segments(&t.dir())
        .unwrap()
        .into_iter()
        .flat_map(|s| fs::read(segment_path(&t.dir(), s)).unwrap())
        .collect();
    assert_eq!(out, all, "an unfiltered export is the archive itself");
    assert_eq!(
        stats.records,
        all.split_inclusive(|&b| b == b'\n').count() as u64
    );

    let mut out = Vec::new();
    let filter = Filter {
        party: Some("alice".into()),
        ..Filter::default()
    };
    let stats = export(&t.dir(), &filter, &mut out).unwrap();
    assert_eq!(
        stats,
        ExportStats {
            records: 3,
            skipped: 0
        }
    );
    for line in out.split_inclusive(|&b| b == b'\n') {
        let value: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(value["r"]["event"]["type"], "message");
        assert!(value["h"].as_str().unwrap().len() == 64);
    }

    // A damaged line is skipped and counted, the rest still exported.
    let path = segment_path(&t.dir(), 1);
    let mut l = lines(&path);
    let i = first_message(&l);
    l[i] = b"not a record\n".to_vec();
    write_lines(&path, &l);
    let stats = export(&t.dir(), &filter, &mut Vec::new()).unwrap();
    assert_eq!(
        stats,
        ExportStats {
            records: 2,
            skipped: 1
        }
    );
    assert!(!verify(&t.dir(), &key).unwrap().is_ok());
}

// ---- retention ----

#[test]
fn retention_deletes_old_segments_and_verify_accepts_the_cut() {
    let t = TempDir::new("retain");
    let key = t.key();
    let (mut a, _) = Archive::open(t.dir(), key.clone(), config(1500, 1000), T0).unwrap();
    for day in 0..10 {
        for i in 0..3 {
            append_message(&mut a, T0 + day * DAY + i, "a@x", &format!("day {day}"));
        }
    }
    let before = list_segments(&t.dir()).unwrap();
    let backup: Vec<(u64, Vec<u8>)> = before
        .iter()
        .map(|&s| (s, fs::read(segment_path(&t.dir(), s)).unwrap()))
        .collect();
    let now = T0 + 10 * DAY;
    let report = a.retain(now, 3 * DAY).unwrap();
    assert!(!report.deleted_segments.is_empty());
    let first_kept = report.deleted_segments.last().unwrap() + 1;
    assert_eq!(
        list_segments(&t.dir()).unwrap(),
        before
            .iter()
            .copied()
            .filter(|&s| s >= first_kept)
            .collect::<Vec<_>>()
    );
    // Nothing kept is older than the first kept segment; everything deleted was older than the cut.
    let times: Vec<u64> = search(
        &t.dir(),
        &Filter {
            app: Some("xmpp".into()),
            ..Filter::default()
        },
    )
    .unwrap()
    .map(|h| h.unwrap().record.time)
    .collect();
    assert!(times.iter().any(|&time| time >= now - 3 * DAY));
    assert!(
        times.iter().filter(|&&time| time < now - 3 * DAY).count() <= 3,
        "at most one segment straddles the cut"
    );
    assert_eq!(
        a.retain(now, 3 * DAY).unwrap(),
        RetentionReport::default(),
        "nothing more to cut"
    );
    append_message(&mut a, now, "a@x", "after the cut");
    a.close(now).unwrap();

    let report = verify(&t.dir(), &key).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.retentions.len(), 1);
    assert_eq!(report.retentions[0].deleted_from, 1);
    assert_eq!(report.retentions[0].deleted_to, first_kept - 1);

    // A deleted segment that reappears (a crash between seal and delete) is ignored by verify
    // and deleted by open.
    let (s, bytes) = &backup[0];
    fs::write(segment_path(&t.dir(), *s), bytes).unwrap();
    let report = verify(&t.dir(), &key).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.ignored_segments, [*s]);
    let (mut a, opened) = Archive::open(t.dir(), key.clone(), config(1500, 1000), now).unwrap();
    assert_eq!(opened.removed_segments, [*s]);
    assert_eq!(opened.recovery, None);

    // A second cut later on, then deleting the first retained segment by hand is detected.
    for i in 0..20 {
        append_message(&mut a, now + (i + 1) * DAY, "a@x", "later");
    }
    let second = a.retain(now + 21 * DAY, 5 * DAY).unwrap();
    assert!(!second.deleted_segments.is_empty());
    a.close(now + 20 * DAY).unwrap();
    let report = verify(&t.dir(), &key).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(
        report.retentions.last().map(|r| r.deleted_to),
        second.deleted_segments.last().copied()
    );
    let kept = list_segments(&t.dir()).unwrap();
    assert!(kept.len() >= 3, "{kept:?}");
    let first = kept[0];
    fs::remove_file(segment_path(&t.dir(), first)).unwrap();
    let report = verify(&t.dir(), &key).unwrap();
    assert!(
        report.has(|k| *k
            == ProblemKind::MissingSegments {
                from: first,
                to: first
            }),
        "{:?}",
        report.problems
    );
}

#[test]
fn forged_retention_start_is_detected() {
    // Deleting old segments without the key cannot move the authenticated start.
    let t = TempDir::new("retain-forged");
    let key = fixture(&t, 8);
    fs::remove_file(segment_path(&t.dir(), 1)).unwrap();
    fs::remove_file(segment_path(&t.dir(), 2)).unwrap();
    let report = verify(&t.dir(), &key).unwrap();
    assert_eq!(
        kinds(&report),
        [ProblemKind::MissingSegments { from: 1, to: 2 }]
    );
}

// ---- key file ----

#[test]
fn key_file_is_created_private_and_reloaded() {
    let t = TempDir::new("keyfile");
    let path = t.0.join("k");
    let created = SealKey::load_or_create(&path).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let loaded = SealKey::load_or_create(&path).unwrap();
    assert_eq!(created.mac("d", &[b"x"]), loaded.mac("d", &[b"x"]));
    let other = SealKey::load_or_create(&t.0.join("k2")).unwrap();
    assert_ne!(
        created.mac("d", &[b"x"]),
        other.mac("d", &[b"x"]),
        "random keys"
    );

    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        SealKey::load(&path),
        Err(ArchiveError::Key { .. })
    ));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&path, "ABCDEF").unwrap();
    assert!(matches!(
        SealKey::load(&path),
        Err(ArchiveError::Key { .. })
    ));
    assert!(matches!(
        SealKey::load(&t.0.join("absent")),
        Err(ArchiveError::Io { .. })
    ));
}

#[test]
fn mac_fields_are_length_prefixed() {
    let key = SealKey::from_bytes([1; 32]);
    assert_ne!(key.mac("d", &[b"ab", b"c"]), key.mac("d", &[b"a", b"bc"]));
    assert_ne!(key.mac("d", &[b"x"]), key.mac("e", &[b"x"]));
}

#[test]
fn extreme_numbers_in_names_and_records_do_not_panic() {
    let t = TempDir::new("extreme");
    let key = fixture(&t, 2);
    fs::write(
        segment_path(&t.dir(), u64::MAX),
        frame(
            &Hash::ZERO,
            format!("{{\"seq\":{},\"time\":0}}", u64::MAX).as_bytes(),
        ),
    )
    .unwrap();
    let report = verify(&t.dir(), &key).unwrap();
    assert!(!report.is_ok());
    let _ = Archive::open(t.dir(), key, ArchiveConfig::default(), T0);
}

// ---- one writer per directory ----

#[test]
fn a_second_writer_is_refused_until_the_first_is_closed_or_dropped() {
    let t = TempDir::new("lock");
    let key = t.key();
    let (mut a, _) = Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0).unwrap();
    append_message(&mut a, T0 + 1, "alice@example.org", "first writer");

    let err = Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0 + 2).err();
    let Some(ArchiveError::Locked { dir, pid }) = err else {
        panic!("expected Locked, got {err:?}");
    };
    assert_eq!(dir, t.dir());
    assert_eq!(pid, Some(std::process::id()));
    let text = ArchiveError::Locked { dir, pid }.to_string();
    assert!(text.contains(&t.dir().display().to_string()), "{text}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    // The refused attempt touched nothing: the first writer goes on and closes cleanly.
    append_message(
        &mut a,
        T0 + 3,
        "alice@example.org",
        "still the first writer",
    );
    a.close(T0 + 4).unwrap();

    let (mut b, report) =
        Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0 + 5).unwrap();
    assert_eq!(report.recovery, None);
    assert!(matches!(
        Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0 + 6),
        Err(ArchiveError::Locked { .. })
    ));
    append_message(&mut b, T0 + 6, "alice@example.org", "second writer");
    // Dropped without closing (a crash, as far as the archive knows): the lock goes too.
    drop(b);
    let (c, report) =
        Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0 + 7).unwrap();
    assert!(report.recovery.is_some());
    c.close(T0 + 8).unwrap();
    let report = verify(&t.dir(), &key).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(bodies(&t.dir(), &Filter::default()).len(), 3);
}

#[test]
fn a_stale_lock_file_does_not_block_and_gets_our_pid() {
    let t = TempDir::new("stale-lock");
    let key = t.key();
    fs::create_dir_all(t.dir()).unwrap();
    let lock_path = t.dir().join("archive.lock");
    fs::write(
        &lock_path,
        "not a pid, and longer than any pid could ever be\n",
    )
    .unwrap();
    let (a, _) = Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0).unwrap();
    assert_eq!(
        fs::read_to_string(&lock_path).unwrap(),
        format!("{}\n", std::process::id())
    );
    a.close(T0 + 1).unwrap();
}

#[test]
fn readers_ignore_the_lock_file_while_a_writer_holds_it() {
    let t = TempDir::new("lock-readers");
    let key = fixture(&t, 6);
    let (mut a, _) =
        Archive::open(t.dir(), key.clone(), ArchiveConfig::default(), T0 + 10).unwrap();
    append_message(&mut a, T0 + 11, "alice@example.org", "while locked");
    a.seal(T0 + 12).unwrap();
    assert!(t.dir().join("archive.lock").exists());

    let report = verify(&t.dir(), &key).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.unsealed_records, 0);
    let found = bodies(&t.dir(), &Filter::default());
    assert_eq!(found.len(), 7);
    assert_eq!(found.last().map(String::as_str), Some("while locked"));
    let mut out = Vec::new();
    let stats = export(&t.dir(), &Filter::default(), &mut out).unwrap();
    assert!(stats.records > 7 && stats.skipped == 0, "{stats:?}");
    a.close(T0 + 13).unwrap();
    // Left behind after the writer is gone, it is still just ignored.
    let report = verify(&t.dir(), &key).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}
