//! End-to-end: the real `imfw` binary on the lab gateway, real clients and servers on either
//! side. Needs root and the release binary (`cargo xtask test` builds it; `IMFW_BIN`
//! overrides its path).
use std::{collections::BTreeSet, fs, net::SocketAddr, time::Duration};

use imfw_common::verdict::Counter;
use imfw_tests::{
    capture::{self, Capture},
    imfw_proc::{delta, ImfwProc, Stats},
    lab::{self, Lab, CLIENT_NET4, CLIENT_NET6, GW_REC_IF},
    netns::Netns,
    protocols::{self, ClientHello, Opener},
    scenario::{run_cases, Case, Observed},
    servers::{self, TcpServer, UdpSink},
    util::{output_within, require_root, Rng, TempDir},
};

/// How long a client waits for a reply that a blocked flow must never get.
const WAIT: Duration = Duration::from_secs(2);
/// Ports the lab server listens on besides a random high one: web, XMPP/WhatsApp/Telegram,
/// IRC, MQTT, a proxy.
const PORTS: [u16; 6] = [80, 443, 5222, 6667, 1883, 8080];
/// Every IM app the lab sends, blocked.
const BLOCK_ALL: &str = "whatsapp: drop, telegram: drop, xmpp: drop, irc: drop, mqtt: drop, signal: drop, discord: drop";

fn root() {
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
}

fn policy(apps: &str, rest: &str) -> String {
    format!(
        "version: 1\ndefaults: {{action: allow, unclassified: allow, redirect_to: {GW_REC_IF}}}\napps: {{{apps}}}\n{rest}"
    )
}

/// A port above the well-known ones, different in every run.
fn high_port() -> u16 {
    let mut rng = Rng::from_time();
    loop {
        let p = rng.range(20_000, 60_000) as u16;
        if !PORTS.contains(&p) {
            return p;
        }
    }
}

/// The lab with the server listening and imfw running `policy`.
fn lab_with(policy: &str, high: u16) -> (Lab, TcpServer) {
    root();
    let mut lab = Lab::new().expect("lab");
    let mut ports = PORTS.to_vec();
    ports.push(high);
    let server = TcpServer::start(&lab.server, &ports).expect("server");
    if let Err(e) = lab.start_imfw(policy) {
        panic!("{e:#}");
    }
    (lab, server)
}

fn stats(lab: &Lab) -> Stats {
    lab.imfw()
        .stats()
        .unwrap_or_else(|e| panic!("imfw stats: {e:#}\nlog:\n{}", lab.imfw_log_tail()))
}

/// Panics listing every problem, with imfw's counters and log, when there is any.
fn report(lab: &Lab, what: &str, problems: &[String]) {
    if problems.is_empty() {
        return;
    }
    let st = lab
        .imfw()
        .stats()
        .map_or_else(|e| format!("{e:#}"), |s| s.0.to_string());
    panic!(
        "{what}: {} problem(s):\n  {}\nimfw stats: {st}\nimfw log:\n{}",
        problems.len(),
        problems.join("\n  "),
        lab.imfw_log_tail()
    );
}

fn must_block(obs: &[Observed]) -> Vec<String> {
    obs.iter()
        .filter_map(Observed::problem_if_should_block)
        .collect()
}

fn must_pass(obs: &[Observed]) -> Vec<String> {
    obs.iter()
        .filter_map(Observed::problem_if_should_pass)
        .collect()
}

/// Each opener on 80, 443, its own port and `high`, over IPv4; and on its own port and
/// `high` over IPv6.
fn cases_on_ports(openers: &[Opener], high: u16) -> Vec<Case> {
    let mut cases = Vec::new();
    for o in openers {
        let v4: BTreeSet<u16> = [80, 443, o.own_port, high].into();
        cases.extend(v4.into_iter().map(|p| Case::from_opener(o, p, false)));
        let v6: BTreeSet<u16> = [o.own_port, high].into();
        cases.extend(v6.into_iter().map(|p| Case::from_opener(o, p, true)));
    }
    cases
}

fn tls(sni: &str, seed: u64) -> Vec<u8> {
    let mut ch = ClientHello::new(sni);
    ch.seed = seed;
    ch.build()
}

