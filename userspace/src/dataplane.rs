//! Loads the XDP program, writes a compiled policy into its maps, attaches it to interfaces and
//! reads its state back. The same loaded program serves the live gateway (`imfw run`) and
//! offline analysis (`imfw classify`, through `BPF_PROG_TEST_RUN`), so the two cannot disagree.

use std::{collections::BTreeMap, net::IpAddr, os::fd::AsFd as _};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, DevMap, HashMap, LpmTrie, MapData, PerCpuArray, ProgramArray, RingBuf, lpm_trie::Key},
    programs::{TestRun, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use imfw_common::{
    config::Config,
    event::{EVENT_CLASSIFIED, EVENT_PAYLOAD, EVENT_STREAM, FlowEvent, PayloadEvent},
    flow::{FlowEntry, FlowKey},
    maps as m,
    matcher::AppMatch,
    verdict::{Counter, DROP_REASONS, DropReason, STATS, Stat, VERDICTS, Verdict},
};

use crate::policy::Compiled;

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
    link: XdpLinkId,
}

pub struct Dataplane {
    ebpf: Ebpf,
    attached: Vec<Attached>,
    events: Option<RingBuf<MapData>>,
    /// Held open: the kernel empties a program array when its last user reference closes,
    /// which would silently cut the inspector off.
    _jump: ProgramArray<MapData>,
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
    pub fn load(flow_capacity: u32) -> Result<Self> {
        if OBJECT.is_empty() {
            bail!("this imfw was built with AYA_BUILD_SKIP=1 and carries no XDP program; rebuild it without that variable");
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(m::FLOWS, flow_capacity)
            .load(OBJECT)
            .map_err(|e| privilege_hint(anyhow!(e)).context("loading the XDP object"))?;
        for name in [m::PROGRAM, m::INSPECT_PROGRAM, m::NAMES_PROGRAM, m::ECH_PROGRAM] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .map_err(|e| privilege_hint(anyhow!(e)))
                .with_context(|| format!("loading the XDP program {name} into the kernel"))?;
        }
        let mut jump = ProgramArray::try_from(ebpf.take_map(m::JUMP).ok_or_else(|| anyhow!("map {} missing", m::JUMP))?)?;
        {
            for (slot, name) in [(m::JUMP_INSPECT, m::INSPECT_PROGRAM), (m::JUMP_NAMES, m::NAMES_PROGRAM), (m::JUMP_ECH, m::ECH_PROGRAM)] {
                let prog: &Xdp = ebpf.program(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
                jump.set(slot, prog.fd()?, 0).map_err(map_err(m::JUMP))?;
            }
        }
        let events = ebpf.take_map(m::EVENTS).ok_or_else(|| anyhow!("map {} missing", m::EVENTS))?;
        let events = RingBuf::try_from(events)?;
        Ok(Dataplane { ebpf, attached: Vec::new(), events: Some(events), _jump: jump })
    }

    fn program(&self) -> Result<&Xdp> {
        Ok(self.ebpf.program(m::PROGRAM).ok_or_else(|| anyhow!("program missing"))?.try_into()?)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing from the XDP object"))
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing from the XDP object"))
    }

    /// Writes a compiled policy into the maps. The configuration goes last, and only it sets
    /// `ready`, so packets never see a half-written policy on first load.
    pub fn apply(&mut self, c: &Compiled) -> Result<()> {
        let redirect: Vec<u32> = c
            .redirect_ifaces
            .iter()
            .map(|name| ifindex(name).with_context(|| format!("redirect interface {name}")))
            .collect::<Result<_>>()?;
        self.write_maps(c, &redirect)
    }

    /// As `apply`, for offline analysis: redirect targets need not exist on this machine, so
    /// the devmap stays empty (redirected flows keep their verdict in the flow table).
    pub fn apply_offline(&mut self, c: &Compiled) -> Result<()> {
        self.write_maps(c, &[])
    }

    fn write_maps(&mut self, c: &Compiled, redirect: &[u32]) -> Result<()> {
        self.fill_array(m::SIG_CLASSES, &c.sig_classes)?;
        self.fill_hash(m::SIGS, &c.sigs)?;
        self.fill_hash(m::NAMES, &c.names)?;
        self.fill_hash(m::STUN, &c.stun)?;
        self.fill_lpm(m::ADDR4, &c.addr4)?;
        self.fill_lpm(m::ADDR6, &c.addr6)?;
        self.fill_lpm(m::SRC4, &c.src4)?;
        self.fill_lpm(m::SRC6, &c.src6)?;
        self.fill_array(m::POLICY, &c.policy)?;
        {
            let mut d: DevMap<_> = DevMap::try_from(self.map_mut(m::REDIRECT)?)?;
            for (slot, idx) in redirect.iter().enumerate() {
                d.set(slot as u32, *idx, None, 0).map_err(|e| anyhow!("map {}: {e}", m::REDIRECT))?;
            }
        }
        let mut cfg: Array<_, Config> = Array::try_from(self.map_mut(m::CONFIG)?)?;
        cfg.set(0, c.config, 0).map_err(map_err(m::CONFIG))?;
        Ok(())
    }

    /// The app of the longest app network (built-in, policy or learned) holding `addr`.
    pub fn addr_app(&self, addr: IpAddr) -> Result<Option<u16>> {
        Ok(match addr {
            IpAddr::V4(a) => {
                let t: LpmTrie<_, [u8; 4], AppMatch> = LpmTrie::try_from(self.map(m::ADDR4)?)?;
                t.get(&Key::new(32, a.octets()), 0).ok().map(|m| m.app)
            }
            IpAddr::V6(a) => {
                let t: LpmTrie<_, [u8; 16], AppMatch> = LpmTrie::try_from(self.map(m::ADDR6)?)?;
                t.get(&Key::new(128, a.octets()), 0).ok().map(|m| m.app)
            }
        })
    }

    /// Adds (or replaces) a host entry learned from DNS to the app networks.
    pub fn set_learned(&mut self, addr: IpAddr, app: u16) -> Result<()> {
        let v = AppMatch { app, _pad: 0 };
        match addr {
            IpAddr::V4(a) => {
                let mut t: LpmTrie<_, [u8; 4], AppMatch> = LpmTrie::try_from(self.map_mut(m::ADDR4)?)?;
                t.insert(&Key::new(32, a.octets()), v, 0).map_err(map_err(m::ADDR4))
            }
            IpAddr::V6(a) => {
                let mut t: LpmTrie<_, [u8; 16], AppMatch> = LpmTrie::try_from(self.map_mut(m::ADDR6)?)?;
                t.insert(&Key::new(128, a.octets()), v, 0).map_err(map_err(m::ADDR6))
            }
        }
    }

    /// Removes a learned host entry (expired, or evicted).
    pub fn remove_learned(&mut self, addr: IpAddr) -> Result<()> {
        let r = match addr {
            IpAddr::V4(a) => LpmTrie::<_, [u8; 4], AppMatch>::try_from(self.map_mut(m::ADDR4)?)?.remove(&Key::new(32, a.octets())),
            IpAddr::V6(a) => LpmTrie::<_, [u8; 16], AppMatch>::try_from(self.map_mut(m::ADDR6)?)?.remove(&Key::new(128, a.octets())),
        };
        match r {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(anyhow!("app networks: {e}")),
        }
    }

    fn fill_array<V: Pod>(&mut self, name: &'static str, values: &[V]) -> Result<()> {
        let mut a: Array<_, V> = Array::try_from(self.map_mut(name)?)?;
        for (i, v) in values.iter().enumerate() {
            a.set(i as u32, v, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    fn fill_hash<K: Pod, V: Pod>(&mut self, name: &'static str, entries: &[(K, V)]) -> Result<()> {
        let mut h: HashMap<_, K, V> = HashMap::try_from(self.map_mut(name)?)?;
        for (k, v) in entries {
            h.insert(k, v, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    fn fill_lpm<K: Pod, V: Pod>(&mut self, name: &'static str, entries: &[(u32, K, V)]) -> Result<()> {
        let mut t: LpmTrie<_, K, V> = LpmTrie::try_from(self.map_mut(name)?)?;
        for (len, addr, v) in entries {
            t.insert(&Key::new(*len, *addr), v, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Attaches to `iface` in native mode, or in generic mode when the driver has no native
    /// XDP (logged loudly by the caller through the returned mode).
    pub fn attach(&mut self, iface: &str) -> Result<AttachMode> {
        let idx = ifindex(iface)?;
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
                Err(e) => return Err(anyhow!(e)).with_context(|| format!("attaching XDP to {iface} (native: {native})")),
            },
        };
        self.attached.push(Attached { iface: iface.to_owned(), ifindex: idx, mode, link });
        Ok(mode)
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
            if let Err(e) = prog.detach(a.link) {
                log::error!("detaching from {}: {e}", a.iface);
                first_err.get_or_insert(anyhow!("detaching from {}: {e}", a.iface));
            }
        }
        first_err.map_or(Ok(()), Err)
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
        let counters: PerCpuArray<_, Counter> = PerCpuArray::try_from(self.map(m::COUNTERS)?)?;
        for (i, cell) in counters.iter().enumerate() {
            let cell = cell.map_err(map_err(m::COUNTERS))?;
            let sum = cell.iter().fold(Counter::default(), |a, c| Counter { packets: a.packets + c.packets, bytes: a.bytes + c.bytes });
            if sum.packets > 0 {
                let i = i as u32;
                s.counters.insert(((i / VERDICTS) as u16, (i % VERDICTS) as u8), sum);
            }
        }
        let drops: PerCpuArray<_, Counter> = PerCpuArray::try_from(self.map(m::DROPS)?)?;
        for r in DropReason::ALL {
            let cell = drops.get(&(r as u32), 0).map_err(map_err(m::DROPS))?;
            let sum = cell.iter().fold(Counter::default(), |a, c| Counter { packets: a.packets + c.packets, bytes: a.bytes + c.bytes });
            s.drops.push((r, sum));
        }
        debug_assert_eq!(DROP_REASONS as usize, DropReason::ALL.len());
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(m::STATS)?)?;
        for st in Stat::ALL {
            let cell = stats.get(&(st as u32), 0).map_err(map_err(m::STATS))?;
            s.stats.push((st, cell.iter().sum()));
        }
        debug_assert_eq!(STATS as usize, Stat::ALL.len());
        Ok(s)
    }

    /// The classification event ring, for the caller to poll. Taken once.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Drains pending events without blocking (offline mode).
    pub fn drain_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
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
    fn drop(&mut self) {
        let _ = self.detach_all();
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

