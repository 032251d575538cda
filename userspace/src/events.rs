//! What the controller makes of the data plane's events.

use imfw_common::{
    event::{FlowEvent, PayloadEvent},
    flow::FlowKey,
    verdict::{Method, Verdict},
};

use crate::{packet, policy::Compiled};

/// One line describing a classification, for logs.
pub fn describe(ev: &FlowEvent, compiled: &Compiled) -> String {
    format!(
        "classified app={} method={} verdict={} {} ifindex={}",
        compiled.app_name(ev.app).unwrap_or("?"),
        Method::from_u8(ev.method).name(),
        Verdict::from_u8(ev.verdict).name(),
        endpoints(&ev.key, ev.client_is_a != 0),
        ev.ifindex,
    )
}

/// One line describing a verdict the controller reached and wrote back.
pub fn describe_decision(d: &crate::controller::Decision, p: &PayloadEvent, compiled: &Compiled) -> String {
    format!(
        "classified app={} method=tls_sni verdict={} by=controller name={} {}",
        compiled.app_name(d.app).unwrap_or("?"),
        Verdict::from_u8(d.verdict).name(),
        d.name,
        endpoints(&p.key, p.client_is_a != 0),
    )
}

/// `l4=tcp client=A:P server=B:Q`: key=value fields, as journald and log parsers read them.
fn endpoints(key: &FlowKey, client_is_a: bool) -> String {
    let (c, cp) = key.client(client_is_a);
    let (s, sp) = key.server(client_is_a);
    let l4 = if key.proto == 6 { "tcp" } else { "udp" };
    let sock = |a, p| std::net::SocketAddr::new(packet::addr(a, key.family), p);
    format!("l4={l4} client={} server={}", sock(c, cp), sock(s, sp))
}