/// Non-IM traffic that must keep working: TLS to a web site, an SSH banner, an HTTP GET.
fn web_cases(high: u16) -> Vec<Case> {
    let mut cases = Vec::new();
    for v6 in [false, true] {
        cases.push(Case::other(
            "tls www.example.com",
            tls("www.example.com", 11),
            443,
            v6,
        ));
        cases.push(Case::other(
            "tls www.example.com",
            tls("www.example.com", 12),
            high,
            v6,
        ));
        cases.push(Case::other(
            "ssh banner",
            b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n".to_vec(),
            high,
            v6,
        ));
    }
    cases
}

fn download_problems(lab: &Lab, ports: &[u16]) -> Vec<String> {
    let mut problems = Vec::new();
    for v6 in [false, true] {
        for &port in ports {
            let dst = SocketAddr::new(Lab::server_ip(v6), port);
            match servers::http_download(
                &lab.client,
                dst,
                "www.example.com",
                Duration::from_secs(20),
            ) {
                Ok(d)
                    if d.status_line == "HTTP/1.1 200 OK"
                        && d.sha256() == servers::http_body_sha256() => {}
                Ok(d) => problems.push(format!(
                    "download from {dst}: status {:?}, {} body bytes, SHA-256 {}",
                    d.status_line,
                    d.body.len(),
                    if d.sha256() == servers::http_body_sha256() {
                        "matches"
                    } else {
                        "differs"
                    }
                )),
                Err(e) => problems.push(format!("download from {dst}: {e:#}")),
            }
        }
    }
    problems
}

#[test]
fn blocks_im_openers_on_every_port_and_keeps_the_web_working() {
    let high = high_port();
    let (lab, server) = lab_with(&policy(BLOCK_ALL, ""), high);

    // Attached in native mode on both sides.
    for ifname in [&lab.gw_lan, &lab.gw_wan] {
        let link = lab.gw.ip(&["-d", "link", "show", "dev", ifname]).unwrap();
        assert!(
            link.contains(" xdp ") || link.contains("prog/xdp"),
            "{ifname}: no XDP program:\n{link}"
        );
        assert!(
            !link.contains("xdpgeneric"),
            "{ifname}: generic mode, not native:\n{link}"
        );
    }

    let openers = protocols::im_openers(&mut Rng::new(42));
    let mut cases = cases_on_ports(&openers, high);
    let n_im = cases.len();
    cases.extend(web_cases(high));
    let obs = run_cases(&lab.client, &server, cases, WAIT);
    let (im, web) = obs.split_at(n_im);
    let mut problems = must_block(im);
    problems.extend(must_pass(web));
    problems.extend(download_problems(&lab, &[80, high]));
    report(&lab, "IM blocked, web delivered", &problems);

    // The blocked payloads never reached the server at all.
    for o in &openers {
        let tail = &o.bytes()[o.preamble_len..];
        let probe = &tail[..tail.len().min(24)];
        assert!(
            !server.saw(probe),
            "{}: the server received the opener",
            o.label
        );
    }
}

#[test]
fn a_source_network_rule_allows_whatsapp_for_the_client_network() {
    let high = high_port();
    let rules = format!(
        "rules:\n  - name: lab-may-whatsapp\n    from: [{CLIENT_NET4}, {CLIENT_NET6}]\n    apps: [whatsapp]\n    action: allow\n  \
         - name: elsewhere-may-telegram\n    from: [198.51.100.0/24]\n    apps: [telegram]\n    action: allow\n"
    );
    let (lab, server) = lab_with(&policy(BLOCK_ALL, &rules), high);
    let openers = protocols::im_openers(&mut Rng::new(43));
    let (wa, tg): (Vec<Opener>, Vec<Opener>) = openers
        .into_iter()
        .filter(|o| matches!(o.app, "whatsapp" | "telegram"))
        .partition(|o| o.app == "whatsapp");
    let mut cases = Vec::new();
    for o in &wa {
        for v6 in [false, true] {
            cases.push(Case::from_opener(o, o.own_port, v6));
            cases.push(Case::from_opener(o, high, v6));
        }
    }
    let n_wa = cases.len();
    cases.extend(tg.iter().map(|o| Case::from_opener(o, o.own_port, false)));
    let obs = run_cases(&lab.client, &server, cases, WAIT);
    let (wa_obs, tg_obs) = obs.split_at(n_wa);
    let mut problems = must_pass(wa_obs);
    // The rule for another network must not apply to the client.
    problems.extend(must_block(tg_obs));
    report(&lab, "rule by source network", &problems);

    let s = stats(&lab);
    assert!(
        s.counter(Some("whatsapp"), "allow").packets > 0,
        "whatsapp/allow counted: {}",
        s.0
    );
    assert_eq!(
        s.counter(Some("whatsapp"), "drop"),
        Counter::default(),
        "no whatsapp drops: {}",
        s.0
    );
}

