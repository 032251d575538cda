//! Benchmark scenario 5 of `cargo xtask bench`: imfw against a reference classifier, nDPI's
//! `ndpiReader` (Debian's libndpi-bin), on the same realistic traffic mix, each on one core.
//!
//! Run as root: `bench_ndpi [--quick]`. Progress goes to stderr; stdout carries one JSON record
//! per line (scenario `reference-classifier`) and nothing else. No packet leaves the machine:
//! imfw sees the frames through `BPF_PROG_TEST_RUN`, ndpiReader reads them from a pcap file in a
//! temporary directory removed at the end.
//!
//! # The mix
//! [`imfw_tests::mix`]: many interleaved flows with heavy-tailed lengths, TCP handshakes, full
//! data segments and delayed ACKs, DNS, QUIC-like and STUN datagrams, a fifth over IPv6, and a
//! tenth of the flows IM (real openings: TLS server names, Noise, `MTProto`, XMPP, IRC, MQTT,
//! STUN attributes). The same seed every run, so runs compare.
//!
//! # imfw
//! Two passes over the same frames, each from fresh programs and an empty flow table, so that
//! the flow table evolves as on a gateway (a flow's first packets are inspected, the rest hit
//! its decided entry):
//!
//! - **In the kernel, back to back** (the figure): the bench's in-kernel player
//!   ([`imfw::bench_refs::Replay`]) runs the frames in order, thousands per `BPF_PROG_TEST_RUN`
//!   call, each written into the packet buffer and handed to imfw's program by a tail call, as
//!   a driver's poll loop hands it the packets of a ring. The same frames, in the same chunks,
//!   go through the player with the empty program as its target (the player's own part: the
//!   copy of each frame and the tail call) and with the minimal stateful program of `bench_xdp`.
//!   imfw's time per packet is its run less the player's own part; packets per second = 1e9 /
//!   that. The three targets take turns first on each chunk, and the event ring is drained
//!   between calls, outside the timing. The copy leaves each frame in the cache before imfw
//!   reads it, as the syscall's copy does in the other pass; a NIC's frames may be colder.
//! - **One system call per packet** (beside it): every frame runs once (`repeat` 1), and the
//!   kernel's durations are summed. Each call's duration includes the per-call floor of
//!   `BPF_PROG_TEST_RUN` (its clock reads and run wrapper, about 100 ns, see `bench_xdp`) and
//!   caches cooled by the return to userspace between packets, which a packet arriving on a NIC
//!   does not meet. The empty and the stateful program run the same frames the same way. This
//!   pass also gives each packet's own time (the distribution in the note) and the verdicts,
//!   and its flow table must match the player's, entry for entry by app, or the bench fails:
//!   both passes did the same work.
//!
//! The figure is the median of the passes.
//!
//! # ndpiReader
//! `ndpiReader -i mix.pcap` with its defaults (protocol guessing on, one thread: a pcap file is
//! read by one thread), on the same CPU as imfw's runs (the affinity this process pins itself to
//! is inherited). Its figure is its own "Packet Processing Time" (the packet loop, without its
//! setup), turned into packets per second with the packet count it reports; this loop also
//! reads the frames from the pcap file (in the page cache), as a capture loop would from its
//! ring. The wall-clock time of the whole process is noted beside it. Median of the runs.
//!
//! imfw's passes and ndpiReader's runs alternate, so that other load on the machine falls on
//! both alike.
//!
//! # Did both do real work?
//! How many of the mix's IM flows each classified as an IM app: imfw's flow table entries with an
//! app that are IM flows of the mix (scored on the mix's truth, `Mix::truth`, with the non-IM
//! flows it gave an app as a record of their own), ndpiReader's "Detected protocols" flows of
//! IM protocols.

#![expect(
    clippy::cast_precision_loss,
    reason = "packet, byte and flow counts far below 2^52"
)]

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use imfw::{
    bench_refs::{BenchRefs, Reference, Replay},
    dataplane::Dataplane,
    packet,
    policy::{self, Compiled},
};
use imfw_common::{maps::FLOWS_DEFAULT, verdict::Stat};
use imfw_tests::{
    bench::median,
    mix::{self, Mix, MixConfig},
    packets::IPPROTO_TCP,
    util::{output_within, TempDir},
};
use serde_json::{json, Value};

