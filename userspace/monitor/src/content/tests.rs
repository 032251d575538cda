//! The policy end to end: YAML in, decisions out.

use proptest::prelude::*;

use super::*;
use crate::message::{Attachment, Direction, MessageKind, Protocol, TransferKind};

fn policy(yaml: &str) -> ContentPolicy {
    let cfg: ContentConfig = serde_yaml::from_str(yaml).expect("test YAML");
    ContentPolicy::compile(&cfg).expect("test policy compiles")
}

fn compile_err(yaml: &str) -> String {
    let cfg: ContentConfig = serde_yaml::from_str(yaml).expect("test YAML");
    ContentPolicy::compile(&cfg)
        .expect_err("policy must be refused")
        .to_string()
}

fn msg(body: &str) -> Message {
    Message {
        protocol: Protocol::Xmpp,
        direction: Direction::ClientToServer,
        kind: MessageKind::Chat,
        sender: Some("alice@example.com".into()),
        recipients: vec!["bob@example.com".into()],
        body: body.into(),
        attachments: Vec::new(),
        stream_offset: 0,
    }
}

fn att(name: &str, size: Option<u64>, url: Option<&str>) -> Attachment {
    Attachment {
        transfer: TransferKind::XmppHttpUpload,
        name: name.into(),
        size,
        mime: None,
        url: url.map(Into::into),
    }
}

fn with_att(body: &str, a: Attachment) -> Message {
    let mut m = msg(body);
    m.attachments.push(a);
    m
}

/// `rule: reason` of every match, in order.
fn matched(p: &ContentPolicy, m: &Message) -> Vec<String> {
    p.evaluate(m)
        .matches
        .into_iter()
        .map(|m| format!("{}: {}", m.rule, m.reason))
        .collect()
}

fn rules_hit(p: &ContentPolicy, m: &Message) -> Vec<String> {
    p.evaluate(m).matches.into_iter().map(|m| m.rule).collect()
}

// ---- keywords ----

const WORDS: &str = r#"
rules:
  - name: falcon
    action: block
    keywords: ["Project Falcon", "internal only"]
  - name: bird
    action: log
    keywords: [falcon]
  - name: word-cat
    action: log
    keywords: [cat]
    whole_word: true
  - name: umlaut
    action: log
    keywords: ["über", "straße"]
"#;

#[test]
fn keywords_are_case_insensitive_and_overlap_across_rules() {
    let p = policy(WORDS);
    assert_eq!(
        matched(&p, &msg("about PROJECT falcon, INTERNAL ONLY")),
        ["falcon: keyword `Project Falcon`", "bird: keyword `falcon`"]
    );
    assert_eq!(
        p.evaluate(&msg("about PROJECT falcon")).action,
        Action::Block
    );
    assert_eq!(matched(&p, &msg("a falconer")), ["bird: keyword `falcon`"]);
    assert_eq!(p.evaluate(&msg("nothing here")), Decision::allow());
}

#[test]
fn whole_word_keywords() {
    let p = policy(WORDS);
    assert_eq!(rules_hit(&p, &msg("the cat sat")), ["word-cat"]);
    assert_eq!(rules_hit(&p, &msg("CAT.")), ["word-cat"]);
    assert_eq!(rules_hit(&p, &msg("cat")), ["word-cat"]);
    assert!(rules_hit(&p, &msg("concatenate")).is_empty());
    assert!(rules_hit(&p, &msg("cats")).is_empty());
    assert!(rules_hit(&p, &msg("cat_1")).is_empty());
    // A letter outside ASCII is a word character too.
    assert!(rules_hit(&p, &msg("écat")).is_empty());
    assert_eq!(rules_hit(&p, &msg("«cat»")), ["word-cat"]);
}

