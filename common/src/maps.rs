//! Map names and capacities. Userspace opens maps by these constants, never by literal.

pub const CONFIG: &str = "IMFW_CONFIG";
pub const FLOWS: &str = "IMFW_FLOWS";
pub const SIG_CLASSES: &str = "IMFW_SIGCLASS";
pub const SIGS: &str = "IMFW_SIGS";
/// One `SigPrefilter`: the shapes a payload's length and chosen bytes leave possible.
pub const SIG_PRE: &str = "IMFW_SIGPRE";
pub const NAME_FILTER: &str = "IMFW_NAMEBITS";
/// The name table: `NameBucket`s, `NAME_BUCKETS` per generation (see [`name_buckets`]).
pub const NAMES: &str = "IMFW_NAMES";
/// IPv4 addresses learned from DNS (the policy's IPv4 networks are in the range table).
pub const ADDR4: &str = "IMFW_ADDR4";
/// The IPv4 range table's buckets (`ranges::RangeBucket`), `RANGE_BUCKETS` per generation.
pub const RANGE_INDEX4: &str = "IMFW_RANGEIDX4";
/// The IPv4 range table's sub-indexes (`ranges::RangeBucket`), `RANGE_SUB_BLOCKS` blocks of
/// `RANGE_SUBS` per generation.
pub const RANGE_SUB4: &str = "IMFW_RANGESUB4";
/// The IPv4 range table's steps (`ranges::RangeStep`), `RANGE_STEPS` per generation.
pub const RANGES4: &str = "IMFW_RANGES4";
pub const ADDR6: &str = "IMFW_ADDR6";
pub const SRC4: &str = "IMFW_SRC4";
pub const SRC6: &str = "IMFW_SRC6";
pub const POLICY: &str = "IMFW_POLICY";
pub const REDIRECT: &str = "IMFW_REDIRECT";
pub const COUNTERS: &str = "IMFW_COUNTERS";
pub const DROPS: &str = "IMFW_DROPS";
pub const STATS: &str = "IMFW_STATS";
pub const EVENTS: &str = "IMFW_EVENTS";
/// The classification log's records (`FlowEvent`): one section of `CLASS_LOG_SLOTS` per CPU.
/// See `imfw_common::event::ClassLogPos`.
pub const CLASS_LOG: &str = "IMFW_CLASSLOG";
/// The classification log's positions (`ClassLogPos`): one per CPU.
pub const CLASS_LOG_POS: &str = "IMFW_CLASSPOS";
pub const SCRATCH: &str = "IMFW_SCRATCH";
/// One u64: the controller's heartbeat, a deadline in `CLOCK_MONOTONIC` nanoseconds (the
/// kernel's `bpf_ktime_get_coarse_ns`). Past it, the controller counts as down and flows that
/// wait for it follow the policy's `controller_down` choice.
pub const ALIVE: &str = "IMFW_ALIVE";
/// STUN attribute type -> app.
pub const STUN: &str = "IMFW_STUN";
/// Program array holding the payload inspector, tail-called by the main program.
pub const JUMP: &str = "IMFW_JUMP";
/// The inspector's slot in `IMFW_JUMP`, and its name in the object.
pub const JUMP_INSPECT: u32 = 0;
pub const INSPECT_PROGRAM: &str = "imfw_inspect";
/// The second inspection stage (STUN, server names), tail-called by the first.
pub const JUMP_NAMES: u32 = 1;
pub const NAMES_PROGRAM: &str = "imfw_names";
/// Entries of `IMFW_JUMP`.
pub const JUMP_SLOTS: u32 = 2;

/// The XDP program's name in the object file.
pub const PROGRAM: &str = "imfw_xdp";
/// Every program of the object: the main one, then the inspection stages.
pub const PROGRAMS: [&str; 3] = [PROGRAM, INSPECT_PROGRAM, NAMES_PROGRAM];
/// The inspection stages by their slot in `IMFW_JUMP`.
pub const STAGES: [(u32, &str); JUMP_SLOTS as usize] = [(JUMP_INSPECT, INSPECT_PROGRAM), (JUMP_NAMES, NAMES_PROGRAM)];

/// Default flow-table capacity (LRU: the least recently used flow is evicted when full).
pub const FLOWS_DEFAULT: u32 = 262_144;
/// Entries one policy may have in each map. The maps hold `GENERATIONS` times as many, so that
/// any valid policy can be written beside the one in force (see `config`).
pub const SIGS_MAX: u32 = 4096;
pub const NAMES_MAX: u32 = 262_144;
pub const ADDR_MAX: u32 = 262_144;
pub const SRC_MAX: u32 = 4096;
pub const STUN_MAX: u32 = 1024;
/// Source-network classes; class 0 is "no rule network matched".
pub const SRC_CLASSES: u32 = 64;
pub const POLICY_ENTRIES: u32 = SRC_CLASSES * crate::app::MAX_APPS as u32;
pub const REDIRECT_SLOTS: u32 = 16;
/// Generations held side by side in every policy map.
pub const GENS: u32 = crate::config::GENERATIONS;

