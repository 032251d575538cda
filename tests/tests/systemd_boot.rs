//! imfw.service under a real systemd: a container boots the host's systemd as its PID 1
//! (`systemd-nspawn --boot` on an overlay of the host's root, see `imfw_tests::container`),
//! the files are installed where `cargo xtask install` puts them, and everything is checked
//! through `systemctl` inside: start waits for READY (Type=notify) and the program is on the
//! interface of /etc/default/imfw, reloads good and bad, the watchdog pings, the sandbox holds
//! at runtime, stop leaves enforcement pinned, and kill -9 is restarted by systemd into a
//! process that adopts the pins.
//!
//! Needs root, the release binary, systemd-nspawn (package systemd-container) and bpftool.
//! The container, its mounts and the network namespace are removed by guards, also on
//! failure; every wait is bounded.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use imfw_tests::{
    container::Container,
    imfw_proc::ImfwProc,
    netns::{self, Netns},
    pins,
    util::{require_root, TempDir},
};
use serde_json::Value;

/// The interface named in /etc/default/imfw, and its veth peer (left alone).
const IFACE: &str = "sb0";
const PEER: &str = "sb1";
const IMFW: &str = "/usr/local/sbin/imfw";
const POLICY_PATH: &str = "/etc/imfw/policy.yaml";
const PINS: &str = "/sys/fs/bpf/imfw";

/// Policies written over the installed default one.
const POLICY_2: &str = "version: 1\napps: {whatsapp: drop, telegram: drop}\n";
/// Broken on line 2: an unknown action.
const POLICY_BAD: &str = "version: 1\napps: {whatsapp: dorp}\n";

/// imfw pings every half of the unit's WatchdogSec=30.
const WATCHDOG_WAIT: Duration = Duration::from_secs(25);
/// RestartSec=2 plus a start (the verifier on a busy machine).
const RESTART_WAIT: Duration = Duration::from_mins(2);

/// CAP_NET_ADMIN (12), CAP_NET_RAW (13), CAP_PERFMON (38), CAP_BPF (39): the unit's
/// CapabilityBoundingSet=.
const UNIT_CAPS: u64 = 1 << 12 | 1 << 13 | 1 << 38 | 1 << 39;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The tree `cargo xtask install` writes (default prefix /usr/local), with IMFW_IFACES set
/// as the operator does next.
fn stage(bin: &Path) -> TempDir {
    let dir = TempDir::new("imfw-stage").expect("stage dir");
    let put = |path: &str, bytes: &[u8], mode: u32| {
        let to = dir.path().join(path.trim_start_matches('/'));
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::write(&to, bytes).unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(mode)).unwrap();
    };
    put(
        IMFW,
        &fs::read(bin).expect("reading the imfw binary"),
        0o755,
    );
    let unit = fs::read_to_string(repo("packaging/imfw.service")).expect("packaging/imfw.service");
    assert!(
        unit.contains(&format!("ExecStart={IMFW} run ")),
        "the unit no longer names {IMFW}"
    );
    put("/etc/systemd/system/imfw.service", unit.as_bytes(), 0o644);
    let env = fs::read_to_string(repo("packaging/imfw.default")).expect("packaging/imfw.default");
    let env = env.replace("\nIMFW_IFACES=\n", &format!("\nIMFW_IFACES={IFACE}\n"));
    assert!(env.contains(&format!("IMFW_IFACES={IFACE}\n")), "{env}");
    put("/etc/default/imfw", env.as_bytes(), 0o644);
    let policy = fs::read(repo("userspace/policy/default.yaml")).expect("default policy");
    put(POLICY_PATH, &policy, 0o644);
    dir
}

/// A namespace with a veth pair for the container, and the container booted in it. The
/// container is declared last so it is dropped first.
fn boot() -> (Netns, TempDir, Container) {
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
    let bin = ImfwProc::bin();
    ImfwProc::require_bin(&bin).unwrap_or_else(|e| panic!("{e:#}"));
    netns::remove_stale();
    let ns = Netns::with_role("boot").expect("namespace");
    netns::veth_pair(&ns, IFACE, &ns, PEER).expect("veth");
    for i in [IFACE, PEER] {
        ns.ip(&["link", "set", i, "up"]).expect("link up");
    }
    let stage = stage(&bin);
    let c = Container::boot(&ns, stage.path()).unwrap_or_else(|e| panic!("{e:#}"));
    (ns, stage, c)
}

