//! `imfw flows`: the data plane's flow table as a person reads it, filtered and bounded.
//!
//! The table holds up to 262,144 flows by default. A request walks it on a blocking thread
//! through its own handle on the map (never under the controller's lock), keeps the busiest
//! flows that match, and answers with at most [`LIMIT_MAX`] of them plus how many matched.

use std::{fmt::Write as _, net::SocketAddr};

use anyhow::{anyhow, bail, Result};
use aya::maps::{HashMap, Map, MapData};
use imfw_common::{
    flow::{FlowEntry, FlowKey, FLAG_CONTROLLER, STATE_DECIDED},
    verdict::{Method, Verdict},
};
use serde::{Deserialize, Serialize};

use crate::{packet, policy::Cidr};

/// Flows shown when the request names no limit.
pub const LIMIT_DEFAULT: usize = 50;
/// The most flows one reply carries (about 2.5 MB of JSON).
pub const LIMIT_MAX: usize = 10_000;

/// What to show. Absent filters match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// App name; `none` selects flows of no app (unclassified or still inspecting).
    #[serde(default)]
    pub app: Option<String>,
    /// Verdict name (pending, allow, drop, redirect, monitor).
    #[serde(default)]
    pub verdict: Option<String>,
    /// An address or network that the client or the server is in.
    #[serde(default)]
    pub addr: Option<String>,
    /// At most this many flows (clamped to [`LIMIT_MAX`]).
    #[serde(default)]
    pub limit: Option<usize>,
    /// `bytes` (default) or `packets`: what "busiest" means.
    #[serde(default)]
    pub sort: Option<String>,
}

/// A query checked against the running policy's app names.
struct Filter {
    app: Option<u16>,
    verdict: Option<Verdict>,
    net: Option<Cidr>,
    limit: usize,
    by_packets: bool,
}

impl Query {
    fn filter(&self, apps: &[(u16, String)]) -> Result<Filter> {
        let app = match self.app.as_deref() {
            None => None,
            Some("none") => Some(0),
            Some(name) => Some(
                apps.iter()
                    .find(|(_, n)| n == name)
                    .map(|(id, _)| *id)
                    .ok_or_else(|| {
                        anyhow!(
                            "unknown app `{name}`; expected an app of the running policy or `none`"
                        )
                    })?,
            ),
        };
        let verdict = match self.verdict.as_deref() {
            None => None,
            Some(v) => Some(Verdict::ALL.into_iter().find(|x| x.name() == v).ok_or_else(|| {
                anyhow!("unknown verdict `{v}`; expected pending, allow, drop, redirect or monitor")
            })?),
        };
        let net = self
            .addr
            .as_deref()
            .map(Cidr::parse)
            .transpose()
            .map_err(|e| anyhow!(e))?;
        let by_packets = match self.sort.as_deref() {
            None | Some("bytes") => false,
            Some("packets") => true,
            Some(s) => bail!("unknown sort `{s}`; expected bytes or packets"),
        };
        Ok(Filter {
            app,
            verdict,
            net,
            limit: self.limit.unwrap_or(LIMIT_DEFAULT).min(LIMIT_MAX),
            by_packets,
        })
    }
}

impl Filter {
    fn matches(&self, k: &FlowKey, e: &FlowEntry) -> bool {
        if self.app.is_some_and(|a| a != e.app)
            || self.verdict.is_some_and(|v| v as u8 != e.verdict)
        {
            return false;
        }
        match self.net {
            None => true,
            Some(net) => [k.addr_a, k.addr_b]
                .into_iter()
                .any(|a| net.contains_addr(packet::addr(a, k.family))),
        }
    }
}

/// One flow as shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub l4: String,
    /// `None`: no app (not IM, or not known yet).
    pub app: Option<String>,
    pub method: String,
    /// `inspecting`, `controller` (the controller is deciding it) or `decided`.
    pub state: String,
    pub verdict: String,
    pub packets: u64,
    pub bytes: u64,
}

