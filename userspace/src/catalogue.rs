//! Detection data: byte signatures, domains and server addresses per app.
//!
//! The built-in catalogue is `catalogue/builtin.yaml`, embedded in the binary. A policy's
//! `catalogue:` section has the same format: its entries for built-in apps add to the built-in
//! data, and its other entries define new apps.

use std::sync::OnceLock;

use imfw_common::{
    app::builtin_id,
    matcher::{SCRATCH_LEN, SIG_LEN, SIG_OFFSET_MAX},
};
use serde::Deserialize;

use crate::policy::{
    locate::{index, join},
    model::{nullable, Cidr, Hex, OrderedMap},
    PolicyErrors, Source,
};

/// The name built-in catalogue errors are reported against.
pub const BUILTIN_FILE: &str = "builtin.yaml";

/// The embedded built-in catalogue.
pub fn builtin_text() -> &'static str {
    include_str!("../catalogue/builtin.yaml")
}

/// Which payloads a signature applies to, relative to the flow's client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Client,
    Server,
    /// Both directions.
    #[default]
    Any,
}

/// Width and byte order of a length field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum LenSize {
    #[serde(rename = "u8")]
    U8,
    #[serde(rename = "u16be")]
    U16Be,
    #[serde(rename = "u16le")]
    U16Le,
    #[serde(rename = "u32be")]
    U32Be,
    #[serde(rename = "u32le")]
    U32Le,
}

impl LenSize {
    pub fn width(self) -> usize {
        match self {
            LenSize::U8 => 1,
            LenSize::U16Be | LenSize::U16Le => 2,
            LenSize::U32Be | LenSize::U32Le => 4,
        }
    }

    /// The data plane's `LEN_*` number.
    pub fn kind(self) -> u8 {
        use imfw_common::matcher::{LEN_U16BE, LEN_U16LE, LEN_U32BE, LEN_U32LE, LEN_U8};
        match self {
            LenSize::U8 => LEN_U8,
            LenSize::U16Be => LEN_U16BE,
            LenSize::U16Le => LEN_U16LE,
            LenSize::U32Be => LEN_U32BE,
            LenSize::U32Le => LEN_U32LE,
        }
    }
}

fn one() -> i64 {
    1
}

/// A length field the payload length must agree with: `len == field * mul + add`
/// (or `>=` with `at_least`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a length field {offset: N, size: u8|u16be|u16le|u32be|u32le}")]
pub struct LengthField {
    pub offset: i64,
    pub size: LenSize,
    #[serde(default = "one")]
    pub mul: i64,
    #[serde(default)]
    pub add: i64,
    #[serde(default)]
    pub at_least: bool,
}

