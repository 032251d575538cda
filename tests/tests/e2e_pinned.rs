//! End-to-end: enforcement outlives the controller. `imfw run --pin-dir` pins its program,
//! links and maps; a killed controller leaves them enforcing, the next start adopts them
//! (flows keep their verdicts, the program is swapped in the same links), an incompatible
//! pinned state is refused untouched, `imfw unload` removes everything, and flows that wait
//! for a controller that is down follow `controller_down`. An upgrade to a rebuilt binary
//! (another build tag, another program) adopts the pinned state the same way. Kill, restart
//! and upgrade run under continuous traffic: an allowed connection that must lose no line,
//! and blocked TCP connections and a blocked UDP flow that must get no byte through. Each
//! test pins on a bpffs of its own. Needs root, the release binary, bpftool, and for the
//! upgrade the tagged binary that `cargo xtask test` builds (`$IMFW_UPGRADE_BIN`).
use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use imfw_common::config::CONTROLLER_GRACE_NS;
use imfw_tests::{
    imfw_proc::ImfwProc,
    lab::{Lab, SERVER4},
    netns::spawn_in_netns,
    pins::{self, BpfFs},
    protocols::{self, Opener},
    scenario::{run_cases, Case, Observed},
    servers::{self, TcpServer, UdpSink},
    util::{output_within, require_root, Rng},
};

const WAIT: Duration = Duration::from_secs(2);
/// Bounds of the connection kept busy through a kill and a restart.
const BUSY_LINES: u32 = 2_000;
const BUSY_LIMIT: Duration = Duration::from_mins(1);
const XMPP_PORT: u16 = 5222;
/// The blocked TCP app's port and the blocked UDP flow's.
const BLOCKED_PORT: u16 = 443;
const LABCHAT_PORT: u16 = 4000;
/// Bounds of the blocked traffic: new TCP connections (below the server's 2000 per port),
/// UDP datagrams, and how long a blocked connection waits for a reply that must not come.
const BLOCKED_CONNS: u32 = 1_000;
const BLOCKED_DATAGRAMS: u32 = 6_000;
const BLOCKED_REPLY_WAIT: Duration = Duration::from_millis(100);
const DATAGRAM_GAP: Duration = Duration::from_millis(10);
/// Blocked attempts that must be made while the controller is not running (killed or
/// stopped, until the next one is ready), so that "nothing got through" is not vacuous.
const MIN_DOWN_CONNS: u32 = 10;
const MIN_DOWN_DATAGRAMS: u32 = 100;
const DOWN_LIMIT: Duration = Duration::from_secs(20);
/// The policy of the traffic tests: one payload packet per direction decides a flow and an
/// undecidable flow is dropped, so a flow whose entry were lost would die at its next packet;
/// `labchat`, recognised by the first bytes of each datagram, is the blocked UDP app.
const TRAFFIC_POLICY: &str = "version: 1\ndefaults: {action: allow, unclassified: drop, inspect_packets: 1}\n\
    apps: {xmpp: allow, whatsapp: drop, labchat: drop}\n\
    catalogue:\n  labchat:\n    description: \"lab test app\"\n    signatures:\n      - name: labchat-hello\n        \
    direction: client\n        offset: 0\n        bytes: \"4c 41 42 43 48 41 54 31\"\n";

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

/// A connection to the XMPP server that has been answered (its flow is decided: allowed).
fn xmpp_conn(lab: &Lab, xmpp: &Case) -> TcpStream {
    let mut conn = lab
        .client_connect(SocketAddr::new(SERVER4.into(), XMPP_PORT), WAIT)
        .unwrap();
    conn.write_all(&xmpp.segments.concat()).unwrap();
    assert!(
        !servers::read_some(&mut conn, WAIT).is_empty(),
        "the XMPP server answers"
    );
    conn
}

/// Packets of `app` the running controller has counted as allowed.
fn allowed_packets(lab: &Lab, app: &str) -> u64 {
    lab.imfw()
        .stats()
        .unwrap()
        .counter(Some(app), "allow")
        .packets
}