struct Unit<'a> {
    c: &'a Container,
}

impl Unit<'_> {
    fn show(&self, props: &[&str]) -> std::collections::BTreeMap<String, String> {
        self.c
            .show("imfw.service", props)
            .unwrap_or_else(|e| panic!("{e:#}; journal:\n{}", self.journal()))
    }

    fn prop(&self, p: &str) -> String {
        self.show(&[p]).remove(p).unwrap_or_default()
    }

    fn prop_u64(&self, p: &str) -> u64 {
        let v = self.prop(p);
        v.parse()
            .unwrap_or_else(|_| panic!("{p}={v:?} is not a number"))
    }

    fn state(&self) -> (String, String) {
        let mut m = self.show(&["ActiveState", "SubState"]);
        (
            m.remove("ActiveState").unwrap(),
            m.remove("SubState").unwrap(),
        )
    }

    fn main_pid(&self) -> u64 {
        self.prop_u64("MainPID")
    }

    fn journal(&self) -> String {
        self.c.journal("imfw.service")
    }

    /// `systemctl VERB imfw`, which must exit 0.
    fn ctl(&self, verb: &str) {
        let out = self.c.exec(&["systemctl", verb, "imfw"]).unwrap();
        assert_eq!(
            out.code(),
            0,
            "systemctl {verb} imfw: {out:?}; journal:\n{}",
            self.journal()
        );
    }

    fn status(&self) -> Value {
        let text = self
            .c
            .run(&[IMFW, "status", "--json"])
            .unwrap_or_else(|e| panic!("{e:#}; journal:\n{}", self.journal()));
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("status {text:?}: {e}"))
    }

    fn write_policy(&self, text: &str) {
        fs::write(self.c.path(POLICY_PATH), text).expect("writing the policy in the container");
    }

    /// Runs `cmd` in the mount namespace of the service's main process (its sandbox).
    fn in_sandbox(&self, cmd: &[&str]) -> imfw_tests::util::Output {
        let pid = self.main_pid().to_string();
        let mut full = vec!["nsenter", "--target", &pid, "--mount", "--"];
        full.extend_from_slice(cmd);
        self.c.exec(&full).unwrap()
    }

    fn adoptions(&self) -> usize {
        self.journal().matches("adopted the pinned state").count()
    }
}

/// Polls `f` every 100 ms until it returns true or `limit` passes.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The pinned XDP link of IFACE (its file name carries the attach mode).
fn link_pin(c: &Container) -> PathBuf {
    let dir = c.path(&format!("{PINS}/links"));
    let name = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("{IFACE}:")))
        .unwrap_or_else(|| panic!("no link pinned for {IFACE} in {}", dir.display()));
    dir.join(name)
}