/// An inclusive range of server ports: `5222` or `"8801-8810"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    /// Parses `N` or `N-M` (ports 1 to 65535, N <= M).
    pub fn parse(text: &str) -> Result<PortRange, String> {
        let bad = || format!("`{text}` is not a port range; expected a port (1 to 65535) or LOW-HIGH such as 8801-8810");
        let (lo, hi) = match text.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (text.trim(), text.trim()),
        };
        let lo: u16 = lo.parse().map_err(|_| bad())?;
        let hi: u16 = hi.parse().map_err(|_| bad())?;
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(PortRange { lo, hi })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortRange;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port (1 to 65535) or a range such as \"8801-8810\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortRange, E> {
                PortRange::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortRange, E> {
                PortRange::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortRange, E> {
                PortRange::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A byte signature on the first payloads of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a signature: a mapping with name, bytes and optionally direction, offset, mask, ...")]
pub struct Signature {
    pub name: String,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub offset: i64,
    pub bytes: Hex,
    #[serde(default)]
    pub mask: Option<Hex>,
    #[serde(default)]
    pub client_first: bool,
    #[serde(default)]
    pub min_len: u16,
    /// The payload must be at most this long (with `min_len`: an exact size).
    #[serde(default)]
    pub max_len: Option<u16>,
    #[serde(default)]
    pub length: Option<LengthField>,
    /// The server port or ports (`5222`, `"8801-8810"`) the structure is used on: for
    /// structures too short to stand alone, on the ports their protocol registers.
    #[serde(default)]
    pub ports: Option<PortRange>,
    /// The payload's last byte (a trailer, such as OICQ's ETX).
    #[serde(default)]
    pub last_byte: Option<u8>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
}

impl Signature {
    /// The mask, padded with zeros to `SIG_LEN` (all `ff` over the bytes when none is given).
    pub fn mask16(&self) -> [u8; SIG_LEN] {
        let mut m = [0u8; SIG_LEN];
        match &self.mask {
            Some(mask) => {
                for (d, s) in m.iter_mut().zip(&mask.0) {
                    *d = *s;
                }
            }
            None => {
                for d in m.iter_mut().take(self.bytes.0.len()) {
                    *d = 0xff;
                }
            }
        }
        m
    }

    /// A signature whose mask is all zero matches by size alone; that is allowed only with an
    /// exact size and ports.
    pub fn size_only_allowed(&self) -> bool {
        self.max_len == Some(self.min_len) && self.ports.is_some()
    }

    /// The bytes under the mask, padded with zeros to `SIG_LEN`.
    pub fn masked16(&self) -> [u8; SIG_LEN] {
        let mask = self.mask16();
        let mut b = [0u8; SIG_LEN];
        for (i, (d, s)) in b.iter_mut().zip(&self.bytes.0).enumerate() {
            *d = *s & mask[i];
        }
        b
    }
}

/// One app's detection data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an app's detection data: a mapping with signatures, domains, addresses, stun_attributes")]
pub struct CatalogueEntry {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub signatures: Vec<Signature>,
    /// Suffix matches: the domain and all its subdomains.
    #[serde(default, deserialize_with = "nullable")]
    pub domains: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<Cidr>,
    /// STUN/TURN attribute types only this app's implementation sends.
    #[serde(default, deserialize_with = "nullable")]
    pub stun_attributes: Vec<u16>,
}

/// A parsed and checked catalogue file.
#[derive(Clone, Debug)]
pub struct Catalogue {
    pub entries: Vec<(String, CatalogueEntry)>,
    pub(crate) source: Source,
}

impl Catalogue {
    pub fn file(&self) -> &str {
        &self.source.file
    }
}

/// Parses a built-in catalogue file: a mapping of built-in app names to their detection data.
pub fn parse_builtin(text: &str, file: &str) -> Result<Catalogue, PolicyErrors> {
    let (source, map): (Source, OrderedMap<CatalogueEntry>) =
        Source::parse(text, file, "expected a mapping of built-in app names to detection data")?;
    let mut errs = PolicyErrors::default();
    validate(&map.0, &source, "", true, &mut errs);
    errs.into_result()?;
    Ok(Catalogue { entries: map.0, source })
}

/// The embedded built-in catalogue with its address files, parsed once.
pub fn builtin() -> Result<&'static Catalogue, PolicyErrors> {
    static BUILTIN: OnceLock<Result<Catalogue, PolicyErrors>> = OnceLock::new();
    BUILTIN
        .get_or_init(|| {
            let mut cat = parse_builtin(builtin_text(), BUILTIN_FILE)?;
            add_address_files(&mut cat, ADDRESS_FILES)?;
            Ok(cat)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Networks that services publish, one file per app (`catalogue/addresses/APP.txt`): the
/// source and date in `#` comments, then one network per line. They are data the vendors
/// revise, kept apart from the signatures so that an update is a plain diff.
pub const ADDRESS_FILES: &[(&str, &str)] = &[
    ("telegram", include_str!("../catalogue/addresses/telegram.txt")),
    ("teams", include_str!("../catalogue/addresses/teams.txt")),
    ("zoom", include_str!("../catalogue/addresses/zoom.txt")),
    ("webex", include_str!("../catalogue/addresses/webex.txt")),
    ("threema", include_str!("../catalogue/addresses/threema.txt")),
];

/// Parses an address file: networks, blank lines and `#` comments (also after a network).
pub fn parse_address_file(text: &str, file: &str) -> Result<Vec<Cidr>, PolicyErrors> {
    let mut nets = Vec::new();
    let mut errs = PolicyErrors::default();
    for (i, line) in text.lines().enumerate() {
        let body = line.split('#').next().unwrap_or("").trim();
        if body.is_empty() {
            continue;
        }
        match Cidr::parse(body) {
            Ok(net) => nets.push(net),
            Err(e) => {
                let col = line.find(body).unwrap_or(0) + 1;
                errs.0.push(crate::policy::PolicyError::new(file, i + 1, col, e));
            }
        }
    }
    errs.into_result().map(|()| nets)
}

/// Adds each address file's networks to its app's entry (creating the entry if need be).
fn add_address_files(cat: &mut Catalogue, files: &[(&str, &str)]) -> Result<(), PolicyErrors> {
    let mut errs = PolicyErrors::default();
    for (app, text) in files {
        let file = format!("addresses/{app}.txt");
        if builtin_id(app).is_none() {
            errs.0.push(crate::policy::PolicyError::new(&file, 0, 0, format!("`{app}` is not a built-in app")));
            continue;
        }
        match parse_address_file(text, &file) {
            Ok(nets) => match cat.entries.iter_mut().find(|(n, _)| n == app) {
                Some((_, entry)) => entry.addresses.extend(nets),
                None => cat.entries.push(((*app).to_owned(), CatalogueEntry { addresses: nets, ..CatalogueEntry::default() })),
            },
            Err(e) => errs.0.extend(e.0),
        }
    }
    errs.into_result()
}

/// Whether `name` is a valid app name: lowercase `[a-z0-9_-]+`.
pub fn valid_app_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A domain as stored: lowercase, without a trailing dot, checked for DNS syntax.
pub fn normalize_domain(domain: &str) -> Result<String, String> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = d.strip_prefix("*.") {
        return Err(format!(
            "domain `{domain}`: write `{rest}` without `*.`; a domain already matches all its subdomains"
        ));
    }
    if d.is_empty() || d.len() > 253 {
        return Err(format!("domain `{domain}` must be 1 to 253 characters"));
    }
    let mut labels = 0;
    for label in d.split('.') {
        labels += 1;
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "domain `{domain}` is not a DNS name: labels are 1 to 63 letters, digits, `-` or `_`, separated by dots"
            ));
        }
    }
    if labels < 2 {
        return Err(format!(
            "domain `{domain}` is a top-level domain; it would match every name under it (expected e.g. example.com)"
        ));
    }
    Ok(d)
}

