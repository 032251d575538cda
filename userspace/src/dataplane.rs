//! Loads the XDP program, writes a compiled policy into its maps, attaches it to interfaces and
//! reads its state back. The same loaded program serves the live gateway (`imfw run`) and
//! offline analysis (`imfw classify`, through `BPF_PROG_TEST_RUN`), so the two cannot disagree.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::IpAddr,
    os::fd::AsFd as _,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, DevMap, HashMap, LpmTrie, MapData, PerCpuArray, ProgramArray, RingBuf, lpm_trie::Key},
    programs::{
        TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use imfw_common::{
    config::{CONTROLLER_GRACE_NS, Config, Generations},
    event::{EVENT_CLASSIFIED, EVENT_PAYLOAD, EVENT_STREAM, FlowEvent, PayloadEvent},
    flow::{FLAG_CLASS_KNOWN, FLAG_CONTENT_BLOCKED, FlowEntry, FlowKey, STATE_DECIDED},
    maps::{self as m, LPM_GEN_BITS, NAME_BUCKETS, NAME_FILTER_WORDS, lpm4, lpm6, name_filter_bit, policy_index, redirect_index, stun_key},
    matcher::{AppMatch, MAX_SIG_CLASSES, NameBucket, NameKey, domain_hash_from, name_seed, PolicyAction, SigClass, SigKey, SigPrefilter, SigValue, SrcClass},
    ranges::{RANGE_BUCKETS, RANGE_STEPS, RANGE_SUB_BLOCKS, RANGE_SUBS, RangeBucket, range_bucket_index, range_step_index, range_sub_index},
    verdict::{COUNTER_CELLS, Counter, CounterTable, DROP_REASONS, DropReason, STATS, Stat, VERDICTS, Verdict},
};

use crate::{
    classlog::ClassLog,
    packet,
    pins::{self, Found, MapSpec, PinDir},
    policy::Compiled,
    rangetab::RangeTable,
};

/// How long a switch waits after the flip before it re-evaluates flows and removes the old
/// generation. A packet that read the old generation finishes its run on it: XDP programs run
/// to completion in softirq context, in microseconds, so this is a wide margin.
const GRACE: Duration = Duration::from_millis(20);
/// `BPF_EXIST`: update an element only if it is still there (a flow evicted meanwhile stays gone).
const BPF_EXIST: u64 = 2;

/// What a policy switch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Switched {
    /// The generation now in force, and the policy version (policies written since load).
    pub generation: u32,
    pub version: u32,
    /// Decided flows re-evaluated, and how many of them got another verdict.
    pub flows: u64,
    pub changed: u64,
    /// Flows whose verdict the content policy set, left as they are.
    pub content_blocked: u64,
    /// Addresses learned from DNS carried over into the new generation.
    pub learned: usize,
}

/// The XDP object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imfw"));

/// How an interface got the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    /// Generic (skb) mode: slower, and only used when the driver refuses native mode.
    Generic,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
}

pub struct Attached {
    pub iface: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    link: LinkHandle,
}

/// An attachment: owned by the program (it ends with this process), or a bpf_link that is
/// (or is about to be) pinned and outlives it.
enum LinkHandle {
    Owned(XdpLinkId),
    /// `pinned`: the pin exists already (an adopted link); else `commit_pins` pins it.
    Pinned { link: Option<FdLink>, pinned: bool },
}

/// The pinned state of an `imfw run`.
struct Pinning {
    dir: PinDir,
    /// The state maps came from an earlier run's pins.
    adopted: bool,
    /// A link's program was replaced (so the old build may still be finishing a packet).
    swapped: bool,
}

pub struct Dataplane {
    /// Also holds the inspector jump table open: the kernel empties a program array when its
    /// last user reference closes, which would silently cut the inspector off.
    ebpf: Ebpf,
    attached: Vec<Attached>,
    events: Option<RingBuf<MapData>>,
    /// Where the program reports classified flows (x86-64; elsewhere they come in `events`).
    class_log: ClassLog,
    pins: Option<Pinning>,
    /// What `IMFW_CONFIG[0]` holds; this is its only writer.
    gens: Generations,
    /// The policy whose entries each generation holds, to remove them when it is retired.
    written: [Option<Box<Compiled>>; 2],
    /// Each generation's IPv4 range table, as written (with its learned flags).
    ranges4: [RangeTable; 2],
    /// Addresses learned from DNS and their apps: in the generation in force, carried over.
    learned: StdHashMap<IpAddr, u16>,
    /// A policy written beside the one in force, waiting for `commit`.
    staged: Option<Staged>,
}

struct Staged {
    generation: u32,
    settings: Config,
    /// The learned addresses in the generation in force, to remove with it.
    learned_before: Vec<IpAddr>,
    carried: usize,
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// (app, verdict) -> counter, non-zero cells only.
    pub counters: BTreeMap<(u16, u8), Counter>,
    pub drops: Vec<(DropReason, Counter)>,
    pub stats: Vec<(Stat, u64)>,
}

impl Snapshot {
    /// Fills in the counters the program leaves to userspace, to keep them off the per-packet
    /// path: `Stat::Packets` (every packet ends in exactly one verdict cell or non-flow stat)
    /// and the `policy` drop reason (the drop verdict cells).
    fn derive(&mut self) {
        let cells: u64 = self.counters.values().map(|c| c.packets).sum();
        let other: u64 = [Stat::NonIp, Stat::OtherL4, Stat::Unparsed, Stat::Fragments].iter().map(|st| self.stat(*st)).sum();
        if let Some((_, v)) = self.stats.iter_mut().find(|(k, _)| *k == Stat::Packets) {
            *v += cells + other;
        }
        let dropped = self
            .counters
            .iter()
            .filter(|((_, verdict), _)| *verdict == Verdict::Drop as u8)
            .fold(Counter::default(), |a, (_, c)| a + *c);
        if let Some((_, c)) = self.drops.iter_mut().find(|(r, _)| *r == DropReason::Policy) {
            c.packets += dropped.packets;
            c.bytes += dropped.bytes;
        }
    }

    pub fn stat(&self, s: Stat) -> u64 {
        self.stats.iter().find(|(k, _)| *k == s).map_or(0, |(_, v)| *v)
    }

    pub fn drop_reason(&self, r: DropReason) -> Counter {
        self.drops.iter().find(|(k, _)| *k == r).map_or(Counter::default(), |(_, v)| *v)
    }