impl Row {
    pub fn new(k: &FlowKey, e: &FlowEntry, apps: &[(u16, String)]) -> Row {
        let client_is_a = e.client_is_a != 0;
        let sock = |(a, p): ([u32; 4], u16)| SocketAddr::new(packet::addr(a, k.family), p);
        let state = if e.state == STATE_DECIDED {
            "decided"
        } else if e.flags & FLAG_CONTROLLER != 0 {
            "controller"
        } else {
            "inspecting"
        };
        Row {
            client: sock(k.client(client_is_a)),
            server: sock(k.server(client_is_a)),
            l4: match k.proto {
                6 => "tcp".to_owned(),
                17 => "udp".to_owned(),
                p => format!("ip{p}"),
            },
            app: (e.app != 0).then(|| {
                apps.iter()
                    .find(|(id, _)| *id == e.app)
                    .map_or_else(|| format!("app#{}", e.app), |(_, n)| n.clone())
            }),
            method: Method::from_u8(e.method).name().to_owned(),
            state: state.to_owned(),
            verdict: Verdict::from_u8(e.verdict).name().to_owned(),
            packets: e.packets,
            bytes: e.bytes,
        }
    }
}

/// The answer to a flows request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// Entries read from the table.
    pub total: u64,
    /// Entries that matched the filters.
    pub matched: u64,
    /// The table's capacity.
    pub capacity: u32,
    /// The busiest matching flows, busiest first, at most the limit.
    pub flows: Vec<Row>,
}

/// Filters `entries`, keeps the `limit` busiest and names them.
pub fn select(
    entries: impl IntoIterator<Item = (FlowKey, FlowEntry)>,
    q: &Query,
    apps: &[(u16, String)],
    capacity: u32,
) -> Result<Listing> {
    let f = q.filter(apps)?;
    let weight = |e: &FlowEntry| {
        if f.by_packets {
            (e.packets, e.bytes)
        } else {
            (e.bytes, e.packets)
        }
    };
    let (mut total, mut matched) = (0u64, 0u64);
    let mut keep: Vec<(FlowKey, FlowEntry)> = Vec::new();
    for (k, e) in entries {
        total += 1;
        if !f.matches(&k, &e) {
            continue;
        }
        matched += 1;
        keep.push((k, e));
        // Bounded memory however large the table: trim to the busiest `limit` now and then.
        if keep.len() >= 2 * f.limit.max(1024) {
            trim(&mut keep, f.limit, weight);
        }
    }
    trim(&mut keep, f.limit, weight);
    Ok(Listing {
        total,
        matched,
        capacity,
        flows: keep.iter().map(|(k, e)| Row::new(k, e, apps)).collect(),
    })
}

/// Keeps the `limit` heaviest entries, heaviest first (ties in key order, for stable output).
fn trim(
    v: &mut Vec<(FlowKey, FlowEntry)>,
    limit: usize,
    weight: impl Fn(&FlowEntry) -> (u64, u64),
) {
    let order = |a: &(FlowKey, FlowEntry), b: &(FlowKey, FlowEntry)| {
        weight(&b.1)
            .cmp(&weight(&a.1))
            .then_with(|| key_order(&a.0).cmp(&key_order(&b.0)))
    };
    if v.len() > limit && limit > 0 {
        v.select_nth_unstable_by(limit - 1, order);
    }
    v.truncate(limit);
    v.sort_unstable_by(order);
}

fn key_order(k: &FlowKey) -> ([u32; 4], [u32; 4], u16, u16, u8) {
    (k.addr_a, k.addr_b, k.port_a, k.port_b, k.proto)
}

/// A handle of its own on the flow table, so that walking it takes no lock of the controller.
pub struct FlowTable {
    map: HashMap<MapData, FlowKey, FlowEntry>,
    capacity: u32,
}

impl FlowTable {
    /// Opens a second handle on the map behind `fd` (a duplicate of the descriptor).
    pub fn from_fd(fd: std::os::fd::BorrowedFd<'_>) -> Result<FlowTable> {
        let owned = fd
            .try_clone_to_owned()
            .map_err(|e| anyhow!("duplicating the flow table's descriptor: {e}"))?;
        let data = MapData::from_fd(owned).map_err(|e| anyhow!("flow table: {e}"))?;
        let capacity = data
            .info()
            .map_err(|e| anyhow!("flow table: {e}"))?
            .max_entries();
        let map =
            HashMap::try_from(Map::LruHashMap(data)).map_err(|e| anyhow!("flow table: {e}"))?;
        Ok(FlowTable { map, capacity })
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Every entry, read once. The walk is bounded by twice the capacity: under heavy churn
    /// the kernel may restart a walk whose current key was evicted.
    pub fn entries(&self) -> impl Iterator<Item = (FlowKey, FlowEntry)> + '_ {
        self.map
            .iter()
            .take(2 * self.capacity as usize)
            .filter_map(Result::ok)
    }