#[test]
fn unicode_case_folding() {
    let p = policy(WORDS);
    assert_eq!(rules_hit(&p, &msg("ÜBER alles")), ["umlaut"]);
    assert_eq!(rules_hit(&p, &msg("Über alles")), ["umlaut"]);
    assert_eq!(rules_hit(&p, &msg("HAUPTSTRASSE 1")), ["umlaut"]);
    assert_eq!(rules_hit(&p, &msg("Hauptstraße 1")), ["umlaut"]);
    assert!(rules_hit(&p, &msg("uber alles")).is_empty());
    // Non-ASCII text with an ASCII keyword.
    assert_eq!(
        rules_hit(&p, &msg("Ärger: PROJECT FALCON")),
        ["falcon", "bird"]
    );
    let greek = policy("rules: [{name: g, action: log, keywords: [ΟΔΟΣ]}]");
    assert_eq!(rules_hit(&greek, &msg("η οδος")), ["g"]);
    assert_eq!(rules_hit(&greek, &msg("η οδοσ")), ["g"]);
}

#[test]
fn keywords_in_attachment_names() {
    let p = policy(WORDS);
    let m = with_att(
        "see file",
        att("Project_Falcon internal only.pdf", Some(1), None),
    );
    assert_eq!(
        matched(&p, &m),
        [
            "falcon: keyword `internal only` in file name `Project_Falcon internal only.pdf`",
            "bird: keyword `falcon` in file name `Project_Falcon internal only.pdf`"
        ]
    );
}

#[test]
fn allow_phrases_exempt_the_occurrences_inside_them() {
    let p = policy(
        r#"
rules:
  - name: bird
    action: block
    keywords: [falcon]
  - name: rocket
    action: allow
    keywords: ["falcon heavy", "spacex falcon"]
"#,
    );
    let d = p.evaluate(&msg("Falcon Heavy launch"));
    assert_eq!(d.action, Action::Allow);
    assert_eq!(
        matched(&p, &msg("Falcon Heavy launch")),
        ["rocket: keyword `falcon heavy`"]
    );
    // Overlapping allow phrases merge: "spacex falcon heavy" is covered.
    assert_eq!(rules_hit(&p, &msg("spacex falcon heavy")), ["rocket"]);
    // Another occurrence outside the allowed phrase still counts.
    let d = p.evaluate(&msg("falcon heavy launch; also the falcon plan"));
    assert_eq!(d.action, Action::Block);
    assert_eq!(
        rules_hit(&p, &msg("falcon heavy launch; also the falcon plan")),
        ["bird", "rocket"]
    );
    assert_eq!(p.evaluate(&msg("a falcon")).action, Action::Block);
}

#[test]
fn allow_spans_past_the_bound_exempt_nothing() {
    let p = policy(
        r#"
rules:
  - name: bird
    action: block
    keywords: [falcon]
  - name: rocket
    action: allow
    keywords: ["falcon heavy"]
"#,
    );
    let covered = "falcon heavy ".repeat(keywords::MAX_ALLOW_SPANS);
    assert_eq!(p.evaluate(&msg(&covered)).action, Action::Allow);
    // Allow spans do not merge (a space between), so one more goes past the bound.
    let past = format!("{covered}falcon heavy");
    assert_eq!(p.evaluate(&msg(&past)).action, Action::Block);
}

// ---- patterns ----

const DATA: &str = r"
rules:
  - name: cards
    action: block
    patterns: [payment_card]
  - name: banking
    action: log
    patterns: [iban, payment_card]
  - name: national-ids
    action: log
    patterns: [us_ssn, uk_nino]
";

#[test]
fn patterns_match_and_redact() {
    let p = policy(DATA);
    let m = msg("card 4111 1111 1111 1111 and iban GB82 WEST 1234 5698 7654 32");
    let d = p.evaluate(&m);
    assert_eq!(d.action, Action::Block);
    assert_eq!(
        matched(&p, &m),
        [
            "cards: payment_card 4111 **** **** 1111",
            "banking: payment_card 4111 **** **** 1111",
        ]
    );
    assert_eq!(
        matched(&p, &msg("iban GB82WEST12345698765432")),
        ["banking: iban GB82 **** **** **** **54 32"]
    );
    assert_eq!(
        matched(&p, &msg("ssn 123-45-6789")),
        ["national-ids: us_ssn ***-**-6789"]
    );
    assert_eq!(
        matched(&p, &msg("NI number AB 12 34 56 C")),
        ["national-ids: uk_nino AB ** ** ** C"]
    );
    for d in [p.evaluate(&m)] {
        for r in d.matches {
            assert!(
                !r.reason.contains("4111 1111 1111 1111") && !r.reason.contains("4111111111111111")
            );
            assert!(!r.reason.contains("WEST"));
        }
    }
}

