//! The policy: which instant-messaging apps are allowed, dropped, monitored or redirected, for
//! which client networks.
//!
//! A policy is a YAML file (see `policy/default.yaml`). [`parse`] reads it with serde, then
//! checks everything the data plane would trip over later (unknown apps, duplicate rules,
//! capacity limits, signature conflicts with the built-in catalogue) and reports every problem
//! as `FILE:LINE:COL: message`. [`Policy::compile`] turns it into the contents of the maps.

mod compile;
mod error;
pub(crate) mod locate;
pub(crate) mod model;
mod observability;
#[cfg(test)]
mod tests;

use std::path::Path;

use imfw_common::app::{builtin_id, BUILTIN_APPS, CUSTOM_FIRST, MAX_APPS};
use sha2::{Digest, Sha256};

pub use compile::Compiled;
pub use error::{PolicyError, PolicyErrors};
pub(crate) use error::Source;
pub use model::{Action, AppList, Cidr, ControllerDown, Hex, PassDrop, Rule, Unclassified};
pub use observability::{KernelLog, Observability};

use crate::catalogue::{self, CatalogueEntry};
use locate::{index, join, Pos};
use model::PolicyFile;

/// The policy shipped with imfw.
pub fn default_policy_text() -> &'static str {
    include_str!("../../policy/default.yaml")
}

/// Highest `inspect_packets` the data plane's per-flow budget counters allow.
pub const INSPECT_PACKETS_MAX: i64 = 32;

/// `defaults:` with every absent key filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// Action for IM apps listed neither under `apps:` nor in a matching rule.
    pub action: Action,
    /// Verdict for flows identified as no app.
    pub unclassified: Unclassified,
    /// Payload packets inspected per direction.
    pub inspect_packets: u32,
    pub unparsed: PassDrop,
    pub fragments: PassDrop,
    /// What XDP does with a flow's packets while the controller decides it.
    pub pending: Unclassified,
    /// What XDP does with those packets while no controller runs (crashed, stopped, restarting).
    pub controller_down: ControllerDown,
    /// Whether the controller learns IM apps' addresses from DNS answers.
    pub learn_dns: bool,
    /// Interface for `redirect` actions that name none.
    pub redirect_to: Option<String>,
}

impl Default for Defaults {
    fn default() -> Defaults {
        Defaults {
            action: Action::Allow,
            unclassified: Unclassified::Allow,
            inspect_packets: 4,
            unparsed: PassDrop::Pass,
            fragments: PassDrop::Pass,
            pending: Unclassified::Allow,
            controller_down: ControllerDown::Closed,
            learn_dns: false,
            redirect_to: None,
        }
    }
}

/// A parsed and checked policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The file name errors are reported against.
    pub file: String,
    /// sha256 of the policy text, in hex.
    pub hash: String,
    pub defaults: Defaults,
    /// `apps:` in file order.
    pub apps: Vec<(String, Action)>,
    pub rules: Vec<Rule>,
    /// `catalogue:` in file order.
    pub catalogue: Vec<(String, CatalogueEntry)>,
    /// Apps the policy defines, with their ids (from `CUSTOM_FIRST`).
    pub custom_apps: Vec<(u16, String)>,
    /// `content:` compiled: the rules every message of a monitored flow goes through.
    pub content: std::sync::Arc<imfw_monitor::content::ContentPolicy>,
    pub monitor: Monitor,
    /// `observability:`: the Prometheus endpoint, the kernel log level.
    pub observability: Observability,
    source: Source,
}

/// `monitor:` with every absent key filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Monitor {
    pub on_gap: model::OnGap,
    /// Segments wait in XDP (dropped, then retransmitted by the sender) until the content
    /// policy has read them, so a blocked message never reaches the other side.
    pub hold: bool,
    pub archive: std::path::PathBuf,
    pub archive_key: std::path::PathBuf,
    /// 0: kept forever.
    pub retention_days: u32,
    pub max_flows: usize,
    pub memory_bytes: usize,
}

