// Test inputs are built with format! in iterators for readability.
#![allow(clippy::format_collect)]

use std::net::IpAddr;

use imfw_common::{
    app::{builtin_id, CUSTOM_FIRST, MAX_APPS},
    config::{SRC_NETS_V4, SRC_NETS_V6},
    flow::{DIR_CLIENT, DIR_SERVER},
    maps::{POLICY_ENTRIES, SRC_CLASSES},
    matcher::{domain_hash, SigKey, PROBE_NONE, SCRATCH_LEN, SigValue, SrcClass, LEN_U16BE, MAX_SIG_CLASSES, SIG_CLIENT_FIRST, SIG_LEN_ATLEAST},
    verdict::Verdict,
};

use super::*;

const FILE: &str = "t.yaml";

fn ok(text: &str) -> (Policy, Compiled) {
    let p = parse(text, FILE).unwrap_or_else(|e| panic!("policy rejected:\n{e}"));
    let c = p.compile().unwrap_or_else(|e| panic!("policy does not compile:\n{e}"));
    (p, c)
}

fn errors(text: &str) -> Vec<PolicyError> {
    match parse(text, FILE) {
        Ok(_) => panic!("policy accepted:\n{text}"),
        Err(e) => e.0,
    }
}

/// The only error of `text`; checks its position and that its message has `needle`.
#[track_caller]
fn one_error(text: &str, line: usize, column: usize, needle: &str) -> PolicyError {
    let e = errors(text);
    assert_eq!(e.len(), 1, "expected one error, got:\n{}", PolicyErrors(e.clone()));
    let e = e.into_iter().next().unwrap_or_else(|| unreachable!());
    assert_eq!((e.line, e.column), (line, column), "wrong position: {e}");
    assert!(e.message.contains(needle), "`{needle}` not in: {e}");
    assert_eq!(e.file, FILE);
    e
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("bad test address {s}"))
}

fn id(name: &str) -> u16 {
    builtin_id(name).unwrap_or_else(|| panic!("{name} is not built in"))
}

fn verdict(c: &Compiled, client: &str, app: u16) -> Verdict {
    Verdict::from_u8(c.decide(ip(client), app).verdict)
}

#[test]
fn default_policy_parses_and_compiles() {
    let p = parse(default_policy_text(), "default.yaml").unwrap_or_else(|e| panic!("{e}"));
    let c = p.compile().unwrap_or_else(|e| panic!("{e}"));
    for app in ["whatsapp", "telegram", "signal", "discord", "snapchat", "messenger", "wechat", "tox"] {
        assert_eq!(Verdict::from_u8(c.action(0, id(app)).verdict), Verdict::Drop, "{app}");
    }
    for app in ["irc", "xmpp"] {
        assert_eq!(Verdict::from_u8(c.action(0, id(app)).verdict), Verdict::Monitor, "{app}");
    }
    for app in ["slack", "teams", "zoom", "webex", "mattermost", "matrix", "rocketchat", "googlechat", "mqtt"] {
        assert_eq!(Verdict::from_u8(c.action(0, id(app)).verdict), Verdict::Allow, "{app}");
    }
    assert_eq!(Verdict::from_u8(c.action(0, 0).verdict), Verdict::Allow);
    assert_eq!(c.policy.len(), POLICY_ENTRIES as usize);
    assert_eq!(c.config.inspect_packets, 4);
    assert_eq!(c.config.sig_classes as usize, c.sig_classes.len());
    assert!(!c.sigs.is_empty() && !c.names.is_empty());
    assert!(c.src4.is_empty() && c.src6.is_empty() && c.redirect_ifaces.is_empty());
    assert_eq!(c.config.src_nets, 0, "no trie to walk for either family");
    assert_eq!(p.hash.len(), 64);
    assert_eq!(c.hash, p.hash);
}

#[test]
fn embedded_catalogue_compiles_with_a_minimal_policy() {
    let (_, c) = ok("version: 1\n");
    assert!(c.sig_classes.len() <= MAX_SIG_CLASSES as usize);
    assert!(c.names.iter().any(|(k, m)| k.hash == domain_hash("whatsapp.net") && m.app == id("whatsapp")));
    // Every built-in app is known, whether or not the catalogue describes it.
    assert_eq!(c.app_id("msn"), Some(id("msn")));
    assert_eq!(c.app_name(id("irc")), Some("irc"));
}

