//! Offline classification: every packet of a capture goes through the loaded XDP program with
//! `BPF_PROG_TEST_RUN`, in order, against the real maps; the flow table then holds exactly what a
//! gateway would have decided.

use std::{collections::HashMap, net::IpAddr, path::Path};

use anyhow::Result;
use imfw_common::{
    flow::{FlowKey, STATE_DECIDED},
    verdict::{Method, Verdict},
};

use crate::{
    capture,
    controller::Controller,
    dataplane::{Dataplane, Event},
    events, packet,
    policy::Compiled,
};

/// One flow of a capture, as reported.
#[derive(Clone, Debug)]
pub struct FlowReport {
    pub l4: &'static str,
    /// The side that sent the flow's first packet in the capture.
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub app: Option<String>,
    pub method: Method,
    pub verdict: Verdict,
    pub packets: u64,
    pub bytes: u64,
}

impl FlowReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "l4": self.l4,
            "src": self.src.to_string(),
            "sport": self.sport,
            "dst": self.dst.to_string(),
            "dport": self.dport,
            "app": self.app,
            "method": self.method.name(),
            "verdict": self.verdict.name(),
            "packets": self.packets,
            "bytes": self.bytes,
        })
    }
}

pub struct CaptureReport {
    pub flows: Vec<FlowReport>,
    pub frames: usize,
    pub skipped: usize,
}

/// Classifies one capture with a fresh data plane, so captures never share flow state.
pub fn classify_capture(path: &Path, compiled: &Compiled) -> Result<CaptureReport> {
    let cap = capture::read(path)?;
    let mut dp = Dataplane::load(imfw_common::maps::FLOWS_DEFAULT)?;
    dp.apply_offline(compiled)?;
    let mut controller = Controller::new(compiled);
    let mut order: Vec<(FlowKey, packet::Tuple, u64, u64)> = Vec::new();
    let mut index: HashMap<FlowKey, usize> = HashMap::new();
    for frame in &cap.frames {
        dp.test_run(frame)?;
        for ev in dp.drain_events() {
            match ev {
                Event::Classified(ev) => log::debug!("{}", events::describe(&ev, compiled)),
                // Decided before the next packet, as a live controller would within the
                // round trip that follows the ClientHello.
                Event::Payload(p) => {
                    controller.on_payload(&p, &mut dp, compiled)?;
                }
                // Content of monitored flows: classification does not need it.
                Event::Stream(_) => {}
            }
        }
        let Some(t) = packet::tuple(frame) else { continue };
        let key = t.key();
        let i = *index.entry(key).or_insert_with(|| {
            order.push((key, t, 0, 0));
            order.len() - 1
        });
        order[i].2 += 1;
        order[i].3 += frame.len() as u64;
    }
    let mut flows = Vec::with_capacity(order.len());
    for (key, t, packets, bytes) in order {
        let entry = dp.flow(&key)?;
        // The data plane looks the server's address up only when a payload leaves it to decide.
        let addr_app = match &entry {
            Some(e) if e.app == 0 && e.state != STATE_DECIDED => dp.flow_addr_app(&key, e)?,
            _ => 0,
        };
        let name = |app: u16| Some(compiled.app_name(app).map_or_else(|| format!("app#{app}"), str::to_owned));
        let (app, method, verdict) = match entry {
            Some(e) if e.app != 0 => (name(e.app), Method::from_u8(e.method), Verdict::from_u8(e.verdict)),
            // Still inspecting when the capture ended (e.g. a TCP flow without payload): the
            // server's address is all that is known, and the data plane has not acted on it.
            Some(e) if e.state != STATE_DECIDED && addr_app != 0 => (name(addr_app), Method::Address, Verdict::Pending),
            Some(e) => (None, Method::None, Verdict::from_u8(e.verdict)),
            None => (None, Method::None, Verdict::Pending),
        };
        flows.push(FlowReport {
            l4: t.l4(),
            src: t.src,
            sport: t.sport,
            dst: t.dst,
            dport: t.dport,
            app,
            method,
            verdict,
            packets,
            bytes,
        });
    }
    Ok(CaptureReport { flows, frames: cap.frames.len(), skipped: cap.skipped })
}

/// A readable table of flows and a summary per app.
pub fn render_table(name: &str, r: &CaptureReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{name}: {} frames, {} flows, {} packets of other link types skipped", r.frames, r.flows.len(), r.skipped);
    let _ = writeln!(
        s,
        "{:<4} {:>40} {:>40} {:<11} {:<12} {:<9} {:>7} {:>10}",
        "L4", "CLIENT", "SERVER", "APP", "METHOD", "VERDICT", "PACKETS", "BYTES"
    );
    for f in &r.flows {
        let _ = writeln!(
            s,
            "{:<4} {:>40} {:>40} {:<11} {:<12} {:<9} {:>7} {:>10}",
            f.l4,
            endpoint(f.src, f.sport),
            endpoint(f.dst, f.dport),
            f.app.as_deref().unwrap_or("-"),
            f.method.name(),
            f.verdict.name(),
            f.packets,
            f.bytes
        );
    }
    let mut per_app: std::collections::BTreeMap<&str, (u64, u64, u64)> = std::collections::BTreeMap::new();
    for f in &r.flows {
        let e = per_app.entry(f.app.as_deref().unwrap_or("(not IM)")).or_default();
        e.0 += 1;
        e.1 += f.packets;
        e.2 += f.bytes;
    }
    let _ = writeln!(s, "\n{:<12} {:>7} {:>9} {:>12}", "APP", "FLOWS", "PACKETS", "BYTES");
    for (app, (fl, p, b)) in per_app {
        let _ = writeln!(s, "{app:<12} {fl:>7} {p:>9} {b:>12}");
    }
    s
}

fn endpoint(a: IpAddr, p: u16) -> String {
    match a {
        IpAddr::V4(v4) => format!("{v4}:{p}"),
        IpAddr::V6(v6) => format!("[{v6}]:{p}"),
    }
}
