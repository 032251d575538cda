//! Records the data plane sends to the controller through `IMFW_EVENTS`.

use crate::flow::FlowKey;

/// A flow was classified (an app and a verdict were set).
pub const EVENT_CLASSIFIED: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    pub kind: u32,
    pub ifindex: u32,
    pub key: FlowKey,
    pub app: u16,
    pub method: u8,
    pub verdict: u8,
    pub client_is_a: u8,
    pub redirect_slot: u8,
    pub src_class: u16,
}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 56);

/// A payload the data plane could not decide on alone, for the controller to reassemble
/// (a TLS ClientHello longer than its first segment).
pub const EVENT_PAYLOAD: u32 = 2;

/// Bytes of payload one `PayloadEvent` carries.
pub const PAYLOAD_EVENT_DATA: usize = 2048;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PayloadEvent {
    pub kind: u32,
    pub ifindex: u32,
    pub key: FlowKey,
    /// TCP sequence number of the payload's first byte.
    pub seq: u32,
    /// Bytes of `data` that are payload.
    pub len: u16,
    /// `DIR_CLIENT` or `DIR_SERVER`.
    pub dir: u8,
    pub client_is_a: u8,
    /// The payload's length in the packet (`len` is less when the copy was cut to
    /// `PAYLOAD_EVENT_DATA`); at most 65535.
    pub wire_len: u16,
    /// TCP flags of the segment (SYN, FIN, RST matter to reassembly); 0 for UDP.
    pub tcp_flags: u8,
    pub _pad: [u8; 5],
    pub data: [u8; PAYLOAD_EVENT_DATA],
}

const _: () = assert!(core::mem::size_of::<PayloadEvent>() == 64 + PAYLOAD_EVENT_DATA);

/// A segment of a flow with verdict `monitor`, copied for the controller's content policy
/// (same layout as `PayloadEvent`).
pub const EVENT_STREAM: u32 = 3;