#[test]
fn numbers_that_fail_validation_do_not_match() {
    let p = policy(DATA);
    for body in [
        "order 4111 1111 1111 1112 shipped",
        "tracking 1Z999AA10123456784, invoice 2024-0001-2345-6789",
        "call 0800 123 4567 or +44 20 7946 0958",
        "GB82 WEST 1234 5698 7654 31",
        "ssn 000-12-3456, 666-12-3456, 900-12-3456",
        "QQ 12 34 56 C",
        "pi 3.14159265358979 e 2.718281828459045",
        "timestamps 1700000000000 1700000000001",
    ] {
        assert_eq!(p.evaluate(&msg(body)), Decision::allow(), "{body}");
    }
}

#[test]
fn patterns_in_file_names_do_not_repeat_the_name() {
    let p = policy(DATA);
    let m = with_att("", att("4111111111111111.txt", None, None));
    assert_eq!(
        matched(&p, &m),
        [
            "cards: payment_card 4111 **** **** 1111 in a file name",
            "banking: payment_card 4111 **** **** 1111 in a file name",
        ]
    );
}

#[test]
fn allow_pattern_rule_exempts_its_kind_only() {
    let p = policy(
        r"
rules:
  - name: cards
    action: block
    patterns: [payment_card, iban]
  - name: test-cards-ok
    action: allow
    patterns: [payment_card]
",
    );
    let d = p.evaluate(&msg("4111111111111111"));
    assert_eq!(d.action, Action::Allow);
    assert_eq!(rules_hit(&p, &msg("4111111111111111")), ["test-cards-ok"]);
    let both = msg("4111111111111111 GB82WEST12345698765432");
    assert_eq!(p.evaluate(&both).action, Action::Block);
    assert_eq!(
        matched(&p, &both),
        [
            "cards: iban GB82 **** **** **** **54 32",
            "test-cards-ok: payment_card 4111 **** **** 1111"
        ]
    );
}

// ---- URLs ----

const LINKS: &str = r#"
rules:
  - name: phishing
    action: block
    urls:
      domains: [evil.example, "bücher.example"]
      suffixes: [".zip", "xn--80ak6aa92e.com"]
      path_prefixes: ["example.com/login", "example.com/über"]
  - name: intranet
    action: allow
    urls: {domains: [intranet.example]}
  - name: archives
    action: log
    urls: {suffixes: [".zip"]}
"#;

#[test]
fn url_domains_match_subdomains_only() {
    let p = policy(LINKS);
    assert_eq!(
        matched(&p, &msg("go to https://evil.example/x")),
        ["phishing: url `https://evil.example/x` in domain `evil.example`"]
    );
    assert_eq!(
        rules_hit(&p, &msg("http://a.b.EVIL.example:8080/")),
        ["phishing"]
    );
    assert!(rules_hit(&p, &msg("http://notevil.example/")).is_empty());
    assert!(rules_hit(&p, &msg("http://evil.example.org/")).is_empty());
    assert_eq!(rules_hit(&p, &msg("www.evil.example")), ["phishing"]);
    // Not a URL: no scheme and no www.
    assert!(rules_hit(&p, &msg("evil.example/login")).is_empty());
}

#[test]
fn url_tricks_are_normalised() {
    let p = policy(LINKS);
    for body in [
        "http://good.com@evil.example/",
        "http://good.com:pw@EVIL.EXAMPLE./",
        "http://%65vil.example/",
        "http:\\\\evil.example\\x",
        "HTTPS://Evil.Example:443/a",
        "http://evil。example/",
    ] {
        let d = p.evaluate(&msg(body));
        assert_eq!(d.action, Action::Block, "{body}");
        assert!(
            d.matches[0].reason.contains("in domain `evil.example`"),
            "{body}: {:?}",
            d.matches
        );
    }
    assert_eq!(
        matched(&p, &msg("http://good.com@evil.example/")),
        ["phishing: url `http://evil.example/` in domain `evil.example`"]
    );
    // The `@` after a backslash is in the path: the host is good.com.
    assert!(rules_hit(&p, &msg("http://good.com\\@evil.example/")).is_empty());
}

