//! The content path for flows with verdict `monitor`: the controller feeds the payload XDP
//! copies into [`reassembly`], the in-order bytes into a protocol parser of [`parsers`], each
//! [`message::Message`] through the [`content`] policy, and records message and decision in
//! the [`archive`]. [`session`] puts them together for the controller.
//!
//! No aya here: everything in this crate is plain Rust, tested and benchmarked on its own.

pub mod archive;
pub mod content;
pub mod message;
pub mod parsers;
pub mod reassembly;
pub mod session;
