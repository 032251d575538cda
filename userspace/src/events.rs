//! What the controller makes of the data plane's events.

use imfw_common::{
    event::FlowEvent,
    verdict::{Method, Verdict},
};

use crate::{packet, policy::Compiled};

/// One line describing a classification, for logs.
pub fn describe(ev: &FlowEvent, compiled: &Compiled) -> String {
    let (c, cp) = ev.key.client(ev.client_is_a != 0);
    let (s, sp) = ev.key.server(ev.client_is_a != 0);
    let l4 = if ev.key.proto == 6 { "tcp" } else { "udp" };
    format!(
        "classified app={} method={} verdict={} {l4} client={} server={} ifindex={}",
        compiled.app_name(ev.app).unwrap_or("?"),
        Method::from_u8(ev.method).name(),
        Verdict::from_u8(ev.verdict).name(),
        sockaddr(packet::addr(c, ev.key.family), cp),
        sockaddr(packet::addr(s, ev.key.family), sp),
        ev.ifindex,
    )
}

/// One line describing a verdict the controller reached and wrote back.
pub fn describe_decision(d: &crate::controller::Decision, p: &imfw_common::event::PayloadEvent, compiled: &Compiled) -> String {
    let (c, cp) = p.key.client(p.client_is_a != 0);
    let (s, sp) = p.key.server(p.client_is_a != 0);
    format!(
        "classified app={} method=tls_sni verdict={} by=controller name={} tcp client={} server={}",
        compiled.app_name(d.app).unwrap_or("?"),
        Verdict::from_u8(d.verdict).name(),
        d.name,
        sockaddr(packet::addr(c, p.key.family), cp),
        sockaddr(packet::addr(s, p.key.family), sp),
    )
}

fn sockaddr(a: std::net::IpAddr, p: u16) -> String {
    std::net::SocketAddr::new(a, p).to_string()
}
