//! Cost per packet in XDP, in the kernel (`BPF_PROG_TEST_RUN`'s own timing), read against two
//! reference programs measured in the same run: an empty program (the floor of a program run)
//! and a minimal stateful one (parse to L4, one LRU lookup, insert on a miss: what any stateful
//! XDP firewall must pay). Part of `cargo xtask bench` (issue 5, scenario 1); run as root:
//! `cargo run --release -p imfw --example bench_xdp [-- --quick]`.
//!
//! Progress goes to stderr; stdout carries one JSON record per line (scenario `xdp-cost`).
//!
//! # Decided flows
//! The flow is decided first (its ClientHello, or enough payload to end inspection), checked
//! in the flow table, then one data packet of the flow runs `repeat` times per call: every run
//! after the first hits the same warm entry, which is what a decided flow costs. The stateful
//! reference runs the same packet (its entry warm after the first run) and the empty program
//! too, in short rounds (one call each, in a rotating order) so that all three share the
//! machine's state, and the shapes take turns, a round of each in a rotating order, so that
//! each shape's rounds spread over the whole measurement; each figure is the low quantile (`imfw_tests::bench::LOW_QUANTILE`) of
//! the rounds' means.
//!
//! # First payload packets
//! A repeated identical packet is a first payload packet only once: the run after it finds the
//! flow inspected or decided. So each sample is a new flow, run once per call:
//! 1. (TCP) the flow's SYN runs untimed, so the flow's entry exists as a real handshake leaves
//!    it (the payload packet of a TCP flow comes after its handshake; UDP flows have none and
//!    their first packet creates the entry);
//! 2. the first payload packet runs once (`repeat` 1) and the kernel's duration of that one run
//!    is the sample.
//!
//! The stateful reference runs the same two packets of the same flow (so it pays its insert
//! where imfw does), and the empty program runs the payload packet once per call: that is the
//! per-call floor (the kernel's clock reads and run wrapper around one run, and caches cooled
//! by the system call), printed as a record of its own so the reader sees what part of a
//! first-packet figure is measurement overhead. The three alternate in a rotating order per
//! sample. Every sample's verdict is checked, and after each batch the flow table entry of the
//! batch's last flow (app, method, state), so a figure never measures another path than it
//! says. Each figure is the low quantile over batches of the per-batch median (another tenant
//! of the machine slows whole batches, in bursts; see `LOW_QUANTILE`). The cases take turns,
//! a batch of each per round in a rotating order, and the rounds are spread over the
//! decided-flow measurement (a few after each shape), so that a burst of a few seconds falls
//! on some batches of every case rather than on all batches of one. Two cases share loaded
//! programs; their flow tables never fill beyond half (no eviction), and the event ring is
//! drained every few hundred samples so that it never fills.
//!
//! No figure subtracts the floor: targets are checked on the figures as measured.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Result};
use imfw::{
    bench_refs::{BenchRefs, Reference},
    dataplane::Dataplane,
    policy::{self, Compiled},
};
use imfw_common::{
    flow::{FlowKey, STATE_DECIDED},
    maps::FLOWS_DEFAULT,
    verdict::{Method, Stat},
};
use imfw_tests::{
    bench::{low, low_name, median},
    packets::{opaque, tcp4, tcp6, tcp_flags, udp4, udp6, with_vlan},
    protocols::{http_get, irc_registration, mqtt_connect, ClientHello},
};
use serde_json::{json, Value};

const SCENARIO: &str = "xdp-cost";
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// Decided-flow target: at most this times the stateful reference (issue 5).
const DECIDED_RATIO_MAX: f64 = 1.25;
/// First-packet target with a TLS server name, in ns (issue 5).
const TLS_FIRST_NS_MAX: f64 = 300.0;
/// The event ring is drained this often (samples); a first packet writes at most one event
/// and one copy, far below the ring's room for this many.
const DRAIN_EVERY: usize = 256;
/// At least this many batches, whatever the time cap says (the medians need them).
const MIN_BATCHES: usize = 5;
/// At least this many rounds for a decided flow, whatever the time cap says.
const MIN_ROUNDS: usize = 40;
/// Sizes the stateful reference's and imfw's flow tables alike.
const FLOW_CAPACITY: u32 = FLOWS_DEFAULT;

const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 10);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 20);
/// In telegram's published 149.154.160.0/20 (catalogue/addresses/telegram.txt).
const TELEGRAM4: Ipv4Addr = Ipv4Addr::new(149, 154, 167, 50);

