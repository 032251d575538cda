//! The imfw controller: policy compilation, the data plane loader, offline classification and
//! the control socket. The `imfw` binary (main.rs) is a thin CLI over this library.

pub mod bench_refs;
pub mod capture;
pub mod catalogue;
pub mod classify;
pub mod classlog;
pub mod content_path;
pub mod control;
pub mod controller;
pub mod dataplane;
pub mod dns;
pub mod events;
pub mod flows;
pub mod klog;
pub mod metrics;
pub mod nametab;
pub mod notify;
pub mod packet;
pub mod pins;
pub mod policy;
pub mod quic;
pub mod rangetab;
pub mod rst;
pub mod status;
