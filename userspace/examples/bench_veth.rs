//! End to end on a veth (issue 5, scenario 2): a realistic traffic mix is sent through a veth
//! pair into imfw attached in native mode on the far end, and into the reference programs on the
//! same link in turn; the figure is the packets per second the receiving XDP program handles.
//! Part of `cargo xtask bench`; run as root: `bench_veth [--quick]`. Progress goes to stderr;
//! stdout carries one JSON record per line (scenario `veth`) and nothing else.
//!
//! # The link
//! Two network namespaces of this process (`imfw-<pid>-<n>-vtx` and `-vrx`, removed by guards,
//! also on a panic or an error) joined by a veth pair. IPv6 is off in both, so that neither
//! kernel sends anything of its own (router solicitations, MLD) across the link.
//!
//! # Injection
//! `bench_gen` (ebpf/src/bin/bench_refs.rs) runs with `BPF_PROG_TEST_RUN` in live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`) with the sending veth as ingress interface. Each run of it
//! rewrites the frame into the next frame of the mix (held in an array map, with a cursor) and
//! returns `XDP_TX`, which live-frames mode turns into a transmission out of that veth: the
//! frames reach the peer's XDP program in the mix's order, with their own lengths. Frames go in
//! batches of 64 (one NAPI budget, a quarter of the veth's ring, so the ring never overflows);
//! the softirq that runs the receiving program follows each batch on the same CPU, inside the
//! injector's system call. One CPU thus does everything: the figure is what one core sustains
//! for generator + veth + receiver, and the generator's and the veth's share is the same for
//! every program measured.
//!
//! # The receiver
//! The receiving veth runs, in native (driver) mode, imfw with the default policy and its real
//! verdicts, or a reference: `bench_stateful` (parse to L4, one LRU lookup, insert on a miss)
//! or `bench_empty` (`XDP_PASS`, the link's ceiling). What a program passes goes up the
//! receiving namespace's stack, identically for all of them: the frames are addressed to
//! another MAC than the receiving veth's, so the stack frees them at the first IP check
//! (`PACKET_OTHERHOST`), the cheapest path a passed packet can take, with GRO off. What imfw
//! drops (IM flows the default policy blocks) skips that step, as a gateway's drops skip
//! forwarding; the share of frames it dropped is printed with the figure.
//!
//! # Measurement
//! Each run plays the whole mix once, from empty flow tables (imfw's and the stateful
//! reference's emptied, imfw's event ring drained), so that every flow is new at its first
//! packet, as in the mix. Mpps = frames the receiving program handled (the receiving veth's rx
//! counter, which counts the frames its XDP program ran on; cross-checked with imfw's own
//! packet counter) / the kernel's timing of the injecting call (`BPF_PROG_TEST_RUN` reports
//! the mean time per frame sent). That timing covers the generator, the transmission and the
//! receiving softirqs, which run inside it after each batch, and leaves out the time the
//! injector gives to other tasks at the run's reschedule points: on a shared machine the
//! injector's wall time measures the other load as much as the link (it is printed too, and
//! noted in the records). Programs alternate run by run in a rotating order after one warm-up
//! round, and each figure is the median of its runs.
//!
//! Before the rounds, the mix goes through imfw once frame by frame with `BPF_PROG_TEST_RUN`;
//! every run on the veth must drop exactly as many frames, or the bench stops: a frame the
//! generator sent wrong would get another verdict.
//!
//! The sending veth needs no program of its own: a veth accepts frames transmitted by XDP
//! when its peer's NAPI is on, which the receiving program's attachment turns on.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use imfw::{
    bench_refs::{BenchRefs, Reference, TrafficGen, GEN_FRAME_MAX},
    dataplane::{ifindex, AttachMode, Dataplane},
    policy,
};
use imfw_common::{
    maps::FLOWS_DEFAULT,
    verdict::{DropReason, Stat},
};
use imfw_tests::{
    bench::median,
    mix::{self, Mix, MixConfig},
    netns::{self, Netns},
};
use serde_json::{json, Value};