#[test]
fn url_idna_rules_match_either_form() {
    let p = policy(LINKS);
    assert_eq!(
        matched(&p, &msg("http://xn--bcher-kva.example/")),
        ["phishing: url `http://xn--bcher-kva.example/` in domain `xn--bcher-kva.example`"]
    );
    assert_eq!(rules_hit(&p, &msg("http://BÜCHER.example/")), ["phishing"]);
    // The suffix was given in punycode; the URL in Unicode (Cyrillic look-alike of apple.com).
    assert_eq!(
        matched(
            &p,
            &msg("https://www.\u{430}\u{440}\u{440}\u{4cf}\u{435}.com/")
        ),
        ["phishing: url `https://www.xn--80ak6aa92e.com/` ends with `xn--80ak6aa92e.com`"]
    );
    assert!(rules_hit(&p, &msg("https://www.apple.com/")).is_empty());
}

#[test]
fn url_suffixes_and_path_prefixes() {
    let p = policy(LINKS);
    assert_eq!(
        matched(&p, &msg("download http://setup.zip/")),
        [
            "phishing: url `http://setup.zip/` ends with `.zip`",
            "archives: url `http://setup.zip/` ends with `.zip`",
        ]
    );
    // A path ending in .zip is not a host suffix.
    assert!(rules_hit(&p, &msg("https://files.example/setup.zip")).is_empty());
    assert_eq!(
        matched(&p, &msg("https://example.com/login?next=/")),
        ["phishing: url `https://example.com/login` starts with `example.com/login`"]
    );
    for body in [
        "https://example.com/LOGIN.php",
        "https://example.com//login",
        "https://example.com/a/../login",
        "https://example.com/%6Cogin",
        "https://example.com/%C3%BCber/x",
        "https://example.com/über",
        "https://example.com:443/login",
    ] {
        assert_eq!(rules_hit(&p, &msg(body)), ["phishing"], "{body}");
    }
    assert!(rules_hit(&p, &msg("https://example.com/logout")).is_empty());
    // Case-insensitive for ASCII only: `Ü` is another path than `ü`.
    assert!(rules_hit(&p, &msg("https://example.com/%C3%9Cber")).is_empty());
    assert!(rules_hit(&p, &msg("https://www.example.com/login")).is_empty());
}

#[test]
fn allowed_url_is_exempt_but_other_urls_are_not() {
    let p = policy(
        r#"
rules:
  - name: archives
    action: block
    urls: {suffixes: [".zip"]}
  - name: intranet
    action: allow
    urls: {domains: [intranet.zip]}
"#,
    );
    let m = msg("https://intranet.zip/a");
    assert_eq!(p.evaluate(&m).action, Action::Allow);
    assert_eq!(
        matched(&p, &m),
        ["intranet: url `https://intranet.zip/a` in domain `intranet.zip`"]
    );
    let m = msg("https://intranet.zip/a and https://other.zip/b");
    assert_eq!(p.evaluate(&m).action, Action::Block);
    assert_eq!(
        matched(&p, &m),
        [
            "archives: url `https://other.zip/b` ends with `.zip`",
            "intranet: url `https://intranet.zip/a` in domain `intranet.zip`",
        ]
    );
}

#[test]
fn urls_of_attachments_are_checked() {
    let p = policy(LINKS);
    let m = with_att(
        "",
        att("", None, Some("https://upload.evil.example/abc/file.bin")),
    );
    assert_eq!(
        matched(&p, &m),
        ["phishing: url `https://upload.evil.example/abc/file.bin` in domain `evil.example`"]
    );
}

// ---- files ----

const FILES: &str = r#"
rules:
  - name: executables
    action: block
    files: {extensions: [exe, scr, "tar.gz"]}
  - name: big
    action: log
    files: {larger_than: 10MiB}
  - name: big-archives
    action: block
    files: {extensions: [zip], larger_than: 1KB, match_unknown_size: true}
