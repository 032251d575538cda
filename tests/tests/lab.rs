//! The lab on its own, without imfw: namespaces clean up, traffic crosses the gateway in
//! both families, the servers and clients do what the end-to-end tests rely on, and frames
//! sent to the recording host are captured there. Needs root.
use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    time::Duration,
};

use imfw_tests::{
    capture::{self, Capture},
    lab::{self, Lab},
    netns::{self, Netns},
    protocols,
    scenario::{run_cases, Case},
    servers::{self, TcpServer, UdpSink},
    util::{require_root, Rng},
};

fn root() {
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
}

fn ns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

#[test]
fn netns_guard_removes_the_namespace_even_on_panic() {
    root();
    let ns = Netns::with_role("t").unwrap();
    let name = ns.name().to_string();
    assert!(ns_exists(&name));
    // Inside, only the namespace's own loopback exists: a lab address cannot be bound.
    let bind = ns
        .enter_with(|| UdpSocket::bind("192.0.2.2:0").is_err())
        .unwrap();
    assert!(bind, "192.0.2.2 is not configured in a fresh namespace");
    drop(ns);
    assert!(!ns_exists(&name), "{name} removed on drop");

    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let ns = Netns::with_role("p").unwrap();
        tx.send(ns.name().to_string()).unwrap();
        panic!("on purpose");
    })
    .join();
    assert!(r.is_err());
    let name = rx.recv().unwrap();
    assert!(!ns_exists(&name), "{name} removed while unwinding");
}

#[test]
fn in_netns_runs_inside_and_propagates_errors() {
    root();
    let ns = Netns::with_role("t").unwrap();
    ns.ip(&["addr", "add", "192.0.2.77/32", "dev", "lo"])
        .unwrap();
    assert!(ns
        .enter_with(|| UdpSocket::bind("192.0.2.77:0").is_ok())
        .unwrap());
    assert!(
        UdpSocket::bind("192.0.2.77:0").is_err(),
        "the caller's namespace is unchanged"
    );
    assert!(netns::in_netns("imfw-no-such-namespace", || ()).is_err());
}