const SCENARIO: &str = "reference-classifier";
/// imfw must classify at least this many times ndpiReader's packets per second (issue 5).
const RATIO_MIN: f64 = 10.0;
/// Share of IM flows in the mix.
const IM_SHARE: f64 = 0.1;
const SEED: u64 = 5;
/// The event ring is drained this often (frames): a frame writes at most an event and a copy.
const DRAIN_EVERY: usize = 256;
/// Frames per call of the in-kernel player: a frame writes at most an event and a copy of
/// about 2 KiB into the event ring (4 MiB), drained between calls, so even a chunk of nothing
/// but copies fits. The pass fails if an event or a copy was lost all the same.
const PLAYER_CHUNK: usize = 16384;
/// One ndpiReader run may take this long before the bench gives up on it.
const NDPI_LIMIT: Duration = Duration::from_mins(5);
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_ABORTED: u32 = 0;

/// nDPI's names of IM protocols (and of MQTT, which imfw's catalogue counts as an app).
const NDPI_IM: &[&str] = &[
    "WhatsApp",
    "WhatsAppCall",
    "WhatsAppFiles",
    "Telegram",
    "Signal",
    "Discord",
    "Slack",
    "Teams",
    "Skype_Teams",
    "Skype_TeamsCall",
    "Skype",
    "SkypeCall",
    "Jabber",
    "IRC",
    "MQTT",
    "Messenger",
    "Zoom",
    "Viber",
    "Line",
    "LineCall",
    "WeChat",
    "QQ",
    "Snapchat",
    "SnapchatCall",
    "Webex",
    "GoogleChat",
    "Threema",
];

struct Plan {
    flows: usize,
    /// imfw passes (each from fresh programs) and ndpiReader runs.
    passes: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                flows: 2_500,
                passes: 3,
            }
        } else {
            Plan {
                flows: 25_000,
                passes: 3,
            }
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_ndpi: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut quick = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--quick" => quick = true,
            "-h" | "--help" => {
                eprintln!("usage: bench_ndpi [--quick]   (root; JSON records on stdout, progress on stderr)");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (usage: bench_ndpi [--quick])"),
        }
    }
    let plan = Plan::new(quick);
    let started = Instant::now();
    let compiled = policy::parse(policy::default_policy_text(), "policy.yaml")
        .and_then(|p| p.compile())
        .map_err(|e| anyhow!("default policy: {e}"))?;
    let cpu = pin_to_current_cpu();

    let t = Instant::now();
    let m = mix::build(&MixConfig {
        flows: plan.flows,
        im_share: IM_SHARE,
        seed: SEED,
    });
    if m.frames.is_empty() {
        bail!("the mix holds no frames");
    }
    let mix_desc = format!(
        "mix (seed {SEED}): {} flows of which {} IM, {} packets, {:.1} MB, mean {:.0} bytes/packet",
        m.flows,
        m.im_flows,
        m.frames.len(),
        m.bytes as f64 / 1e6,
        m.bytes as f64 / m.frames.len() as f64
    );
    eprintln!(
        "bench_ndpi: {} run: {mix_desc}; built in {:.1} s",
        if quick { "quick" } else { "full" },
        t.elapsed().as_secs_f64()
    );

    let bin = find_ndpi_reader();
    if bin.is_none() {
        eprintln!(
            "bench_ndpi: ndpiReader not found on PATH (Debian package libndpi-bin, which \
             `cargo xtask bench` installs): imfw's figure is printed without its reference"
        );
    }
    let (imfw, ndpi) = measure(&plan, &compiled, &m, bin.as_deref())?;
    report(&m, &mix_desc, cpu, &imfw, ndpi.as_ref())?;
    eprintln!(
        "bench_ndpi: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Keeps this process, and ndpiReader which inherits the mask, on one CPU. Best effort.
fn pin_to_current_cpu() -> Option<usize> {
    match imfw_tests::bench::pin_to_current_cpu() {
        Ok(cpu) => {
            eprintln!("bench_ndpi: pinned to CPU {cpu}");
            Some(cpu)
        }
        Err(e) => {
            eprintln!("bench_ndpi: could not pin: {e}");
            None
        }
    }
}

/// What imfw did with the mix.
struct Imfw {
    /// Packets per second of each pass with the in-kernel player: imfw's share of the kernel's
    /// time (its run less the player's own part). The figure.
    pps: Vec<f64>,
    /// The player's own part (empty program as its target), and the stateful reference's
    /// share, in ns per packet, per pass.
    player_floor_ns: Vec<f64>,
    player_stateful_ns: Vec<f64>,
    /// imfw's run with the player's part, in ns per packet, per pass.
    player_gross_ns: Vec<f64>,
    /// Packets per second of each pass with one system call per packet (kernel time).
    call_pps: Vec<f64>,
    /// Packets per second of each pass, wall clock of the loop of system calls.
    wall_pps: Vec<f64>,
    /// Kernel nanoseconds per frame of the median pass, sorted.
    per_frame_ns: Vec<f32>,
    /// Packets per second of the empty program (the per-call floor) and of the minimal
    /// stateful reference on the same frames, one pass each per imfw pass.
    empty_pps: Vec<f64>,
    stateful_pps: Vec<f64>,
    passed: u64,
    dropped: u64,
    other: u64,
    /// The flow table the last pass left.
    table: Table,
}

/// What imfw's flow table holds after a pass, scored on the mix's truth.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Table {
    flows: usize,
    /// Flows with an app, by app name.
    apps: BTreeMap<String, usize>,
    /// IM flows of the mix with an app.
    im_found: usize,
    /// Non-IM flows of the mix with an app, by app name: false positives.
    false_apps: BTreeMap<String, usize>,
    /// Entries that are no flow of the mix (there should be none).
    unknown: usize,
}

