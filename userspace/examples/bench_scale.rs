//! Benchmark scenarios 3 (new flows) and 4 (scaling) of `cargo xtask bench`: how fast a core
//! sets up flows, what a SYN flood larger than the flow table does to decided flows, and how the
//! cost per packet and the memory grow with blocked domains, address ranges and flows.
//!
//! Run as root: `bench_scale [--quick]`. Progress goes to stderr; stdout carries one JSON record
//! per line (the bench's record format) and nothing else. Every figure is the kernel's own
//! duration of `BPF_PROG_TEST_RUN`; no packet leaves the machine.
//!
//! Three ways of timing, chosen by what is measured:
//! - the set-up figures (scenario 3) play a stream of new flows in the kernel: a batch's SYNs
//!   back to back in one call of the bench's in-kernel player ([`imfw::bench_refs::Replay`]),
//!   then their first payloads in another, as a driver's poll loop runs a ring. imfw's time is
//!   its run less the player's own part (the same frames played to the empty program), and the
//!   minimal stateful reference runs the same frames; the one-call-per-packet figures of the
//!   next method are given beside them;
//! - a first packet (a flow's SYN, its first payload) must meet a table without its entry, so
//!   each run is a distinct new flow, run once, and a batch's figure is the mean over its flows
//!   (the mean, not the median, so that occasional costly inserts, such as an LRU eviction,
//!   count as they do in a stream of packets);
//! - a packet of a decided flow is the same packet repeated, the kernel's mean over `repeat`.
//!
//! Figures are the low quantile over batches (`imfw_tests::bench::LOW_QUANTILE`: another tenant
//! of the machine slows whole batches, in bursts), after a warm-up batch; the notes give the
//! batches' range. Scaling configurations take turns within each batch, a few hundred flows
//! at a time, so that drift and bursts of other load on the machine fall on all of them alike;
//! the notes give each batch's own ratio to the smallest configuration as well. The thread is pinned to one CPU: the flow table's LRU keeps
//! per-CPU free lists, and a migration would change what is measured.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};
use imfw::{
    bench_refs::{BenchRefs, Reference, Replay},
    dataplane::Dataplane,
    policy,
};
use imfw_common::{
    flow::{FlowEntry, FlowKey, STATE_DECIDED},
    maps as m,
    verdict::{Stat, Verdict},
};
use imfw_tests::bench::{low, low_name, median, range};
use imfw_tests::packets::{opaque, tcp4, tcp6, tcp_flags, Ethernet, ETH_P_ARP};
use imfw_tests::protocols::ClientHello;
use serde_json::{json, Value};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const IPPROTO_TCP: u8 = 6;

/// The server of the synthetic flows (documentation range, never reached: nothing leaves
/// `BPF_PROG_TEST_RUN`).
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// A name no app claims, with five suffixes to look up.
const OTHER_NAME: &str = "static.assets.cdn.example.org";
/// Capacity of the flow table for the flows scaling (both sizes, so that only occupancy differs).
const BIG_CAPACITY: u32 = 1 << 20;
/// Blocked domains and address ranges of the scaling runs.
const SCALES: [u32; 3] = [10, 1_000, 100_000];
/// Decided flows kept through the SYN flood, per verdict.
const DECIDED_PER_VERDICT: u16 = 100;

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
    /// Capacity of the flow table for the SYN flood: small, so that ten times it stays quick.
    flood_capacity: u32,
    /// Decided flows touched during a flood: one packet to one of them every this many SYNs.
    touch_every: u32,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                batches: 5,
                setup_flows: 2_000,
                scale_flows: 1_000,
                repeat: 200_000,
                big_flows: 1_000_000,
                flood_capacity: 16_384,
                touch_every: 16,
            }
        } else {
            Plan {
                quick,
                batches: 15,
                setup_flows: 10_000,
                scale_flows: 10_000,
                repeat: 1_000_000,
                big_flows: 1_000_000,
                flood_capacity: 65_536,
                touch_every: 16,
            }
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
    let cpu = pin_to_current_cpu()?;
    eprintln!(
        "bench_scale{}: pinned to CPU {cpu}",
        if quick { " --quick" } else { "" }
    );
    let start = Instant::now();
    let step = |what: &str| eprintln!("[{:>5.1} s] {what} done", start.elapsed().as_secs_f64());
    new_flows(&plan)?;
    step("new flows and memory");
    flood(&plan)?;
    step("SYN flood");
    scaling_rules(&plan)?;
    step("domains and ranges");
    flows_scaling(&plan)?;
    step("flows");
    Ok(())
}

/// Pins this thread to the CPU it runs on.
fn pin_to_current_cpu() -> Result<usize> {
    imfw_tests::bench::pin_to_current_cpu().map_err(|e| anyhow!("pinning to the current CPU: {e}"))
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
    let mut dp = Dataplane::load(capacity)
        .with_context(|| format!("loading the data plane (flow table of {capacity})"))?;
    dp.apply_offline(c)?;
    Ok(dp)
}

/// Flows per second from nanoseconds per flow.
fn rate(ns: f64) -> f64 {
    (1e9 / ns).round()
}

/// Rounds a figure to one decimal for the records.
fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Distinct clients for new flows: 60,000 ports per address from 100.64.0.0 (shared address
/// space, synthetic here). Client `i` is always the same endpoint.
fn client(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(0x6440_0000 + i / 60_000),
        1024 + (i % 60_000) as u16,
    )
}

/// The clients of the next new flows.
struct Clients {
    next: u32,
}

impl Clients {
    fn new() -> Clients {
        Clients { next: 0 }
    }