impl Default for Monitor {
    fn default() -> Monitor {
        Monitor {
            on_gap: model::OnGap::Skip,
            hold: true,
            archive: "/var/lib/imfw/archive".into(),
            archive_key: "/var/lib/imfw/archive.key".into(),
            retention_days: 0,
            max_flows: 16_384,
            memory_bytes: 256 << 20,
        }
    }
}

/// Checks `monitor:` and fills in its defaults.
fn monitor_settings(m: &model::MonitorSection, src: &Source, errs: &mut PolicyErrors) -> Monitor {
    let mut out = Monitor::default();
    if let Some(g) = m.on_gap {
        out.on_gap = g;
    }
    if let Some(h) = m.hold {
        out.hold = h;
    }
    for (key, value, slot) in [("archive", &m.archive, &mut out.archive), ("archive_key", &m.archive_key, &mut out.archive_key)] {
        if let Some(v) = value {
            if v.is_empty() || !v.starts_with('/') {
                errs.0.push(src.err(&join("monitor", key), format!("`{v}` is not an absolute path; expected one such as /var/lib/imfw/{key}")));
            } else {
                *slot = v.into();
            }
        }
    }
    let mut range = |key: &str, v: Option<i64>, lo: i64, hi: i64| -> Option<i64> {
        let v = v?;
        if (lo..=hi).contains(&v) {
            Some(v)
        } else {
            errs.0.push(src.err(&join("monitor", key), format!("{key} {v} is out of range; expected {lo} to {hi}")));
            None
        }
    };
    if let Some(d) = range("retention_days", m.retention_days, 0, 36_500) {
        out.retention_days = u32::try_from(d).unwrap_or(0);
    }
    if let Some(n) = range("max_flows", m.max_flows, 1, 1_000_000) {
        out.max_flows = usize::try_from(n).unwrap_or(1);
    }
    if let Some(mb) = range("memory_mb", m.memory_mb, 1, 65_536) {
        out.memory_bytes = usize::try_from(mb).unwrap_or(1) << 20;
    }
    out
}


impl Policy {
    /// The map contents. A policy that [`parse`] accepted always compiles.
    pub fn compile(&self) -> Result<Compiled, PolicyErrors> {
        compile::compile(self, catalogue::builtin()?)
    }

    /// Whether any flow can get the verdict `monitor` (then the content path and its archive
    /// are needed).
    pub fn monitors(&self) -> bool {
        self.defaults.action == Action::Monitor
            || self.apps.iter().any(|(_, a)| *a == Action::Monitor)
            || self.rules.iter().any(|r| r.action == Action::Monitor)
    }

    /// Every app id and name this policy knows (built-in and custom).
    pub fn app_names(&self) -> Vec<(u16, String)> {
        compile::app_table(&self.custom_apps)
    }

    /// Gives the custom apps the ids they have in the policy in force (`running`: its id and
    /// name table), so that flows, counters and events keep their meaning across a reload.
    /// Apps new to this policy take ids the running policy does not use (an app it drops keeps
    /// its id out of use for this reload), then, only when those run out, the ids it left.
    /// Built-in ids never change. Call before [`Policy::compile`].
    pub fn keep_app_ids(&mut self, running: &[(u16, String)]) {
        let before: std::collections::HashMap<&str, u16> =
            running.iter().filter(|(id, _)| *id >= CUSTOM_FIRST).map(|(id, n)| (n.as_str(), *id)).collect();
        let mut used: std::collections::HashSet<u16> = std::collections::HashSet::new();
        let mut kept = vec![None; self.custom_apps.len()];
        for (slot, (_, name)) in kept.iter_mut().zip(&self.custom_apps) {
            if let Some(&id) = before.get(name.as_str()) {
                *slot = Some(id);
                used.insert(id);
            }
        }
        let taken: std::collections::HashSet<u16> = before.values().copied().collect();
        let mut fresh = (CUSTOM_FIRST..MAX_APPS).filter(|id| !taken.contains(id));
        let mut left = (CUSTOM_FIRST..MAX_APPS).filter(|id| taken.contains(id));
        for (slot, (id, _)) in kept.iter().zip(self.custom_apps.iter_mut()) {
            *id = match slot {
                Some(k) => *k,
                // parse() allows at most MAX_APPS - CUSTOM_FIRST custom apps, so an id is left.
                None => match fresh.next().or_else(|| left.find(|i| !used.contains(i))) {
                    Some(i) => i,
                    None => *id,
                },
            };
            used.insert(*id);
        }
    }
}

