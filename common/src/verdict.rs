//! Verdicts, detection methods, drop reasons and counters: stable numbers shared with
//! userspace, which reports them by name.

/// What the data plane does with a flow's packets.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet: the flow is still being inspected and its packets pass.
    Pending = 0,
    Allow = 1,
    Drop = 2,
    /// XDP_REDIRECT through the devmap slot the policy names.
    Redirect = 3,
    /// Pass, and tell the controller.
    Monitor = 4,
}

/// Number of verdicts; counters are laid out `app * VERDICTS + verdict`.
pub const VERDICTS: u32 = 5;

impl Verdict {
    pub const ALL: [Verdict; VERDICTS as usize] =
        [Verdict::Pending, Verdict::Allow, Verdict::Drop, Verdict::Redirect, Verdict::Monitor];

    pub const fn from_u8(v: u8) -> Verdict {
        match v {
            1 => Verdict::Allow,
            2 => Verdict::Drop,
            3 => Verdict::Redirect,
            4 => Verdict::Monitor,
            _ => Verdict::Pending,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Pending => "pending",
            Verdict::Allow => "allow",
            Verdict::Drop => "drop",
            Verdict::Redirect => "redirect",
            Verdict::Monitor => "monitor",
        }
    }
}

/// How a flow's app was found.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    None = 0,
    /// Byte signature on a first payload.
    Signature = 1,
    /// Server name of a TLS ClientHello.
    TlsSni = 2,
    /// Host header of a plain HTTP request.
    HttpHost = 3,
    /// Target of an HTTP CONNECT request.
    HttpConnect = 4,
    /// Server address in an app's address set.
    Address = 5,
    /// Decided by the controller (reassembly, QUIC, DNS learning).
    Controller = 6,
    /// An app-specific attribute of a STUN/TURN message.
    Stun = 7,
    /// Server name of a QUIC Initial's ClientHello, decrypted by the controller.
    Quic = 8,
    /// Encrypted Client Hello hid the server name; the outer name named no app (app `ech`).
    Ech = 9,
}

impl Method {
    pub const fn from_u8(v: u8) -> Method {
        match v {
            1 => Method::Signature,
            2 => Method::TlsSni,
            3 => Method::HttpHost,
            4 => Method::HttpConnect,
            5 => Method::Address,
            6 => Method::Controller,
            7 => Method::Stun,
            8 => Method::Quic,
            9 => Method::Ech,
            _ => Method::None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Signature => "signature",
            Method::TlsSni => "tls_sni",
            Method::HttpHost => "http_host",
            Method::HttpConnect => "http_connect",
            Method::Address => "address",
            Method::Controller => "controller",
            Method::Stun => "stun",
            Method::Quic => "quic_sni",
            Method::Ech => "ech",
        }
    }
}

/// Why a packet was dropped. Index into the `IMFW_DROPS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The flow's verdict is drop.
    Policy = 0,
    /// The packet could not be parsed and the policy says `unparsed: drop`.
    Unparsed = 1,
    /// A non-first IPv4 fragment and the policy says `fragments: drop`.
    Fragment = 2,
    /// The verdict was redirect but the devmap slot had no interface.
    RedirectFailed = 3,
    /// The controller is deciding the flow and the policy says `pending: drop`.
    Pending = 4,
    /// A segment of a monitored flow held until the content policy has read it
    /// (`monitor.hold`); the sender retransmits it and the copy that follows passes.
    Held = 5,
    /// The flow waits for the controller (pending, or a held segment), the controller's
    /// heartbeat ran out and the policy says `controller_down: closed`.
    ControllerDown = 6,
}

pub const DROP_REASONS: u32 = 7;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS as usize] =
        [DropReason::Policy, DropReason::Unparsed, DropReason::Fragment, DropReason::RedirectFailed, DropReason::Pending, DropReason::Held, DropReason::ControllerDown];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Policy => "policy",
            DropReason::Unparsed => "unparsed",
            DropReason::Fragment => "fragment",
            DropReason::RedirectFailed => "redirect_failed",
            DropReason::Held => "held",
            DropReason::Pending => "pending",
            DropReason::ControllerDown => "controller_down",
        }
    }
}

