//! Compilation of a checked policy and the catalogues into the data plane's map contents.

use std::{
    collections::{hash_map::Entry, HashMap},
    net::IpAddr,
};

use imfw_common::{
    app::{APP_ECH, BUILTIN_APPS, MAX_APPS},
    config::{Config, SRC_NETS_V4, SRC_NETS_V6},
    flow::{DIR_CLIENT, DIR_SERVER},
    maps::{ADDR_MAX, NAMES_MAX, POLICY_ENTRIES, REDIRECT_SLOTS, SIGS_MAX, SRC_CLASSES},
    matcher::{
        domain_hash, domain_hash_from, name_seed, AppMatch, NameKey, PolicyAction, SigClass, SigKey, SigValue, SrcClass, LEN_NONE, SIG_LAST_BYTE,
        MAX_SIG_CLASSES, SIG_CLIENT_FIRST, SigPrefilter, SIG_LEN, SIG_LEN_ATLEAST, SIG_OFFSET_MAX,
    },
    verdict::Verdict,
};

use super::{
    check_iface,
    locate::{index, join},
    model::{Action, AppList, Cidr, Unclassified},
    PolicyErrors, Policy, Source,
};
use crate::catalogue::{normalize_domain, Catalogue, CatalogueEntry, Direction, Signature};

/// The contents of the data plane's maps for one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    pub config: Config,
    /// Every known app id and name (built-in and custom), by id.
    pub apps: Vec<(u16, String)>,
    /// Signature shapes; the index is the class id.
    pub sig_classes: Vec<SigClass>,
    pub sigs: Vec<(SigKey, SigValue)>,
    /// Which shapes a payload's first bytes leave possible (from `sig_classes` and `sigs`).
    pub sig_pre: SigPrefilter,
    /// Generation 0's keys (see `name_seed`).
    pub names: Vec<(NameKey, AppMatch)>,
    /// The domain of each entry of `names`, for the keys of generation 1.
    pub name_domains: Vec<String>,
    /// (prefix length, network, app).
    pub addr4: Vec<(u32, [u8; 4], AppMatch)>,
    /// STUN attribute type -> app.
    pub stun: Vec<(u32, AppMatch)>,
    pub addr6: Vec<(u32, [u8; 16], AppMatch)>,
    /// Rule source networks and their classes (from 1; 0 is "in no rule network").
    pub src4: Vec<(u32, [u8; 4], SrcClass)>,
    pub src6: Vec<(u32, [u8; 16], SrcClass)>,
    /// `POLICY_ENTRIES` rows: index `class * MAX_APPS + app`.
    pub policy: Vec<PolicyAction>,
    /// Devmap slot -> interface name.
    pub redirect_ifaces: Vec<String>,
    /// sha256 of the policy text.
    pub hash: String,
}

impl Compiled {
    pub fn app_name(&self, id: u16) -> Option<&str> {
        self.apps.iter().find(|(i, _)| *i == id).map(|(_, n)| n.as_str())
    }

    pub fn app_id(&self, name: &str) -> Option<u16> {
        self.apps.iter().find(|(_, n)| n == name).map(|(i, _)| *i)
    }

    /// The source class of a client address, as the kernel's longest-prefix match finds it.
    pub fn src_class(&self, client: IpAddr) -> u32 {
        let best = match client {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.src4
                    .iter()
                    .filter(|(len, net, _)| prefix_match32(a, u32::from_be_bytes(*net), *len))
                    .max_by_key(|(len, ..)| *len)
                    .map(|(.., c)| c.class)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.src6
                    .iter()
                    .filter(|(len, net, _)| prefix_match128(a, u128::from_be_bytes(*net), *len))
                    .max_by_key(|(len, ..)| *len)
                    .map(|(.., c)| c.class)
            }
        };
        best.unwrap_or(0)
    }

    /// The policy entry for `app` in source class `class`.
    pub fn action(&self, class: u32, app: u16) -> PolicyAction {
        let i = class as usize * usize::from(MAX_APPS) + usize::from(app);
        self.policy.get(i).copied().unwrap_or_default()
    }

    /// Whether any flow can get the verdict `monitor` (the content path needs its archive).
    pub fn monitors(&self) -> bool {
        self.policy.iter().any(|a| a.verdict == Verdict::Monitor as u8)
    }

    /// What the data plane does with a flow of `app` opened by `client`.
    pub fn decide(&self, client: IpAddr, app: u16) -> PolicyAction {
        self.action(self.src_class(client), app)
    }
}