/// Reads and checks a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| PolicyError::new(&file, 0, 0, format!("cannot read the policy file: {e}")))?;
    parse(&text, &file)
}

/// Parses and checks policy text, running everything `imfw run` would except the interface
/// lookups: the policy is compiled too, so that capacity limits and signature conflicts show.
#[expect(clippy::too_many_lines, reason = "one section of the file after the other")]
pub fn parse(source: &str, file_name: &str) -> Result<Policy, PolicyErrors> {
    let builtin = catalogue::builtin()?;
    let (src, file): (Source, PolicyFile) =
        Source::parse(source, file_name, "a policy starts with `version: 1`")?;
    let mut errs = PolicyErrors::default();

    match file.version {
        Some(1) => {}
        None => errs.0.push(PolicyError::at(
            file_name,
            Pos::START,
            "missing `version: 1`; a policy names its schema version, and 1 is the only one",
        )),
        Some(v) => errs.0.push(src.err("version", format!("unsupported policy version {v}; expected `version: 1`"))),
    }

    let d = file.defaults;
    let mut defaults = Defaults::default();
    if let Some(a) = d.action {
        defaults.action = a;
    }
    if let Some(u) = d.unclassified {
        defaults.unclassified = u;
    }
    if let Some(n) = d.inspect_packets {
        match u32::try_from(n) {
            Ok(v) if (1..=INSPECT_PACKETS_MAX).contains(&n) => defaults.inspect_packets = v,
            _ => errs.0.push(src.err(
                "defaults.inspect_packets",
                format!("inspect_packets {n} is out of range; expected 1 to {INSPECT_PACKETS_MAX}"),
            )),
        }
    }
    if let Some(u) = d.unparsed {
        defaults.unparsed = u;
    }
    if let Some(f) = d.fragments {
        defaults.fragments = f;
    }
    if let Some(p) = d.pending {
        defaults.pending = p;
    }
    if let Some(c) = d.controller_down {
        defaults.controller_down = c;
    }
    if let Some(l) = d.learn_dns {
        defaults.learn_dns = l;
    }
    if let Some(to) = d.redirect_to {
        if let Err(m) = check_iface(&to) {
            errs.0.push(src.err("defaults.redirect_to", m));
        }
        defaults.redirect_to = Some(to);
    }

    catalogue::validate(&file.catalogue.0, &src, "catalogue", false, &mut errs);
    let mut custom_apps = Vec::new();
    for (name, _) in &file.catalogue.0 {
        if builtin_id(name).is_some() || !catalogue::valid_app_name(name) || name == "all" {
            continue;
        }
        let id = usize::from(CUSTOM_FIRST) + custom_apps.len();
        match u16::try_from(id) {
            Ok(id) if id < MAX_APPS => custom_apps.push((id, name.clone())),
            _ => errs.0.push(src.err_key(
                &join("catalogue", name),
                format!("too many custom apps: at most {}", MAX_APPS - CUSTOM_FIRST),
            )),
        }
    }
    let known = |n: &str| builtin_id(n).is_some() || custom_apps.iter().any(|(_, c)| c == n);

    for (name, _) in &file.apps.0 {
        if !known(name) {
            errs.0.push(src.err_key(&join("apps", name), unknown_app(name)));
        }
    }

    check_rules(&file.rules, &defaults, &src, &known, &mut errs);

    let content = match imfw_monitor::content::ContentPolicy::compile(&file.content) {
        Ok(c) => c,
        Err(e) => {
            let path = e.rule_index().map_or_else(|| "content".to_owned(), |i| index("content.rules", i));
            errs.0.push(src.err(&path, e.to_string()));
            imfw_monitor::content::ContentPolicy::default()
        }
    };
    let monitor = monitor_settings(&file.monitor, &src, &mut errs);
    let observability = observability::settings(&file.observability, &src, &mut errs);

    let policy = Policy {
        file: file_name.to_owned(),
        hash: sha256_hex(source),
        defaults,
        apps: file.apps.0,
        rules: file.rules,
        catalogue: file.catalogue.0,
        custom_apps,
        content: std::sync::Arc::new(content),
        monitor,
        observability,
        source: src,
    };
    // Compile even when there are errors already, so that one run lists them all; compilation
    // skips what the checks above rejected.
    if let Err(e) = compile::compile(&policy, builtin) {
        errs.0.extend(e.0);
    }
    errs.into_result()?;
    Ok(policy)
}