/// A case from raw bytes to the lab server over IPv4.
fn case4(app: &'static str, label: &str, port: u16, bytes: &[u8]) -> Case {
    Case {
        app: Some(app),
        label: label.into(),
        dst: SocketAddr::new(Lab::server_ip(false), port),
        segments: vec![bytes.to_vec()],
        preamble_len: 0,
    }
}

/// Problems unless each payload is in some captured frame, and every such frame is the
/// client's own (client and server addresses intact).
fn capture_problems(frames: &[Vec<u8>], payloads: &[(&str, &[u8])]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, payload) in payloads {
        let hits: Vec<&Vec<u8>> = frames
            .iter()
            .filter(|f| capture::contains(f, payload))
            .collect();
        if hits.is_empty() {
            problems.push(format!(
                "{name}: payload not captured on the recorder ({} frames there)",
                frames.len()
            ));
        }
        for f in hits {
            if !capture::contains(f, &lab::CLIENT4.octets())
                || !capture::contains(f, &lab::SERVER4.octets())
            {
                problems.push(format!(
                    "{name}: captured frame lacks the client/server addresses: {f:02x?}"
                ));
            }
        }
    }
    problems
}

#[test]
fn a_redirected_flow_reaches_the_recorder_and_not_the_server() {
    let high = high_port();
    let apps =
        format!("irc: redirect, mqtt: {{action: redirect, to: {GW_REC_IF}}}, whatsapp: drop");
    let (mut lab, server) = lab_with(&policy(&apps, ""), high);
    let cap = Capture::start(&lab.rec, lab::HOST_IF).expect("capture");
    let irc = protocols::irc_registration("redirected7");
    let mqtt = protocols::mqtt_connect(4, "redirected-sensor");
    let cases = vec![
        case4("irc", "irc registration", 6667, &irc),
        case4("mqtt", "mqtt connect", high, &mqtt),
    ];
    let obs = run_cases(&lab.client, &server, cases, WAIT);
    let mut problems = must_block(&obs);
    let web = vec![Case::other(
        "tls www.example.com",
        tls("www.example.com", 3),
        443,
        false,
    )];
    problems.extend(must_pass(&run_cases(&lab.client, &server, web, WAIT)));
    problems.extend(capture_problems(
        &cap.finish(),
        &[("irc", &irc), ("mqtt", &mqtt)],
    ));
    report(&lab, "redirect", &problems);

    let s = stats(&lab);
    assert!(
        s.counter(Some("irc"), "redirect").packets >= 1,
        "irc/redirect counted: {}",
        s.0
    );
    assert!(
        s.counter(Some("mqtt"), "redirect").packets >= 1,
        "mqtt/redirect counted: {}",
        s.0
    );
    assert_eq!(s.drops("redirect_failed"), Counter::default(), "{}", s.0);

    // SIGTERM: exits 0 and detaches, after which IRC goes through again.
    let st = lab.stop_imfw().expect("stop imfw");
    assert!(st.success(), "imfw exited with {st}");
    for ifname in [&lab.gw_lan, &lab.gw_wan] {
        let link = lab.gw.ip(&["-d", "link", "show", "dev", ifname]).unwrap();
        assert!(
            !link.contains("prog/xdp") && !link.contains(" xdp"),
            "{ifname} still has XDP after exit:\n{link}"
        );
    }
    let after = run_cases(
        &lab.client,
        &server,
        vec![case4("irc", "irc after exit", 6667, &irc)],
        WAIT,
    );
    assert!(after[0].delivered(), "after imfw exited: {:?}", after[0]);
}