#[test]
fn missing_file_is_an_error() {
    let e = load(Path::new("/nonexistent/imfw-policy.yaml")).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!((e.0[0].line, e.0[0].column), (0, 0));
    assert!(e.0[0].message.contains("cannot read"), "{e}");
    assert!(e.to_string().starts_with("/nonexistent/imfw-policy.yaml:0:0: "), "{e}");
}

#[test]
fn error_display_is_file_line_column() {
    let e = one_error("version: 1\napps:\n  whatsap: drop\n", 3, 3, "did you mean `whatsapp`?");
    assert_eq!(e.to_string(), format!("t.yaml:3:3: {}", e.message));
}

#[test]
fn yaml_syntax_error() {
    one_error("version: 1\napps:\n  irc: [drop\n", 4, 1, "YAML syntax error");
}

#[test]
fn duplicate_key() {
    one_error("version: 1\napps:\n  irc: drop\n  xmpp: drop\n  irc: allow\n", 5, 3, "duplicate key `apps.irc`");
}

#[test]
fn empty_file() {
    one_error("# nothing\n", 1, 1, "empty");
}

#[test]
fn unknown_key_lists_expected_keys() {
    one_error("version: 1\ndefaults:\n  acton: drop\n", 3, 3, "unknown field `acton`, expected one of `action`");
    one_error("version: 1\nrulez: []\n", 2, 1, "unknown field `rulez`");
}

#[test]
fn wrong_type() {
    one_error("version: 1\ndefaults:\n  inspect_packets: many\n", 3, 20, "invalid type");
    one_error("version: 1\nrules: {}\n", 2, 8, "invalid type");
}

#[test]
fn version_missing_or_wrong() {
    one_error("apps:\n  irc: drop\n", 1, 1, "missing `version: 1`");
    one_error("version: 2\n", 1, 10, "unsupported policy version 2");
}

#[test]
fn out_of_range_inspect_packets() {
    one_error("version: 1\ndefaults:\n  inspect_packets: 33\n", 3, 20, "expected 1 to 32");
}

#[test]
fn unknown_app_in_apps_and_rules() {
    one_error("version: 1\napps:\n  mychat: drop\n", 3, 3, "define new apps under catalogue:");
    one_error(
        "version: 1\nrules:\n  - name: r\n    from: [192.0.2.0/24]\n    apps: [irc, telegrm]\n    action: drop\n",
        5,
        17,
        "unknown app `telegrm`; did you mean `telegram`?",
    );
}

#[test]
fn all_errors_are_collected() {
    let e = errors(
        "version: 1\napps:\n  foo: drop\n  bar: drop\nrules:\n  - name: r\n    from: [192.0.2.0/24]\n    apps: [baz]\n    action: drop\n",
    );
    let at: Vec<(usize, usize)> = e.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(at, vec![(3, 3), (4, 3), (8, 12)], "{}", PolicyErrors(e.clone()));
}

#[test]
fn unknown_action() {
    one_error("version: 1\napps:\n  irc: block\n", 3, 8, "unknown action `block`; expected allow, drop, monitor or redirect");
    one_error("version: 1\napps:\n  irc: {action: blok}\n", 3, 17, "unknown action `blok`");
    one_error("version: 1\ndefaults:\n  unclassified: monitor\n", 3, 17, "expected `allow` or `drop`");
}

#[test]
fn malformed_networks() {
    let rule = |net: &str| format!("version: 1\nrules:\n  - name: r\n    from: [10.0.0.0/8, {net}]\n    apps: all\n    action: drop\n");
    one_error(&rule("192.0.2.0/33"), 4, 24, "prefix length must be a number from 0 to 32");
    one_error(&rule("10.0.0.256/8"), 4, 24, "`10.0.0.256` is not an IP address");
    one_error(&rule("192.0.2.1/24"), 4, 24, "192.0.2.1/24 has host bits set; did you mean 192.0.2.0/24?");
    one_error(&rule("2001:db8::1/32"), 4, 24, "did you mean 2001:db8::/32?");
    one_error(
        "version: 1\ncatalogue:\n  mychat:\n    addresses:\n      - 198.51.100.0/240\n",
        5,
        9,
        "is not a network",
    );
}

fn sig_policy(sig: &str) -> String {
    format!("version: 1\ncatalogue:\n  mychat:\n    signatures:\n      - name: s\n{sig}")
}

#[test]
fn bad_hex() {
    one_error(&sig_policy("        bytes: \"4d 4g\"\n"), 6, 16, "`g` is not a hex digit");
    one_error(&sig_policy("        bytes: \"4d 4\"\n"), 6, 16, "odd number of hex digits");
    one_error(&sig_policy("        bytes: \"\"\n"), 6, 16, "expected 1 to 16");
    one_error(
        &sig_policy("        bytes: \"00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10\"\n"),
        6,
        16,
        "17 bytes; expected 1 to 16",
    );
}

