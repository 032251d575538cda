//! End-to-end: enforcement outlives the controller. `imfw run --pin-dir` pins its program,
//! links and maps; a killed controller leaves them enforcing, the next start adopts them
//! (flows keep their verdicts, the program is swapped in the same links), an incompatible
//! pinned state is refused untouched, `imfw unload` removes everything, and flows that wait
//! for a controller that is down follow `controller_down`. Each test pins on a bpffs of its
//! own. Needs root, the release binary and bpftool.
use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use imfw_common::config::CONTROLLER_GRACE_NS;
use imfw_tests::{
    imfw_proc::ImfwProc,
    lab::{Lab, SERVER4},
    pins::{self, BpfFs},
    protocols::{self, Opener},
    scenario::{run_cases, Case, Observed},
    servers::{self, TcpServer},
    util::{require_root, Rng},
};

const WAIT: Duration = Duration::from_secs(2);
/// Bounds of the connection kept busy through a kill and a restart.
const BUSY_LINES: u32 = 2_000;
const BUSY_LIMIT: Duration = Duration::from_secs(60);
const XMPP_PORT: u16 = 5222;

fn root() {
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
    ImfwProc::require_bin(&ImfwProc::bin()).unwrap();
}

fn opener(app: &str) -> Opener {
    protocols::im_openers(&mut Rng::new(7))
        .into_iter()
        .find(|o| o.app == app && o.segments.len() == 1)
        .unwrap_or_else(|| panic!("no single-segment {app} opener"))
}

fn start(lab: &mut Lab, policy: &str, dir: &Path) {
    if let Err(e) = lab.start_imfw_args(policy, &["--pin-dir", &dir.to_string_lossy()]) {
        panic!("{e:#}");
    }
}

/// Sends `line` on an established connection and reads the echo: true when it came back.
fn echoes(conn: &mut TcpStream, line: &[u8]) -> bool {
    if conn.write_all(line).is_err() {
        return false;
    }
    servers::read_some(conn, WAIT) == line
}

fn observe(lab: &Lab, server: &TcpServer, cases: Vec<Case>) -> Vec<Observed> {
    run_cases(&lab.client, server, cases, WAIT)
}

