//! `imfw status`: what a running controller enforces, where, since when, and its headline
//! counters. The control socket answers JSON ([`answer`]); the CLI prints it for people
//! ([`render`]) unless asked for `--json`.

use std::fmt::Write as _;

use imfw_common::verdict::{DropReason, Stat};
use serde_json::{json, Value};

use crate::control::Shared;

/// This build's tag (`IMFW_BUILD_TAG` at build time), `None` for an untagged build.
pub const BUILD_TAG: Option<&str> = option_env!("IMFW_BUILD_TAG");
/// `VERSION (build TAG)`, or the version alone: what `imfw --version` prints.
pub const VERSION_LINE: &str = env!("IMFW_VERSION_LINE");

/// The status reply. Keys read by scripts and tests: `build_tag`, `interfaces` (`iface`, `ifindex`,
/// `mode`), `policy`, `policy_hash`, `uptime_s`, `reloads`, `reloads_failed`.
pub fn answer(s: &Shared) -> Value {
    let ifaces: Vec<_> = s
        .dataplane
        .attached()
        .iter()
        .map(|a| json!({"iface": a.iface, "ifindex": a.ifindex, "mode": a.mode.name()}))
        .collect();
    let counters = match s.dataplane.snapshot() {
        Ok(snap) => {
            let dropped: u64 = snap.drops.iter().map(|(_, c)| c.packets).sum();
            let drops: serde_json::Map<_, _> = snap
                .drops
                .iter()
                .filter(|(_, c)| c.packets > 0)
                .map(|(r, c)| (r.name().to_owned(), json!(c.packets)))
                .collect();
            json!({
                "packets": snap.stat(Stat::Packets),
                "dropped": dropped,
                "drops": drops,
                "flows_created": snap.stat(Stat::FlowsCreated),
                "classified": snap.stat(Stat::Classified),
                "unclassified": snap.stat(Stat::Unclassified),
                "ring_lost": snap.stat(Stat::EventsLost) + snap.stat(Stat::ToControllerLost) + snap.stat(Stat::StreamLost),
                "events_lost": snap.stat(Stat::EventsLost),
                "to_controller_lost": snap.stat(Stat::ToControllerLost),
                "stream_lost": snap.stat(Stat::StreamLost),
                "flow_insert_failed": snap.stat(Stat::FlowInsertFailed),
                "inspector_missing": snap.stat(Stat::InspectorMissing),
                "redirect_failed": snap.drop_reason(DropReason::RedirectFailed).packets,
            })
        }
        Err(e) => json!({"error": format!("{e:#}")}),
    };
    let flow_capacity = s.dataplane.flow_table().map(|t| t.capacity()).ok();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "build_tag": BUILD_TAG.filter(|t| !t.is_empty()),
        "pid": std::process::id(),
        "interfaces": ifaces,
        "policy": s.policy_file,
        "policy_hash": s.compiled.hash,
        // The policy in force: 1 is the one loaded at start, each reload that took effect adds
        // one; the generation is the half of the policy maps it occupies (0 or 1).
        "policy_version": s.policy_version,
        "policy_generation": s.policy_generation,
        "uptime_s": s.started.elapsed().as_secs(),
        "reloads": s.reloads,
        "reloads_failed": s.reloads_failed,
        "flow_capacity": flow_capacity,
        "flow_entries": crate::metrics::flow_entries(),
        "prometheus": crate::metrics::endpoint().map(|a| a.to_string()),
        "counters": counters,
    })
}

/// `VERSION (build TAG)`, or the version alone for an untagged build.
fn version(v: &Value) -> String {
    let version = v["version"].as_str().unwrap_or("?");
    match v["build_tag"].as_str() {
        Some(tag) => format!("{version} (build {tag})"),
        None => version.to_owned(),
    }
}

/// `1d 2h 3m 4s`, leading zero units left out.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m")] {
        if n > 0 || !out.is_empty() {
            let _ = write!(out, "{n}{unit} ");
        }
    }
    let _ = write!(out, "{s}s");
    out
}