/// imfw's passes and ndpiReader's runs, alternating so that both meet the same load on the
/// machine.
fn measure(
    plan: &Plan,
    compiled: &Compiled,
    m: &Mix,
    bin: Option<&Path>,
) -> Result<(Imfw, Option<Ndpi>)> {
    let mut out = Imfw {
        pps: Vec::new(),
        player_floor_ns: Vec::new(),
        player_stateful_ns: Vec::new(),
        player_gross_ns: Vec::new(),
        call_pps: Vec::new(),
        wall_pps: Vec::new(),
        per_frame_ns: Vec::new(),
        empty_pps: Vec::new(),
        stateful_pps: Vec::new(),
        passed: 0,
        dropped: 0,
        other: 0,
        table: Table::default(),
    };
    let mut ndpi = Ndpi {
        version: String::new(),
        pps: Vec::new(),
        printed: Vec::new(),
        wall_pps: Vec::new(),
        protocols: BTreeMap::new(),
        total_flows: 0,
    };
    // The pcap file lives in a temporary directory removed on return, error or not.
    let dir = TempDir::new("imfw-bench-ndpi")?;
    let pcap = dir.path().join("mix.pcap");
    if bin.is_some() {
        mix::write_pcap(&pcap, &m.frames).with_context(|| format!("writing {}", pcap.display()))?;
    }
    let mut refs = BenchRefs::load(FLOWS_DEFAULT)?;
    let chunk = PLAYER_CHUNK.min(m.frames.len());
    let mut player = Replay::load(u32::try_from(chunk).unwrap_or(u32::MAX))?;
    let mut per_pass: Vec<(f64, Vec<f32>)> = Vec::new();
    for pass in 0..plan.passes {
        let from_player = player_pass(pass, compiled, m, &mut refs, &mut player, &mut out)?;
        imfw_pass(pass, compiled, m, &mut refs, &mut out, &mut per_pass)?;
        if from_player != out.table {
            bail!(
                "the player's pass and the per-call pass left different flow tables: {from_player:?} against {:?}",
                out.table
            );
        }
        if out.table.unknown > 0 {
            bail!("imfw's flow table holds {} entries of no flow of the mix", out.table.unknown);
        }
        if let Some(bin) = bin {
            ndpi_run(pass, bin, &pcap, m, &mut ndpi)?;
        }
    }
    per_pass.sort_by(|a, b| a.0.total_cmp(&b.0));
    out.per_frame_ns = per_pass.swap_remove(per_pass.len() / 2).1;
    Ok((out, bin.map(|_| ndpi)))
}

