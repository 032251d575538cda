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
