//! The policy file's types, as serde reads them.
//!
//! Values with a syntax of their own (networks, hex strings, actions) have hand-written
//! `Deserialize` impls so that their errors carry the value's position.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use imfw_common::verdict::Verdict;
use serde::{
    de::{self, value::MapAccessDeserializer, MapAccess, SeqAccess, Visitor},
    Deserialize, Deserializer,
};

use crate::catalogue::CatalogueEntry;

/// Reads a null value (a key with nothing after it) as the type's default.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An IPv4 or IPv6 network with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

const CIDR_EXPECTED: &str = "an IPv4 or IPv6 network such as 192.0.2.0/24 or 2001:db8::/32";

impl Cidr {
    /// Parses `addr/len` or a bare address (a host network: /32 or /128).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (a, l) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{text}` is not a network: `{a}` is not an IP address; expected {CIDR_EXPECTED}"))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max && l.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    format!("`{text}` is not a network: the prefix length must be a number from 0 to {max}")
                })?,
        };
        let net = Cidr { addr: network(addr, len), len };
        if net.addr != addr {
            return Err(format!("{text} has host bits set; did you mean {net}?"));
        }
        Ok(net)
    }

    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `other` lies entirely inside this network.
    pub fn contains(&self, other: &Cidr) -> bool {
        self.is_v4() == other.is_v4() && self.len <= other.len && network(other.addr, self.len) == self.addr
    }

    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        self.is_v4() == addr.is_ipv4() && network(addr, self.len) == self.addr
    }

    /// The address bytes of an IPv4 network (zero for IPv6).
    pub fn v4_octets(&self) -> [u8; 4] {
        match self.addr {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(_) => [0; 4],
        }
    }

    /// The address bytes of an IPv6 network (zero for IPv4).
    pub fn v6_octets(&self) -> [u8; 16] {
        match self.addr {
            IpAddr::V6(a) => a.octets(),
            IpAddr::V4(_) => [0; 16],
        }
    }
}