    fn take(&mut self) -> (Ipv4Addr, u16) {
        self.next += 1;
        client(self.next - 1)
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

/// A client packet without payload.
fn ack(src: Ipv4Addr, sport: u16, dst: Ipv4Addr) -> Vec<u8> {
    tcp4(src, sport, dst, 443, tcp_flags::ACK, &[])
}

fn data(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    tcp4(
        src,
        sport,
        dst,
        443,
        tcp_flags::ACK | tcp_flags::PSH,
        payload,
    )
}

/// Runs `frame` once and returns the action and the kernel's duration of that one run.
fn once(dp: &Dataplane, frame: &[u8]) -> Result<(u32, f64)> {
    dp.test_run_timed(frame, 1)
}

/// Drains the event ring every 256 flows, as the controller would.
fn drain_now_and_then(dp: &mut Dataplane, i: u32) {
    if i % 256 == 255 {
        dp.drain_events();
    }
}

/// A small xorshift generator: random flows of a table, the same each run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % u64::from(n)) as u32
    }
}

/// Mean kernel duration of one run of a packet without payload of a random flow among clients
/// `0..count` (each already in the table), one run each.
fn known_flow_once(dp: &Dataplane, count: u32, runs: u32, rng: &mut Rng) -> Result<f64> {
    let mut sum = 0.0;
    for _ in 0..runs {
        let (ip, port) = client(rng.below(count));
        sum += once(dp, &ack(ip, port, SERVER))?.1;
    }
    Ok(sum / f64::from(runs))
}

// ---------------------------------------------------------------------------------------------
// Scenario 3: new flows
// ---------------------------------------------------------------------------------------------

fn new_flows(plan: &Plan) -> Result<()> {
    eprintln!(
        "new flows: {} batches of {} distinct flows, one run each",
        plan.batches, plan.setup_flows
    );
    let needed = plan.setup_flows * (plan.batches as u32 + 1);
    if needed > m::FLOWS_DEFAULT / 4 * 3 {
        bail!("{needed} new flows would not fit the flow table without evictions");
    }
    let c = compile(policy::default_policy_text(), "default")?;
    let hello = ClientHello::new(OTHER_NAME).build();
    // The stream runs first, on programs and a table of its own; its clients are not reused.
    let mut clients = Clients::new();
    let stream = stream_of_new_flows(plan, &mut load(m::FLOWS_DEFAULT, &c)?, &mut clients, &hello)?;
    let stream_flows = clients.next;
    let mut dp = load(m::FLOWS_DEFAULT, &c)?;
    let (mut syns, mut firsts, mut both, mut wall) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for batch in 0..=plan.batches {
        let (mut syn_sum, mut payload_sum) = (0.0, 0.0);
        let t = Instant::now();
        for i in 0..plan.setup_flows {
            let (ip, port) = clients.take();
            let (act, ns) = once(&dp, &syn(ip, port, SERVER))?;
            if act != XDP_PASS {
                bail!("a new flow's SYN got XDP action {act}, expected XDP_PASS");
            }
            syn_sum += ns;
            let (act, ns) = once(&dp, &data(ip, port, SERVER, &hello))?;
            if act != XDP_PASS {
                bail!("the first ClientHello of a non-IM flow got XDP action {act}, expected XDP_PASS");
            }
            payload_sum += ns;
            drain_now_and_then(&mut dp, i);
        }
        let elapsed = t.elapsed();
        if batch == 0 {
            continue; // warm-up
        }
        let n = f64::from(plan.setup_flows);
        syns.push(syn_sum / n);
        firsts.push(payload_sum / n);
        both.push((syn_sum + payload_sum) / n);
        wall.push(elapsed.as_secs_f64() / n);
    }
    let snap = dp.snapshot()?;
    if snap.stat(Stat::FlowInsertFailed) != 0
        || snap.stat(Stat::FlowsCreated) != u64::from(clients.next - stream_flows)
    {
        bail!(
            "new flows: {} flows created and {} refused for {} SYNs",
            snap.stat(Stat::FlowsCreated),
            snap.stat(Stat::FlowInsertFailed),
            clients.next - stream_flows
        );
    }
    let floor = call_floors(&dp, plan, stream_flows)?;
    let (syn_ns, first_ns, both_ns) = (low(&syns), low(&firsts), low(&both));
    let wall_rate = 1.0 / low(&wall);
    let per_call = format!(
        "one BPF_PROG_TEST_RUN per packet instead (repeat 1; mean over {} distinct flows per batch, {} of {} batches after a \
         warm-up batch): SYN {syn_ns:.1} ns, first payload {first_ns:.1} ns, both {both_ns:.1} ns, each with the method's own \
         part (per-call floor of a non-IP frame {:.1} ns against {:.1} ns over {} repeats; a packet of one known flow {:.1} ns \
         once against {:.1} ns repeated); through the syscalls from userspace, frames built on the way, {wall_rate:.0} flows/s",
        thousands(plan.setup_flows.into()),
        low_name(),
        plan.batches,
        floor.arp_once,
        floor.arp_repeated,
        thousands(plan.repeat.into()),
        floor.known_once,
        floor.known_repeated,
    );
    report_new_flows(plan, &stream, stream_flows, &per_call);
    eprintln!(
        "  SYN {syn_ns:.1} ns, first payload {first_ns:.1} ns, both {both_ns:.1} ns; floors: ARP {:.1}/{:.1} ns, known flow {:.1}/{:.1} ns (once/repeated)",
        floor.arp_once, floor.arp_repeated, floor.known_once, floor.known_repeated
    );
    memory(&dp)
}

struct Floors {
    arp_once: f64,
    arp_repeated: f64,
    known_once: f64,
    known_repeated: f64,
}