    pub fn to_json(&self, compiled: &Compiled) -> serde_json::Value {
        let counters: Vec<_> = self
            .counters
            .iter()
            .map(|((app, verdict), c)| {
                serde_json::json!({
                    "app": if *app == 0 { None } else { Some(compiled.app_name(*app).map_or_else(|| format!("app#{app}"), str::to_owned)) },
                    "verdict": Verdict::from_u8(*verdict).name(),
                    "packets": c.packets,
                    "bytes": c.bytes,
                })
            })
            .collect();
        let drops: serde_json::Map<_, _> = self
            .drops
            .iter()
            .map(|(r, c)| (r.name().to_owned(), serde_json::json!({"packets": c.packets, "bytes": c.bytes})))
            .collect();
        let stats: serde_json::Map<_, _> =
            self.stats.iter().map(|(s, v)| (s.name().to_owned(), serde_json::json!(v))).collect();
        serde_json::json!({"counters": counters, "drops": drops, "stats": stats})
    }
}

fn map_err(name: &str) -> impl FnOnce(aya::maps::MapError) -> anyhow::Error + '_ {
    move |e| anyhow!("map {name}: {e}")
}

impl Dataplane {
    /// Loads the program and creates its maps. Needs `CAP_BPF` (root).
    ///
    /// Nothing is pinned, and the controller counts as always alive: the caller (`imfw
    /// classify`, tests, benches) reads the events itself between packets.
    pub fn load(flow_capacity: u32) -> Result<Self> {
        let (mut loader, cpus) = sized_loader(flow_capacity)?;
        let ebpf = loader.load(object()?).map_err(|e| privilege_hint(anyhow!(e)).context("loading the XDP object"))?;
        let mut dp = Self::with_programs(ebpf, cpus)?;
        dp.set_controller_deadline(u64::MAX)?;
        Ok(dp)
    }

    /// Loads the program for `imfw run`, with its state pinned under `dir`: when an earlier
    /// run left compatible pins there, its flow table and counters are adopted (reused, so
    /// every flow keeps its verdict); incompatible pins are refused before anything changes.
    /// The caller then writes the policy (`apply`), attaches (`attach`, which swaps the new
    /// program into adopted links) and pins the rest (`commit_pins`).
    pub fn load_pinned(flow_capacity: u32, dir: PinDir) -> Result<Self> {
        let object = object()?;
        let expected = adopted_specs(object, flow_capacity)?;
        let found = dir.inspect(&expected)?;
        let (mut loader, cpus) = sized_loader(flow_capacity)?;
        if found == Found::Compatible {
            for name in m::ADOPTED {
                loader.map_pin_path(name, dir.map_path(name));
            }
        }
        let ebpf = loader.load(object).map_err(|e| privilege_hint(anyhow!(e)).context("loading the XDP object"))?;
        let mut dp = Self::with_programs(ebpf, cpus)?;
        let adopted = found == Found::Compatible;
        if adopted {
            let flows = dp.flows().map_or(0, |f| f.len());
            log::info!("adopted the pinned state in {}: {flows} flows keep their verdicts, counters go on", dir.root().display());
        }
        dp.heartbeat()?;
        // The new build's jump table is pinned before any link runs it (see pins.rs).
        let id = dp.program()?.info().map_err(|e| anyhow!("program info: {e}"))?.id();
        let path = dir.jump_path(id);
        pins::remove_pin(&path)?;
        ProgramArray::try_from(dp.map(m::JUMP)?)?.pin(&path).map_err(|e| anyhow!("pinning {}: {e}", path.display()))?;
        dp.pins = Some(Pinning { dir, adopted, swapped: false });
        Ok(dp)
    }