fn gw_links(lab: &Lab, dir: &Path) -> Vec<(String, pins::LinkFacts)> {
    [&lab.gw_lan, &lab.gw_wan]
        .iter()
        .map(|i| {
            let path = dir.join("links").join(format!("{i}:native"));
            let f = pins::link_facts(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            ((*i).clone(), f)
        })
        .collect()
}

/// Kill -9, restart, unload, and a start without pins as the contrast: the flow table is
/// what keeps an established flow alive under `unclassified: drop`.
#[test]
fn kill_9_keeps_enforcing_and_a_restart_adopts_the_pinned_state() {
    root();
    let fs = BpfFs::new().unwrap();
    let dir = fs.pin_dir();
    let mut lab = Lab::new().unwrap();
    let server = TcpServer::start(&lab.server, &[443, XMPP_PORT]).unwrap();
    // One payload packet per direction decides a flow, and an undecidable flow is dropped:
    // a flow whose entry were lost would die at its next echo.
    let policy = "version: 1\ndefaults: {action: allow, unclassified: drop, inspect_packets: 1}\n\
                  apps: {xmpp: allow, whatsapp: drop}\n";
    start(&mut lab, policy, &dir);
    let blocked = || vec![Case::from_opener(&opener("whatsapp"), 443, false)];
    let xmpp = Case::from_opener(&opener("xmpp"), XMPP_PORT, false);

    let mut conn = lab
        .client_connect(SocketAddr::new(SERVER4.into(), XMPP_PORT), WAIT)
        .unwrap();
    conn.write_all(&xmpp.segments.concat()).unwrap();
    assert!(
        !servers::read_some(&mut conn, WAIT).is_empty(),
        "the XMPP server answers"
    );
    assert!(echoes(&mut conn, b"hello 1\n"), "echo before the kill");
    let before = observe(&lab, &server, blocked());
    assert!(before[0].blocked(), "{:?}", before[0]);
    let xmpp_allowed = lab
        .imfw()
        .stats()
        .unwrap()
        .counter(Some("xmpp"), "allow")
        .packets;
    let links = gw_links(&lab, &dir);
    let flows_map = pins::map_id(&dir.join("maps/IMFW_FLOWS")).unwrap();
    // A second allowed connection talks without a pause through the kill and the restart:
    // every line must come back, none may be reset.
    let mut busy = lab
        .client_connect(SocketAddr::new(SERVER4.into(), XMPP_PORT), WAIT)
        .unwrap();
    busy.write_all(&xmpp.segments.concat()).unwrap();
    assert!(!servers::read_some(&mut busy, WAIT).is_empty(), "the XMPP server answers");
    let stop = Arc::new(AtomicBool::new(false));
    let talker = {
        let stop = stop.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let (mut sent, mut lost) = (0u32, Vec::new());
            // Bounded: until told to stop, at most BUSY_LINES lines or BUSY_LIMIT.
            while !stop.load(Ordering::Relaxed) && sent < BUSY_LINES && started.elapsed() < BUSY_LIMIT {
                let line = format!("busy {sent}\n");
                if !echoes(&mut busy, line.as_bytes()) {
                    lost.push(sent);
                }
                sent += 1;
            }
            (sent, lost)
        })
    };
    thread::sleep(Duration::from_millis(500));

    // (a) kill -9: the pins, the program and its verdicts stay.
    lab.kill_imfw().unwrap();
    assert_eq!(
        gw_links(&lab, &dir),
        links,
        "links and programs unchanged by the kill"
    );
    for (ifname, f) in &links {
        assert_eq!(
            pins::xdp_prog_id(&lab.gw, ifname).unwrap(),
            Some(f.prog_id),
            "{ifname}"
        );
    }
    assert!(
        echoes(&mut conn, b"hello 2\n"),
        "the allowed connection works with no controller"
    );
    let down = observe(&lab, &server, [blocked(), vec![xmpp.clone()]].concat());
    assert!(
        down[0].blocked(),
        "blocked with no controller: {:?}",
        down[0]
    );
    assert!(
        down[1].delivered(),
        "a new XMPP flow is decided by the program alone: {:?}",
        down[1]
    );

    // (b) restart: the same links get a new program; the flow table is the same map.
    start(&mut lab, policy, &dir);
    let log = lab.imfw().log_text();
    assert!(log.contains("adopted the pinned state"), "{log}");
    let after = gw_links(&lab, &dir);
    for ((ifname, old), (_, new)) in links.iter().zip(&after) {
        assert_eq!(new.id, old.id, "{ifname}: the same link, never detached");
        assert_ne!(new.prog_id, old.prog_id, "{ifname}: a new program in it");
        assert_eq!(
            pins::xdp_prog_id(&lab.gw, ifname).unwrap(),
            Some(new.prog_id),
            "{ifname}"
        );
    }
    assert_eq!(
        pins::map_id(&dir.join("maps/IMFW_FLOWS")).unwrap(),
        flows_map,
        "flow table adopted"
    );
    assert!(
        echoes(&mut conn, b"hello 3\n"),
        "the established flow kept its verdict; log:\n{log}"
    );
    assert!(observe(&lab, &server, blocked())[0].blocked());
    stop.store(true, Ordering::Relaxed);
    let (sent, lost) = talker.join().unwrap();
    assert!(sent >= 5, "the busy connection talked through the kill and the restart ({sent} lines)");
    assert!(lost.is_empty(), "lines of the busy allowed connection lost around the kill and restart: {lost:?} of {sent}");
    let st = lab.imfw().stats().unwrap();
    assert!(
        st.counter(Some("xmpp"), "allow").packets > xmpp_allowed,
        "counters go on from before the kill: {}",
        st.0
    );

    // SIGTERM without --detach-on-exit: everything stays.
    let log = lab.stop_imfw_log().unwrap();
    assert!(log.contains("stays attached and enforcing"), "{log}");
    assert_eq!(gw_links(&lab, &dir).len(), 2);
    assert!(echoes(&mut conn, b"hello 4\n"));

    // (d) imfw unload: no pins, no program on the interfaces.
    let out = pins::unload(&ImfwProc::bin(), &dir).unwrap();
    assert!(
        out.contains(&format!("detached the XDP program from {}", lab.gw_lan)),
        "{out}"
    );
    assert!(
        pins::pins_below(&dir).is_empty(),
        "{:?}",
        pins::pins_below(&dir)
    );
    assert!(!dir.exists());
    for ifname in [&lab.gw_lan, &lab.gw_wan] {
        assert_eq!(
            pins::xdp_prog_id(&lab.gw, ifname).unwrap(),
            None,
            "{ifname}"
        );
    }
    assert!(echoes(&mut conn, b"hello 5\n"), "nothing filters any more");

    // The contrast: a start without the flow table loses the established flow.
    start(&mut lab, policy, &dir);
    assert!(
        !echoes(&mut conn, b"hello 6\n"),
        "without the adopted flow table the mid-stream flow is undecidable and dropped"
    );
    let _ = lab.stop_imfw_log().unwrap();
    pins::unload(&ImfwProc::bin(), &dir).unwrap();
}