const SCENARIO: &str = "veth";
/// End-to-end target: at least this share of the stateful reference's Mpps (issue 5).
const RATIO_MIN: f64 = 0.85;
/// Frames per live-frames batch: one NAPI budget, well inside the veth's 256-frame ring.
const BATCH: u32 = 64;
/// The sending and the receiving veth (each alone in its namespace).
const TX_IF: &str = "vb-tx";
const RX_IF: &str = "vb-rx";
/// The receiving veth's MAC: one no frame of the mix is addressed to, so that passed frames
/// end at the first IP check (see the module's documentation).
const RX_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xbe, 0x02];
/// Sizes imfw's and the stateful reference's flow tables alike.
const FLOW_CAPACITY: u32 = FLOWS_DEFAULT;
/// The mix's frames live in one array map of 2 KiB values: past this many, the run asks for
/// less (about 540 MB).
const MAX_FRAMES: usize = 262_144;

/// How much to measure.
struct Plan {
    quick: bool,
    mix: MixConfig,
    /// Timed rounds (each runs every program once), after one warm-up round.
    rounds: usize,
    /// Past this, no new round starts (at least `MIN_ROUNDS` run).
    cap: Duration,
}

const MIN_ROUNDS: usize = 3;

impl Plan {
    fn new(quick: bool) -> Self {
        let (flows, rounds, cap) = if quick {
            (2_000, 20, Duration::from_secs(14))
        } else {
            (4_000, 40, Duration::from_secs(90))
        };
        Plan {
            quick,
            mix: MixConfig {
                flows,
                im_share: 0.2,
                seed: 0x1f3e_2026,
            },
            rounds,
            cap,
        }
    }
}

/// A program on the receiving end.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Prog {
    Imfw,
    Ref(Reference),
}

impl Prog {
    const ALL: [Prog; 3] = [
        Prog::Imfw,
        Prog::Ref(Reference::Stateful),
        Prog::Ref(Reference::Empty),
    ];

    fn label(self) -> &'static str {
        match self {
            Prog::Imfw => "imfw",
            Prog::Ref(r) => r.label(),
        }
    }

    fn index(self) -> usize {
        match self {
            Prog::Imfw => 0,
            Prog::Ref(Reference::Stateful) => 1,
            Prog::Ref(Reference::Empty) => 2,
        }
    }
}

/// One play of the mix.
#[derive(Clone, Copy)]
struct Measured {
    /// Frames the receiving program handled per second of the kernel's own timing of the run.
    mpps: f64,
    /// The same per second of the injector's wall time (system call included).
    wall_mpps: f64,
    /// Frames the receiving program handled.
    delivered: u64,
}

/// One run of one program over the mix.
struct Sample {
    m: Measured,
    /// Frames imfw dropped (imfw only).
    dropped: u64,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_veth: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut quick = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--quick" => quick = true,
            "-h" | "--help" => {
                eprintln!(
                    "usage: bench_veth [--quick]   (root; JSON records on stdout, progress on stderr)"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (usage: bench_veth [--quick])"),
        }
    }
    if !imfw_tests::util::is_root() {
        bail!("bench_veth needs root (network namespaces, XDP attach, BPF_PROG_TEST_RUN)");
    }
    let plan = Plan::new(quick);
    let started = Instant::now();
    let compiled = policy::parse(policy::default_policy_text(), "policy.yaml")
        .and_then(|p| p.compile())
        .map_err(|e| anyhow!("default policy: {e}"))?;

    let mix = mix::build(&plan.mix);
    check_mix(&mix)?;
    let mix_text = describe_mix(&plan, &mix);
    eprintln!("bench_veth: {mix_text}");