#[test]
fn mask_length_differs() {
    one_error(
        &sig_policy("        bytes: \"4d 43 48 54\"\n        mask: \"ff ff\"\n"),
        7,
        15,
        "mask has 2 bytes but bytes has 4",
    );
    one_error(&sig_policy("        bytes: \"4d 43\"\n        mask: \"00 00\"\n"), 7, 15, "all zero");
}

#[test]
fn offset_too_large() {
    one_error(&sig_policy("        offset: 300\n        bytes: \"4d\"\n"), 6, 17, "offset 300 is out of range; expected 0 to 256");
    one_error(
        &sig_policy("        bytes: \"4d\"\n        length: {offset: 4, size: u16be, add: 70000}\n"),
        7,
        47,
        "add 70000 is out of range",
    );
    one_error(
        &sig_policy("        bytes: \"4d\"\n        length: {offset: 4, size: u24}\n"),
        7,
        35,
        "unknown variant `u24`",
    );
}

#[test]
fn missing_required_field() {
    one_error(&sig_policy("        offset: 1\n"), 5, 9, "missing field `bytes`");
    one_error("version: 1\nrules:\n  - name: r\n    apps: all\n    action: drop\n", 3, 5, "missing field `from`");
}

const RULES_HEAD: &str = "version: 1\nrules:\n";

#[test]
fn duplicate_rule_name() {
    let text = format!(
        "{RULES_HEAD}  - name: a\n    from: [192.0.2.0/24]\n    apps: [irc]\n    action: drop\n  - name: a\n    from: [198.51.100.0/24]\n    apps: [irc]\n    action: drop\n"
    );
    one_error(&text, 7, 11, "duplicate rule name `a`: rule 1 at line 3 already has it");
}

#[test]
fn duplicate_rule_content() {
    // Same networks (in another order), same apps and action: the second rule can never matter.
    let text = format!(
        "{RULES_HEAD}  - name: a\n    from: [192.0.2.0/24, 2001:db8::/32]\n    apps: [irc, xmpp]\n    action: drop\n  - name: b\n    from: [2001:db8::/32, 192.0.2.0/24]\n    apps: [xmpp, irc]\n    action: drop\n"
    );
    one_error(&text, 7, 5, "rule `b` repeats rule `a` at line 3");
    // A different action is not a duplicate.
    ok(&text.replacen("action: drop\n  - name: b", "action: allow\n  - name: b", 1));
}

#[test]
fn redirect_needs_an_interface() {
    one_error("version: 1\napps:\n  irc: redirect\n", 3, 8, "redirect needs an interface");
    one_error(
        "version: 1\napps:\n  irc: {action: redirect, to: \"bad name\"}\n",
        3,
        31,
        "not an interface name",
    );
    one_error("version: 1\napps:\n  irc: {action: drop, to: rec1}\n", 3, 8, "`to:` names a redirect interface");
    ok("version: 1\ndefaults:\n  redirect_to: rec0\napps:\n  irc: redirect\n");
}

#[test]
fn redirect_slots() {
    let (_, c) = ok("version: 1\ndefaults:\n  redirect_to: rec0\napps:\n  irc: redirect\n  xmpp: {action: redirect, to: rec1}\n  whatsapp: {action: redirect}\nrules:\n  - name: lab\n    from: [192.0.2.0/24]\n    apps: [telegram]\n    action: {action: redirect, to: rec2}\n  - name: lab2\n    from: [192.0.2.0/24]\n    apps: [signal]\n    action: {action: redirect, to: rec1}\n");
    assert_eq!(c.redirect_ifaces, vec!["rec0", "rec1", "rec2"]);
    let slot = |client: &str, app: &str| {
        let a = c.decide(ip(client), id(app));
        assert_eq!(Verdict::from_u8(a.verdict), Verdict::Redirect, "{app}");
        a.redirect_slot
    };
    assert_eq!(slot("10.0.0.1", "irc"), 0);
    assert_eq!(slot("10.0.0.1", "xmpp"), 1);
    assert_eq!(slot("10.0.0.1", "whatsapp"), 0);
    assert_eq!(slot("192.0.2.7", "telegram"), 2);
    assert_eq!(slot("192.0.2.7", "signal"), 1);
    assert_eq!(verdict(&c, "10.0.0.1", id("telegram")), Verdict::Allow);
}