/// The set-up records: the stream's figures, with the one-call-per-packet ones (`per_call`) in
/// their notes.
fn report_new_flows(plan: &Plan, stream: &Stream, stream_flows: u32, per_call: &str) {
    let method = format!(
        "a stream of new flows: {} distinct flows per batch, their SYNs back to back in one BPF_PROG_TEST_RUN call of the \
         in-kernel player, then their first payloads in another (each frame written into the packet buffer and tail-called into \
         the program, as a driver's poll loop runs a ring); imfw's time = its run less the player's own part (the same frames \
         played to the empty program); {} of {} batches after a warm-up batch; default policy, flow table of {}, {} entries \
         in it after {} flows",
        thousands(plan.setup_flows.into()),
        low_name(),
        stream.syn.0.len(),
        thousands(m::FLOWS_DEFAULT.into()),
        thousands(stream.entries as u64),
        thousands(stream_flows.into())
    );
    let (syn, first) = (stream.syn.net(), stream.first.net());
    let (s_syn, s_first) = (low(&syn), low(&first));
    emit(&json!({
        "scenario": "new-flows", "name": "new flow set-up: SYN (flow entry created)",
        "value": rate(s_syn), "unit": "flows/s", "target": {"value_min": 1_000_000},
        "note": format!(
            "1e9 / {s_syn:.1} ns per SYN (batches {} ns; {:.1} ns with the player's part of {:.1} ns; the stateful reference's \
             insert of a new flow {:.1} ns by the same method); {method}; {per_call}",
            spread(&syn),
            stream.syn.low(0),
            stream.syn.low(1),
            stream.syn.stateful(),
        ),
    }));
    emit(&json!({
        "scenario": "new-flows", "name": "new flow: first payload packet of a non-IM flow (TLS ClientHello, name in no app)",
        "value": rate(s_first), "unit": "flows/s", "target": {"value_min": 1_000_000},
        "note": format!(
            "1e9 / {s_first:.1} ns per first ClientHello ({OTHER_NAME}: signatures, 5 name suffixes, ECH check), after the flow's \
             SYN (batches {} ns; {:.1} ns with the player's part of {:.1} ns; the stateful reference's lookup {:.1} ns); {method}",
            spread(&first),
            stream.first.low(0),
            stream.first.low(1),
            stream.first.stateful(),
        ),
    }));
    emit(&json!({
        "scenario": "new-flows", "name": "new flow: SYN + first payload packet (non-IM TLS)",
        "value": rate(s_syn + s_first), "unit": "flows/s", "target": {"value_min": 1_000_000},
        "note": format!("1e9 / {:.1} ns for both packets of each flow; {method}; {per_call}", s_syn + s_first),
    }));
}

/// One kind of packet played in batches: per batch, the kernel's ns per frame with imfw, the
/// empty program (the player's own part) and the stateful reference as the target.
struct Runs(Vec<[f64; 3]>);

impl Runs {
    /// imfw's time less the player's part, per batch.
    fn net(&self) -> Vec<f64> {
        self.0.iter().map(|[imfw, empty, _]| imfw - empty).collect()
    }

    /// The low quantile over batches of target `i`'s run (0 imfw, 1 the empty program).
    fn low(&self, i: usize) -> f64 {
        low(&self.0.iter().map(|r| r[i]).collect::<Vec<_>>())
    }

    /// The low quantile over batches of the stateful reference's time less the player's part.
    fn stateful(&self) -> f64 {
        low(&self.0.iter().map(|[_, empty, stateful]| stateful - empty).collect::<Vec<_>>())
    }
}

/// What a stream of new flows cost: its SYNs and its first payloads.
struct Stream {
    /// Entries in the stream's flow table at the end.
    entries: usize,
    syn: Runs,
    first: Runs,
}

/// Batches of new flows played in the kernel: each batch's SYNs back to back in one call, then
/// their first ClientHellos (a name in no app) in another, to imfw, to the empty program (the
/// player's own part) and to the stateful reference, which take turns first. Every SYN must
/// create an entry and every flow must end inspected with no app, or the bench fails.
fn stream_of_new_flows(plan: &Plan, dp: &mut Dataplane, clients: &mut Clients, hello: &[u8]) -> Result<Stream> {
    let refs = BenchRefs::load(m::FLOWS_DEFAULT)?;
    let mut player = Replay::load(plan.setup_flows)?;
    let mut out = Stream {
        entries: 0,
        syn: Runs(Vec::new()),
        first: Runs(Vec::new()),
    };
    for batch in 0..=plan.batches {
        let before = dp.snapshot()?.stat(Stat::FlowsCreated);
        let flows: Vec<(Ipv4Addr, u16)> = (0..plan.setup_flows).map(|_| clients.take()).collect();
        let syns: Vec<Vec<u8>> = flows.iter().map(|&(ip, port)| syn(ip, port, SERVER)).collect();
        let firsts: Vec<Vec<u8>> = flows.iter().map(|&(ip, port)| data(ip, port, SERVER, hello)).collect();
        let mut parts = [[0.0f64; 3]; 2];
        for (p, frames) in [&syns, &firsts].into_iter().enumerate() {
            player.set_frames(frames)?;
            let targets = [dp.program_fd()?, refs.program_fd(Reference::Empty)?, refs.program_fd(Reference::Stateful)?];
            for (which, r) in player.play_to_each(&targets, batch)?.iter().enumerate() {
                if r.last_action != XDP_PASS {
                    bail!("new flows: the last frame played to target {which} got XDP action {}, expected XDP_PASS", r.last_action);
                }
                parts[p][which] = r.ns_per_frame;
            }
            dp.drain_events();
        }
        let created = dp.snapshot()?.stat(Stat::FlowsCreated) - before;
        if created != u64::from(plan.setup_flows) {
            bail!("new flows: {created} entries created for {} SYNs played", plan.setup_flows);
        }
        let &(ip, port) = flows.last().unwrap_or(&(SERVER, 0));
        let e = dp
            .flow(&key4(ip, port, SERVER, 443))?
            .ok_or_else(|| anyhow!("new flows: no entry for a played flow"))?;
        if e.app != 0 || e.packets != 2 {
            bail!("new flows: a played flow has app {} after {} packets, expected no app after 2", e.app, e.packets);
        }
        if batch == 0 {
            continue; // warm-up
        }
        let [syn, first] = parts;
        out.syn.0.push(syn);
        out.first.0.push(first);
    }
    out.entries = dp.flows()?.len();
    eprintln!(
        "  stream of new flows (player): SYN {:.1} ns, first payload {:.1} ns (player's part {:.1} / {:.1} ns; stateful reference {:.1} / {:.1} ns)",
        low(&out.syn.net()),
        low(&out.first.net()),
        out.syn.low(1),
        out.first.low(1),
        out.syn.stateful(),
        out.first.stateful()
    );
    Ok(out)
}