/// One pass of every frame through fresh imfw programs, then through the two references.
fn imfw_pass(
    pass: usize,
    compiled: &Compiled,
    m: &Mix,
    refs: &mut BenchRefs,
    out: &mut Imfw,
    per_pass: &mut Vec<(f64, Vec<f32>)>,
) -> Result<()> {
    let mut dp = Dataplane::load(FLOWS_DEFAULT)?;
    dp.apply_offline(compiled)?;
    let (mut passed, mut dropped, mut other) = (0, 0, 0);
    let mut kernel_ns = 0.0;
    let mut ns_of = Vec::with_capacity(m.frames.len());
    let t = Instant::now();
    for (i, f) in m.frames.iter().enumerate() {
        let (action, ns) = dp.test_run_timed(f, 1)?;
        kernel_ns += ns;
        ns_of.push(ns as f32);
        match action {
            XDP_PASS => passed += 1,
            XDP_DROP => dropped += 1,
            _ => other += 1,
        }
        if i % DRAIN_EVERY == DRAIN_EVERY - 1 {
            dp.drain_events();
        }
    }
    let wall = t.elapsed().as_secs_f64();
    dp.drain_events();
    if kernel_ns <= 0.0 {
        bail!(
            "the kernel reported no run time for {} frames",
            m.frames.len()
        );
    }
    let n = m.frames.len() as f64;
    let pps = n / (kernel_ns * 1e-9);
    eprintln!(
        "bench_ndpi: imfw pass {} (one call per packet): {pps:.0} packets/s in the kernel ({:.1} ns/packet), {:.0} packets/s wall clock; pass {passed}, drop {dropped}, other {other}",
        pass + 1,
        kernel_ns / n,
        n / wall
    );
    out.call_pps.push(pps);
    out.wall_pps.push(n / wall);
    ns_of.sort_by(f32::total_cmp);
    per_pass.push((pps, ns_of));
    (out.passed, out.dropped, out.other) = (passed, dropped, other);
    out.table = table(&dp, compiled, m)?;
    drop(dp);
    // The references on the same frames, same method: the empty program (what one
    // BPF_PROG_TEST_RUN call costs with nothing to do) and the minimal stateful firewall
    // (parse, one LRU lookup, insert on a miss), from an empty table.
    refs.clear_flows()?;
    for (r, into) in [
        (Reference::Empty, &mut out.empty_pps),
        (Reference::Stateful, &mut out.stateful_pps),
    ] {
        let mut ns = 0.0;
        for f in &m.frames {
            ns += refs.run_timed(r, f, 1)?.1;
        }
        if ns <= 0.0 {
            bail!("the kernel reported no run time for {}", r.label());
        }
        into.push(n / (ns * 1e-9));
    }
    eprintln!(
        "bench_ndpi:   same frames: empty program {:.1} ns/packet, stateful reference {:.1} ns/packet",
        1e9 / out.empty_pps[pass],
        1e9 / out.stateful_pps[pass]
    );
    Ok(())
}

/// imfw's flow table: its flows, those with an app by app name, and how they score on the
/// mix's truth.
fn table(dp: &Dataplane, compiled: &Compiled, m: &Mix) -> Result<Table> {
    let truth: HashMap<_, bool> = m
        .truth
        .iter()
        .map(|t| ((t.client, t.cport, t.server, t.sport, t.tcp), t.im))
        .collect();
    let flows = dp.flows()?;
    let mut t = Table {
        flows: flows.len(),
        ..Table::default()
    };
    for (k, e) in &flows {
        let client_is_a = e.client_is_a != 0;
        let ((c, cport), (sv, sport)) = (k.client(client_is_a), k.server(client_is_a));
        let ends = (
            packet::addr(c, k.family),
            cport,
            packet::addr(sv, k.family),
            sport,
            k.proto == IPPROTO_TCP,
        );
        let Some(&im) = truth.get(&ends) else {
            t.unknown += 1;
            continue;
        };
        if e.app == 0 {
            continue;
        }
        let name = compiled
            .app_name(e.app)
            .map_or_else(|| format!("app {}", e.app), str::to_owned);
        *t.apps.entry(name.clone()).or_default() += 1;
        if im {
            t.im_found += 1;
        } else {
            *t.false_apps.entry(name).or_default() += 1;
        }
    }
    Ok(t)
}