#[test]
fn too_many_source_networks() {
    let limit = (SRC_CLASSES - 1) as usize;
    let nets: Vec<String> = (0..=limit).map(|i| format!("10.0.{i}.0/24")).collect();
    let text = format!("{RULES_HEAD}  - name: r\n    apps: all\n    action: drop\n    from:\n{}", nets.iter().map(|n| format!("      - {n}\n")).collect::<String>());
    // The 64th network is item `limit` of the list, on line 7 + limit.
    one_error(&text, 7 + limit, 9, "too many source networks");
    // Repeating a network does not use another class.
    let text = format!("{RULES_HEAD}  - name: r\n    apps: all\n    action: drop\n    from:\n{}", nets[..limit].iter().chain(nets[..2].iter()).map(|n| format!("      - {n}\n")).collect::<String>());
    let (_, c) = ok(&text);
    assert_eq!(c.src4.len(), limit);
}

#[test]
fn too_many_signature_shapes() {
    let (_, base) = ok("version: 1\n");
    let builtin_shapes = base.sig_classes.len();
    let room = MAX_SIG_CLASSES as usize - builtin_shapes;
    // Offsets from 200 on are used by no built-in signature, so each is a new shape.
    let sigs: String = (0..=room)
        .map(|i| format!("      - name: s{i}\n        offset: {}\n        bytes: \"aa\"\n", 200 + i))
        .collect();
    let text = format!("version: 1\ncatalogue:\n  mychat:\n    signatures:\n{sigs}");
    // Signature `room` is the first that does not fit; each takes 3 lines from line 5.
    one_error(&text, 5 + 3 * room, 9, "too many signature shapes");
}

#[test]
fn rule_precedence_with_nested_networks() {
    let narrow_first = "version: 1\napps:\n  whatsapp: monitor\nrules:\n  - name: narrow-drop\n    from: [10.1.2.0/24]\n    apps: [whatsapp]\n    action: drop\n  - name: wide-allow\n    from: [10.1.0.0/16]\n    apps: [whatsapp]\n    action: allow\n";
    let (_, c) = ok(narrow_first);
    let wa = id("whatsapp");
    assert_eq!(verdict(&c, "10.1.2.3", wa), Verdict::Drop);
    assert_eq!(verdict(&c, "10.1.9.9", wa), Verdict::Allow);
    assert_eq!(verdict(&c, "10.2.0.1", wa), Verdict::Monitor);
    assert_eq!(verdict(&c, "2001:db8::1", wa), Verdict::Monitor);
    // Other apps fall through to `apps:` and defaults in every class.
    assert_eq!(verdict(&c, "10.1.2.3", id("irc")), Verdict::Allow);

    // The wide rule comes first: it covers the narrow network too, and wins there.
    let wide_first = "version: 1\napps:\n  whatsapp: monitor\nrules:\n  - name: wide-allow\n    from: [10.1.0.0/16]\n    apps: [whatsapp]\n    action: allow\n  - name: narrow-drop\n    from: [10.1.2.0/24]\n    apps: [whatsapp, telegram]\n    action: drop\n";
    let (_, c) = ok(wide_first);
    assert_eq!(verdict(&c, "10.1.2.3", wa), Verdict::Allow);
    assert_eq!(verdict(&c, "10.1.2.3", id("telegram")), Verdict::Drop);
    assert_eq!(verdict(&c, "10.1.9.9", wa), Verdict::Allow);
    assert_eq!(verdict(&c, "10.1.9.9", id("telegram")), Verdict::Allow);
    assert_eq!(verdict(&c, "10.2.0.1", wa), Verdict::Monitor);
    // Classes are numbered in order of appearance.
    assert_eq!(c.src4, vec![(16, [10, 1, 0, 0], SrcClass { class: 1 }), (24, [10, 1, 2, 0], SrcClass { class: 2 })]);
}

#[test]
fn hidden_names_are_allowed_unless_the_policy_names_ech() {
    let ech = imfw_common::app::APP_ECH;
    let (_, c) = ok("version: 1\ndefaults: {action: drop}\n");
    assert_eq!(verdict(&c, "192.0.2.9", ech), Verdict::Allow, "defaults.action is about IM apps");
    let (_, c) = ok("version: 1\napps: {ech: drop}\n");
    assert_eq!(verdict(&c, "192.0.2.9", ech), Verdict::Drop);
    let (_, c) = ok("version: 1\nrules:\n  - {name: lab, from: [192.0.2.0/24], apps: [ech], action: monitor}\n");
    assert_eq!(verdict(&c, "192.0.2.9", ech), Verdict::Monitor);
    assert_eq!(verdict(&c, "198.51.100.9", ech), Verdict::Allow);
}