fn spread(v: &[f64]) -> String {
    let (lo, hi) = imfw_tests::bench::range(v);
    format!("{lo:.0}-{hi:.0}")
}

/// The per-call floor of the one-run method: a frame imfw passes at once (ARP), and a packet
/// without payload of one known flow (the same entry every time, so its cache lines stay warm),
/// each one run per call (mean per batch) and averaged over `repeat` runs; low quantiles of
/// batches.
/// `known` is the index of a client whose flow is in the table.
fn call_floors(dp: &Dataplane, plan: &Plan, known: u32) -> Result<Floors> {
    let arp = Ethernet::default().encode(ETH_P_ARP, &[0u8; 28]);
    let (ip, port) = client(known);
    let known = ack(ip, port, SERVER);
    let (mut a1, mut ar, mut k1, mut kr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let one_run_mean = |frame: &[u8]| -> Result<f64> {
        let mut sum = 0.0;
        for _ in 0..plan.setup_flows {
            sum += once(dp, frame)?.1;
        }
        Ok(sum / f64::from(plan.setup_flows))
    };
    for batch in 0..=plan.batches {
        let arp_once = one_run_mean(&arp)?;
        let arp_repeated = dp.test_run_timed(&arp, plan.repeat)?.1;
        let known_once = one_run_mean(&known)?;
        let known_repeated = dp.test_run_timed(&known, plan.repeat)?.1;
        if batch > 0 {
            a1.push(arp_once);
            ar.push(arp_repeated);
            k1.push(known_once);
            kr.push(known_repeated);
        }
    }
    Ok(Floors {
        arp_once: low(&a1),
        arp_repeated: low(&ar),
        known_once: low(&k1),
        known_repeated: low(&kr),
    })
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

/// Sets up the decided flows of the flood: dropped WhatsApp TLS flows and allowed Telegram TLS
/// flows, each checked (entry decided with its verdict, next packet with its action).
fn decide_flows(dp: &mut Dataplane, server: Ipv4Addr) -> Result<Vec<Decided>> {
    let mut decided = Vec::new();
    for (name, verdict, action, last_octet) in [
        ("web.whatsapp.com", Verdict::Drop, XDP_DROP, 10),
        ("web.telegram.org", Verdict::Allow, XDP_PASS, 11),
    ] {
        let hello = ClientHello::new(name).build();
        let src = Ipv4Addr::new(192, 0, 2, last_octet);
        for i in 0..DECIDED_PER_VERDICT {
            let sport = 20_000 + i;
            dp.test_run(&syn(src, sport, server))?;
            let got = dp.test_run(&data(src, sport, server, &hello))?;
            let key = key4(src, sport, server, 443);
            let e = dp.flow(&key)?.ok_or_else(|| {
                anyhow!("flood set-up: the flow entry of {src}:{sport} is missing")
            })?;
            if got != action || e.state != STATE_DECIDED || e.verdict != verdict as u8 {
                bail!(
                    "flood set-up: {name} from {src}:{sport} got action {got}, state {}, verdict {}; expected {action}, decided, {}",
                    e.state,
                    e.verdict,
                    verdict.name()
                );
            }
            let ack = ack(src, sport, server);
            if dp.test_run(&ack)? != action {
                bail!("flood set-up: the next packet of {name} from {src}:{sport} did not get its verdict");
            }
            decided.push(Decided {
                src,
                sport,
                key,
                verdict,
                action,
                ack,
            });
        }
    }
    dp.drain_events();
    Ok(decided)
}

/// A SYN flood of ten times the flow table, with checkpoints at 1x and 10x.
fn flood(plan: &Plan) -> Result<()> {
    let cap = plan.flood_capacity;
    let c = compile(
        "version: 1\napps:\n  whatsapp: drop\n  telegram: allow\n",
        "flood",
    )?;
    let mut dp = load(cap, &c)?;
    let decided = decide_flows(&mut dp, Ipv4Addr::new(198, 51, 100, 30))?;
    let n_decided = decided.len() as u32;
    let touch = plan.touch_every * n_decided;
    let before = dp.snapshot()?;
    let entries_before = dp.flows()?.len() as u64;
    let mut clients = Clients::new();
    let mut touched = 0u32;
    let mut wrong_during = 0u32;
    for mult in [1u32, 10] {
        let (first, total) = (clients.next, cap * mult);
        eprintln!("SYN flood: SYNs {} to {total} into a table of {cap}, {n_decided} decided flows, each touched every {touch} SYNs", first + 1);
        let mut ns_sum = 0.0;
        let t = Instant::now();
        while clients.next < total {
            let i = clients.next;
            let (ip, port) = clients.take();
            ns_sum += once(&dp, &syn(ip, port, SERVER))?.1;
            if i.is_multiple_of(plan.touch_every) {
                let d = &decided[(touched % n_decided) as usize];
                touched += 1;
                if dp.test_run(&d.ack)? != d.action {
                    wrong_during += 1;
                }
            }
            drain_now_and_then(&mut dp, i);
        }
        let wall = t.elapsed();
        let sent = total - first;
        let after = dp.snapshot()?;
        let entries_after = dp.flows()?.len() as u64;
        // Each decided flow's entry is there with its verdict, and its next packet gets the same
        // action.
        let (mut kept, mut present) = (0u32, 0u32);
        for d in &decided {
            let entry: Option<FlowEntry> = dp.flow(&d.key)?;
            let same_entry =
                entry.is_some_and(|e| e.state == STATE_DECIDED && e.verdict == d.verdict as u8);
            present += u32::from(entry.is_some());
            if same_entry && dp.test_run(&d.ack)? == d.action {
                kept += 1;
            } else {
                eprintln!("  lost: {}:{} ({})", d.src, d.sport, d.verdict.name());
            }
        }
        let created = after.stat(Stat::FlowsCreated) - before.stat(Stat::FlowsCreated);
        let failed = after.stat(Stat::FlowInsertFailed) - before.stat(Stat::FlowInsertFailed);
        let inserted = created - failed;
        let evicted = (entries_before + inserted).saturating_sub(entries_after);
        let ns = ns_sum / f64::from(sent);
        let share = 100.0 * f64::from(kept) / f64::from(n_decided);
        let label = format!(
            "SYN flood {mult}x the flow table ({} new flows, table of {})",
            thousands(total.into()),
            thousands(cap.into())
        );
        emit(&json!({
            "scenario": "new-flows", "name": format!("{label}: decided flows that kept their verdict"),
            "value": r1(share), "unit": "%", "target": {"value_min": 100},
            "note": format!(
                "{kept} of {n_decided}: {DECIDED_PER_VERDICT} dropped WhatsApp TLS flows and {DECIDED_PER_VERDICT} allowed Telegram TLS flows decided before the flood; one of them gets a packet every {} SYNs in turn (each every {touch} SYNs), as live flows would; kept = entry present, decided, same verdict, and its next packet gets the same XDP action; {present} entries present; {wrong_during} of {touched} packets to them during the flood so far got another action; flow table reduced to {cap} entries with Dataplane::load so that 10x stays quick",
                plan.touch_every
            ),
        }));
        emit(&json!({
            "scenario": "new-flows", "name": format!("{label}: evictions (inferred, not counted by the data plane)"),
            "value": evicted, "unit": "flows",
            "note": format!(
                "imfw does not count evictions: the flow table is an LRU hash, which the kernel evicts from silently to make room; inferred as entries before the flood ({entries_before}, the decided flows) + entries inserted ({inserted}) - entries now ({entries_after}); flows_created {created}, flow_insert_failed {failed} (the data plane's only table counter: inserts the table refused)"
            ),
        }));
        emit(&json!({
            "scenario": "new-flows", "name": format!("{label}: new flows per second during the flood"),
            "value": rate(ns), "unit": "flows/s",
            "note": format!(
                "1e9 / {ns:.1} ns, the mean kernel duration of one SYN run (repeat 1) over SYNs {} to {total}{}; through the syscall (frames built on the way, packets of decided flows included) {:.0} SYNs/s",
                first + 1,
                if mult == 1 { " (the table fills)" } else { " (the table is full: each insert evicts)" },
                f64::from(sent) / wall.as_secs_f64()
            ),
        }));
        eprintln!("  {mult}x: kept {kept}/{n_decided}, present {present}, evicted {evicted} (created {created}, failed {failed}), {ns:.1} ns/SYN");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scenario 4: scaling
// ---------------------------------------------------------------------------------------------

/// A policy blocking one custom app with `n` synthetic domains (under the reserved `.test`) and
/// `n` /28 networks spread evenly over 10.0.0.0/8 and `n` /56 networks over 2001:db8::/32
/// (synthetic: nothing is sent).
fn rules_policy(n: u32) -> String {
    let mut s = String::with_capacity(n as usize * 60 + 300);
    s.push_str("version: 1\napps:\n  benchblock: drop\ncatalogue:\n  benchblock:\n    description: \"bench: synthetic blocked domains and ranges\"\n    domains:\n");
    for i in 0..n {
        let _ = writeln!(s, "      - {}", blocked_domain(i));
    }
    s.push_str("    addresses:\n");
    for i in 0..n {
        let _ = writeln!(s, "      - {}/28", range_start(n, i));
    }
    for i in 0..n {
        let _ = writeln!(s, "      - {}/56", range6_start(n, i));
    }
    s
}

/// Distance between two blocked IPv6 networks, in /56s: at least 167 for n <= 100,000.
fn range6_stride(n: u32) -> u128 {
    u128::from((1u32 << 24) / n)
}

/// The `i`th of `n` blocked /56 networks, spread evenly over 2001:db8::/32.
fn range6_start(n: u32, i: u32) -> Ipv6Addr {
    Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(i) * range6_stride(n)) << 72)
}

/// An address in the gap after the middle IPv6 network: the lookup finds nothing.
fn range6_miss(n: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(range6_start(n, n / 2)) + ((range6_stride(n) / 2) << 72) + 5)
}

/// The IPv6 client for an IPv4 client (2001:db8:ffff::/48, synthetic: nothing is sent).
fn client6(v4: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::from((0x2001_0db8_ffffu128 << 80) | u128::from(u32::from(v4)))
}

fn blocked_domain(i: u32) -> String {
    format!("d{i}.example-blocked.test")
}

/// Distance between two blocked ranges, in /28 blocks: at least 10 for n <= 100,000.
fn range_stride(n: u32) -> u32 {
    (1u32 << 20) / n
}

fn range_start(n: u32, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i * range_stride(n) * 16)
}

