//! Benchmark scenarios 3 (new flows) and 4 (scaling) of `cargo xtask bench`: how fast a core
//! sets up flows, what a SYN flood larger than the flow table does to decided flows, and how the
//! cost per packet and the memory grow with blocked domains, address ranges and flows.
//!
//! Run as root: `bench_scale [--quick]`. Progress goes to stderr; stdout carries one JSON record
//! per line (the bench's record format) and nothing else. Every figure is the kernel's own
//! duration of `BPF_PROG_TEST_RUN`; no packet leaves the machine.
//!
//! Two ways of timing, chosen by what is measured:
//! - a first packet (a flow's SYN, its first payload) must meet a table without its entry, so
//!   each run is a distinct new flow, run once, and a batch's figure is the mean over its flows;
//! - a packet of a decided flow is the same packet repeated, the kernel's mean over `repeat`.
//!
//! Figures are the median over batches, after a warm-up batch. Scaling configurations are
//! measured interleaved (a batch of each in turn) so that drift from other load on the machine
//! falls on all of them alike.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use imfw::{dataplane::Dataplane, policy};
use imfw_common::{
    flow::{FlowEntry, FlowKey, STATE_DECIDED},
    maps as m,
    verdict::{Stat, Verdict},
};
use imfw_tests::packets::{ETH_P_ARP, Ethernet, tcp4, tcp_flags};
use imfw_tests::protocols::ClientHello;
use serde_json::{Value, json};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const IPPROTO_TCP: u8 = 6;

/// The server of the synthetic flows (documentation range, never reached: nothing leaves
/// `BPF_PROG_TEST_RUN`).
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// A name no app claims, with five suffixes to look up.
const OTHER_NAME: &str = "static.assets.cdn.example.org";
/// Capacity of the flow table for the SYN floods: small, so that ten times it stays quick.
const FLOOD_CAPACITY: u32 = 65_536;
/// Capacity of the flow table for the flows scaling (both sizes, so that only occupancy differs).
const BIG_CAPACITY: u32 = 1 << 20;

/// Sizes of one run.
struct Plan {
    quick: bool,
    /// Timed batches per figure (after one warm-up batch).
    batches: usize,
    /// New flows per batch for the flow-setup figures.
    setup_flows: u32,
    /// New flows per batch and configuration for the scaling figures.
    scale_flows: u32,
    /// Repeats per batch for decided-flow figures.
    repeat: u32,
    /// Flows in the large table.
    big_flows: u32,
    /// Decided flows touched during a flood: one packet to one of them every this many SYNs.
    touch_every: u32,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan { quick, batches: 5, setup_flows: 2_000, scale_flows: 1_000, repeat: 200_000, big_flows: 1_000_000, touch_every: 16 }
        } else {
            Plan { quick, batches: 9, setup_flows: 10_000, scale_flows: 4_000, repeat: 1_000_000, big_flows: 1_000_000, touch_every: 16 }
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_scale: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut quick = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--quick" => quick = true,
            "-h" | "--help" => {
                eprintln!("usage: bench_scale [--quick]\n  scenarios new-flows and scaling of `cargo xtask bench`; JSON records on stdout");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (expected --quick)"),
        }
    }
    let plan = Plan::new(quick);
    let start = Instant::now();
    new_flows(&plan)?;
    eprintln!("[{:>5.1} s] new flows done", start.elapsed().as_secs_f64());
    for mult in [1, 10] {
        flood(&plan, mult)?;
        eprintln!("[{:>5.1} s] SYN flood {mult}x done", start.elapsed().as_secs_f64());
    }
    domains(&plan)?;
    eprintln!("[{:>5.1} s] domains done", start.elapsed().as_secs_f64());
    ranges(&plan)?;
    eprintln!("[{:>5.1} s] ranges done", start.elapsed().as_secs_f64());
    flows_scaling(&plan)?;
    eprintln!("[{:>5.1} s] flows done", start.elapsed().as_secs_f64());
    memory()?;
    eprintln!("[{:>5.1} s] memory done", start.elapsed().as_secs_f64());
    Ok(())
}

/// Prints one record on stdout.
fn emit(record: &Value) {
    println!("{record}");
}

fn compile(text: &str, what: &str) -> Result<policy::Compiled> {
    policy::parse(text, "bench-policy.yaml")
        .and_then(|p| p.compile())
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("compiling the {what} policy"))
}