#[test]
fn imfw_service_under_a_booted_systemd() {
    let (ns, _stage, c) = boot();
    let u = Unit { c: &c };
    assert_eq!(u.prop("Type"), "notify");
    assert!(
        xdp(&ns, IFACE).is_none(),
        "a program is attached before the start"
    );

    // Start: `systemctl start` of a Type=notify unit returns once imfw sent READY=1, and
    // imfw sends it only when the program is attached and the control socket answers. So
    // right after the call returns, all of that must hold (with Type=simple it would return
    // at the fork, seconds before the verifier is done).
    u.ctl("start");
    assert_eq!(u.state(), ("active".into(), "running".into()));
    let prog = xdp(&ns, IFACE).expect("no XDP program on the interface of /etc/default/imfw");
    assert!(
        xdp(&ns, PEER).is_none(),
        "a program on {PEER}, which the settings do not name"
    );
    let st = u.status();
    assert_eq!(st["policy"], POLICY_PATH, "{st}");
    assert_eq!(st["policy_version"], 1, "{st}");
    assert_eq!(st["interfaces"][0]["iface"], IFACE, "{st}");
    assert_eq!(
        st["pid"].as_u64(),
        Some(u.main_pid()),
        "the control socket is not the main process's: {st}"
    );
    let status = u.prop("StatusText");
    assert!(
        status.starts_with("enforcing ") && status.contains(POLICY_PATH) && status.contains(IFACE),
        "StatusText={status:?}"
    );
    let hash_1 = st["policy_hash"].as_str().expect("policy_hash").to_string();

    // The watchdog: armed at the unit's 30 s, and imfw's pings move WatchdogTimestamp.
    assert_eq!(u.prop("WatchdogUSec"), "30s");
    let ping_0 = u.prop_u64("WatchdogTimestampMonotonic");
    assert!(ping_0 > 0, "no watchdog ping since the start");
    assert!(
        wait_until(WATCHDOG_WAIT, || u.prop_u64("WatchdogTimestampMonotonic")
            > ping_0),
        "no watchdog ping within {WATCHDOG_WAIT:?} (WatchdogSec=30)"
    );

    hardening_holds(&u);

    let hash_2 = reloads_good_and_bad(&u, &hash_1);

    // Stop: the unit goes inactive, enforcement stays (the program on the interface, the
    // link and the flow table pinned).
    let link = pins::link_facts(&link_pin(&c)).unwrap();
    let flows = flows_map(&c);
    assert_eq!(link.prog_id, prog);
    u.ctl("stop");
    assert_eq!(u.state(), ("inactive".into(), "dead".into()));
    assert_eq!(
        xdp(&ns, IFACE),
        Some(prog),
        "stopping the unit removed enforcement"
    );
    assert_eq!(pins::link_facts(&link_pin(&c)).unwrap().id, link.id);

    // Start again: the new process adopts the pins (same link, same flow table).
    u.ctl("start");
    assert_eq!(u.state(), ("active".into(), "running".into()));
    assert_eq!(u.adoptions(), 1, "journal:\n{}", u.journal());
    assert_eq!(
        pins::link_facts(&link_pin(&c)).unwrap().id,
        link.id,
        "a new link"
    );
    assert_eq!(flows_map(&c), flows);
    assert_eq!(u.status()["policy_hash"].as_str(), Some(hash_2.as_str()));

    // kill -9: enforcement stays while no process runs, systemd restarts the unit
    // (Restart=on-failure) and the new process adopts the pins.
    let pid = u.main_pid();
    let restarts = u.prop_u64("NRestarts");
    c.run(&["kill", "-9", &pid.to_string()]).unwrap();
    assert!(
        xdp(&ns, IFACE).is_some(),
        "the program went with the process"
    );
    let restarted = wait_until(RESTART_WAIT, || {
        let m = u.show(&["NRestarts", "ActiveState", "SubState", "MainPID"]);
        m["NRestarts"].parse::<u64>().unwrap_or(0) > restarts
            && m["ActiveState"] == "active"
            && m["SubState"] == "running"
            && m["MainPID"] != pid.to_string()
            && m["MainPID"] != "0"
    });
    assert!(
        restarted,
        "not restarted within {RESTART_WAIT:?}: {:?}; journal:\n{}",
        u.show(&["NRestarts", "ActiveState", "SubState", "MainPID", "Result"]),
        u.journal()
    );
    assert_eq!(u.prop_u64("NRestarts"), restarts + 1);
    let journal = u.journal();
    assert!(journal.contains("status=9/KILL"), "{journal}");
    assert_eq!(u.adoptions(), 2, "journal:\n{journal}");
    assert_eq!(
        pins::link_facts(&link_pin(&c)).unwrap().id,
        link.id,
        "a new link"
    );
    assert_eq!(flows_map(&c), flows);
    assert!(xdp(&ns, IFACE).is_some());
    let st = u.status();
    assert_eq!(st["pid"].as_u64(), Some(u.main_pid()), "{st}");
    assert_eq!(st["policy_hash"].as_str(), Some(hash_2.as_str()), "{st}");
}