fn check_rules(rules: &[Rule], defaults: &Defaults, src: &Source, known: &dyn Fn(&str) -> bool, errs: &mut PolicyErrors) {
    // What a rule does, independent of how it is written: for finding repeated rules.
    type Canon = (Vec<Cidr>, Option<Vec<String>>, Action);
    let mut seen: Vec<Canon> = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let rp = index("rules", i);
        if rule.name.trim().is_empty() {
            errs.0.push(src.err(&join(&rp, "name"), "a rule needs a non-empty name"));
        } else if let Some(j) = rules[..i].iter().position(|r| r.name == rule.name) {
            errs.0.push(src.err(
                &join(&rp, "name"),
                format!(
                    "duplicate rule name `{}`: rule {} at line {} already has it; rule names must be unique",
                    rule.name,
                    j + 1,
                    src.locs.at_value(&index("rules", j)).line
                ),
            ));
        }
        if rule.from.is_empty() {
            errs.0.push(src.err(&join(&rp, "from"), "`from:` is empty; expected at least one network such as 192.0.2.0/24"));
        }
        let apps = match &rule.apps {
            AppList::All => None,
            AppList::Apps(list) => {
                if list.is_empty() {
                    errs.0.push(src.err(&join(&rp, "apps"), "`apps:` is empty; expected app names or `all`"));
                }
                for (k, name) in list.iter().enumerate() {
                    if !known(name) {
                        errs.0.push(src.err(&index(&join(&rp, "apps"), k), unknown_app(name)));
                    }
                }
                let mut l = list.clone();
                l.sort();
                l.dedup();
                Some(l)
            }
        };
        let mut from = rule.from.clone();
        from.sort();
        from.dedup();
        let action = match &rule.action {
            Action::Redirect(None) => Action::Redirect(defaults.redirect_to.clone()),
            a => a.clone(),
        };
        let canon = (from, apps, action);
        if let Some(j) = seen.iter().position(|c| *c == canon) {
            errs.0.push(src.err(
                &rp,
                format!(
                    "rule `{}` repeats rule `{}` at line {}: same from, apps and action; remove one",
                    rule.name,
                    rules[j].name,
                    src.locs.at_value(&index("rules", j)).line
                ),
            ));
        }
        seen.push(canon);
    }
}

/// An error message for an app name that is neither built-in nor defined in the policy.
fn unknown_app(name: &str) -> String {
    match name {
        "all" => return "`all` is not an app; in a rule write `apps: all`, under `apps:` set `defaults.action`".to_owned(),
        "unclassified" | "none" => {
            return format!("`{name}` is not an app; set `defaults.unclassified` for flows of no app");
        }
        _ => {}
    }
    let hint = BUILTIN_APPS
        .iter()
        .map(|(_, n)| (edit_distance(name, n), *n))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| format!("; did you mean `{n}`?"))
        .unwrap_or_default();
    let some: Vec<&str> = BUILTIN_APPS.iter().take(6).map(|(_, n)| *n).collect();
    format!(
        "unknown app `{name}`{hint} (built-in apps include {}, ...; define new apps under catalogue:)",
        some.join(", ")
    )
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Checks an interface name the way the kernel does (`dev_valid_name`).
pub(crate) fn check_iface(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not an interface name: expected 1 to 15 characters without `/`, `:` or spaces"
        ))
    }
}

fn sha256_hex(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(text.as_bytes()) {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}