fn load(capacity: u32, c: &policy::Compiled) -> Result<Dataplane> {
    let mut dp = Dataplane::load(capacity).with_context(|| format!("loading the data plane (flow table of {capacity})"))?;
    dp.apply_offline(c)?;
    Ok(dp)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => f64::midpoint(s[n / 2 - 1], s[n / 2]),
    }
}

fn rate(ns: f64) -> f64 {
    (1e9 / ns).round()
}

/// Rounds a figure to one decimal for the records.
fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Distinct clients for new flows: 60,000 ports per address from 100.64.0.0 (shared address
/// space, synthetic here).
struct Clients {
    next: u32,
}

impl Clients {
    fn new(first: u32) -> Clients {
        Clients { next: first }
    }

    fn take(&mut self) -> (Ipv4Addr, u16) {
        let i = self.next;
        self.next += 1;
        let port = 1024 + u16::try_from(i % 60_000).unwrap_or(0);
        (Ipv4Addr::from(0x6440_0000 + i / 60_000), port)
    }
}

/// The flow table's key of a TCP flow from `src:sport` to `dst:dport`, as the program makes it.
fn key4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> FlowKey {
    let a = |ip: Ipv4Addr| [u32::from_ne_bytes(ip.octets()), 0, 0, 0];
    FlowKey::canonical(a(src), sport, a(dst), dport, IPPROTO_TCP, 4).0
}

fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr) -> Vec<u8> {
    tcp4(src, sport, dst, 443, tcp_flags::SYN, &[])
}

fn data(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    tcp4(src, sport, dst, 443, tcp_flags::ACK | tcp_flags::PSH, payload)
}

/// Runs `frame` once and returns the kernel's duration of that one run.
fn once(dp: &Dataplane, frame: &[u8]) -> Result<(u32, f64)> {
    dp.test_run_timed(frame, 1)
}