/// `addr` with the bits past `len` cleared.
fn network(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Cidr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(CIDR_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cidr, E> {
                Cidr::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Bytes written as hex pairs, whitespace allowed between them: `"16 03 01"`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Hex(pub Vec<u8>);

const HEX_EXPECTED: &str = "a quoted string of 1 to 16 hex bytes such as \"16 03 01\"";

impl Hex {
    pub fn parse(text: &str) -> Result<Hex, String> {
        let mut out = Vec::new();
        let mut high: Option<u8> = None;
        for c in text.chars() {
            if c.is_whitespace() {
                if high.is_some() {
                    return Err(format!("bad hex `{text}`: a byte is two hex digits; a lone digit precedes a space"));
                }
                continue;
            }
            let Some(d) = c.to_digit(16) else {
                return Err(format!("bad hex `{text}`: `{c}` is not a hex digit; expected {HEX_EXPECTED}"));
            };
            let d = d as u8;
            match high.take() {
                Some(h) => out.push((h << 4) | d),
                None => high = Some(d),
            }
        }
        if high.is_some() {
            return Err(format!("bad hex `{text}`: odd number of hex digits; a byte is two digits"));
        }
        if out.is_empty() || out.len() > imfw_common::matcher::SIG_LEN {
            return Err(format!(
                "bad hex `{text}`: {} bytes; expected 1 to {}",
                out.len(),
                imfw_common::matcher::SIG_LEN
            ));
        }
        Ok(Hex(out))
    }
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hex, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Hex;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(HEX_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Hex, E> {
                Hex::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// What happens to a flow of an app.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Drop,
    Monitor,
    /// Redirect to this interface, or to `defaults.redirect_to` when `None`.
    Redirect(Option<String>),
}

const ACTION_EXPECTED: &str = "allow, drop, monitor or redirect";

impl Action {
    pub fn verdict(&self) -> Verdict {
        match self {
            Action::Allow => Verdict::Allow,
            Action::Drop => Verdict::Drop,
            Action::Monitor => Verdict::Monitor,
            Action::Redirect(_) => Verdict::Redirect,
        }
    }

    fn from_name(name: &str) -> Result<Action, String> {
        match name {
            "allow" => Ok(Action::Allow),
            "drop" => Ok(Action::Drop),
            "monitor" => Ok(Action::Monitor),
            "redirect" => Ok(Action::Redirect(None)),
            _ => Err(format!("unknown action `{name}`; expected {ACTION_EXPECTED}")),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Redirect(Some(to)) => write!(f, "redirect to {to}"),
            a => f.write_str(a.verdict().name()),
        }
    }
}

/// An action's name alone, for the long form's `action:` key.
struct ActionName(Action);

impl<'de> Deserialize<'de> for ActionName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ActionName, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ActionName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an action: {ACTION_EXPECTED}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ActionName, E> {
                Action::from_name(v).map(ActionName).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping {action: ACTION, to: IFACE}")]
struct ActionLong {
    action: ActionName,
    #[serde(default)]
    to: Option<String>,
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Action;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an action ({ACTION_EXPECTED}) or {{action: redirect, to: IFACE}}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Action, E> {
                Action::from_name(v).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Action, A::Error> {
                let long = ActionLong::deserialize(MapAccessDeserializer::new(map))?;
                match (long.action.0, long.to) {
                    (Action::Redirect(_), to) => Ok(Action::Redirect(to)),
                    (a, None) => Ok(a),
                    (a, Some(_)) => Err(de::Error::custom(format!(
                        "`to:` names a redirect interface, but the action is {a}; use `action: redirect` or drop `to:`"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The apps a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppList {
    /// Every IM app (never the unclassified class).
    All,
    Apps(Vec<String>),
}

impl<'de> Deserialize<'de> for AppList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AppList, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AppList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of app names, or `all`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AppList, E> {
                if v == "all" {
                    Ok(AppList::All)
                } else {
                    Err(E::custom(format!("expected a list of app names or `all`; for one app write [{v}]")))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AppList, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    out.push(name);
                }
                Ok(AppList::Apps(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping that keeps its keys in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OrderedMap<V>, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedMap<V>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

/// Verdict for flows that match no app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unclassified {
    #[default]
    Allow,
    Drop,
}

/// Handling of packets the data plane does not inspect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PassDrop {
    #[default]
    Pass,
    Drop,
}

impl PassDrop {
    pub fn config_value(self) -> u32 {
        match self {
            PassDrop::Pass => imfw_common::config::ACTION_PASS,
            PassDrop::Drop => imfw_common::config::ACTION_DROP,
        }
    }
}

/// What happens to packets that wait for the controller (pending flows, held segments of
/// monitored flows) while no controller runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControllerDown {
    /// They pass, uninspected and uncopied.
    Open,
    /// They are dropped (drop reason `controller_down`); senders retransmit once a controller
    /// is back.
    #[default]
    Closed,
}

impl ControllerDown {
    pub fn config_value(self) -> u32 {
        match self {
            ControllerDown::Open => imfw_common::config::ACTION_PASS,
            ControllerDown::Closed => imfw_common::config::ACTION_DROP,
        }
    }
}

/// One entry of `rules:`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a rule: a mapping with name, from, apps and action")]
pub struct Rule {
    pub name: String,
    pub from: Vec<Cidr>,
    pub apps: AppList,
    pub action: Action,
}

/// `defaults:` as written; absent keys are `None`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of default settings")]
pub(crate) struct DefaultsSection {
    pub action: Option<Action>,
    pub unclassified: Option<Unclassified>,
    pub inspect_packets: Option<i64>,
    pub unparsed: Option<PassDrop>,
    pub fragments: Option<PassDrop>,
    pub pending: Option<Unclassified>,
    pub controller_down: Option<ControllerDown>,
    pub learn_dns: Option<bool>,
    pub redirect_to: Option<String>,
}

/// The whole policy file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a policy: a mapping starting with `version: 1`")]
pub(crate) struct PolicyFile {
    pub version: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    pub defaults: DefaultsSection,
    #[serde(default, deserialize_with = "nullable")]
    pub apps: OrderedMap<Action>,
    #[serde(default, deserialize_with = "nullable")]
    pub rules: Vec<Rule>,
    #[serde(default, deserialize_with = "nullable")]
    pub catalogue: OrderedMap<CatalogueEntry>,
    #[serde(default, deserialize_with = "nullable")]
    pub content: imfw_monitor::content::model::ContentConfig,
    #[serde(default, deserialize_with = "nullable")]
    pub monitor: MonitorSection,
    #[serde(default, deserialize_with = "nullable")]
    pub observability: super::observability::ObservabilitySection,
}

/// What happens to a monitored stream that lost bytes for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnGap {
    /// Go on after the hole; the archive marks the flow's later records incomplete.
    #[default]
    Skip,
    /// Block the flow (drop verdict, TCP RST to both ends).
    Drop,
}

/// `monitor:`: the content path for flows with verdict `monitor`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of monitor settings: on_gap, hold, archive, archive_key, retention_days, max_flows, memory_mb")]
pub struct MonitorSection {
    pub on_gap: Option<OnGap>,
    /// Hold each segment until the content policy has read it (default true).
    pub hold: Option<bool>,
    /// Directory of the compliance archive.
    pub archive: Option<String>,
    /// The archive's sealing key file (created, mode 0600, when absent).
    pub archive_key: Option<String>,
    /// Whole segments older than this are deleted (0 or absent: kept forever).
    pub retention_days: Option<i64>,
    /// Monitored flows reassembled at once.
    pub max_flows: Option<i64>,
    /// Bytes held out of order, all flows together, in MiB.
    pub memory_mb: Option<i64>,
}
