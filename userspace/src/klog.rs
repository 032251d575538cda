//! The XDP program's own log messages (aya-log), at the policy's `observability.kernel_log`
//! level: the program writes them to its `AYA_LOGS` ring only at that level or above (see the
//! ebpf crate's `klog`), and this forwards them to imfw's log, where they carry
//! `source=kernel` (`"source": "kernel"` in JSON).

use aya_log::EbpfLogger;
use log::Log;
use tokio::io::{unix::AsyncFd, Interest};

/// The `log` target of the kernel's records (the `target:` of every message in the program).
pub const TARGET: &str = "kernel";

/// The reader of the program's log ring, writing to the global logger.
pub type KernelLogger = EbpfLogger<&'static dyn Log>;

/// Whether a record came from the XDP program.
pub fn is_kernel(record: &log::Record<'_>) -> bool {
    record.target() == TARGET
}

/// Forwards the kernel's records to the global logger as they come, until the runtime ends.
/// The program wakes the reader for every record; they are rare by construction.
pub async fn forward(logger: KernelLogger) {
    // SAFETY: the logger owns its ring buffer's fd, which stays open and the same until the
    // `AsyncFd` (which owns the logger) is dropped.
    let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            log::error!(
                "kernel log: polling its ring: {e}; the XDP program's log messages are not shown"
            );
            return;
        }
    };
    loop {
        match fd.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(e) => {
                log::error!("kernel log: polling its ring: {e}; the XDP program's log messages are not shown");
                return;
            }
        }
    }
}