/// Checks each entry on its own; conflicts between entries are found when the policy compiles.
/// `prefix` is the path of the mapping the entries are in (`""` or `catalogue`).
pub(crate) fn validate(
    entries: &[(String, CatalogueEntry)],
    src: &Source,
    prefix: &str,
    builtin_only: bool,
    errs: &mut PolicyErrors,
) {
    for (name, entry) in entries {
        let path = join(prefix, name);
        if !valid_app_name(name) {
            errs.0.push(src.err_key(&path, format!("invalid app name `{name}`: expected lowercase letters, digits, `_` or `-`")));
        } else if name == "all" {
            errs.0.push(src.err_key(&path, "`all` is reserved: in rules it means every app; choose another app name"));
        } else if builtin_only && builtin_id(name).is_none() {
            errs.0.push(src.err_key(
                &path,
                format!("`{name}` is not a built-in app; this file may describe only the apps in imfw_common::app::BUILTIN_APPS"),
            ));
        }
        let sigs = join(&path, "signatures");
        for (i, sig) in entry.signatures.iter().enumerate() {
            let sp = index(&sigs, i);
            validate_signature(sig, src, &sp, errs);
            if entry.signatures[..i].iter().any(|s| s.name == sig.name) {
                errs.0.push(src.err(&join(&sp, "name"), format!("duplicate signature name `{}` in app `{name}`", sig.name)));
            }
        }
        let domains = join(&path, "domains");
        for (i, d) in entry.domains.iter().enumerate() {
            if let Err(m) = normalize_domain(d) {
                errs.0.push(src.err(&index(&domains, i), m));
            }
        }
    }
}

