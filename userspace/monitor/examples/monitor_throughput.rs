//! Throughput of the whole content path, single thread: [`Monitor::segment`] over a
//! pre-built mix of XMPP, IRC and MQTT chat flows, (a) without an archive, (b) archiving
//! every message into a temporary directory.
//!
//! ```text
//! cargo run --release -p imfw-monitor --example monitor_throughput [-- --quick] [--repeat N] [--pin] [--no-archive | --breakdown] [--records]
//! ```
//!
//! With `--records`, the figures are JSON records on stdout for `cargo xtask bench` (the rest
//! goes to stderr).

#![expect(
    clippy::cast_precision_loss,
    reason = "byte and message counts turned into rates for display"
)]
#![expect(
    clippy::similar_names,
    reason = "now_ns and now_ms are the Monitor API's names"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imfw_monitor::archive::{Archive, ArchiveConfig, FlowId, SealKey};
use imfw_monitor::content::{ContentConfig, ContentPolicy, FilesConfig, RuleConfig, UrlsConfig};
use imfw_monitor::message::{Action as RuleAction, Direction, Message, Protocol};
use imfw_monitor::parsers::Parser;
use imfw_monitor::reassembly::Segment;
use imfw_monitor::session::{FlowMeta, Monitor, MonitorConfig, MonitorStats};

const MSS: usize = 1448;
const SEED: u64 = 0x1F3A_5EED;
const T0_MS: u64 = 1_700_000_000_000;

/// splitmix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items
            .get(self.below(items.len() as u64) as usize)
            .copied()
            .unwrap_or("")
    }
}

const WORDS: &[&str] = &[
    "the", "meeting", "is", "moved", "to", "three", "please", "review", "draft", "before", "lunch",
    "deploy", "went", "fine", "thanks", "ok", "see", "you", "tomorrow", "build", "failed", "again",
    "on", "staging", "who", "owns", "ticket", "invoice", "sent", "café", "naïve", "résumé", "déjà",
    "vu", "weekend", "plans", "coffee", "later", "agreed", "ship",
];

const ANIMALS: &[&str] = &[
    "falcon", "heron", "otter", "badger", "lynx", "marten", "osprey", "ibex", "kestrel", "puffin",
];

const THINGS: &[&str] = &[
    "merger",
    "layoffs",
    "roadmap",
    "prototype",
    "pricing",
    "acquisition",
    "audit",
    "patent",
    "breach",
    "budget",
];

/// 100 phrases: "<animal> <thing>".
fn keywords() -> Vec<String> {
    ANIMALS
        .iter()
        .flat_map(|a| THINGS.iter().map(move |t| format!("{a} {t}")))
        .collect()
}

fn policy() -> ContentPolicy {
    let rule = |name: &str| RuleConfig {
        name: name.to_owned(),
        action: RuleAction::Log,
        keywords: None,
        whole_word: None,
        patterns: None,
        urls: None,
        files: None,
    };
    let cfg = ContentConfig {
        rules: vec![
            RuleConfig {
                keywords: Some(keywords()),
                ..rule("confidential-words")
            },
            RuleConfig {
                patterns: Some(vec!["payment_card".into(), "iban".into()]),
                ..rule("financial-data")
            },
            RuleConfig {
                urls: Some(UrlsConfig {
                    domains: vec!["paste.example".into(), "files.example.net".into()],
                    suffixes: vec![".zip".into()],
                    path_prefixes: vec!["docs.example.com/private".into()],
                }),
                ..rule("file-sharing-sites")
            },
            RuleConfig {
                files: Some(FilesConfig {
                    extensions: vec!["exe".into(), "scr".into(), "tar.gz".into()],
                    ..FilesConfig::default()
                }),
                ..rule("executables")
            },
        ],
    };
    match ContentPolicy::compile(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("content policy: {e}");
            std::process::exit(1);
        }
    }
}

const URLS: &[&str] = &[
    "https://docs.example.com/private/plan.pdf",
    "https://paste.example/r4nd0m",
    "https://www.example.org/news?id=42",
    "http://git.example.com/team/repo/pull/7",
    "https://videos.example.net/watch?v=abc",
];