    // Namespaces of runs that died without cleaning up go first; ours go with their guards.
    netns::remove_stale();
    let link = VethLink::new()?;
    let cpu = pick_cpu();
    let gen = TrafficGen::load(&mix.frames)?;
    let mut refs = BenchRefs::load(FLOW_CAPACITY)?;
    let mut dp = Dataplane::load(FLOW_CAPACITY)?;
    dp.apply_offline(&compiled)?;
    let expected_drops = offline_drops(&mut dp, &mix.frames)?;
    eprintln!(
        "bench_veth: imfw drops {expected_drops} of the mix's frames through BPF_PROG_TEST_RUN; each run on the veth must drop as many"
    );
    let mut bench = Bench {
        link: &link,
        gen,
        cpu,
        frames: u32::try_from(mix.frames.len())?,
        dp: &mut dp,
    };
    eprintln!(
        "bench_veth: {} run: {} rounds after a warm-up, each plays the mix once per program, on CPU {cpu}",
        if plan.quick { "quick" } else { "full" },
        plan.rounds
    );

    let mut samples: [Vec<Sample>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let timed = Instant::now();
    for round in 0..=plan.rounds {
        if round > MIN_ROUNDS && timed.elapsed() > plan.cap {
            eprintln!("bench_veth: time cap reached after {} rounds", round - 1);
            break;
        }
        for k in 0..Prog::ALL.len() {
            let p = Prog::ALL[(k + round) % Prog::ALL.len()];
            let s = bench.run_once(p, &mut refs)?;
            if p == Prog::Imfw && s.dropped != expected_drops {
                bail!(
                    "imfw dropped {} frames of the mix on the veth but {expected_drops} of the same frames through BPF_PROG_TEST_RUN: the receiver did not see the mix as built",
                    s.dropped
                );
            }
            eprintln!(
                "bench_veth: {} {:<19} {:6.3} Mpps ({:.3} by wall time; {} frames{})",
                if round == 0 {
                    "warm-up".to_owned()
                } else {
                    format!("round {round:2}")
                },
                p.label(),
                s.m.mpps,
                s.m.wall_mpps,
                s.m.delivered,
                if p == Prog::Imfw {
                    format!(", {} dropped", s.dropped)
                } else {
                    String::new()
                }
            );
            if round > 0 {
                samples[p.index()].push(s);
            }
        }
    }
    report(&samples, &mix_text)?;
    drop(bench);
    drop(dp);
    drop(link);
    eprintln!(
        "bench_veth: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How many of the mix's frames imfw drops when they are run through it one by one with
/// `BPF_PROG_TEST_RUN`, from an empty flow table (left empty again). The generator is checked
/// against it: a frame it sent wrong would get another verdict.
fn offline_drops(dp: &mut Dataplane, frames: &[Vec<u8>]) -> Result<u64> {
    const XDP_DROP: u32 = 1;
    dp.clear_flows()?;
    dp.drain_events();
    let mut drops = 0;
    for (i, f) in frames.iter().enumerate() {
        if dp.test_run(f)? == XDP_DROP {
            drops += 1;
        }
        // Keeps the event ring from filling, as it never does on the veth (drained per run).
        if i % 256 == 255 {
            dp.drain_events();
        }
    }
    dp.clear_flows()?;
    dp.drain_events();
    Ok(drops)
}

/// The mix must be what the note says: every frame sendable by the generator, none addressed
/// to the receiving veth or to a group (those would go further up the stack than the others).
fn check_mix(mix: &Mix) -> Result<()> {
    if mix.frames.is_empty() {
        bail!("the traffic mix is empty");
    }
    if mix.frames.len() > MAX_FRAMES {
        bail!(
            "the traffic mix has {} frames, more than the {MAX_FRAMES} the generator is given room for",
            mix.frames.len()
        );
    }
    for (i, f) in mix.frames.iter().enumerate() {
        if !(14..=GEN_FRAME_MAX).contains(&f.len()) {
            bail!("frame {i} of the mix is {} bytes long", f.len());
        }
        if f[..6] == RX_MAC || f[0] & 1 != 0 {
            bail!(
                "frame {i} of the mix is addressed to {:02x?}: the receiver's own or a group address",
                &f[..6]
            );
        }
    }
    Ok(())
}

#[expect(
    clippy::cast_precision_loss,
    reason = "frame counts and bytes far below 2^52"
)]
fn describe_mix(plan: &Plan, mix: &Mix) -> String {
    let n = mix.frames.len();
    let avg = mix.bytes as f64 / n as f64;
    format!(
        "traffic mix: {} flows ({} IM, share {}), {n} frames, {:.1} MB, mean frame {avg:.0} bytes (tests/src/mix.rs, seed {:#x})",
        mix.flows,
        mix.im_flows,
        plan.mix.im_share,
        mix.bytes as f64 / 1e6,
        plan.mix.seed
    )
}

/// The CPU this process runs on now: the injector is pinned there, so that generator, veth and
/// receiver (all run by the injector's system call and its softirqs) share one core run after
/// run.
fn pick_cpu() -> usize {
    imfw_tests::bench::current_cpu().unwrap_or(0)
}

/// Pins the calling thread to `cpu` (best effort: without it the figures are only noisier).
fn pin(cpu: usize) {
    let _ = imfw_tests::bench::pin(cpu);
}

// ---------------------------------------------------------------------------------------------
// The link.

/// The two namespaces and the veth between them; dropping it removes both namespaces, and the
/// veth (with whatever is attached to it) with them.
struct VethLink {
    tx: Netns,
    rx: Netns,
    tx_ifindex: u32,
    rx_ifindex: u32,
}

impl VethLink {
    fn new() -> Result<Self> {
        let tx = Netns::with_role("vtx")?;
        let rx = Netns::with_role("vrx")?;
        for ns in [&tx, &rx] {
            // Before the veth exists, so that its ends never get an IPv6 address either.
            ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
            ns.sysctl("net/ipv6/conf/default/disable_ipv6", "1")?;
        }
        netns::veth_pair(&tx, TX_IF, &rx, RX_IF)?;
        let mac = RX_MAC
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        rx.ip(&["link", "set", RX_IF, "address", &mac])?;
        // Passed frames take the plain receive path, not GRO's coalescing.
        rx.run(&["ethtool", "-K", RX_IF, "gro", "off"])
            .context("turning GRO off on the receiving veth")?;
        rx.ip(&["link", "set", RX_IF, "up"])?;
        tx.ip(&["link", "set", TX_IF, "up"])?;
        let tx_ifindex = tx.enter_with(|| ifindex(TX_IF))??;
        let rx_ifindex = rx.enter_with(|| ifindex(RX_IF))??;
        eprintln!(
            "bench_veth: veth {}:{TX_IF} -> {}:{RX_IF}",
            tx.name(),
            rx.name()
        );
        Ok(VethLink {
            tx,
            rx,
            tx_ifindex,
            rx_ifindex,
        })
    }