/// Frame length of a UDP datagram with `payload` bytes, as XDP counts it.
fn udp_frame_len(payload: usize, v6: bool) -> u64 {
    (14 + if v6 { 40 } else { 20 } + 8 + payload) as u64
}

/// Sends the custom app's datagrams (20 over IPv4, 7 over IPv6, one flow each) to the UDP
/// sink on port 4000. Returns the counter they must add and the flows' client addresses.
fn send_labchat_udp(lab: &Lab) -> (Counter, Vec<SocketAddr>) {
    let mut expected = Counter::default();
    let mut locals = Vec::new();
    for (v6, n, size) in [(false, 20usize, 100usize), (true, 7, 300)] {
        let payloads: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let mut p = b"LABCHAT1".to_vec();
                p.resize(size, i as u8);
                p
            })
            .collect();
        let dst = SocketAddr::new(Lab::server_ip(v6), 4000);
        locals.push(servers::udp_send(&lab.client, dst, &payloads).unwrap());
        expected.packets += n as u64;
        expected.bytes += n as u64 * udp_frame_len(size, v6);
    }
    (expected, locals)
}

/// `n` whatsapp web handshakes (prologue 6.3) to port 5222, each its own flow.
fn whatsapp_flows(n: u64) -> Vec<Case> {
    (0..n)
        .map(|i| {
            let o = protocols::Opener {
                app: "whatsapp",
                label: format!("noise WA6.3 #{i}"),
                own_port: 5222,
                segments: protocols::whatsapp_handshake(
                    protocols::WaPrologue::V6_3,
                    protocols::WaStart::Plain,
                    &mut Rng::new(i),
                ),
                preamble_len: 0,
            };
            Case::from_opener(&o, 5222, false)
        })
        .collect()
}

/// Unclassified traffic, allowed or still being inspected.
fn unclassified(s: &Stats) -> Counter {
    let a = s.counter(None, "allow");
    let p = s.counter(None, "pending");
    Counter {
        packets: a.packets + p.packets,
        bytes: a.bytes + p.bytes,
    }
}