"#;

#[test]
fn file_extensions() {
    let p = policy(FILES);
    let names = |n: &str| rules_hit(&p, &with_att("", att(n, Some(10), None)));
    assert_eq!(names("report.pdf.exe"), ["executables"]);
    assert_eq!(names("REPORT.EXE"), ["executables"]);
    assert_eq!(names("backup.tar.gz"), ["executables"]);
    assert_eq!(names("evil.exe."), ["executables"]);
    assert_eq!(names("evil.scr\0.txt"), ["executables"]);
    assert_eq!(names("C:\\temp\\evil.exe"), ["executables"]);
    assert!(names("report.exe.pdf").is_empty());
    assert!(names("backup.gz").is_empty());
    assert!(names("exe").is_empty());
    assert_eq!(
        matched(&p, &with_att("", att("report.pdf.exe", Some(10), None))),
        ["executables: file `report.pdf.exe` has extension `exe`"]
    );
}

#[test]
fn file_name_from_the_url() {
    let p = policy(FILES);
    let m = with_att(
        "",
        att(
            "",
            Some(10),
            Some("https://upload.example/x/setup%2Eexe?token=1"),
        ),
    );
    assert_eq!(
        matched(&p, &m),
        ["executables: file `setup.exe` has extension `exe`"]
    );
    let m = with_att(
        "",
        att(
            "photo.jpg",
            Some(10),
            Some("https://upload.example/x/setup.exe"),
        ),
    );
    assert_eq!(
        matched(&p, &m),
        ["executables: file `photo.jpg` has extension `exe`"]
    );
}

#[test]
fn file_sizes_and_unknown_sizes() {
    let p = policy(FILES);
    let big = 10 * 1024 * 1024;
    assert!(rules_hit(&p, &with_att("", att("a.iso", Some(big), None))).is_empty());
    assert_eq!(
        matched(&p, &with_att("", att("a.iso", Some(big + 1), None))),
        ["big: file `a.iso` is 10485761 bytes, larger than 10485760"]
    );
    // Without match_unknown_size, an unknown size is not large.
    assert!(rules_hit(&p, &with_att("", att("a.iso", None, None))).is_empty());
    // Both conditions of one rule must hold.
    assert!(rules_hit(&p, &with_att("", att("a.zip", Some(1000), None))).is_empty());
    assert_eq!(
        matched(&p, &with_att("", att("a.zip", Some(1001), None))),
        ["big-archives: file `a.zip` has extension `zip` and is 1001 bytes, larger than 1000"]
    );
    assert_eq!(matched(&p, &with_att("", att("a.zip", None, None))), [
        "big-archives: file `a.zip` has extension `zip` and is of unknown size (counted as larger than 1000)"
    ]);
}

#[test]
fn allowed_file_is_exempt_from_file_rules_only() {
    let p = policy(
        r"
rules:
  - name: executables
    action: block
    files: {extensions: [exe]}
  - name: installer-ok
    action: allow
    files: {extensions: [setup.exe]}
  - name: words
    action: log
    keywords: [setup]
",
    );
    let m = with_att("", att("product.setup.exe", Some(1), None));
    assert_eq!(p.evaluate(&m).action, Action::Log);
    assert_eq!(rules_hit(&p, &m), ["installer-ok", "words"]);
    let mut m = with_att("", att("product.setup.exe", Some(1), None));
    m.attachments.push(att("virus.exe", Some(1), None));
    assert_eq!(p.evaluate(&m).action, Action::Block);
}

// ---- combination ----

#[test]
fn strongest_action_wins_and_matches_keep_policy_order() {
    let p = policy(
        r"
rules:
  - name: a-log
    action: log
    keywords: [alpha]
  - name: b-allow
    action: allow
    keywords: [beta]
  - name: c-block
    action: block
    keywords: [gamma]
",
    );
    let d = p.evaluate(&msg("gamma beta alpha"));
    assert_eq!(d.action, Action::Block);
    assert_eq!(
        d.matches
            .iter()
            .map(|m| (m.rule.as_str(), m.action))
            .collect::<Vec<_>>(),
        [
            ("a-log", Action::Log),
            ("b-allow", Action::Allow),
            ("c-block", Action::Block)
        ]
    );
    assert_eq!(p.evaluate(&msg("beta alpha")).action, Action::Log);
    let d = p.evaluate(&msg("beta"));
    assert_eq!(d.action, Action::Allow);
    assert_eq!(d.matches.len(), 1);
    assert_eq!(p.evaluate(&msg("delta")), Decision::allow());
}

