//! The program's maps. Names match `imfw_common::maps`; the controller fills them.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, DevMap, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use imfw_common::{
    config::{Config, Generations},
    event::{ClassLogPos, FlowEvent},
    flow::{FlowEntry, FlowKey},
    maps as m,
    matcher::{AppMatch, MAX_SIG_CLASSES, NAME_SLOTS, NameBucket, PolicyAction, SCRATCH_LEN, SigClass, SigKey, SigPrefilter, SigValue, SrcClass},
    ranges::{RANGE_BUCKETS, RANGE_STEPS, RANGE_SUB_BLOCKS, RANGE_SUBS, RangeBucket, RangeStep},
    verdict::{Counter, CounterTable, DROP_REASONS, DropReason, STATS, Stat, counter_index},
};

// Every policy map holds two generations (see `imfw_common::config`): twice one policy's room.
#[map]
pub static IMFW_CONFIG: Array<Generations> = Array::with_max_entries(1, 0);
#[map]
pub static IMFW_FLOWS: LruHashMap<FlowKey, FlowEntry> = LruHashMap::with_max_entries(m::FLOWS_DEFAULT, 0);
#[map]
pub static IMFW_SIGCLASS: Array<SigClass> = Array::with_max_entries(MAX_SIG_CLASSES * m::GENS, 0);
#[map]
pub static IMFW_SIGPRE: Array<SigPrefilter> = Array::with_max_entries(m::GENS, 0);
#[map]
pub static IMFW_NAMEBITS: Array<u64> = Array::with_max_entries(m::GENS * m::NAME_FILTER_WORDS, 0);
#[map]
pub static IMFW_SIGS: HashMap<SigKey, SigValue> = HashMap::with_max_entries(m::SIGS_MAX * m::GENS, 0);
#[map]
pub static IMFW_NAMES: Array<NameBucket> = Array::with_max_entries(m::NAME_BUCKETS * m::GENS, 0);
#[map]
pub static IMFW_STUN: HashMap<u32, AppMatch> = HashMap::with_max_entries(m::STUN_MAX * m::GENS, 0);
/// IPv4 addresses learned from DNS; the policy's IPv4 networks are in the range table.
#[map]
pub static IMFW_ADDR4: LpmTrie<[u8; 5], AppMatch> = LpmTrie::with_max_entries(m::ADDR_MAX * m::GENS, 0);
#[map]
pub static IMFW_RANGEIDX4: Array<RangeBucket> = Array::with_max_entries(RANGE_BUCKETS * m::GENS, 0);
#[map]
pub static IMFW_RANGESUB4: Array<RangeBucket> = Array::with_max_entries(RANGE_SUB_BLOCKS * RANGE_SUBS * m::GENS, 0);
#[map]
pub static IMFW_RANGES4: Array<RangeStep> = Array::with_max_entries(RANGE_STEPS * m::GENS, 0);
#[map]
pub static IMFW_ADDR6: LpmTrie<[u8; 17], AppMatch> = LpmTrie::with_max_entries(m::ADDR_MAX * m::GENS, 0);
#[map]
pub static IMFW_SRC4: LpmTrie<[u8; 5], SrcClass> = LpmTrie::with_max_entries(m::SRC_MAX * m::GENS, 0);
#[map]
pub static IMFW_SRC6: LpmTrie<[u8; 17], SrcClass> = LpmTrie::with_max_entries(m::SRC_MAX * m::GENS, 0);
#[map]
pub static IMFW_POLICY: Array<PolicyAction> = Array::with_max_entries(m::POLICY_ENTRIES * m::GENS, 0);
#[map]
pub static IMFW_REDIRECT: DevMap = DevMap::with_max_entries(m::REDIRECT_SLOTS * m::GENS, 0);
#[map]
pub static IMFW_COUNTERS: PerCpuArray<CounterTable> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static IMFW_DROPS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DROP_REASONS, 0);
#[map]
pub static IMFW_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS, 0);
#[map]
pub static IMFW_EVENTS: RingBuf = RingBuf::with_byte_size(m::EVENTS_BYTES, 0);
/// The classification log (see `imfw_common::event::ClassLogPos`): userspace sizes both maps
/// for the machine's CPUs at load time and maps them into its memory.
#[map]
pub static IMFW_CLASSLOG: Array<FlowEvent> = Array::with_max_entries(m::CLASS_LOG_SLOTS, BPF_F_MMAPABLE);
#[map]
pub static IMFW_CLASSPOS: Array<ClassLogPos> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
pub static IMFW_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static IMFW_ALIVE: Array<u64> = Array::with_max_entries(1, 0);
#[map]
pub static IMFW_JUMP: ProgramArray = ProgramArray::with_max_entries(imfw_common::maps::JUMP_SLOTS, 0);