#[test]
fn ipv6_rules_share_class_numbering() {
    let (_, c) = ok("version: 1\nrules:\n  - name: r\n    from: [192.0.2.0/24, 2001:db8:1::/48, 2001:db8:1:2::1]\n    apps: [irc]\n    action: drop\n");
    assert_eq!(c.src4.len(), 1);
    assert_eq!(c.config.src_nets, SRC_NETS_V4 | SRC_NETS_V6);
    let (_, v6) = ok("version: 1\nrules:\n  - {name: r, from: [2001:db8:1::/48], apps: [irc], action: drop}\n");
    assert_eq!(v6.config.src_nets, SRC_NETS_V6, "an IPv4 flow skips the empty IPv4 trie");
    let (_, v4) = ok("version: 1\nrules:\n  - {name: r, from: [192.0.2.0/24], apps: [irc], action: drop}\n");
    assert_eq!(v4.config.src_nets, SRC_NETS_V4);
    assert_eq!(c.src6.iter().map(|(l, _, s)| (*l, s.class)).collect::<Vec<_>>(), vec![(48, 2), (128, 3)]);
    assert_eq!(verdict(&c, "2001:db8:1:2::1", id("irc")), Verdict::Drop);
    assert_eq!(verdict(&c, "2001:db8:1:3::1", id("irc")), Verdict::Drop);
    assert_eq!(verdict(&c, "2001:db8:2::1", id("irc")), Verdict::Allow);
}

#[test]
fn all_means_every_app_but_not_unclassified() {
    let (_, c) = ok("version: 1\ndefaults:\n  unclassified: drop\ncatalogue:\n  mychat:\n    domains: [chat.example.com]\nrules:\n  - name: lockdown\n    from: [192.0.2.0/24]\n    apps: all\n    action: monitor\n");
    let mychat = c.app_id("mychat").unwrap_or_default();
    for (app, _) in &c.apps {
        // Hidden names (`ech`) are not IM: `all` leaves them to their own (allow) default.
        let want = if *app == imfw_common::app::APP_ECH { Verdict::Allow } else { Verdict::Monitor };
        assert_eq!(verdict(&c, "192.0.2.9", *app), want, "app {app}");
        assert_eq!(verdict(&c, "203.0.113.1", *app), Verdict::Allow, "app {app}");
    }
    assert!(c.apps.iter().any(|(a, _)| *a == mychat));
    assert_eq!(verdict(&c, "192.0.2.9", 0), Verdict::Drop);
    assert_eq!(verdict(&c, "203.0.113.1", 0), Verdict::Drop);
    // Ids no catalogue uses keep the default action.
    assert_eq!(verdict(&c, "192.0.2.9", MAX_APPS - 1), Verdict::Allow);
    // Unused classes look like class 0.
    assert_eq!(c.action(SRC_CLASSES - 1, 0), c.action(0, 0));
}

#[test]
fn custom_apps_get_ids_from_128() {
    let (p, c) = ok("version: 1\ncatalogue:\n  whatsapp:\n    domains: [wa.example.net]\n  mychat:\n    description: in-house\n    domains: [chat.example.com]\n  otherchat:\n    addresses: [198.51.100.0/24, 2001:db8:77::/48]\napps:\n  otherchat: drop\n");
    assert_eq!(p.custom_apps, vec![(CUSTOM_FIRST, "mychat".to_owned()), (CUSTOM_FIRST + 1, "otherchat".to_owned())]);
    assert_eq!(c.app_id("mychat"), Some(128));
    assert_eq!(c.app_name(129), Some("otherchat"));
    assert!(c.names.iter().any(|(k, m)| k.hash == domain_hash("wa.example.net") && m.app == id("whatsapp")));
    assert!(c.names.iter().any(|(k, m)| k.hash == domain_hash("chat.example.com") && m.app == 128));
    assert!(c.addr4.iter().any(|(l, n, m)| *l == 24 && *n == [198, 51, 100, 0] && m.app == 129));
    assert!(c.addr6.iter().any(|(l, _, m)| *l == 48 && m.app == 129));
    assert_eq!(Verdict::from_u8(c.action(0, 129).verdict), Verdict::Drop);
    assert_eq!(Verdict::from_u8(c.action(0, 128).verdict), Verdict::Allow);
}

