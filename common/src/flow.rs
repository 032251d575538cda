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
/// The controller is reassembling this flow's client payload: later client segments go to it.
pub const FLAG_CONTROLLER: u8 = 4;
/// A monitored flow whose content cannot be read (TLS, compression): the controller set it
/// to stop the copies.
pub const FLAG_NO_COPY: u8 = 8;
/// `cleared[0]` (client to server) is valid.
pub const FLAG_CLEARED_CLIENT: u8 = 16;
/// `cleared[1]` (server to client) is valid.
pub const FLAG_CLEARED_SERVER: u8 = 32;
/// The content policy blocked this flow: its verdict is the controller's, not the policy's,
/// and a policy reload keeps it.
pub const FLAG_CONTENT_BLOCKED: u8 = 64;
/// `src_class` holds a class looked up (under the version in its tag). A new flow's entry is
/// created without it: the lookup waits for the flow's first payload, so that a SYN (a scan,
/// a flood) costs no trie walk.
pub const FLAG_CLASS_KNOWN: u8 = 128;

/// `addr_app` before the server's address was looked up in the app networks: the lookup waits
/// until a payload leaves the address to decide (no name, an encrypted name, the budget spent),
/// so flows that a name or a signature decides never pay it. Not an app id (they are below
/// `MAX_APPS`).
pub const ADDR_UNRESOLVED: u16 = u16::MAX;

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
    /// Source-network class of the client (index into the policy rows) in its low
    /// [`SRC_CLASS_BITS`], and above them the low bits of the version of the policy it was
    /// looked up in (see [`FlowEntry::tagged_class`]).
    pub src_class: u16,
    /// The app whose published or learned networks hold the server's address (0: none;
    /// [`ADDR_UNRESOLVED`] until looked up). It decides the flow when the payload names
    /// nothing: a server name, when there is one, outranks the address (a shared cloud address
    /// serves many names).
    pub addr_app: u16,
    /// Segments of this monitored flow the ring buffer had no room for (saturating): the
    /// controller reads it to account the loss to the flow.
    pub copies_lost: u16,
    /// With `monitor.hold`: the sequence number up to which the content policy has read each
    /// direction (client's, server's), valid once `FLAG_CLEARED_*` is set. Segments below it
    /// pass; others are copied and held.
    pub cleared: [u32; 2],
}

const _: () = assert!(core::mem::size_of::<FlowEntry>() == 40);

/// Bits of `FlowEntry::src_class` that hold the class (`SRC_CLASSES` is 64); the bits above
/// hold the low bits of the policy version the class was looked up in. Classes are numbered
/// per policy: a flow created under one policy and decided under another looks its client's
/// class up again.
pub const SRC_CLASS_BITS: u32 = 6;

impl FlowEntry {
    /// The client's source class, without its version tag.
    #[inline(always)]
    pub const fn class(&self) -> u16 {
        self.src_class & ((1 << SRC_CLASS_BITS) - 1)
    }

    /// Whether the source class was looked up, under policy `version`.
    #[inline(always)]
    pub const fn class_is_from(&self, version: u32) -> bool {
        self.flags & FLAG_CLASS_KNOWN != 0 && self.src_class >> SRC_CLASS_BITS == (version as u16) & (u16::MAX >> SRC_CLASS_BITS)
    }

    /// The app of the server's address, when it was looked up.
    #[inline(always)]
    pub const fn addr_app_known(&self) -> Option<u16> {
        if self.addr_app == ADDR_UNRESOLVED { None } else { Some(self.addr_app) }
    }

    /// `src_class` for class `class` found under policy `version`.
    #[inline(always)]
    pub const fn tagged_class(class: u16, version: u32) -> u16 {
        (class & ((1 << SRC_CLASS_BITS) - 1)) | ((version as u16) << SRC_CLASS_BITS)
    }
}

/// Direction of a packet relative to the flow's client.
pub const DIR_CLIENT: u8 = 1;
pub const DIR_SERVER: u8 = 2;

