//! Run-time settings of the data plane, written by the controller into `IMFW_CONFIG[0]`.
//!
//! # Generations
//! Every map the policy fills holds two policies side by side, generations 0 and 1, each
//! entry tagged with its generation (in its key, or at `gen * size + index` in an array).
//! `Generations::active` says which one is in force. A reload writes the inactive generation
//! completely, then flips `active`, then removes the old one: the program reads `active` once
//! per packet and carries it through its tail calls, so a packet sees one whole policy.
//!
//! The flip is one map update whose only changed byte is the low byte of `active` (0 <-> 1):
//! whatever granularity the kernel copies the value with, a reader sees the old or the new
//! generation, never a mix.

/// How long after its last heartbeat (in `IMFW_ALIVE`, written every second) the controller
/// counts as down for the data plane: three missed heartbeats.
pub const CONTROLLER_GRACE_NS: u64 = 3_000_000_000;

/// Pass packets the program cannot parse (the default).
pub const ACTION_PASS: u32 = 0;
/// Drop them (counted under their drop reason).
pub const ACTION_DROP: u32 = 1;

/// Policy generations the maps hold at once: the one in force and the one being written.
pub const GENERATIONS: u32 = 2;

/// The settings of one policy (one generation).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Payload packets inspected per direction before a flow is given up as unclassified.
    pub inspect_packets: u32,
    /// `ACTION_PASS` or `ACTION_DROP` for truncated or malformed packets.
    pub unparsed_action: u32,
    /// `ACTION_PASS` or `ACTION_DROP` for IPv4 non-first fragments.
    pub fragment_action: u32,
    /// Number of valid entries of this generation in `IMFW_SIG_CLASSES`.
    pub sig_classes: u32,
    /// `ACTION_PASS` or `ACTION_DROP` for packets of a flow the controller is deciding.
    pub pending_action: u32,
    /// Non-zero: DNS answers (UDP from port 53) are copied to the controller, which learns the
    /// addresses of IM apps' names from them.
    pub learn_dns: u32,
    /// Non-zero: payload segments of monitored flows are held (dropped, copied) until the
    /// controller has read them; the sender's retransmission then passes.
    pub monitor_hold: u32,
    /// `ACTION_PASS` (open) or `ACTION_DROP` (closed): what happens to packets that wait for
    /// the controller (pending flows, held segments) once its heartbeat in `IMFW_ALIVE` ran out.
    pub controller_down: u32,
    /// Which policy this is: the controller counts the policies it writes (0 in a compiled
    /// policy). Flows carry its low bits with their source class (`FlowEntry::src_class`).
    pub version: u32,
    /// The generation these settings belong to (their slot in `Generations::gens`): the
    /// program reads it where it needs the generation, rather than keeping one more value
    /// alive across the matchers' loops, which costs verifier states.
    pub generation: u32,
    /// The most verbose kernel log level that is emitted: `LOG_OFF` .. `LOG_DEBUG`. Read only at
    /// the program's rare sites (see the ebpf crate's `klog`), never on a decided flow's path.
    pub kernel_log: u32,
    /// The families this policy's rules name source networks of (`SRC_NETS_V4`,
    /// `SRC_NETS_V6`): a flow of another family is of the default class without a walk of the
    /// family's trie, which would find nothing.
    pub src_nets: u32,
}

/// `Config::src_nets`: the policy's rules name IPv4 source networks.
pub const SRC_NETS_V4: u32 = 1;
/// `Config::src_nets`: the policy's rules name IPv6 source networks.
pub const SRC_NETS_V6: u32 = 2;

/// `Config::kernel_log`: no kernel log messages at all.
pub const LOG_OFF: u32 = 0;
/// The levels, numbered as aya-log numbers them (`aya_log_common::Level`): a message of level
/// `l` is emitted when `l <= kernel_log`.
pub const LOG_ERROR: u32 = 1;
pub const LOG_WARN: u32 = 2;
pub const LOG_INFO: u32 = 3;
pub const LOG_DEBUG: u32 = 4;

impl Config {
    pub const DEFAULT: Config = Config {
        inspect_packets: 4,
        unparsed_action: ACTION_PASS,
        fragment_action: ACTION_PASS,
        sig_classes: 0,
        pending_action: ACTION_PASS,
        learn_dns: 0,
        monitor_hold: 0,
        controller_down: ACTION_DROP,
        version: 0,
        generation: 0,
        kernel_log: LOG_WARN,
        src_nets: 0,
    };
}

const _: () = assert!(core::mem::size_of::<Config>() == 48);

/// The value of `IMFW_CONFIG[0]`: both generations' settings and which one is in force.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generations {
    /// Non-zero once the controller has written the first policy; until then every packet
    /// passes uninspected, so a half-loaded policy never decides a flow.
    pub ready: u32,
    /// The generation in force: 0 or 1 (the program masks it).
    pub active: u32,
    pub gens: [Config; GENERATIONS as usize],
}

impl Generations {
    pub const EMPTY: Generations =
        Generations { ready: 0, active: 0, gens: [Config::DEFAULT, Config { generation: 1, ..Config::DEFAULT }] };
}

const _: () = assert!(core::mem::size_of::<Generations>() == 104);