#[test]
fn invalid_custom_app_name() {
    one_error("version: 1\ncatalogue:\n  MyChat:\n    domains: [chat.example.com]\n", 3, 3, "invalid app name `MyChat`");
}

#[test]
fn signature_shapes_and_key_masking() {
    let (_, base) = ok("version: 1\n");
    let (_, c) = ok(&sig_policy(
        "        direction: any\n        offset: 2\n        bytes: \"ab cd ef 01\"\n        mask: \"ff f0 0f 00\"\n        client_first: true\n        min_len: 3\n        length: {offset: 0, size: u16be, mul: 4, add: -2, at_least: true}\n      - name: t\n        direction: server\n        offset: 2\n        bytes: \"11 22 33 44\"\n        mask: \"ff f0 0f 00\"\n",
    ));
    let n = base.sig_classes.len();
    assert_eq!(c.sig_classes.len(), n + 1, "both signatures share one new shape");
    let class = &c.sig_classes[n];
    assert_eq!((class.offset, class.len), (2, 3));
    assert_eq!(class.mask[..4], [0xff, 0xf0, 0x0f, 0x00]);
    assert!(class.mask[4..].iter().all(|b| *b == 0));
    assert_eq!(c.config.sig_classes as usize, n + 1);

    let mine: Vec<&(SigKey, SigValue)> = c.sigs.iter().filter(|(_, v)| v.app == CUSTOM_FIRST).collect();
    assert_eq!(mine.len(), 3, "`any` gives both directions, `server` one");
    let mut bytes = [0u8; 16];
    bytes[..3].copy_from_slice(&[0xab, 0xc0, 0x0f]);
    let (k, v) = mine[0];
    assert_eq!((k.class as usize, k.dir, k.bytes), (n, DIR_CLIENT, bytes));
    assert_eq!(mine[1].0.dir, DIR_SERVER);
    assert_eq!(v.flags, SIG_CLIENT_FIRST | SIG_LEN_ATLEAST);
    assert_eq!(v.min_len, 6, "min_len is raised to offset + length of bytes");
    assert_eq!((v.len_off, v.len_kind, v.len_mul, v.len_add), (0, LEN_U16BE, 4, -2));
    let mut bytes = [0u8; 16];
    bytes[..3].copy_from_slice(&[0x11, 0x20, 0x03]);
    assert_eq!((mine[2].0.dir, mine[2].0.bytes), (DIR_SERVER, bytes));
}

