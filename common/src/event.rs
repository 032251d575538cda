//! Records the data plane sends to the controller through `IMFW_EVENTS`.

use crate::flow::FlowKey;

/// A flow was classified (an app and a verdict were set).
pub const EVENT_CLASSIFIED: u32 = 1;

/// Aligned on 8 bytes (its size, 56, and its fields' offsets are as without): the program
/// writes the key into a record in five 8-byte moves instead of ten.
#[repr(C, align(8))]
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

/// Where one CPU's section of the classification log stands (`IMFW_CLASSPOS`, indexed by CPU).
///
/// The log carries the `FlowEvent`s of classified flows from the XDP program to the controller
/// in two memory-mapped arrays (`BPF_F_MMAPABLE`), without the ring buffer's lock and helper
/// calls: each CPU writes only its own section of `IMFW_CLASSLOG` (`CLASS_LOG_SLOTS` records
/// from index `cpu * CLASS_LOG_SLOTS`), and an XDP program never runs twice at once on one CPU.
/// - The program writes record `written % CLASS_LOG_SLOTS` of its section, then `written + 1`,
///   unless the section is full (`written - read == CLASS_LOG_SLOTS`): then the record is lost,
///   counted as `events_lost`, as when the ring buffer is full.
/// - The controller reads the records from `read` up to `written`, then stores `written` in
///   `read`, which frees their slots.
///
/// Both counters only grow. The program's stores reach the controller in program order only
/// where the CPU keeps stores in order (x86-64): elsewhere the program sends classifications
/// through the ring buffer (`EVENT_CLASSIFIED` records in `IMFW_EVENTS`), and the log stays empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassLogPos {
    /// Records the program has written (the next one's number). Written by the program only.
    pub written: u64,
    /// Records the controller has read. Written by the controller only.
    pub read: u64,
    /// To a cache line of its own, so that two CPUs never write the same line.
    pub _pad: [u64; 6],
}

const _: () = assert!(core::mem::size_of::<ClassLogPos>() == 64);

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
