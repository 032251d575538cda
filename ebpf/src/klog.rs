//! Kernel log messages (aya-log) from the program's rare sites, at the policy's
//! `observability.kernel_log` level (`Config::kernel_log`).
//!
//! Inlined into the programs, aya-log's record building cost the main program more than its
//! 512-byte stack and the names stage more than the verifier's 1M instructions. Here every
//! message is a global BPF function (exported by the linker, see build.rs): the verifier checks
//! it once, on its own, and at a call site sees only a call that clobbers R0-R5, never the
//! record code's paths. Its stack is its own frame. Each takes at most five scalar arguments
//! (what a BPF call passes in registers), no pointer, so it needs no checks of its arguments.
//!
//! The call sites gate on `Config::kernel_log` (one load from the Config the packet already
//! reads, one compare) and sit only where a flow is created or decided, or where something
//! failed: never on a decided flow's allow, drop or redirect path.
//!
//! No message is sent while the controller is down: a controller that is not running reads no
//! log ring either, and a restarted one loads a new program with a new ring.

use aya_log_ebpf::{debug, error, info, warn};
use imfw_common::config::{Config, LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_WARN};

/// The `log` target of every kernel message: userspace routes these records by it (see
/// `imfw::klog::TARGET`).
macro_rules! target {
    () => {
        "kernel"
    };
}

/// Whether messages of `level` are emitted by the settings `cfg`.
#[inline(always)]
fn on(cfg: &Config, level: u32) -> bool {
    cfg.kernel_log >= level
}

// The functions below are the exported global functions. `extern "C"` with `no_mangle` gives
// them a stable symbol for `--export`; `u32` results because the verifier requires a scalar
// return from a global function.

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imfw_klog_flow_insert_failed(ifindex: u32, proto: u32) -> u32 {
    error!(&(), target: target!(), "flow table refused a new flow (ifindex={}, proto={}): it passes undecided, counted as flow_insert_failed", ifindex, proto);
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imfw_klog_stage_missing(slot: u32) -> u32 {
    error!(&(), target: target!(), "tail call to inspection stage {} failed: the packet passes uninspected, counted as inspector_missing", slot);
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imfw_klog_redirect_failed(slot: u32) -> u32 {
    warn!(&(), target: target!(), "redirect to devmap slot {} failed: packet dropped (fail closed), counted as redirect_failed", slot);
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imfw_klog_ring_full(kind: u32) -> u32 {
    if kind == LOST_EVENT {
        warn!(&(), target: target!(), "classification log full (this CPU's section unread): a classification event was lost, counted as events_lost");
    } else {
        warn!(&(), target: target!(), "event ring full: a payload for the controller was lost, counted as to_controller_lost");
    }
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imfw_klog_classified(
    app: u32,
    method: u32,
    verdict: u32,
    server_port: u32,
    proto: u32,
) -> u32 {
    info!(&(), target: target!(), "flow classified: app={} method={} verdict={} server_port={} proto={}", app, method, verdict, server_port, proto);
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imfw_klog_malformed(ifindex: u32, len: u32, dropped: u32) -> u32 {
    debug!(&(), target: target!(), "malformed packet (ifindex={}, len={}): dropped={}, counted as unparsed", ifindex, len, dropped);
    0
}

// The call sites: one gate each, then the call.

/// The flow table refused an insert (full of entries it cannot evict, or out of memory).
#[inline(always)]
pub fn flow_insert_failed(cfg: &Config, ifindex: u32, proto: u8) {
    if on(cfg, LOG_ERROR) {
        imfw_klog_flow_insert_failed(ifindex, proto as u32);
    }
}

/// A tail call into an inspection stage failed (the jump table lacks it).
#[inline(always)]
pub fn stage_missing(cfg: &Config, slot: u32) {
    if on(cfg, LOG_ERROR) {
        imfw_klog_stage_missing(slot);
    }
}

/// A redirect verdict found no interface in its devmap slot.
#[inline(always)]
pub fn redirect_failed(cfg: &Config, slot: u8) {
    if on(cfg, LOG_WARN) {
        imfw_klog_redirect_failed(slot as u32);
    }
}

/// What a lost ring record was for, in [`ring_full`] messages.
pub const LOST_EVENT: u32 = 0;
pub const LOST_PAYLOAD: u32 = 1;

/// The event ring had no room for a record the controller needed.
#[inline(always)]
pub fn ring_full(cfg: &Config, kind: u32) {
    if on(cfg, LOG_WARN) {
        imfw_klog_ring_full(kind);
    }
}

/// A flow was decided as an app: once per flow.
#[inline(always)]
pub fn classified(cfg: &Config, app: u16, method: u8, verdict: u8, server_port: u16, proto: u8) {
    if on(cfg, LOG_INFO) {
        imfw_klog_classified(
            app as u32,
            method as u32,
            verdict as u32,
            server_port as u32,
            proto as u32,
        );
    }
}

/// A packet whose headers could not be parsed: per packet, so only at `debug`.
#[inline(always)]
pub fn malformed(cfg: &Config, ifindex: u32, len: u64, dropped: bool) {
    if on(cfg, LOG_DEBUG) {
        imfw_klog_malformed(ifindex, len as u32, dropped as u32);
    }
}