/// Every signature of the built-in catalogue, written into a payload of each length it
/// accepts (up to 600 bytes), leaves its shape among the kernel's prefilter candidates, and a
/// ClientHello leaves none of the catalogue's shapes.
#[test]
fn the_prefilter_keeps_every_catalogue_signature() {
    let (_, c) = ok("version: 1\n");
    let mut checked = 0;
    for (k, v) in &c.sigs {
        let shape = &c.sig_classes[k.class as usize];
        let mut buf = [0u8; SCRATCH_LEN];
        for j in 0..16 {
            buf[shape.offset as usize + j] = k.bytes[j] & shape.mask[j];
        }
        let lo = usize::from(v.min_len).max(usize::from(shape.offset + shape.len));
        let hi = if v.max_len == 0 { 600 } else { usize::from(v.max_len) };
        let ports = if v.port_hi == 0 { vec![80, 443, 5222] } else { vec![v.port_lo, v.port_hi] };
        for len in lo..=hi {
            for &port in &ports {
                let cand = c.sig_pre.candidates(&buf, len, port);
                assert_ne!(cand & (1 << k.class), 0, "shape {} of app {} ruled out at length {len}, port {port}", k.class, v.app);
                checked += 1;
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
    // A ClientHello (every name length from 1 to 300) to port 443 rules out every shape of the
    // catalogue; to XMPP's port, the size-only one is left where its length is the hello's
    // modulo 256.
    let size_only: u32 = c.sig_classes.iter().enumerate().filter(|(_, s)| s.probe == PROBE_NONE).map(|(i, _)| 1 << i).sum();
    let mut left = 0;
    for n in 1..=300 {
        let hello = imfw_tests::protocols::ClientHello::new(&"a".repeat(n)).build();
        let mut buf = [0u8; SCRATCH_LEN];
        buf[..hello.len()].copy_from_slice(&hello);
        assert_eq!(c.sig_pre.candidates(&buf, hello.len(), 443), 0, "a ClientHello of {} bytes", hello.len());
        let xmpp = c.sig_pre.candidates(&buf, hello.len(), 5222);
        for port in [443, 5222, 80, 8443] {
            assert_eq!(c.sig_pre.candidates_hello(&buf, hello.len(), port), c.sig_pre.candidates(&buf, hello.len(), port));
        }
        assert_eq!(xmpp & !size_only, 0, "a ClientHello of {} bytes to port 5222", hello.len());
        left += usize::from(xmpp != 0);
    }
    assert!((1..=2).contains(&left), "{left} of 300 ClientHellos to port 5222 leave the size-only shape");
}

#[test]
fn signature_conflicts() {
    // The same bytes as the built-in xmpp stream header, for another app.
    let e = errors(&sig_policy("        offset: 0\n        bytes: \"3c 73 74 72 65 61 6d 3a 73 74 72 65 61 6d\"\n"));
    assert!(!e.is_empty());
    assert_eq!((e[0].line, e[0].column), (5, 9));
    assert!(e[0].message.contains("signature `xmpp-stream` of app `xmpp` (builtin.yaml:"), "{}", e[0]);
    // The same signature twice for the same app is merged.
    let sig = "      - name: a\n        bytes: \"4d 43\"\n";
    let (_, c) = ok(&format!("version: 1\ncatalogue:\n  mychat:\n    signatures:\n{sig}{}", sig.replace("name: a", "name: b")));
    assert_eq!(c.sigs.iter().filter(|(_, v)| v.app == CUSTOM_FIRST).count(), 2);
    // Two custom apps claiming one domain.
    one_error(
        "version: 1\ncatalogue:\n  a:\n    domains: [chat.example.com]\n  b:\n    domains: [Chat.Example.com.]\n",
        6,
        15,
        "already belongs to app `a` (t.yaml:4)",
    );
    // A custom app claiming a built-in domain.
    one_error("version: 1\ncatalogue:\n  mine:\n    domains: [whatsapp.net]\n", 4, 15, "already belongs to app `whatsapp`");
}

#[test]
fn defaults_reach_the_config() {
    let (p, c) = ok("version: 1\ndefaults:\n  action: drop\n  inspect_packets: 8\n  unparsed: drop\n  fragments: drop\n");
    assert_eq!(p.defaults.inspect_packets, 8);
    assert_eq!(c.config.inspect_packets, 8);
    assert_eq!(c.config.unparsed_action, imfw_common::config::ACTION_DROP);
    assert_eq!(c.config.fragment_action, imfw_common::config::ACTION_DROP);
    assert_eq!(verdict(&c, "10.0.0.1", id("slack")), Verdict::Drop);
    assert_eq!(verdict(&c, "10.0.0.1", 0), Verdict::Allow);
}

#[test]
fn empty_sections_are_allowed() {
    ok("version: 1\ndefaults:\napps:\nrules:\ncatalogue:\n");
}

#[test]
fn pending_choice_reaches_the_config() {
    let (_, c) = ok("version: 1\n");
    assert_eq!(c.config.pending_action, imfw_common::config::ACTION_PASS, "allow by default");
    let (_, c) = ok("version: 1\ndefaults:\n  pending: drop\n");
    assert_eq!(c.config.pending_action, imfw_common::config::ACTION_DROP);
    let e = errors("version: 1\ndefaults:\n  pending: hold\n");
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].column), (3, 12), "{}", e[0]);
    assert!(e[0].message.contains("allow") && e[0].message.contains("drop"), "{}", e[0]);
}

#[test]
fn controller_down_choice_reaches_the_config() {
    use imfw_common::config::{ACTION_DROP, ACTION_PASS};
    let (p, c) = ok("version: 1\n");
    assert_eq!(p.defaults.controller_down, super::ControllerDown::Closed);
    assert_eq!(c.config.controller_down, ACTION_DROP, "closed by default");
    let (_, c) = ok("version: 1\ndefaults:\n  controller_down: open\n");
    assert_eq!(c.config.controller_down, ACTION_PASS);
    let (_, c) = ok("version: 1\ndefaults: {controller_down: closed, pending: allow}\n");
    assert_eq!((c.config.controller_down, c.config.pending_action), (ACTION_DROP, ACTION_PASS));
    let e = errors("version: 1\ndefaults:\n  controller_down: fail\n");
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].column), (3, 20), "{}", e[0]);
    assert!(e[0].message.contains("open") && e[0].message.contains("closed"), "{}", e[0]);
}