/// What the main program hands the inspector across the tail call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Job {
    pub key: FlowKey,
    pub payload_off: u32,
    pub payload_len: u32,
    pub seq: u32,
    pub dir: u8,
    pub client_first: u8,
    /// The server's port (host order).
    pub server_port: u16,
    pub tcp_flags: u8,
    /// The flow had `FLAG_CONTROLLER` when the job was made: the stages decide without looking
    /// the flow up first, and only the stage that ends the inspection looks it up.
    pub controller: u8,
    /// The policy generation the main program read for this packet: the stages use it, never
    /// the current one, so that a packet sees one policy across the tail calls.
    pub generation: u8,
}

/// Per-CPU working memory of the inspector.
#[repr(C)]
pub struct Scratch {
    pub job: Job,
    /// The payload's first bytes.
    pub buf: [u8; SCRATCH_LEN],
    /// Suffix hashes of a server name.
    pub hashes: [u64; NAME_SLOTS],
    /// Loop results pass through here (volatile store and load) so that the verifier sees
    /// them as unknown values and merges the states of a loop's many exits; or across a loop,
    /// so that it does not carry them as verifier state.
    pub spill: [u64; 5],
    /// A new flow's entry is built here, not on the stack: its byte fields get merged into
    /// unaligned wide stores, which the verifier allows in map memory but not on the stack.
    pub entry: FlowEntry,
}

#[inline(always)]
pub fn config() -> Option<&'static Generations> {
    IMFW_CONFIG.get(0)
}

/// Whether the controller's heartbeat is still valid. Read only where a packet waits for the
/// controller or a copy for it would be made (pending flows, monitored segments), never on a
/// decided flow's allow/drop/redirect path: one array lookup and one coarse clock read.
#[inline(always)]
pub fn controller_alive() -> bool {
    let Some(deadline) = IMFW_ALIVE.get(0) else { return false };
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    now < *deadline
}

/// The settings of generation `id` (masked to 0 or 1). Their `generation` field is `id`: code
/// that needs the generation reads it there (see [`gen_of`]).
#[inline(always)]
pub fn generation(all: &'static Generations, id: u32) -> &'static Config {
    &all.gens[(id & 1) as usize]
}

/// The generation (0 or 1) of a generation's settings.
#[inline(always)]
pub fn gen_of(cfg: &Config) -> u32 {
    cfg.generation & 1
}

/// The settings of the generation in force: read once per packet, at its start.
#[inline(always)]
pub fn active(all: &'static Generations) -> &'static Config {
    // SAFETY: an aligned u32 in the map value. Volatile: read once, never re-read later in the
    // run, so a flip during this packet changes nothing for it.
    let id = unsafe { core::ptr::read_volatile(&all.active) };
    generation(all, id)
}

#[inline(always)]
pub fn count_stat(s: Stat) {
    if let Some(p) = IMFW_STATS.get_ptr_mut(s as u32) {
        // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count_drop(r: DropReason, len: u64) {
    if let Some(p) = IMFW_DROPS.get_ptr_mut(r as u32) {
        // SAFETY: as above.
        unsafe {
            (*p).packets += 1;
            (*p).bytes += len;
        }
    }
}

#[inline(always)]
pub fn count_verdict(app: u16, verdict: u8, len: u64) {
    if let Some(t) = IMFW_COUNTERS.get_ptr_mut(0) {
        // SAFETY: as above.
        if let Some(c) = unsafe { (*t).cells.get_mut(counter_index(app, verdict) as usize) } {
            c.packets += 1;
            c.bytes += len;
        }
    }
}

#[inline(always)]
pub fn policy(generation: u32, class: u16, app: u16) -> PolicyAction {
    match IMFW_POLICY.get(m::policy_index(generation, class as u32, app as u32)) {
        Some(a) => *a,
        None => PolicyAction::default(),
    }
}