/// An address in the gap after the middle range, in a /16 as dense as any: the lookup finds nothing.
fn range_miss(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(range_start(n, n / 2)) + range_stride(n) / 2 * 16 + 5)
}

/// One policy size under test: its data plane, its next clients and its batch means.
struct Setup {
    n: u32,
    dp: Dataplane,
    clients: Clients,
    /// Flows played on this size so far (for the event ring's drain).
    played: u32,
    /// A first ClientHello naming one of this size's blocked domains.
    blocked: Vec<u8>,
    /// Batch means: first ClientHello with an unknown name, with a blocked name, an opaque
    /// first payload to an IPv4 address in no range, and to an IPv6 one.
    series: [Vec<f64>; 4],
}

/// New flows of one size played in a row before the next size takes over: the three sizes
/// of a batch take turns this finely, so that a burst of load from another tenant (which
/// lasts milliseconds to seconds) falls on the three alike instead of on one size's batch.
const TURN_FLOWS: u32 = 250;

fn scaling_rules(plan: &Plan) -> Result<()> {
    eprintln!(
        "domains and ranges: {SCALES:?} of each, {} batches of {} new flows per figure, the sizes taking turns every {TURN_FLOWS} flows",
        plan.batches, plan.scale_flows
    );
    let capacity = (plan.scale_flows * (plan.batches as u32 + 1) * 4)
        .next_power_of_two()
        .max(m::FLOWS_DEFAULT);
    let mut setups = Vec::new();
    for n in SCALES {
        let t = Instant::now();
        let c = compile(&rules_policy(n), "blocked domains and ranges")?;
        let dp = load(capacity, &c)?;
        let pairs: [(IpAddr, IpAddr); 2] = [
            (range_miss(n).into(), Ipv4Addr::from(u32::from(range_start(n, n / 2)) + 1).into()),
            (range6_miss(n).into(), Ipv6Addr::from(u128::from(range6_start(n, n / 2)) + 1).into()),
        ];
        for (miss, hit) in pairs {
            if dp.addr_app(miss)?.is_some() || dp.addr_app(hit)?.is_none() {
                bail!("{n} blocked networks: {hit} should be in a blocked network and {miss} in none");
            }
        }
        eprintln!(
            "  {n}: compiled and loaded in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        setups.push(Setup {
            n,
            dp,
            clients: Clients::new(),
            played: 0,
            blocked: ClientHello::new(&blocked_domain(n / 2)).build(),
            series: [Vec::new(), Vec::new(), Vec::new(), Vec::new()],
        });
    }
    let other = ClientHello::new(OTHER_NAME).build();
    let opaque = opaque(64);
    for round in 0..=plan.batches {
        for k in 0..4 {
            let mut sums = vec![0.0; setups.len()];
            let mut done = 0;
            let mut turn = 0;
            while done < plan.scale_flows {
                let count = TURN_FLOWS.min(plan.scale_flows - done);
                // The order of the sizes rotates from turn to turn: none always follows another.
                for j in 0..setups.len() {
                    let i = (j + turn) % setups.len();
                    sums[i] += play_rules(&mut setups[i], k, count, &other, &opaque)?;
                }
                done += count;
                turn += 1;
            }
            if round > 0 {
                for (s, sum) in setups.iter_mut().zip(sums) {
                    s.series[k].push(sum / f64::from(plan.scale_flows));
                }
            }
        }
    }
    emit_rule_curves(plan, &setups);
    Ok(())
}

