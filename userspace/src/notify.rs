//! The service manager's notification protocol (sd_notify(3)) without libsystemd: one Unix
//! datagram of `KEY=VALUE` lines to `$NOTIFY_SOCKET` per state change.
//!
//! Under `Type=notify` (or `notify-reload`) systemd starts the unit's dependents on `READY=1`,
//! shows `STATUS=` in `systemctl status`, holds `systemctl reload` between `RELOADING=1` and the
//! next `READY=1`, and kills the service when `WATCHDOG=1` stops arriving within
//! `WatchdogSec=`. Outside systemd `NOTIFY_SOCKET` is unset and every call is a no-op.

use std::{
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixDatagram},
    },
    path::PathBuf,
    time::Duration,
};

/// Where the notifications go, from `$NOTIFY_SOCKET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A socket in the filesystem (`/run/systemd/notify`).
    Path(PathBuf),
    /// A socket in the abstract namespace (`@name`: a leading NUL byte on the wire).
    Abstract(Vec<u8>),
}

impl Target {
    /// Parses `$NOTIFY_SOCKET`; `None` for an empty or relative value (sd_notify(3) accepts
    /// only an absolute path or `@`; anything else, e.g. `vsock:`, is not for us).
    pub fn parse(value: &str) -> Option<Self> {
        if let Some(name) = value.strip_prefix('@') {
            return (!name.is_empty()).then(|| Target::Abstract(name.as_bytes().to_vec()));
        }
        value
            .starts_with('/')
            .then(|| Target::Path(PathBuf::from(value)))
    }
}

/// A connection to the service manager, or nothing when not run by one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, Target)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd sets: `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let target = var("NOTIFY_SOCKET").as_deref().and_then(Target::parse);
        let watchdog = watchdog_interval(
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        );
        Self::new(target, watchdog)
    }

    /// A notifier that sends to `target` (none: every send is a no-op).
    pub fn new(target: Option<Target>, watchdog: Option<Duration>) -> Self {
        // Non-blocking: when the manager's queue is full a notification is lost (and logged),
        // never the firewall's main loop blocked.
        let target = target.and_then(|t| {
            match UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s)) {
                Ok(sock) => Some((sock, t)),
                Err(e) => {
                    log::warn!("service manager notifications disabled: datagram socket: {e}");
                    None
                }
            }
        });
        Notifier { target, watchdog }
    }

    /// Whether a service manager listens (`NOTIFY_SOCKET` was set).
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when the watchdog is ours.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled())
    }

    /// Sends one notification (lines as [`Message`] builds them). A failure is returned, not
    /// logged: the caller decides how loud a lost notification is.
    pub fn send(&self, message: &Message) -> io::Result<()> {
        let Some((sock, target)) = &self.target else {
            return Ok(());
        };
        let bytes = message.text.as_bytes();
        let sent = match target {
            Target::Path(p) => sock.send_to(bytes, p)?,
            Target::Abstract(name) => {
                sock.send_to_addr(bytes, &SocketAddr::from_abstract_name(name)?)?
            }
        };
        if sent != bytes.len() {
            return Err(io::Error::other(format!(
                "short datagram: {sent} of {} bytes",
                bytes.len()
            )));
        }
        Ok(())
    }

    /// [`Notifier::send`], logging a failure as a warning.
    pub fn send_or_warn(&self, message: &Message) {
        if let Err(e) = self.send(message) {
            log::warn!(
                "notifying the service manager ({}): {e}",
                message.text.lines().next().unwrap_or("")
            );
        }
    }
}