#[test]
fn counters_match_the_traffic_sent() {
    let high = high_port();
    // A custom app recognised by its first bytes, so UDP flows are decided on their first
    // datagram and every datagram is counted exactly.
    let catalogue = "catalogue:\n  labchat:\n    description: \"lab test app\"\n    signatures:\n      - name: labchat-hello\n        direction: client\n        offset: 0\n        bytes: \"4c 41 42 43 48 41 54 31\"\n";
    let (lab, server) = lab_with(&policy("labchat: drop, whatsapp: drop", catalogue), high);
    let sink = UdpSink::start(&lab.server, 4000).expect("udp sink");

    let before = stats(&lab);
    let (expected, locals) = send_labchat_udp(&lab);
    // A UDP flow of another app-less kind passes and is counted as unclassified.
    let other_local = servers::udp_send(
        &lab.client,
        SocketAddr::new(Lab::server_ip(false), 4000),
        &vec![b"hello, plain UDP".to_vec(); 5],
    )
    .unwrap();

    // N WhatsApp TCP flows: each dropped at its first payload packet (and its retransmits).
    let wa = whatsapp_flows(5);
    let obs = run_cases(&lab.client, &server, wa, WAIT);
    let mut problems = must_block(&obs);
    problems.extend(download_problems(&lab, &[80]));
    report(&lab, "counters traffic", &problems);
    // Give the other UDP flow time to arrive.
    for _ in 0..50 {
        if sink.received_from(other_local).0 == 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = stats(&lab);

    let got = delta(
        before.counter(Some("labchat"), "drop"),
        after.counter(Some("labchat"), "drop"),
    );
    assert_eq!(
        got, expected,
        "labchat/drop: every datagram, with its frame length\n{}",
        after.0
    );
    for l in &locals {
        assert_eq!(
            sink.received_from(*l),
            (0, 0),
            "a dropped datagram from {l} reached the server"
        );
    }
    assert_eq!(
        sink.received_from(other_local),
        (5, 5 * 16),
        "plain UDP delivered"
    );
    let wa_drop = delta(
        before.counter(Some("whatsapp"), "drop"),
        after.counter(Some("whatsapp"), "drop"),
    );
    assert!(
        wa_drop.packets >= 5,
        "whatsapp/drop: at least one payload packet per flow: {wa_drop:?}\n{}",
        after.0
    );
    let policy_drops = delta(before.drops("policy"), after.drops("policy"));
    assert!(
        policy_drops.packets >= expected.packets + wa_drop.packets,
        "drops.policy counts every policy drop: {policy_drops:?}\n{}",
        after.0
    );
    // Web traffic is unclassified and allowed: the 1 MiB body crossed the WAN side.
    let web_delta = delta(unclassified(&before), unclassified(&after));
    assert!(
        web_delta.bytes >= servers::HTTP_BODY_LEN as u64,
        "unclassified allow+pending bytes {web_delta:?}\n{}",
        after.0
    );
    assert!(
        delta(before.counter(None, "allow"), after.counter(None, "allow")).packets > 0,
        "unclassified/allow grew\n{}",
        after.0
    );
    assert!(after.stat("packets") > before.stat("packets"));
}

#[test]
fn run_refuses_a_missing_interface() {
    root();
    let bin = ImfwProc::bin();
    ImfwProc::require_bin(&bin).unwrap();
    let ns = Netns::with_role("noif").unwrap();
    let dir = TempDir::new("imfw-e2e").unwrap();
    let pol = dir.path().join("policy.yaml");
    fs::write(&pol, policy(BLOCK_ALL, "")).unwrap();
    // The redirect target exists, the attach interface does not.
    ns.ip(&[
        "link",
        "add",
        GW_REC_IF,
        "type",
        "veth",
        "peer",
        "name",
        "imfw-rec1",
    ])
    .unwrap();
    let out = output_within(
        ns.command(&bin.to_string_lossy())
            .arg("run")
            .arg("--policy")
            .arg(&pol)
            .arg("--iface")
            .arg("imfw-nosuch0")
            .arg("--control")
            .arg(dir.path().join("control.sock")),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_ne!(
        out.code(),
        0,
        "imfw run on a missing interface must fail:\n{}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("imfw-nosuch0"),
        "the message names the interface:\n{}",
        out.stderr
    );
}

#[test]
fn check_points_at_the_error() {
    root();
    let bin = ImfwProc::bin();
    ImfwProc::require_bin(&bin).unwrap();
    let dir = TempDir::new("imfw-e2e").unwrap();
    let good = dir.path().join("good.yaml");
    fs::write(&good, policy(BLOCK_ALL, "")).unwrap();
    let out = output_within(
        std::process::Command::new(&bin)
            .arg("check")
            .arg("--policy")
            .arg(&good),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(
        out.code(),
        0,
        "a valid policy passes:\n{}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("IPv4 range table: ") && out.stdout.contains("with a sub-index"),
        "a valid policy's summary gives its range table's shape:\n{}",
        out.stdout
    );

    // Line 4, column 16: an action that does not exist.
    let bad = dir.path().join("bad.yaml");
    fs::write(
        &bad,
        "version: 1\ndefaults: {action: allow}\napps:\n  whatsapp: dropp\n",
    )
    .unwrap();
    let out = output_within(
        std::process::Command::new(&bin)
            .arg("check")
            .arg("--policy")
            .arg(&bad),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(
        out.code(),
        2,
        "an invalid policy exits 2:\n{}{}",
        out.stdout,
        out.stderr
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    let prefix = format!("{}:4:", bad.display());
    let line = text.lines().find(|l| l.starts_with(&prefix));
    let col_ok = line
        .and_then(|l| l[prefix.len()..].split(':').next())
        .is_some_and(|c| c.parse::<u32>().is_ok());
    assert!(col_ok, "an error line `{prefix}COL: ...`:\n{text}");
}
