//! The imfw test lab.
//!
//! - [`netns`]: network namespaces owned by guards, and running code inside one.
//! - [`lab`]: the client / gateway / server / recorder topology on veth pairs.
//! - [`imfw_proc`]: the real `imfw` binary on the gateway, its control socket and stats.
//! - [`packets`]: raw frame builders (Ethernet, VLAN, IPv4, IPv6 extension headers, TCP, UDP).
//! - [`protocols`]: IM and web protocol openers as their clients send them.
//! - [`servers`]: small TCP/UDP servers and clients that record what crossed the gateway.
//! - [`mix`]: a realistic gateway traffic mix (interleaved flows, IM and web) and a pcap writer.
//! - [`scenario`]: many exchanges at once, judged as delivered or blocked.
//! - [`capture`]: an `AF_PACKET` recorder for frames redirected to an interface.
//! - [`container`]: a real systemd booted as PID 1 in a container (systemd-nspawn).
//! - [`pins`]: a private BPF filesystem for `imfw run --pin-dir`, and what is pinned there.
//!
//! Everything that touches the kernel needs root. Every loop is bounded in count and time,
//! and every namespace, temporary directory and child process is owned by a guard that
//! removes it on drop, also when a test panics.

pub mod bench;
pub mod capture;
pub mod container;
pub mod imfw_proc;
pub mod lab;
pub mod mix;
pub mod netns;
pub mod packets;
pub mod pins;
pub mod protocols;
pub mod scenario;
pub mod servers;
pub mod util;
