//! Records the frames that arrive on an interface, with an `AF_PACKET` socket opened inside
//! the interface's namespace: how the tests see what imfw redirected.
use std::{
    mem,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::netns::{in_netns, Netns};

/// Longest a capture runs, whatever the caller does.
pub const CAPTURE_LIMIT: Duration = Duration::from_mins(2);
/// Most frames kept.
pub const CAPTURE_MAX_FRAMES: usize = 20_000;

/// A running capture of frames received on one interface (outgoing frames are left out).
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Vec<u8>>>>,
}

fn open_socket(ifname: &str) -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain syscalls on values we own; the fd is wrapped at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cname = std::ffi::CString::new(ifname)?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname}");
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex.cast_signed();
    // SAFETY: sll outlives the call, the size is its own.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&sll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("bind AF_PACKET to {ifname}"));
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: tv outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            mem::size_of::<libc::timeval>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_RCVTIMEO");
    }
    Ok(fd)
}

fn record(fd: &OwnedFd, stop: &AtomicBool) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + CAPTURE_LIMIT;
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed)
        && Instant::now() < deadline
        && frames.len() < CAPTURE_MAX_FRAMES
    {
        // SAFETY: sockaddr_ll is plain data.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut from_len = mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buf and from outlive the call, their sizes are passed.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                std::ptr::from_mut(&mut from).cast(),
                &raw mut from_len,
            )
        };
        if n <= 0 {
            continue; // timeout (EAGAIN) or EINTR: check the stop flag and the deadline
        }
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        frames.push(buf[..n.cast_unsigned()].to_vec());
    }
    frames
}

impl Capture {
    /// Starts capturing on `ifname` in `ns`; frames are recorded from when this returns.
    pub fn start(ns: &Netns, ifname: &str) -> Result<Self> {
        let fd = in_netns(ns.name(), || open_socket(ifname))??;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name(format!("capture-{ifname}"))
            .spawn(move || record(&fd, &flag))
            .context("spawning capture thread")?;
        Ok(Capture {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops and returns the frames received.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