/// `systemctl reload` with a good file, then a broken one (left good again). Returns the
/// hash of the good file's policy.
fn reloads_good_and_bad(u: &Unit, hash_1: &str) -> String {
    let c = u.c;
    // A good reload: `systemctl reload` (ExecReload= runs `imfw reload`) exits 0 and the
    // running process has the new policy.
    let pid = u.main_pid();
    u.write_policy(POLICY_2);
    u.ctl("reload");
    let st = u.status();
    assert_eq!(st["policy_version"], 2, "{st}");
    assert_ne!(st["policy_hash"].as_str(), Some(hash_1), "{st}");
    assert_eq!(st["reloads"], 1, "{st}");
    let hash_2 = st["policy_hash"].as_str().unwrap().to_string();
    let status = u.prop("StatusText");
    assert!(status.starts_with("reloaded "), "StatusText={status:?}");
    assert_eq!(u.main_pid(), pid, "a reload restarted the process");

    // A bad reload: `systemctl reload` fails and says why, the old policy stays, the unit
    // stays active with the same process.
    u.write_policy(POLICY_BAD);
    let out = c.exec(&["systemctl", "reload", "imfw"]).unwrap();
    assert_ne!(out.code(), 0, "a broken policy was reloaded: {out:?}");
    let st = u.status();
    assert_eq!(st["policy_version"], 2, "{st}");
    assert_eq!(st["policy_hash"].as_str(), Some(hash_2.as_str()), "{st}");
    assert_eq!(st["reloads_failed"], 1, "{st}");
    assert_eq!(u.state(), ("active".into(), "running".into()));
    assert_eq!(u.main_pid(), pid);
    let status = u.prop("StatusText");
    assert!(
        status.starts_with("reload refused"),
        "StatusText={status:?}"
    );
    let journal = u.journal();
    assert!(
        journal.contains(&format!("{POLICY_PATH}:2:")),
        "the journal does not locate the error:\n{journal}"
    );
    u.write_policy(POLICY_2);
    hash_2
}

/// The unit's sandbox, observed on the running process: its capabilities, no new
/// privileges, a system call filter, and its mount namespace (read-only system, private
/// /tmp, no home directories, writable state and pin directories only). Each refusal is
/// checked against the same operation outside the sandbox, in the container, which works.
fn hardening_holds(u: &Unit) {
    let c = u.c;
    let pid = u.main_pid();
    let status = c.run(&["cat", &format!("/proc/{pid}/status")]).unwrap();
    let field = |k: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {k} in {status}"))
            .trim()
            .to_string()
    };
    let caps = |k: &str| u64::from_str_radix(&field(k), 16).unwrap();
    assert_eq!(caps("CapEff"), UNIT_CAPS, "CapEff {}", field("CapEff"));
    assert_eq!(caps("CapBnd"), UNIT_CAPS, "CapBnd {}", field("CapBnd"));
    assert_eq!(caps("CapAmb"), 0);
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "no system call filter");

    // ProtectSystem=strict: /usr and /etc are read-only for the service.
    for probe in ["/usr/imfw-probe", "/etc/imfw-probe"] {
        let out = u.in_sandbox(&["touch", probe]);
        assert_ne!(out.code(), 0, "the service could write {probe}");
        assert!(out.stderr.contains("Read-only file system"), "{out:?}");
        c.run(&["touch", probe]).unwrap();
        c.run(&["rm", probe]).unwrap();
    }
    // The BPF filesystem is read-only too, except ReadWritePaths=/sys/fs/bpf/imfw.
    let out = u.in_sandbox(&["mkdir", "/sys/fs/bpf/imfw-probe"]);
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    c.run(&["mkdir", "/sys/fs/bpf/imfw-probe"]).unwrap();
    c.run(&["rmdir", "/sys/fs/bpf/imfw-probe"]).unwrap();
    let mounts = u.in_sandbox(&["cat", "/proc/self/mountinfo"]).stdout;
    let pins_rw = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(4) == Some(&PINS) && f.get(5).is_some_and(|o| o.split(',').any(|x| x == "rw"))
    });
    assert!(
        pins_rw,
        "{PINS} is not mounted read-write in the sandbox:\n{mounts}"
    );
    // StateDirectory=: /var/lib/imfw is writable.
    let out = u.in_sandbox(&["touch", "/var/lib/imfw/.probe"]);
    assert_eq!(out.code(), 0, "{out:?}");
    c.run(&["rm", "/var/lib/imfw/.probe"]).unwrap();
    // PrivateTmp= and ProtectHome=: what the container has in /tmp and /root, the service
    // does not see.
    for probe in ["/tmp/imfw-probe", "/root/imfw-probe"] {
        fs::write(c.path(probe), b"x").unwrap();
        assert_eq!(c.exec(&["test", "-e", probe]).unwrap().code(), 0);
        assert_ne!(
            u.in_sandbox(&["test", "-e", probe]).code(),
            0,
            "the service sees {probe}"
        );
        fs::remove_file(c.path(probe)).unwrap();
    }
}