/// How much to measure.
struct Plan {
    batches: usize,
    /// Rounds for a decided flow: one call each of imfw and its references, interleaved.
    rounds: usize,
    /// Runs per call for decided flows: short calls (about a millisecond), so that many
    /// rounds sample the machine's quiet and busy moments alike for all three programs.
    repeat: u32,
    /// New flows per batch for first packets.
    samples: usize,
    /// New flows run before a first-packet case's batches, unrecorded.
    warmup: usize,
    /// Past this, a case stops after `MIN_BATCHES`.
    case_cap: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                batches: 10,
                rounds: 60,
                repeat: 20_000,
                samples: 1_000,
                warmup: 300,
                case_cap: Duration::from_secs(4),
            }
        } else {
            Plan {
                batches: 20,
                rounds: 300,
                repeat: 20_000,
                samples: 2_750,
                warmup: 1_000,
                case_cap: Duration::from_secs(25),
            }
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_xdp: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    const USAGE: &str = "usage: bench_xdp [--quick] [--only decided|first]   (root; JSON records on stdout, progress on stderr)";
    let mut quick = false;
    let (mut run_decided, mut run_first) = (true, true);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => match args.next().as_deref() {
                Some("decided") => run_first = false,
                Some("first") => run_decided = false,
                other => bail!("--only takes decided or first, not {other:?} ({USAGE})"),
            },
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} ({USAGE})"),
        }
    }
    let plan = Plan::new(quick);
    let compiled = policy::parse(policy::default_policy_text(), "policy.yaml")
        .and_then(|p| p.compile())
        .map_err(|e| anyhow!("default policy: {e}"))?;
    eprintln!(
        "bench_xdp: default policy: {} signature shapes, {} signatures, {} names, {} STUN attributes, {} + {} app networks",
        compiled.sig_classes.len(),
        compiled.sigs.len(),
        compiled.names.len(),
        compiled.stun.len(),
        compiled.addr4.len(),
        compiled.addr6.len()
    );
    pin_to_current_cpu();
    let started = Instant::now();
    eprintln!(
        "bench_xdp: {} run: {} batches; decided flows {} runs per call; first packets {} new flows per batch",
        if quick { "quick" } else { "full" },
        plan.batches,
        plan.repeat,
        plan.samples
    );
    // The first-packet rounds are spread evenly over the decided-flow measurement, so that
    // each case's batches sample two minutes of the machine rather than a few seconds (a
    // neighbour's burst of load can cover a few seconds whole).
    let mut first = if run_first {
        Some(FirstPackets::start(&plan, &compiled)?)
    } else {
        None
    };
    if run_decided {
        decided(&plan, &compiled, &mut || match first.as_mut() {
            Some(f) => f.rounds(&plan, 1),
            None => Ok(()),
        })?;
    }
    if let Some(f) = first {
        f.finish(&plan)?;
    }
    eprintln!(
        "bench_xdp: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Keeps the whole run on one CPU: the programs' per-CPU state (scratch buffer, counters, the
/// LRU tables' per-CPU free lists) and the caches then stay the same from sample to sample.
/// Best effort: without it the figures are only noisier.
fn pin_to_current_cpu() {
    match imfw_tests::bench::pin_to_current_cpu() {
        Ok(cpu) => eprintln!("bench_xdp: pinned to CPU {cpu}"),
        Err(e) => eprintln!("bench_xdp: could not pin: {e}"),
    }
}

fn record(
    name: &str,
    value: f64,
    reference: Option<(&str, f64)>,
    target: Option<Value>,
    note: &str,
) -> Result<()> {
    let mut r =
        json!({"scenario": SCENARIO, "name": name, "value": round1(value), "unit": "ns/packet"});
    if let Some((label, v)) = reference {
        r["ref"] = json!(label);
        r["ref_value"] = json!(round1(v));
    }
    if let Some(t) = target {
        r["target"] = t;
    }
    r["note"] = json!(note);
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// How the decided-flow figures are taken, for their notes.
fn quantile_name() -> String {
    format!("{} of the means", low_name())
}

fn spread(v: &[f64]) -> String {
    let (lo, hi) = imfw_tests::bench::range(v);
    format!("{lo:.1}-{hi:.1}")
}

fn words(a: IpAddr) -> [u32; 4] {
    match a {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

/// The flow table key of a packet from `client:cport` to `server:sport`, as the program
/// computes it.
fn flow_key(client: IpAddr, cport: u16, server: IpAddr, sport: u16, proto: u8) -> FlowKey {
    let family = if client.is_ipv4() { 4 } else { 6 };
    FlowKey::canonical(words(client), cport, words(server), sport, proto, family).0
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    fn proto(self) -> u8 {
        match self {
            L4::Tcp => 6,
            L4::Udp => 17,
        }
    }
}

/// One packet of a flow, from the client (`to_server`) or from the server.
#[expect(
    clippy::too_many_arguments,
    reason = "a packet's whole description, each field used once"
)]
fn frame(
    l4: L4,
    client: IpAddr,
    cport: u16,
    server: IpAddr,
    sport: u16,
    to_server: bool,
    flags: u8,
    payload: &[u8],
) -> Result<Vec<u8>> {
    let (src, sp, dst, dp) = if to_server {
        (client, cport, server, sport)
    } else {
        (server, sport, client, cport)
    };
    Ok(match (l4, src, dst) {
        (L4::Tcp, IpAddr::V4(s), IpAddr::V4(d)) => tcp4(s, sp, d, dp, flags, payload),
        (L4::Tcp, IpAddr::V6(s), IpAddr::V6(d)) => tcp6(s, sp, d, dp, flags, payload),
        (L4::Udp, IpAddr::V4(s), IpAddr::V4(d)) => udp4(s, sp, d, dp, payload),
        (L4::Udp, IpAddr::V6(s), IpAddr::V6(d)) => udp6(s, sp, d, dp, payload),
        _ => bail!("client {client} and server {server} are of different families"),
    })
}

fn app_id(c: &Compiled, name: &str) -> Result<u16> {
    c.app_id(name)
        .ok_or_else(|| anyhow!("app {name} missing from the catalogue"))
}

fn load(compiled: &Compiled) -> Result<(Dataplane, BenchRefs)> {
    let mut dp = Dataplane::load(FLOW_CAPACITY)?;
    dp.apply_offline(compiled)?;
    Ok((dp, BenchRefs::load(FLOW_CAPACITY)?))
}

// ---------------------------------------------------------------------------------------------
// Decided flows.

struct Shape {
    name: &'static str,
    /// What the reference records call this packet shape; `None`: no reference record.
    ref_label: Option<&'static str>,
    client: IpAddr,
    server: IpAddr,
    vlan: bool,
    kind: Decided,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Decided {
    /// Slack's ClientHello decides the flow `allow`.
    Allowed,
    /// WhatsApp's decides it `drop`.
    Dropped,
    /// A non-IM ClientHello, then payload both ways until inspection gives up: unclassified,
    /// allowed.
    AfterInspection,
}

/// The decided-flow shapes, measured in turn; `between` runs every few rounds.
#[expect(clippy::too_many_lines, reason = "mostly the table of shapes")]
fn decided(plan: &Plan, compiled: &Compiled, between: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    let (mut dp, refs) = load(compiled)?;
    let v4 = (IpAddr::V4(CLIENT4), IpAddr::V4(SERVER4));
    let v6 = (IpAddr::V6(CLIENT6), IpAddr::V6(SERVER6));
    let shapes = [
        Shape {
            name: "decided flow, allowed, IPv4",
            ref_label: Some("IPv4"),
            client: v4.0,
            server: v4.1,
            vlan: false,
            kind: Decided::Allowed,
        },
        Shape {
            name: "decided flow, dropped, IPv4",
            ref_label: None,
            client: v4.0,
            server: v4.1,
            vlan: false,
            kind: Decided::Dropped,
        },
        Shape {
            name: "decided flow, allowed, IPv6",
            ref_label: Some("IPv6"),
            client: v6.0,
            server: v6.1,
            vlan: false,
            kind: Decided::Allowed,
        },
        Shape {
            name: "decided flow, dropped, IPv6",
            ref_label: None,
            client: v6.0,
            server: v6.1,
            vlan: false,
            kind: Decided::Dropped,
        },
        Shape {
            name: "decided flow, allowed, IPv4, 802.1Q VLAN",
            ref_label: Some("IPv4, 802.1Q VLAN"),
            client: v4.0,
            server: v4.1,
            vlan: true,
            kind: Decided::Allowed,
        },
        Shape {
            name: "decided flow, allowed, IPv6, 802.1Q VLAN",
            ref_label: Some("IPv6, 802.1Q VLAN"),
            client: v6.0,
            server: v6.1,
            vlan: true,
            kind: Decided::Allowed,
        },
        Shape {
            name: "non-IM packet after inspection ended (unclassified, allowed), IPv4",
            ref_label: None,
            client: v4.0,
            server: v4.1,
            vlan: false,
            kind: Decided::AfterInspection,
        },
    ];
    // Every shape's flow is decided first; then the shapes take turns, a round of each in a
    // rotating order, so that each shape's rounds sample the whole measurement (about two
    // minutes) and a stretch of load from another tenant falls on all shapes alike.
    let mut flows = Vec::new();
    for (i, s) in shapes.iter().enumerate() {
        // A flow of its own per shape: ports differ.
        let cport = 40_000 + i as u16;
        let (data, action) = setup_decided(&mut dp, compiled, s, cport)?;
        // The reference's entry for this flow: created by the first run, warm after it.
        refs.run(Reference::Stateful, &data)?;
        let key = flow_key(s.client, cport, s.server, 443, 6);
        if refs.flow(&key)?.is_none() {
            bail!(
                "{}: the stateful reference kept no entry for the flow",
                s.name
            );
        }
        flows.push((data, action, s.name));
    }
    eprintln!(
        "bench_xdp: decided flows: {} shapes, {} rounds, a call of each program per shape and round, the shapes in turn",
        shapes.len(),
        plan.rounds
    );
    let all = repeat_rounds(plan, &dp, &refs, &flows, between)?;
    let mut empty_ipv4 = None;
    for (i, (s, m)) in shapes.iter().zip(&all).enumerate() {
        let (data, action, _) = &flows[i];
        let (imfw, stateful, empty) = (
            low(&m.imfw),
            low(&m.stateful),
            low(&m.empty),
        );
        let note = format!(
            "{} of {} rounds, each one call of {} runs (BPF_PROG_TEST_RUN) of imfw, the stateful reference and the empty program, in \
             a rotating order, on one {}-byte data packet of a flow decided beforehand (warm entry); medians: imfw {:.1} ns, \
             reference {:.1} ns (ratio {:.2}); imfw's rounds {} ns",
            quantile_name(),
            m.imfw.len(),
            plan.repeat,
            data.len(),
            median(&m.imfw),
            median(&m.stateful),
            median(&m.imfw) / median(&m.stateful),
            spread(&m.imfw)
        );
        let target =
            (s.kind != Decided::AfterInspection).then(|| json!({"ratio_max": DECIDED_RATIO_MAX}));
        let verdict = if stateful > 0.0 && imfw / stateful <= DECIDED_RATIO_MAX {
            "met"
        } else {
            "not met"
        };
        let label = format!("stateful reference, warm flow, {}", shape_label(s));
        record(
            s.name,
            imfw,
            Some((&label, stateful)),
            target.clone(),
            &note,
        )?;
        eprintln!(
            "bench_xdp: {}: imfw {imfw:.1} ns, stateful reference {stateful:.1} ns (ratio {:.2}{}), empty {empty:.1} ns",
            s.name,
            imfw / stateful,
            if target.is_some() { format!(", target {DECIDED_RATIO_MAX}: {verdict}") } else { String::new() }
        );
        if let Some(shape) = s.ref_label {
            record(
                &format!("stateful reference, warm flow, {shape}"),
                stateful,
                Some(("empty program", empty)),
                None,
                &format!(
                    "{} of {} rounds, {} runs per call, same packet as \"{}\"; the reference parses L2-L4, does one LRU lookup (capacity {FLOW_CAPACITY}) and counts the packet",
                    quantile_name(),
                    m.stateful.len(),
                    plan.repeat,
                    s.name
                ),
            )?;
            if empty_ipv4.is_none() {
                empty_ipv4 = Some((empty, m.empty.len()));
            }
        }
        if i == 0 {
            calibrate(plan, &dp, &refs, data, *action, s.name)?;
        }
    }
    if let Some((empty, n)) = empty_ipv4 {
        record(
            "empty program (floor), repeated runs",
            empty,
            None,
            None,
            &format!("XDP_PASS and nothing else; {} of {n} rounds, {} runs per call, same IPv4 packet as \"decided flow, allowed, IPv4\"", quantile_name(), plan.repeat),
        )?;
    }
    Ok(())
}

fn shape_label(s: &Shape) -> String {
    let family = if s.client.is_ipv4() { "IPv4" } else { "IPv6" };
    if s.vlan {
        format!("{family}, 802.1Q VLAN")
    } else {
        family.to_owned()
    }
}

/// Decides the shape's flow in imfw and returns a data packet of it with the action it must get.
fn setup_decided(
    dp: &mut Dataplane,
    compiled: &Compiled,
    s: &Shape,
    cport: u16,
) -> Result<(Vec<u8>, u32)> {
    let tag = |f: Vec<u8>| if s.vlan { with_vlan(&f, 100) } else { f };
    let pkt = |to_server: bool, flags: u8, payload: &[u8]| -> Result<Vec<u8>> {
        Ok(tag(frame(
            L4::Tcp,
            s.client,
            cport,
            s.server,
            443,
            to_server,
            flags,
            payload,
        )?))
    };
    let key = flow_key(s.client, cport, s.server, 443, 6);
    dp.test_run(&pkt(true, tcp_flags::SYN, &[])?)?;
    dp.test_run(&pkt(false, tcp_flags::SYN | tcp_flags::ACK, &[])?)?;
    dp.test_run(&pkt(true, tcp_flags::ACK, &[])?)?;
    let psh = tcp_flags::PSH | tcp_flags::ACK;
    let (app, action) = match s.kind {
        Decided::Allowed => {
            dp.test_run(&pkt(true, psh, &ClientHello::new("slack.com").build())?)?;
            (app_id(compiled, "slack")?, XDP_PASS)
        }
        Decided::Dropped => {
            dp.test_run(&pkt(
                true,
                psh,
                &ClientHello::new("web.whatsapp.com").build(),
            )?)?;
            (app_id(compiled, "whatsapp")?, XDP_DROP)
        }
        Decided::AfterInspection => {
            dp.test_run(&pkt(
                true,
                psh,
                &ClientHello::new("www.example.com").build(),
            )?)?;
            // More payload packets each way than the budget: inspection then gives up.
            let budget = compiled.config.inspect_packets as usize;
            let data = opaque(200);
            for _ in 0..=budget {
                dp.test_run(&pkt(false, psh, &data)?)?;
                dp.test_run(&pkt(true, psh, &data)?)?;
            }
            (0, XDP_PASS)
        }
    };
    let e = dp
        .flow(&key)?
        .ok_or_else(|| anyhow!("{}: imfw kept no entry for the flow", s.name))?;
    if e.state != STATE_DECIDED || e.app != app {
        bail!(
            "{}: the flow is not decided as set up (state {}, app {}, expected app {app})",
            s.name,
            e.state,
            e.app
        );
    }
    let data = pkt(true, psh, &opaque(100))?;
    let got = dp.test_run(&data)?;
    if got != action {
        bail!(
            "{}: a data packet of the decided flow got XDP action {got}, expected {action}",
            s.name
        );
    }
    dp.drain_events();
    Ok((data, action))
}

#[derive(Default)]
struct Batches {
    imfw: Vec<f64>,
    stateful: Vec<f64>,
    empty: Vec<f64>,
}

/// Rounds of `plan.repeat` runs per call: per round, for every flow (data packet, action,
/// name) in a rotating order, one call each of imfw, the stateful reference and the empty
/// program, in a rotating order too. `between` runs every few rounds, spread evenly (the
/// first-packet rounds). Returns each flow's batches.
fn repeat_rounds(
    plan: &Plan,
    dp: &Dataplane,
    refs: &BenchRefs,
    flows: &[(Vec<u8>, u32, &str)],
    between: &mut dyn FnMut() -> Result<()>,
) -> Result<Vec<Batches>> {
    let mut all: Vec<Batches> = flows.iter().map(|_| Batches::default()).collect();
    // Warm-up: one short call each.
    for (data, _, _) in flows {
        dp.test_run_timed(data, plan.repeat / 10)?;
        refs.run_timed(Reference::Stateful, data, plan.repeat / 10)?;
        refs.run_timed(Reference::Empty, data, plan.repeat / 10)?;
    }
    let cap = plan.case_cap * u32::try_from(flows.len()).unwrap_or(u32::MAX);
    let every = (plan.rounds / plan.batches.max(1)).max(1);
    let mut spent = Duration::ZERO;
    for b in 0..plan.rounds {
        if b >= MIN_ROUNDS && spent > cap {
            eprintln!("bench_xdp:   time cap reached after {b} rounds");
            break;
        }
        let t = Instant::now();
        for j in 0..flows.len() {
            let f = (j + b) % flows.len();
            let ((data, action, name), m) = (&flows[f], &mut all[f]);
            for k in 0..3 {
                match (b + k) % 3 {
                    0 => {
                        let (a, ns) = dp.test_run_timed(data, plan.repeat)?;
                        if a != *action {
                            bail!("{name}: imfw returned XDP action {a}, expected {action}");
                        }
                        m.imfw.push(ns);
                    }
                    1 => {
                        let (a, ns) = refs.run_timed(Reference::Stateful, data, plan.repeat)?;
                        if a != XDP_PASS {
                            bail!("{name}: the stateful reference returned XDP action {a}");
                        }
                        m.stateful.push(ns);
                    }
                    _ => m
                        .empty
                        .push(refs.run_timed(Reference::Empty, data, plan.repeat)?.1),
                }
            }
        }
        spent += t.elapsed();
        if b % every == every / 2 {
            between()?;
        }
    }
    Ok(all)
}

/// The decided path measured as first packets are (one run per call): set against the same
/// path in repeated runs, it shows how much the per-call method itself adds to a figure.
fn calibrate(
    plan: &Plan,
    dp: &Dataplane,
    refs: &BenchRefs,
    data: &[u8],
    action: u32,
    name: &str,
) -> Result<()> {
    let mut m = Batches::default();
    let start = Instant::now();
    for b in 0..plan.batches {
        if b >= MIN_BATCHES && start.elapsed() > plan.case_cap {
            break;
        }
        let (mut bi, mut bs, mut be) = (
            Vec::with_capacity(plan.samples),
            Vec::with_capacity(plan.samples),
            Vec::with_capacity(plan.samples),
        );
        for n in 0..plan.samples {
            for k in 0..3 {
                match (n + k) % 3 {
                    0 => {
                        let (a, ns) = dp.test_run_timed(data, 1)?;
                        if a != action {
                            bail!("{name}: imfw returned XDP action {a}, expected {action}");
                        }
                        bi.push(ns);
                    }
                    1 => bs.push(refs.run_timed(Reference::Stateful, data, 1)?.1),
                    _ => be.push(refs.run_timed(Reference::Empty, data, 1)?.1),
                }
            }
        }
        m.imfw.push(median(&bi));
        m.stateful.push(median(&bs));
        m.empty.push(median(&be));
    }
    let (imfw, stateful, empty) = (low(&m.imfw), low(&m.stateful), low(&m.empty));
    record(
        &format!("{name}, one run per call (calibration of the first-packet method)"),
        imfw,
        Some(("stateful reference, warm flow, one run per call", stateful)),
        None,
        &format!(
            "the decided path measured as the first packets are: {} of {} batch medians, each over {} calls with repeat 1 \
             (per-call floor, empty program, {empty:.1} ns, included); compare with the repeated-run figure of the same packet \
             to see what the per-call method adds",
            low_name(),
            m.imfw.len(),
            plan.samples
        ),
    )?;
    eprintln!("bench_xdp:   one run per call: imfw {imfw:.1} ns, stateful reference {stateful:.1} ns, empty {empty:.1} ns");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// First payload packets.

struct FirstCase {
    name: &'static str,
    l4: L4,
    v6: bool,
    server: IpAddr,
    port: u16,
    payload: Vec<u8>,
    /// TCP: the SYN runs first (untimed), as after a real handshake.
    handshake: bool,
    /// Expected flow entry after the packet: app name (None: no app), method, state.
    app: Option<&'static str>,
    method: Method,
    state: u8,
    action: u32,
    target: Option<Value>,
}

fn first_cases(monitor_hold: bool) -> Vec<FirstCase> {
    let s4 = IpAddr::V4(SERVER4);
    let tls_im = ClientHello::new("web.whatsapp.com").build();
    let case = |name, l4, server: IpAddr, port, payload: Vec<u8>, app, method, action| FirstCase {
        name,
        l4,
        v6: server.is_ipv6(),
        server,
        port,
        payload,
        handshake: l4 == L4::Tcp,
        app,
        method,
        state: STATE_DECIDED,
        action,
        target: None,
    };
    let tls_target = Some(json!({"value_max": TLS_FIRST_NS_MAX}));
    vec![
        FirstCase {
            target: tls_target.clone(),
            ..case("first payload packet, TLS server name, IM (web.whatsapp.com, dropped), IPv4", L4::Tcp, s4, 443, tls_im.clone(), Some("whatsapp"), Method::TlsSni, XDP_DROP)
        },
        FirstCase {
            target: tls_target,
            ..case("first payload packet, TLS server name, not IM (www.example.com), IPv4", L4::Tcp, s4, 443, ClientHello::new("www.example.com").build(), None, Method::None, XDP_PASS)
        },
        case(
            "first payload packet, TLS server name, IM (web.whatsapp.com, dropped), IPv6",
            L4::Tcp,
            IpAddr::V6(SERVER6),
            443,
            tls_im.clone(),
            Some("whatsapp"),
            Method::TlsSni,
            XDP_DROP,
        ),
        FirstCase {
            handshake: false,
            ..case(
                "first packet of a flow without handshake seen, TLS server name, IM (entry created by this packet), IPv4",
                L4::Tcp,
                s4,
                443,
                tls_im,
                Some("whatsapp"),
                Method::TlsSni,
                XDP_DROP,
            )
        },
        case("first payload packet, byte signature, MQTT CONNECT (allowed), IPv4", L4::Tcp, s4, 1883, mqtt_connect(4, "sensor-17"), Some("mqtt"), Method::Signature, XDP_PASS),
        // With `monitor.hold` (the default) the first segment is held (dropped) until the
        // controller has read it.
        case(
            "first payload packet, byte signature, IRC registration (monitored: copied to the controller), IPv4",
            L4::Tcp,
            s4,
            6667,
            irc_registration("alice"),
            Some("irc"),
            Method::Signature,
            if monitor_hold { XDP_DROP } else { XDP_PASS },
        ),
        case("first payload packet, HTTP Host (web.telegram.org, dropped), IPv4", L4::Tcp, s4, 80, http_get("web.telegram.org", "/"), Some("telegram"), Method::HttpHost, XDP_DROP),
        case("first packet, STUN binding request with a Teams attribute (allowed), UDP IPv4", L4::Udp, s4, 3478, stun_teams(), Some("teams"), Method::Stun, XDP_PASS),
        case(
            "first payload packet, address set (telegram network, opaque payload, dropped), IPv4",
            L4::Tcp,
            IpAddr::V4(TELEGRAM4),
            443,
            opaque(64),
            Some("telegram"),
            Method::Address,
            XDP_DROP,
        ),
    ]
}

/// A STUN Binding Request (RFC 8489 §5) whose attributes are MS-Version (0x8008, [MS-TURN]
/// §2.2.2.1: a Teams client's) and SOFTWARE.
fn stun_teams() -> Vec<u8> {
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&0x8008u16.to_be_bytes());
    attrs.extend_from_slice(&4u16.to_be_bytes());
    attrs.extend_from_slice(&6u32.to_be_bytes());
    let software = b"imfw-bench";
    attrs.extend_from_slice(&0x8022u16.to_be_bytes());
    attrs.extend_from_slice(&(software.len() as u16).to_be_bytes());
    attrs.extend_from_slice(software);
    attrs.resize(attrs.len().next_multiple_of(4), 0);
    let mut m = Vec::new();
    m.extend_from_slice(&0x0001u16.to_be_bytes());
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&0x2112_a442u32.to_be_bytes());
    m.extend_from_slice(&[0x5a; 12]);
    m.extend_from_slice(&attrs);
    m
}

/// The client of new flow `n`: distinct (address, port) pairs.
fn new_client(v6: bool, n: usize) -> (IpAddr, u16) {
    let port = 10_000 + (n % 50_000) as u16;
    let host = (n / 50_000) as u32 + 1;
    let client = if v6 {
        IpAddr::V6(Ipv6Addr::from(
            u128::from(CLIENT6) & !0xffff_ffff | u128::from(host),
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | host))
    };
    (client, port)
}

/// One first-packet case under measurement: where its flows live and its batches so far.
struct FirstRun {
    case: FirstCase,
    /// The app its flows must end with (0: none).
    app: u16,
    /// Which loaded programs (index into the loads) its flows go to.
    load: usize,
    /// Its next new flow's number.
    next: usize,
    m: Batches,
}

/// The first-packet cases, loaded and warmed up, measured a few rounds at a time.
struct FirstPackets {
    loads: Vec<(Dataplane, BenchRefs)>,
    runs: Vec<FirstRun>,
    /// Rounds measured so far (a batch of every case each).
    rounds: usize,
    /// Time spent measuring them.
    spent: Duration,
}

impl FirstPackets {
    fn start(plan: &Plan, compiled: &Compiled) -> Result<FirstPackets> {
        let per_case = plan.warmup + plan.batches * plan.samples;
        if per_case > FLOW_CAPACITY as usize / 2 {
            bail!("{per_case} new flows per case would fill more than half of the flow table ({FLOW_CAPACITY})");
        }
        // Loading takes about a second (imfw's verifier run), so cases share the programs; a
        // case gets fresh ones (empty tables) where it would take the tables past half full,
        // where an LRU table starts to evict.
        let mut loads: Vec<(Dataplane, BenchRefs)> = Vec::new();
        let mut runs = Vec::new();
        let mut used = usize::MAX;
        for case in first_cases(compiled.config.monitor_hold != 0) {
            if used.saturating_add(per_case) > FLOW_CAPACITY as usize / 2 {
                let t = Instant::now();
                loads.push(load(compiled)?);
                eprintln!(
                    "bench_xdp: first packets: programs loaded in {:.2} s",
                    t.elapsed().as_secs_f64()
                );
                used = 0;
            }
            let app = match case.app {
                Some(a) => app_id(compiled, a)?,
                None => 0,
            };
            runs.push(FirstRun {
                case,
                app,
                load: loads.len() - 1,
                next: used,
                m: Batches::default(),
            });
            used += per_case;
        }
        eprintln!(
            "bench_xdp: first packets: {} cases, {} rounds of a batch each, spread over the run",
            runs.len(),
            plan.batches
        );
        for r in &mut runs {
            let (dp, refs) = &mut loads[r.load];
            for _ in 0..plan.warmup {
                first_sample(&r.case, r.next, None, dp, refs)?;
                r.next += 1;
            }
        }
        Ok(FirstPackets {
            loads,
            runs,
            rounds: 0,
            spent: Duration::ZERO,
        })
    }

    /// Up to `count` more rounds: a batch of every case, in an order that rotates from round
    /// to round. Past the time cap, no round beyond `MIN_BATCHES`.
    fn rounds(&mut self, plan: &Plan, count: usize) -> Result<()> {
        let cap = plan.case_cap * u32::try_from(self.runs.len()).unwrap_or(u32::MAX);
        let cases = self.runs.len();
        for _ in 0..count {
            if self.rounds == plan.batches || (self.rounds >= MIN_BATCHES && self.spent > cap) {
                return Ok(());
            }
            let t = Instant::now();
            for j in 0..cases {
                let r = &mut self.runs[(j + self.rounds) % cases];
                let (dp, refs) = &mut self.loads[r.load];
                first_batch(plan, r, dp, refs)?;
            }
            self.spent += t.elapsed();
            self.rounds += 1;
        }
        Ok(())
    }

    /// The rounds still to do, the tables' checks and the records.
    fn finish(mut self, plan: &Plan) -> Result<()> {
        self.rounds(plan, plan.batches)?;
        if self.rounds < plan.batches {
            eprintln!("bench_xdp: first packets: time cap reached after {} rounds", self.rounds);
        }
        for (i, (dp, _)) in self.loads.iter_mut().enumerate() {
            dp.drain_events();
            let snap = dp.snapshot()?;
            for st in [Stat::FlowInsertFailed, Stat::EventsLost, Stat::StreamLost] {
                if snap.stat(st) > 0 {
                    bail!(
                        "first packets, programs {i}: {} {} during the measurement: the tables or the ring were too small",
                        snap.stat(st),
                        st.name()
                    );
                }
            }
        }
        let mut floors = Vec::new();
        for FirstRun { case, m, .. } in &self.runs {
            report_first(plan, case, m)?;
            floors.extend_from_slice(&m.empty);
        }
        let floor = low(&floors);
        record(
            "per-call floor: empty program, one run per call",
            floor,
            None,
            None,
            &format!(
                "the empty program measured as the first packets are (repeat 1 per call, interleaved with them): what one timed run \
                 costs with nothing in it; {} of all {} batch medians of the first-packet cases",
                low_name(),
                floors.len()
            ),
        )?;
        Ok(())
    }
}

/// The record of one first-packet case.
fn report_first(plan: &Plan, case: &FirstCase, m: &Batches) -> Result<()> {
    let (imfw, stateful, empty) = (low(&m.imfw), low(&m.stateful), low(&m.empty));
    let how = if case.handshake {
        "its SYN ran first, untimed, so the entry exists as after the handshake"
    } else if case.l4 == L4::Udp {
        "a UDP flow has no handshake: this packet creates the entry"
    } else {
        "no SYN seen: this packet creates the entry"
    };
    let mut note = format!(
        "{} of {} batch medians, each over {} new flows, one run per BPF_PROG_TEST_RUN call ({how}); the cases take turns, a \
         batch each; reference: the stateful program on the same packets of the same flows; per-call floor (empty program, same \
         calls) {empty:.1} ns, included; medians of the batch medians: imfw {:.1} ns, stateful reference {:.1} ns; imfw batch \
         medians {} ns (in order: {})",
        low_name(),
        m.imfw.len(),
        plan.samples,
        median(&m.imfw),
        median(&m.stateful),
        spread(&m.imfw),
        m.imfw.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" ")
    );
    if case.target.is_some() {
        let met = imfw <= TLS_FIRST_NS_MAX;
        let _ = write!(
            note,
            "; target {TLS_FIRST_NS_MAX} ns {}",
            if met { "met" } else { "not met" }
        );
        if !met {
            let net = imfw - empty;
            let side = if net <= TLS_FIRST_NS_MAX {
                "within the target"
            } else {
                "still above it"
            };
            let _ = write!(note, " ({net:.1} ns less the per-call floor: {side})");
        }
    }
    record(
        case.name,
        imfw,
        Some(("stateful reference, same first packets", stateful)),
        case.target.clone(),
        &note,
    )?;
    eprintln!(
        "bench_xdp: {}: imfw {imfw:.1} ns, stateful reference {stateful:.1} ns, per-call floor {empty:.1} ns",
        case.name
    );
    Ok(())
}

/// New flow `n` of `case`: imfw, the stateful reference and the empty program in a rotating
/// order, each checked; with `keep`, the three durations are pushed there.
fn first_sample(
    case: &FirstCase,
    n: usize,
    keep: Option<(&mut Vec<f64>, &mut Vec<f64>, &mut Vec<f64>)>,
    dp: &mut Dataplane,
    refs: &BenchRefs,
) -> Result<()> {
    let (client, cport) = new_client(case.v6, n);
    let payload = frame(
        case.l4,
        client,
        cport,
        case.server,
        case.port,
        true,
        tcp_flags::PSH | tcp_flags::ACK,
        &case.payload,
    )?;
    let syn = if case.handshake {
        Some(frame(
            L4::Tcp,
            client,
            cport,
            case.server,
            case.port,
            true,
            tcp_flags::SYN,
            &[],
        )?)
    } else {
        None
    };
    let (mut ti, mut ts, mut te) = (0.0, 0.0, 0.0);
    for k in 0..3 {
        match (n + k) % 3 {
            0 => {
                if let Some(syn) = &syn {
                    dp.test_run(syn)?;
                }
                let (a, ns) = dp.test_run_timed(&payload, 1)?;
                if a != case.action {
                    bail!(
                        "{}: imfw returned XDP action {a}, expected {}",
                        case.name,
                        case.action
                    );
                }
                ti = ns;
            }
            1 => {
                if let Some(syn) = &syn {
                    refs.run(Reference::Stateful, syn)?;
                }
                let (a, ns) = refs.run_timed(Reference::Stateful, &payload, 1)?;
                if a != XDP_PASS {
                    bail!(
                        "{}: the stateful reference returned XDP action {a}",
                        case.name
                    );
                }
                ts = ns;
            }
            _ => te = refs.run_timed(Reference::Empty, &payload, 1)?.1,
        }
    }
    if let Some((i, s, e)) = keep {
        i.push(ti);
        s.push(ts);
        e.push(te);
    }
    if n.is_multiple_of(DRAIN_EVERY) {
        dp.drain_events();
    }
    Ok(())
}

/// One batch of a first-packet case: `plan.samples` new flows, then a check that the last
/// one took the path the case names.
fn first_batch(plan: &Plan, r: &mut FirstRun, dp: &mut Dataplane, refs: &BenchRefs) -> Result<()> {
    let case = &r.case;
    let (mut bi, mut bs, mut be) = (
        Vec::with_capacity(plan.samples),
        Vec::with_capacity(plan.samples),
        Vec::with_capacity(plan.samples),
    );
    for _ in 0..plan.samples {
        first_sample(case, r.next, Some((&mut bi, &mut bs, &mut be)), dp, refs)?;
        r.next += 1;
    }
    let (client, cport) = new_client(case.v6, r.next - 1);
    let key = flow_key(client, cport, case.server, case.port, case.l4.proto());
    let entry = dp
        .flow(&key)?
        .ok_or_else(|| anyhow!("{}: imfw kept no entry for a measured flow", case.name))?;
    if entry.app != r.app || entry.method != case.method as u8 || entry.state != case.state {
        bail!(
            "{}: the flow was not classified as the case says (app {}, method {}, state {}; expected app {}, method {}, state {})",
            case.name,
            entry.app,
            entry.method,
            entry.state,
            r.app,
            case.method as u8,
            case.state
        );
    }
    if refs.flow(&key)?.is_none() {
        bail!(
            "{}: the stateful reference kept no entry for a measured flow",
            case.name
        );
    }
    r.m.imfw.push(median(&bi));
    r.m.stateful.push(median(&bs));
    r.m.empty.push(median(&be));
    Ok(())
}