/// Plays `count` new flows of figure `k` (0: a ClientHello with a name in no app, 1: with a
/// blocked name, 2: an opaque payload to an IPv4 address in no range, 3: to an IPv6 one) on
/// one policy size; returns the sum of the first payloads' kernel durations.
fn play_rules(s: &mut Setup, k: usize, count: u32, other: &[u8], opaque: &[u8]) -> Result<f64> {
    let (server, payload, want, what) = match k {
        0 => (IpAddr::V4(SERVER), other, XDP_PASS, "blocked domains: a first ClientHello with a name in no app"),
        1 => (IpAddr::V4(SERVER), &s.blocked[..], XDP_DROP, "blocked domains: a first ClientHello with a blocked name"),
        2 => (IpAddr::V4(range_miss(s.n)), opaque, XDP_PASS, "blocked ranges: an opaque first payload to an address in no range"),
        _ => (IpAddr::V6(range6_miss(s.n)), opaque, XDP_PASS, "blocked IPv6 networks: an opaque first payload to an address in none"),
    };
    let mut sum = 0.0;
    for _ in 0..count {
        let (ip, port) = s.clients.take();
        let (syn, first) = match server {
            IpAddr::V4(dst) => (syn(ip, port, dst), data(ip, port, dst, payload)),
            IpAddr::V6(dst) => (
                tcp6(client6(ip), port, dst, 443, tcp_flags::SYN, &[]),
                tcp6(client6(ip), port, dst, 443, tcp_flags::ACK | tcp_flags::PSH, payload),
            ),
        };
        s.dp.test_run(&syn)?;
        let (act, ns) = once(&s.dp, &first)?;
        if act != want {
            bail!("{} {what} got XDP action {act}, expected {want}", s.n);
        }
        sum += ns;
        drain_now_and_then(&mut s.dp, s.played);
        s.played += 1;
    }
    Ok(sum)
}