/// One pass of every frame, in order, through the in-kernel player: to fresh imfw programs, to
/// the empty program and to the stateful reference (from an empty table), chunk by chunk, the
/// three taking turns first. Returns imfw's flow table, scored.
fn player_pass(
    pass: usize,
    compiled: &Compiled,
    m: &Mix,
    refs: &mut BenchRefs,
    player: &mut Replay,
    out: &mut Imfw,
) -> Result<Table> {
    let mut dp = Dataplane::load(FLOWS_DEFAULT)?;
    dp.apply_offline(compiled)?;
    refs.clear_flows()?;
    // Kernel ns summed over the frames: imfw, empty program, stateful reference.
    let mut sum = [0.0f64; 3];
    for (i, chunk) in m.frames.chunks(PLAYER_CHUNK).enumerate() {
        player.set_frames(chunk)?;
        let targets = [dp.program_fd()?, refs.program_fd(Reference::Empty)?, refs.program_fd(Reference::Stateful)?];
        let runs = player.play_to_each(&targets, i)?;
        for (which, r) in runs.iter().enumerate() {
            if r.last_action == XDP_ABORTED {
                bail!("the player aborted a run (target {which}): a frame it could not write, or no target");
            }
            sum[which] += r.ns_per_frame * chunk.len() as f64;
        }
        dp.drain_events();
    }
    let snap = dp.snapshot()?;
    for st in [Stat::EventsLost, Stat::StreamLost, Stat::ToControllerLost, Stat::FlowInsertFailed] {
        if snap.stat(st) > 0 {
            bail!("the player's pass lost {} ({}): the ring or the table was too small for a chunk", snap.stat(st), st.name());
        }
    }
    if snap.stat(Stat::Packets) != m.frames.len() as u64 {
        bail!("imfw counted {} packets of the {} the player played", snap.stat(Stat::Packets), m.frames.len());
    }
    let n = m.frames.len() as f64;
    let [gross, floor, stateful] = sum.map(|v| v / n);
    if gross <= floor {
        bail!("imfw's runs took no longer than the player's own part ({gross:.1} against {floor:.1} ns/packet)");
    }
    let pps = 1e9 / (gross - floor);
    eprintln!(
        "bench_ndpi: imfw pass {} (player): {pps:.0} packets/s in the kernel ({:.1} ns/packet: {gross:.1} less the player's {floor:.1}); stateful reference {:.1} ns/packet",
        pass + 1,
        gross - floor,
        stateful - floor
    );
    out.pps.push(pps);
    out.player_gross_ns.push(gross);
    out.player_floor_ns.push(floor);
    out.player_stateful_ns.push(stateful - floor);
    table(&dp, compiled, m)
}

/// The quantile of sorted values at `permille` / 1000.
fn quantile(sorted: &[f32], permille: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = (sorted.len() - 1) * permille.min(1000) / 1000;
    f64::from(sorted[i])
}

fn find_ndpi_reader() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("ndpiReader"))
        .find(|p| p.is_file())
}

/// What ndpiReader did with the mix.
struct Ndpi {
    version: String,
    /// Packets per second of each run, from its packet processing time.
    pps: Vec<f64>,
    /// Its own "nDPI throughput" line of each run, as printed.
    printed: Vec<String>,
    /// Packets per second of each run, wall clock of the whole process.
    wall_pps: Vec<f64>,
    /// Flows by detected protocol (last run).
    protocols: BTreeMap<String, u64>,
    total_flows: u64,
}