impl FlowKey {
    /// The canonical key of a packet from `src:sport` to `dst:dport`, and whether the sender is
    /// endpoint `a`. The order is any total order both sides compute the same way: addresses
    /// word by word as loaded, then ports.
    #[inline(always)]
    pub fn canonical(src: [u32; 4], sport: u16, dst: [u32; 4], dport: u16, proto: u8, family: u8) -> (FlowKey, bool) {
        if family == 4 {
            // The same order on one word: the other three are zero on both sides. Kept apart
            // from the four-word path so that an IPv4 packet does not carry three zero words
            // through it (each call site passes a constant family).
            let src_first = src[0] < dst[0] || (src[0] == dst[0] && sport <= dport);
            let m = (src_first as u32).wrapping_sub(1);
            let d = (src[0] ^ dst[0]) & m;
            let p = (sport ^ dport) & m as u16;
            let key = FlowKey {
                addr_a: [src[0] ^ d, 0, 0, 0],
                addr_b: [dst[0] ^ d, 0, 0, 0],
                port_a: sport ^ p,
                port_b: dport ^ p,
                proto,
                family,
                _pad: [0; 2],
            };
            return (key, src_first);
        }
        let src_first = endpoint_le(&src, sport, &dst, dport);
        // The endpoints are swapped with masks, not chosen in two branches: the BPF backend has
        // no conditional move, and two branches that each build the key merge with every word
        // of it spilled to the stack and reloaded.
        let m = (src_first as u32).wrapping_sub(1);
        let mut addr_a = [0u32; 4];
        let mut addr_b = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            let d = (src[i] ^ dst[i]) & m;
            addr_a[i] = src[i] ^ d;
            addr_b[i] = dst[i] ^ d;
            i += 1;
        }
        let p = (sport ^ dport) & m as u16;
        (FlowKey { addr_a, addr_b, port_a: sport ^ p, port_b: dport ^ p, proto, family, _pad: [0; 2] }, src_first)
    }

    /// Address and port of the flow's client.
    #[inline(always)]
    pub fn client(&self, client_is_a: bool) -> ([u32; 4], u16) {
        if client_is_a { (self.addr_a, self.port_a) } else { (self.addr_b, self.port_b) }
    }

    /// Address and port of the flow's server.
    #[inline(always)]
    pub fn server(&self, client_is_a: bool) -> ([u32; 4], u16) {
        if client_is_a { (self.addr_b, self.port_b) } else { (self.addr_a, self.port_a) }
    }
}

#[inline(always)]
fn endpoint_le(a: &[u32; 4], ap: u16, b: &[u32; 4], bp: u16) -> bool {
    let mut i = 0;
    while i < 4 {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    ap <= bp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_share_one_key() {
        let a = [0x0102_0304, 0, 0, 0];
        let b = [0x0a0b_0c0d, 0, 0, 0];
        let (k1, s1) = FlowKey::canonical(a, 1000, b, 80, 6, 4);
        let (k2, s2) = FlowKey::canonical(b, 80, a, 1000, 6, 4);
        assert_eq!(k1, k2);
        assert_ne!(s1, s2);
        // Same address, ports decide.
        let (k3, _) = FlowKey::canonical(a, 5, a, 9, 17, 4);
        let (k4, _) = FlowKey::canonical(a, 9, a, 5, 17, 4);
        assert_eq!(k3, k4);
        assert_eq!(k1.client(s1), (a, 1000));
        assert_eq!(k1.server(s1), (b, 80));
    }

    /// The IPv4 path orders the endpoints exactly as the four-word path does on the same
    /// addresses padded with zeros: one key for both directions, whichever path built it.
    #[test]
    fn ipv4_order_is_the_four_word_order() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000u32 {
            let r = next();
            // Few distinct values, so that equal addresses and equal ports come up often.
            let a = (r & 3) as u32 * 0x4000_0001;
            let b = if i % 3 == 0 { a } else { ((r >> 8) & 3) as u32 * 0x4000_0001 };
            let (ap, bp) = (((r >> 16) & 3) as u16, ((r >> 24) & 3) as u16);
            let (k4, s4) = FlowKey::canonical([a, 0, 0, 0], ap, [b, 0, 0, 0], bp, 6, 4);
            let (kw, sw) = FlowKey::canonical([a, 0, 0, 0], ap, [b, 0, 0, 0], bp, 6, 6);
            assert_eq!(s4, sw, "{a:#x}:{ap} {b:#x}:{bp}");
            assert_eq!((k4.addr_a, k4.addr_b, k4.port_a, k4.port_b), (kw.addr_a, kw.addr_b, kw.port_a, kw.port_b));
            assert_eq!(k4.family, 4);
        }
    }
}