fn emit_rule_curves(plan: &Plan, setups: &[Setup]) {
    let common = format!(
        "mean over {} distinct new flows per batch, one run each (repeat 1), {} of {} batches after a warm-up, the three policy sizes taking turns every {TURN_FLOWS} flows within each batch; the policy blocks one custom app with N domains (dI.example-blocked.test) and N /28 ranges (spread over 10.0.0.0/8), besides the built-in catalogue's names and ranges",
        thousands(plan.scale_flows.into()),
        low_name(),
        plan.batches
    );
    let curves = [
        (
            "domains",
            format!("first TLS ClientHello, name in no app ({OTHER_NAME}, every suffix looked up)"),
            "Cost of a first ClientHello whose name is not blocked vs blocked domains",
            "blocked domains",
            format!("kernel duration of the first ClientHello of a new flow, after its SYN; {common}"),
        ),
        (
            "domains-blocked",
            "first TLS ClientHello, blocked name".to_owned(),
            "Cost of a first ClientHello whose name is blocked vs blocked domains",
            "blocked domains",
            format!("kernel duration of the first ClientHello of a new flow naming one of the blocked domains, after its SYN; {common}"),
        ),
        (
            "ranges",
            "first payload packet without a name (opaque) to an address in no blocked range".to_owned(),
            "Cost of a first payload that leaves the address to decide vs blocked address ranges",
            "blocked address ranges",
            format!(
                "kernel duration of the first payload packet of a new flow, after its SYN: 64 bytes that no signature or name matcher claims, so the server's address is looked up in the app networks; the server is in a gap between two /28 ranges near the middle of 10.0.0.0/8, where its /16 holds hundreds of range steps (with 100,000 ranges: the range table goes through the bucket's sub-index to a slice of a few steps) and finds nothing; {common}"
            ),
        ),
        (
            "ranges-ipv6",
            "first payload packet without a name (opaque) to an IPv6 address in no blocked network".to_owned(),
            "Cost of a first payload that leaves an IPv6 address to decide vs blocked IPv6 networks",
            "blocked IPv6 networks",
            format!(
                "kernel duration of the first payload packet of a new IPv6 flow, after its SYN: as the IPv4 figure, with the server in a gap between two of N /56 networks spread over 2001:db8::/32; IPv6 app networks are an LPM trie (IMFW_ADDR6), not the IPv4 range table; no target (the issue's scaling case is IPv4); {common}"
            ),
        ),
    ];
    for (k, (id, what, title, x_label, note)) in curves.iter().enumerate() {
        let base = low(&setups[0].series[k]);
        for s in setups {
            let v = low(&s.series[k]);
            let mut rec = json!({
                "scenario": "scaling",
                "name": format!("{what}, {} {x_label}", thousands(s.n.into())),
                "value": r1(v), "unit": "ns/packet",
                "chart": {"id": id, "title": title, "x_label": x_label, "x": s.n},
                "note": format!("{note}; median of the batches {:.1} ns, batches {} ns", median(&s.series[k]), spread(&s.series[k])),
            });
            if s.n != SCALES[0] {
                rec["ref"] = json!(format!("{} {x_label}", SCALES[0]));
                rec["ref_value"] = json!(r1(base));
                let paired: Vec<f64> = s.series[k]
                    .iter()
                    .zip(&setups[0].series[k])
                    .map(|(a, b)| a / b)
                    .collect();
                let (lo, hi) = range(&paired);
                rec["note"] = json!(format!(
                    "{}; each batch's own ratio to the same batch with {}: median {:.2}, range {lo:.2}-{hi:.2}",
                    rec["note"].as_str().unwrap_or_default(),
                    SCALES[0],
                    median(&paired)
                ));
                eprintln!("  {id} {}: batches' own ratios to {}: median {:.2}, range {lo:.2}-{hi:.2}", s.n, SCALES[0], median(&paired));
            }
            if s.n == 100_000 && *id != "ranges-ipv6" {
                rec["target"] = json!({"ratio_max": 1.2});
            }
            emit(&rec);
            eprintln!("  {id} {}: {v:.1} ns", s.n);
        }
    }
}

/// A flow table of `BIG_CAPACITY` holding `n` flows, and the figures measured on it.
struct Table {
    n: u32,
    dp: Dataplane,
    /// A packet without payload of a decided (dropped) flow.
    decided: Vec<u8>,
    /// Entries inserted by the program, and counted in the table (full run only).
    inserted: u64,
    present: Option<usize>,
    repeated: Vec<f64>,
    spread: Vec<f64>,
}

/// A flow table of `BIG_CAPACITY` filled with `n` flows through the program, one SYN each as
/// traffic would, and one decided (dropped WhatsApp) flow to measure.
fn fill_table(plan: &Plan, c: &policy::Compiled, n: u32) -> Result<Table> {
    let hello = ClientHello::new("web.whatsapp.com").build();
    let server = Ipv4Addr::new(198, 51, 100, 40);
    let mut dp = load(BIG_CAPACITY, c)?;
    let t = Instant::now();
    let mut clients = Clients::new();
    for i in 0..n {
        let (ip, port) = clients.take();
        dp.test_run(&syn(ip, port, SERVER))?;
        drain_now_and_then(&mut dp, i);
    }
    let (src, sport) = (Ipv4Addr::new(192, 0, 2, 50), 30_000);
    dp.test_run(&syn(src, sport, server))?;
    if dp.test_run(&data(src, sport, server, &hello))? != XDP_DROP {
        bail!("flows scaling: the WhatsApp flow was not dropped");
    }
    dp.drain_events();
    let snap = dp.snapshot()?;
    let inserted = snap.stat(Stat::FlowsCreated) - snap.stat(Stat::FlowInsertFailed);
    let present = if plan.quick {
        None
    } else {
        Some(dp.flows()?.len())
    };
    eprintln!(
        "  {n} flows filled in {:.1} s (inserted {inserted}, present {present:?})",
        t.elapsed().as_secs_f64()
    );
    Ok(Table {
        n,
        dp,
        decided: ack(src, sport, server),
        inserted,
        present,
        repeated: Vec::new(),
        spread: Vec::new(),
    })
}