/// One ndpiReader run on the pcap file.
fn ndpi_run(run: usize, bin: &Path, pcap: &Path, m: &Mix, out: &mut Ndpi) -> Result<()> {
    let t = Instant::now();
    let o = output_within(Command::new(bin).arg("-i").arg(pcap), NDPI_LIMIT)?;
    let wall = t.elapsed().as_secs_f64();
    if !o.status.success() {
        bail!(
            "{} -i {} failed ({}): {}",
            bin.display(),
            pcap.display(),
            o.status,
            o.stderr.trim()
        );
    }
    let r = parse_ndpi(&o.stdout).with_context(|| {
        format!(
            "reading ndpiReader's report (its output begins: {:?})",
            o.stdout.chars().take(400).collect::<String>()
        )
    })?;
    if r.packets != m.frames.len() as u64 {
        bail!(
            "ndpiReader counted {} packets of the {} in the pcap",
            r.packets,
            m.frames.len()
        );
    }
    let pps = r.packets as f64 / r.processing_s;
    eprintln!(
        "bench_ndpi: ndpiReader run {}: {pps:.0} packets/s (processing {:.3} s; it prints \"{}\"), {:.0} packets/s wall clock ({wall:.2} s)",
        run + 1,
        r.processing_s,
        r.printed,
        r.packets as f64 / wall
    );
    out.version = r.version;
    out.pps.push(pps);
    out.printed.push(r.printed);
    out.wall_pps.push(r.packets as f64 / wall);
    out.protocols = r.protocols;
    out.total_flows = r.flows;
    Ok(())
}

/// The parts of ndpiReader's report the bench reads.
#[derive(Debug, PartialEq)]
struct NdpiReport {
    version: String,
    processing_s: f64,
    packets: u64,
    flows: u64,
    printed: String,
    protocols: BTreeMap<String, u64>,
}

/// Reads ndpiReader's (nDPI 4.x) text report: `Using nDPI (4.2.0)`, `Packet Processing Time:
/// 447 msec`, `IP packets: 65837 of 65837 packets total`, `Unique flows: 2000`, `nDPI
/// throughput: 147.05 K pps / ...` and the `Detected protocols:` lines
/// (`DNS packets: 564 bytes: 53094 flows: 282`).
fn parse_ndpi(text: &str) -> Result<NdpiReport> {
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label).map(str::trim))
    };
    let version = text
        .lines()
        .find_map(|l| l.split("Using nDPI (").nth(1))
        .and_then(|r| r.split(')').next())
        .unwrap_or("unknown version")
        .to_string();
    let time =
        field("Packet Processing Time:").ok_or_else(|| anyhow!("no \"Packet Processing Time\""))?;
    let mut it = time.split_whitespace();
    let v: f64 = it
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("unreadable processing time {time:?}"))?;
    let processing_s = match it.next() {
        Some("usec") => v * 1e-6,
        Some("msec") => v * 1e-3,
        Some("sec") => v,
        other => bail!("unknown processing time unit {other:?} in {time:?}"),
    };
    if processing_s <= 0.0 {
        bail!("processing time {time:?} too short to read a rate from");
    }
    // "IP packets: N of M packets total": M is every packet read.
    let ip = field("IP packets:").ok_or_else(|| anyhow!("no \"IP packets\""))?;
    let packets = ip
        .split(" of ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("unreadable packet count {ip:?}"))?;
    let flows = field("Unique flows:")
        .and_then(|f| f.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("no \"Unique flows\""))?;
    let printed = field("nDPI throughput:").map_or_else(
        || "no throughput line".to_string(),
        |s| s.split_whitespace().collect::<Vec<_>>().join(" "),
    );
    let mut protocols = BTreeMap::new();
    let mut in_section = false;
    for l in text.lines() {
        if l.trim_start().starts_with("Detected protocols:") {
            in_section = true;
            continue;
        }
        if !in_section {
            continue;
        }
        let words: Vec<&str> = l.split_whitespace().collect();
        if words.is_empty() {
            if !protocols.is_empty() {
                break;
            }
            continue;
        }
        let Some(i) = words.iter().position(|w| *w == "flows:") else {
            break;
        };
        let n: u64 = words
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("unreadable protocol line {l:?}"))?;
        protocols.insert(words[0].to_string(), n);
    }
    if protocols.is_empty() {
        bail!("no \"Detected protocols\" section");
    }
    Ok(NdpiReport {
        version,
        processing_s,
        packets,
        flows,
        printed,
        protocols,
    })
}

fn spread(v: &[f64]) -> String {
    let (lo, hi) = imfw_tests::bench::range(v);
    format!("{lo:.0}-{hi:.0}")
}

fn emit(r: &Value) -> Result<()> {
    println!("{}", serde_json::to_string(r)?);
    Ok(())
}

