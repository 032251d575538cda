//! `aya::Pod` for the types userspace reads and writes in maps.

use crate::{
    config::{Config, Generations},
    event::{ClassLogPos, FlowEvent, PayloadEvent},
    flow::{FlowEntry, FlowKey},
    matcher::{AppMatch, NameBucket, NameKey, PolicyAction, SigClass, SigKey, SigPrefilter, SigValue, SrcClass},
    verdict::Counter,
};

// SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers and arrays of
// integers, and have no implicit padding (each has a size assertion next to it).
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for Generations {}
unsafe impl aya::Pod for FlowEvent {}
unsafe impl aya::Pod for ClassLogPos {}
unsafe impl aya::Pod for PayloadEvent {}
unsafe impl aya::Pod for FlowEntry {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for crate::verdict::CounterTable {}
unsafe impl aya::Pod for AppMatch {}
unsafe impl aya::Pod for NameKey {}
unsafe impl aya::Pod for NameBucket {}
unsafe impl aya::Pod for PolicyAction {}
unsafe impl aya::Pod for SigClass {}
unsafe impl aya::Pod for SigKey {}
unsafe impl aya::Pod for SigPrefilter {}
unsafe impl aya::Pod for SigValue {}
unsafe impl aya::Pod for SrcClass {}
unsafe impl aya::Pod for Counter {}
unsafe impl aya::Pod for crate::ranges::RangeBucket {}
unsafe impl aya::Pod for crate::ranges::RangeStep {}