#[test]
fn content_rules_and_monitor_settings() {
    let (p, _) = ok("version: 1
apps: {xmpp: monitor}
content:
  rules:
    - {name: secrets, action: block, keywords: [project falcon]}
    - {name: cards, action: log, patterns: [payment_card]}
monitor: {on_gap: drop, archive: /srv/imfw/archive, retention_days: 90, max_flows: 100, memory_mb: 64}
");
    assert_eq!(p.content.len(), 2);
    assert_eq!(p.monitor.on_gap, super::model::OnGap::Drop);
    assert_eq!(p.monitor.archive, std::path::PathBuf::from("/srv/imfw/archive"));
    assert_eq!((p.monitor.retention_days, p.monitor.max_flows, p.monitor.memory_bytes), (90, 100, 64 << 20));
    let (p, _) = ok("version: 1\n");
    assert!(p.content.is_empty());
    assert_eq!(p.monitor, super::Monitor::default());
}

#[test]
fn content_errors_name_the_rule_line() {
    let e = one_error(
        "version: 1\ncontent:\n  rules:\n    - {name: a, action: block, keywords: [x]}\n    - {name: b, action: block, patterns: [visa]}\n",
        5,
        7,
        "unknown pattern `visa`",
    );
    assert!(e.message.contains("content.rules[1] (b)"), "{e}");
    one_error("version: 1\ncontent:\n  rules:\n    - {name: a, action: shout, keywords: [x]}\n", 4, 25, "shout");
    one_error("version: 1\nmonitor: {retention_days: -1}\n", 2, 27, "retention_days -1 is out of range");
    one_error("version: 1\nmonitor: {archive: relative/dir}\n", 2, 20, "not an absolute path");
    one_error("version: 1\nmonitor: {on_gap: maybe}\n", 2, 19, "maybe");
}

#[test]
fn size_only_signatures_need_an_exact_size_and_ports() {
    let base = "version: 1\ncatalogue:\n  mychat:\n    signatures:\n      - {name: s, bytes: \"00\", mask: \"00\"";
    one_error(&format!("{base}, min_len: 48, max_len: 48}}\n"), 5, 38, "size-only signature needs an exact size");
    one_error(&format!("{base}, min_len: 40, max_len: 48, ports: 9000}}\n"), 5, 38, "mask is all zero");
    // One size-only signature per offset and direction: its key is all zero bytes, and the
    // built-in Threema handshake holds offset 0 for the client.
    one_error(&format!("{base}, min_len: 48, max_len: 48, ports: 9000}}\n"), 5, 9, "matches the same bytes as signature `threema-client-hello`");
    let (_, c) = ok(&format!("{base}, offset: 1, min_len: 48, max_len: 48, ports: 9000}}\n"));
    assert!(c.sigs.iter().any(|(_, v)| v.min_len == 48 && v.max_len == 48 && v.port_lo == 9000));
}

#[test]
fn a_reload_keeps_custom_app_ids() {
    let cat = |names: &[&str]| -> String {
        let apps: String = names.iter().map(|n| format!("  {n}:\n    domains: [{n}.example]\n")).collect();
        format!("version: 1\ncatalogue:\n{apps}")
    };
    let (_, running) = ok(&cat(&["acme", "beta", "gamma"]));
    assert_eq!(running.app_id("beta"), Some(CUSTOM_FIRST + 1));
    // beta and gamma move up, acme goes, delta is new.
    let (mut p, _) = ok(&cat(&["gamma", "delta", "beta"]));
    p.keep_app_ids(&running.apps);
    let c = p.compile().expect("compiles");
    assert_eq!(c.app_id("beta"), running.app_id("beta"));
    assert_eq!(c.app_id("gamma"), running.app_id("gamma"));
    let delta = c.app_id("delta").expect("delta has an id");
    assert!(delta >= CUSTOM_FIRST + 3, "a new app does not take the id acme just left ({delta})");
    assert_eq!(c.app_name(CUSTOM_FIRST), None, "acme's id is unused");
    assert!(c.names.iter().any(|(k, m)| k.hash == domain_hash("beta.example") && Some(m.app) == running.app_id("beta")));
    // With every id taken, a new app reuses one a dropped app left.
    let many: Vec<String> = (0..usize::from(MAX_APPS - CUSTOM_FIRST)).map(|i| format!("app{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let (_, full) = ok(&cat(&refs));
    let mut next = refs.clone();
    next[0] = "newcomer";
    let (mut p, _) = ok(&cat(&next));
    p.keep_app_ids(&full.apps);
    let c = p.compile().expect("compiles");
    assert_eq!(c.app_id("newcomer"), Some(CUSTOM_FIRST));
    assert_eq!(c.app_id("app1"), full.app_id("app1"));
}