/// The controller that just started adopted the pinned state: it says so, and every link is
/// the one `links` describes (never detached) holding a new program, attached to its
/// interface. Returns the links as they are now.
fn assert_adopted(
    lab: &Lab,
    dir: &Path,
    links: &[(String, pins::LinkFacts)],
) -> Vec<(String, pins::LinkFacts)> {
    let log = lab.imfw().log_text();
    assert!(log.contains("adopted the pinned state"), "{log}");
    let after = gw_links(lab, dir);
    for ((ifname, old), (_, new)) in links.iter().zip(&after) {
        assert_eq!(new.id, old.id, "{ifname}: the same link, never detached");
        assert_ne!(new.prog_id, old.prog_id, "{ifname}: a new program in it");
        assert_eq!(
            pins::xdp_prog_id(&lab.gw, ifname).unwrap(),
            Some(new.prog_id),
            "{ifname}"
        );
    }
    after
}

fn prog_tags(links: &[(String, pins::LinkFacts)]) -> Vec<String> {
    links
        .iter()
        .map(|(i, f)| pins::prog_tag(f.prog_id).unwrap_or_else(|e| panic!("{i}: {e:#}")))
        .collect()
}

/// When a blocked attempt started: with the first controller running, with none running
/// (killed or stopped, until the next one answers), with the next one running.
const BEFORE: u8 = 0;
const DOWN: u8 = 1;
const AFTER: u8 = 2;

/// One blocked TCP connection: where it came from, when, and what the client saw.
#[derive(Debug)]
struct Attempt {
    local: Option<SocketAddr>,
    phase: u8,
    reply_len: usize,
    error: Option<String>,
}

/// Traffic kept going through a kill, restart or upgrade of the controller: an allowed XMPP
/// connection echoing line after line, new connections of a blocked app (whatsapp) one after
/// the other, and one blocked UDP flow (labchat) at a steady rate. Every loop stops when told,
/// and at the latest at its count or [`BUSY_LIMIT`].
struct Traffic {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    /// Blocked connections and datagrams made while the controller was down, so far.
    down: Arc<[AtomicU32; 2]>,
    talker: JoinHandle<(u32, Vec<u32>)>,
    conns: JoinHandle<Option<Vec<Attempt>>>,
    datagrams: JoinHandle<Option<Datagrams>>,
}

/// What the datagram sender saw: the address answers came from, the datagrams sent in each
/// phase, and the first failure.
type Datagrams = (Option<SocketAddr>, [u32; 3], Option<String>);