/// `--detach-on-exit`: pinned while it runs, nothing left after SIGTERM.
#[test]
fn detach_on_exit_removes_the_pins_and_the_program() {
    root();
    let fs = BpfFs::new().unwrap();
    let dir = fs.pin_dir();
    let mut lab = Lab::new().unwrap();
    let d = dir.to_string_lossy().into_owned();
    if let Err(e) = lab.start_imfw_args("version: 1\n", &["--pin-dir", &d, "--detach-on-exit"]) {
        panic!("{e:#}");
    }
    assert_eq!(gw_links(&lab, &dir).len(), 2, "pinned while running");
    let log = lab.stop_imfw_log().unwrap();
    assert!(log.contains("detached and unpinned"), "{log}");
    assert!(
        pins::pins_below(&dir).is_empty(),
        "{:?}",
        pins::pins_below(&dir)
    );
    for ifname in [&lab.gw_lan, &lab.gw_wan] {
        assert_eq!(
            pins::xdp_prog_id(&lab.gw, ifname).unwrap(),
            None,
            "{ifname}"
        );
    }
}

/// (c) A pinned state this imfw cannot adopt is refused with the way out, and left as it
/// was: the old program keeps enforcing.
#[test]
fn an_incompatible_pinned_state_is_refused_and_left_alone() {
    root();
    let fs = BpfFs::new().unwrap();
    let dir = fs.pin_dir();
    let mut lab = Lab::new().unwrap();
    let policy = "version: 1\napps: {whatsapp: drop}\n";
    start(&mut lab, policy, &dir);
    lab.stop_imfw_log().unwrap();
    let links = gw_links(&lab, &dir);
    let pinned = pins::pins_below(&dir);

    let d = dir.to_string_lossy().into_owned();
    let e = lab
        .start_imfw_args(policy, &["--pin-dir", &d, "--flows", "1024"])
        .map(|_| ())
        .expect_err("a flow table of another capacity is refused");
    let text = format!("{e:#}");
    assert!(
        text.contains("IMFW_FLOWS: pinned max entries 262144, this imfw needs 1024"),
        "{text}"
    );
    assert!(text.contains("imfw unload --pin-dir"), "{text}");

    // A flow table whose entries are not this imfw's FlowEntry.
    let flows = dir.join("maps/IMFW_FLOWS");
    std::fs::remove_file(&flows).unwrap();
    pins::create_map(&flows, "lru_hash", 40, 32, 262_144, "IMFW_FLOWS").unwrap();
    let e = lab
        .start_imfw_args(policy, &["--pin-dir", &d])
        .map(|_| ())
        .expect_err("a flow table with another value size is refused");
    let text = format!("{e:#}");
    assert!(
        text.contains("IMFW_FLOWS: pinned value size 32, this imfw needs 40"),
        "{text}"
    );
    assert!(
        text.contains("nothing was changed") && text.contains("imfw unload --pin-dir"),
        "{text}"
    );

    assert_eq!(
        gw_links(&lab, &dir),
        links,
        "the old program still runs in the old links"
    );
    assert_eq!(pins::pins_below(&dir), pinned, "no pin added or removed");
    let out = pins::unload(&ImfwProc::bin(), &dir).unwrap();
    assert!(out.contains("removed"), "{out}");
    assert!(pins::pins_below(&dir).is_empty());
}