fn flows_scaling(plan: &Plan) -> Result<()> {
    let sizes = [1_000u32, plan.big_flows];
    eprintln!("flows: {sizes:?} flows in tables of {BIG_CAPACITY}");
    let c = compile("version: 1\napps:\n  whatsapp: drop\n", "flows")?;
    let mut tables = Vec::new();
    for n in sizes {
        tables.push(fill_table(plan, &c, n)?);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..=plan.batches {
        for t in &mut tables {
            let (act, ns) = t.dp.test_run_timed(&t.decided, plan.repeat)?;
            if act != XDP_DROP {
                bail!(
                    "flows scaling: the decided flow lost its verdict with {} flows in the table",
                    t.n
                );
            }
            // Random flows of the table, one run each: their entries are rarely in the CPU
            // cache, as with real traffic over many flows.
            let spread = known_flow_once(&t.dp, t.n, plan.scale_flows, &mut rng)?;
            if round > 0 {
                t.repeated.push(ns);
                t.spread.push(spread);
            }
        }
    }
    let (base, base_spread) = (low(&tables[0].repeated), low(&tables[0].spread));
    for t in &tables {
        let (v, vs) = (low(&t.repeated), low(&t.spread));
        let count = t.present.map_or_else(
            || format!("{} inserted", t.inserted),
            |p| format!("{p} present"),
        );
        let mut rec = json!({
            "scenario": "scaling", "name": format!("decided flow, {} flows in the table", thousands(t.n.into())),
            "value": r1(v), "unit": "ns/packet",
            "chart": {"id": "flows", "title": "Cost of a decided flow's packet vs flows in the table", "x_label": "flows in the table", "x": t.n},
            "note": format!(
                "a packet without payload of one decided (dropped) flow repeated {} times per batch, kernel mean, {} of {} batches; table of {} entries filled through the program with one SYN per flow ({count}); a repeated packet finds its entry in the CPU cache: the next record takes random flows",
                thousands(plan.repeat.into()),
                low_name(),
                plan.batches,
                thousands(BIG_CAPACITY.into())
            ),
        });
        let mut rec_spread = json!({
            "scenario": "scaling", "name": format!("packet of a random known flow, {} flows in the table", thousands(t.n.into())),
            "value": r1(vs), "unit": "ns/packet",
            "chart": {"id": "flows-spread", "title": "Cost of a packet of a random known flow vs flows in the table", "x_label": "flows in the table", "x": t.n},
            "note": format!(
                "a packet without payload (the path of a decided flow's packet) of a random flow of the table, one run each (repeat 1: the method's own overhead is included, see the per-call floor of the new-flows SYN record), mean of {} per batch, {} of {} batches",
                thousands(plan.scale_flows.into()),
                low_name(),
                plan.batches
            ),
        });
        if t.n != sizes[0] {
            rec["ref"] = json!("1,000 flows");
            rec["ref_value"] = json!(r1(base));
            rec_spread["ref"] = json!("1,000 flows");
            rec_spread["ref_value"] = json!(r1(base_spread));
        }
        emit(&rec);
        emit(&rec_spread);
        eprintln!(
            "  {} flows: decided {v:.1} ns (repeated), random flow {vs:.1} ns (one run)",
            t.n
        );
    }
    if let Some(bytes) = flow_table_memlock(BIG_CAPACITY)? {
        emit(&json!({
            "scenario": "scaling", "name": format!("memory: flow table of {} flows, total", thousands(BIG_CAPACITY.into())),
            "value": bytes, "unit": "bytes",
            "note": "memlock of the flow table map in /proc/self/fdinfo (the kernel's accounting: preallocated elements, buckets, LRU lists)",
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
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let fdinfo = format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(text) = std::fs::read_to_string(&fdinfo) else {
            continue;
        };
        let mut info = MapInfo::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
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
fn flow_table_memlock(capacity: u32) -> Result<Option<u64>> {
    let flow_table = |m: &&MapInfo| {
        m.map_type == BPF_MAP_TYPE_LRU_HASH
            && m.key_size == size_of::<FlowKey>() as u64
            && m.value_size == size_of::<FlowEntry>() as u64
            && m.max_entries == u64::from(capacity)
    };
    Ok(open_maps()?
        .iter()
        .find(flow_table)
        .map(|m| m.memlock)
        .filter(|b| *b > 0))
}

/// Memory per flow and in total, read while `dp` (default capacity) is the process's only data
/// plane.
fn memory(_alone: &Dataplane) -> Result<()> {
    let kv = size_of::<FlowKey>() + size_of::<FlowEntry>();
    emit(&json!({
        "scenario": "scaling", "name": "memory per flow: key + value",
        "value": kv, "unit": "bytes",
        "note": format!("FlowKey {} bytes + FlowEntry {} bytes, what the program stores per flow", size_of::<FlowKey>(), size_of::<FlowEntry>()),
    }));
    let maps = open_maps()?;
    let Some(table) = flow_table_memlock(m::FLOWS_DEFAULT)? else {
        eprintln!("memory: the kernel reports no memlock for the flow table; only key + value sizes are given");
        return Ok(());
    };
    #[expect(
        clippy::cast_precision_loss,
        reason = "a map's size in bytes is far below 2^52"
    )]
    let per_flow = table as f64 / f64::from(m::FLOWS_DEFAULT);
    emit(&json!({
        "scenario": "scaling", "name": "memory per flow: kernel, with its per-element overhead",
        "value": r1(per_flow), "unit": "bytes",
        "note": format!(
            "memlock of the flow table ({table} bytes, /proc/self/fdinfo) / its {} entries: the LRU hash preallocates every element (hash and LRU nodes, key and value) and its buckets at load, so this is paid per slot, used or not",
            thousands(m::FLOWS_DEFAULT.into())
        ),
    }));
    emit(&json!({
        "scenario": "scaling", "name": format!("memory: flow table at the default capacity ({} flows), total", thousands(m::FLOWS_DEFAULT.into())),
        "value": table, "unit": "bytes",
        "note": "memlock of the flow table map in /proc/self/fdinfo",
    }));
    let all: u64 = maps.iter().map(|m| m.memlock).sum();
    let mut largest: Vec<&MapInfo> = maps.iter().collect();
    largest.sort_by_key(|m| std::cmp::Reverse(m.memlock));
    let largest: Vec<String> = largest
        .iter()
        .take(4)
        .map(|m| {
            format!(
                "map type {} with {} entries: {} bytes",
                m.map_type, m.max_entries, m.memlock
            )
        })
        .collect();
    emit(&json!({
        "scenario": "scaling", "name": "memory: all maps of the data plane at the default capacity, total",
        "value": all, "unit": "bytes",
        "note": format!(
            "sum of memlock over the {} BPF maps of one loaded data plane (default policy; programs not included); largest: {}",
            maps.len(),
            largest.join("; ")
        ),
    }));
    eprintln!(
        "  memory: per flow {per_flow:.1} bytes, flow table {table} bytes, all maps {all} bytes"
    );
    Ok(())
}
