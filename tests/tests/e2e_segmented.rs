//! End-to-end, kept apart from `e2e.rs`: an IM flow whose identifying bytes only arrive in
//! its second TCP segment. Real clients do this: a TLS 1.3 `ClientHello` with a post-quantum
//! key share is larger than one segment, and Chrome shuffles its extensions, so the server
//! name often lies past the first 1448 bytes. Needs root and the release binary.
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
        "version: 1\ndefaults: {{action: allow, unclassified: allow, redirect_to: {GW_REC_IF}}}\n\
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
    let obs = run_cases(&lab.client, &server, cases, Duration::from_secs(2));
    let problems: Vec<String> = obs
        .iter()
        .filter_map(imfw_tests::scenario::Observed::problem_if_should_block)
        .collect();
    assert!(
        problems.is_empty(),
        "the ClientHello got through:\n  {}\nimfw log:\n{}",
        problems.join("\n  "),
        lab.imfw_log_tail()
    );
}