/// Half of `WATCHDOG_USEC` (systemd's advice: ping at half the timeout), when it is set, valid
/// and meant for this process (`WATCHDOG_PID` unset or equal to `pid`).
pub fn watchdog_interval(usec: Option<&str>, for_pid: Option<&str>, pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(p) = for_pid {
        if p.trim().parse::<u32>().ok() != Some(pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// One notification: `KEY=VALUE` lines, built in the order systemd reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    text: String,
}

impl Message {
    /// `READY=1`: startup (or a reload) finished.
    pub fn ready() -> Self {
        Message::default().field("READY", "1")
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (the clock reading systemd compares against the
    /// moment it asked for the reload, as `Type=notify-reload` requires).
    pub fn reloading(monotonic_usec: u64) -> Self {
        Message::default()
            .field("RELOADING", "1")
            .field("MONOTONIC_USEC", &monotonic_usec.to_string())
    }

    /// `STOPPING=1`: shutting down.
    pub fn stopping() -> Self {
        Message::default().field("STOPPING", "1")
    }

    /// `WATCHDOG=1`: the main loop is alive.
    pub fn watchdog() -> Self {
        Message::default().field("WATCHDOG", "1")
    }

    /// Adds `STATUS=`: one line for `systemctl status` (line breaks become spaces).
    #[must_use]
    pub fn status(self, text: &str) -> Self {
        let one_line: String = text
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.field("STATUS", one_line.trim())
    }

    #[must_use]
    fn field(mut self, key: &str, value: &str) -> Self {
        self.text.push_str(key);
        self.text.push('=');
        self.text.push_str(value);
        self.text.push('\n');
        self
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock of `MONOTONIC_USEC=`.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    // The monotonic clock never reads negative; a failed call leaves zeros.
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_key_value_lines() {
        assert_eq!(Message::ready().as_str(), "READY=1\n");
        assert_eq!(Message::stopping().as_str(), "STOPPING=1\n");
        assert_eq!(Message::watchdog().as_str(), "WATCHDOG=1\n");
        assert_eq!(
            Message::reloading(1_234_567).as_str(),
            "RELOADING=1\nMONOTONIC_USEC=1234567\n"
        );
        assert_eq!(
            Message::ready()
                .status("reload refused:\npolicy.yaml:3:5: bad\n")
                .as_str(),
            "READY=1\nSTATUS=reload refused: policy.yaml:3:5: bad\n"
        );
    }

    #[test]
    fn notify_socket_forms() {
        assert_eq!(
            Target::parse("/run/systemd/notify"),
            Some(Target::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            Target::parse("@sd/notify"),
            Some(Target::Abstract(b"sd/notify".to_vec()))
        );
        assert_eq!(Target::parse("@"), None);
        assert_eq!(Target::parse("relative/sock"), None);
        assert_eq!(Target::parse("vsock:2:1234"), None);
    }

    #[test]
    fn watchdog_is_half_the_timeout_and_only_ours() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        std::thread::sleep(Duration::from_millis(2));
        let b = monotonic_usec();
        assert!(b >= a + 1000, "{a} then {b}");
    }

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_socket_in_the_filesystem() {
        let dir = std::env::temp_dir().join(format!("imfw-notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(
            Target::parse(path.to_str().unwrap()),
            Some(Duration::from_secs(1)),
        );
        assert!(n.enabled());
        assert_eq!(n.watchdog(), Some(Duration::from_secs(1)));
        n.send(&Message::ready().status("enforcing")).unwrap();
        n.send(&Message::reloading(42)).unwrap();
        assert_eq!(recv(&server), "READY=1\nSTATUS=enforcing\n");
        assert_eq!(recv(&server), "RELOADING=1\nMONOTONIC_USEC=42\n");
        drop(server);
        // Nobody listens any more: an error for the caller, not a panic.
        assert!(n.send(&Message::stopping()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!(
            "imfw-notify-test-{}-{}",
            std::process::id(),
            monotonic_usec()
        );
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::new(Target::parse(&format!("@{name}")), None);
        n.send(&Message::stopping()).unwrap();
        assert_eq!(recv(&server), "STOPPING=1\n");
    }

    #[test]
    fn without_a_service_manager_nothing_is_sent() {
        let n = Notifier::new(None, Some(Duration::from_secs(1)));
        assert!(!n.enabled());
        assert_eq!(n.watchdog(), None);
        n.send(&Message::ready()).unwrap();
    }
}