/// The status reply for people.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "imfw {} (pid {}), up {}",
        version(v),
        n(&v["pid"]),
        duration(n(&v["uptime_s"]))
    );
    let hash = v["policy_hash"].as_str().unwrap_or("?");
    let _ = writeln!(
        out,
        "policy      {} (sha256 {}, version {}; reloads: {} applied, {} refused)",
        v["policy"].as_str().unwrap_or("?"),
        hash.get(..16).unwrap_or(hash),
        n(&v["policy_version"]),
        n(&v["reloads"]),
        n(&v["reloads_failed"])
    );
    let ifaces: Vec<String> = v["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            format!(
                "{} ({}, ifindex {})",
                i["iface"].as_str().unwrap_or("?"),
                i["mode"].as_str().unwrap_or("?"),
                n(&i["ifindex"])
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "interfaces  {}",
        if ifaces.is_empty() {
            "none".to_owned()
        } else {
            ifaces.join(", ")
        }
    );
    let entries = v["flow_entries"]
        .as_u64()
        .map_or_else(|| "?".to_owned(), |e| e.to_string());
    let cap = v["flow_capacity"]
        .as_u64()
        .map_or_else(|| "?".to_owned(), |e| e.to_string());
    let _ = writeln!(
        out,
        "flow table  {entries} of {cap} entries (counted every 10 s)"
    );
    let c = &v["counters"];
    if let Some(e) = c["error"].as_str() {
        let _ = writeln!(out, "counters    unavailable: {e}");
    } else {
        let drops: Vec<String> = c["drops"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, p)| format!("{k} {}", n(p)))
            .collect();
        let _ = writeln!(
            out,
            "packets     {} seen, {} dropped{}",
            n(&c["packets"]),
            n(&c["dropped"]),
            if drops.is_empty() {
                String::new()
            } else {
                format!(" ({})", drops.join(", "))
            }
        );
        let _ = writeln!(
            out,
            "flows       {} created, {} classified, {} unclassified, {} insert failures",
            n(&c["flows_created"]),
            n(&c["classified"]),
            n(&c["unclassified"]),
            n(&c["flow_insert_failed"])
        );
        let _ = writeln!(
            out,
            "ring losses {} (events {}, to controller {}, monitored segments {}); inspector missing {}, redirect failures {}",
            n(&c["ring_lost"]),
            n(&c["events_lost"]),
            n(&c["to_controller_lost"]),
            n(&c["stream_lost"]),
            n(&c["inspector_missing"]),
            n(&c["redirect_failed"])
        );
    }
    let _ = write!(
        out,
        "prometheus  {}",
        v["prometheus"]
            .as_str()
            .map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics"))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(61), "1m 1s");
        assert_eq!(duration(3600), "1h 0m 0s");
        assert_eq!(duration(90_061), "1d 1h 1m 1s");
    }

    #[test]
    fn status_reads_well() {
        let v = json!({
            "version": "0.1.0", "build_tag": "r2", "pid": 42, "uptime_s": 3725,
            "interfaces": [{"iface": "lan0", "ifindex": 3, "mode": "native"}, {"iface": "wan0", "ifindex": 4, "mode": "generic"}],
            "policy": "/etc/imfw/policy.yaml", "policy_hash": "0123456789abcdef0123456789abcdef", "policy_version": 3, "policy_generation": 0,
            "reloads": 2, "reloads_failed": 1, "flow_capacity": 262_144, "flow_entries": 17,
            "prometheus": "127.0.0.1:9464",
            "counters": {"packets": 1000, "dropped": 12, "drops": {"policy": 10, "pending": 2}, "flows_created": 20,
                "classified": 5, "unclassified": 3, "ring_lost": 1, "events_lost": 1, "to_controller_lost": 0,
                "stream_lost": 0, "flow_insert_failed": 0, "inspector_missing": 0, "redirect_failed": 0},
        });
        let text = render(&v);
        for want in [
            "imfw 0.1.0 (build r2) (pid 42), up 1h 2m 5s",
            "policy      /etc/imfw/policy.yaml (sha256 0123456789abcdef, version 3; reloads: 2 applied, 1 refused)",
            "interfaces  lan0 (native, ifindex 3), wan0 (generic, ifindex 4)",
            "flow table  17 of 262144 entries",
            "packets     1000 seen, 12 dropped (pending 2, policy 10)",
            "flows       20 created, 5 classified, 3 unclassified, 0 insert failures",
            "ring losses 1 (events 1, to controller 0, monitored segments 0)",
            "prometheus  http://127.0.0.1:9464/metrics",
        ] {
            assert!(text.contains(want), "`{want}` not in:\n{text}");
        }
        let v = json!({"counters": {"error": "map gone"}, "interfaces": []});
        let text = render(&v);
        assert!(
            text.contains("counters    unavailable: map gone") && text.contains("interfaces  none"),
            "{text}"
        );
        assert!(text.contains("prometheus  off"), "{text}");
    }
}