    /// The receiving veth's counters: frames its XDP program ran on, frames dropped on the way
    /// in (a full ring).
    fn rx_counters(&self) -> Result<(u64, u64)> {
        let out = self.rx.ip(&["-s", "-j", "link", "show", "dev", RX_IF])?;
        let v: Value = serde_json::from_str(&out).context("parsing `ip -s -j link` output")?;
        let rx = &v[0]["stats64"]["rx"];
        match (rx["packets"].as_u64(), rx["dropped"].as_u64()) {
            (Some(p), Some(d)) => Ok((p, d)),
            _ => bail!("no rx counters for {RX_IF} in `ip -s -j link`: {out}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Runs.

struct Bench<'a> {
    link: &'a VethLink,
    gen: TrafficGen,
    cpu: usize,
    frames: u32,
    /// imfw with the default policy, loaded once.
    dp: &'a mut Dataplane,
}

impl Bench<'_> {
    /// Attaches `p` to the receiving veth with fresh state, plays the mix once, detaches.
    fn run_once(&mut self, p: Prog, refs: &mut BenchRefs) -> Result<Sample> {
        match p {
            Prog::Imfw => {
                // Empty flow table and event ring, as the mix assumes; counters are read as
                // differences.
                let dp = &mut *self.dp;
                dp.clear_flows()?;
                dp.drain_events();
                let mode = self.link.rx.enter_with(|| dp.attach(RX_IF))??;
                if mode != AttachMode::Native {
                    dp.detach_all()?;
                    bail!("imfw got {} mode on the veth, not native", mode.name());
                }
                let before = dp.snapshot()?;
                let played = Self::play(self.link, &mut self.gen, self.cpu, self.frames);
                dp.detach_all()?;
                let m = played?;
                let after = dp.snapshot()?;
                let handled = after.stat(Stat::Packets) - before.stat(Stat::Packets);
                if handled != m.delivered {
                    bail!(
                        "imfw counted {handled} packets, the veth {}: the figure would not be imfw's",
                        m.delivered
                    );
                }
                let dropped = DropReason::ALL
                    .iter()
                    .map(|&r| after.drop_reason(r).packets - before.drop_reason(r).packets)
                    .sum();
                Ok(Sample { m, dropped })
            }
            Prog::Ref(r) => {
                if r == Reference::Stateful {
                    refs.clear_flows()?;
                }
                let rx_ifindex = self.link.rx_ifindex;
                let link_id = self.link.rx.enter_with(|| refs.attach(r, rx_ifindex))??;
                let played = Self::play(self.link, &mut self.gen, self.cpu, self.frames);
                refs.detach(r, link_id)?;
                Ok(Sample {
                    m: played?,
                    dropped: 0,
                })
            }
        }
    }

    /// Plays the mix once from its first frame.
    fn play(link: &VethLink, gen: &mut TrafficGen, cpu: usize, frames: u32) -> Result<Measured> {
        gen.rewind()?;
        let (rx0, drop0) = link.rx_counters()?;
        let gen = &*gen;
        let tx_ifindex = link.tx_ifindex;
        let played = link.tx.enter_with(move || {
            pin(cpu);
            gen.play(tx_ifindex, frames, BATCH)
        })??;
        // The receiving softirqs run inside the call; wait briefly in case the last batch's
        // went to ksoftirqd.
        let mut counters = link.rx_counters()?;
        let deadline = Instant::now() + Duration::from_millis(500);
        while counters.0 - rx0 < u64::from(frames) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
            counters = link.rx_counters()?;
        }
        let delivered = counters.0 - rx0;
        let ring_drops = counters.1 - drop0;
        if delivered == 0 {
            bail!("no frame reached the receiving veth's XDP program");
        }
        if delivered != u64::from(frames) || ring_drops != 0 {
            eprintln!(
                "bench_veth: warning: {frames} frames sent, {delivered} handled by the receiver, {ring_drops} dropped on the way in"
            );
        }
        if played.kernel_ns_per_frame <= 0.0 {
            bail!("the kernel timed the run at 0 ns per frame");
        }
        // The kernel's mean is per frame sent; the receiver handled `delivered` of them in the
        // same time.
        let kernel_s = played.kernel_ns_per_frame * f64::from(frames) / 1e9;
        #[expect(clippy::cast_precision_loss, reason = "frame counts far below 2^52")]
        let delivered_f = delivered as f64;
        Ok(Measured {
            mpps: delivered_f / kernel_s / 1e6,
            wall_mpps: delivered_f / played.wall.as_secs_f64() / 1e6,
            delivered,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Records.

fn report(samples: &[Vec<Sample>; 3], mix_text: &str) -> Result<()> {
    let kernel: Vec<Vec<f64>> = samples
        .iter()
        .map(|v| v.iter().map(|s| s.m.mpps).collect())
        .collect();
    let wall: Vec<Vec<f64>> = samples
        .iter()
        .map(|v| v.iter().map(|s| s.m.wall_mpps).collect())
        .collect();
    let runs = kernel[0].len();
    let [imfw, stateful, empty] = [0, 1, 2].map(|i| median(&kernel[i]));
    let [imfw_wall, stateful_wall, empty_wall] = [0, 1, 2].map(|i| median(&wall[i]));
    // Runs of one round are next to each other in time: their ratio is the least disturbed by
    // other load on the machine.
    let paired: Vec<f64> = kernel[0]
        .iter()
        .zip(&kernel[1])
        .map(|(a, b)| a / b)
        .collect();
    let paired = median(&paired);
    let frames: u64 = samples[0].iter().map(|s| s.m.delivered).sum();
    let dropped: u64 = samples[0].iter().map(|s| s.dropped).sum();
    #[expect(clippy::cast_precision_loss, reason = "frame counts far below 2^52")]
    let drop_share = if frames == 0 {
        0.0
    } else {
        100.0 * dropped as f64 / frames as f64
    };
    let method = format!(
        "median of {runs} runs, each playing the mix once from empty flow tables, programs alternating; frames injected with BPF_PROG_TEST_RUN live frames (XDP_TX from a generator program, batches of {BATCH}) into a veth whose peer runs the program in native mode; Mpps = frames the receiver's XDP program handled / the kernel's timing of the injecting call (generator, veth and the receiving softirqs, all on one CPU; time given to other tasks at reschedule points excluded); passed frames end at the receiving stack's first IP check (addressed to another MAC), identically for all programs"
    );
    record(
        "imfw, traffic mix",
        imfw,
        Some(("stateful reference, traffic mix", stateful)),
        Some(json!({"ratio_min": RATIO_MIN})),
        &format!(
            "{mix_text}; imfw with the default policy and its real verdicts dropped {drop_share:.1}% of the frames (the stack step that passed frames take is skipped for those); runs {}; median of per-round ratios to the stateful reference {paired:.3}; by injector wall time {imfw_wall:.3} Mpps (reference {stateful_wall:.3}); {method}",
            spread(&kernel[0])
        ),
    )?;
    record(
        "stateful reference, traffic mix",
        stateful,
        Some(("empty program, traffic mix", empty)),
        None,
        &format!(
            "parse to L4, one LRU lookup (capacity {FLOW_CAPACITY}), insert on a miss, passes every frame; runs {}; by injector wall time {stateful_wall:.3} Mpps; {method}",
            spread(&kernel[1])
        ),
    )?;
    record(
        "empty program, traffic mix (link ceiling)",
        empty,
        None,
        None,
        &format!(
            "XDP_PASS and nothing else: what generator, veth and the stack's drop of passed frames cost alone; runs {}; by injector wall time {empty_wall:.3} Mpps; {method}",
            spread(&kernel[2])
        ),
    )?;
    let ratio = imfw / stateful;
    eprintln!(
        "bench_veth: imfw {imfw:.3} Mpps, stateful reference {stateful:.3} Mpps (ratio {ratio:.2}, paired {paired:.2}, target >= {RATIO_MIN}: {}), empty program {empty:.3} Mpps; imfw dropped {drop_share:.1}% of the frames",
        if ratio >= RATIO_MIN { "met" } else { "not met" }
    );
    eprintln!(
        "bench_veth: by injector wall time: imfw {imfw_wall:.3}, stateful reference {stateful_wall:.3}, empty program {empty_wall:.3} Mpps"
    );
    Ok(())
}

fn record(
    name: &str,
    value: f64,
    reference: Option<(&str, f64)>,
    target: Option<Value>,
    note: &str,
) -> Result<()> {
    let mut r = json!({"scenario": SCENARIO, "name": name, "value": round3(value), "unit": "Mpps"});
    if let Some((label, v)) = reference {
        r["ref"] = json!(label);
        r["ref_value"] = json!(round3(v));
    }
    if let Some(t) = target {
        r["target"] = t;
    }
    r["note"] = json!(note);
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn spread(v: &[f64]) -> String {
    let (lo, hi) = imfw_tests::bench::range(v);
    format!("{lo:.3}-{hi:.3} Mpps")
}