#[test]
fn traffic_crosses_the_gateway_without_imfw() {
    root();
    let lab = Lab::new().unwrap();
    let server = TcpServer::start(&lab.server, &[80, 5222, 1883]).unwrap();
    let wait = Duration::from_secs(3);

    for v6 in [false, true] {
        let ip = Lab::server_ip(v6);
        let hello = protocols::xmpp_stream_header("example.net");
        let x = servers::exchange(
            &lab.client,
            SocketAddr::new(ip, 5222),
            std::slice::from_ref(&hello),
            wait,
        )
        .unwrap();
        assert!(
            x.reply
                .starts_with(b"<?xml version='1.0'?><stream:stream from="),
            "v6={v6}: {:?}",
            String::from_utf8_lossy(&x.reply)
        );
        let rec = server.received(&x).expect("server accepted");
        assert_eq!(rec.total, hello.len());
        assert_eq!(rec.head, hello);
        assert_eq!(rec.local_port, 5222);
        let expected_client = if v6 {
            lab::CLIENT6.to_string()
        } else {
            lab::CLIENT4.to_string()
        };
        assert_eq!(
            x.local.ip().to_string(),
            expected_client,
            "no NAT on the way"
        );

        let m = servers::exchange(
            &lab.client,
            SocketAddr::new(ip, 1883),
            &[protocols::mqtt_connect(5, "c")],
            wait,
        )
        .unwrap();
        assert_eq!(m.reply, protocols::mqtt_connack(5));

        let d = servers::http_download(
            &lab.client,
            SocketAddr::new(ip, 80),
            "www.example.com",
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(d.status_line, "HTTP/1.1 200 OK");
        assert_eq!(d.content_length, Some(servers::HTTP_BODY_LEN));
        assert_eq!(d.body.len(), servers::HTTP_BODY_LEN);
        assert_eq!(d.sha256(), servers::http_body_sha256());
    }

    // Segments written apart arrive in order, a TLS record is answered once complete.
    let mut ch = protocols::ClientHello::new("www.example.com");
    ch.post_quantum = true;
    let rec = ch.build();
    let (a, b) = rec.split_at(100);
    let x = servers::exchange(
        &lab.client,
        SocketAddr::new(Lab::server_ip(false), 80),
        &[a.to_vec(), b.to_vec()],
        wait,
    )
    .unwrap();
    assert_eq!(x.reply.first(), Some(&0x16), "ServerHello");
    assert_eq!(server.received(&x).unwrap().head, rec);
}

/// Without a firewall every opener gets its server's answer: the baseline that makes
/// "blocked" in the end-to-end tests mean something.
#[test]
fn every_opener_is_answered_without_imfw() {
    root();
    let lab = Lab::new().unwrap();
    let server = TcpServer::start(&lab.server, &[443, 1883, 5222, 6667, 8080]).unwrap();
    let openers = protocols::im_openers(&mut Rng::new(5));
    let mut cases: Vec<Case> = openers
        .iter()
        .flat_map(|o| {
            [
                Case::from_opener(o, o.own_port, false),
                Case::from_opener(o, o.own_port, true),
            ]
        })
        .collect();
    cases.push(Case::other(
        "ssh banner",
        b"SSH-2.0-OpenSSH_9.2p1\r\n".to_vec(),
        443,
        false,
    ));
    let obs = run_cases(&lab.client, &server, cases, Duration::from_secs(3));
    let bad: Vec<String> = obs
        .iter()
        .filter_map(imfw_tests::scenario::Observed::problem_if_should_pass)
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(obs.iter().all(|o| o.word() == "delivered"));
    // A WhatsApp preamble alone gets no answer: a blocked hello cannot look delivered.
    let x = servers::exchange(
        &lab.client,
        SocketAddr::new(Lab::server_ip(false), 5222),
        &[b"ED\x00\x01".to_vec()],
        Duration::from_millis(500),
    )
    .unwrap();
    assert!(x.reply.is_empty());
    assert_eq!(server.received(&x).map(|r| r.total), Some(4));
}

#[test]
fn udp_counts_are_exact_and_the_recorder_captures() {
    root();
    let lab = Lab::new().unwrap();
    let sink = UdpSink::start(&lab.server, 3478).unwrap();
    let payloads: Vec<Vec<u8>> = (0..25u8).map(|i| vec![i; 100]).collect();
    let local = servers::udp_send(
        &lab.client,
        SocketAddr::new(Lab::server_ip(true), 3478),
        &payloads,
    )
    .unwrap();
    let mut got = (0, 0);
    for _ in 0..100 {
        got = sink.received_from(local);
        if got.0 == payloads.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(got, (25, 2500));

    // The gateway sends to the recording host; the capture there sees the payload.
    let cap = Capture::start(&lab.rec, lab::HOST_IF).unwrap();
    let marker = b"imfw-lab-capture-marker".to_vec();
    let m = marker.clone();
    lab.gw
        .enter_with(move || {
            let s = UdpSocket::bind("203.0.113.1:0").unwrap();
            for _ in 0..3 {
                s.send_to(&m, "203.0.113.2:9").unwrap();
            }
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let frames = cap.finish();
    let hits = frames
        .iter()
        .filter(|f| capture::contains(f, &marker))
        .count();
    assert_eq!(hits, 3, "{} frames captured", frames.len());
}

#[test]
fn lab_is_removed_on_drop() {
    root();
    let lab = Lab::new().unwrap();
    let names: Vec<String> = [&lab.client, &lab.gw, &lab.server, &lab.rec]
        .iter()
        .map(|n| n.name().to_string())
        .collect();
    assert!(names.iter().all(|n| ns_exists(n)));
    assert_eq!(
        lab.gw
            .ip(&["-o", "link", "show", "dev", &lab.gw_rec])
            .map(|s| s.contains("UP"))
            .ok(),
        Some(true)
    );
    let gro = lab.rec.run(&["ethtool", "-k", lab::HOST_IF]).unwrap();
    assert!(
        gro.contains("generic-receive-offload: on"),
        "NAPI on the recorder's veth:\n{gro}"
    );
    let tso = lab.client.run(&["ethtool", "-k", lab::HOST_IF]).unwrap();
    assert!(tso.contains("tcp-segmentation-offload: off"), "{tso}");
    drop(lab);
    for n in &names {
        assert!(!ns_exists(n), "{n} removed");
    }
}
