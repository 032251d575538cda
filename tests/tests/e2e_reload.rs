//! Policy reloads under continuous traffic, end to end: `imfw run` on the lab's gateway, a
//! client keeping an allowed IRC flow busy while SIGHUP switches the policy. A good policy that
//! drops MQTT blocks new and existing MQTT flows without the IRC flow losing a byte or being
//! reset; a bad policy changes nothing. Needs root and the release binary (`cargo xtask test`
//! provides both).
use std::{
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use imfw_tests::{
    lab::{Lab, SERVER4},
    protocols,
    servers::{self, TcpServer},
    util::require_root,
};

const IRC_PORT: u16 = 6667;
const MQTT_PORT: u16 = 1883;
/// Longest wait for something the test expects.
const EXPECT: Duration = Duration::from_secs(10);
/// How long a client waits for a reply that must never come.
const NEVER: Duration = Duration::from_secs(2);
/// Bounds of the busy flow: chunk size, pause between chunks, most chunks, longest run.
const CHUNK: usize = 700;
const PAUSE: Duration = Duration::from_millis(2);
const MAX_CHUNKS: usize = 4000;
const MAX_RUN: Duration = Duration::from_secs(20);

/// What the busy flow's client saw.
struct Busy {
    sent: Vec<u8>,
    echoed: Vec<u8>,
    error: Option<String>,
}

/// Sends chunks on `s` until `stop` (or the bounds), reading the server's echo as it goes, then
/// waits for the rest of the echo.
fn keep_busy(mut s: TcpStream, stop: &AtomicBool) -> Busy {
    let mut b = Busy {
        sent: Vec::new(),
        echoed: Vec::new(),
        error: None,
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
    let start = Instant::now();
    let mut buf = vec![0u8; 65_536];
    let mut read = |s: &mut TcpStream, b: &mut Busy| -> bool {
        match s.read(&mut buf) {
            Ok(0) => {
                b.error
                    .get_or_insert_with(|| "the server closed the flow".to_owned());
                false
            }
            Ok(n) => {
                b.echoed.extend_from_slice(&buf[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                true
            }
            Err(e) => {
                b.error.get_or_insert_with(|| format!("read: {e}"));
                false
            }
        }
    };
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) && i < MAX_CHUNKS && start.elapsed() < MAX_RUN {
        let chunk: Vec<u8> = (0..CHUNK)
            .map(|k| b'a' + ((i * 7 + k) % 26) as u8)
            .collect();
        if let Err(e) = s.write_all(&chunk) {
            b.error = Some(format!("write: {e}"));
            return b;
        }
        b.sent.extend_from_slice(&chunk);
        if !read(&mut s, &mut b) {
            return b;
        }
        thread::sleep(PAUSE);
        i += 1;
    }
    let deadline = Instant::now() + EXPECT;
    while b.echoed.len() < b.sent.len() && Instant::now() < deadline {
        if !read(&mut s, &mut b) {
            break;
        }
    }
    b
}

/// Polls `imfw status` until `field` reaches `want` or [`EXPECT`] passes.
fn wait_status(lab: &Lab, field: &str, want: u64) -> bool {
    let deadline = Instant::now() + EXPECT;
    while Instant::now() < deadline {
        if lab
            .imfw()
            .status()
            .is_ok_and(|v| v[field].as_u64() == Some(want))
        {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

fn connect(lab: &Lab, port: u16) -> TcpStream {
    let s = lab
        .client_connect(
            SocketAddr::new(SERVER4.into(), port),
            servers::CONNECT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Whether the server received nothing from the connection whose client end is `s`.
fn server_got(server: &TcpServer, s: &TcpStream, port: u16) -> usize {
    let local = servers::canonical(s.local_addr().expect("local address"));
    server.received_from(local, port).map_or(0, |r| r.total)
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario through the lab: each step needs the state the steps before it left")]
fn a_reload_under_traffic_switches_verdicts_and_loses_no_allowed_byte() {
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
    let mut lab = Lab::new().expect("lab");
    let server = TcpServer::start(&lab.server, &[IRC_PORT, MQTT_PORT]).expect("servers");
    if let Err(e) = lab.start_imfw("version: 1\napps: {irc: allow, mqtt: allow}\n") {
        panic!("{e:#}");
    }
    let status = lab.imfw().status().expect("status");
    assert_eq!(status["policy_version"].as_u64(), Some(1), "{status}");
    let hash_a = status["policy_hash"].clone();

    // The allowed flow: IRC, decided by its registration, then kept busy.
    let mut irc = connect(&lab, IRC_PORT);
    irc.write_all(&protocols::irc_registration("alice"))
        .expect("register");
    assert!(
        !servers::read_some(&mut irc, EXPECT).is_empty(),
        "IRC is allowed\n{}",
        lab.imfw_log_tail()
    );
    // An MQTT flow decided while MQTT is allowed.
    let mut mqtt_before = connect(&lab, MQTT_PORT);
    mqtt_before
        .write_all(&protocols::mqtt_connect(4, "before"))
        .expect("connect");
    assert!(
        !servers::read_some(&mut mqtt_before, EXPECT).is_empty(),
        "MQTT is allowed before the reload"
    );
    let got_before = server_got(&server, &mqtt_before, MQTT_PORT);

    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || keep_busy(irc, &stop))
    };
    thread::sleep(Duration::from_millis(500));

    // A good policy: MQTT is dropped from now on, for new and decided flows.
    let file = lab.imfw().policy_path().to_path_buf();
    fs::write(&file, "version: 1\napps: {irc: allow, mqtt: drop}\n").expect("write policy B");
    lab.imfw().hangup().expect("SIGHUP");
    assert!(
        wait_status(&lab, "reloads", 1),
        "the good reload did not take\n{}",
        lab.imfw_log_tail()
    );
    let status = lab.imfw().status().expect("status");
    assert_eq!(status["policy_version"].as_u64(), Some(2), "{status}");
    assert_ne!(status["policy_hash"], hash_a);
    assert!(
        lab.imfw_log_tail().contains("1 changed verdict"),
        "the decided MQTT flow was re-evaluated\n{}",
        lab.imfw_log_tail()
    );

    let mut mqtt_after = connect(&lab, MQTT_PORT);
    mqtt_after
        .write_all(&protocols::mqtt_connect(4, "after"))
        .expect("connect");
    assert!(
        servers::read_some(&mut mqtt_after, NEVER).is_empty(),
        "a new MQTT flow got through\n{}",
        lab.imfw_log_tail()
    );
    assert_eq!(
        server_got(&server, &mqtt_after, MQTT_PORT),
        0,
        "the server received the blocked CONNECT"
    );
    mqtt_before
        .write_all(b"\x30\x07\x00\x01tdata")
        .expect("publish");
    assert!(
        servers::read_some(&mut mqtt_before, NEVER).is_empty(),
        "the decided MQTT flow was not re-evaluated"
    );
    assert_eq!(
        server_got(&server, &mqtt_before, MQTT_PORT),
        got_before,
        "a publish crossed after the reload"
    );

    // A bad policy: refused, counted, nothing changes.
    fs::write(&file, "version: 1\napps: {irc: allow, mqtt: alow}\n").expect("write a bad policy");
    lab.imfw().hangup().expect("SIGHUP");
    assert!(
        wait_status(&lab, "reloads_failed", 1),
        "the bad reload was not counted\n{}",
        lab.imfw_log_tail()
    );
    let status = lab.imfw().status().expect("status");
    assert_eq!(status["policy_version"].as_u64(), Some(2), "{status}");
    assert_eq!(status["reloads"].as_u64(), Some(1), "{status}");
    let mut mqtt_late = connect(&lab, MQTT_PORT);
    mqtt_late
        .write_all(&protocols::mqtt_connect(4, "late"))
        .expect("connect");
    assert!(
        servers::read_some(&mut mqtt_late, NEVER).is_empty(),
        "the bad file let MQTT through\n{}",
        lab.imfw_log_tail()
    );

    // The busy flow went on through both reloads: every byte delivered, echoed, no reset.
    stop.store(true, Ordering::Relaxed);
    let b = busy.join().expect("the busy client");
    assert_eq!(
        b.error,
        None,
        "the allowed flow broke\n{}",
        lab.imfw_log_tail()
    );
    assert!(
        b.sent.len() >= 100 * CHUNK,
        "too little traffic to say anything: {} bytes",
        b.sent.len()
    );
    assert_eq!(
        b.echoed.len(),
        b.sent.len(),
        "echo incomplete\n{}",
        lab.imfw_log_tail()
    );
    assert!(b.echoed == b.sent, "the echo differs from what was sent");
    let counters = lab.imfw().stats().expect("stats");
    assert!(
        counters.counter(Some("mqtt"), "drop").packets >= 2,
        "MQTT drops not counted: {:?}",
        counters.0
    );
    assert_eq!(
        counters.counter(Some("irc"), "drop").packets,
        0,
        "an IRC packet was dropped"
    );
    drop((mqtt_before, mqtt_after, mqtt_late));
    let exit = lab.stop_imfw().expect("stop imfw");
    assert!(exit.success(), "imfw exited with {exit}");
}