/// Drains the event ring every 256 flows, as the controller would.
fn drain_now_and_then(dp: &mut Dataplane, i: u32) {
    if i % 256 == 255 {
        dp.drain_events();
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario 3: new flows
// ---------------------------------------------------------------------------------------------

fn new_flows(plan: &Plan) -> Result<()> {
    eprintln!("new flows: {} batches of {} distinct flows, one run each", plan.batches, plan.setup_flows);
    let c = compile(policy::default_policy_text(), "default")?;
    let mut dp = load(m::FLOWS_DEFAULT, &c)?;
    let hello = ClientHello::new(OTHER_NAME).build();
    let mut clients = Clients::new(0);
    let (mut syns, mut firsts, mut both) = (Vec::new(), Vec::new(), Vec::new());
    let mut wall = Vec::new();
    let mut syn_action = None;
    for batch in 0..=plan.batches {
        // Enough room left in the table: no eviction is timed here.
        if clients.next + plan.setup_flows > m::FLOWS_DEFAULT / 2 {
            dp = load(m::FLOWS_DEFAULT, &c)?;
            clients = Clients::new(0);
        }
        let (mut s_ns, mut p_ns) = (0.0, 0.0);
        let t = Instant::now();
        for i in 0..plan.setup_flows {
            let (ip, port) = clients.take();
            let (act, ns) = once(&dp, &syn(ip, port, SERVER))?;
            syn_action.get_or_insert(act);
            s_ns += ns;
            let (_, ns) = once(&dp, &data(ip, port, SERVER, &hello))?;
            p_ns += ns;
            drain_now_and_then(&mut dp, i);
        }
        let elapsed = t.elapsed();
        if batch == 0 {
            continue; // warm-up
        }
        let n = f64::from(plan.setup_flows);
        syns.push(s_ns / n);
        firsts.push(p_ns / n);
        both.push((s_ns + p_ns) / n);
        wall.push(elapsed.as_secs_f64() / n);
    }
    if syn_action != Some(XDP_PASS) {
        bail!("a new flow's SYN got XDP action {syn_action:?}, expected XDP_PASS");
    }
    let floor = call_floor(&dp, plan)?;
    let (syn_ns, first_ns, both_ns) = (median(&syns), median(&firsts), median(&both));
    let wall_rate = 1.0 / median(&wall);
    let method = format!(
        "kernel duration of one BPF_PROG_TEST_RUN per new flow (repeat 1), mean over {} distinct flows per batch, median of {} batches after a warm-up batch; default policy, flow table of {}",
        plan.setup_flows, plan.batches, m::FLOWS_DEFAULT
    );
    let floor_note = format!(
        "per-call floor: a non-IP frame (which imfw passes after its EtherType check) takes {:.1} ns per one-run call against {:.1} ns averaged over {} repeats, so about {:.1} ns of each one-run figure is timer overhead",
        floor.0,
        floor.1,
        plan.repeat,
        floor.0 - floor.1
    );
    emit(&json!({
        "scenario": "new-flows", "name": "new flow set-up: SYN (flow entry created)",
        "value": rate(syn_ns), "unit": "flows/s", "target": {"value_min": 1_000_000},
        "note": format!("1e9 / {syn_ns:.1} ns per SYN; {method}; {floor_note}"),
    }));
    emit(&json!({
        "scenario": "new-flows", "name": "new flow: first payload packet of a non-IM flow (TLS ClientHello, name in no app)",
        "value": rate(first_ns), "unit": "flows/s", "target": {"value_min": 1_000_000},
        "note": format!("1e9 / {first_ns:.1} ns per first ClientHello ({OTHER_NAME}: signatures, 5 name suffixes, ECH stage), after the flow's SYN; {method}"),
    }));
    emit(&json!({
        "scenario": "new-flows", "name": "new flow: SYN + first payload packet (non-IM TLS)",
        "value": rate(both_ns), "unit": "flows/s", "target": {"value_min": 1_000_000},
        "note": format!(
            "1e9 / {both_ns:.1} ns for both packets of each flow; {method}; through the syscall from userspace (two calls per flow, frames built on the way) the rate was {wall_rate:.0} flows/s"
        ),
    }));
    eprintln!("  SYN {syn_ns:.1} ns, first payload {first_ns:.1} ns, both {both_ns:.1} ns; floor {:.1}/{:.1} ns", floor.0, floor.1);
    Ok(())
}

/// The per-call floor: a frame imfw passes at once (ARP), one run per call (median of batch
/// means) and averaged over `repeat` runs.
fn call_floor(dp: &Dataplane, plan: &Plan) -> Result<(f64, f64)> {
    let arp = Ethernet::default().encode(ETH_P_ARP, &[0u8; 28]);
    let mut one = Vec::new();
    let mut many = Vec::new();
    for _ in 0..=plan.batches {
        let mut sum = 0.0;
        for _ in 0..plan.setup_flows {
            sum += once(dp, &arp)?.1;
        }
        one.push(sum / f64::from(plan.setup_flows));
        many.push(dp.test_run_timed(&arp, plan.repeat)?.1);
    }
    Ok((median(&one[1..]), median(&many[1..])))
}

/// A flow decided before the flood, and what its packets must keep getting.
struct Decided {
    src: Ipv4Addr,
    sport: u16,
    key: FlowKey,
    verdict: Verdict,
    action: u32,
    /// A packet of the flow without payload: after the decision it only meets the verdict.
    ack: Vec<u8>,
}

fn flood(plan: &Plan, mult: u32) -> Result<()> {
    let text = "version: 1\napps:\n  whatsapp: drop\n  telegram: allow\n";
    let c = compile(text, "flood")?;
    let mut dp = load(FLOOD_CAPACITY, &c)?;
    let server = Ipv4Addr::new(198, 51, 100, 30);
    // 100 dropped WhatsApp TLS flows and 100 allowed Telegram TLS flows, from 192.0.2.0/24.
    let mut decided = Vec::new();
    for (name, verdict, action) in [("web.whatsapp.com", Verdict::Drop, XDP_DROP), ("web.telegram.org", Verdict::Allow, XDP_PASS)] {
        let hello = ClientHello::new(name).build();
        for i in 0..100u16 {
            let src = Ipv4Addr::new(192, 0, 2, if verdict == Verdict::Drop { 10 } else { 11 });
            let sport = 20_000 + i;
            dp.test_run(&syn(src, sport, server))?;
            let got = dp.test_run(&data(src, sport, server, &hello))?;
            let key = key4(src, sport, server, 443);
            let e = dp.flow(&key)?.ok_or_else(|| anyhow!("flood set-up: the flow entry of {src}:{sport} is missing"))?;
            if got != action || e.state != STATE_DECIDED || e.verdict != verdict as u8 {
                bail!("flood set-up: {name} from {src}:{sport} got action {got}, state {}, verdict {}; expected {action}, decided, {}", e.state, e.verdict, verdict.name());
            }
            let ack = tcp4(src, sport, server, 443, tcp_flags::ACK, &[]);
            if dp.test_run(&ack)? != action {
                bail!("flood set-up: the next packet of {name} from {src}:{sport} did not get its verdict");
            }
            decided.push(Decided { src, sport, key, verdict, action, ack });
        }
    }
    dp.drain_events();
    let before = dp.snapshot()?;
    let entries_before = dp.flows()?.len() as u64;
    let total = FLOOD_CAPACITY * mult;
    eprintln!("SYN flood {mult}x: {total} new flows into a table of {FLOOD_CAPACITY}, {} decided flows each touched every {} SYNs", decided.len(), plan.touch_every * decided.len() as u32);
    let mut clients = Clients::new(0);
    let mut ns_sum = 0.0;
    let mut touched = 0usize;
    let mut wrong_during = 0u64;
    let t = Instant::now();
    for i in 0..total {
        let (ip, port) = clients.take();
        ns_sum += once(&dp, &syn(ip, port, SERVER))?.1;
        if i % plan.touch_every == 0 {
            let d = &decided[touched % decided.len()];
            touched += 1;
            if dp.test_run(&d.ack)? != d.action {
                wrong_during += 1;
            }
        }
        drain_now_and_then(&mut dp, i);
    }
    let wall = t.elapsed();
    let after = dp.snapshot()?;
    let entries_after = dp.flows()?.len() as u64;
    // After the flood: each decided flow's entry is there with its verdict, and its next packet
    // gets the same action.
    let mut kept = 0u32;
    let mut present = 0u32;
    for d in &decided {
        let entry: Option<FlowEntry> = dp.flow(&d.key)?;
        let same_entry = entry.is_some_and(|e| e.state == STATE_DECIDED && e.verdict == d.verdict as u8);
        present += u32::from(entry.is_some());
        let same_action = dp.test_run(&d.ack)? == d.action;
        if same_entry && same_action {
            kept += 1;
        } else {
            eprintln!("  lost: {}:{} ({})", d.src, d.sport, d.verdict.name());
        }
    }
    let created = after.stat(Stat::FlowsCreated) - before.stat(Stat::FlowsCreated);
    let failed = after.stat(Stat::FlowInsertFailed) - before.stat(Stat::FlowInsertFailed);
    let inserted = created - failed;
    let evicted = (entries_before + inserted).saturating_sub(entries_after);
    let ns = ns_sum / f64::from(total);
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let share = 100.0 * f64::from(kept) / decided.len() as f64;
    let label = format!("SYN flood {mult}x the flow table ({total} new flows, table of {FLOOD_CAPACITY})");
    let touch = plan.touch_every * decided.len() as u32;
    emit(&json!({
        "scenario": "new-flows", "name": format!("{label}: decided flows that kept their verdict"),
        "value": r1(share), "unit": "%", "target": {"value_min": 100},
        "note": format!(
            "{kept} of {}: 100 dropped WhatsApp TLS flows and 100 allowed Telegram TLS flows decided before the flood; one of them gets a packet every {} SYNs in turn (each every {touch} SYNs); kept = entry present, decided, same verdict, and its next packet gets the same XDP action; {present} entries present after the flood; {wrong_during} of {touched} packets during the flood got another action; flow table capacity reduced to {FLOOD_CAPACITY} with Dataplane::load so that 10x stays quick",
            decided.len(), plan.touch_every
        ),
    }));
    emit(&json!({
        "scenario": "new-flows", "name": format!("{label}: evictions (inferred, not counted by the data plane)"),
        "value": evicted, "unit": "flows",
        "note": format!(
            "the flow table is an LRU hash whose evictions the kernel makes silently and imfw does not count; inferred as entries before ({entries_before}) + inserted ({inserted}) - entries after ({entries_after}); stats: flows_created {created}, flow_insert_failed {failed} (the only table counter imfw has)"
        ),
    }));
    emit(&json!({
        "scenario": "new-flows", "name": format!("{label}: new flows per second during the flood"),
        "value": rate(ns), "unit": "flows/s",
        "note": format!(
            "1e9 / {ns:.1} ns, the mean kernel duration of one SYN run (repeat 1) over all {total} SYNs, the table full after the first {FLOOD_CAPACITY}; through the syscall (frames built on the way, decided-flow packets included) {:.0} SYNs/s",
            f64::from(total) / wall.as_secs_f64()
        ),
    }));
    eprintln!("  kept {kept}/{}, present {present}, evicted {evicted} (created {created}, failed {failed}), {ns:.1} ns/SYN", decided.len());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scenario 4: scaling
// ---------------------------------------------------------------------------------------------

const SCALES: [u32; 3] = [10, 1_000, 100_000];

/// One policy size under test: its data plane and the clients of its next flows.
struct Setup {
    n: u32,
    dp: Dataplane,
    clients: Clients,
    /// Batch means per series.
    series: Vec<Vec<f64>>,
}

fn domains_policy(n: u32) -> String {
    let mut s = String::with_capacity(n as usize * 40 + 200);
    s.push_str("version: 1\napps:\n  benchblock: drop\ncatalogue:\n  benchblock:\n    description: \"bench: synthetic blocked domains\"\n    domains:\n");
    for i in 0..n {
        let _ = writeln!(s, "      - d{i}.example-blocked.test");
    }
    s
}

/// Blocked ranges: `n` /28 networks spread evenly over 10.0.0.0/8 (synthetic: nothing is sent).
fn ranges_policy(n: u32) -> String {
    let mut s = String::with_capacity(n as usize * 24 + 200);
    s.push_str("version: 1\napps:\n  benchblock: drop\ncatalogue:\n  benchblock:\n    description: \"bench: synthetic blocked ranges\"\n    addresses:\n");
    for i in 0..n {
        let _ = writeln!(s, "      - {}/28", range_start(n, i));
    }
    s
}

/// Distance between two blocked ranges, in /28 blocks: at least 10 for n <= 100,000.
fn range_stride(n: u32) -> u32 {
    (1u32 << 20) / n
}

fn range_start(n: u32, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i * range_stride(n) * 16)
}

/// An address in the gap after the middle range, where the trie walk is deep but finds nothing.
fn range_miss(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(range_start(n, n / 2)) + range_stride(n) / 2 * 16 + 5)
}

fn build_setups(plan: &Plan, what: &str, series: usize, policy_of: impl Fn(u32) -> String) -> Result<Vec<Setup>> {
    let mut out = Vec::new();
    for n in SCALES {
        let t = Instant::now();
        let c = compile(&policy_of(n), what)?;
        let dp = load(capacity_for(plan), &c)?;
        eprintln!("  {what}: {n} compiled and loaded in {:.1} s", t.elapsed().as_secs_f64());
        out.push(Setup { n, dp, clients: Clients::new(0), series: vec![Vec::new(); series] });
    }
    Ok(out)
}

/// A flow table with room for every flow of the scaling runs, so that none is evicted.
fn capacity_for(plan: &Plan) -> u32 {
    let flows = plan.scale_flows * (plan.batches as u32 + 1) * 2;
    flows.next_power_of_two().max(m::FLOWS_DEFAULT)
}

fn domains(plan: &Plan) -> Result<()> {
    eprintln!("domains: {SCALES:?} blocked domains, {} batches of {} new flows each", plan.batches, plan.scale_flows);
    let mut setups = build_setups(plan, "blocked domains", 2, domains_policy)?;
    let other = ClientHello::new(OTHER_NAME).build();
    for round in 0..=plan.batches {
        for s in &mut setups {
            let blocked = ClientHello::new(&format!("d{}.example-blocked.test", s.n / 2)).build();
            for (k, (hello, want)) in [(&other, XDP_PASS), (&blocked, XDP_DROP)].into_iter().enumerate() {
                let mut sum = 0.0;
                for i in 0..plan.scale_flows {
                    let (ip, port) = s.clients.take();
                    s.dp.test_run(&syn(ip, port, SERVER))?;
                    let (act, ns) = once(&s.dp, &data(ip, port, SERVER, hello))?;
                    if act != want {
                        bail!("{} blocked domains: a first ClientHello got XDP action {act}, expected {want}", s.n);
                    }
                    sum += ns;
                    drain_now_and_then(&mut s.dp, i);
                }
                if round > 0 {
                    s.series[k].push(sum / f64::from(plan.scale_flows));
                }
            }
        }
    }
    let method = format!(
        "kernel duration of one run (repeat 1) of the first ClientHello of a new flow (after its SYN), mean over {} distinct flows per batch, median of {} batches, the three policy sizes measured in turn",
        plan.scale_flows, plan.batches
    );
    let curves = [
        ("domains", format!("first TLS ClientHello, name in no app ({OTHER_NAME}: every suffix looked up)"), "Cost of a first ClientHello whose name is not blocked vs blocked domains"),
        ("domains-blocked", "first TLS ClientHello, blocked name".to_owned(), "Cost of a first ClientHello whose name is blocked vs blocked domains"),
    ];
    emit_curve(&setups, &curves, "blocked domains", "domains", &method);
    Ok(())
}

fn emit_curve(setups: &[Setup], curves: &[(&str, String, &str)], x_label: &str, unit_word: &str, method: &str) {
    for (k, (id, what, title)) in curves.iter().enumerate() {
        let base = median(&setups[0].series[k]);
        for s in setups {
            let v = median(&s.series[k]);
            let mut rec = json!({
                "scenario": "scaling",
                "name": format!("{what}, {} blocked {unit_word}", thousands(s.n)),
                "value": r1(v), "unit": "ns/packet",
                "chart": {"id": id, "title": title, "x_label": x_label, "x": s.n},
                "note": method,
            });
            if s.n != setups[0].n {
                rec["ref"] = json!(format!("{} blocked {unit_word}", setups[0].n));
                rec["ref_value"] = json!(r1(base));
            }
            if s.n == 100_000 {
                rec["target"] = json!({"ratio_max": 1.2});
            }
            emit(&rec);
            eprintln!("  {what}, {}: {v:.1} ns", s.n);
        }
    }
}

fn thousands(n: u32) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ranges(plan: &Plan) -> Result<()> {
    eprintln!("ranges: {SCALES:?} blocked address ranges, {} batches of {} new flows each", plan.batches, plan.scale_flows);
    let mut setups = build_setups(plan, "blocked ranges", 1, ranges_policy)?;
    for s in &setups {
        let miss = range_miss(s.n);
        if s.dp.addr_app(miss.into())?.is_some() {
            bail!("{} blocked ranges: the address {miss} meant to match none is in an app's networks", s.n);
        }
        let hit = Ipv4Addr::from(u32::from(range_start(s.n, s.n / 2)) + 1);
        if s.dp.addr_app(hit.into())?.is_none() {
            bail!("{} blocked ranges: the address {hit} is in no app's networks; the policy was not applied", s.n);
        }
    }
    for round in 0..=plan.batches {
        for s in &mut setups {
            let miss = range_miss(s.n);
            let mut sum = 0.0;
            for i in 0..plan.scale_flows {
                let (ip, port) = s.clients.take();
                let (act, ns) = once(&s.dp, &syn(ip, port, miss))?;
                if act != XDP_PASS {
                    bail!("{} blocked ranges: a SYN to {miss} got XDP action {act}, expected XDP_PASS", s.n);
                }
                sum += ns;
                drain_now_and_then(&mut s.dp, i);
            }
            if round > 0 {
                s.series[0].push(sum / f64::from(plan.scale_flows));
            }
        }
    }
    let method = format!(
        "kernel duration of one run (repeat 1) of the SYN of a new flow to an address in no range (a gap between two /28 networks near the middle of 10.0.0.0/8, where the ranges are spread, so the trie walk is deep), which looks the server up in the app networks when it creates the entry; mean over {} distinct flows per batch, median of {} batches, the three sizes measured in turn; the built-in catalogue's ranges are there too",
        plan.scale_flows, plan.batches
    );
    let curves = [("ranges", "first packet (SYN) to an address in no range".to_owned(), "Cost of a new flow's first packet vs blocked address ranges")];
    emit_curve(&setups, &curves, "blocked address ranges", "address ranges", &method);
    Ok(())
}

fn flows_scaling(plan: &Plan) -> Result<()> {
    let sizes = [1_000u32, plan.big_flows];
    eprintln!("flows: {sizes:?} flows in tables of {BIG_CAPACITY}");
    let text = "version: 1\napps:\n  whatsapp: drop\n";
    let c = compile(text, "flows")?;
    let hello = ClientHello::new("web.whatsapp.com").build();
    let server = Ipv4Addr::new(198, 51, 100, 40);
    let mut tables = Vec::new();
    for n in sizes {
        let mut dp = load(BIG_CAPACITY, &c)?;
        let t = Instant::now();
        // Filled through the program: a SYN per flow, as real traffic would.
        let mut clients = Clients::new(0);
        for i in 0..n {
            let (ip, port) = clients.take();
            dp.test_run(&syn(ip, port, SERVER))?;
            drain_now_and_then(&mut dp, i);
        }
        // The measured flow: decided (WhatsApp, dropped); its packets without payload meet the
        // verdict only.
        let (src, sport) = (Ipv4Addr::new(192, 0, 2, 50), 30_000);
        dp.test_run(&syn(src, sport, server))?;
        if dp.test_run(&data(src, sport, server, &hello))? != XDP_DROP {
            bail!("flows scaling: the WhatsApp flow was not dropped");
        }
        let ack = tcp4(src, sport, server, 443, tcp_flags::ACK, &[]);
        let snap = dp.snapshot()?;
        let inserted = snap.stat(Stat::FlowsCreated) - snap.stat(Stat::FlowInsertFailed);
        let fill = t.elapsed();
        let present = if plan.quick { None } else { Some(dp.flows()?.len()) };
        eprintln!("  {n} flows filled in {:.1} s (inserted {inserted}, present {present:?})", fill.as_secs_f64());
        tables.push((n, dp, ack, clients.next, Vec::new(), Vec::new(), inserted, present));
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for round in 0..=plan.batches {
        for (n, dp, ack, count, repeated, spread, ..) in &mut tables {
            let (act, ns) = dp.test_run_timed(ack, plan.repeat)?;
            if act != XDP_DROP {
                bail!("flows scaling: the decided flow lost its verdict with {n} flows in the table");
            }
            // Packets without payload of random flows of the table, one run each: the entry is
            // rarely in the CPU cache, as with real traffic over many flows.
            let mut sum = 0.0;
            for _ in 0..plan.scale_flows {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = u32::try_from(rng % u64::from(*count)).unwrap_or(0);
                let (ip, port) = Clients::new(i).take();
                sum += once(dp, &tcp4(ip, port, SERVER, 443, tcp_flags::ACK, &[]))?.1;
            }
            if round > 0 {
                repeated.push(ns);
                spread.push(sum / f64::from(plan.scale_flows));
            }
        }
    }
    let base = median(&tables[0].4);
    let base_spread = median(&tables[0].5);
    for (n, _, _, _, repeated, spread, inserted, present) in &tables {
        let v = median(repeated);
        let present = present.map_or_else(|| format!("{inserted} inserted"), |p| format!("{p} present"));
        let mut rec = json!({
            "scenario": "scaling", "name": format!("decided flow, {} flows in the table", thousands(*n)),
            "value": r1(v), "unit": "ns/packet",
            "chart": {"id": "flows", "title": "Cost of a decided flow's packet vs flows in the table", "x_label": "flows in the table", "x": n},
            "note": format!(
                "one decided (dropped) flow's packet repeated {} times per batch, kernel mean, median of {} batches; table of {BIG_CAPACITY} filled through the program with one SYN per flow ({present}); a repeated packet finds its entry in the CPU cache, see the next record for random flows",
                plan.repeat, plan.batches
            ),
        });
        let vs = median(spread);
        let mut rec_s = json!({
            "scenario": "scaling", "name": format!("packet of a random known flow, {} flows in the table", thousands(*n)),
            "value": r1(vs), "unit": "ns/packet",
            "chart": {"id": "flows-spread", "title": "Cost of a packet of a random known flow vs flows in the table", "x_label": "flows in the table", "x": n},
            "note": format!(
                "a packet without payload (same path as a decided flow's) of a random flow of the table, one run each (repeat 1, so the per-call timer overhead is included), mean of {} per batch, median of {} batches",
                plan.scale_flows, plan.batches
            ),
        });
        if *n != 1_000 {
            rec["ref"] = json!("1,000 flows");
            rec["ref_value"] = json!(r1(base));
            rec_s["ref"] = json!("1,000 flows");
            rec_s["ref_value"] = json!(r1(base_spread));
        }
        emit(&rec);
        emit(&rec_s);
        eprintln!("  {n} flows: decided {v:.1} ns (repeat), random flow {vs:.1} ns (one run)");
    }
    let big_table = map_memlock_flows(BIG_CAPACITY)?;
    drop(tables);
    if let Some(bytes) = big_table {
        emit(&json!({
            "scenario": "scaling", "name": format!("memory: flow table of {} flows, total", thousands(BIG_CAPACITY)),
            "value": bytes, "unit": "bytes",
            "note": "memlock of the flow table map in /proc/self/fdinfo (the kernel's accounting of its memory: elements, buckets, LRU lists)",
        }));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

/// One BPF map open in this process, from `/proc/self/fdinfo`.
#[derive(Debug, Default, Clone)]
struct MapInfo {
    id: u64,
    map_type: u64,
    key_size: u64,
    value_size: u64,
    max_entries: u64,
    memlock: u64,
}

/// Every BPF map this process holds, once each.
fn open_maps() -> Result<Vec<MapInfo>> {
    let mut out: Vec<MapInfo> = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").context("reading /proc/self/fd")? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let fdinfo = format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(text) = std::fs::read_to_string(&fdinfo) else { continue };
        let mut info = MapInfo::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else { continue };
            let v: u64 = v.trim().parse().unwrap_or(0);
            match k.trim() {
                "map_id" => info.id = v,
                "map_type" => info.map_type = v,
                "key_size" => info.key_size = v,
                "value_size" => info.value_size = v,
                "max_entries" => info.max_entries = v,
                "memlock" => info.memlock = v,
                _ => {}
            }
        }
        if !out.iter().any(|m| m.id == info.id) {
            out.push(info);
        }
    }
    Ok(out)
}

const BPF_MAP_TYPE_LRU_HASH: u64 = 9;

/// The memlock of the flow table of `capacity` entries, if the kernel reports it.
fn map_memlock_flows(capacity: u32) -> Result<Option<u64>> {
    let flow_table = |m: &&MapInfo| {
        m.map_type == BPF_MAP_TYPE_LRU_HASH
            && m.key_size == size_of::<FlowKey>() as u64
            && m.value_size == size_of::<FlowEntry>() as u64
            && m.max_entries == u64::from(capacity)
    };
    Ok(open_maps()?.iter().find(flow_table).map(|m| m.memlock).filter(|b| *b > 0))
}

fn memory() -> Result<()> {
    let kv = size_of::<FlowKey>() + size_of::<FlowEntry>();
    emit(&json!({
        "scenario": "scaling", "name": "memory per flow: key + value",
        "value": kv, "unit": "bytes",
        "note": format!("FlowKey {} bytes + FlowEntry {} bytes, what the program stores per flow", size_of::<FlowKey>(), size_of::<FlowEntry>()),
    }));
    let c = compile(policy::default_policy_text(), "default")?;
    // Alone in the process, so that the maps read below are this data plane's only.
    let dp = load(m::FLOWS_DEFAULT, &c)?;
    let maps = open_maps()?;
    let Some(table) = map_memlock_flows(m::FLOWS_DEFAULT)? else {
        eprintln!("memory: the kernel reports no memlock for the flow table; only key + value sizes are given");
        drop(dp);
        return Ok(());
    };
    #[expect(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
    let per_flow = table as f64 / f64::from(m::FLOWS_DEFAULT);
    emit(&json!({
        "scenario": "scaling", "name": "memory per flow: kernel, with its per-element overhead",
        "value": r1(per_flow), "unit": "bytes",
        "note": format!(
            "memlock of the flow table ({table} bytes, /proc/self/fdinfo) / its {} entries: the LRU hash preallocates every element (key and value rounded to 8 bytes, hash node, LRU node) and its buckets at load, so this is paid per slot, used or not",
            m::FLOWS_DEFAULT
        ),
    }));
    emit(&json!({
        "scenario": "scaling", "name": format!("memory: flow table at the default capacity ({} flows), total", thousands(m::FLOWS_DEFAULT)),
        "value": table, "unit": "bytes",
        "note": "memlock of the flow table map in /proc/self/fdinfo",
    }));
    let all: u64 = maps.iter().map(|m| m.memlock).sum();
    let largest: Vec<String> = {
        let mut v: Vec<&MapInfo> = maps.iter().collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.memlock));
        v.iter().take(4).map(|m| format!("type {} x{}: {} bytes", m.map_type, m.max_entries, m.memlock)).collect()
    };
    emit(&json!({
        "scenario": "scaling", "name": "memory: all maps of the data plane at the default capacity, total",
        "value": all, "unit": "bytes",
        "note": format!(
            "sum of memlock over the {} BPF maps of one loaded data plane (default policy; programs not included); largest: {}",
            maps.len(), largest.join("; ")
        ),
    }));
    eprintln!("  per flow {per_flow:.1} bytes, flow table {table} bytes, all maps {all} bytes");
    drop(dp);
    Ok(())
}