/// The id of the pinned flow table.
fn flows_map(c: &Container) -> u64 {
    pins::map_id(&c.path(&format!("{PINS}/maps/IMFW_FLOWS"))).unwrap()
}

fn xdp(ns: &Netns, ifname: &str) -> Option<u64> {
    pins::xdp_prog_id(ns, ifname).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Bad settings at start: a broken policy or an interface that does not exist fail
/// `systemctl start` with the reason in the journal, attach nothing, and end in the unit's
/// start limit instead of a restart loop; fixed settings start it again.
#[test]
fn bad_settings_fail_the_start_clearly() {
    let (ns, _stage, c) = boot();
    let u = Unit { c: &c };

    u.write_policy(POLICY_BAD);
    let out = c.exec(&["systemctl", "start", "imfw"]).unwrap();
    assert_ne!(out.code(), 0, "started with a broken policy: {out:?}");
    let journal = u.journal();
    assert!(
        journal.contains(&format!("{POLICY_PATH}:2:")) && journal.contains("refusing to start"),
        "the journal does not say why:\n{journal}"
    );
    assert!(xdp(&ns, IFACE).is_none(), "attached with a broken policy");
    // Restart=on-failure retries, StartLimitBurst=5 ends it (systemd 252 keeps
    // Result=exit-code and says so in the journal).
    let limited = wait_until(RESTART_WAIT, || {
        u.prop("ActiveState") == "failed"
            && u.journal().contains("Start request repeated too quickly")
    });
    assert!(
        limited,
        "no start limit: {:?}; journal:\n{}",
        u.show(&["ActiveState", "Result", "NRestarts"]),
        u.journal()
    );
    assert_eq!(u.prop_u64("NRestarts"), 5, "StartLimitBurst=5");
    assert!(xdp(&ns, IFACE).is_none());

    // A good policy, and an interface that is not there.
    u.write_policy(POLICY_2);
    let env_path = c.path("/etc/default/imfw");
    let env = fs::read_to_string(&env_path).unwrap();
    fs::write(
        &env_path,
        env.replace(&format!("IMFW_IFACES={IFACE}"), "IMFW_IFACES=nope0"),
    )
    .unwrap();
    c.run(&["systemctl", "reset-failed", "imfw"]).unwrap();
    let out = c.exec(&["systemctl", "start", "imfw"]).unwrap();
    assert_ne!(out.code(), 0, "started on a missing interface: {out:?}");
    let journal = u.journal();
    assert!(
        journal
            .lines()
            .any(|l| l.contains("imfw[") && l.contains("nope0")),
        "the journal does not name the missing interface:\n{journal}"
    );

    // Fixed: it starts.
    fs::write(&env_path, env).unwrap();
    c.run(&["systemctl", "reset-failed", "imfw"]).unwrap();
    u.ctl("start");
    assert_eq!(u.state(), ("active".into(), "running".into()));
    assert!(xdp(&ns, IFACE).is_some());
}