/// Data-plane event counters. Index into the `IMFW_STATS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Every packet the program saw. Not counted by the program: userspace sums it from the
    /// verdict cells and the non-flow stats (`NonIp`, `OtherL4`, `Unparsed`, `Fragments`),
    /// one of which counts every packet once a policy is loaded.
    Packets = 0,
    /// Not IPv4 or IPv6 (ARP, LLDP...): always passed.
    NonIp = 1,
    /// IP but neither TCP nor UDP (ICMP, ESP...): always passed.
    OtherL4 = 2,
    /// Truncated or malformed headers, or more VLAN tags / IPv6 extension headers than parsed.
    Unparsed = 3,
    /// IPv4 non-first fragments (no L4 header to classify).
    Fragments = 4,
    /// New flow entries created.
    FlowsCreated = 5,
    /// The flow table refused an insert.
    FlowInsertFailed = 6,
    /// Payload packets that went through the matchers.
    Inspected = 7,
    /// Flows decided without an app: their inspection budget ran out, or their TLS server
    /// name is one no app claims.
    Unclassified = 8,
    /// Classification events lost because the ring buffer was full.
    EventsLost = 9,
    /// Flows classified (an app was found).
    Classified = 10,
    /// The tail call into the payload inspector failed (not loaded): the packet passed
    /// uninspected.
    InspectorMissing = 11,
    /// Payloads handed to the controller (split TLS ClientHellos).
    ToController = 12,
    /// Payloads that could not be handed over because the ring buffer was full.
    ToControllerLost = 13,
    /// Segments of monitored flows copied to the controller for content inspection.
    Streamed = 14,
    /// Segments of monitored flows not copied because the ring buffer was full (each also
    /// counted in its flow's `copies_lost`).
    StreamLost = 15,
}

pub const STATS: u32 = 16;

impl Stat {
    pub const ALL: [Stat; STATS as usize] = [
        Stat::Packets,
        Stat::NonIp,
        Stat::OtherL4,
        Stat::Unparsed,
        Stat::Fragments,
        Stat::FlowsCreated,
        Stat::FlowInsertFailed,
        Stat::Inspected,
        Stat::Unclassified,
        Stat::EventsLost,
        Stat::Classified,
        Stat::InspectorMissing,
        Stat::ToController,
        Stat::ToControllerLost,
        Stat::Streamed,
        Stat::StreamLost,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Stat::Packets => "packets",
            Stat::NonIp => "non_ip",
            Stat::OtherL4 => "other_l4",
            Stat::Unparsed => "unparsed",
            Stat::Fragments => "fragments",
            Stat::FlowsCreated => "flows_created",
            Stat::FlowInsertFailed => "flow_insert_failed",
            Stat::Inspected => "inspected",
            Stat::Unclassified => "unclassified",
            Stat::EventsLost => "events_lost",
            Stat::Classified => "classified",
            Stat::InspectorMissing => "inspector_missing",
            Stat::ToController => "to_controller",
            Stat::ToControllerLost => "to_controller_lost",
            Stat::Streamed => "streamed",
            Stat::StreamLost => "stream_lost",
        }
    }
}

/// Packets and bytes for one (app, verdict) cell, or one drop reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Two counts summed (userspace sums the CPUs' cells, and cells of one kind).
impl core::ops::Add for Counter {
    type Output = Counter;

    fn add(self, o: Counter) -> Counter {
        Counter { packets: self.packets + o.packets, bytes: self.bytes + o.bytes }
    }
}

/// Cells of the (app, verdict) counters: `app * VERDICTS + verdict`.
pub const COUNTER_CELLS: usize = crate::app::MAX_APPS as usize * VERDICTS as usize;

/// The (app, verdict) counters, all in the one value of a per-CPU array (`IMFW_COUNTERS`).
/// The program finds this CPU's table without knowing the flow, so only the last step, the
/// cell's offset, waits for the flow entry's app and verdict: with one array element per cell
/// the element's lookup itself waited for them, and a decided flow's packet paid for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterTable {
    pub cells: [Counter; COUNTER_CELLS],
}

/// Index of an (app, verdict) cell in [`CounterTable`]. An app id is taken modulo
/// `MAX_APPS` and a verdict number the kernel never writes counts as pending: the index stays
/// in the table whatever the entry holds, as the verifier demands.
#[inline(always)]
pub const fn counter_index(app: u16, verdict: u8) -> u32 {
    let v = if (verdict as u32) < VERDICTS { verdict as u32 } else { Verdict::Pending as u32 };
    (app as u32 % crate::app::MAX_APPS as u32) * VERDICTS + v
}