fn validate_signature(sig: &Signature, src: &Source, sp: &str, errs: &mut PolicyErrors) {
    if sig.name.trim().is_empty() {
        errs.0.push(src.err(&join(sp, "name"), "a signature needs a non-empty name"));
    }
    if !(0..=i64::from(SIG_OFFSET_MAX)).contains(&sig.offset) {
        errs.0.push(src.err(
            &join(sp, "offset"),
            format!("offset {} is out of range; expected 0 to {SIG_OFFSET_MAX}", sig.offset),
        ));
    }
    if let Some(mask) = &sig.mask {
        if mask.0.len() == sig.bytes.0.len() {
            if mask.0.iter().all(|b| *b == 0) && !sig.size_only_allowed() {
                errs.0.push(src.err(
                    &join(sp, "mask"),
                    "the mask is all zero, so the signature would match anything; a size-only signature needs an exact size (min_len = max_len) and ports",
                ));
            }
        } else {
            errs.0.push(src.err(
                &join(sp, "mask"),
                format!(
                    "mask has {} bytes but bytes has {}; expected a mask of the same length",
                    mask.0.len(),
                    sig.bytes.0.len()
                ),
            ));
        }
    }
    if let Some(max) = sig.max_len {
        let reach = u64::try_from(sig.offset).unwrap_or(0) + sig.bytes.0.len() as u64;
        if max == 0 || u64::from(max) < reach || max < sig.min_len {
            errs.0.push(src.err(
                &join(sp, "max_len"),
                format!("max_len {max} is below what the signature itself needs (offset + bytes = {reach}, min_len = {}); expected at least that", sig.min_len),
            ));
        }
    }
    if let Some(len) = &sig.length {
        let lp = join(sp, "length");
        let max = i64::try_from(SCRATCH_LEN - len.size.width()).unwrap_or(0);
        if !(0..=max).contains(&len.offset) {
            errs.0.push(src.err(
                &join(&lp, "offset"),
                format!("length field offset {} is out of range; expected 0 to {max}", len.offset),
            ));
        }
        if !(1..=i64::from(u8::MAX)).contains(&len.mul) {
            errs.0.push(src.err(&join(&lp, "mul"), format!("mul {} is out of range; expected 1 to 255", len.mul)));
        }
        if i16::try_from(len.add).is_err() {
            errs.0.push(src.err(
                &join(&lp, "add"),
                format!("add {} is out of range; expected {} to {}", len.add, i16::MIN, i16::MAX),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalogue_parses_and_names_only_builtin_apps() {
        let cat = builtin().unwrap_or_else(|e| panic!("builtin.yaml:\n{e}"));
        assert!(!cat.entries.is_empty());
        for (name, _) in &cat.entries {
            assert!(builtin_id(name).is_some(), "{name} is not in BUILTIN_APPS");
        }
    }

    #[test]
    fn non_builtin_app_is_rejected() {
        let e = parse_builtin("xmpp:\n  domains: [jabber.org]\nmychat:\n  domains: [a.example]\n", "b.yaml")
            .unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!((e.0[0].line, e.0[0].column), (3, 1));
        assert!(e.0[0].message.contains("not a built-in app"), "{e}");
    }

    #[test]
    fn port_ranges() {
        assert_eq!(PortRange::parse("5222"), Ok(PortRange { lo: 5222, hi: 5222 }));
        assert_eq!(PortRange::parse("8801-8810"), Ok(PortRange { lo: 8801, hi: 8810 }));
        for bad in ["0", "8810-8801", "70000", "a-b", "", "1-"] {
            assert!(PortRange::parse(bad).is_err(), "{bad}");
        }
        let cat = parse_builtin(
            "zoom:\n  signatures:\n    - {name: z, bytes: \"01 00\", ports: \"8801-8810\", last_byte: 3}\n",
            "b.yaml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let sig = &cat.entries[0].1.signatures[0];
        assert_eq!((sig.ports, sig.last_byte), (Some(PortRange { lo: 8801, hi: 8810 }), Some(3)));
        let e = parse_builtin("zoom:\n  signatures:\n    - {name: z, bytes: \"01\", ports: \"9-1\"}\n", "b.yaml").unwrap_err();
        assert!(e.to_string().contains("not a port range"), "{e}");
    }

    #[test]
    fn domains_are_normalized() {
        assert_eq!(normalize_domain("Chat.Example.COM.").as_deref(), Ok("chat.example.com"));
        assert!(normalize_domain("*.example.com").is_err());
        assert!(normalize_domain("com").is_err());
        assert!(normalize_domain("a..b").is_err());
    }
}