/// (e) A TLS ClientHello whose name is in its second segment waits for the controller. With
/// the controller killed, `controller_down: open` lets it through even under `pending:
/// drop`, and `closed` drops it even under `pending: allow`; decided flows are untouched.
#[test]
fn flows_that_wait_for_a_dead_controller_follow_controller_down() {
    root();
    let fs = BpfFs::new().unwrap();
    let dir = fs.pin_dir();
    let mut lab = Lab::new().unwrap();
    let server = TcpServer::start(&lab.server, &[443, XMPP_PORT]).unwrap();
    let late = || {
        let mut ch = protocols::ClientHello::new("www.example.com");
        ch.post_quantum = true;
        ch.order = protocols::ExtOrder::SniLast;
        Case::other(
            "tls www.example.com, SNI in 2nd segment",
            ch.build(),
            443,
            false,
        )
    };
    let xmpp = || Case::from_opener(&opener("xmpp"), XMPP_PORT, false);
    let wa = || Case::from_opener(&opener("whatsapp"), 443, false);
    // The kernel's grace after the last heartbeat, and a margin for the coarse clock.
    let grace = Duration::from_nanos(CONTROLLER_GRACE_NS) + Duration::from_secs(1);
    let policy = |pending: &str, down: &str| {
        format!(
            "version: 1\ndefaults: {{action: allow, unclassified: allow, pending: {pending}, controller_down: {down}}}\n\
             apps: {{whatsapp: drop}}\n"
        )
    };

    start(&mut lab, &policy("drop", "open"), &dir);
    lab.kill_imfw().unwrap();
    thread::sleep(grace);
    let open = observe(&lab, &server, vec![late(), wa(), xmpp()]);
    assert!(
        open[0].delivered(),
        "open: the waiting flow passes: {:?}",
        open[0]
    );
    assert!(
        open[1].blocked(),
        "a decided drop stays a drop: {:?}",
        open[1]
    );
    assert!(open[2].delivered(), "{:?}", open[2]);

    // The restart adopts the counters: nothing was dropped for the dead controller.
    start(&mut lab, &policy("allow", "closed"), &dir);
    let st = lab.imfw().stats().unwrap();
    assert_eq!(st.drops("controller_down").packets, 0, "{}", st.0);
    lab.kill_imfw().unwrap();
    thread::sleep(grace);
    let closed = observe(&lab, &server, vec![late(), wa(), xmpp()]);
    assert!(
        closed[0].blocked(),
        "closed: the waiting flow is dropped: {:?}",
        closed[0]
    );
    assert_eq!(
        closed[0].server_got,
        Some(0),
        "not even its first segment passes"
    );
    assert!(closed[1].blocked(), "{:?}", closed[1]);
    assert!(
        closed[2].delivered(),
        "a flow the program decides alone passes: {:?}",
        closed[2]
    );

    start(&mut lab, &policy("allow", "closed"), &dir);
    let st = lab.imfw().stats().unwrap();
    assert!(
        st.drops("controller_down").packets > 0,
        "counted while down: {}",
        st.0
    );
    // With the controller back, the same flow is decided again (allowed: not an IM app).
    let back = observe(&lab, &server, vec![late()]);
    assert!(back[0].delivered(), "{:?}", back[0]);
    let _ = lab.stop_imfw_log().unwrap();
    pins::unload(&ImfwProc::bin(), &dir).unwrap();
}
