//! The XDP program's own log messages (aya-log), forwarded to the controller's log.
//!
//! The program writes them only on rare events (see `ebpf/src/klog.rs`) and only at or above
//! the level `observability.kernel_log` set when it was loaded. They come out with the target
//! [`TARGET`], at their own level, whatever `RUST_LOG` says: the policy decides.

use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

/// The log target of kernel messages.
pub const TARGET: &str = "imfw_kernel";

/// Reads the program's log ring whenever it has records, until the ring fails.
pub async fn forward(logger: EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns the ring's descriptor and moves into the registration, which
    // therefore never outlives it.
    let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            log::error!("kernel log: cannot poll the log ring: {e}");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                log::error!("kernel log: polling the log ring: {e}");
                return;
            }
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
