//! The flow table's key and entry.

/// Canonical 5-tuple: the endpoint that sorts lower is `a`, so both directions of a flow map to
/// the same key. IPv4 addresses use the first word and leave the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Addresses in network byte order, as they are on the wire.
    pub addr_a: [u32; 4],
    pub addr_b: [u32; 4],
    /// Ports in host byte order.
    pub port_a: u16,
    pub port_b: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Inspection state of a flow.
pub const STATE_INSPECTING: u8 = 0;
/// An app was found, or the budget ran out: the verdict is final until the controller changes it.
pub const STATE_DECIDED: u8 = 1;

/// Set in `FlowEntry::flags` once the server side sent payload before the client did.
pub const FLAG_SERVER_SPOKE_FIRST: u8 = 1;
/// Set once any payload was seen.
pub const FLAG_PAYLOAD_SEEN: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEntry {
    pub packets: u64,
    pub bytes: u64,
    pub app: u16,
    /// A `Method` number.
    pub method: u8,
    /// A `Verdict` number.
    pub verdict: u8,
    /// `STATE_*`.
    pub state: u8,
    /// 1 when endpoint `a` of the key opened the flow (sent its first packet).
    pub client_is_a: u8,
    /// Payload packets still to inspect from the client and from the server.
    pub budget_client: u8,
    pub budget_server: u8,
    /// `FLAG_*`.
    pub flags: u8,
    /// Devmap slot for `Verdict::Redirect`.
    pub redirect_slot: u8,
    /// Source-network class of the client (index into the policy rows).
    pub src_class: u16,
    pub _pad: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<FlowEntry>() == 32);

/// Direction of a packet relative to the flow's client.
pub const DIR_CLIENT: u8 = 1;
pub const DIR_SERVER: u8 = 2;
