//! Run-time settings of the data plane, written by the controller into `IMFW_CONFIG[0]`.

/// How long after its last heartbeat (in `IMFW_ALIVE`, written every second) the controller
/// counts as down for the data plane: three missed heartbeats.
pub const CONTROLLER_GRACE_NS: u64 = 3_000_000_000;

/// Pass packets the program cannot parse (the default).
pub const ACTION_PASS: u32 = 0;
/// Drop them (counted under their drop reason).
pub const ACTION_DROP: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Payload packets inspected per direction before a flow is given up as unclassified.
    pub inspect_packets: u32,
    /// `ACTION_PASS` or `ACTION_DROP` for truncated or malformed packets.
    pub unparsed_action: u32,
    /// `ACTION_PASS` or `ACTION_DROP` for IPv4 non-first fragments.
    pub fragment_action: u32,
    /// Number of valid entries in `IMFW_SIG_CLASSES`.
    pub sig_classes: u32,
    /// Non-zero once the controller has written the policy; until then every packet passes
    /// uninspected, so a half-loaded policy never decides a flow.
    pub ready: u32,
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
    pub _pad: u32,
}

impl Config {
    pub const DEFAULT: Config = Config {
        inspect_packets: 4,
        unparsed_action: ACTION_PASS,
        fragment_action: ACTION_PASS,
        sig_classes: 0,
        ready: 0,
        pending_action: ACTION_PASS,
        learn_dns: 0,
        monitor_hold: 0,
        controller_down: ACTION_DROP,
        _pad: 0,
    };
}

const _: () = assert!(core::mem::size_of::<Config>() == 40);
