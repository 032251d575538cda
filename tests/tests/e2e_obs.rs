//! End-to-end observability: `imfw flows`, `imfw status` and the Prometheus endpoint of the
//! real binary on the lab gateway, with real flows through it. Needs root and the release
//! binary (`cargo xtask test` builds it; `IMFW_BIN` overrides its path).
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use imfw_tests::{
    lab::Lab,
    protocols::{self, http_get},
    scenario::{run_cases, Case, Observed},
    servers::TcpServer,
    util::{require_root, Rng},
};
use serde_json::Value;

/// How long a client waits for a reply that a blocked flow must never get.
const WAIT: Duration = Duration::from_secs(2);
/// How long counters and the flow-table count may take to show what happened (the count
/// is refreshed every 10 s).
const EXPECT: Duration = Duration::from_secs(25);
/// The endpoint, on the gateway namespace's own loopback: no other test can hold it.
const METRICS: &str = "127.0.0.1:9464";

/// One HTTP/1.1 exchange with the endpoint from inside the gateway namespace: status line
/// and body.
fn http(lab: &Lab, request: &str) -> (String, String) {
    let request = request.to_owned();
    let reply = lab
        .gw
        .enter_with(move || -> std::io::Result<String> {
            let addr: SocketAddr = METRICS.parse().map_err(std::io::Error::other)?;
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(request.as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .expect("entering the gateway namespace")
        .unwrap_or_else(|e| panic!("HTTP to {METRICS}: {e}\nlog:\n{}", lab.imfw_log_tail()));
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    assert!(
        head.contains("\r\nContent-Length: ") && head.contains("\r\nConnection: close"),
        "{head}"
    );
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// `GET /metrics`, as sample -> value.
fn scrape(lab: &Lab) -> BTreeMap<String, f64> {
    let (status, body) = http(lab, "GET /metrics HTTP/1.1\r\nHost: imfw\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, v) = l.rsplit_once(' ').unwrap_or((l, ""));
            let v = v
                .parse()
                .unwrap_or_else(|_| panic!("bad sample value: {l}"));
            (name.to_owned(), v)
        })
        .collect()
}

fn sample(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

fn port_of(o: &Observed) -> u16 {
    o.local
        .unwrap_or_else(|| panic!("{}: no connection ({:?})", o.case.label, o.error))
        .port()
}

/// The rows of a flows reply.
fn rows(v: &Value) -> &Vec<Value> {
    v["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("no flows in {v}"))
}

#[test]
#[expect(
    clippy::too_many_lines,
    clippy::float_cmp,
    reason = "one scenario through the lab; Prometheus samples are whole numbers, exact in f64"
)]
fn flows_status_and_prometheus_show_real_traffic() {
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
    let mut lab = Lab::new().expect("lab");
    let server = TcpServer::start(&lab.server, &[80, 443]).expect("server");
    let policy = format!(
        "version: 1\napps: {{whatsapp: drop}}\nobservability: {{prometheus: \"{METRICS}\"}}\n"
    );
    if let Err(e) = lab.start_imfw(&policy) {
        panic!("{e:#}");
    }
    let before = scrape(&lab);
    assert_eq!(sample(&before, "imfw_flow_table_capacity"), 262_144.0);
    assert_eq!(
        sample(&before, "imfw_policy_reloads_total{result=\"refused\"}"),
        0.0
    );

    let wa = protocols::im_openers(&mut Rng::new(7))
        .into_iter()
        .find(|o| o.app == "whatsapp" && o.label.starts_with("tls "))
        .expect("a WhatsApp TLS opener");
    let cases = vec![
        Case::from_opener(&wa, 443, false),
        Case::other("web", http_get("www.example.org", "/"), 80, false),
    ];
    let obs = run_cases(&lab.client, &server, cases, WAIT);
    assert!(obs[0].blocked(), "whatsapp was not blocked: {:?}", obs[0]);
    assert!(obs[1].delivered(), "web was not delivered: {:?}", obs[1]);
    let (wa_port, web_port) = (port_of(&obs[0]), port_of(&obs[1]));

    // The counters move with the traffic, and the flow table's count follows within its
    // refresh period.
    let wa_drop = "imfw_packets_total{app=\"whatsapp\",verdict=\"drop\"}";
    let web_allow = "imfw_packets_total{app=\"none\",verdict=\"allow\"}";
    let policy_drops = "imfw_dropped_packets_total{reason=\"policy\"}";
    let deadline = Instant::now() + EXPECT;
    let after = loop {
        let m = scrape(&lab);
        let moved = sample(&m, wa_drop) > sample(&before, wa_drop)
            && sample(&m, web_allow) > sample(&before, web_allow)
            && sample(&m, policy_drops) > sample(&before, policy_drops)
            && sample(&m, "imfw_dataplane_packets_total")
                > sample(&before, "imfw_dataplane_packets_total")
            && sample(&m, "imfw_flow_table_entries") >= 2.0;
        if moved {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "counters did not move within {EXPECT:?}:\nbefore {before:?}\nnow {m:?}\nlog:\n{}",
            lab.imfw_log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        sample(
            &after,
            "imfw_bytes_total{app=\"whatsapp\",verdict=\"drop\"}"
        ) > 0.0,
        "{after:?}"
    );
    assert!(
        sample(&after, "imfw_dataplane_classified_total") >= 1.0,
        "{after:?}"
    );
    // Only /metrics is served; other requests are refused, and the endpoint goes on.
    assert_eq!(
        http(&lab, "GET / HTTP/1.1\r\n\r\n").0,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        http(&lab, "POST /metrics HTTP/1.1\r\n\r\n").0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(http(&lab, "nonsense\r\n\r\n").0, "HTTP/1.1 400 Bad Request");

    // The flow table, filtered: the blocked WhatsApp flow with its client port.
    let imfw = lab.imfw();
    let v = imfw.flows(&["--app", "whatsapp"]).expect("imfw flows");
    let wa_rows = rows(&v);
    assert!(
        !wa_rows.is_empty() && wa_rows.iter().all(|r| r["app"] == "whatsapp"),
        "{v}"
    );
    let row = wa_rows
        .iter()
        .find(|r| r["client"] == format!("192.0.2.2:{wa_port}"))
        .unwrap_or_else(|| panic!("the WhatsApp flow from port {wa_port} is not listed: {v}"));
    assert_eq!(row["server"], "198.51.100.2:443", "{row}");
    assert_eq!(
        (&row["l4"], &row["verdict"], &row["state"]),
        (&"tcp".into(), &"drop".into(), &"decided".into()),
        "{row}"
    );
    assert_eq!(row["method"], "tls_sni", "{row}");
    assert!(row["packets"].as_u64().unwrap_or(0) >= 1, "{row}");

    let v = imfw
        .flows(&["--verdict", "allow", "--addr", "198.51.100.0/24"])
        .expect("imfw flows");
    let web = rows(&v)
        .iter()
        .find(|r| r["client"] == format!("192.0.2.2:{web_port}"))
        .unwrap_or_else(|| panic!("the web flow from port {web_port} is not listed: {v}"));
    assert_eq!(
        (&web["app"], &web["server"]),
        (&Value::Null, &"198.51.100.2:80".into()),
        "{web}"
    );
    assert!(
        rows(&v).iter().all(|r| r["verdict"] == "allow"),
        "verdict filter: {v}"
    );

    let v = imfw.flows(&["--limit", "1"]).expect("imfw flows");
    assert_eq!(rows(&v).len(), 1, "{v}");
    assert!(v["matched"].as_u64().unwrap_or(0) >= 2, "{v}");
    let v = imfw
        .flows(&["--addr", "203.0.113.0/24"])
        .expect("imfw flows");
    assert_eq!((v["matched"].as_u64(), rows(&v).len()), (Some(0), 0), "{v}");
    let err = imfw
        .flows(&["--app", "whatsap"])
        .expect_err("an unknown app is refused");
    assert!(
        format!("{err:#}").contains("unknown app `whatsap`"),
        "{err:#}"
    );

    let table = imfw
        .cli("flows", &["--app", "whatsapp"])
        .expect("imfw flows");
    assert!(
        table.starts_with("CLIENT") && table.contains(&format!("192.0.2.2:{wa_port}")),
        "{table}"
    );

    // Status, for people and for scripts.
    let text = imfw.cli("status", &[]).expect("imfw status");
    for want in [
        "interfaces  imfw-lan0 (native",
        "imfw-wan0 (native",
        "version 1;",
        "prometheus  http://127.0.0.1:9464/metrics",
    ] {
        assert!(text.contains(want), "`{want}` not in:\n{text}");
    }
    let st = imfw.status().expect("imfw status --json");
    assert_eq!(st["interfaces"].as_array().map(Vec::len), Some(2), "{st}");
    assert_eq!(st["reloads"], 0, "{st}");
    assert!(st["counters"]["dropped"].as_u64().unwrap_or(0) >= 1, "{st}");
    assert!(
        st["counters"]["classified"].as_u64().unwrap_or(0) >= 1,
        "{st}"
    );
}
