//! imfw as a systemd service: the notification protocol of the real `imfw run` (READY,
//! RELOADING with MONOTONIC_USEC, STOPPING, WATCHDOG, STATUS) received on a datagram socket
//! this test binds in place of systemd's, `imfw reload`, and the shipped unit checked by
//! `systemd-analyze verify`. The first test needs root and the release binary.
use std::{
    fs,
    os::unix::net::{UnixDatagram, UnixStream},
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use imfw_tests::{
    imfw_proc::ImfwProc,
    netns::{self, Netns},
    util::{output_within, require_root, Output, TempDir},
};

/// How long a notification may take to arrive after what causes it.
const NOTE_LIMIT: Duration = Duration::from_secs(20);
/// The watchdog timeout the test sets: imfw pings every half of it.
const WATCHDOG_USEC: u64 = 1_000_000;

const POLICY: &str = "version: 1\napps: {whatsapp: drop}\n";
const POLICY_2: &str = "version: 1\napps: {whatsapp: drop, telegram: drop}\n";
/// Broken on line 2: an unknown action.
const POLICY_BAD: &str = "version: 1\napps: {whatsapp: dorp}\n";

/// One notification as received, and whether the control socket accepted a connection at
/// that moment.
struct Note {
    text: String,
    control_up: bool,
}

impl Note {
    fn has(&self, field: &str) -> bool {
        self.text.lines().any(|l| l == field)
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The stand-in for systemd's notification socket: a thread reads datagrams until the
/// socket is dropped (bounded by a read timeout) and forwards them.
struct Manager {
    rx: mpsc::Receiver<Note>,
    seen: Vec<String>,
}

impl Manager {
    fn bind(path: &Path, control: PathBuf) -> Manager {
        let sock = UnixDatagram::bind(path).expect("binding the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let control_up = UnixStream::connect(&control).is_ok();
                        if tx.send(Note { text, control_up }).is_err() {
                            return;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
            }
        });
        Manager {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next notification that is not a watchdog ping.
    fn next_state(&mut self, what: &str) -> Note {
        let deadline = Instant::now() + NOTE_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(n) => {
                    self.seen.push(n.text.clone());
                    if n.text != "WATCHDOG=1\n" {
                        return n;
                    }
                }
                Err(e) => panic!(
                    "no notification ({what}) within {NOTE_LIMIT:?} ({e}); received so far: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Counts watchdog pings for `span`, and fails on any other notification meanwhile.
    fn pings_during(&mut self, span: Duration) -> usize {
        let end = Instant::now() + span;
        let mut pings = 0;
        while let Ok(n) = self
            .rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            assert_eq!(n.text, "WATCHDOG=1\n", "unexpected notification while idle");
            pings += 1;
        }
        pings
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec.cast_unsigned() * 1_000_000 + ts.tv_nsec.cast_unsigned() / 1000
}

/// A reload's two notifications: RELOADING=1 with a MONOTONIC_USEC taken between `before`
/// and now, then READY=1. Returns the READY's STATUS.
fn expect_reload(m: &mut Manager, before: u64, what: &str) -> String {
    let r = m.next_state(what);
    assert!(
        r.has("RELOADING=1"),
        "{what}: expected RELOADING=1, got {:?}",
        r.text
    );
    let usec: u64 = r
        .value("MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("{what}: RELOADING=1 without MONOTONIC_USEC: {:?}", r.text))
        .parse()
        .expect("MONOTONIC_USEC is decimal");
    let after = monotonic_usec();
    assert!(
        (before..=after).contains(&usec),
        "{what}: MONOTONIC_USEC {usec} is not between {before} and {after}"
    );
    let ready = m.next_state(what);
    assert!(
        ready.has("READY=1"),
        "{what}: expected READY=1 after RELOADING=1, got {:?}",
        ready.text
    );
    assert!(
        ready.control_up,
        "{what}: READY=1 while the control socket did not accept connections"
    );
    ready
        .value("STATUS")
        .unwrap_or_else(|| panic!("{what}: READY=1 without STATUS: {:?}", ready.text))
        .to_string()
}

fn imfw_reload(bin: &Path, control: &Path) -> Output {
    output_within(
        Command::new(bin)
            .arg("reload")
            .arg("--control")
            .arg(control),
        Duration::from_secs(90),
    )
    .expect("imfw reload")
}

#[test]
fn notify_protocol_watchdog_and_reload() {
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
    let bin = ImfwProc::bin();
    netns::remove_stale();
    let ns = Netns::with_role("svc").expect("namespace");
    netns::veth_pair(&ns, "svc0", &ns, "svc1").expect("veth");
    for i in ["svc0", "svc1"] {
        ns.ip(&["link", "set", i, "up"]).expect("link up");
    }
    let dir = TempDir::new("imfw-svc").expect("temp dir");
    let notify = dir.path().join("notify.sock");
    // imfw's control socket is named once imfw runs: the stand-in probes it through a
    // symlink made then, so READY=1 of every reload is checked to come with a live socket.
    let control_slot = dir.path().join("control-link");
    let mut m = Manager::bind(&notify, control_slot.clone());
    let notify_s = notify.to_string_lossy().into_owned();
    let wd = WATCHDOG_USEC.to_string();
    let p = ImfwProc::start_with_env(
        &bin,
        &ns,
        POLICY,
        &["svc0", "svc1"],
        &[("NOTIFY_SOCKET", &notify_s), ("WATCHDOG_USEC", &wd)],
    );
    let mut p = p.unwrap_or_else(|e| panic!("{e:#}"));
    std::os::unix::fs::symlink(p.control(), &control_slot).expect("symlink to the control socket");
    let log = |p: &ImfwProc| p.log_tail();

    // READY=1 first, with a status naming policy and interfaces; sent with the control
    // socket already bound (imfw stats answered before start() returned).
    let ready = m.next_state("startup");
    assert!(
        ready.has("READY=1"),
        "first notification {:?}; log:\n{}",
        ready.text,
        log(&p)
    );
    let status = ready.value("STATUS").expect("READY=1 carries STATUS");
    assert!(
        status.starts_with("enforcing ") && status.contains("svc0") && status.contains("svc1"),
        "{status}"
    );
    assert!(
        status.contains(&p.policy_path().display().to_string()),
        "{status}"
    );

    // The watchdog: pings every WATCHDOG_USEC / 2 from the main loop, nothing else while idle.
    let pings = m.pings_during(Duration::from_millis(2600));
    assert!(
        (3..=7).contains(&pings),
        "{pings} watchdog pings in 2.6 s at a 0.5 s interval"
    );

    // SIGHUP with a good policy.
    fs::write(p.policy_path(), POLICY_2).unwrap();
    let before = monotonic_usec();
    p.hangup().unwrap();
    let st = expect_reload(&mut m, before, "SIGHUP, good policy");
    assert!(
        st.starts_with("reloaded ") && !st.contains("refused"),
        "{st}"
    );

    // `imfw reload` with the good policy: the same notifications, exit 0.
    let before = monotonic_usec();
    let out = imfw_reload(&bin, p.control());
    assert_eq!(out.code(), 0, "imfw reload: {out:?}; log:\n{}", log(&p));
    assert!(out.stdout.contains("reloaded "), "{out:?}");
    let st = expect_reload(&mut m, before, "imfw reload, good policy");
    assert!(!st.contains("refused"), "{st}");

    // SIGHUP with a broken policy: the same sequence, the status says refused.
    fs::write(p.policy_path(), POLICY_BAD).unwrap();
    let before = monotonic_usec();
    p.hangup().unwrap();
    let st = expect_reload(&mut m, before, "SIGHUP, bad policy");
    assert!(st.starts_with("reload refused"), "{st}");
    assert!(st.contains("the running policy stays"), "{st}");

    // `imfw reload` with the broken policy: exit 2 and the errors `imfw check` prints.
    let check = output_within(
        Command::new(&bin)
            .arg("check")
            .arg("--policy")
            .arg(p.policy_path()),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(check.code(), 2, "{check:?}");
    let located = format!("{}:2:", p.policy_path().display());
    assert!(check.stderr.contains(&located), "{check:?}");
    let before = monotonic_usec();
    let out = imfw_reload(&bin, p.control());
    assert_eq!(out.code(), 2, "imfw reload of a bad policy: {out:?}");
    assert!(
        out.stderr.contains(check.stderr.trim()),
        "imfw reload does not print what imfw check prints:\n{}\nvs\n{}",
        out.stderr,
        check.stderr
    );
    let st = expect_reload(&mut m, before, "imfw reload, bad policy");
    assert!(st.starts_with("reload refused"), "{st}");

    let s = p.status().unwrap();
    assert_eq!(s["reloads"], 2, "{s}");
    assert_eq!(s["reloads_failed"], 2, "{s}");

    // SIGTERM: STOPPING=1, then a clean exit.
    let st = p.stop().unwrap();
    assert!(st.success(), "imfw exited {st}");
    let n = m.next_state("SIGTERM");
    assert!(n.has("STOPPING=1"), "expected STOPPING=1, got {:?}", n.text);
}

/// The shipped unit, with the binary under test in place of /usr/local/sbin/imfw (verify
/// checks that ExecStart='s program exists), passes `systemd-analyze verify` without a
/// single warning about it; a unit with a bad setting does not.
#[test]
fn unit_verifies_without_warnings() {
    let bin = ImfwProc::bin();
    ImfwProc::require_bin(&bin).unwrap_or_else(|e| panic!("{e:#}"));
    let unit =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/imfw.service"))
            .expect("packaging/imfw.service");
    assert!(
        unit.contains("/usr/local/sbin/imfw run "),
        "the unit no longer names the installed binary"
    );
    let dir = TempDir::new("imfw-unit").unwrap();
    let verify = |text: &str| -> Output {
        let path = dir.path().join("imfw.service");
        fs::write(&path, text).unwrap();
        output_within(
            Command::new("systemd-analyze").arg("verify").arg(&path),
            Duration::from_mins(1),
        )
        .unwrap_or_else(|e| panic!("{e:#} (systemd-analyze comes with the systemd package; `cargo xtask test` installs it)"))
    };
    let about_unit = |out: &Output| -> Vec<String> {
        out.stderr
            .lines()
            .chain(out.stdout.lines())
            .filter(|l| l.contains("imfw"))
            .map(str::to_string)
            .collect()
    };

    let ours = unit.replace("/usr/local/sbin/imfw", &bin.to_string_lossy());
    let out = verify(&ours);
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(
        about_unit(&out),
        Vec::<String>::new(),
        "systemd-analyze verify warns about the unit"
    );

    // The check can fail: a misspelt value is a warning about the unit.
    let broken = ours.replace("ProtectSystem=strict", "ProtectSystem=stricter");
    assert_ne!(broken, ours);
    let out = verify(&broken);
    assert!(
        !about_unit(&out).is_empty(),
        "a bad setting went unnoticed: {out:?}"
    );
}