#[test]
fn every_kind_in_one_message() {
    let p = policy(&format!("{}\n{}", WORDS, &DATA.replace("rules:\n", "")));
    let d = p.evaluate(&msg("project falcon card 5555555555554444"));
    assert_eq!(
        d.matches
            .iter()
            .map(|m| m.rule.as_str())
            .collect::<Vec<_>>(),
        ["falcon", "bird", "cards", "banking"]
    );
    assert_eq!(d.action, Action::Block);
}

#[test]
fn empty_policy_allows_everything() {
    let p = ContentPolicy::compile(&ContentConfig::default()).unwrap();
    assert!(p.is_empty());
    assert_eq!(
        p.evaluate(&msg("4111111111111111 http://evil.example")),
        Decision::allow()
    );
    assert_eq!(policy(WORDS).len(), 4);
}

#[test]
fn policy_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ContentPolicy>();
}

#[test]
fn many_rules_past_the_inline_bitset() {
    use std::fmt::Write as _;
    let mut yaml = String::from("rules:\n");
    for i in 0..300 {
        let _ = writeln!(yaml, "  - {{name: r{i}, action: log, keywords: [w{i}x]}}");
    }
    let p = policy(&yaml);
    let d = p.evaluate(&msg("w3x w299x w299x w3x w280x"));
    assert_eq!(
        d.matches
            .iter()
            .map(|m| m.rule.as_str())
            .collect::<Vec<_>>(),
        ["r3", "r280", "r299"]
    );
}

// ---- compile errors ----