    fn with_programs(mut ebpf: Ebpf, cpus: usize) -> Result<Self> {
        for name in m::PROGRAMS {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .map_err(|e| privilege_hint(anyhow!(e)))
                .with_context(|| format!("loading the XDP program {name} into the kernel"))?;
            // How close each program is to the verifier's limit of 1M processed instructions.
            if let Some(n) = prog.info().ok().and_then(|i| i.verified_instruction_count()) {
                log::debug!("program={name} verifier_processed_insns={n}");
            }
        }
        for (slot, name) in m::STAGES {
            let fd = {
                let prog: &Xdp = ebpf.program(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
                prog.fd()?.try_clone().map_err(|e| anyhow!("program {name}: {e}"))?
            };
            let map = ebpf.map_mut(m::JUMP).ok_or_else(|| anyhow!("map {} missing", m::JUMP))?;
            ProgramArray::try_from(map)?.set(slot, &fd, 0).map_err(map_err(m::JUMP))?;
        }
        let events = ebpf.take_map(m::EVENTS).ok_or_else(|| anyhow!("map {} missing", m::EVENTS))?;
        let events = RingBuf::try_from(events)?;
        let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing"));
        let class_log = ClassLog::new(take(&mut ebpf, m::CLASS_LOG)?, take(&mut ebpf, m::CLASS_LOG_POS)?, cpus)?;
        Ok(Dataplane {
            ebpf,
            attached: Vec::new(),
            events: Some(events),
            class_log,
            pins: None,
            gens: Generations::EMPTY,
            written: [None, None],
            ranges4: [RangeTable::default(), RangeTable::default()],
            learned: StdHashMap::new(),
            staged: None,
        })
    }

    /// Takes the reader of the program's log ring (see `klog`): from then on its records go to
    /// the global logger when `klog::forward` runs.
    pub fn kernel_logger(&mut self) -> Result<crate::klog::KernelLogger> {
        self.kernel_logger_with(log::logger())
    }

    /// As [`Dataplane::kernel_logger`], writing to `logger`; `flush` reads what is in the ring.
    pub fn kernel_logger_with<T: log::Log>(&mut self, logger: T) -> Result<aya_log::EbpfLogger<T>> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, logger).map_err(|e| anyhow!("the XDP program's log ring: {e}"))
    }

    /// Writes the controller's heartbeat: it counts as alive for `CONTROLLER_GRACE_NS` more.
    pub fn heartbeat(&mut self) -> Result<()> {
        self.set_controller_deadline(monotonic_ns().saturating_add(CONTROLLER_GRACE_NS))
    }

    /// Sets the time (CLOCK_MONOTONIC ns) from which the data plane counts the controller as
    /// down: 0 is now, `u64::MAX` never.
    pub fn set_controller_deadline(&mut self, ns: u64) -> Result<()> {
        let mut a: Array<_, u64> = Array::try_from(self.map_mut(m::ALIVE)?)?;
        a.set(0, ns, 0).map_err(map_err(m::ALIVE))
    }

    fn program(&self) -> Result<&Xdp> {
        Ok(self.ebpf.program(m::PROGRAM).ok_or_else(|| anyhow!("program missing"))?.try_into()?)
    }

    /// The entry program, for a bench's in-kernel player to hand frames to.
    pub fn program_fd(&self) -> Result<&aya::programs::ProgramFd> {
        Ok(self.program()?.fd()?)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing from the XDP object"))
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing from the XDP object"))
    }

    /// Writes a compiled policy into the maps and puts it in force (see [`Dataplane::switch`]).
    /// On first load the configuration goes last, and only it sets `ready`, so packets never
    /// see a half-written policy.
    pub fn apply(&mut self, c: &Compiled) -> Result<Switched> {
        let redirect: Vec<u32> = c
            .redirect_ifaces
            .iter()
            .map(|name| ifindex(name).with_context(|| format!("redirect interface {name}")))
            .collect::<Result<_>>()?;
        self.switch(c, &redirect)
    }

    /// As `apply`, for offline analysis: redirect targets need not exist on this machine, so
    /// the devmap stays empty (redirected flows keep their verdict in the flow table).
    pub fn apply_offline(&mut self, c: &Compiled) -> Result<Switched> {
        self.switch(c, &[])
    }

    /// The generation in force (0 or 1) and its settings.
    pub fn active(&self) -> (u32, Config) {
        let g = self.gens.active & 1;
        (g, self.gens.gens[g as usize])
    }

    /// What a flow of `app` opened by `client` gets under the policy in force, as the kernel
    /// stores it (redirect slots of the generation in force).
    pub fn decide(&self, c: &Compiled, client: IpAddr, app: u16) -> PolicyAction {
        gen_action(self.gens.active & 1, c.decide(client, app))
    }

    /// Puts policy `c` in force without a packet ever seeing parts of two policies:
    /// [`Dataplane::stage`], then [`Dataplane::commit`].
    pub fn switch(&mut self, c: &Compiled, redirect: &[u32]) -> Result<Switched> {
        self.stage(c, redirect)?;
        self.commit()
    }

    /// The first half of a switch, which packets do not see: policy `c` is written completely
    /// into the inactive generation, then its settings beside those in force (no byte of the
    /// active ones changes). A failure removes what was written and leaves the policy in force
    /// untouched. Learned addresses are copied over now: call [`Dataplane::commit`] next,
    /// before anything else writes the maps.
    pub fn stage(&mut self, c: &Compiled, redirect: &[u32]) -> Result<()> {
        let first = self.gens.ready == 0;
        let old = self.gens.active & 1;
        let new = if first { 0 } else { old ^ 1 };
        self.staged = None;
        // Left over when an earlier removal failed, or staged and never committed.
        self.clear_generation(new, &[]).context("removing the entries an earlier policy left")?;
        let version = if first { 1 } else { self.gens.gens[old as usize].version.wrapping_add(1) };
        let learned_before: Vec<IpAddr> = self.learned.keys().copied().collect();
        self.written[new as usize] = Some(Box::new(c.clone()));
        let mut v = self.gens;
        v.gens[new as usize] = Config { version, generation: new, ..c.config };
        let written = self.write_generation(new, c, redirect).and_then(|carried| {
            // On first load nothing reads the settings yet: they go with `ready`, in commit.
            if !first {
                self.write_config(v).context("writing the new policy's settings")?;
            }
            Ok(carried)
        });
        let carried = match written {
            Ok(n) => n,
            Err(e) => {
                if let Err(e2) = self.clear_generation(new, &learned_before) {
                    log::warn!("removing the half-written policy: {e2:#}");
                }
                return Err(e.context("writing the new policy beside the one in force (which stays)"));
            }
        };
        self.staged = Some(Staged { generation: new, settings: v.gens[new as usize], learned_before, carried });
        Ok(())
    }

    /// The second half of a switch: one update flips `active` to the staged generation (its
    /// low byte is the only byte that changes). After [`GRACE`], decided flows are
    /// re-evaluated under the new policy and the old generation's entries are removed.
    pub fn commit(&mut self) -> Result<Switched> {
        let st = self.staged.take().ok_or_else(|| anyhow!("no policy staged"))?;
        let first = self.gens.ready == 0;
        let old = self.gens.active & 1;
        let mut v = self.gens;
        v.gens[st.generation as usize] = st.settings;
        v.active = st.generation;
        v.ready = 1;
        self.write_config(v).context("switching to the new policy")?;
        let mut done =
            Switched { generation: st.generation, version: st.settings.version, learned: st.carried, ..Switched::default() };
        if first {
            return Ok(done);
        }
        std::thread::sleep(GRACE);
        // The new policy is in force from here on: what fails now is logged, not returned.
        match self.written[st.generation as usize].clone() {
            Some(c) => match self.reevaluate(st.generation, &c) {
                Ok((flows, changed, blocked)) => {
                    done.flows = flows;
                    done.changed = changed;
                    done.content_blocked = blocked;
                }
                Err(e) => log::error!("re-evaluating decided flows (they keep their verdicts): {e:#}"),
            },
            None => log::error!("the staged policy went missing: decided flows keep their verdicts"),
        }
        if let Err(e) = self.clear_generation(old, &st.learned_before) {
            // The old entries stay unused until the next switch removes them first.
            log::warn!("removing the old policy's entries: {e:#}");
        }
        Ok(done)
    }

    /// Writes entries (index, value) of generation `g`'s half of the array `name`, whose
    /// generations hold `per_gen` entries each: the name filter's words, the name table's
    /// buckets.
    fn write_gen_array<V: Pod>(&mut self, name: &'static str, g: u32, per_gen: u32, entries: BTreeMap<u32, V>) -> Result<()> {
        let mut a: Array<_, V> = Array::try_from(self.map_mut(name)?)?;
        for (i, v) in entries {
            debug_assert_eq!(i / per_gen, g & 1);
            a.set(i, v, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Writes generation `g`'s IPv4 range table: its steps and sub-indexes, then the buckets
    /// that lead to them.
    fn write_ranges4(&mut self, g: u32, t: RangeTable) -> Result<()> {
        if let Some(s) = t.shortfall() {
            log::warn!("IPv4 range table: {s}");
        }
        let steps = (0u32..).zip(&t.steps).map(|(i, s)| (range_step_index(g, i), *s));
        self.write_gen_array(m::RANGES4, g, RANGE_STEPS, steps.collect())?;
        let subs = (0u32..).zip(&t.subs).map(|(i, s)| (range_sub_index(g, i), *s));
        self.write_gen_array(m::RANGE_SUB4, g, RANGE_SUB_BLOCKS * RANGE_SUBS, subs.collect())?;
        let buckets: BTreeMap<u32, RangeBucket> = t.buckets.iter().map(|(b, v)| (range_bucket_index(g, *b), *v)).collect();
        // Recorded first, so that the buckets of a write that fails half-way are emptied too.
        self.ranges4[g as usize] = t;
        self.write_gen_array(m::RANGE_INDEX4, g, RANGE_BUCKETS, buckets)
    }

    /// Writes one bucket of generation `g`'s IPv4 range table (a learned flag set or cleared).
    fn write_range_bucket(&mut self, g: u32, b: u32, v: RangeBucket) -> Result<()> {
        let mut idx: Array<_, RangeBucket> = Array::try_from(self.map_mut(m::RANGE_INDEX4)?)?;
        idx.set(range_bucket_index(g, b), v, 0).map_err(map_err(m::RANGE_INDEX4))
    }

    /// The buckets of generation `g`'s IPv4 range table that are not empty, as the kernel
    /// reads them, by bucket number (an address's upper 16 bits): for checks and diagnostics.
    pub fn range_buckets(&self, g: u32) -> Result<BTreeMap<u32, RangeBucket>> {
        let idx: Array<_, RangeBucket> = Array::try_from(self.map(m::RANGE_INDEX4)?)?;
        let mut out = BTreeMap::new();
        for b in 0..RANGE_BUCKETS {
            let v = idx.get(&range_bucket_index(g, b), 0).map_err(map_err(m::RANGE_INDEX4))?;
            if v != RangeBucket::default() {
                out.insert(b, v);
            }
        }
        Ok(out)
    }

    fn write_config(&mut self, v: Generations) -> Result<()> {
        let mut a: Array<_, Generations> = Array::try_from(self.map_mut(m::CONFIG)?)?;
        a.set(0, v, 0).map_err(map_err(m::CONFIG))?;
        self.gens = v;
        Ok(())
    }

    /// Writes policy `c` into generation `g`, and the learned addresses its networks do not
    /// cover; returns how many of those it wrote.
    fn write_generation(&mut self, g: u32, c: &Compiled, redirect: &[u32]) -> Result<usize> {
        {
            let mut a: Array<_, SigClass> = Array::try_from(self.map_mut(m::SIG_CLASSES)?)?;
            for (i, v) in (0u32..).zip(&c.sig_classes) {
                a.set(g * MAX_SIG_CLASSES + i, v, 0).map_err(map_err(m::SIG_CLASSES))?;
            }
        }
        {
            let mut a: Array<_, SigPrefilter> = Array::try_from(self.map_mut(m::SIG_PRE)?)?;
            a.set(g, c.sig_pre, 0).map_err(map_err(m::SIG_PRE))?;
        }
        self.write_gen_array(m::NAME_FILTER, g, NAME_FILTER_WORDS, name_filter(g, c))?;
        let gen8 = g as u8;
        self.fill_hash(m::SIGS, c.sigs.iter().map(|(k, v)| (SigKey { generation: gen8, ..*k }, *v)))?;
        self.write_gen_array(m::NAMES, g, NAME_BUCKETS, name_table(g, c)?)?;
        self.fill_hash(m::STUN, c.stun.iter().map(|(t, v)| (stun_key(g, *t), *v)))?;
        self.write_ranges4(g, RangeTable::build(&c.addr4)?)?;
        self.fill_lpm(m::ADDR6, c.addr6.iter().map(|(l, a, v)| (l + LPM_GEN_BITS, lpm6(g, a), *v)))?;
        self.fill_lpm(m::SRC4, c.src4.iter().map(|(l, a, v)| (l + LPM_GEN_BITS, lpm4(g, *a), *v)))?;
        self.fill_lpm(m::SRC6, c.src6.iter().map(|(l, a, v)| (l + LPM_GEN_BITS, lpm6(g, a), *v)))?;
        {
            let mut a: Array<_, PolicyAction> = Array::try_from(self.map_mut(m::POLICY)?)?;
            for (i, v) in (0u32..).zip(&c.policy) {
                a.set(policy_index(g, 0, 0) + i, gen_action(g, *v), 0).map_err(map_err(m::POLICY))?;
            }
        }
        {
            let mut d: DevMap<_> = DevMap::try_from(self.map_mut(m::REDIRECT)?)?;
            for (slot, idx) in (0u8..).zip(redirect) {
                d.set(u32::from(redirect_index(g, slot)), *idx, None, 0).map_err(|e| anyhow!("map {}: {e}", m::REDIRECT))?;
            }
        }
        // Learned addresses go in after the policy's networks: one they now cover is dropped,
        // as it would not have been learned (learning never overrides configured networks).
        let mut carried = 0;
        let learned: Vec<(IpAddr, u16)> = self.learned.iter().map(|(a, p)| (*a, *p)).collect();
        for (addr, app) in learned {
            if self.addr_app_in(g, addr)?.is_some() {
                self.learned.remove(&addr);
                continue;
            }
            self.insert_learned(g, addr, app)?;
            carried += 1;
        }
        Ok(carried)
    }

    /// Removes the hash and trie entries of generation `g` (arrays are overwritten in place),
    /// and the learned addresses `learned` from it.
    fn clear_generation(&mut self, g: u32, learned: &[IpAddr]) -> Result<()> {
        let Some(c) = self.written[g as usize].take() else { return Ok(()) };
        let gen8 = g as u8;
        let r = (|| {
            self.remove_hash::<SigKey, SigValue>(m::SIGS, c.sigs.iter().map(|(k, _)| SigKey { generation: gen8, ..*k }))?;
            // Empty the buckets the old policy filled (the rest are empty already).
            let buckets = name_table(g, &c)?.into_keys().map(|i| (i, NameBucket::default()));
            self.write_gen_array(m::NAMES, g, NAME_BUCKETS, buckets.collect())?;
            // Zero words where the old policy set bits (the rest are zero already).
            let words = name_filter(g, &c).into_keys().map(|w| (w, 0u64));
            self.write_gen_array(m::NAME_FILTER, g, NAME_FILTER_WORDS, words.collect())?;
            self.remove_hash::<u32, AppMatch>(m::STUN, c.stun.iter().map(|(t, _)| stun_key(g, *t)))?;
            // Empty the buckets in use (the steps are then out of reach).
            let used = self.ranges4[g as usize].buckets.keys().map(|b| (range_bucket_index(g, *b), RangeBucket::default()));
            self.write_gen_array(m::RANGE_INDEX4, g, RANGE_BUCKETS, used.collect())?;
            self.ranges4[g as usize] = RangeTable::default();
            self.remove_lpm::<[u8; 17], AppMatch>(m::ADDR6, c.addr6.iter().map(|(l, a, _)| (l + LPM_GEN_BITS, lpm6(g, a))))?;
            self.remove_lpm::<[u8; 5], SrcClass>(m::SRC4, c.src4.iter().map(|(l, a, _)| (l + LPM_GEN_BITS, lpm4(g, *a))))?;
            self.remove_lpm::<[u8; 17], SrcClass>(m::SRC6, c.src6.iter().map(|(l, a, _)| (l + LPM_GEN_BITS, lpm6(g, a))))?;
            for a in learned {
                self.remove_learned_in(g, *a)?;
            }
            anyhow::Ok(())
        })();
        if r.is_err() {
            // Tried again before generation `g` is written next.
            self.written[g as usize] = Some(c);
        }
        r
    }

    /// Recomputes the verdict of every decided flow under policy `c`, now in force in
    /// generation `g`: the client's source class under the new source networks, then the
    /// policy's action for the flow's app. Only the verdict, redirect slot and class change;
    /// the flow's state, budgets, flags and counters stay. App ids are stable across reloads
    /// (see `Policy::keep_app_ids`): a flow of an app the new policy no longer knows gets the
    /// default action. A verdict the content policy set is kept.
    fn reevaluate(&mut self, generation: u32, policy: &Compiled) -> Result<(u64, u64, u64)> {
        let version = self.gens.gens[generation as usize].version;
        let mut table: HashMap<_, FlowKey, FlowEntry> = HashMap::try_from(self.map_mut(m::FLOWS)?)?;
        // Keys first: the walk rewrites entries, which an open iteration would trip over.
        let keys: Vec<FlowKey> = table.keys().filter_map(std::result::Result::ok).collect();
        let (mut flows, mut changed, mut blocked) = (0, 0, 0);
        for key in keys {
            let Ok(mut entry) = table.get(&key, 0) else { continue };
            if entry.state != STATE_DECIDED {
                // Decided later under the new generation (the kernel looks the class up again).
                continue;
            }
            if entry.flags & FLAG_CONTENT_BLOCKED != 0 {
                blocked += 1;
                continue;
            }
            flows += 1;
            let client = packet::addr(key.client(entry.client_is_a != 0).0, key.family);
            let class = policy.src_class(client);
            let action = gen_action(generation, policy.action(class, entry.app));
            if entry.verdict == action.verdict && entry.redirect_slot == action.redirect_slot {
                continue;
            }
            if entry.verdict != action.verdict {
                changed += 1;
            }
            entry.verdict = action.verdict;
            entry.redirect_slot = action.redirect_slot;
            entry.src_class = FlowEntry::tagged_class(u16::try_from(class).unwrap_or(0), version);
            entry.flags |= FLAG_CLASS_KNOWN;
            if let Err(err) = table.insert(key, entry, BPF_EXIST) {
                // Evicted or ended since it was read: nothing to re-evaluate.
                if !matches!(table.get(&key, 0), Err(aya::maps::MapError::KeyNotFound)) {
                    return Err(anyhow!("map {}: {err}", m::FLOWS));
                }
            }
        }
        Ok((flows, changed, blocked))
    }

    fn addr_app_in(&self, g: u32, addr: IpAddr) -> Result<Option<u16>> {
        Ok(match addr {
            IpAddr::V4(a) => {
                let t: LpmTrie<_, [u8; 5], AppMatch> = LpmTrie::try_from(self.map(m::ADDR4)?)?;
                match t.get(&Key::new(32 + LPM_GEN_BITS, lpm4(g, a.octets())), 0) {
                    Ok(m) => Some(m.app),
                    Err(_) => self.ranges4[g as usize].lookup(a),
                }
            }
            IpAddr::V6(a) => {
                let t: LpmTrie<_, [u8; 17], AppMatch> = LpmTrie::try_from(self.map(m::ADDR6)?)?;
                t.get(&Key::new(128 + LPM_GEN_BITS, lpm6(g, &a.octets())), 0).ok().map(|m| m.app)
            }
        })
    }

    /// The app of a flow's server address: the one the data plane looked up, or, when it has
    /// not needed it yet, the one the policy in force gives (0: none).
    pub fn flow_addr_app(&self, key: &FlowKey, e: &FlowEntry) -> Result<u16> {
        if let Some(app) = e.addr_app_known() {
            return Ok(app);
        }
        let (server, _) = key.server(e.client_is_a != 0);
        Ok(self.addr_app(packet::addr(server, key.family))?.unwrap_or(0))
    }

    /// The app of the longest app network (built-in, policy or learned) holding `addr`, in the
    /// policy in force.
    pub fn addr_app(&self, addr: IpAddr) -> Result<Option<u16>> {
        self.addr_app_in(self.gens.active & 1, addr)
    }

    fn insert_learned(&mut self, g: u32, addr: IpAddr, app: u16) -> Result<()> {
        let v = AppMatch { app, _pad: 0 };
        match addr {
            IpAddr::V4(a) => {
                {
                    let mut t: LpmTrie<_, [u8; 5], AppMatch> = LpmTrie::try_from(self.map_mut(m::ADDR4)?)?;
                    t.insert(&Key::new(32 + LPM_GEN_BITS, lpm4(g, a.octets())), v, 0).map_err(map_err(m::ADDR4))?;
                }
                // Then the bucket's flag, which sends its addresses to the trie first.
                let (b, bucket) = self.ranges4[g as usize].flag_learned(a);
                self.write_range_bucket(g, b, bucket)
            }
            IpAddr::V6(a) => {
                let mut t: LpmTrie<_, [u8; 17], AppMatch> = LpmTrie::try_from(self.map_mut(m::ADDR6)?)?;
                t.insert(&Key::new(128 + LPM_GEN_BITS, lpm6(g, &a.octets())), v, 0).map_err(map_err(m::ADDR6))
            }
        }
    }

    fn remove_learned_in(&mut self, g: u32, addr: IpAddr) -> Result<()> {
        let r = match addr {
            IpAddr::V4(a) => LpmTrie::<_, [u8; 5], AppMatch>::try_from(self.map_mut(m::ADDR4)?)?
                .remove(&Key::new(32 + LPM_GEN_BITS, lpm4(g, a.octets()))),
            IpAddr::V6(a) => LpmTrie::<_, [u8; 17], AppMatch>::try_from(self.map_mut(m::ADDR6)?)?
                .remove(&Key::new(128 + LPM_GEN_BITS, lpm6(g, &a.octets()))),
        };
        match r {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(anyhow!("app networks: {e}")),
        }
        // The bucket's flag goes with its last learned address.
        let IpAddr::V4(a) = addr else { return Ok(()) };
        match self.ranges4[g as usize].unflag_learned(a) {
            Some((b, bucket)) => self.write_range_bucket(g, b, bucket),
            None => Ok(()),
        }
    }

    /// Adds (or replaces) a host entry learned from DNS to the app networks of the policy in
    /// force; a policy switch carries it over.
    pub fn set_learned(&mut self, addr: IpAddr, app: u16) -> Result<()> {
        self.insert_learned(self.gens.active & 1, addr, app)?;
        self.learned.insert(addr, app);
        Ok(())
    }

    /// Removes a learned host entry (expired, or evicted).
    pub fn remove_learned(&mut self, addr: IpAddr) -> Result<()> {
        self.remove_learned_in(self.gens.active & 1, addr)?;
        self.learned.remove(&addr);
        Ok(())
    }

    fn fill_hash<K: Pod, V: Pod>(&mut self, name: &'static str, entries: impl Iterator<Item = (K, V)>) -> Result<()> {
        let mut h: HashMap<_, K, V> = HashMap::try_from(self.map_mut(name)?)?;
        for (k, v) in entries {
            h.insert(k, v, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    fn fill_lpm<K: Pod, V: Pod>(&mut self, name: &'static str, entries: impl Iterator<Item = (u32, K, V)>) -> Result<()> {
        let mut t: LpmTrie<_, K, V> = LpmTrie::try_from(self.map_mut(name)?)?;
        for (len, addr, v) in entries {
            t.insert(&Key::new(len, addr), v, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    fn remove_hash<K: Pod, V: Pod>(&mut self, name: &'static str, keys: impl Iterator<Item = K>) -> Result<()> {
        let mut h: HashMap<_, K, V> = HashMap::try_from(self.map_mut(name)?)?;
        for k in keys {
            match h.remove(&k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(anyhow!("map {name}: {e}")),
            }
        }
        Ok(())
    }

    fn remove_lpm<K: Pod, V: Pod>(&mut self, name: &'static str, keys: impl Iterator<Item = (u32, K)>) -> Result<()> {
        let mut t: LpmTrie<_, K, V> = LpmTrie::try_from(self.map_mut(name)?)?;
        for (len, addr) in keys {
            match t.remove(&Key::new(len, addr)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(anyhow!("map {name}: {e}")),
            }
        }
        Ok(())
    }

    /// Attaches to `iface` in native mode, or in generic mode when the driver has no native
    /// XDP (logged loudly by the caller through the returned mode).
    ///
    /// With pinning, an interface whose pinned link is alive keeps it: the link's program is
    /// replaced atomically (`bpf_link_update`), without a moment with no program.
    pub fn attach(&mut self, iface: &str) -> Result<AttachMode> {
        let idx = ifindex(iface)?;
        if let Some(p) = &self.pins {
            let found = p.dir.links().into_iter().find(|l| l.iface == iface);
            if let Some(l) = found {
                if let Some(mode) = self.swap_into_pinned(iface, idx, &l)? {
                    return Ok(mode);
                }
            }
        }
        let prog: &mut Xdp = self.ebpf.program_mut(m::PROGRAM).ok_or_else(|| anyhow!("program missing"))?.try_into()?;
        let (link, mode) = match prog.attach_to_if_index(idx, XdpMode::Driver) {
            Ok(l) => (l, AttachMode::Native),
            Err(native) => match prog.attach_to_if_index(idx, XdpMode::Skb) {
                Ok(l) => {
                    log::warn!(
                        "interface {iface}: native XDP refused ({native}); attached in GENERIC mode, which is much slower"
                    );
                    (l, AttachMode::Generic)
                }
                Err(e) => {
                    let text = format!("{native} {e}");
                    let busy = if text.contains("os error 17") || text.contains("os error 16") {
                        format!(" {iface} already has an XDP program (another pin directory or tool: `ip link show dev {iface}`; `imfw unload` removes imfw's)")
                    } else {
                        String::new()
                    };
                    return Err(anyhow!(e)).with_context(|| format!("attaching XDP to {iface} (native: {native}).{busy}"));
                }
            },
        };
        let link = if self.pins.is_some() {
            let fd = FdLink::try_from(prog.take_link(link)?).map_err(|e| {
                anyhow!("{iface}: the kernel attached XDP without a bpf_link ({e}), which cannot be pinned; run with --detach-on-exit")
            })?;
            LinkHandle::Pinned { link: Some(fd), pinned: false }
        } else {
            LinkHandle::Owned(link)
        };
        self.attached.push(Attached { iface: iface.to_owned(), ifindex: idx, mode, link });
        Ok(mode)
    }

    /// Puts this program into the link pinned for `iface` by an earlier run. `None` when
    /// that link is dead (its interface was removed): its pin goes and a new link is made.
    fn swap_into_pinned(&mut self, iface: &str, idx: u32, l: &pins::PinnedLinkFile) -> Result<Option<AttachMode>> {
        let facts = pins::link_info(&pins::obj_get(&l.path)?).with_context(|| format!("the pinned link {}", l.path.display()))?;
        if facts.ifindex == 0 {
            log::warn!("{iface}: the pinned link {} is dead (its interface went away); attaching anew", facts.id);
            pins::remove_pin(&l.path)?;
            return Ok(None);
        }
        if facts.ifindex != idx {
            bail!(
                "{iface} is interface {idx} here, but its pinned link {} is attached to interface {}: was {} made in another network namespace? Use another --pin-dir, or `imfw unload` it",
                facts.id,
                facts.ifindex,
                l.path.display()
            );
        }
        let pinned = PinnedLink::from_pin(&l.path).map_err(|e| anyhow!("{}: {e}", l.path.display()))?;
        let xdp = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| anyhow!("{}: {e}", l.path.display()))?;
        let prog: &mut Xdp = self.ebpf.program_mut(m::PROGRAM).ok_or_else(|| anyhow!("program missing"))?.try_into()?;
        let id = prog.attach_to_link(xdp).with_context(|| format!("replacing the program of {iface} (link {})", facts.id))?;
        let fd = FdLink::try_from(prog.take_link(id)?).map_err(|e| anyhow!("{iface}: {e}"))?;
        let new_prog = prog.info().map_or(0, |i| i.id());
        log::info!(
            "{iface}: replaced program {} with {new_prog} in the pinned link {} ({} mode), without detaching",
            facts.prog_id,
            facts.id,
            l.mode.name()
        );
        self.attached.push(Attached { iface: iface.to_owned(), ifindex: idx, mode: l.mode, link: LinkHandle::Pinned { link: Some(fd), pinned: true } });
        if let Some(p) = self.pins.as_mut() {
            p.swapped = true;
        }
        Ok(Some(l.mode))
    }

    /// Pins what the running program needs to outlive this process: its new links, the maps
    /// (state maps only on a fresh start: adopted ones are pinned already), the programs,
    /// and the layout stamp last. The previous build's jump tables and the links of
    /// interfaces no longer named are removed. Call after `apply` and `attach`.
    pub fn commit_pins(&mut self) -> Result<()> {
        let Some(p) = self.pins.as_ref() else { return Ok(()) };
        let (dir, adopted, swapped) = (p.dir.clone(), p.adopted, p.swapped);
        if swapped {
            // A CPU may still be finishing a packet in the old build after the link update
            // returned; its jump table must outlive that. An XDP run lasts microseconds.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for a in &mut self.attached {
            if let LinkHandle::Pinned { link, pinned } = &mut a.link {
                if !*pinned {
                    let path = dir.link_path(&a.iface, a.mode);
                    pins::remove_pin(&path)?;
                    let fd = link.take().ok_or_else(|| anyhow!("{}: link gone", a.iface))?;
                    let pl = fd.pin(&path).map_err(|e| anyhow!("pinning {}: {e}", path.display()))?;
                    *link = Some(FdLink::from(pl));
                    *pinned = true;
                }
            }
        }
        let ours: Vec<String> = self.attached.iter().map(|a| a.iface.clone()).collect();
        for l in dir.links() {
            if !ours.contains(&l.iface) {
                log::info!("{}", pins::detach_pinned_link(&l.path, &l.iface)? + " (no longer in --iface)");
            }
        }
        let id = self.program()?.info().map_err(|e| anyhow!("program info: {e}"))?.id();
        for old in dir.other_jumps(id) {
            pins::remove_pin(&old)?;
        }
        for (name, map) in self.ebpf.maps() {
            // Only the program's own maps: not the log ring nor the read-only data sections
            // of the kernel log messages (`.rodata*`: bpffs refuses names with a dot), which
            // belong to this program build alone.
            if !name.starts_with("IMFW_") || name == m::SCRATCH || name == m::JUMP || (adopted && m::ADOPTED.contains(&name)) {
                continue;
            }
            let path = dir.map_path(name);
            pins::remove_pin(&path)?;
            map.pin(&path).map_err(|e| anyhow!("pinning {}: {e}", path.display()))?;
        }
        for name in m::PROGRAMS {
            let path = dir.prog_path(name);
            pins::remove_pin(&path)?;
            let prog: &mut Xdp = self.ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
            prog.pin(&path).map_err(|e| anyhow!("pinning {}: {e}", path.display()))?;
        }
        // A program an older build pinned and this one no longer has (`imfw_ech`, before the
        // ECH check moved into the names stage) would hold its memory until `imfw unload`.
        if let Some(progs) = dir.prog_path(m::PROGRAM).parent() {
            for entry in std::fs::read_dir(progs).into_iter().flatten().flatten() {
                if !m::PROGRAMS.iter().any(|p| entry.file_name() == *p) {
                    pins::remove_pin(&entry.path())?;
                }
            }
        }
        dir.write_layout()
    }

    /// The end of `imfw run` without `--detach-on-exit`: program, links and maps stay pinned
    /// and enforcing; the controller is marked down at once, so flows that wait for it follow
    /// the policy's `controller_down` choice. Returns what stays, for the log.
    pub fn leave_pinned(mut self) -> Result<String> {
        let Some(p) = self.pins.take() else { bail!("the data plane is not pinned") };
        self.set_controller_deadline(0)?;
        let ifaces: Vec<String> = self.attached.drain(..).map(|a| format!("{} ({})", a.iface, a.mode.name())).collect();
        Ok(format!(
            "the XDP program stays attached and enforcing on {}, its state pinned under {} (`imfw unload --pin-dir {}` removes it)",
            ifaces.join(", "),
            p.dir.root().display(),
            p.dir.root().display()
        ))
    }

    /// `--detach-on-exit`: detaches every link and removes the pin directory.
    pub fn unload(mut self) -> Result<Vec<String>> {
        let Some(p) = self.pins.take() else {
            self.detach_all()?;
            return Ok(Vec::new());
        };
        self.attached.clear();
        p.dir.remove_all()
    }

    pub fn attached(&self) -> &[Attached] {
        &self.attached
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self) -> Result<()> {
        let links: Vec<_> = self.attached.drain(..).collect();
        let prog: &mut Xdp = self.ebpf.program_mut(m::PROGRAM).ok_or_else(|| anyhow!("program missing"))?.try_into()?;
        let mut first_err = None;
        for a in links {
            // Links made for pinning are left to `commit_pins`/`unload`; dropping one that was
            // not pinned yet detaches it.
            let LinkHandle::Owned(link) = a.link else { continue };
            if let Err(e) = prog.detach(link) {
                log::error!("detaching from {}: {e}", a.iface);
                first_err.get_or_insert(anyhow!("detaching from {}: {e}", a.iface));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Takes inspection stage `slot` (`JUMP_INSPECT`, `JUMP_NAMES`) out of the jump table, so
    /// that a test sees what the main program decides alone: a packet it sends on to that stage
    /// passes uninspected, counted as `inspector_missing`.
    pub fn remove_stage(&mut self, slot: u32) -> Result<()> {
        ProgramArray::try_from(self.map_mut(m::JUMP)?)?.clear_index(&slot).map_err(map_err(m::JUMP))
    }

    /// Runs one frame through the program with `BPF_PROG_TEST_RUN` and returns the XDP action.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32> {
        let opts = TestRunOptions { data_in: Some(frame), ..TestRunOptions::new() };
        let r = self.program()?.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        Ok(r.return_value)
    }

    /// Runs one frame `repeat` times and returns the kernel's mean time per run in nanoseconds.
    pub fn test_run_timed(&self, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
        let opts = TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::new() };
        let r = self.program()?.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        // Nanoseconds of one mean run fit an f64 exactly.
        #[expect(clippy::cast_precision_loss, reason = "a mean run time in ns is far below 2^52")]
        let ns = r.duration.as_nanos() as f64;
        Ok((r.return_value, ns))
    }

    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowEntry>> {
        let h: HashMap<_, FlowKey, FlowEntry> = HashMap::try_from(self.map(m::FLOWS)?)?;
        match h.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(anyhow!("map {}: {e}", m::FLOWS)),
        }
    }

    /// Writes a flow's entry: the controller's verdict for a flow it decided.
    pub fn set_flow(&mut self, key: &FlowKey, entry: &FlowEntry) -> Result<()> {
        let mut h: HashMap<_, FlowKey, FlowEntry> = HashMap::try_from(self.map_mut(m::FLOWS)?)?;
        h.insert(key, entry, 0).map_err(map_err(m::FLOWS))
    }

    /// Empties the flow table; returns how many entries it held. For benches that replay a
    /// traffic mix from a clean table without reloading the program.
    pub fn clear_flows(&mut self) -> Result<usize> {
        let mut h: HashMap<_, FlowKey, FlowEntry> = HashMap::try_from(self.map_mut(m::FLOWS)?)?;
        let keys: Vec<FlowKey> = h.keys().collect::<Result<_, _>>().map_err(map_err(m::FLOWS))?;
        for k in &keys {
            match h.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(anyhow!("map {}: {e}", m::FLOWS)),
            }
        }
        Ok(keys.len())
    }

    /// A second handle on the flow table, for readers that must not hold the controller's
    /// lock while they walk it (`imfw flows`, the metrics' fill level).
    pub fn flow_table(&self) -> Result<crate::flows::FlowTable> {
        match self.map(m::FLOWS)? {
            aya::maps::Map::LruHashMap(d) | aya::maps::Map::HashMap(d) => crate::flows::FlowTable::from_fd(d.fd().as_fd()),
            _ => bail!("map {} is not a hash map", m::FLOWS),
        }
    }

    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry)>> {
        let h: HashMap<_, FlowKey, FlowEntry> = HashMap::try_from(self.map(m::FLOWS)?)?;
        h.iter().map(|r| r.map_err(|e| anyhow!("map {}: {e}", m::FLOWS))).collect()
    }

    /// Sums the per-CPU counters.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut s = Snapshot::default();
        let counters: PerCpuArray<_, CounterTable> = PerCpuArray::try_from(self.map(m::COUNTERS)?)?;
        let tables = counters.get(&0, 0).map_err(map_err(m::COUNTERS))?;
        for i in 0..COUNTER_CELLS {
            let sum = tables.iter().fold(Counter::default(), |a, t| a + t.cells[i]);
            if sum.packets > 0 {
                let i = i as u32;
                s.counters.insert(((i / VERDICTS) as u16, (i % VERDICTS) as u8), sum);
            }
        }
        let drops: PerCpuArray<_, Counter> = PerCpuArray::try_from(self.map(m::DROPS)?)?;
        for r in DropReason::ALL {
            let cell = drops.get(&(r as u32), 0).map_err(map_err(m::DROPS))?;
            let sum = cell.iter().fold(Counter::default(), |a, c| a + *c);
            s.drops.push((r, sum));
        }
        debug_assert_eq!(DROP_REASONS as usize, DropReason::ALL.len());
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(m::STATS)?)?;
        for st in Stat::ALL {
            let cell = stats.get(&(st as u32), 0).map_err(map_err(m::STATS))?;
            s.stats.push((st, cell.iter().sum()));
        }
        debug_assert_eq!(STATS as usize, Stat::ALL.len());
        s.derive();
        Ok(s)
    }

    /// The classification event ring, for the caller to poll. Taken once.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The flows classified since the last call, from the classification log.
    pub fn classified(&mut self) -> Vec<FlowEvent> {
        let mut records = Vec::new();
        self.class_log.read(&mut records);
        records
    }

    /// Drains pending events without blocking (offline mode): the classification log's, then
    /// the ring's.
    pub fn drain_events(&mut self) -> Vec<Event> {
        let mut out: Vec<Event> = self.classified().into_iter().map(Event::Classified).collect();
        if let Some(rb) = self.events.as_mut() {
            while let Some(item) = rb.next() {
                if let Some(ev) = parse_event(&item) {
                    out.push(ev);
                }
            }
        }
        out
    }
}

impl Drop for Dataplane {
    /// Links owned by the program are detached; pinned ones stay with their pins (that is
    /// the point), and links not pinned yet go with their descriptors.
    fn drop(&mut self) {
        let _ = self.detach_all();
    }
}

/// A loader with the maps sized at load time: the flow table to `flow_capacity`, the
/// classification log to the CPUs the kernel may run the program on (`bpf_get_smp_processor_id`
/// is below their number), which it returns too.
fn sized_loader(flow_capacity: u32) -> Result<(EbpfLoader<'static>, usize)> {
    let cpus = aya::util::nr_cpus().map_err(|(path, e)| anyhow!("reading {path}: {e}"))?;
    let (log, positions) = ClassLog::entries(cpus)?;
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(m::FLOWS, flow_capacity).map_max_entries(m::CLASS_LOG, log).map_max_entries(m::CLASS_LOG_POS, positions);
    Ok((loader, cpus))
}

/// The XDP object, or why this build has none.
fn object() -> Result<&'static [u8]> {
    if OBJECT.is_empty() {
        bail!("this imfw was built with AYA_BUILD_SKIP=1 and carries no XDP program; rebuild it without that variable");
    }
    Ok(OBJECT)
}

/// The shapes the object declares for the maps a restart adopts (the flow table with the
/// capacity asked for), read from the object itself so that they cannot drift from it.
fn adopted_specs(object: &[u8], flow_capacity: u32) -> Result<Vec<(&'static str, MapSpec)>> {
    let obj = aya_obj::Object::parse(object).map_err(|e| anyhow!("reading the XDP object: {e}"))?;
    m::ADOPTED
        .iter()
        .map(|&name| {
            let map = obj.maps.get(name).ok_or_else(|| anyhow!("map {name} missing from the XDP object"))?;
            Ok((
                name,
                MapSpec {
                    map_type: map.map_type(),
                    key_size: map.key_size(),
                    value_size: map.value_size(),
                    max_entries: if name == m::FLOWS { flow_capacity } else { map.max_entries() },
                    flags: map.map_flags(),
                },
            ))
        })
        .collect()
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's `bpf_ktime_get_coarse_ns`.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into the zeroed timespec.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
        ts
    };
    u64::try_from(ts.tv_sec).unwrap_or(0).saturating_mul(1_000_000_000).saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// The non-zero words of generation `g`'s name filter for policy `c`, by index in
/// `IMFW_NAMEBITS`.
fn name_filter(g: u32, c: &Compiled) -> BTreeMap<u32, u64> {
    let mut words = BTreeMap::new();
    for k in name_keys(g, c) {
        let (word, bit) = name_filter_bit(g, k.hash);
        *words.entry(word).or_insert(0) |= bit;
    }
    words
}

/// Generation `g`'s name-table buckets for policy `c`, by index in `IMFW_NAMES`.
fn name_table(g: u32, c: &Compiled) -> Result<BTreeMap<u32, NameBucket>> {
    crate::nametab::build(g, name_keys(g, c).zip(c.names.iter()).map(|(k, (_, v))| (k.hash, v.app)))
}

/// The keys of a compiled policy's names in generation `g`: hashes from the generation's seed.
fn name_keys(g: u32, c: &Compiled) -> impl Iterator<Item = NameKey> + '_ {
    c.name_domains.iter().map(move |d| NameKey { hash: domain_hash_from(name_seed(g), d) })
}

/// A compiled policy action as generation `g` stores it: redirect slots are the generation's.
fn gen_action(g: u32, a: PolicyAction) -> PolicyAction {
    if a.verdict == Verdict::Redirect as u8 {
        PolicyAction { redirect_slot: redirect_index(g, a.redirect_slot), ..a }
    } else {
        a
    }
}

/// A record of the event ring.
pub enum Event {
    Classified(FlowEvent),
    Payload(Box<PayloadEvent>),
    /// A segment of a monitored flow, for the content path.
    Stream(Box<PayloadEvent>),
}

/// Decodes one ring-buffer record by its kind.
pub fn parse_event(bytes: &[u8]) -> Option<Event> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    // SAFETY (both reads): the types are Pod (integers only) and the length is checked; the
    // ring buffer gives no alignment guarantee, hence the unaligned reads.
    match kind {
        EVENT_CLASSIFIED if bytes.len() >= size_of::<FlowEvent>() => {
            Some(Event::Classified(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) }))
        }
        EVENT_PAYLOAD | EVENT_STREAM if bytes.len() >= size_of::<PayloadEvent>() => {
            let p = Box::new(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<PayloadEvent>()) });
            Some(if kind == EVENT_STREAM { Event::Stream(p) } else { Event::Payload(p) })
        }
        _ => None,
    }
}

/// The index of a network interface, with an error that names it.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| anyhow!("interface name {name:?} contains a NUL byte"))?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("interface {name} does not exist (in this network namespace)");
    }
    Ok(idx)
}

fn privilege_hint(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") || text.contains("os error 1)") {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        return e.context(format!(
            "missing privileges: loading XDP needs root or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON (running as uid {euid})"
        ));
    }
    e
}