fn prefix_match32(a: u32, net: u32, len: u32) -> bool {
    let m = u32::MAX.checked_shl(32u32.saturating_sub(len)).unwrap_or(0);
    a & m == net
}

fn prefix_match128(a: u128, net: u128, len: u32) -> bool {
    let m = u128::MAX.checked_shl(128u32.saturating_sub(len)).unwrap_or(0);
    a & m == net
}

/// One catalogue file and the path of its app mapping.
struct Part<'a> {
    src: &'a Source,
    prefix: &'static str,
    entries: &'a [(String, CatalogueEntry)],
}

/// The first signature seen for a key.
struct SigOrigin {
    app: u16,
    value: SigValue,
    desc: String,
    at: String,
}

fn verdict_action(v: Verdict, slot: u8) -> PolicyAction {
    PolicyAction { verdict: v as u8, redirect_slot: slot, _pad: 0 }
}

/// Whether a signature passed its own checks; invalid ones are already reported.
fn sig_usable(sig: &Signature) -> bool {
    (0..=i64::from(SIG_OFFSET_MAX)).contains(&sig.offset)
        && sig.mask.as_ref().is_none_or(|m| m.0.len() == sig.bytes.0.len())
        && (sig.mask16().iter().any(|b| *b != 0) || sig.size_only_allowed())
}

struct Builder<'a> {
    errs: PolicyErrors,
    ids: HashMap<&'a str, u16>,
    out: Compiled,
}

