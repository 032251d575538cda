//! End-to-end, kept apart from `e2e.rs`: an IM flow whose identifying bytes only arrive in
//! its second TCP segment. Real clients do this: a TLS 1.3 `ClientHello` with a post-quantum
//! key share is larger than one segment, and Chrome shuffles its extensions, so the server
//! name often lies past the first 1448 bytes. The data plane hands the segments to the
//! controller; with `pending: drop` they are held until its verdict, so nothing of a blocked
//! hello reaches the server, and an allowed one arrives by the client's retransmission.
//! Needs root and the release binary.
use std::time::Duration;

use imfw_tests::{
    imfw_proc::ImfwProc,
    lab::{Lab, GW_REC_IF},
    protocols,
    scenario::{run_cases, Case},
    servers::TcpServer,
    util::require_root,
};

#[test]
fn a_client_hello_with_the_name_in_its_second_segment_is_blocked() {
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
    ImfwProc::require_bin(&ImfwProc::bin()).unwrap();
    let mut lab = Lab::new().unwrap();
    let server = TcpServer::start(&lab.server, &[443]).unwrap();
    let policy = format!(
        "version: 1\ndefaults: {{action: allow, unclassified: allow, pending: drop, redirect_to: {GW_REC_IF}}}\n\
         apps: {{signal: drop, whatsapp: drop}}\n"
    );
    if let Err(e) = lab.start_imfw(&policy) {
        panic!("{e:#}");
    }
    let cases = vec![
        Case::from_opener(
            &protocols::late_sni_opener("chat.signal.org", "signal"),
            443,
            false,
        ),
        Case::from_opener(
            &protocols::late_sni_opener("web.whatsapp.com", "whatsapp"),
            443,
            true,
        ),
    ];
    let mut web = protocols::ClientHello::new("www.example.com");
    web.post_quantum = true;
    web.order = protocols::ExtOrder::SniLast;
    let web_case = imfw_tests::scenario::Case::other(
        "tls www.example.com, SNI in 2nd segment",
        web.build(),
        443,
        false,
    );
    let mut all = cases;
    all.push(web_case);
    // Long enough for the allowed hello's retransmission (the first RTO is at least 200 ms).
    let obs = run_cases(&lab.client, &server, all, Duration::from_secs(4));
    let (im, web) = obs.split_at(obs.len() - 1);
    let mut problems: Vec<String> = im
        .iter()
        .filter_map(imfw_tests::scenario::Observed::problem_if_should_block)
        .collect();
    problems.extend(
        web.iter()
            .filter_map(imfw_tests::scenario::Observed::problem_if_should_pass),
    );
    assert!(
        problems.is_empty(),
        "split ClientHellos were not handled:\n  {}\nimfw log:\n{}",
        problems.join("\n  "),
        lab.imfw_log_tail()
    );
}
