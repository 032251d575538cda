//! The XDP program's own log messages (`observability.kernel_log`), end to end: the real
//! binary on the lab gateway, real flows through it, and imfw's JSON log lines. Needs root and
//! the release binary (`cargo xtask test` builds it; `IMFW_BIN` overrides its path).
use std::{
    fs, thread,
    time::{Duration, Instant},
};

use imfw_tests::{
    lab::Lab,
    protocols,
    scenario::{run_cases, Case},
    servers::TcpServer,
    util::{require_root, Rng},
};
use serde_json::Value;

/// How long a client waits for a reply that a blocked flow must never get.
const WAIT: Duration = Duration::from_secs(2);
/// How long a reload or a log line may take to show.
const EXPECT: Duration = Duration::from_secs(25);

fn policy(level: &str) -> String {
    format!("version: 1\napps: {{whatsapp: drop}}\nobservability: {{kernel_log: {level}}}\n")
}

/// The kernel's JSON log lines so far.
fn kernel_lines(lab: &Lab) -> Vec<Value> {
    lab.imfw()
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["source"] == "kernel")
        .collect()
}

/// The kernel's "flow classified" lines for flows to `port`.
fn classified_to(lab: &Lab, port: u16) -> Vec<Value> {
    let tail = format!(" server_port={port} proto=6");
    kernel_lines(lab)
        .into_iter()
        .filter(|v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("flow classified: ") && m.ends_with(&tail))
        })
        .collect()
}

/// The controller's own "classified" lines (from the classification log the XDP program
/// writes, whatever the kernel log level) for WhatsApp flows to `port`.
fn controller_classified(lab: &Lab, port: u16) -> Vec<Value> {
    let server = format!(":{port} ifindex=");
    lab.imfw()
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["source"] != "kernel")
        .filter(|v| {
            v["msg"].as_str().is_some_and(|m| {
                m.starts_with("classified app=whatsapp method=tls_sni verdict=drop l4=tcp ")
                    && m.contains(&server)
            })
        })
        .collect()
}

fn wait_until(what: &str, lab: &Lab, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + EXPECT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} within {EXPECT:?}; log:\n{}",
            lab.imfw().log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A WhatsApp flow to `port`, blocked.
fn blocked_flow(lab: &Lab, server: &TcpServer, port: u16) {
    let wa = protocols::im_openers(&mut Rng::new(7))
        .into_iter()
        .find(|o| o.app == "whatsapp" && o.label.starts_with("tls "))
        .expect("a WhatsApp TLS opener");
    let obs = run_cases(
        &lab.client,
        server,
        vec![Case::from_opener(&wa, port, false)],
        WAIT,
    );
    assert!(
        obs[0].blocked(),
        "whatsapp to port {port} was not blocked: {:?}\n{}",
        obs[0],
        lab.imfw_log_tail()
    );
}

/// At `info` each classified flow gets one kernel line (JSON, `"source": "kernel"`); after a
/// reload to `warn` a classified flow gets none, and after one back to `info` it does again.
/// The kernel's records reach the log in order, so the third flow's line showing while the
/// second's never did proves the second was not sent.
#[test]
fn klog_classified_flows_are_logged_at_info_and_not_at_warn() {
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
    let mut lab = Lab::new().expect("lab");
    let server = TcpServer::start(&lab.server, &[443, 444, 445]).expect("server");
    if let Err(e) = lab.start_imfw_args(
        &policy("info"),
        &["--detach-on-exit", "--log-format", "json"],
    ) {
        panic!("{e:#}");
    }
    let file = lab.imfw().policy_path().to_path_buf();
    let reload = |lab: &Lab, level: &str, count: u64| {
        fs::write(&file, policy(level)).expect("write the policy");
        lab.imfw().hangup().expect("SIGHUP");
        wait_until(&format!("reload #{count} to {level}"), lab, || {
            lab.imfw()
                .status()
                .is_ok_and(|v| v["reloads"].as_u64() == Some(count))
        });
    };

    blocked_flow(&lab, &server, 443);
    wait_until("a kernel line for the flow to 443", &lab, || {
        !classified_to(&lab, 443).is_empty()
    });
    let lines = classified_to(&lab, 443);
    assert_eq!(lines.len(), 1, "one line per classified flow: {lines:?}");
    assert_eq!(lines[0]["level"], "info", "{}", lines[0]);
    assert!(
        lines[0]["msg"]
            .as_str()
            .is_some_and(|m| m.contains(" verdict=2 ")),
        "verdict drop: {}",
        lines[0]
    );

    reload(&lab, "warn", 1);
    blocked_flow(&lab, &server, 444);
    reload(&lab, "info", 2);
    blocked_flow(&lab, &server, 445);
    wait_until("a kernel line for the flow to 445", &lab, || {
        !classified_to(&lab, 445).is_empty()
    });
    assert_eq!(
        classified_to(&lab, 444),
        Vec::<Value>::new(),
        "a line at `warn`; log:\n{}",
        lab.imfw().log_text()
    );
    assert_eq!(classified_to(&lab, 443).len(), 1);
    // The controller logs each classification once, whatever the kernel's level.
    for port in [443, 444, 445] {
        wait_until(&format!("the controller's line for the flow to {port}"), &lab, || {
            !controller_classified(&lab, port).is_empty()
        });
        assert_eq!(controller_classified(&lab, port).len(), 1, "port {port}; log:\n{}", lab.imfw().log_text());
    }
    // Every kernel line is one of the program's messages, well formed.
    for v in kernel_lines(&lab) {
        assert!(
            v["ts"].is_u64() && v["level"].is_string() && v["msg"].is_string(),
            "{v}"
        );
    }
}