#[test]
fn compile_errors_name_rule_and_field() {
    let cases = [
        (
            "rules: [{name: ' ', action: log, keywords: [x]}]",
            "content.rules[0]: the rule has an empty name; every rule needs a unique name",
        ),
        (
            "rules: [{name: a, action: log, keywords: [x]}, {name: a, action: log, keywords: [y]}]",
            "content.rules[1] (a): the name is already used by content.rules[0]; rule names must be unique",
        ),
        (
            "rules: [{name: a, action: log}]",
            "content.rules[0] (a): the rule has no matcher; give one of keywords, patterns, urls, files",
        ),
        (
            "rules: [{name: a, action: log, keywords: [x], urls: {domains: [x.example]}}]",
            "content.rules[0] (a): the rule has several kinds of matcher (keywords, urls); give one per rule and write a rule for each",
        ),
        (
            "rules: [{name: a, action: log, keywords: []}]",
            "content.rules[0] (a): keywords is empty; list at least one entry or remove the field",
        ),
        ("rules: [{name: a, action: log, keywords: [x, '  ']}]", "content.rules[0] (a): keywords[1] is an empty string"),
        (
            "rules: [{name: a, action: log, patterns: [iban], whole_word: true}]",
            "content.rules[0] (a): whole_word applies to keywords only, and this rule has none",
        ),
        (
            "rules: [{name: a, action: log, patterns: []}]",
            "content.rules[0] (a): patterns is empty; list at least one entry or remove the field",
        ),
        (
            "rules: [{name: a, action: log, patterns: [iban, visa]}]",
            "content.rules[0] (a): patterns[1]: unknown pattern `visa`; known patterns: payment_card, iban, us_ssn, uk_nino",
        ),
        (
            "rules: [{name: a, action: log, files: {larger_than: 10XB}}]",
            "content.rules[0] (a): files.larger_than: `10XB` is not a size: unknown unit `XB`; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB",
        ),
        (
            "rules: [{name: a, action: log, files: {}}]",
            "content.rules[0] (a): files is empty; list at least one entry or remove the field",
        ),
        (
            "rules: [{name: a, action: log, files: {extensions: ['*.exe']}}]",
            "content.rules[0] (a): files.extensions[0]: `*.exe` is not an extension: it contains `*`; write the extension alone, such as `exe` or `tar.gz`",
        ),
        (
            "rules: [{name: a, action: log, files: {extensions: [exe, '']}}]",
            "content.rules[0] (a): files.extensions[1] is an empty string",
        ),
        (
            "rules: [{name: a, action: log, files: {extensions: [exe], match_unknown_size: true}}]",
            "content.rules[0] (a): files.match_unknown_size needs files.larger_than",
        ),
        (
            "rules: [{name: a, action: log, urls: {}}]",
            "content.rules[0] (a): urls is empty; list at least one entry or remove the field",
        ),
        (
            "rules: [{name: a, action: log, urls: {domains: [evil..example]}}]",
            "content.rules[0] (a): urls.domains[0]: `evil..example` is not valid: it has an empty label (two dots in a row, or a dot at the start)",
        ),
        (
            "rules: [{name: a, action: log, urls: {domains: ['*.evil.example']}}]",
            "content.rules[0] (a): urls.domains[0]: `*.evil.example` is not valid: a domain already matches its subdomains; write `evil.example`",
        ),
        (
            "rules: [{name: a, action: log, urls: {suffixes: [zip, '']}}]",
            "content.rules[0] (a): urls.suffixes[1] is an empty string",
        ),
        (
            "rules: [{name: a, action: log, urls: {path_prefixes: [example.com]}}]",
            "content.rules[0] (a): urls.path_prefixes[0]: `example.com` is not valid: a path prefix is `host/path`, such as `example.com/login`; for a whole host use domains",
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(compile_err(yaml), want, "{yaml}");
    }
}

#[test]
fn compile_reports_the_first_bad_rule_in_order() {
    let e = compile_err(
        "rules: [{name: ok, action: log, keywords: [x]}, {name: a, action: log, keywords: []}, {name: b, action: log, patterns: [visa]}]",
    );
    assert!(
        e.starts_with("content.rules[1] (a): keywords is empty"),
        "{e}"
    );
}

// ---- properties ----

fn all_kinds() -> ContentPolicy {
    policy(&format!(
        "{}\n{}\n{}\n{}",
        WORDS,
        DATA.replace("rules:\n", ""),
        LINKS.replace("rules:\n", ""),
        FILES.replace("rules:\n", "")
    ))
}

fn text() -> impl Strategy<Value = String> {
    // Arbitrary Unicode, and text dense in the characters the scanners look at.
    prop_oneof![
        any::<String>(),
        proptest::string::string_regex("[0-9 \\-A-Za-z./:@%\\\\ßÜİ\u{430}。]{0,200}").unwrap(),
        proptest::string::string_regex(
            "(https?:[/\\\\]{0,3}|www\\.|4111|GB82|AB12|falcon|%[0-9A-F]{0,2}|[ .:/@])*"
        )
        .unwrap(),
    ]
}

proptest! {
    #[test]
    fn evaluate_never_panics(body in text(), name in text(), url in text(), size in any::<Option<u64>>()) {
        let p = all_kinds();
        let m = with_att(&body, Attachment {
            transfer: TransferKind::OutOfBand,
            name,
            size,
            mime: None,
            url: Some(url),
        });
        let d = p.evaluate(&m);
        let strongest = d.matches.iter().map(|m| m.action).max().unwrap_or(Action::Allow);
        prop_assert_eq!(d.action, strongest);
    }

    #[test]
    fn inserted_values_are_always_found(before in text(), after in text()) {
        let p = all_kinds();
        let body = format!("{before} 4111 1111 1111 1111 {after}");
        prop_assert!(rules_hit(&p, &msg(&body)).contains(&"cards".to_string()));
        let body = format!("{before} project falcon {after}");
        prop_assert!(rules_hit(&p, &msg(&body)).contains(&"falcon".to_string()));
        let body = format!("{before} https://evil.example/ {after}");
        prop_assert!(rules_hit(&p, &msg(&body)).contains(&"phishing".to_string()));
    }
}