/// A chat text of 50 to 400 bytes; some carry a URL, a few a keyword, a card or an IBAN.
fn text(rng: &mut Rng, kw: &[String]) -> String {
    let target = 50 + rng.below(351) as usize;
    let mut s = String::with_capacity(target + 64);
    let roll = rng.below(1000);
    if roll < 100 {
        s.push_str(rng.pick(URLS));
        s.push(' ');
    } else if roll < 105 {
        if let Some(k) = kw.get(rng.below(kw.len() as u64) as usize) {
            s.push_str(k);
            s.push(' ');
        }
    } else if roll < 107 {
        s.push_str("card 4111 1111 1111 1111 ");
    } else if roll < 109 {
        s.push_str("iban DE89 3704 0044 0532 0130 00 ");
    }
    while s.len() < target {
        s.push_str(rng.pick(WORDS));
        s.push(' ');
    }
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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

fn mqtt_string(s: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(s.len()).unwrap_or(0).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// The bytes each side of flow `n` writes, in order.
fn conversation(
    n: u32,
    protocol: Protocol,
    messages: u32,
    rng: &mut Rng,
    kw: &[String],
) -> Vec<(Direction, Vec<u8>)> {
    use Direction::{ClientToServer as C2S, ServerToClient as S2C};
    let mut w = Vec::new();
    let me = format!("user{n}");
    let peer = format!("peer{}", rng.below(500));
    match protocol {
        Protocol::Xmpp => {
            w.push((C2S, b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>".to_vec()));
            w.push((S2C, b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='example.com' id='s1' version='1.0'>".to_vec()));
        }
        Protocol::Irc => {
            w.push((
                C2S,
                format!("NICK {me}\r\nUSER {me} 0 * :{me}\r\n").into_bytes(),
            ));
            w.push((
                S2C,
                format!(":irc.example 001 {me} :Welcome\r\n").into_bytes(),
            ));
        }
        Protocol::Mqtt => {
            let mut body = mqtt_string(b"MQTT");
            body.extend_from_slice(&[4, 0x02, 0, 60]);
            body.extend(mqtt_string(me.as_bytes()));
            w.push((C2S, mqtt_packet(0x10, &body)));
            w.push((S2C, mqtt_packet(0x20, &[0, 0])));
        }
        other => unreachable!("the mix holds XMPP, IRC and MQTT flows, not {other:?}"),
    }
    for i in 0..messages {
        // Runs of a few messages per side, as chats go.
        let dir = if (i / (1 + (u32::from(n.is_multiple_of(3)) * 2))) % 2 == 0 {
            C2S
        } else {
            S2C
        };
        let body = text(rng, kw);
        let bytes = match protocol {
            Protocol::Xmpp => {
                let (from, to) = if dir == C2S {
                    (&me, &peer)
                } else {
                    (&peer, &me)
                };
                let oob = if rng.below(100) == 0 {
                    "<x xmlns='jabber:x:oob'><url>https://files.example.net/setup.exe</url></x>"
                } else {
                    ""
                };
                format!(
                    "<message from='{from}@example.com/pc' to='{to}@example.com' type='chat' id='m{i}'><body>{}</body>{oob}</message>",
                    xml_escape(&body)
                )
                .into_bytes()
            }
            Protocol::Irc => {
                if dir == C2S {
                    format!("PRIVMSG #team{} :{body}\r\n", n % 50).into_bytes()
                } else {
                    format!(":{peer}!u@host.example PRIVMSG #team{} :{body}\r\n", n % 50)
                        .into_bytes()
                }
            }
            Protocol::Mqtt => {
                let mut p = mqtt_string(format!("chat/room{}/{me}", n % 50).as_bytes());
                p.extend_from_slice(body.as_bytes());
                mqtt_packet(0x30, &p)
            }
            other => unreachable!("the mix holds XMPP, IRC and MQTT flows, not {other:?}"),
        };
        w.push((dir, bytes));
    }
    w
}

struct Wire {
    flow: usize,
    dir: Direction,
    seq: u32,
    syn: bool,
    fin: bool,
    payload: Vec<u8>,
}

/// SYN both ways, each run of one side's writes cut at the MSS, FIN both ways.
fn segments(flow: usize, writes: &[(Direction, Vec<u8>)], isn: [u32; 2]) -> Vec<Wire> {
    let mut out = Vec::new();
    let mut next = isn;
    for (d, dir) in [Direction::ClientToServer, Direction::ServerToClient]
        .into_iter()
        .enumerate()
    {
        out.push(Wire {
            flow,
            dir,
            seq: next[d],
            syn: true,
            fin: false,
            payload: Vec::new(),
        });
        next[d] = next[d].wrapping_add(1);
    }
    let mut i = 0;
    while let Some((dir, _)) = writes.get(i) {
        let dir = *dir;
        let mut run = Vec::new();
        while let Some((_, bytes)) = writes.get(i).filter(|w| w.0 == dir) {
            run.extend_from_slice(bytes);
            i += 1;
        }
        for chunk in run.chunks(MSS) {
            let d = dir.index();
            out.push(Wire {
                flow,
                dir,
                seq: next[d],
                syn: false,
                fin: false,
                payload: chunk.to_vec(),
            });
            next[d] = next[d].wrapping_add(chunk.len() as u32);
        }
    }
    for (d, dir) in [Direction::ClientToServer, Direction::ServerToClient]
        .into_iter()
        .enumerate()
    {
        out.push(Wire {
            flow,
            dir,
            seq: next[d],
            syn: false,
            fin: true,
            payload: Vec::new(),
        });
    }
    out
}

struct Mix {
    metas: Vec<FlowMeta>,
    /// All flows interleaved, one segment of each in turn, as a gateway sees them.
    wires: Vec<Wire>,
    /// The payloads one after the other in that order, as the controller reads them from the
    /// ring buffer: `wires[i]` holds `spans[i]` of it.
    ring: Vec<u8>,
    spans: Vec<(usize, usize)>,
    payload_bytes: u64,
}

impl Mix {
    fn payload(&self, i: usize) -> &[u8] {
        self.spans
            .get(i)
            .and_then(|&(at, len)| self.ring.get(at..at + len))
            .unwrap_or_default()
    }
}

fn build(flows: u32, messages: u32) -> Mix {
    let mut rng = Rng(SEED);
    let kw = keywords();
    let mut metas = Vec::new();
    let mut per_flow = Vec::new();
    for n in 0..flows {
        let protocol = [Protocol::Xmpp, Protocol::Irc, Protocol::Mqtt][(n % 3) as usize];
        let (port, app) = match protocol {
            Protocol::Xmpp => (5222, "xmpp"),
            Protocol::Irc => (6667, "irc"),
            Protocol::Mqtt => (1883, "mqtt"),
            other => unreachable!("the mix holds XMPP, IRC and MQTT flows, not {other:?}"),
        };
        let client = std::net::SocketAddr::from((
            [10, 0, (n >> 8) as u8, n as u8],
            40_000 + (n % 20_000) as u16,
        ));
        let server = std::net::SocketAddr::from(([198, 51, 100, (n % 200) as u8], port));
        metas.push(FlowMeta {
            id: FlowId { client, server },
            app: app.to_owned(),
            protocol,
        });
        let writes = conversation(n, protocol, messages, &mut rng, &kw);
        let isn = [rng.next() as u32, rng.next() as u32];
        per_flow.push(segments(n as usize, &writes, isn));
    }
    let mut wires = Vec::new();
    let mut iters: Vec<_> = per_flow.into_iter().map(Vec::into_iter).collect();
    loop {
        let before = wires.len();
        for it in &mut iters {
            wires.extend(it.next());
        }
        if wires.len() == before {
            break;
        }
    }
    let payload_bytes = wires.iter().map(|w| w.payload.len() as u64).sum();
    let mut ring = Vec::with_capacity(usize::try_from(payload_bytes).unwrap_or(0));
    let mut spans = Vec::with_capacity(wires.len());
    for w in &mut wires {
        spans.push((ring.len(), w.payload.len()));
        ring.append(&mut w.payload);
    }
    Mix {
        metas,
        wires,
        ring,
        spans,
        payload_bytes,
    }
}

/// Feeds the whole mix once; returns the time taken (closing the archive included) and the
/// final counters.
fn run(mix: &Mix, archive: Option<Archive>) -> (Duration, MonitorStats) {
    let mut monitor = Monitor::new(MonitorConfig::default(), Arc::new(policy()), archive);
    let mut out = Vec::new();
    let mut actions = 0usize;
    let start = Instant::now();
    let mut now_ns = 1_000_000_000u64;
    for (i, w) in mix.wires.iter().enumerate() {
        // A segment every microsecond of simulated time; the controller polls once a second.
        now_ns += 1_000;
        let now_ms = T0_MS + now_ns / 1_000_000;
        let Some(meta) = mix.metas.get(w.flow) else {
            continue;
        };
        let seg = Segment {
            direction: w.dir,
            seq: w.seq,
            syn: w.syn,
            fin: w.fin,
            rst: false,
            payload: mix.payload(i),
            wire_len: u32::try_from(mix.payload(i).len()).unwrap_or(u32::MAX),
        };
        monitor.segment(meta, &seg, now_ns, now_ms, &mut out);
        if i % 1_000_000 == 999_999 {
            monitor.poll(now_ns, now_ms, &mut out);
        }
        actions += out.len();
        out.clear();
    }
    let end_ms = T0_MS + now_ns / 1_000_000 + 1;
    let stats = match monitor.close(end_ms) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("closing the archive: {e}");
            std::process::exit(1);
        }
    };
    let took = start.elapsed();
    if actions > 0 {
        eprintln!("note: {actions} actions (the policy only logs; none expected)");
    }
    (took, stats)
}

/// The stages alone, to show where the time goes: the parsers over the same segments (in
/// order, no reassembly), then the content policy over the messages they produced.
fn breakdown(mix: &Mix) -> (Duration, Duration, usize) {
    let mut parsers: Vec<Parser> = mix.metas.iter().map(|m| Parser::new(m.protocol)).collect();
    let mut offsets = vec![[0u64; 2]; mix.metas.len()];
    let mut msgs: Vec<Message> = Vec::new();
    let start = Instant::now();
    for (i, w) in mix.wires.iter().enumerate() {
        let (Some(p), Some(off)) = (parsers.get_mut(w.flow), offsets.get_mut(w.flow)) else {
            continue;
        };
        let Some(o) = off.get_mut(w.dir.index()) else {
            continue;
        };
        let payload = mix.payload(i);
        let _ = p.feed(w.dir, *o, payload, &mut msgs);
        *o += payload.len() as u64;
    }
    let parse = start.elapsed();
    let policy = policy();
    let start = Instant::now();
    let mut matched = 0usize;
    for m in &msgs {
        matched += policy.evaluate(m).matches.len();
    }
    let evaluate = start.elapsed();
    std::hint::black_box(matched);
    (parse, evaluate, msgs.len())
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64().max(1e-9) / 1e9
}

fn report(label: &str, mix: &Mix, took: Duration, stats: &MonitorStats) -> String {
    let secs = took.as_secs_f64().max(1e-9);
    format!(
        "{label:<14} {:>8.3} s  {:>6.2} Gbit/s payload  {:>10.0} messages/s  \
         ({} messages, {} segments, {} parse errors, {} gaps, {} archive errors)",
        secs,
        gbps(mix.payload_bytes, took),
        stats.messages as f64 / secs,
        stats.messages,
        stats.segments,
        stats.parse_errors,
        stats.gaps,
        stats.archive_errors,
    )
}

/// `--pin`: stays on the CPU it started on, so that the runs are not moved between cores
/// mid-measurement (the XDP benches do the same).
fn pin_to_current_cpu() {
    // SAFETY: sched_getcpu has no arguments; sched_setaffinity gets a zeroed, then filled,
    // cpu_set_t of the right size for the calling thread (pid 0).
    unsafe {
        let cpu = libc::sched_getcpu();
        let Ok(cpu) = usize::try_from(cpu) else {
            return;
        };
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            eprintln!("note: could not pin to CPU {cpu}; measuring unpinned");
        }
    }
}

/// The reference: copying every segment's payload once, in the same order, into a buffer
/// (what any consumer of the ring buffer pays to touch the bytes). The fastest of `repeat`.
fn copy_pass(mix: &Mix, repeat: u32) -> Duration {
    let mut best = Duration::MAX;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    for _ in 0..repeat {
        let start = Instant::now();
        for i in 0..mix.wires.len() {
            if buf.len() > (1 << 20) - 2048 {
                std::hint::black_box(&buf);
                buf.clear();
            }
            buf.extend_from_slice(mix.payload(i));
        }
        std::hint::black_box(&buf);
        best = best.min(start.elapsed());
    }
    best
}

#[expect(
    clippy::too_many_lines,
    reason = "the runs and their report, in the order they are printed"
)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let quick = flag("--quick");
    // `--records`: the figures as `cargo xtask bench` records on stdout, the rest on stderr.
    let records = flag("--records");
    let say = |line: String| {
        if records {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    if flag("--pin") {
        pin_to_current_cpu();
    }
    let (flows, messages) = if quick { (300, 150) } else { (1_000, 400) };
    let mix = build(flows, messages);
    say(format!(
        "mix: {flows} flows (XMPP, IRC, MQTT), {} segments, {:.1} MB of TCP payload; \
         policy: 100 keywords, payment_card + iban, a URL rule, a file rule; single thread",
        mix.wires.len(),
        mix.payload_bytes as f64 / 1e6
    ));

    if flag("--breakdown") {
        let (t_parse, t_eval, n) = breakdown(&mix);
        say(format!(
            "breakdown: parsers alone {:.3} s, content policy alone {:.3} s over {n} messages",
            t_parse.as_secs_f64(),
            t_eval.as_secs_f64()
        ));
        return;
    }
    // The fastest of `--repeat N` runs (default 1): a figure less disturbed by other load.
    let repeat = args
        .iter()
        .skip_while(|a| *a != "--repeat")
        .nth(1)
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let (mut t_plain, mut s_plain) = run(&mix, None);
    for _ in 1..repeat {
        let (t, s) = run(&mix, None);
        if t < t_plain {
            (t_plain, s_plain) = (t, s);
        }
    }
    say(report("no archive", &mix, t_plain, &s_plain));
    if flag("--no-archive") {
        return;
    }

    let dir: PathBuf =
        std::env::temp_dir().join(format!("imfw-monitor-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let archive = match Archive::open(
        &dir,
        SealKey::from_bytes([42; 32]),
        ArchiveConfig::default(),
        T0_MS,
    ) {
        Ok((a, _)) => a,
        Err(e) => {
            eprintln!("opening the archive in {}: {e}", dir.display());
            std::process::exit(1);
        }
    };
    let (t_arch, s_arch) = run(&mix, Some(archive));
    say(report("with archive", &mix, t_arch, &s_arch));
    let archived: u64 = std::fs::read_dir(&dir).map_or(0, |rd| {
        rd.filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    });
    say(format!(
        "archive: {:.1} MB in {}",
        archived as f64 / 1e6,
        dir.display()
    ));
    let _ = std::fs::remove_dir_all(&dir);

    let (t_parse, t_eval, n) = breakdown(&mix);
    say(format!(
        "breakdown: parsers alone {:.3} s ({:.2} Gbit/s), content policy alone {:.3} s \
         ({:.0} messages/s over {n} messages); the rest is reassembly and flow bookkeeping",
        t_parse.as_secs_f64(),
        gbps(mix.payload_bytes, t_parse),
        t_eval.as_secs_f64(),
        n as f64 / t_eval.as_secs_f64().max(1e-9),
    ));
    let t_copy = copy_pass(&mix, repeat.max(3));
    say(format!(
        "reference: copying the same segments once {:.3} s ({:.2} Gbit/s)",
        t_copy.as_secs_f64(),
        gbps(mix.payload_bytes, t_copy)
    ));

    if s_plain.messages != s_arch.messages {
        eprintln!(
            "the two runs disagree: {} vs {} messages",
            s_plain.messages, s_arch.messages
        );
        std::process::exit(1);
    }
    if !records {
        return;
    }
    let copy = gbps(mix.payload_bytes, t_copy);
    let mb = mix.payload_bytes as f64 / 1e6;
    let mix_note = format!(
        "{flows} XMPP, IRC and MQTT flows, {mb:.0} MB, {} messages of 50-400 bytes, one core; \
         policy of 100 keywords, 2 patterns, a URL and a file rule; fastest of {repeat} runs",
        s_plain.messages
    );
    let record = |name: &str, value: f64, unit: &str, reference: bool, target: Option<f64>| {
        let mut r = serde_json::json!({
            "scenario": "controller",
            "name": name,
            "value": value,
            "unit": unit,
            "note": mix_note,
        });
        if reference {
            r["ref"] = "copying the same bytes once".into();
            r["ref_value"] = copy.into();
        }
        if let Some(t) = target {
            r["target"] = serde_json::json!({ "value_min": t });
        }
        println!("{r}");
    };
    record(
        "reassembly + parsers + content policy",
        gbps(mix.payload_bytes, t_plain),
        "Gbit/s",
        true,
        Some(1.0),
    );
    record(
        "the same, archiving every message",
        gbps(mix.payload_bytes, t_arch),
        "Gbit/s",
        true,
        None,
    );
    record(
        "messages checked per second",
        s_plain.messages as f64 / t_plain.as_secs_f64().max(1e-9),
        "messages/s",
        false,
        None,
    );
    record(
        "content policy alone",
        n as f64 / t_eval.as_secs_f64().max(1e-9),
        "messages/s",
        false,
        None,
    );
}
