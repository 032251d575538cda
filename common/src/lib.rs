//! Types shared by the XDP program and the userspace controller.
//!
//! Everything here is `#![no_std]`, `#[repr(C)]` and free of implicit padding, so that the
//! kernel and userspace agree on every byte. Map names, capacities and stable numbers (apps,
//! verdicts, methods, drop reasons) are defined once, here.
#![no_std]

pub mod app;
pub mod config;
pub mod event;
pub mod flow;
pub mod maps;
pub mod matcher;
pub mod ranges;
pub mod verdict;

#[cfg(feature = "user")]
mod user;