/// Words (u64) of one generation's name filter in `IMFW_NAMEBITS`: 2^20 bits, 128 KiB. A bit
/// per domain hash, so that the suffixes of a server name that no domain can be are ruled out
/// by one array read instead of a hash-map lookup each. With the 262,144 domains a policy may
/// have, about a fifth of the other suffixes still pass; with a few thousand, almost none.
pub const NAME_FILTER_WORDS: u32 = 1 << 14;

/// Buckets of one generation's name table (`IMFW_NAMES`), a power of two: with
/// `NAME_BUCKET_SLOTS` names each, twice the room `NAMES_MAX` names need, so that every name
/// finds a place in one of its two buckets (8 MiB per generation).
pub const NAME_BUCKETS: u32 = 1 << 17;
const _: () = assert!(NAME_BUCKETS as usize * crate::matcher::NAME_BUCKET_SLOTS == 2 * NAMES_MAX as usize);

/// The two buckets of the name table where domain hash `hash` may be, in generation
/// `generation`: their indices in `IMFW_NAMES`. Each comes from a multiply of the hash by its
/// own odd constant, whose top bits depend on all of the hash's; neither uses the bits the
/// name filter does in the same way. The two may be the same bucket.
#[inline(always)]
pub const fn name_buckets(generation: u32, hash: u64) -> (u32, u32) {
    const SHIFT: u32 = 64 - NAME_BUCKETS.trailing_zeros();
    let base = (generation & 1) * NAME_BUCKETS;
    let a = (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> SHIFT) as u32;
    let b = (hash.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) >> SHIFT) as u32;
    (base + a, base + b)
}

/// Where the name filter keeps the bit of domain hash `hash` in generation `generation`: the
/// word's index in `IMFW_NAMEBITS` and the bit in it. The hash's halves are folded together:
/// FNV-1a's low bits depend on the input's low bits only.
#[inline(always)]
pub const fn name_filter_bit(generation: u32, hash: u64) -> (u32, u64) {
    let x = hash ^ (hash >> 32);
    let word = ((x >> 6) as u32) & (NAME_FILTER_WORDS - 1);
    ((generation & 1) * NAME_FILTER_WORDS + word, 1u64 << (x & 63))
}

/// Index of a generation's redirect slot in `IMFW_REDIRECT` (what flows and policy rows store).
#[inline(always)]
pub const fn redirect_index(generation: u32, slot: u8) -> u8 {
    ((generation & 1) * REDIRECT_SLOTS) as u8 + slot
}

/// Index of a generation's policy row in `IMFW_POLICY`.
#[inline(always)]
pub const fn policy_index(generation: u32, class: u32, app: u32) -> u32 {
    (generation & 1) * POLICY_ENTRIES + (class % SRC_CLASSES) * crate::app::MAX_APPS as u32 + app % crate::app::MAX_APPS as u32
}

/// Key of `IMFW_STUN`: the attribute type (16 bits) with the generation above it.
#[inline(always)]
pub const fn stun_key(generation: u32, attr_type: u32) -> u32 {
    ((generation & 1) << 16) | (attr_type & 0xffff)
}

/// LPM key data of `IMFW_ADDR4`/`IMFW_SRC4`: the generation byte, then the address. Prefix
/// lengths count the generation byte (`prefix + 8`).
#[inline(always)]
pub const fn lpm4(generation: u32, addr: [u8; 4]) -> [u8; 5] {
    [(generation & 1) as u8, addr[0], addr[1], addr[2], addr[3]]
}

/// As [`lpm4`], for the IPv6 tries.
#[inline(always)]
pub fn lpm6(generation: u32, addr: &[u8; 16]) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = (generation & 1) as u8;
    let mut i = 0;
    while i < 16 {
        k[i + 1] = addr[i];
        i += 1;
    }
    k
}

/// Bits the generation byte adds to an LPM prefix length.
pub const LPM_GEN_BITS: u32 = 8;
/// Room for about 2,000 copied segments between two reads by the controller.
pub const EVENTS_BYTES: u32 = 1 << 22;
/// Records in each CPU's section of the classification log (a power of two): 4,096 flows
/// classified on one CPU between two reads by the controller (every 50 ms), 229 KiB per CPU.
pub const CLASS_LOG_SLOTS: u32 = 1 << 12;

/// Version of the layout of the maps a restarted or upgraded `imfw run` adopts from its pins
/// (`ADOPTED`). Bump it whenever a repr(C) type stored in them (`FlowKey`, `FlowEntry`,
/// `Counter`, `CounterTable`) changes, or the meaning of their fields or indices does (verdict, drop reason,
/// stat and flag numbers): a size check alone would miss a reordered field.
///
/// 2: flows carry their policy version in `src_class`'s upper bits and their generation's
/// redirect slot; `Stat::Packets` and the `policy` drop reason are summed by userspace.
/// 3: the (app, verdict) counters are one `CounterTable` per CPU, not one element per cell.
pub const LAYOUT_VERSION: u32 = 3;

/// The maps whose contents survive a restart: the flow table (every flow's verdict) and the
/// counters. Every other map (policy, configuration, events, inspector jump table) belongs to
/// one program build and is made afresh by each start, which keeps the swap atomic: the new
/// program sees only the new policy from its first packet.
pub const ADOPTED: [&str; 4] = [FLOWS, COUNTERS, DROPS, STATS];