/// The note of imfw's figure, its apps as text, and how many flows have an IM app.
fn imfw_note(mix_desc: &str, on: &str, imfw: &Imfw) -> (String, String, usize) {
    let imfw_pps = median(&imfw.pps);
    let imfw_im: usize = imfw.table.apps.values().sum();
    let app_counts = imfw
        .table
        .apps
        .iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect::<Vec<_>>()
        .join(", ");

    let call_ns = 1e9 / median(&imfw.call_pps);
    let floor_ns = 1e9 / median(&imfw.empty_pps);
    let stateful_ns = 1e9 / median(&imfw.stateful_pps);
    let ns = &imfw.per_frame_ns;
    let total_ns: f64 = ns.iter().map(|v| f64::from(*v)).sum();
    let slow: Vec<f64> = ns
        .iter()
        .map(|v| f64::from(*v))
        .filter(|v| *v > 1_000.0)
        .collect();
    let note = format!(
        "{mix_desc}; default policy, on {on}; every frame once in arrival order through the in-kernel player ({PLAYER_CHUNK} frames per \
         BPF_PROG_TEST_RUN call, each written into the packet buffer and tail-called into imfw's program, as a driver's poll loop \
         runs a ring); imfw's time per packet = its run less the player's own part (the same frames played to the empty program): \
         {:.1} ns ({:.1} ns with the player's part of {:.1} ns; stateful reference, parse and one LRU lookup, {:.1} ns by the same \
         method); median of {} passes, each from fresh programs and an empty flow table (passes {} packets/s). \
         One system call per packet instead (repeat 1, the per-call floor of the empty program, {floor_ns:.0} ns, and caches cooled \
         between calls included): {:.0} packets/s, {call_ns:.0} ns/packet, stateful reference {stateful_ns:.0} ns/packet; \
         per packet (median pass): median {:.0} ns, p90 {:.0}, p99 {:.0}, packets over 1 us {:.1}% of the packets and {:.0}% of the \
         time; wall clock of the system-call loop {} packets/s; verdicts: {} passed, {} dropped, {} other; both passes left the same \
         flow table: {} flows, {imfw_im} with an IM app ({app_counts})",
        1e9 / imfw_pps,
        median(&imfw.player_gross_ns),
        median(&imfw.player_floor_ns),
        median(&imfw.player_stateful_ns),
        imfw.pps.len(),
        spread(&imfw.pps),
        median(&imfw.call_pps).round(),
        quantile(ns, 500),
        quantile(ns, 900),
        quantile(ns, 990),
        100.0 * slow.len() as f64 / ns.len().max(1) as f64,
        100.0 * slow.iter().sum::<f64>() / total_ns.max(1.0),
        median(&imfw.wall_pps).round(),
        imfw.passed,
        imfw.dropped,
        imfw.other,
        imfw.table.flows,
    );
    (note, app_counts, imfw_im)
}