impl<'a> Builder<'a> {
    fn signatures(&mut self, parts: &[Part<'a>]) {
        let mut shapes: Vec<(u16, [u8; SIG_LEN])> = Vec::new();
        let mut seen: HashMap<SigKey, SigOrigin> = HashMap::new();
        let mut overflow = false;
        for part in parts {
            for (name, entry) in part.entries {
                let Some(&app) = self.ids.get(name.as_str()) else { continue };
                let list = join(&join(part.prefix, name), "signatures");
                for (i, sig) in entry.signatures.iter().enumerate() {
                    if !sig_usable(sig) {
                        continue;
                    }
                    let path = index(&list, i);
                    let Ok(offset) = u16::try_from(sig.offset) else { continue };
                    let mask = sig.mask16();
                    let class = if let Some(c) = shapes.iter().position(|s| *s == (offset, mask)) {
                        c
                    } else {
                        if shapes.len() >= MAX_SIG_CLASSES as usize {
                            if !overflow {
                                overflow = true;
                                self.errs.0.push(part.src.err(
                                    &path,
                                    format!(
                                        "too many signature shapes: the data plane checks at most {MAX_SIG_CLASSES} distinct \
                                         (offset, mask) pairs, built-in catalogue included, and signature `{}` adds another \
                                         (offset {offset}, mask {}); reuse the offset and mask of an existing signature",
                                        sig.name,
                                        mask_text(&mask)
                                    ),
                                ));
                            }
                            continue;
                        }
                        shapes.push((offset, mask));
                        // An all-zero mask is a size-only signature (a handshake of random
                        // bytes): it needs one byte present, its checks do the rest.
                        let len = mask.iter().rposition(|b| *b != 0).map_or(1, |p| p + 1);
                        self.out.sig_classes.push(SigClass::new(offset, len as u16, mask));
                        shapes.len() - 1
                    };
                    let value = sig_value(sig, app, offset);
                    let dirs: &[u8] = match sig.direction {
                        Direction::Client => &[DIR_CLIENT],
                        Direction::Server => &[DIR_SERVER],
                        Direction::Any => &[DIR_CLIENT, DIR_SERVER],
                    };
                    for &dir in dirs {
                        let key = SigKey { class: class as u16, dir, generation: 0, bytes: sig.masked16() };
                        match seen.entry(key) {
                            Entry::Vacant(v) => {
                                v.insert(SigOrigin {
                                    app,
                                    value,
                                    desc: format!("signature `{}` of app `{name}`", sig.name),
                                    at: part.src.where_is(&path),
                                });
                                self.out.sigs.push((key, value));
                                if let Some(shape) = self.out.sig_classes.get_mut(class) {
                                    shape.admit(&key.bytes);
                                }
                            }
                            Entry::Occupied(o) => {
                                let prev = o.get();
                                if prev.value == value {
                                    continue;
                                }
                                let msg = if prev.app == app {
                                    format!(
                                        "signature `{}` of app `{name}` matches the same bytes as {} ({}) but with \
                                         different checks; merge them into one signature",
                                        sig.name, prev.desc, prev.at
                                    )
                                } else {
                                    format!(
                                        "signature `{}` of app `{name}` matches the same bytes as {} ({}); a payload \
                                         cannot belong to both apps",
                                        sig.name, prev.desc, prev.at
                                    )
                                };
                                self.errs.0.push(part.src.err(&path, msg));
                            }
                        }
                    }
                }
            }
        }
        if self.out.sigs.len() > SIGS_MAX as usize {
            let n = self.out.sigs.len();
            self.errs.0.push(parts[parts.len() - 1].src.err(
                "catalogue",
                format!("{n} signature entries; the data plane holds at most {SIGS_MAX}"),
            ));
        }
    }

    fn names_and_addresses(&mut self, parts: &[Part<'a>]) {
        let mut domains: HashMap<String, (u16, String)> = HashMap::new();
        let mut hashes: HashMap<u64, String> = HashMap::new();
        let mut nets: HashMap<Cidr, (u16, String)> = HashMap::new();
        for part in parts {
            for (name, entry) in part.entries {
                let Some(&app) = self.ids.get(name.as_str()) else { continue };
                let base = join(part.prefix, name);
                let dl = join(&base, "domains");
                for (i, d) in entry.domains.iter().enumerate() {
                    let Ok(d) = normalize_domain(d) else { continue };
                    let path = index(&dl, i);
                    match domains.get(&d) {
                        Some((a, _)) if *a == app => continue,
                        Some((a, at)) => {
                            let other = self.app_label(*a);
                            self.errs.0.push(part.src.err(
                                &path,
                                format!("domain `{d}` of app `{name}` already belongs to app `{other}` ({at}); a domain can belong to one app"),
                            ));
                            continue;
                        }
                        None => {}
                    }
                    // Both generations' hashes (see `name_seed`) share the map: all must differ.
                    let hash = domain_hash(&d);
                    let hash1 = domain_hash_from(name_seed(1), &d);
                    if let Some(other) = hashes.get(&hash).or_else(|| hashes.get(&hash1)).or_else(|| (hash == hash1).then_some(&d)) {
                        self.errs.0.push(part.src.err(
                            &path,
                            format!("domain `{d}` has the same hash as `{other}`; the data plane cannot tell them apart"),
                        ));
                        continue;
                    }
                    hashes.insert(hash, d.clone());
                    hashes.insert(hash1, d.clone());
                    self.out.name_domains.push(d.clone());
                    domains.insert(d, (app, part.src.where_is(&path)));
                    self.out.names.push((NameKey { hash }, AppMatch { app, _pad: 0 }));
                }
                let sl = join(&base, "stun_attributes");
                for (i, ty) in entry.stun_attributes.iter().enumerate() {
                    let ty = u32::from(*ty);
                    match self.out.stun.iter().find(|(t, _)| *t == ty) {
                        Some((_, m)) if m.app == app => {}
                        Some((_, m)) => {
                            let other = self.app_label(m.app);
                            self.errs.0.push(part.src.err(
                                &index(&sl, i),
                                format!("STUN attribute {ty:#06x} of app `{name}` already belongs to app `{other}`; an attribute can belong to one app"),
                            ));
                        }
                        None => self.out.stun.push((ty, AppMatch { app, _pad: 0 })),
                    }
                }
                let al = join(&base, "addresses");
                for (i, net) in entry.addresses.iter().enumerate() {
                    let path = index(&al, i);
                    match nets.get(net) {
                        Some((a, _)) if *a == app => continue,
                        Some((a, at)) => {
                            let other = self.app_label(*a);
                            self.errs.0.push(part.src.err(
                                &path,
                                format!("network {net} of app `{name}` already belongs to app `{other}` ({at}); a network can belong to one app"),
                            ));
                            continue;
                        }
                        None => {}
                    }
                    nets.insert(*net, (app, part.src.where_is(&path)));
                    let m = AppMatch { app, _pad: 0 };
                    if net.is_v4() {
                        self.out.addr4.push((u32::from(net.len), net.v4_octets(), m));
                    } else {
                        self.out.addr6.push((u32::from(net.len), net.v6_octets(), m));
                    }
                }
            }
        }
        let last = parts[parts.len() - 1].src;
        if self.out.stun.len() > imfw_common::maps::STUN_MAX as usize {
            let n = self.out.stun.len();
            self.errs.0.push(last.err("catalogue", format!("{n} STUN attributes; the data plane holds at most {}", imfw_common::maps::STUN_MAX)));
        }
        if self.out.names.len() > NAMES_MAX as usize {
            let n = self.out.names.len();
            self.errs.0.push(last.err("catalogue", format!("{n} domains; the data plane holds at most {NAMES_MAX}")));
        }
        for (family, n) in [("IPv4", self.out.addr4.len()), ("IPv6", self.out.addr6.len())] {
            if n > ADDR_MAX as usize {
                self.errs.0.push(last.err("catalogue", format!("{n} {family} app networks; the data plane holds at most {ADDR_MAX}")));
            }
        }
    }

    fn app_label(&self, id: u16) -> &str {
        self.out.app_name(id).unwrap_or("?")
    }
}

fn mask_text(mask: &[u8; SIG_LEN]) -> String {
    let len = mask.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    mask[..len].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

fn sig_value(sig: &Signature, app: u16, offset: u16) -> SigValue {
    let mut flags = 0;
    if sig.client_first {
        flags |= SIG_CLIENT_FIRST;
    }
    // The byte match already needs the payload to reach past the signature; saying so in
    // min_len lets the checks stand on their own.
    let min_len = sig.min_len.max(offset + sig.bytes.0.len() as u16);
    let mut v = SigValue {
        app,
        flags,
        min_len,
        len_off: 0,
        len_kind: LEN_NONE,
        len_mul: 0,
        len_add: 0,
        max_len: sig.max_len.unwrap_or(0),
        port_lo: sig.ports.map_or(0, |p| p.lo),
        port_hi: sig.ports.map_or(0, |p| p.hi),
        last_byte: sig.last_byte.unwrap_or(0),
        _pad: 0,
    };
    if sig.last_byte.is_some() {
        v.flags |= SIG_LAST_BYTE;
    }
    if let Some(len) = &sig.length {
        if len.at_least {
            v.flags |= SIG_LEN_ATLEAST;
        }
        // Ranges were checked with the catalogue; clamping keeps a bad value from wrapping.
        v.len_off = u16::try_from(len.offset).unwrap_or(0);
        v.len_kind = len.size.kind();
        v.len_mul = u8::try_from(len.mul).unwrap_or(1);
        v.len_add = i16::try_from(len.add).unwrap_or(0);
    }
    v
}

/// Everything known about one policy's apps, by id.
pub(crate) fn app_table(custom: &[(u16, String)]) -> Vec<(u16, String)> {
    BUILTIN_APPS
        .iter()
        .map(|(id, n)| (*id, (*n).to_owned()))
        .chain(custom.iter().cloned())
        .collect()
}

pub(crate) fn compile(policy: &Policy, builtin: &Catalogue) -> Result<Compiled, PolicyErrors> {
    let apps = app_table(&policy.custom_apps);
    let mut b = Builder {
        errs: PolicyErrors::default(),
        ids: BUILTIN_APPS
            .iter()
            .map(|(id, n)| (*n, *id))
            .chain(policy.custom_apps.iter().map(|(id, n)| (n.as_str(), *id)))
            .collect(),
        out: Compiled {
            config: Config {
                inspect_packets: policy.defaults.inspect_packets,
                unparsed_action: policy.defaults.unparsed.config_value(),
                fragment_action: policy.defaults.fragments.config_value(),
                sig_classes: 0,
                pending_action: match policy.defaults.pending {
                    Unclassified::Allow => imfw_common::config::ACTION_PASS,
                    Unclassified::Drop => imfw_common::config::ACTION_DROP,
                },
                learn_dns: u32::from(policy.defaults.learn_dns),
                monitor_hold: u32::from(policy.monitor.hold),
                controller_down: policy.defaults.controller_down.config_value(),
                version: 0,
                generation: 0,
                kernel_log: policy.observability.kernel_log.config_value(),
                src_nets: 0,
            },
            apps,
            sig_classes: Vec::new(),
            sig_pre: SigPrefilter::default(),
            sigs: Vec::new(),
            names: Vec::new(),
            name_domains: Vec::new(),
            addr4: Vec::new(),
            stun: Vec::new(),
            addr6: Vec::new(),
            src4: Vec::new(),
            src6: Vec::new(),
            policy: Vec::new(),
            redirect_ifaces: Vec::new(),
            hash: policy.hash.clone(),
        },
    };
    let parts = [
        Part { src: &builtin.source, prefix: "", entries: &builtin.entries },
        Part { src: &policy.source, prefix: "catalogue", entries: &policy.catalogue },
    ];
    b.signatures(&parts);
    b.out.config.sig_classes = b.out.sig_classes.len() as u32;
    b.out.sig_pre = SigPrefilter::build(&b.out.sig_classes, b.out.sigs.iter().map(|(k, v)| (k, v)));
    b.names_and_addresses(&parts);
    let prefixes = b.source_classes(policy);
    let actions = b.actions(policy);
    b.rows(policy, &prefixes, &actions);
    b.out.config.src_nets = if b.out.src4.is_empty() { 0 } else { SRC_NETS_V4 } | if b.out.src6.is_empty() { 0 } else { SRC_NETS_V6 };
    b.errs.into_result()?;
    Ok(b.out)
}

/// Every action of a policy, resolved to what the data plane stores.
struct Actions {
    default: PolicyAction,
    per_app: HashMap<u16, PolicyAction>,
    rules: Vec<PolicyAction>,
}

impl Builder<'_> {
    /// Numbers each distinct rule network (in order of first appearance) as a source class.
    fn source_classes(&mut self, policy: &Policy) -> Vec<Cidr> {
        let mut prefixes: Vec<Cidr> = Vec::new();
        let limit = (SRC_CLASSES - 1) as usize;
        'rules: for (ri, rule) in policy.rules.iter().enumerate() {
            for (j, net) in rule.from.iter().enumerate() {
                if prefixes.contains(net) {
                    continue;
                }
                if prefixes.len() >= limit {
                    self.errs.0.push(policy.source.err(
                        &index(&join(&index("rules", ri), "from"), j),
                        format!(
                            "too many source networks: rules may name at most {limit} distinct networks, and {net} \
                             would be one more; merge networks into wider prefixes"
                        ),
                    ));
                    break 'rules;
                }
                prefixes.push(*net);
            }
        }
        for (i, net) in (1u32..).zip(&prefixes) {
            let class = SrcClass { class: i };
            if net.is_v4() {
                self.out.src4.push((u32::from(net.len), net.v4_octets(), class));
            } else {
                self.out.src6.push((u32::from(net.len), net.v6_octets(), class));
            }
        }
        prefixes
    }

    /// Resolves every action in file order, so that redirect slots are numbered as the file
    /// reads.
    fn actions(&mut self, policy: &Policy) -> Actions {
        let src = &policy.source;
        let mut ifaces: Vec<String> = Vec::new();
        let mut resolve = |action: &Action, path: &str, errs: &mut PolicyErrors| -> PolicyAction {
            let Action::Redirect(to) = action else {
                return verdict_action(action.verdict(), 0);
            };
            let Some(iface) = to.as_ref().or(policy.defaults.redirect_to.as_ref()) else {
                errs.0.push(src.err(
                    path,
                    "redirect needs an interface: write `{action: redirect, to: IFACE}` or set `defaults.redirect_to`",
                ));
                return verdict_action(Verdict::Redirect, 0);
            };
            if to.is_some() {
                if let Err(m) = check_iface(iface) {
                    errs.0.push(src.err(&join(path, "to"), m));
                }
            }
            let slot = if let Some(s) = ifaces.iter().position(|i| i == iface) {
                s
            } else {
                if ifaces.len() >= REDIRECT_SLOTS as usize {
                    errs.0.push(src.err(
                        path,
                        format!("too many redirect interfaces: at most {REDIRECT_SLOTS}, and `{iface}` would be one more"),
                    ));
                    return verdict_action(Verdict::Redirect, 0);
                }
                ifaces.push(iface.clone());
                ifaces.len() - 1
            };
            verdict_action(Verdict::Redirect, slot as u8)
        };
        let default = resolve(&policy.defaults.action, "defaults.action", &mut self.errs);
        let mut per_app: HashMap<u16, PolicyAction> = HashMap::new();
        for (name, action) in &policy.apps {
            let pa = resolve(action, &join("apps", name), &mut self.errs);
            if let Some(&id) = self.ids.get(name.as_str()) {
                per_app.entry(id).or_insert(pa);
            }
        }
        let rules = (0..policy.rules.len())
            .map(|ri| resolve(&policy.rules[ri].action, &join(&index("rules", ri), "action"), &mut self.errs))
            .collect();
        self.out.redirect_ifaces = ifaces;
        Actions { default, per_app, rules }
    }

    /// Fills the policy table: for each source class and app, the first applicable rule naming
    /// the app, else the app's entry under `apps:`, else the default.
    fn rows(&mut self, policy: &Policy, prefixes: &[Cidr], actions: &Actions) {
        let n_apps = usize::from(MAX_APPS);
        let mut known = vec![false; n_apps];
        for (id, _) in &self.out.apps {
            if let Some(k) = known.get_mut(usize::from(*id)) {
                *k = true;
            }
        }
        let rule_apps: Vec<Vec<bool>> = policy
            .rules
            .iter()
            .map(|rule| {
                let mut set = vec![false; n_apps];
                match &rule.apps {
                    AppList::All => set.clone_from(&known),
                    AppList::Apps(list) => {
                        for n in list {
                            if let Some(s) = self.ids.get(n.as_str()).and_then(|id| set.get_mut(usize::from(*id))) {
                                *s = true;
                            }
                        }
                    }
                }
                // `all` never covers the unclassified class, nor hidden names (`ech`), which
                // are not IM: a rule covers those only by naming them.
                set[0] = false;
                if let (AppList::All, Some(s)) = (&rule.apps, set.get_mut(usize::from(APP_ECH))) {
                    *s = false;
                }
                set
            })
            .collect();
        let unclassified = verdict_action(
            match policy.defaults.unclassified {
                Unclassified::Allow => Verdict::Allow,
                Unclassified::Drop => Verdict::Drop,
            },
            0,
        );
        // Flows with hidden names are allowed unless the policy names `ech`: `defaults.action`
        // is about IM apps, and most browsers send Encrypted Client Hello (or its GREASE form).
        let allow = verdict_action(Verdict::Allow, 0);
        self.out.policy = vec![PolicyAction::default(); POLICY_ENTRIES as usize];
        for class in 0..SRC_CLASSES as usize {
            // The kernel picks the longest rule network holding the client, so every rule with a
            // network around that one applies; rules only inside it belong to longer classes.
            // Classes no network uses get class 0's row.
            let applicable: Vec<usize> = match class.checked_sub(1).and_then(|i| prefixes.get(i)) {
                None => Vec::new(),
                Some(p) => (0..policy.rules.len())
                    .filter(|&r| policy.rules[r].from.iter().any(|q| q.contains(p)))
                    .collect(),
            };
            for (app, id) in (0..n_apps).zip(0u16..) {
                let pa = if app == 0 {
                    unclassified
                } else if !known[app] {
                    actions.default
                } else {
                    applicable
                        .iter()
                        .find(|&&r| rule_apps[r][app])
                        .map(|&r| actions.rules[r])
                        .or_else(|| actions.per_app.get(&id).copied())
                        .unwrap_or(if id == APP_ECH { allow } else { actions.default })
                };
                self.out.policy[class * n_apps + app] = pa;
            }
        }
    }
}