impl Traffic {
    #[expect(clippy::too_many_lines, reason = "the three senders of the traffic, each a thread of its own")]
    fn start(lab: &Lab, xmpp: &Case) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU8::new(BEFORE));
        let down: Arc<[AtomicU32; 2]> = Arc::default();
        // Every line of the allowed connection must come back; none may be reset.
        let mut busy = xmpp_conn(lab, xmpp);
        let talker = {
            let stop = stop.clone();
            thread::spawn(move || {
                let started = Instant::now();
                let (mut sent, mut lost) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed)
                    && sent < BUSY_LINES
                    && started.elapsed() < BUSY_LIMIT
                {
                    let line = format!("busy {sent}\n");
                    if !echoes(&mut busy, line.as_bytes()) {
                        lost.push(sent);
                    }
                    sent += 1;
                }
                (sent, lost)
            })
        };
        let wa = opener("whatsapp").bytes();
        let conns = {
            let (stop, phase, down) = (stop.clone(), phase.clone(), down.clone());
            let dst = SocketAddr::new(SERVER4.into(), BLOCKED_PORT);
            spawn_in_netns(lab.client.name(), move || {
                let started = Instant::now();
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed)
                    && out.len() < BLOCKED_CONNS as usize
                    && started.elapsed() < BUSY_LIMIT
                {
                    let at = phase.load(Ordering::Relaxed);
                    if at == DOWN {
                        down[0].fetch_add(1, Ordering::Relaxed);
                    }
                    out.push(
                        match TcpStream::connect_timeout(&dst, servers::CONNECT_TIMEOUT) {
                            Ok(mut s) => {
                                let local = s.local_addr().ok().map(servers::canonical);
                                let error = s.write_all(&wa).err().map(|e| format!("write: {e}"));
                                let reply_len =
                                    servers::read_some(&mut s, BLOCKED_REPLY_WAIT).len();
                                Attempt {
                                    local,
                                    phase: at,
                                    reply_len,
                                    error,
                                }
                            }
                            Err(e) => Attempt {
                                local: None,
                                phase: at,
                                reply_len: 0,
                                error: Some(format!("connect: {e}")),
                            },
                        },
                    );
                }
                out
            })
            .unwrap()
        };
        let datagrams = {
            let (stop, phase, down) = (stop.clone(), phase.clone(), down.clone());
            let dst = SocketAddr::new(SERVER4.into(), LABCHAT_PORT);
            spawn_in_netns(lab.client.name(), move || {
                let sock =
                    match UdpSocket::bind("0.0.0.0:0").and_then(|s| s.connect(dst).map(|()| s)) {
                        Ok(s) => s,
                        Err(e) => return (None, [0; 3], Some(format!("udp socket: {e}"))),
                    };
                let local = sock.local_addr().ok().map(servers::canonical);
                let started = Instant::now();
                let mut sent = [0u32; 3];
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed)
                    && n < BLOCKED_DATAGRAMS
                    && started.elapsed() < BUSY_LIMIT
                {
                    let mut d = b"LABCHAT1".to_vec();
                    d.extend_from_slice(&n.to_be_bytes());
                    d.resize(100, 0x5a);
                    let at = phase.load(Ordering::Relaxed);
                    if let Err(e) = sock.send(&d) {
                        return (local, sent, Some(format!("udp send {n}: {e}")));
                    }
                    sent[usize::from(at)] += 1;
                    if at == DOWN {
                        down[1].fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                    thread::sleep(DATAGRAM_GAP);
                }
                (local, sent, None)
            })
            .unwrap()
        };
        // Some of each before the controller goes.
        thread::sleep(Duration::from_millis(500));
        Traffic {
            stop,
            phase,
            down,
            talker,
            conns,
            datagrams,
        }
    }

    /// The controller is gone: attempts from now on count as made while it was down.
    fn controller_down(&self) {
        self.phase.store(DOWN, Ordering::Relaxed);
    }

    /// The next controller answers.
    fn controller_up(&self) {
        self.phase.store(AFTER, Ordering::Relaxed);
    }

    /// Keeps the controller down until the blocked senders have made a meaningful number of
    /// attempts in that state, at most [`DOWN_LIMIT`] (the final check then says how many).
    fn wait_down_attempts(&self) {
        let deadline = Instant::now() + DOWN_LIMIT;
        while Instant::now() < deadline
            && (self.down[0].load(Ordering::Relaxed) < MIN_DOWN_CONNS
                || self.down[1].load(Ordering::Relaxed) < MIN_DOWN_DATAGRAMS)
        {
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every sender and collects what was sent and what arrived.
    fn finish(self, server: &TcpServer, sink: &UdpSink) -> TrafficReport {
        // Blocked retransmissions of the last connections have had their chance too.
        thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        let (lines, lost) = self.talker.join().unwrap();
        let attempts = self.conns.join().unwrap().expect("the client's namespace");
        let (udp_local, datagrams, udp_error) = self
            .datagrams
            .join()
            .unwrap()
            .expect("the client's namespace");
        // A byte that crossed the gateway reaches the server's log within a read timeout.
        thread::sleep(Duration::from_millis(200));
        let leaked: Vec<(SocketAddr, usize)> = attempts
            .iter()
            .filter_map(|a| a.local)
            .filter_map(|l| server.received_from(l, BLOCKED_PORT).map(|r| (l, r.total)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let port_bytes: usize = server
            .connections()
            .iter()
            .filter(|((_, port), _)| *port == BLOCKED_PORT)
            .map(|(_, r)| r.total)
            .sum();
        TrafficReport {
            lines,
            lost,
            attempts,
            leaked,
            port_bytes,
            udp_local,
            datagrams,
            udp_error,
            udp_received: udp_local.map(|l| sink.received_from(l)),
            udp_total: sink.total(),
        }
    }
}

#[derive(Debug)]
struct TrafficReport {
    lines: u32,
    lost: Vec<u32>,
    attempts: Vec<Attempt>,
    /// Blocked connections of which the server received bytes.
    leaked: Vec<(SocketAddr, usize)>,
    /// Bytes the server received on the blocked app's port, from any connection.
    port_bytes: usize,
    udp_local: Option<SocketAddr>,
    /// Datagrams sent per phase.
    datagrams: [u32; 3],
    udp_error: Option<String>,
    /// (datagrams, bytes) the UDP server received from the blocked flow.
    udp_received: Option<(usize, usize)>,
    /// ... and from anyone.
    udp_total: (usize, usize),
}

impl TrafficReport {
    fn conns_in(&self, phase: u8) -> u32 {
        self.attempts.iter().filter(|a| a.phase == phase).count() as u32
    }

    fn datagrams_sent(&self) -> u32 {
        self.datagrams.iter().sum()
    }

    /// Asserts what the traffic must show around `what`.
    fn check(&self, what: &str) {
        eprintln!(
            "{what}: {} allowed lines, blocked connections before/down/after {:?}, blocked datagrams {:?}",
            self.lines,
            [BEFORE, DOWN, AFTER].map(|p| self.conns_in(p)),
            self.datagrams
        );
        let (lines, lost) = (self.lines, &self.lost);
        assert!(
            lines >= 5,
            "the busy connection talked through {what} ({lines} lines)"
        );
        assert!(
            lost.is_empty(),
            "lines of the busy allowed connection lost around {what}: {lost:?} of {lines}"
        );
        let counts = [BEFORE, DOWN, AFTER].map(|p| self.conns_in(p));
        assert!(
            counts[DOWN as usize] >= MIN_DOWN_CONNS && counts[AFTER as usize] >= 1,
            "blocked connections made before, while down, after {what}: {counts:?}"
        );
        assert!(
            self.datagrams[DOWN as usize] >= MIN_DOWN_DATAGRAMS
                && self.datagrams[AFTER as usize] >= 1,
            "blocked datagrams sent before, while down, after {what}: {:?}",
            self.datagrams
        );
        assert_eq!(self.udp_error, None, "the blocked UDP sender");
        let failed: Vec<&Attempt> = self.attempts.iter().filter(|a| a.error.is_some()).collect();
        assert!(failed.is_empty(), "blocked connections that could not connect or write (the handshake is never blocked): {failed:?}");
        assert!(
            self.leaked.is_empty(),
            "blocked connections whose bytes reached the server around {what}: {:?}",
            self.leaked
        );
        assert_eq!(
            self.port_bytes, 0,
            "bytes received on the blocked app's port {BLOCKED_PORT}"
        );
        let replied: Vec<&Attempt> = self.attempts.iter().filter(|a| a.reply_len > 0).collect();
        assert!(
            replied.is_empty(),
            "blocked connections that got a reply: {replied:?}"
        );
        assert!(self.udp_local.is_some(), "the blocked UDP flow's address");
        assert_eq!(
            self.udp_received,
            Some((0, 0)),
            "blocked datagrams that reached the server around {what} (of {:?} sent)",
            self.datagrams
        );
        assert_eq!(
            self.udp_total,
            (0, 0),
            "datagrams received by the UDP server from anyone"
        );
    }
}

/// Kill -9, restart, unload, and a start without pins as the contrast: the flow table is
/// what keeps an established flow alive under `unclassified: drop`. From before the kill to
/// after the restart, an allowed connection talks without a pause and blocked connections
/// and datagrams keep coming: none of their bytes may reach the server.
#[test]
#[expect(clippy::too_many_lines, reason = "one scenario through the lab: each step needs the state the steps before it left")]
fn kill_9_keeps_enforcing_and_a_restart_adopts_the_pinned_state() {
    root();
    let fs = BpfFs::new().unwrap();
    let dir = fs.pin_dir();
    let mut lab = Lab::new().unwrap();
    let server = TcpServer::start(&lab.server, &[BLOCKED_PORT, XMPP_PORT]).unwrap();
    let sink = UdpSink::start(&lab.server, LABCHAT_PORT).unwrap();
    let policy = TRAFFIC_POLICY;
    start(&mut lab, policy, &dir);
    let blocked = || vec![Case::from_opener(&opener("whatsapp"), BLOCKED_PORT, false)];
    let xmpp = Case::from_opener(&opener("xmpp"), XMPP_PORT, false);

    let mut conn = xmpp_conn(&lab, &xmpp);
    assert!(echoes(&mut conn, b"hello 1\n"), "echo before the kill");
    let before = observe(&lab, &server, blocked());
    assert!(before[0].blocked(), "{:?}", before[0]);
    let xmpp_allowed = allowed_packets(&lab, "xmpp");
    let links = gw_links(&lab, &dir);
    let tags = prog_tags(&links);
    let flows_map = pins::map_id(&dir.join("maps/IMFW_FLOWS")).unwrap();
    let traffic = Traffic::start(&lab, &xmpp);

    // (a) kill -9: the pins, the program and its verdicts stay.
    lab.kill_imfw().unwrap();
    traffic.controller_down();
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
    traffic.wait_down_attempts();

    // (b) restart: the same links get a new program; the flow table is the same map.
    start(&mut lab, policy, &dir);
    traffic.controller_up();
    let after = assert_adopted(&lab, &dir, &links);
    assert_eq!(
        prog_tags(&after),
        tags,
        "the same binary loads the same code (the contrast to the upgrade test)"
    );
    assert_eq!(
        pins::map_id(&dir.join("maps/IMFW_FLOWS")).unwrap(),
        flows_map,
        "flow table adopted"
    );
    assert!(
        echoes(&mut conn, b"hello 3\n"),
        "the established flow kept its verdict; log:\n{}",
        lab.imfw().log_text()
    );
    assert!(observe(&lab, &server, blocked())[0].blocked());
    let report = traffic.finish(&server, &sink);
    report.check("the kill and the restart");
    let st = lab.imfw().stats().unwrap();
    assert!(
        st.counter(Some("xmpp"), "allow").packets > xmpp_allowed,
        "counters go on from before the kill: {}",
        st.0
    );
    assert!(
        st.counter(Some("labchat"), "drop").packets >= u64::from(report.datagrams_sent()),
        "every blocked datagram counted, those of the dead controller's time too: {report:?}\n{}",
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

/// The upgrade test's second binary: `$IMFW_UPGRADE_BIN`, else `upgrade-test/imfw` in the
/// target directory, where `cargo xtask test` puts it.
fn upgrade_bin() -> PathBuf {
    ImfwProc::built("IMFW_UPGRADE_BIN", "upgrade-test/imfw")
}

/// `BIN --version`.
fn version_line(bin: &Path) -> String {
    let out = output_within(Command::new(bin).arg("--version"), WAIT * 5)
        .unwrap_or_else(|e| panic!("{} --version: {e:#}", bin.display()));
    assert!(
        out.status.success(),
        "{} --version: {}",
        bin.display(),
        out.stderr
    );
    out.stdout.trim().to_owned()
}

/// An upgrade to a rebuilt binary (another `IMFW_BUILD_TAG`, so other program code): the old
/// binary runs with `--pin-dir` under continuous traffic and is stopped as `systemctl
/// restart` stops it (SIGTERM, leaving everything attached); the new one adopts the pins:
/// the same links get its program (another program tag), the flow table and counters are
/// the same maps, the established flows keep their verdicts, status names the new build.
#[test]
#[expect(clippy::too_many_lines, reason = "one scenario through the lab: each step needs the state the steps before it left")]
fn an_upgrade_to_a_rebuilt_binary_adopts_the_pinned_state() {
    root();
    let new_bin = upgrade_bin();
    assert!(
        new_bin.is_file(),
        "the upgrade test's tagged binary is not at {}: run `cargo xtask test` (it builds it), or \
         build it with `IMFW_BUILD_TAG=upgrade-test cargo build --release -p imfw --features \
         tagged-build`, copy target/release/imfw to target/upgrade-test/imfw (or set \
         IMFW_UPGRADE_BIN to it), and build the plain binary again",
        new_bin.display()
    );
    let old_bin = ImfwProc::bin();
    let (old_version, new_version) = (version_line(&old_bin), version_line(&new_bin));
    assert!(
        new_version.contains("(build "),
        "{}: not a tagged build: {new_version:?}",
        new_bin.display()
    );
    assert_ne!(old_version, new_version, "two builds that differ");

    let fs = BpfFs::new().unwrap();
    let dir = fs.pin_dir();
    let d = dir.to_string_lossy().into_owned();
    let mut lab = Lab::new().unwrap();
    let server = TcpServer::start(&lab.server, &[BLOCKED_PORT, XMPP_PORT]).unwrap();
    let sink = UdpSink::start(&lab.server, LABCHAT_PORT).unwrap();
    let blocked = || vec![Case::from_opener(&opener("whatsapp"), BLOCKED_PORT, false)];
    let xmpp = Case::from_opener(&opener("xmpp"), XMPP_PORT, false);
    start(&mut lab, TRAFFIC_POLICY, &dir);
    let old_tag = lab.imfw().status().unwrap()["build_tag"].clone();

    let mut conn = xmpp_conn(&lab, &xmpp);
    assert!(echoes(&mut conn, b"hello 1\n"), "echo before the upgrade");
    assert!(observe(&lab, &server, blocked())[0].blocked());
    let xmpp_allowed = allowed_packets(&lab, "xmpp");
    let links = gw_links(&lab, &dir);
    let tags = prog_tags(&links);
    let flows_map = pins::map_id(&dir.join("maps/IMFW_FLOWS")).unwrap();
    let counters_map = pins::map_id(&dir.join("maps/IMFW_COUNTERS")).unwrap();
    let traffic = Traffic::start(&lab, &xmpp);

    let log = lab.stop_imfw_log().unwrap();
    traffic.controller_down();
    assert!(log.contains("stays attached and enforcing"), "{log}");
    assert_eq!(
        gw_links(&lab, &dir),
        links,
        "the old program enforces between the two"
    );
    traffic.wait_down_attempts();

    if let Err(e) = lab.start_imfw_bin_args(&new_bin, TRAFFIC_POLICY, &["--pin-dir", &d]) {
        panic!("{e:#}");
    }
    traffic.controller_up();
    let after = assert_adopted(&lab, &dir, &links);
    let new_tags = prog_tags(&after);
    for (old, new) in tags.iter().zip(&new_tags) {
        assert_ne!(
            old, new,
            "the rebuilt binary's program is other code (program tags)"
        );
    }
    assert_eq!(
        pins::map_id(&dir.join("maps/IMFW_FLOWS")).unwrap(),
        flows_map,
        "flow table adopted"
    );
    assert_eq!(
        pins::map_id(&dir.join("maps/IMFW_COUNTERS")).unwrap(),
        counters_map,
        "counters adopted"
    );
    let status = lab.imfw().status().unwrap();
    let new_tag = status["build_tag"]
        .as_str()
        .unwrap_or_else(|| panic!("no build tag: {status}"));
    assert!(
        new_version.ends_with(&format!("(build {new_tag})")),
        "status names the build that --version names: {new_tag} / {new_version}"
    );
    assert_ne!(
        old_tag, status["build_tag"],
        "status names the new build, not the old"
    );
    assert!(
        echoes(&mut conn, b"hello 2\n"),
        "the established flow kept its verdict; log:\n{log}"
    );
    assert!(
        observe(&lab, &server, blocked())[0].blocked(),
        "the new build blocks"
    );
    assert!(
        observe(&lab, &server, vec![xmpp.clone()])[0].delivered(),
        "the new build allows"
    );
    let report = traffic.finish(&server, &sink);
    report.check("the upgrade");
    let st = lab.imfw().stats().unwrap();
    assert!(
        st.counter(Some("xmpp"), "allow").packets > xmpp_allowed,
        "counters go on from the old build's: {}",
        st.0
    );
    let _ = lab.stop_imfw_log().unwrap();
    pins::unload(&new_bin, &dir).unwrap();
    assert!(
        pins::pins_below(&dir).is_empty(),
        "{:?}",
        pins::pins_below(&dir)
    );
}