fn report(
    m: &Mix,
    mix_desc: &str,
    cpu: Option<usize>,
    imfw: &Imfw,
    ndpi: Option<&Ndpi>,
) -> Result<()> {
    let on = cpu.map_or_else(
        || "one CPU (pinning failed)".to_string(),
        |c| format!("CPU {c}"),
    );
    let imfw_pps = median(&imfw.pps);
    let (mut note, app_counts, imfw_im) = imfw_note(mix_desc, &on, imfw);
    let name = "imfw in-kernel packets per second per core, realistic mix";
    let Some(ndpi) = ndpi else {
        note.push_str("; no reference: ndpiReader (Debian package libndpi-bin) is not installed");
        return emit(&json!({
            "scenario": SCENARIO, "name": name, "value": imfw_pps.round(), "unit": "packets/s", "note": note,
        }));
    };
    let ndpi_pps = median(&ndpi.pps);
    let ndpi_label = format!("ndpiReader (nDPI {}), one core", ndpi.version);
    let _ = write!(
        note,
        "; reference: {ndpi_label} on the same frames from a pcap file (its packet loop, reading the file included); target at least \
         {RATIO_MIN}x: {} ({:.1}x; with the player's part {:.1}x; one call per packet {:.1}x)",
        if imfw_pps >= RATIO_MIN * ndpi_pps { "met" } else { "not met" },
        imfw_pps / ndpi_pps,
        1e9 / median(&imfw.player_gross_ns) / ndpi_pps,
        median(&imfw.call_pps) / ndpi_pps
    );
    emit(&json!({
        "scenario": SCENARIO, "name": name, "value": imfw_pps.round(), "unit": "packets/s",
        "ref": ndpi_label, "ref_value": ndpi_pps.round(),
        "target": {"ratio_min": RATIO_MIN}, "note": note,
    }))?;

    let ndpi_im: u64 = ndpi
        .protocols
        .iter()
        .filter(|(p, _)| NDPI_IM.contains(&p.as_str()))
        .map(|(_, n)| n)
        .sum();
    let protos = ndpi
        .protocols
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    emit(&json!({
        "scenario": SCENARIO,
        "name": format!("ndpiReader (nDPI {}) packets per second per core, same mix", ndpi.version),
        "value": ndpi_pps.round(), "unit": "packets/s",
        "note": format!(
            "{mix_desc}; `ndpiReader -i mix.pcap` with its defaults (one thread, protocol guessing on) on {on} (affinity inherited); \
             packets/s = packets / its own \"Packet Processing Time\" (the packet loop, reading the pcap from the page cache; \
             its setup excluded); median of {} runs ({} packets/s); its own throughput lines: {}; wall clock of the whole process \
             (setup and report included) {} packets/s; {} flows, by protocol: {protos}",
            ndpi.pps.len(),
            spread(&ndpi.pps),
            ndpi.printed.join("; "),
            median(&ndpi.wall_pps).round(),
            ndpi.total_flows,
        ),
    }))?;

    let false_counts = if imfw.table.false_apps.is_empty() {
        "none".to_owned()
    } else {
        imfw.table
            .false_apps
            .iter()
            .map(|(a, n)| format!("{a} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let false_total: usize = imfw.table.false_apps.values().sum();
    emit(&json!({
        "scenario": SCENARIO,
        "name": format!("IM flows classified as an IM app, of the mix's {} IM flows", m.im_flows),
        "value": imfw.table.im_found, "unit": "flows",
        "ref": ndpi_label, "ref_value": ndpi_im,
        "note": format!(
            "a check that both did real work, not a target: imfw counts its flow table entries with an app that are IM flows of \
             the mix (all entries with an app: {imfw_im}, {app_counts}; non-IM flows among them: {false_counts}); ndpiReader its \
             flows detected as an IM protocol (or MQTT, an app in imfw's catalogue; plain STUN not counted), which its summary \
             does not tell from false ones; the mix's IM flows: TLS with IM server names, WhatsApp Noise, MTProto, XMPP, IRC, \
             MQTT, HTTP CONNECT to web.whatsapp.com, STUN with WhatsApp or Teams attributes"
        ),
    }))?;
    emit(&json!({
        "scenario": SCENARIO,
        "name": format!("non-IM flows classified as an IM app, of the mix's {} non-IM flows", m.flows - m.im_flows),
        "value": false_total, "unit": "flows",
        "note": format!(
            "imfw's false positives on the mix: its flow table entries with an app that are web, DNS, QUIC or opaque flows of the \
             mix ({false_counts})"
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Using nDPI (4.2.0) [1 thread(s)]
nDPI Memory statistics:
\tSetup Time:              80 msec
\tPacket Processing Time:  447 msec

Traffic statistics:
\tIP packets:            65837         of 65837 packets total
\tUnique flows:          2000         
\tnDPI throughput:       147.05 K pps / 757.71 Mb/sec

Detected protocols:
\tUnknown              packets: 5931          bytes: 4094027       flows: 216          
\tWhatsApp             packets: 1393          bytes: 395594        flows: 31           


Protocol statistics:
\tSafe                      28778072 bytes
";

    #[test]
    fn reads_ndpi_reader_report() {
        let r = parse_ndpi(SAMPLE).unwrap();
        assert_eq!(r.version, "4.2.0");
        assert!((r.processing_s - 0.447).abs() < 1e-9);
        assert_eq!(r.packets, 65_837);
        assert_eq!(r.flows, 2_000);
        assert_eq!(r.printed, "147.05 K pps / 757.71 Mb/sec");
        assert_eq!(r.protocols.len(), 2);
        assert_eq!(r.protocols["WhatsApp"], 31);
        assert!(parse_ndpi("nothing").is_err());
    }
}