    /// How many entries the table holds: one key walk (a syscall per entry), so callers do it
    /// off the request path and cache it.
    pub fn count(&self) -> u64 {
        self.map
            .keys()
            .take(2 * self.capacity as usize)
            .flatten()
            .count() as u64
    }
}

/// The human table of `imfw flows`.
pub fn render(l: &Listing) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<41} {:<41} {:<4} {:<12} {:<12} {:<10} {:<8} {:>10} {:>12}",
        "CLIENT", "SERVER", "L4", "APP", "METHOD", "STATE", "VERDICT", "PACKETS", "BYTES"
    );
    for r in &l.flows {
        let _ = writeln!(
            out,
            "{:<41} {:<41} {:<4} {:<12} {:<12} {:<10} {:<8} {:>10} {:>12}",
            r.client.to_string(),
            r.server.to_string(),
            r.l4,
            r.app.as_deref().unwrap_or("-"),
            r.method,
            r.state,
            r.verdict,
            r.packets,
            r.bytes
        );
    }
    let _ = write!(
        out,
        "{} of {} matching flows shown, busiest first ({} in the table, capacity {})",
        l.flows.len(),
        l.matched,
        l.total,
        l.capacity
    );
    out
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[expect(clippy::too_many_arguments, reason = "one argument per column of the table the tests build")]
    fn flow(
        client: &str,
        cport: u16,
        server: &str,
        sport: u16,
        app: u16,
        verdict: Verdict,
        packets: u64,
        bytes: u64,
    ) -> (FlowKey, FlowEntry) {
        let c: IpAddr = client.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let s: IpAddr = server.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let fam = if c.is_ipv4() { 4 } else { 6 };
        let (key, client_is_a) =
            FlowKey::canonical(packet::words(c), cport, packet::words(s), sport, 6, fam);
        let e = FlowEntry {
            packets,
            bytes,
            app,
            method: Method::TlsSni as u8,
            verdict: verdict as u8,
            state: STATE_DECIDED,
            client_is_a: u8::from(client_is_a),
            ..FlowEntry::default()
        };
        (key, e)
    }

    fn apps() -> Vec<(u16, String)> {
        vec![(1, "whatsapp".to_owned()), (2, "telegram".to_owned())]
    }

    fn table() -> Vec<(FlowKey, FlowEntry)> {
        vec![
            flow(
                "192.0.2.2",
                40000,
                "198.51.100.2",
                443,
                1,
                Verdict::Drop,
                3,
                300,
            ),
            flow(
                "192.0.2.3",
                40001,
                "198.51.100.2",
                443,
                2,
                Verdict::Allow,
                50,
                5000,
            ),
            flow(
                "192.0.2.2",
                40002,
                "203.0.113.9",
                80,
                0,
                Verdict::Allow,
                900,
                90_000,
            ),
            flow(
                "2001:db8:1::2",
                40003,
                "2001:db8:2::2",
                5222,
                1,
                Verdict::Drop,
                7,
                700,
            ),
        ]
    }

    fn q() -> Query {
        Query::default()
    }

    #[test]
    fn busiest_first_and_named_the_way_the_client_opened_it() {
        let l = select(table(), &q(), &apps(), 1024).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!((l.total, l.matched, l.capacity), (4, 4, 1024));
        let bytes: Vec<u64> = l.flows.iter().map(|r| r.bytes).collect();
        assert_eq!(bytes, [90_000, 5000, 700, 300]);
        let wa = &l.flows[3];
        assert_eq!(
            wa.client,
            "192.0.2.2:40000".parse().unwrap_or_else(|_| unreachable!())
        );
        assert_eq!(
            wa.server,
            "198.51.100.2:443"
                .parse()
                .unwrap_or_else(|_| unreachable!())
        );
        assert_eq!(
            (wa.l4.as_str(), wa.app.as_deref(), wa.method.as_str()),
            ("tcp", Some("whatsapp"), "tls_sni")
        );
        assert_eq!(
            (wa.state.as_str(), wa.verdict.as_str(), wa.packets),
            ("decided", "drop", 3)
        );
        assert_eq!(l.flows[0].app, None);
        assert_eq!(l.flows[2].client.to_string(), "[2001:db8:1::2]:40003");
    }

    #[test]
    fn filters_combine_and_the_limit_says_how_many_matched() {
        let by = |q: Query| select(table(), &q, &apps(), 1024).unwrap_or_else(|e| panic!("{e:#}"));
        let l = by(Query {
            app: Some("whatsapp".into()),
            ..q()
        });
        assert_eq!((l.matched, l.flows.len()), (2, 2));
        assert!(l.flows.iter().all(|r| r.app.as_deref() == Some("whatsapp")));
        let l = by(Query {
            app: Some("none".into()),
            ..q()
        });
        assert_eq!(l.matched, 1);
        assert_eq!(l.flows[0].bytes, 90_000);
        let l = by(Query {
            verdict: Some("allow".into()),
            ..q()
        });
        assert_eq!(l.matched, 2);
        let l = by(Query {
            addr: Some("192.0.2.2".into()),
            ..q()
        });
        assert_eq!(l.matched, 2, "client side");
        let l = by(Query {
            addr: Some("198.51.100.0/24".into()),
            verdict: Some("drop".into()),
            ..q()
        });
        assert_eq!(
            (l.matched, l.flows[0].bytes),
            (1, 300),
            "server side and verdict"
        );
        let l = by(Query {
            addr: Some("2001:db8::/32".into()),
            ..q()
        });
        assert_eq!(l.matched, 1);
        let l = by(Query {
            limit: Some(1),
            sort: Some("packets".into()),
            ..q()
        });
        assert_eq!((l.matched, l.flows.len(), l.flows[0].packets), (4, 1, 900));
        let l = by(Query {
            limit: Some(usize::MAX),
            ..q()
        });
        assert_eq!(l.flows.len(), 4, "a huge limit is clamped, not an error");
    }

    #[test]
    fn bad_filters_are_refused() {
        let err = |q: Query| {
            format!(
                "{:#}",
                select(table(), &q, &apps(), 1024)
                    .err()
                    .unwrap_or_else(|| panic!("accepted"))
            )
        };
        assert!(err(Query {
            app: Some("whatsap".into()),
            ..q()
        })
        .contains("unknown app `whatsap`"));
        assert!(err(Query {
            verdict: Some("deny".into()),
            ..q()
        })
        .contains("unknown verdict `deny`"));
        assert!(err(Query {
            addr: Some("192.0.2.300".into()),
            ..q()
        })
        .contains("not an IP address"));
        assert!(err(Query {
            sort: Some("age".into()),
            ..q()
        })
        .contains("unknown sort"));
    }

    #[test]
    fn a_large_table_stays_bounded_and_keeps_the_busiest() {
        let many = (0..20_000u32).map(|i| {
            let c = Ipv4Addr::from(0xc000_0200 | (i & 0xff));
            flow(
                &c.to_string(),
                1024 + (i as u16),
                "198.51.100.2",
                443,
                1,
                Verdict::Allow,
                u64::from(i),
                u64::from(i) * 10,
            )
        });
        let l = select(
            many,
            &Query {
                limit: Some(3),
                ..q()
            },
            &apps(),
            262_144,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!((l.total, l.matched), (20_000, 20_000));
        let bytes: Vec<u64> = l.flows.iter().map(|r| r.bytes).collect();
        assert_eq!(bytes, [199_990, 199_980, 199_970]);
    }

    #[test]
    fn the_table_reads_well() {
        let l = select(
            table(),
            &Query {
                limit: Some(2),
                ..q()
            },
            &apps(),
            1024,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let text = render(&l);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with("CLIENT") && lines[0].contains("VERDICT"),
            "{text}"
        );
        assert!(
            lines[1].contains("192.0.2.2:40002")
                && lines[1].contains("203.0.113.9:80")
                && lines[1].contains(" - "),
            "{text}"
        );
        assert!(
            lines[2].contains("telegram") && lines[2].contains("allow"),
            "{text}"
        );
        assert_eq!(
            lines[3],
            "2 of 4 matching flows shown, busiest first (4 in the table, capacity 1024)"
        );
        let json = serde_json::to_value(&l).unwrap_or_default();
        assert_eq!(json["flows"][1]["app"], "telegram");
        assert_eq!(json["matched"], 4);
    }
}
