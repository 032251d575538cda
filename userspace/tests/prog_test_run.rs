//! The real XDP program on crafted packets, through `BPF_PROG_TEST_RUN`: verdicts (the XDP action
//! returned), flow-table entries (app, method, verdict) and counters. Needs root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use imfw::{
    catalogue::{Direction, LenSize},
    dataplane::Dataplane,
    packet,
    policy::{self, Compiled},
    rangetab::RangeTable,
};
use imfw_common::{
    flow::{ADDR_UNRESOLVED, FLAG_CLASS_KNOWN, FlowEntry, STATE_DECIDED, STATE_INSPECTING},
    maps::JUMP_INSPECT,
    matcher::SCRATCH_LEN,
    verdict::{DropReason, Method, Stat, Verdict},
};
use imfw_tests::{
    packets::{self, Ethernet, Ext6, Ipv4, Ipv6, Tcp, Udp, opaque, tcp_flags},
    protocols::{self, ClientHello, ExtOrder, MtprotoTransport, WaPrologue, WaStart},
    util::Rng,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 10);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 20);

const BLOCK_ALL: &str = "
version: 1
defaults: {action: allow, unclassified: allow}
apps: {whatsapp: drop, telegram: drop, signal: drop, discord: drop, slack: drop, teams: drop,
       zoom: drop, xmpp: drop, irc: drop, mqtt: drop}
";

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "BPF_PROG_TEST_RUN tests need root (CAP_BPF)");
}

struct Rig {
    dp: Dataplane,
    c: Compiled,
}

fn rig(yaml: &str) -> Rig {
    require_root();
    let c = policy::parse(yaml, "test.yaml").and_then(|p| p.compile()).unwrap_or_else(|e| panic!("policy: {e}"));
    let mut dp = Dataplane::load(4096).expect("load the XDP program");
    dp.apply(&c).expect("write the policy");
    Rig { dp, c }
}

impl Rig {
    fn run(&self, frame: &[u8]) -> u32 {
        self.dp.test_run(frame).expect("BPF_PROG_TEST_RUN")
    }

    fn entry(&self, frame: &[u8]) -> Option<FlowEntry> {
        let t = packet::tuple(frame).expect("a TCP/UDP frame");
        self.dp.flow(&t.key()).expect("read the flow table")
    }

    fn id(&self, app: &str) -> u16 {
        self.c.app_id(app).unwrap_or_else(|| panic!("no app {app}"))
    }

    fn stat(&self, s: Stat) -> u64 {
        self.dp.snapshot().expect("snapshot").stat(s)
    }
}

/// A TCP conversation between `c` and `s`: handshake, then payloads as the client sends them.
struct Conn {
    c: IpAddr,
    s: IpAddr,
    cport: u16,
    sport: u16,
    vlans: Vec<packets::Vlan>,
}

impl Conn {
    fn v4(cport: u16, sport: u16) -> Self {
        Conn { c: CLIENT4.into(), s: SERVER4.into(), cport, sport, vlans: Vec::new() }
    }

    fn v6(cport: u16, sport: u16) -> Self {
        Conn { c: CLIENT6.into(), s: SERVER6.into(), cport, sport, vlans: Vec::new() }
    }

    fn frame(&self, from_client: bool, flags: u8, payload: &[u8]) -> Vec<u8> {
        // The segment builder's own sequence number.
        self.frame_at(from_client, flags, Tcp::new(0, 0, flags).seq, payload)
    }

    /// As [`Conn::frame`], with sequence number `seq`.
    fn frame_at(&self, from_client: bool, flags: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
        let (src, dst, sp, dp) =
            if from_client { (self.c, self.s, self.cport, self.sport) } else { (self.s, self.c, self.sport, self.cport) };
        let mut tcp = Tcp::new(sp, dp, flags);
        tcp.seq = seq;
        let seg = tcp.encode(src, dst, payload);
        let eth = Ethernet { vlans: self.vlans.clone(), ..Ethernet::default() };
        match (src, dst) {
            (IpAddr::V4(a), IpAddr::V4(b)) => eth.encode(0x0800, &Ipv4::new(a, b, 6).encode(&seg)),
            (IpAddr::V6(a), IpAddr::V6(b)) => eth.encode(0x86dd, &Ipv6::new(a, b, 6).encode(&seg)),
            _ => unreachable!("mixed families"),
        }
    }

    fn syn(&self) -> Vec<u8> {
        self.frame(true, tcp_flags::SYN, &[])
    }

    fn synack(&self) -> Vec<u8> {
        self.frame(false, tcp_flags::SYN | tcp_flags::ACK, &[])
    }

    fn client(&self, payload: &[u8]) -> Vec<u8> {
        self.frame(true, tcp_flags::ACK | tcp_flags::PSH, payload)
    }

    fn server(&self, payload: &[u8]) -> Vec<u8> {
        self.frame(false, tcp_flags::ACK | tcp_flags::PSH, payload)
    }
}

/// Handshake, then the client's segments; returns the action on the last one.
fn open(r: &Rig, conn: &Conn, segments: &[Vec<u8>]) -> u32 {
    assert_eq!(r.run(&conn.syn()), XDP_PASS, "a SYN carries nothing to classify and passes");
    assert_eq!(r.run(&conn.synack()), XDP_PASS);
    let mut last = XDP_PASS;
    for s in segments {
        last = r.run(&conn.client(s));
    }
    last
}

/// A ClientHello whose name has `n` + 12 bytes (`aaa….example.org`): its length moves with `n`.
fn padded_hello(n: usize) -> Vec<u8> {
    ClientHello::new(&format!("{}.example.org", "a".repeat(n))).build()
}

/// Whether the policy's signature prefilter leaves a shape `payload` to `port` may match: the
/// main program then leaves it to the stages.
fn shape_may_match(r: &Rig, payload: &[u8], port: u16) -> bool {
    let mut buf = [0u8; SCRATCH_LEN];
    buf[..payload.len()].copy_from_slice(payload);
    r.c.sig_pre.candidates(&buf, payload.len(), port) != 0
}

fn assert_decided(r: &Rig, conn: &Conn, app: &str, method: Method, verdict: Verdict) {
    let e = r.entry(&conn.syn()).expect("flow entry");
    assert_eq!(e.app, r.id(app), "app of {app} flow");
    assert_eq!(Method::from_u8(e.method), method, "method of {app} flow");
    assert_eq!(Verdict::from_u8(e.verdict), verdict, "verdict of {app} flow");
}

/// Every starter app's real opener, on its own port and on ports other services own, over
/// IPv4, IPv6, 802.1Q and Q-in-Q: dropped at the first segment that identifies it, and every
/// later packet of the flow in both directions too.
#[test]
fn starter_apps_are_dropped_on_any_port_and_encapsulation() {
    let r = rig(BLOCK_ALL);
    let mut rng = Rng::new(42);
    let openers = protocols::im_openers(&mut rng);
    assert!(openers.len() >= 12, "the lab's opener list shrank");
    let mut cport = 20000;
    for o in &openers {
        let method = if o.label.starts_with("tls") {
            Method::TlsSni
        } else if o.label.starts_with("http") {
            Method::HttpConnect
        } else {
            Method::Signature
        };
        for &port in &[o.own_port, 80, 443, 31337] {
            for variant in 0..4 {
                cport += 1;
                let mut conn = if variant == 1 { Conn::v6(cport, port) } else { Conn::v4(cport, port) };
                match variant {
                    2 => conn.vlans = vec![packets::Vlan::dot1q(100)],
                    3 => conn.vlans = vec![packets::Vlan::dot1ad(200), packets::Vlan::dot1q(100)],
                    _ => {}
                }
                let what = format!("{} on port {port} (variant {variant})", o.label);
                let last = open(&r, &conn, &o.segments);
                assert_eq!(last, XDP_DROP, "{what}: last client segment");
                assert_decided(&r, &conn, o.app, method, Verdict::Drop);
                assert_eq!(r.run(&conn.server(b"reply")), XDP_DROP, "{what}: server side after the verdict");
                assert_eq!(r.run(&conn.client(b"more")), XDP_DROP, "{what}: client side after the verdict");
            }
        }
    }
}

#[test]
fn web_traffic_passes_and_is_left_unclassified() {
    let r = rig(BLOCK_ALL);
    let conn = Conn::v4(30001, 80);
    assert_eq!(open(&r, &conn, &[protocols::http_get("www.example.com", "/index.html")]), XDP_PASS);
    assert_eq!(r.run(&conn.server(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")), XDP_PASS);
    let tls = Conn::v4(30002, 443);
    assert_eq!(open(&r, &tls, &[ClientHello::new("www.example.com").build()]), XDP_PASS);
    let e = r.entry(&tls.syn()).expect("entry");
    assert_eq!(e.app, 0);
    // Lookalikes must not match a domain by substring: only the name or its subdomains.
    for sni in ["notwhatsapp.com", "whatsapp.com.example.net", "signal.org.example", "xdiscord.gg"] {
        let c = Conn::v4(30100 + sni.len() as u16, 443);
        assert_eq!(open(&r, &c, &[ClientHello::new(sni).build()]), XDP_PASS, "{sni}");
        assert_eq!(r.entry(&c.syn()).unwrap().app, 0, "{sni} matched an IM domain");
    }
}

#[test]
fn server_names_match_case_insensitively_and_by_suffix() {
    let r = rig(BLOCK_ALL);
    for (i, sni) in ["WEB.WhatsApp.COM", "whatsapp.com", "mmg.whatsapp.net", "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.whatsapp.net", "whatsapp.com."]
        .iter()
        .enumerate()
    {
        let c = Conn::v4(31000 + i as u16, 8443);
        assert_eq!(open(&r, &c, &[ClientHello::new(sni).build()]), XDP_DROP, "{sni}");
        assert_decided(&r, &c, "whatsapp", Method::TlsSni, Verdict::Drop);
    }
}

#[test]
fn client_hello_with_shuffled_extensions_and_post_quantum_share() {
    let r = rig(BLOCK_ALL);
    for seed in 0..6u64 {
        let mut ch = ClientHello::new("gateway.discord.gg");
        ch.order = ExtOrder::Shuffled(seed);
        ch.post_quantum = seed % 2 == 0;
        ch.seed = seed;
        let c = Conn::v6(32000 + seed as u16, 443);
        assert_eq!(open(&r, &c, &[ch.build()]), XDP_DROP, "seed {seed}");
        assert_decided(&r, &c, "discord", Method::TlsSni, Verdict::Drop);
    }
}

#[test]
fn http_host_and_connect_through_a_proxy() {
    let r = rig(BLOCK_ALL);
    let c = Conn::v4(33001, 8080);
    assert_eq!(open(&r, &c, &[protocols::http_connect("web.whatsapp.com", 443)]), XDP_DROP);
    assert_decided(&r, &c, "whatsapp", Method::HttpConnect, Verdict::Drop);
    let c = Conn::v4(33002, 80);
    assert_eq!(open(&r, &c, &[protocols::http_get("web.telegram.org", "/k/")]), XDP_DROP);
    assert_decided(&r, &c, "telegram", Method::HttpHost, Verdict::Drop);
    // Header names are case-insensitive (RFC 9110 §5.1), and Host need not come first.
    let req = b"POST /api HTTP/1.1\r\nUser-Agent: x\r\nhOsT:   slack.com:8080\r\n\r\n".to_vec();
    let c = Conn::v4(33003, 3128);
    assert_eq!(open(&r, &c, &[req]), XDP_DROP);
    assert_decided(&r, &c, "slack", Method::HttpHost, Verdict::Drop);
}

#[test]
fn address_sets_decide_at_the_first_payload_without_a_name() {
    let r = rig(BLOCK_ALL);
    // Telegram's published networks: an unnamed payload (any protocol) decides the flow.
    let blob = vec![0x5a; 64];
    let tg4 = Conn { s: Ipv4Addr::new(149, 154, 167, 51).into(), ..Conn::v4(34001, 443) };
    assert_eq!(open(&r, &tg4, std::slice::from_ref(&blob)), XDP_DROP);
    assert_decided(&r, &tg4, "telegram", Method::Address, Verdict::Drop);
    let tg6 = Conn { s: "2001:67c:4e8:f004::a".parse::<Ipv6Addr>().unwrap().into(), ..Conn::v6(34002, 80) };
    assert_eq!(open(&r, &tg6, std::slice::from_ref(&blob)), XDP_DROP);
    assert_decided(&r, &tg6, "telegram", Method::Address, Verdict::Drop);
    // A server name in the payload outranks the address: a name no app claims leaves the flow
    // to the rest of inspection, which finds nothing.
    let web = Conn { s: Ipv4Addr::new(52, 114, 77, 33).into(), ..Conn::v4(34004, 443) };
    assert_eq!(open(&r, &web, &[ClientHello::new("mobile.pipe.aria.microsoft.com").build()]), XDP_PASS);
    assert_eq!(r.entry(&web.syn()).expect("flow entry").app, 0, "a telemetry name in a Teams network is not Teams");
    // An address literal as the server name names nothing: the Teams network decides.
    let lit = Conn { s: Ipv4Addr::new(52, 114, 250, 152).into(), ..Conn::v4(34005, 443) };
    assert_eq!(open(&r, &lit, &[ClientHello::new("52.114.250.152").build()]), XDP_DROP);
    assert_decided(&r, &lit, "teams", Method::Address, Verdict::Drop);
    // Next door is not Telegram.
    let other = Conn { s: Ipv4Addr::new(149, 154, 176, 1).into(), ..Conn::v4(34003, 443) };
    assert_eq!(open(&r, &other, std::slice::from_ref(&blob)), XDP_PASS);
    // The lookups wait for a payload that needs them: a flow without payload has walked no
    // trie, and one a server name decides never looks its address up, yet its verdict is the
    // one for its client's network.
    let quiet = Conn { s: Ipv4Addr::new(149, 154, 167, 52).into(), ..Conn::v4(34006, 443) };
    open(&r, &quiet, &[]);
    let e = r.entry(&quiet.syn()).expect("flow entry");
    assert_eq!((e.addr_app, e.flags & FLAG_CLASS_KNOWN), (ADDR_UNRESOLVED, 0), "a SYN and a SYN-ACK resolve nothing");
    assert_eq!(r.run(&quiet.client(&blob)), XDP_DROP, "the first payload still finds the Telegram network");
    let e = r.entry(&quiet.syn()).expect("flow entry");
    assert_eq!((e.addr_app, e.flags & FLAG_CLASS_KNOWN), (r.id("telegram"), FLAG_CLASS_KNOWN));
    let named = Conn { s: Ipv4Addr::new(149, 154, 167, 53).into(), ..Conn::v4(34007, 443) };
    assert_eq!(open(&r, &named, &[ClientHello::new("web.whatsapp.com").build()]), XDP_DROP);
    assert_decided(&r, &named, "whatsapp", Method::TlsSni, Verdict::Drop);
    let e = r.entry(&named.syn()).expect("flow entry");
    assert_eq!((e.addr_app, e.flags & FLAG_CLASS_KNOWN), (ADDR_UNRESOLVED, FLAG_CLASS_KNOWN));
}

#[test]
fn policy_extensions_add_signatures_domains_and_ranges() {
    let r = rig(
        "
version: 1
defaults: {action: allow}
apps: {corpchat: drop, whatsapp: drop}
catalogue:
  corpchat:
    signatures:
      - name: corpchat-hello
        direction: client
        offset: 2
        bytes: \"43 48 ff 01\"
        mask: \"ff ff f0 ff\"
        length: {offset: 0, size: u16be, add: 2}
    domains: [chat.corp.example]
    addresses: [203.0.113.0/24]
  whatsapp:
    domains: [wa.example.net]
",
    );
    // Masked byte (0xf? matches 0xf7) and a length field that covers the rest of the payload.
    let mut hello = vec![0, 8, b'C', b'H', 0xf7, 0x01];
    hello.extend_from_slice(&[0; 4]);
    let c = Conn::v4(35001, 9999);
    assert_eq!(open(&r, &c, &[hello.clone()]), XDP_DROP);
    assert_decided(&r, &c, "corpchat", Method::Signature, Verdict::Drop);
    // Same bytes, wrong length field: not corpchat.
    let mut bad = hello.clone();
    bad[1] = 9;
    let c = Conn::v4(35002, 9999);
    assert_eq!(open(&r, &c, &[bad]), XDP_PASS);
    // Same bytes from the server side: the signature is for the client only.
    let c = Conn::v4(35003, 9999);
    open(&r, &c, &[]);
    assert_eq!(r.run(&c.server(&hello)), XDP_PASS);
    let c = Conn::v4(35004, 443);
    assert_eq!(open(&r, &c, &[ClientHello::new("eu.chat.corp.example").build()]), XDP_DROP);
    assert_decided(&r, &c, "corpchat", Method::TlsSni, Verdict::Drop);
    let c = Conn::v4(35005, 443);
    assert_eq!(open(&r, &c, &[ClientHello::new("edge.wa.example.net").build()]), XDP_DROP);
    assert_decided(&r, &c, "whatsapp", Method::TlsSni, Verdict::Drop);
    let c = Conn { s: Ipv4Addr::new(203, 0, 113, 9).into(), ..Conn::v4(35006, 5000) };
    assert_eq!(open(&r, &c, &[vec![1, 2, 3, 4]]), XDP_DROP);
    assert_decided(&r, &c, "corpchat", Method::Address, Verdict::Drop);
}

/// The policy's IPv4 networks, nested and adjacent, give each address its longest network's app
/// (the range table); a reload replaces them in the generation it writes, leaving nothing of
/// the policy written there before; addresses learned from DNS win in their bucket, follow
/// reloads and go when removed.
#[test]
fn ipv4_networks_nest_reload_and_learn() {
    let policy = |chat: &str| {
        format!(
            "version: 1\ndefaults: {{action: allow, unclassified: allow}}\napps: {{corpchat: drop, corpvoice: monitor}}\n\
             catalogue:\n  corpchat: {{addresses: [{chat}]}}\n  corpvoice: {{addresses: [198.51.100.128/26, 198.51.100.77/32]}}\n"
        )
    };
    let mut r = rig(&policy("198.51.100.0/24, 203.0.113.0/25"));
    let mut port = 43000;
    // The app a new flow's opaque first payload to `server` is decided as (0: none).
    let mut decide = |r: &Rig, server: [u8; 4]| {
        port += 1;
        let c = Conn { s: Ipv4Addr::from(server).into(), ..Conn::v4(port, 5000) };
        open(r, &c, &[vec![0x5a; 32]]);
        let e = r.entry(&c.syn()).expect("flow entry");
        let addr = r.dp.addr_app(Ipv4Addr::from(server).into()).expect("userspace lookup").unwrap_or(0);
        assert_eq!(e.app, addr, "{server:?}: the kernel and the controller's lookup agree");
        e.app
    };
    let (chat, voice) = (r.id("corpchat"), r.id("corpvoice"));
    let layout_a = [
        ([198, 51, 99, 255], 0),
        ([198, 51, 100, 0], chat),
        ([198, 51, 100, 76], chat),
        ([198, 51, 100, 77], voice),
        ([198, 51, 100, 78], chat),
        ([198, 51, 100, 127], chat),
        ([198, 51, 100, 128], voice),
        ([198, 51, 100, 191], voice),
        ([198, 51, 100, 192], chat),
        ([198, 51, 100, 255], chat),
        ([198, 51, 101, 0], 0),
        ([203, 0, 113, 127], chat),
        ([203, 0, 113, 128], 0),
    ];
    for (server, app) in layout_a {
        assert_eq!(decide(&r, server), app, "policy A, server {server:?}");
    }
    let c = Conn { s: Ipv4Addr::new(203, 0, 113, 5).into(), ..Conn::v4(42999, 5000) };
    assert_eq!(open(&r, &c, &[vec![1; 8]]), XDP_DROP);
    assert_decided(&r, &c, "corpchat", Method::Address, Verdict::Drop);

    // Learned, in a bucket (the address's upper 16 bits) with networks, outside them.
    r.dp.set_learned(Ipv4Addr::new(203, 0, 113, 200).into(), voice).expect("learn");
    assert_eq!(decide(&r, [203, 0, 113, 200]), voice);
    assert_eq!(decide(&r, [203, 0, 113, 201]), 0, "its neighbour was not learned");
    assert_eq!(decide(&r, [203, 0, 113, 100]), chat, "the bucket's networks still count");

    // B, in the other generation: corpchat shrinks to 198.51.100.0/25. The learned address
    // comes along, now in a bucket without networks; another is learned in one.
    let b = next_policy(&r, &policy("198.51.100.0/25"));
    assert_eq!(r.dp.apply(&b).expect("switch to B").learned, 1);
    r.dp.set_learned(Ipv4Addr::new(192, 0, 2, 99).into(), chat).expect("learn");
    for (server, app) in [
        ([198, 51, 100, 5], chat),
        ([198, 51, 100, 77], voice),
        ([198, 51, 100, 130], voice),
        ([198, 51, 100, 192], 0),
        ([203, 0, 113, 5], 0),
        ([203, 0, 113, 200], voice),
        ([192, 0, 2, 99], chat),
        ([192, 0, 2, 98], 0),
    ] {
        assert_eq!(decide(&r, server), app, "policy B, server {server:?}");
    }
    let (g_b, _) = r.dp.active();
    assert!(r.dp.range_buckets(g_b).expect("read the buckets")[&0xcb00].learned());
    r.dp.remove_learned(Ipv4Addr::new(203, 0, 113, 200).into()).expect("forget");
    assert_eq!(decide(&r, [203, 0, 113, 200]), 0, "a removed address decides nothing");
    assert!(!r.dp.range_buckets(g_b).expect("read the buckets").contains_key(&0xcb00), "its bucket's flag went with it");

    // C, written where A was: nothing of A's networks, or its learned flags, may be left.
    let c = next_policy(&r, &policy("192.0.2.128/25"));
    assert_eq!(r.dp.apply(&c).expect("switch to C").learned, 1);
    for (server, app) in [
        ([198, 51, 100, 5], 0),
        ([198, 51, 100, 192], 0),
        ([203, 0, 113, 5], 0),
        ([203, 0, 113, 200], 0),
        ([198, 51, 100, 130], voice),
        ([192, 0, 2, 99], chat),
        ([192, 0, 2, 100], 0),
        ([192, 0, 2, 129], chat),
    ] {
        assert_eq!(decide(&r, server), app, "policy C, server {server:?}");
    }
    // The kernel's buckets: C's own and its learned address's in its generation, none in B's.
    let (g, _) = r.dp.active();
    let mut want = RangeTable::build(&c.addr4).expect("C's range table");
    want.flag_learned(Ipv4Addr::new(192, 0, 2, 99));
    assert_eq!(r.dp.range_buckets(g).expect("read the buckets"), want.buckets);
    assert_eq!(r.dp.range_buckets(g ^ 1).expect("read the buckets").len(), 0, "B's generation is emptied");
}

/// A bucket with many networks is searched through its sub-index in the kernel too.
#[test]
fn a_dense_ipv4_bucket_is_searched_through_its_sub_index() {
    // Every other /29 of 198.51.100.0/24 is corpvoice's, the rest corpchat's: 32 steps.
    let voice: Vec<String> = (0..16).map(|i| format!("198.51.100.{}/29", i * 16)).collect();
    let r = rig(&format!(
        "version: 1\ndefaults: {{action: allow, unclassified: allow}}\napps: {{corpchat: drop, corpvoice: monitor}}\n\
         catalogue:\n  corpchat: {{addresses: [198.51.100.0/24]}}\n  corpvoice: {{addresses: [{}]}}\n",
        voice.join(", ")
    ));
    let (g, _) = r.dp.active();
    let bucket = r.dp.range_buckets(g).expect("read the buckets")[&0xc633];
    assert!(bucket.sub_block().is_some(), "198.51.0.0/16 has a sub-index: {bucket:?}");
    let (chat, voice) = (r.id("corpchat"), r.id("corpvoice"));
    for (i, last) in (0u16..256).step_by(3).chain([7, 8, 15, 16, 255]).enumerate() {
        let server = Ipv4Addr::new(198, 51, 100, last as u8);
        let c = Conn { s: server.into(), ..Conn::v4(44000 + i as u16, 5000) };
        open(&r, &c, &[vec![0x5a; 16]]);
        let want = if last % 16 < 8 { voice } else { chat };
        assert_eq!(r.entry(&c.syn()).expect("flow entry").app, want, "server {server}");
    }
}

#[test]
fn rules_by_source_network_win_over_app_actions() {
    let r = rig(
        "
version: 1
defaults: {action: allow}
apps: {whatsapp: drop, telegram: allow}
rules:
  - name: sales-may-whatsapp
    from: [192.0.2.0/25, 2001:db8:1::/64]
    apps: [whatsapp]
    action: allow
  - name: lab-no-im
    from: [192.0.2.128/25]
    apps: all
    action: drop
",
    );
    let ch = ClientHello::new("web.whatsapp.com").build();
    let sales = Conn::v4(36001, 443);
    assert_eq!(open(&r, &sales, std::slice::from_ref(&ch)), XDP_PASS);
    assert_decided(&r, &sales, "whatsapp", Method::TlsSni, Verdict::Allow);
    let sales6 = Conn::v6(36002, 443);
    assert_eq!(open(&r, &sales6, std::slice::from_ref(&ch)), XDP_PASS);
    let lab = Conn { c: Ipv4Addr::new(192, 0, 2, 200).into(), ..Conn::v4(36003, 443) };
    assert_eq!(open(&r, &lab, &[ClientHello::new("web.telegram.org").build()]), XDP_DROP, "lab may use no IM");
    let elsewhere = Conn { c: Ipv4Addr::new(198, 51, 100, 7).into(), s: SERVER4.into(), ..Conn::v4(36004, 443) };
    assert_eq!(open(&r, &elsewhere, &[ch]), XDP_DROP, "per-app action outside the rule networks");
}

/// A family no rule names a network of has no trie to walk (`Config::src_nets`): its flows
/// are of the default class, the other family's still get their rule's.
#[test]
fn a_family_without_rule_networks_gets_the_app_actions() {
    let ch = || vec![ClientHello::new("web.whatsapp.com").build()];
    let r = rig("version: 1\ndefaults: {action: allow}\napps: {whatsapp: drop}\nrules:\n  - {name: lan, from: [192.0.2.0/24], apps: [whatsapp], action: allow}\n");
    assert_eq!(open(&r, &Conn::v4(36101, 443), &ch()), XDP_PASS, "the IPv4 rule");
    assert_eq!(open(&r, &Conn::v6(36102, 443), &ch()), XDP_DROP, "IPv6: the app's action");
    let r = rig("version: 1\ndefaults: {action: allow}\napps: {whatsapp: drop}\nrules:\n  - {name: lan, from: [2001:db8::/32], apps: [whatsapp], action: allow}\n");
    assert_eq!(open(&r, &Conn::v6(36103, 443), &ch()), XDP_PASS, "the IPv6 rule");
    assert_eq!(open(&r, &Conn::v4(36104, 443), &ch()), XDP_DROP, "IPv4: the app's action");
}

#[test]
fn redirect_and_monitor_verdicts() {
    let r = rig(
        "
version: 1
defaults: {action: allow, redirect_to: lo}
apps: {irc: redirect, xmpp: monitor}
",
    );
    let irc = Conn::v4(37001, 6697);
    assert_eq!(open(&r, &irc, &[protocols::irc_registration("bob")]), XDP_REDIRECT);
    assert_decided(&r, &irc, "irc", Method::Signature, Verdict::Redirect);
    assert_eq!(r.run(&irc.server(b":srv 001 bob :hi\r\n")), XDP_REDIRECT);
    // Monitored segments are held until the controller has read them (`monitor.hold`).
    let xmpp = Conn::v6(37002, 443);
    assert_eq!(open(&r, &xmpp, &[protocols::xmpp_stream_header("example.net")]), XDP_DROP);
    assert_decided(&r, &xmpp, "xmpp", Method::Signature, Verdict::Monitor);
    assert_eq!(r.dp.snapshot().expect("snapshot").drop_reason(DropReason::Held).packets, 1);
    let r = rig("version: 1\napps: {xmpp: monitor}\nmonitor: {hold: false}\n");
    assert_eq!(open(&r, &xmpp, &[protocols::xmpp_stream_header("example.net")]), XDP_PASS, "hold: false");
    assert_decided(&r, &xmpp, "xmpp", Method::Signature, Verdict::Monitor);
}

#[test]
fn classifications_are_reported_once_per_flow() {
    let mut r = rig(BLOCK_ALL);
    let _ = r.dp.drain_events();
    let c = Conn::v4(38001, 1883);
    open(&r, &c, &[protocols::mqtt_connect(4, "sensor")]);
    for _ in 0..5 {
        r.run(&c.client(b"\x30\x05\x00\x01tx"));
    }
    let events: Vec<_> = r
        .dp
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            imfw::dataplane::Event::Classified(c) => Some(c),
            imfw::dataplane::Event::Payload(_) | imfw::dataplane::Event::Stream(_) => None,
        })
        .collect();
    assert_eq!(events.len(), 1, "one event per classification");
    assert_eq!(events[0].app, r.id("mqtt"));
    assert_eq!(Verdict::from_u8(events[0].verdict), Verdict::Drop);
    let t = packet::tuple(&c.syn()).unwrap();
    assert_eq!(events[0].key, t.key());
}

#[cfg(target_arch = "x86_64")]
/// Keeps the calling thread on the CPU it runs on until dropped, then restores its affinity:
/// the classification log has a section per CPU, and a test that fills one must stay on it.
struct OnOneCpu(libc::cpu_set_t);

#[cfg(target_arch = "x86_64")]
impl OnOneCpu {
    fn new() -> Self {
        // SAFETY: cpu_set_t is plain bits; sched_getaffinity and sched_setaffinity get the
        // calling thread (0) and a set of the right size; sched_getcpu has no arguments.
        unsafe {
            let mut was: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut was), 0, "sched_getaffinity");
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(usize::try_from(libc::sched_getcpu()).expect("sched_getcpu"), &mut one);
            assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const one), 0, "sched_setaffinity");
            OnOneCpu(was)
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for OnOneCpu {
    fn drop(&mut self) {
        // SAFETY: as above, with the set saved by `new`.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const self.0) };
    }
}

/// A CPU's section of the classification log holds `CLASS_LOG_SLOTS` records until the
/// controller reads them: classifications past that are lost and counted (`events_lost`),
/// never written over unread ones; once read, the section takes new ones again. Records come
/// out in the order written. (The log is x86-64's; other CPUs report through the ring buffer,
/// which the other tests read alike.)
#[cfg(target_arch = "x86_64")]
#[test]
fn a_full_classification_log_counts_what_it_loses() {
    use imfw::dataplane::Event;
    use imfw_common::maps::CLASS_LOG_SLOTS;
    let _cpu = OnOneCpu::new();
    let mut r = rig(BLOCK_ALL);
    let _ = r.dp.drain_events();
    let slots = CLASS_LOG_SLOTS as u16;
    let extra = 5u16;
    let conn = |i: u16| Conn::v4(1024 + i, 1883);
    let key = |i: u16| packet::tuple(&conn(i).syn()).expect("tuple").key();
    for i in 0..slots + extra {
        let c = conn(i);
        assert_eq!(r.run(&c.client(&protocols::mqtt_connect(4, "sensor"))), XDP_DROP, "flow {i}");
    }
    assert_eq!(r.stat(Stat::Classified), u64::from(slots + extra));
    assert_eq!(r.stat(Stat::EventsLost), u64::from(extra), "the classifications past a full section");
    let read: Vec<_> = r.dp.drain_events().into_iter().filter_map(|e| if let Event::Classified(c) = e { Some(c) } else { None }).collect();
    assert_eq!(read.len(), usize::from(slots), "a full section, nothing written over");
    assert!(read.iter().all(|e| e.app == r.id("mqtt") && Verdict::from_u8(e.verdict) == Verdict::Drop));
    assert_eq!(read[0].key, key(0), "the first written comes out first");
    assert_eq!(read[usize::from(slots) - 1].key, key(slots - 1), "the last kept is the last before the section filled");
    // Read, the section takes classifications again, from where it stood.
    let c = conn(slots + extra);
    assert_eq!(r.run(&c.client(&protocols::mqtt_connect(4, "sensor"))), XDP_DROP);
    let again: Vec<_> = r.dp.drain_events().into_iter().filter_map(|e| if let Event::Classified(c) = e { Some(c) } else { None }).collect();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].key, key(slots + extra));
    assert_eq!(r.stat(Stat::EventsLost), u64::from(extra));
}

#[test]
fn counters_match_the_packets_sent() {
    let r = rig(BLOCK_ALL);
    let mut rng = Rng::new(7);
    let c = Conn::v4(39001, 443);
    let first = protocols::telegram_start(MtprotoTransport::Intermediate, &mut rng);
    open(&r, &c, std::slice::from_ref(&first));
    let extra = 25u64;
    let mut dropped_bytes = c.client(&first).len() as u64;
    for i in 0..extra {
        let f = if i % 2 == 0 { c.client(&[i as u8; 40]) } else { c.server(&[i as u8; 60]) };
        dropped_bytes += f.len() as u64;
        assert_eq!(r.run(&f), XDP_DROP);
    }
    let snap = r.dp.snapshot().unwrap();
    let tg = snap.counters.get(&(r.id("telegram"), Verdict::Drop as u8)).copied().unwrap_or_default();
    assert_eq!(tg.packets, extra + 1);
    assert_eq!(tg.bytes, dropped_bytes);
    assert_eq!(snap.drop_reason(DropReason::Policy).packets, extra + 1);
    // The handshake passed while undecided.
    let pending = snap.counters.get(&(0, Verdict::Pending as u8)).copied().unwrap_or_default();
    assert_eq!(pending.packets, 2);
    assert_eq!(snap.stat(Stat::FlowsCreated), 1);
    assert_eq!(snap.stat(Stat::Classified), 1);
    assert_eq!(snap.stat(Stat::Packets), extra + 3);
}

#[test]
fn irc_user_after_a_server_greeting_is_not_irc() {
    let r = rig(BLOCK_ALL);
    // FTP: the server greets first, then the client says USER.
    let ftp = Conn::v4(40001, 21);
    open(&r, &ftp, &[]);
    assert_eq!(r.run(&ftp.server(b"220 FTP server ready\r\n")), XDP_PASS);
    assert_eq!(r.run(&ftp.client(b"USER anonymous\r\n")), XDP_PASS);
    assert_eq!(r.entry(&ftp.syn()).unwrap().app, 0);
    // IRC: the client speaks first.
    let irc = Conn::v4(40002, 21);
    assert_eq!(open(&r, &irc, &[b"USER alice 0 * :Alice\r\n".to_vec()]), XDP_DROP);
}

/// A TLS server name no app claims ends the inspection at once, in the main program and in
/// the names stage alike: what follows it is encrypted. An unclaimed HTTP Host does not: the
/// next request on the connection (a proxy's keep-alive connection) may name an IM host.
#[test]
fn an_unclaimed_tls_name_ends_inspection_and_an_unclaimed_http_host_does_not() {
    let r = rig("
version: 1
defaults: {action: allow, unclassified: drop, inspect_packets: 4}
apps: {irc: drop, telegram: drop}
");
    let inspected = |r: &Rig| r.stat(Stat::Inspected);
    // Main program: a whole ClientHello. With `unclassified: drop`, the ClientHello itself is
    // dropped, and the rest of the flow with it, without further inspection: an IRC opener
    // later in the flow is not looked at.
    let c = Conn::v4(44001, 443);
    assert_eq!(open(&r, &c, &[ClientHello::new("docs.example.net").build()]), XDP_DROP);
    let e = r.entry(&c.syn()).expect("flow");
    assert_eq!((e.app, e.state, Verdict::from_u8(e.verdict)), (0, STATE_DECIDED, Verdict::Drop));
    let before = inspected(&r);
    assert_eq!(r.run(&c.server(&opaque(200))), XDP_DROP);
    assert_eq!(r.run(&c.client(b"NICK late\r\n")), XDP_DROP);
    assert_eq!((inspected(&r), r.entry(&c.syn()).expect("flow").app), (before, 0), "nothing inspected after the name");
    // Names stage: a ClientHello to XMPP's port whose length a signature shape may match
    // (see the test below), so the stages see it rather than the main program.
    let hello = (1..=200usize)
        .map(padded_hello)
        .find(|h| shape_may_match(&r, h, 5222))
        .expect("a ClientHello length the signature stage must see");
    let c = Conn::v4(44002, 5222);
    assert_eq!(open(&r, &c, &[hello]), XDP_DROP);
    let e = r.entry(&c.syn()).expect("flow");
    assert_eq!((e.app, e.state, Verdict::from_u8(e.verdict)), (0, STATE_DECIDED, Verdict::Drop));
    assert_eq!(r.stat(Stat::Unclassified), 2);
    // HTTP: the first request names a host no app claims, the second a Telegram one.
    let c = Conn::v4(44003, 8080);
    assert_eq!(open(&r, &c, &[protocols::http_get("www.example.com", "/")]), XDP_PASS, "still inspecting");
    assert_eq!(r.entry(&c.syn()).expect("flow").state, STATE_INSPECTING);
    assert_eq!(r.run(&c.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")), XDP_PASS);
    assert_eq!(r.run(&c.client(&protocols::http_get("web.telegram.org", "/k/"))), XDP_DROP);
    assert_decided(&r, &c, "telegram", Method::HttpHost, Verdict::Drop);
}

#[test]
fn inspection_budget_ends_and_unclassified_policy_applies() {
    let r = rig("
version: 1
defaults: {action: allow, unclassified: drop, inspect_packets: 2}
apps: {irc: drop}
");
    let c = Conn::v4(41001, 7000);
    open(&r, &c, &[]);
    assert_eq!(r.run(&c.client(b"hello there")), XDP_PASS, "still inspecting");
    assert_eq!(r.run(&c.server(b"general kenobi")), XDP_PASS);
    assert_eq!(r.run(&c.client(b"more data")), XDP_PASS, "client budget spent");
    // Server's second payload spends the last budget: unclassified, and `unclassified: drop`.
    assert_eq!(r.run(&c.server(b"and more")), XDP_DROP);
    let e = r.entry(&c.syn()).unwrap();
    assert_eq!((e.app, Verdict::from_u8(e.verdict)), (0, Verdict::Drop));
    // An IRC opener after the budget is no longer inspected.
    assert_eq!(r.run(&c.client(b"NICK late\r\n")), XDP_DROP);
    assert_eq!(r.entry(&c.syn()).unwrap().app, 0);
    assert_eq!(r.stat(Stat::Unclassified), 1);
}

#[test]
fn one_way_flows_are_given_up_too() {
    let r = rig("
version: 1
defaults: {action: allow, unclassified: drop, inspect_packets: 1}
");
    let mut last = XDP_PASS;
    for i in 0..20u16 {
        let f = packets::udp4(CLIENT4, 5000, SERVER4, 6000, &[i as u8; 30]);
        last = r.run(&f);
    }
    assert_eq!(last, XDP_DROP, "a one-way UDP flow ends unclassified");
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let r = rig(BLOCK_ALL);
    let seg = Tcp::new(42001, 443, tcp_flags::ACK).encode(CLIENT6.into(), SERVER6.into(), &ClientHello::new("t.me").build());
    let mut ip = Ipv6::new(CLIENT6, SERVER6, 6);
    ip.ext = vec![
        Ext6::HopByHop(vec![]),
        Ext6::DestOpts(vec![]),
        Ext6::Routing { routing_type: 0, segments_left: 0, data: vec![0; 4] },
        Ext6::Fragment { offset: 0, more: false, id: 7 },
    ];
    let f = Ethernet::default().encode(0x86dd, &ip.encode(&seg));
    assert_eq!(r.run(&f), XDP_DROP);
    // A non-first IPv6 fragment has no TCP header: counted and passed by default.
    let mut frag = Ipv6::new(CLIENT6, SERVER6, 6);
    frag.ext = vec![Ext6::Fragment { offset: 100, more: false, id: 7 }];
    let f = Ethernet::default().encode(0x86dd, &frag.encode(b"NICK not-a-header\r\n"));
    assert_eq!(r.run(&f), XDP_PASS);
    assert_eq!(r.stat(Stat::Fragments), 1);
}

#[test]
fn ipv4_options_and_ethernet_padding() {
    let r = rig(BLOCK_ALL);
    let seg = Tcp::new(43001, 80, tcp_flags::ACK).encode(CLIENT4.into(), SERVER4.into(), b"NICK alice\r\n");
    let mut ip = Ipv4::new(CLIENT4, SERVER4, 6);
    ip.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let f = Ethernet::default().encode(0x0800, &ip.encode(&seg));
    assert_eq!(r.run(&f), XDP_DROP, "IRC behind IPv4 options");
    // A short UDP datagram padded to the Ethernet minimum: the padding is not payload, so the
    // length check of the abridged MTProto signature still sees the true length.
    let mut rng = Rng::new(3);
    let mut payload = protocols::telegram_start(MtprotoTransport::Abridged, &mut rng);
    payload.truncate(2 + 4 * 2);
    payload[1] = 2;
    let mut f = packets::tcp4(CLIENT4, 43002, SERVER4, 5222, tcp_flags::ACK, &payload);
    f.extend_from_slice(&[0xee; 20]);
    assert_eq!(r.run(&f), XDP_DROP);
    // TCP options: the payload starts at doff*4, not after 20 bytes.
    let mut t = Tcp::new(43003, 6667, tcp_flags::ACK);
    t.options = Tcp::syn_options();
    let seg = t.encode(CLIENT4.into(), SERVER4.into(), b"CAP LS 302\r\n");
    let f = Ethernet::default().encode(0x0800, &Ipv4::new(CLIENT4, SERVER4, 6).encode(&seg));
    assert_eq!(r.run(&f), XDP_DROP);
}

#[test]
fn malformed_and_unparsable_packets_follow_the_explicit_choice() {
    let frames: Vec<(&str, Vec<u8>)> = {
        let good = packets::tcp4(CLIENT4, 44001, SERVER4, 6667, tcp_flags::ACK, b"NICK x\r\n");
        let mut bad_ihl = good.clone();
        bad_ihl[14] = 0x43;
        let mut bad_doff = good.clone();
        bad_doff[14 + 20 + 12] = 0x30;
        let mut bad_total = good.clone();
        bad_total[16] = 0;
        bad_total[17] = 10;
        let three_tags = packets::with_vlan(&packets::with_qinq(&good, 1, 2), 3);
        vec![
            ("truncated IPv4 header", good[..14 + 12].to_vec()),
            ("truncated TCP header", good[..14 + 20 + 8].to_vec()),
            ("IHL below 5", bad_ihl),
            ("TCP data offset below 5", bad_doff),
            ("IP total length below the header", bad_total),
            ("three VLAN tags", three_tags),
            ("bare Ethernet header", good[..14].to_vec()),
        ]
    };
    let pass = rig(BLOCK_ALL);
    for (what, f) in &frames {
        assert_eq!(pass.run(f), XDP_PASS, "{what}: passed by default");
    }
    assert_eq!(pass.stat(Stat::Unparsed), frames.len() as u64);
    let drop = rig("
version: 1
defaults: {unparsed: drop, fragments: drop}
");
    for (what, f) in &frames {
        assert_eq!(drop.run(f), XDP_DROP, "{what}: `unparsed: drop`");
    }
    let snap = drop.dp.snapshot().unwrap();
    assert_eq!(snap.drop_reason(DropReason::Unparsed).packets, frames.len() as u64);
    let mut frag = Ipv4::new(CLIENT4, SERVER4, 6);
    frag.frag_offset = 185;
    let f = Ethernet::default().encode(0x0800, &frag.encode(b"NICK x\r\n"));
    assert_eq!(drop.run(&f), XDP_DROP, "non-first fragment with `fragments: drop`");
    assert_eq!(pass.run(&f), XDP_PASS, "non-first fragment passes by default");
    assert_eq!(drop.dp.snapshot().unwrap().drop_reason(DropReason::Fragment).packets, 1);
}

#[test]
fn other_protocols_pass_untouched() {
    let r = rig("
version: 1
defaults: {unparsed: drop, unclassified: drop}
");
    let arp = Ethernet::default().encode(0x0806, &[0u8; 28]);
    assert_eq!(r.run(&arp), XDP_PASS);
    let icmp = Ethernet::default().encode(0x0800, &Ipv4::new(CLIENT4, SERVER4, 1).encode(&[8, 0, 0, 0, 0, 1, 0, 1]));
    assert_eq!(r.run(&icmp), XDP_PASS);
    assert_eq!(r.stat(Stat::NonIp), 1);
    assert_eq!(r.stat(Stat::OtherL4), 1);
}

#[test]
fn a_flow_first_seen_at_its_syn_ack_knows_its_client() {
    let r = rig(BLOCK_ALL);
    let c = Conn::v4(45001, 6667);
    // Capture started after the SYN: the SYN-ACK's receiver is the client.
    assert_eq!(r.run(&c.synack()), XDP_PASS);
    assert_eq!(r.run(&c.client(b"NICK alice\r\nUSER alice 0 * :A\r\n")), XDP_DROP);
    let e = r.entry(&c.syn()).unwrap();
    let t = packet::tuple(&c.syn()).unwrap();
    let (client, port) = t.key().client(e.client_is_a != 0);
    assert_eq!((packet::addr(client, 4), port), (IpAddr::from(CLIENT4), 45001));
}

#[test]
fn udp_signatures_work_too() {
    let r = rig(
        "
version: 1
apps: {udpchat: drop}
catalogue:
  udpchat:
    signatures:
      - {name: udpchat-hello, direction: any, offset: 0, bytes: \"ca fe 00 01\"}
",
    );
    let f = Udp { sport: 46001, dport: 53 }.encode(CLIENT6.into(), SERVER6.into(), &[0xca, 0xfe, 0, 1, 9, 9]);
    let f = Ethernet::default().encode(0x86dd, &Ipv6::new(CLIENT6, SERVER6, 17).encode(&f));
    assert_eq!(r.run(&f), XDP_DROP);
}

#[test]
fn whatsapp_prologue_variants() {
    let r = rig(BLOCK_ALL);
    let mut rng = Rng::new(9);
    for (i, (p, s)) in [
        (WaPrologue::V5_2, WaStart::Plain),
        (WaPrologue::V5_2, WaStart::EdgeRouting),
        (WaPrologue::V6_3, WaStart::EdgeRoutingSplit),
    ]
    .into_iter()
    .enumerate()
    {
        let c = Conn::v4(47001 + i as u16, 443);
        let segs = protocols::whatsapp_handshake(p, s, &mut rng);
        let first = r.run(&{
            open(&r, &c, &[]);
            c.client(&segs[0])
        });
        assert_eq!(first, XDP_DROP, "{p:?} {s:?}: the first segment identifies WhatsApp");
    }
}

/// A STUN message (RFC 8489 §5) with the given attributes (type, value).
fn stun(msg_type: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (ty, v) in attrs {
        body.extend_from_slice(&ty.to_be_bytes());
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    }
    let mut m = msg_type.to_be_bytes().to_vec();
    m.extend_from_slice(&(body.len() as u16).to_be_bytes());
    m.extend_from_slice(&0x2112_a442u32.to_be_bytes());
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&body);
    m
}

#[test]
fn stun_vendor_attributes_name_the_app() {
    let r = rig(BLOCK_ALL);
    // A Teams binding request: SOFTWARE-like MS-Implementation-Version ([MS-TURN]) among
    // standard attributes, on a port that is not 3478.
    let teams = stun(0x0001, &[(0x0006, b"user:pass"), (0x8070, &[0, 0, 0, 2]), (0x8028, &[1, 2, 3, 4])]);
    let f = packets::udp4(CLIENT4, 50016, SERVER4, 443, &teams);
    assert_eq!(r.run(&f), XDP_DROP);
    let e = r.entry(&f).unwrap();
    assert_eq!((e.app, Method::from_u8(e.method)), (r.id("teams"), Method::Stun));
    // A server's allocate response carries MS-Version: the same, seen from the other side first.
    let reply = stun(0x0113, &[(0x000f, &[0; 4]), (0x8008, &[0, 0, 0, 6])]);
    let f = packets::udp6(SERVER6, 3478, CLIENT6, 50017, &reply);
    assert_eq!(r.run(&f), XDP_DROP);
    // Plain STUN (no vendor attribute), a lying length and a missing cookie: not Teams.
    let plain = stun(0x0001, &[(0x0006, b"u"), (0x8028, &[0; 4])]);
    let f = packets::udp4(CLIENT4, 50018, SERVER4, 3478, &plain);
    assert_eq!(r.run(&f), XDP_PASS);
    assert_eq!(r.entry(&f).unwrap().app, 0);
    let mut lying = teams.clone();
    lying[3] = 0xf0;
    let f = packets::udp4(CLIENT4, 50019, SERVER4, 3478, &lying);
    assert_eq!(r.run(&f), XDP_PASS);
    let mut no_cookie = teams.clone();
    no_cookie[4] = 0;
    let f = packets::udp4(CLIENT4, 50020, SERVER4, 3478, &no_cookie);
    assert_eq!(r.run(&f), XDP_PASS);
    // An attribute past the sixteenth is not looked at: the walk is bounded.
    let mut many: Vec<(u16, &[u8])> = vec![(0x0024, &[0, 0, 0, 1]); 16];
    many.push((0x8070, &[0, 0, 0, 2]));
    let f = packets::udp4(CLIENT4, 50021, SERVER4, 3478, &stun(0x0001, &many));
    assert_eq!(r.run(&f), XDP_PASS);
}

#[test]
fn exact_length_signatures() {
    let r = rig(
        "
version: 1
apps: {probe: drop}
catalogue:
  probe:
    signatures:
      - {name: probe-8, direction: client, offset: 0, bytes: \"be ef 00 01\", min_len: 8, max_len: 8}
",
    );
    let exact = packets::udp4(CLIENT4, 48001, SERVER4, 50004, &[0xbe, 0xef, 0x00, 0x01, 1, 0, 0, 0]);
    assert_eq!(r.run(&exact), XDP_DROP);
    let longer = packets::udp4(CLIENT4, 48002, SERVER4, 50004, &[0xbe, 0xef, 0x00, 0x01, 1, 0, 0, 0, 0]);
    assert_eq!(r.run(&longer), XDP_PASS, "one byte too long");
    let shorter = packets::udp4(CLIENT4, 48003, SERVER4, 50004, &[0xbe, 0xef, 0x00, 0x01, 1, 0, 0]);
    assert_eq!(r.run(&shorter), XDP_PASS, "one byte too short");
}

/// The data plane hands a ClientHello whose name is past its first segment to the
/// controller, which reassembles it and writes the verdict back: the flow's next packets are
/// dropped.
#[test]
fn a_client_hello_split_over_segments_is_decided_by_the_controller() {
    use imfw::{controller::Controller, dataplane::Event};
    let mut r = rig(BLOCK_ALL);
    let mut ctl = Controller::new(&r.c);
    let mut ch = ClientHello::new("web.whatsapp.com");
    ch.post_quantum = true;
    ch.order = ExtOrder::SniLast;
    let hello = ch.build();
    assert!(hello.len() > 1448, "the hello must need two segments");
    for (i, conn) in [Conn::v4(49001, 443), Conn::v6(49002, 8443)].into_iter().enumerate() {
        open(&r, &conn, &[]);
        let seg = |seq: u32, data: &[u8]| conn.frame_at(true, tcp_flags::ACK | tcp_flags::PSH, seq, data);
        assert_eq!(r.run(&seg(5000, &hello[..1448])), XDP_PASS, "pending while the controller waits");
        assert_eq!(r.run(&seg(5000 + 1448, &hello[1448..])), XDP_PASS);
        let mut decided = Vec::new();
        for ev in r.dp.drain_events() {
            if let Event::Payload(p) = ev {
                if let Some(d) = ctl.on_payload(&p, &mut r.dp, &r.c).unwrap() {
                    decided.push(d);
                }
            }
        }
        assert_eq!(decided.len(), 1, "flow {i}: one decision");
        assert_eq!(decided[0].name, "web.whatsapp.com");
        assert_decided(&r, &conn, "whatsapp", Method::TlsSni, Verdict::Drop);
        assert_eq!(r.run(&conn.server(b"\x16\x03\x03 server hello")), XDP_DROP, "flow {i}: dropped after the write-back");
    }
    assert_eq!(r.stat(Stat::ToController), 4);
    // A split hello for a name that is not IM is decided too: unclassified, allowed.
    let conn = Conn::v4(49003, 443);
    let mut web = ClientHello::new("www.example.com");
    web.post_quantum = true;
    web.order = ExtOrder::SniLast;
    let web = web.build();
    open(&r, &conn, &[]);
    r.run(&conn.frame_at(true, tcp_flags::ACK, 9000, &web[..1448]));
    r.run(&conn.frame_at(true, tcp_flags::ACK, 9000 + 1448, &web[1448..]));
    for ev in r.dp.drain_events() {
        if let Event::Payload(p) = ev {
            assert_eq!(ctl.on_payload(&p, &mut r.dp, &r.c).unwrap(), None);
        }
    }
    let e = r.entry(&conn.syn()).unwrap();
    assert_eq!((e.app, Verdict::from_u8(e.verdict)), (0, Verdict::Allow));
    assert_eq!(r.run(&conn.server(b"reply")), XDP_PASS);
    // A split hello with Encrypted Client Hello and an unclaimed outer name: app `ech` (allowed
    // by default), decided by the controller as the kernel would have.
    let conn = Conn::v4(49004, 443);
    let mut hidden = ClientHello::new("public.example");
    hidden.post_quantum = true;
    hidden.ech = true;
    hidden.order = ExtOrder::SniLast;
    let hidden = hidden.build();
    open(&r, &conn, &[]);
    r.run(&conn.frame_at(true, tcp_flags::ACK, 12000, &hidden[..1448]));
    r.run(&conn.frame_at(true, tcp_flags::ACK, 12000 + 1448, &hidden[1448..]));
    let mut decided = Vec::new();
    for ev in r.dp.drain_events() {
        if let Event::Payload(p) = ev {
            decided.extend(ctl.on_payload(&p, &mut r.dp, &r.c).unwrap());
        }
    }
    assert_eq!(decided.len(), 1);
    assert_decided(&r, &conn, "ech", Method::Ech, Verdict::Allow);
}

/// `pending: drop`: segments the controller is deciding are copied to it and dropped; once it
/// allows the flow, the client's retransmissions pass.
#[test]
fn pending_drop_holds_a_flow_until_the_controller_decides() {
    use imfw::{controller::Controller, dataplane::Event};
    let mut r = rig("
version: 1
defaults: {action: allow, pending: drop}
apps: {signal: drop}
");
    let mut ctl = Controller::new(&r.c);
    for (i, (name, allowed)) in [("chat.signal.org", false), ("www.example.com", true)].into_iter().enumerate() {
        let mut ch = ClientHello::new(name);
        ch.post_quantum = true;
        ch.order = ExtOrder::SniLast;
        let hello = ch.build();
        let conn = Conn::v4(49100 + i as u16, 443);
        open(&r, &conn, &[]);
        let seg = |seq: u32, data: &[u8]| {
            let mut t = Tcp::new(conn.cport, conn.sport, tcp_flags::ACK);
            t.seq = seq;
            Ethernet::default().encode(0x0800, &Ipv4::new(CLIENT4, SERVER4, 6).encode(&t.encode(conn.c, conn.s, data)))
        };
        let (a, b) = (seg(100, &hello[..1448]), seg(100 + 1448, &hello[1448..]));
        assert_eq!(r.run(&a), XDP_DROP, "{name}: held while pending");
        assert_eq!(r.run(&b), XDP_DROP, "{name}: held while pending");
        for ev in r.dp.drain_events() {
            if let Event::Payload(p) = ev {
                ctl.on_payload(&p, &mut r.dp, &r.c).unwrap();
            }
        }
        let want = if allowed { XDP_PASS } else { XDP_DROP };
        assert_eq!(r.run(&a), want, "{name}: the retransmission after the verdict");
        assert_eq!(r.run(&b), want, "{name}: the retransmission after the verdict");
    }
    let snap = r.dp.snapshot().unwrap();
    assert_eq!(snap.drop_reason(DropReason::Pending).packets, 4);
}

/// With the controller's heartbeat run out, the packets that wait for it follow
/// `controller_down`: a split ClientHello (pending) and a held monitored segment pass
/// uncopied when open, are dropped under their own reason when closed; once the heartbeat is
/// back, `pending` and the hold apply again, with copies.
#[test]
fn a_controller_that_is_down_gets_the_policy_choice() {
    use imfw::dataplane::Event;
    for (down, want) in [("open", XDP_PASS), ("closed", XDP_DROP)] {
        let mut r = rig(&format!(
            "version: 1\ndefaults: {{action: allow, pending: drop, controller_down: {down}}}\napps: {{irc: monitor}}\n"
        ));
        r.dp.drain_events();
        r.dp.set_controller_deadline(0).expect("mark the controller down");
        let mut ch = ClientHello::new("www.example.com");
        ch.post_quantum = true;
        ch.order = ExtOrder::SniLast;
        let hello = ch.build();
        let conn = Conn::v4(49300, 443);
        open(&r, &conn, &[]);
        let seg = |seq: u32, data: &[u8]| {
            let mut t = Tcp::new(conn.cport, conn.sport, tcp_flags::ACK);
            t.seq = seq;
            Ethernet::default().encode(0x0800, &Ipv4::new(CLIENT4, SERVER4, 6).encode(&t.encode(conn.c, conn.s, data)))
        };
        let (a, b) = (seg(100, &hello[..1448]), seg(100 + 1448, &hello[1448..]));
        assert_eq!(r.run(&a), want, "{down}: first segment of a flow waiting for the controller");
        assert_eq!(r.run(&b), want, "{down}: second segment");
        let irc = Conn::v4(42301, 6667);
        assert_eq!(open(&r, &irc, &[protocols::irc_registration("alice")]), want, "{down}: a segment that would be held");
        assert!(r.dp.drain_events().iter().all(|e| matches!(e, Event::Classified(_))), "{down}: nothing copied for a dead controller");
        let snap = r.dp.snapshot().unwrap();
        let dropped = if want == XDP_DROP { 3 } else { 0 };
        assert_eq!(snap.drop_reason(DropReason::ControllerDown).packets, dropped, "{down}");
        assert_eq!(snap.drop_reason(DropReason::Pending).packets + snap.drop_reason(DropReason::Held).packets, 0, "{down}");

        r.dp.heartbeat().expect("the controller is back");
        assert_eq!(r.run(&b), XDP_DROP, "{down}: pending: drop applies again");
        assert_eq!(r.run(&irc.client(&protocols::irc_registration("alice"))), XDP_DROP, "{down}: held again");
        let events = r.dp.drain_events();
        assert!(events.iter().any(|e| matches!(e, Event::Payload(_))), "{down}: the pending segment is copied again");
        assert!(events.iter().any(|e| matches!(e, Event::Stream(_))), "{down}: the held segment is copied again");
        let snap = r.dp.snapshot().unwrap();
        assert_eq!((snap.drop_reason(DropReason::Pending).packets, snap.drop_reason(DropReason::Held).packets), (1, 1), "{down}");
    }
}

/// Every built-in app's catalogue data, through the real program: a ClientHello naming each
/// of its domains (and a subdomain), a flow to the first address of each of its networks, and
/// a STUN message with each of its attributes is classified as that app. (Signatures have
/// their own tests above, with real openers.)
/// Monitored TCP flows: every segment from the one that decided the flow on (payload, FIN,
/// RST) is copied to the controller with its sequence number, direction and flags; a flow
/// the controller marks `FLAG_NO_COPY` is not; a full ring is counted in the flow.
#[test]
fn monitored_flows_stream_their_segments_to_the_controller() {
    use imfw::dataplane::Event;
    use imfw_common::flow::FLAG_NO_COPY;
    let mut r = rig("version: 1\ndefaults: {action: allow}\napps: {irc: monitor}\nmonitor: {hold: false}\n");
    r.dp.drain_events();
    let c = Conn::v4(42001, 6667);
    let reg = protocols::irc_registration("alice");
    open(&r, &c, std::slice::from_ref(&reg));
    assert_decided(&r, &c, "irc", Method::Signature, Verdict::Monitor);
    let mut tcp = Tcp::new(c.sport, c.cport, tcp_flags::ACK | tcp_flags::PSH);
    tcp.seq = 777;
    let reply = b":irc.example 001 alice :Welcome\r\n";
    let from_server = Ethernet::default().encode(0x0800, &Ipv4::new(SERVER4, CLIENT4, 6).encode(&tcp.encode(c.s, c.c, reply)));
    assert_eq!(r.run(&from_server), XDP_PASS);
    let fin = c.frame(true, tcp_flags::ACK | tcp_flags::FIN, &[]);
    assert_eq!(r.run(&fin), XDP_PASS);
    assert_eq!(r.run(&c.frame(true, tcp_flags::ACK, &[])), XDP_PASS, "a bare ACK is not copied");
    let streamed: Vec<_> = r.dp.drain_events().into_iter().filter_map(|e| if let Event::Stream(p) = e { Some(p) } else { None }).collect();
    assert_eq!(streamed.len(), 3, "registration, reply, FIN");
    assert_eq!((streamed[0].dir, &streamed[0].data[..usize::from(streamed[0].len)]), (imfw_common::flow::DIR_CLIENT, &reg[..]));
    assert_eq!(usize::from(streamed[0].wire_len), reg.len());
    assert_eq!((streamed[1].dir, streamed[1].seq, &streamed[1].data[..usize::from(streamed[1].len)]), (imfw_common::flow::DIR_SERVER, 777, &reply[..]));
    assert_eq!((streamed[2].len, streamed[2].tcp_flags & tcp_flags::FIN), (0, tcp_flags::FIN));
    assert_eq!(r.stat(Stat::Streamed), 3);
    // The controller stops the copies of a flow it cannot read.
    let mut e = r.entry(&c.syn()).expect("flow");
    e.flags |= FLAG_NO_COPY;
    let t = packet::tuple(&c.syn()).expect("tuple");
    r.dp.set_flow(&t.key(), &e).expect("write the flow");
    r.run(&c.client(b"PRIVMSG #a :hi\r\n"));
    assert!(r.dp.drain_events().iter().all(|e| !matches!(e, Event::Stream(_))));
    // Copies the ring has no room for are counted, in total and in the flow.
    let c = Conn::v4(42002, 6667);
    open(&r, &c, &[reg]);
    let line = c.client(&[b'x'; 1400]);
    let mut sent = 0;
    while r.stat(Stat::StreamLost) == 0 && sent < 10_000 {
        r.run(&line);
        sent += 1;
    }
    assert!(r.stat(Stat::StreamLost) > 0, "the 4 MiB ring filled after {sent} copies");
    assert!(r.entry(&c.syn()).expect("flow").copies_lost > 0);
    r.dp.drain_events();
}

/// `monitor.hold`: a monitored segment is copied and dropped until the controller raises the
/// direction's cleared mark; then its retransmission passes, uncopied, and new bytes are held.
#[test]
fn held_segments_pass_once_the_controller_has_read_them() {
    use imfw::dataplane::Event;
    use imfw_common::flow::FLAG_CLEARED_CLIENT;
    let mut r = rig("version: 1\napps: {irc: monitor}\n");
    r.dp.drain_events();
    let c = Conn::v4(42201, 6667);
    let reg = protocols::irc_registration("alice");
    assert_eq!(open(&r, &c, std::slice::from_ref(&reg)), XDP_DROP, "held");
    assert_eq!(r.run(&c.client(&reg)), XDP_DROP, "still held: not read yet");
    let copies = r.dp.drain_events().into_iter().filter(|e| matches!(e, Event::Stream(_))).count();
    assert_eq!(copies, 2, "each transmission is copied until read");
    let t = packet::tuple(&c.syn()).expect("tuple");
    let mut e = r.entry(&c.syn()).expect("flow");
    // Conn's segments all carry the same sequence number (see `Conn::frame`).
    let seq = Tcp::new(c.cport, c.sport, 0).seq;
    e.cleared[0] = seq.wrapping_add(u32::try_from(reg.len()).unwrap());
    e.flags |= FLAG_CLEARED_CLIENT;
    r.dp.set_flow(&t.key(), &e).expect("write the mark");
    assert_eq!(r.run(&c.client(&reg)), XDP_PASS, "the retransmission of read bytes passes");
    assert!(r.dp.drain_events().iter().all(|e| !matches!(e, Event::Stream(_))), "and is not copied again");
    let longer = [reg.clone(), b"PRIVMSG #a :hi\r\n".to_vec()].concat();
    assert_eq!(r.run(&c.client(&longer)), XDP_DROP, "bytes past the mark are held");
    assert_eq!(r.dp.snapshot().expect("snapshot").drop_reason(DropReason::Held).packets, 3);
    r.dp.drain_events();
}

/// The content path end to end through the real program: an IRC flow with verdict monitor is
/// copied, reassembled and parsed; a clean message is archived; a message with a blocked
/// keyword sets the flow's verdict to drop (the next packet is dropped in XDP), resets both
/// ends with the sequence numbers the peers expect, and the archive records it and verifies.
#[test]
fn a_blocked_keyword_drops_and_resets_a_monitored_flow() {
    use std::sync::{Arc, Mutex};
    use imfw::{content_path::ContentPath, dataplane::Event};
    use imfw_monitor::archive::{self, Archive, ArchiveConfig, Event as Rec, SealKey};
    let text = "version: 1\napps: {irc: monitor}\ncontent:\n  rules:\n    - {name: secrets, action: block, keywords: [project falcon]}\n";
    let policy = policy::parse(text, "t.yaml").expect("policy");
    let mut r = rig(text);
    r.dp.drain_events();
    let dir = std::env::temp_dir().join(format!("imfw-archive-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let key = SealKey::from_bytes([7; 32]);
    let (arch, _) = Archive::open(&dir, key.clone(), ArchiveConfig::default(), 1_000).expect("archive");
    let resets = Arc::new(Mutex::new(Vec::new()));
    let rec = resets.clone();
    let mut cp = ContentPath::with_archive(&policy, Some(arch), Box::new(move |c, s, cn, sn| {
        rec.lock().unwrap().push((c, s, cn, sn));
        Ok(())
    }));
    let c = Conn::v4(42101, 6667);
    let frame = |from_client: bool, seq: u32, payload: &[u8]| c.frame_at(from_client, tcp_flags::ACK | tcp_flags::PSH, seq, payload);
    let feed = |r: &mut Rig, cp: &mut ContentPath| {
        for ev in r.dp.drain_events() {
            if let Event::Stream(p) = ev {
                cp.on_stream(&p, &mut r.dp, &r.c, 1, 2_000).expect("content path");
            }
        }
        cp.release(&mut r.dp).expect("release");
    };
    let reg = b"NICK alice\r\nUSER alice 0 * :Alice\r\n".to_vec();
    // Each segment is held (`monitor.hold`) until the content path has read it; the sender's
    // retransmission then passes.
    let deliver = |r: &mut Rig, cp: &mut ContentPath, f: &[u8]| {
        let first = r.run(f);
        feed(r, cp);
        (first, r.run(f))
    };
    assert_eq!(r.run(&c.syn()), XDP_PASS);
    assert_eq!(deliver(&mut r, &mut cp, &frame(true, 1000, &reg)), (XDP_DROP, XDP_PASS));
    let welcome = b":irc.example 001 alice :Welcome\r\n".to_vec();
    assert_eq!(deliver(&mut r, &mut cp, &frame(false, 5000, &welcome)), (XDP_DROP, XDP_PASS));
    let clean = b"PRIVMSG #ops :lunch at noon\r\n".to_vec();
    let c_next = 1000 + u32::try_from(reg.len()).unwrap();
    assert_eq!(deliver(&mut r, &mut cp, &frame(true, c_next, &clean)), (XDP_DROP, XDP_PASS));
    assert_decided(&r, &c, "irc", Method::Signature, Verdict::Monitor);
    let bad = b"PRIVMSG #ops :the Project Falcon numbers\r\n".to_vec();
    let c_next = c_next + u32::try_from(clean.len()).unwrap();
    assert_eq!(deliver(&mut r, &mut cp, &frame(true, c_next, &bad)), (XDP_DROP, XDP_DROP), "never delivered");
    let e = r.entry(&c.syn()).expect("flow");
    assert_eq!(Verdict::from_u8(e.verdict), Verdict::Drop, "the controller set the drop verdict");
    assert_eq!(r.run(&frame(false, 5000 + u32::try_from(welcome.len()).unwrap(), b"PING :x\r\n")), XDP_DROP);
    let resets = resets.lock().unwrap().clone();
    let s_next = 5000 + u32::try_from(welcome.len()).unwrap();
    assert_eq!(resets.len(), 1);
    assert_eq!((resets[0].2, resets[0].3), (c_next + u32::try_from(bad.len()).unwrap(), s_next), "RST sequence numbers");
    assert_eq!(resets[0].0.port(), 42101);
    cp.close(3_000).expect("close");
    let report = archive::verify(&dir, &key).expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    let records: Vec<_> = archive::search(&dir, &archive::Filter::default()).expect("search").filter_map(Result::ok).map(|h| h.record.event).collect();
    let bodies: Vec<_> = records.iter().filter_map(|e| if let Rec::Message { message, .. } = e { Some(message.body.clone()) } else { None }).collect();
    assert_eq!(bodies, vec!["lunch at noon".to_owned(), "the Project Falcon numbers".to_owned()]);
    assert!(records.iter().any(|e| matches!(e, Rec::FlowBlocked { reason, .. } if reason.contains("secrets"))), "{records:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Encrypted Client Hello: a claimed outer name still decides; an unclaimed one leaves the
/// decision to the server's address, and without one to the policy's `ech` entry.
#[test]
fn encrypted_client_hello_is_an_explicit_policy_choice() {
    let hello = |name: &str| ClientHello { ech: true, ..ClientHello::new(name) }.build();
    let r = rig("version: 1\ndefaults: {action: drop}\n");
    let c = Conn::v4(41001, 443);
    assert_eq!(open(&r, &c, &[hello("public.example")]), XDP_PASS, "hidden names are allowed unless the policy names ech");
    assert_decided(&r, &c, "ech", Method::Ech, Verdict::Allow);
    let c = Conn::v4(41002, 443);
    assert_eq!(open(&r, &c, &[hello("web.whatsapp.com")]), XDP_DROP);
    assert_decided(&r, &c, "whatsapp", Method::TlsSni, Verdict::Drop);
    let c = Conn { s: Ipv4Addr::new(149, 154, 167, 51).into(), ..Conn::v4(41003, 443) };
    assert_eq!(open(&r, &c, &[hello("public.example")]), XDP_DROP, "the address of a Telegram server still speaks");
    assert_decided(&r, &c, "telegram", Method::Address, Verdict::Drop);
    // Without ECH, an unclaimed name overrides the address: the flow is unclassified.
    let c = Conn { s: Ipv4Addr::new(149, 154, 167, 51).into(), ..Conn::v4(41004, 443) };
    assert_eq!(open(&r, &c, &[ClientHello::new("public.example").build()]), XDP_PASS);
    let e = r.entry(&c.syn()).expect("flow");
    assert_eq!((e.app, e.state, e.addr_app), (0, STATE_DECIDED, 0));

    let r = rig("version: 1\ndefaults: {action: allow}\napps: {ech: drop}\nrules:\n  - {name: lan, from: [192.0.2.0/24], apps: all, action: drop}\n");
    let c = Conn::v4(41005, 443);
    assert_eq!(open(&r, &c, &[hello("public.example")]), XDP_DROP, "apps: {{ech: drop}}");
    assert_decided(&r, &c, "ech", Method::Ech, Verdict::Drop);
    let r = rig("version: 1\ndefaults: {action: allow}\nrules:\n  - {name: lan, from: [192.0.2.0/24], apps: all, action: drop}\n");
    let c = Conn::v4(41006, 443);
    assert_eq!(open(&r, &c, &[hello("public.example")]), XDP_PASS, "`all` does not cover hidden names");
    assert_decided(&r, &c, "ech", Method::Ech, Verdict::Allow);
}

/// A whole ClientHello is decided by the main program, without the inspection stages; what it
/// cannot decide the same way goes on to them: a payload a signature shape may match, a name
/// that is an address literal, a ClientHello whose name is not in its first segment, and any
/// other protocol.
#[test]
fn the_main_program_decides_a_whole_client_hello_alone() {
    let mut r = rig("version: 1\ndefaults: {action: allow}\napps: {whatsapp: drop}\n");
    r.dp.remove_stage(JUMP_INSPECT).expect("clear the stage's slot");
    let missing = |r: &Rig| r.stat(Stat::InspectorMissing);
    let c = Conn::v4(42001, 443);
    assert_eq!(open(&r, &c, &[ClientHello::new("web.whatsapp.com").build()]), XDP_DROP);
    assert_decided(&r, &c, "whatsapp", Method::TlsSni, Verdict::Drop);
    let c = Conn::v4(42002, 443);
    assert_eq!(open(&r, &c, &[ClientHello { ech: true, ..ClientHello::new("public.example") }.build()]), XDP_PASS);
    assert_decided(&r, &c, "ech", Method::Ech, Verdict::Allow);
    // The ECH walk goes on from the extension after the name: an ECH extension before the
    // name is found too (the name's own walk saw it).
    let c = Conn::v4(42090, 443);
    let ech_first = ClientHello { ech: true, order: ExtOrder::SniLast, ..ClientHello::new("public.example") };
    assert_eq!(open(&r, &c, &[ech_first.build()]), XDP_PASS);
    assert_decided(&r, &c, "ech", Method::Ech, Verdict::Allow);
    // A name no app claims decides the flow as unclassified, its address no longer speaking
    // for it.
    let c = Conn::v4(42003, 443);
    assert_eq!(open(&r, &c, &[ClientHello::new("docs.example.net").build()]), XDP_PASS);
    let e = r.entry(&c.syn()).expect("flow");
    assert_eq!((e.app, e.state, e.addr_app, Method::from_u8(e.method)), (0, STATE_DECIDED, 0, Method::None));
    assert_eq!(missing(&r), 0, "no ClientHello so far needed a stage");
    // Names of 13 to 212 bytes, to XMPP's port: the catalogue's size-only XMPP signature (48
    // bytes, port 5222) makes the ClientHello whose length is 48 modulo 256 one the signature
    // stage must see.
    let mut shaped = 0;
    for n in 1..=200usize {
        let hello = padded_hello(n);
        shaped += u64::from(shape_may_match(&r, &hello, 5222));
        let c = Conn::v4(43000 + n as u16, 5222);
        assert_eq!(open(&r, &c, &[hello]), XDP_PASS);
    }
    assert_eq!(shaped, 1, "one length a signature shape may match");
    assert_eq!(missing(&r), shaped, "only that ClientHello went on to the stages");
    let before = missing(&r);
    for (port, payload) in [
        (42010, ClientHello::new("192.0.2.80").build()),
        (42011, protocols::http_get("web.telegram.org", "/")),
        (42012, ClientHello { post_quantum: true, order: ExtOrder::SniLast, ..ClientHello::new("web.whatsapp.com") }.build()[..1448].to_vec()),
    ] {
        let c = Conn::v4(port, 443);
        assert_eq!(open(&r, &c, &[payload]), XDP_PASS, "uninspected, the packet passes");
        assert_eq!(r.entry(&c.syn()).expect("flow").app, 0);
    }
    assert_eq!(missing(&r) - before, 3, "each went on to the missing stage");
}

#[test]
fn every_catalogue_entry_classifies_its_app() {
    let r = rig("version: 1\ndefaults: {action: monitor}\n");
    let cat = imfw::catalogue::builtin().expect("built-in catalogue");
    let mut port = 40000u16;
    let mut next = || {
        port += 1;
        port
    };
    let mut checked = 0;
    for (app, entry) in &cat.entries {
        for d in &entry.domains {
            for name in [d.clone(), format!("edge-7.{d}")] {
                let c = Conn::v4(next(), 443);
                open(&r, &c, &[ClientHello::new(&name).build()]);
                assert_decided(&r, &c, app, Method::TlsSni, Verdict::Monitor);
                checked += 1;
            }
        }
        for net in &entry.addresses {
            let c = match net.addr {
                IpAddr::V4(a) => Conn { s: a.into(), ..Conn::v4(next(), 8801) },
                IpAddr::V6(a) => Conn { s: a.into(), ..Conn::v6(next(), 8801) },
            };
            open(&r, &c, &[vec![0xa5; 40]]);
            assert_decided(&r, &c, app, Method::Address, Verdict::Monitor);
            checked += 1;
        }
        for ty in &entry.stun_attributes {
            let mut m = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
            m.extend_from_slice(&[7; 12]);
            m.extend_from_slice(&ty.to_be_bytes());
            m.extend_from_slice(&[0, 4, 1, 2, 3, 4]);
            // STUN over TCP (RFC 8489 §6.2.2): the same matcher as over UDP.
            let c = Conn::v4(next(), 3478);
            assert_eq!(open(&r, &c, &[m]), XDP_PASS);
            assert_decided(&r, &c, app, Method::Stun, Verdict::Monitor);
            checked += 1;
        }
    }
    for (app, entry) in &cat.entries {
        for sig in &entry.signatures {
            let p = payload_for(sig).unwrap_or_else(|| panic!("no payload satisfies {app}/{}", sig.name));
            let c = Conn::v4(next(), sig.ports.map_or(9999, |range| range.hi));
            if sig.direction == Direction::Server {
                open(&r, &c, &[]);
                r.run(&c.server(&p));
            } else {
                open(&r, &c, &[p]);
            }
            assert_decided(&r, &c, app, Method::Signature, Verdict::Monitor);
            if let Some(range) = sig.ports {
                // The same bytes off the protocol's ports are not evidence enough.
                let off = Conn::v4(next(), if range.lo > 1 { range.lo - 1 } else { range.hi + 1 });
                if sig.direction == Direction::Server {
                    open(&r, &off, &[]);
                    r.run(&off.server(&payload_for(sig).unwrap_or_default()));
                } else {
                    open(&r, &off, &[payload_for(sig).unwrap_or_default()]);
                }
                let e = r.entry(&off.syn()).expect("flow entry");
                assert_ne!(e.app, r.id(app), "{app}/{} matched off its ports", sig.name);
            }
            checked += 1;
        }
    }
    assert!(checked > 250, "only {checked} catalogue items checked");
}

/// The shortest payload a signature accepts: its bytes under the mask at its offset, the
/// length field agreeing with the length, the last byte, over a filler no other signature
/// begins with.
fn payload_for(sig: &imfw::catalogue::Signature) -> Option<Vec<u8>> {
    let off = usize::try_from(sig.offset).ok()?;
    let mask = sig.mask16();
    let bytes = sig.masked16();
    let reach = off + sig.bytes.0.len();
    let max = sig.max_len.map_or(1500, usize::from);
    for len in reach.max(usize::from(sig.min_len)).max(1)..=max {
        let mut p = vec![0x5a; len];
        if let Some(l) = &sig.length {
            let (o, w) = (usize::try_from(l.offset).ok()?, l.size.width());
            if o + w > len {
                continue;
            }
            let rest = i64::try_from(len).ok()? - l.add;
            if rest < 0 || rest % l.mul != 0 {
                continue;
            }
            let field = u64::try_from(rest / l.mul).ok()?;
            let be = field.to_be_bytes();
            let le = field.to_le_bytes();
            if w < 8 && field >> (8 * w) != 0 {
                continue;
            }
            let dst = &mut p[o..o + w];
            match l.size {
                LenSize::U8 | LenSize::U16Be | LenSize::U32Be => dst.copy_from_slice(&be[8 - w..]),
                LenSize::U16Le | LenSize::U32Le => dst.copy_from_slice(&le[..w]),
            }
        }
        for j in 0..sig.bytes.0.len() {
            p[off + j] = (p[off + j] & !mask[j]) | bytes[j];
        }
        if let Some(b) = sig.last_byte {
            p[len - 1] = b;
        }
        // Overlaid bytes may have changed the length field: keep only a consistent payload.
        let ok_len = sig.length.as_ref().is_none_or(|l| {
            let (o, w) = (usize::try_from(l.offset).unwrap_or(0), l.size.width());
            let f = match l.size {
                LenSize::U16Le | LenSize::U32Le => p[o..o + w].iter().rev().fold(0i64, |a, b| (a << 8) | i64::from(*b)),
                _ => p[o..o + w].iter().fold(0i64, |a, b| (a << 8) | i64::from(*b)),
            };
            let want = f * l.mul + l.add;
            if l.at_least { i64::try_from(len).unwrap_or(0) >= want } else { i64::try_from(len).unwrap_or(0) == want }
        });
        let ok_last = sig.last_byte.is_none_or(|b| p[len - 1] == b);
        let ok_bytes = (0..sig.bytes.0.len()).all(|j| p[off + j] & mask[j] == bytes[j]);
        if ok_len && ok_last && ok_bytes {
            return Some(p);
        }
    }
    None
}

/// Compiles `yaml` as a reload of the policy in force would (custom app ids kept).
fn next_policy(r: &Rig, yaml: &str) -> Compiled {
    let mut p = policy::parse(yaml, "next.yaml").unwrap_or_else(|e| panic!("policy: {e}"));
    p.keep_app_ids(&r.c.apps);
    p.compile().unwrap_or_else(|e| panic!("policy: {e}"))
}

#[test]
fn a_staged_policy_changes_nothing_until_the_flip() {
    let mut r = rig("version: 1\napps: {irc: allow, mqtt: allow}\n");
    let before = Conn::v4(40001, 6667);
    assert_eq!(open(&r, &before, &[protocols::irc_registration("bob")]), XDP_PASS);
    assert_decided(&r, &before, "irc", Method::Signature, Verdict::Allow);
    let (gen_a, _) = r.dp.active();

    // Generation B drops IRC and MQTT: written beside A, not in force.
    let b = next_policy(&r, "version: 1\napps: {irc: drop, mqtt: drop}\n");
    r.dp.stage(&b, &[]).expect("stage B");
    assert_eq!(r.dp.active().0, gen_a, "staging does not flip");
    let during = Conn::v4(40002, 6667);
    assert_eq!(open(&r, &during, &[protocols::irc_registration("carol")]), XDP_PASS, "a new flow still gets A's verdict");
    assert_decided(&r, &during, "irc", Method::Signature, Verdict::Allow);
    assert_eq!(r.run(&before.client(b"PRIVMSG #x :hi\r\n")), XDP_PASS, "a decided flow keeps A's verdict");
    // A flow still inspecting at the flip: created under A, decided under B.
    let straddling = Conn::v4(40003, 1883);
    assert_eq!(r.run(&straddling.syn()), XDP_PASS);

    let done = r.dp.commit().expect("commit B");
    assert_ne!(done.generation, gen_a);
    assert_eq!(done.version, 2);
    assert_eq!(done.flows, 2, "both decided IRC flows re-evaluated");
    assert_eq!(done.changed, 2);
    assert_eq!(r.run(&before.client(b"PRIVMSG #x :bye\r\n")), XDP_DROP, "re-evaluated: B's verdict");
    assert_decided(&r, &before, "irc", Method::Signature, Verdict::Drop);
    let e = r.entry(&before.syn()).expect("entry");
    assert!(e.packets >= 4, "the flow's state and counters stay ({} packets)", e.packets);
    let after = Conn::v4(40004, 6667);
    assert_eq!(open(&r, &after, &[protocols::irc_registration("dave")]), XDP_DROP, "a new flow gets B's verdict");
    assert_eq!(r.run(&straddling.client(&protocols::mqtt_connect(4, "s"))), XDP_DROP);
    assert_decided(&r, &straddling, "mqtt", Method::Signature, Verdict::Drop);

    // And back: B's generation is reused for C, A's entries are gone and rewritten.
    let c = next_policy(&r, "version: 1\napps: {irc: allow, mqtt: drop}\n");
    let done = r.dp.apply(&c).expect("switch to C");
    assert_eq!((done.generation, done.version), (gen_a, 3));
    assert_eq!(done.changed, 3, "three IRC flows allowed again, the MQTT flow stays dropped");
    assert_eq!(r.run(&before.client(b"PRIVMSG #x :back\r\n")), XDP_PASS);
    let again = Conn::v4(40005, 6667);
    assert_eq!(open(&r, &again, &[protocols::irc_registration("erin")]), XDP_PASS);
}

#[test]
fn a_flow_created_before_a_reload_is_decided_with_the_new_source_classes() {
    // A: the client's network (class 1) may not use IRC. B: class 1 is another network, and
    // the client is in no rule network: IRC is allowed.
    let mut r = rig("version: 1\nrules:\n  - {name: lan, from: [192.0.2.0/24], apps: [irc], action: drop}\n");
    let conn = Conn::v4(41001, 6667);
    assert_eq!(r.run(&conn.syn()), XDP_PASS);
    let second = next_policy(&r, "version: 1\nrules:\n  - {name: other, from: [203.0.113.0/24], apps: [irc], action: drop}\n");
    r.dp.apply(&second).expect("switch");
    assert_eq!(r.run(&conn.client(&protocols::irc_registration("bob"))), XDP_PASS, "decided under B, with B's classes");
    assert_decided(&r, &conn, "irc", Method::Signature, Verdict::Allow);
    assert_eq!(r.entry(&conn.syn()).expect("entry").class(), 0);
    // And a decided flow moves with its client's new class.
    let next = next_policy(&r, "version: 1\nrules:\n  - {name: lan, from: [192.0.2.0/25], apps: [irc], action: drop}\n");
    let done = r.dp.apply(&next).expect("switch");
    assert_eq!(done.changed, 1);
    assert_decided(&r, &conn, "irc", Method::Signature, Verdict::Drop);
    assert_eq!(r.entry(&conn.syn()).expect("entry").class(), 1);
}

#[test]
fn a_reload_keeps_content_blocks_and_app_ids() {
    let custom = |apps: &str, action: &str| {
        format!(
            "version: 1\ndefaults: {{action: {action}}}\ncatalogue:\n{apps}apps: {{corpchat: allow}}\n",
        )
    };
    let acme = "  acme: {signatures: [{name: hi, direction: client, bytes: '41 43 4d 45'}]}\n";
    let corp = "  corpchat: {signatures: [{name: hi, direction: client, bytes: '43 4f 52 50'}]}\n";
    let mut r = rig(&custom(&format!("{acme}{corp}"), "allow"));
    let acme_id = r.id("acme");
    let corp_id = r.id("corpchat");
    let acme_flow = Conn::v4(42001, 7000);
    assert_eq!(open(&r, &acme_flow, &[b"ACME hello".to_vec()]), XDP_PASS);
    let corp_flow = Conn::v4(42002, 7000);
    assert_eq!(open(&r, &corp_flow, &[b"CORP hello".to_vec()]), XDP_PASS);
    assert_decided(&r, &corp_flow, "corpchat", Method::Signature, Verdict::Allow);
    // The content policy blocked a flow the policy allows.
    let blocked = Conn::v4(42003, 7000);
    assert_eq!(open(&r, &blocked, &[b"CORP other".to_vec()]), XDP_PASS);
    let tuple = packet::tuple(&blocked.syn()).unwrap();
    let mut entry = r.entry(&blocked.syn()).unwrap();
    entry.verdict = Verdict::Drop as u8;
    entry.flags |= imfw_common::flow::FLAG_NO_COPY | imfw_common::flow::FLAG_CONTENT_BLOCKED;
    r.dp.set_flow(&tuple.key(), &entry).unwrap();

    // B drops acme (now unknown: the default, drop) and lists corpchat first.
    let next = next_policy(&r, &custom(corp, "drop"));
    assert_eq!(next.app_id("corpchat"), Some(corp_id), "corpchat keeps its id although it moved");
    assert_eq!(next.app_name(acme_id), None);
    let done = r.dp.apply(&next).expect("switch");
    assert_eq!((done.flows, done.changed, done.content_blocked), (2, 1, 1));
    assert_eq!(r.run(&acme_flow.client(b"more")), XDP_DROP, "a flow of an app the policy forgot gets the default");
    assert_eq!(r.entry(&acme_flow.syn()).unwrap().app, acme_id, "and keeps its app id");
    assert_eq!(r.run(&corp_flow.client(b"more")), XDP_PASS, "corpchat still allowed");
    assert_eq!(r.run(&blocked.client(b"more")), XDP_DROP, "the content block stays");
}

/// The records of the program's log ring (`observability.kernel_log`): level, target, text.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<(log::Level, String, String)>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        self.0.lock().expect("capture").push((r.level(), r.target().to_owned(), r.args().to_string()));
    }

    fn flush(&self) {}
}

impl Capture {
    fn take(&self) -> Vec<(log::Level, String, String)> {
        std::mem::take(&mut *self.0.lock().expect("capture"))
    }
}

/// Each message appears from its level on, and a reload changes the level with the policy: a
/// malformed packet (debug), a classified flow (info), a redirect with no interface (warn).
#[test]
fn kernel_log_messages_follow_the_policy_level() {
    let policy = |level: &str| format!("version: 1\ndefaults: {{unparsed: drop}}\napps: {{irc: drop}}\nobservability: {{kernel_log: {level}}}\n");
    let mut r = rig(&policy("debug"));
    let capture = Capture::default();
    let mut ring = r.dp.kernel_logger_with(capture.clone()).expect("the log ring");
    let malformed = packets::tcp4(CLIENT4, 44001, SERVER4, 6667, tcp_flags::ACK, b"NICK x\r\n")[..14 + 12].to_vec();
    // A flow decided redirect whose devmap slot holds no interface: fails closed.
    let redirect = Conn::v4(38002, 443);
    let redirected = |r: &mut Rig| {
        assert_eq!(r.run(&redirect.syn()), XDP_PASS);
        let key = packet::tuple(&redirect.syn()).expect("tuple").key();
        let mut e = r.dp.flow(&key).expect("flow table").expect("the SYN made an entry");
        e.state = imfw_common::flow::STATE_DECIDED;
        e.verdict = Verdict::Redirect as u8;
        e.redirect_slot = 9;
        r.dp.set_flow(&key, &e).expect("set the flow");
        assert_eq!(r.run(&redirect.client(b"x")), XDP_DROP, "a failed redirect drops");
    };
    let messages = |r: &mut Rig, ring: &mut aya_log::EbpfLogger<Capture>, cport: u16| {
        assert_eq!(r.run(&malformed), XDP_DROP);
        assert_eq!(open(r, &Conn::v4(cport, 6667), &[protocols::irc_registration("bob")]), XDP_DROP);
        redirected(r);
        ring.flush();
        capture.take()
    };

    let got = messages(&mut r, &mut ring, 38001);
    let irc = r.id("irc");
    let want = [
        (log::Level::Debug, "malformed packet (ifindex=".to_owned(), "len=26): dropped=1, counted as unparsed".to_owned()),
        (log::Level::Info, format!("flow classified: app={irc} method={} verdict={}", Method::Signature as u8, Verdict::Drop as u8), " server_port=6667 proto=6".to_owned()),
        (log::Level::Warn, "redirect to devmap slot 9 failed".to_owned(), "packet dropped (fail closed), counted as redirect_failed".to_owned()),
    ];
    assert_eq!(got.len(), want.len(), "one message per event at debug: {got:?}");
    for ((level, target, text), (want_level, start, end)) in got.iter().zip(&want) {
        assert_eq!(target, "kernel", "{text}");
        assert_eq!(level, want_level, "{text}");
        assert!(text.starts_with(start.as_str()) && text.contains(end.as_str()), "{text:?}: expected {start}…{end}");
    }

    // A reload to `warn`: only the failed redirect is worth a message.
    let next = next_policy(&r, &policy("warn"));
    r.dp.apply(&next).expect("reload");
    let got = messages(&mut r, &mut ring, 38003);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, log::Level::Warn, "{got:?}");
    assert!(got[0].2.starts_with("redirect to devmap slot 9 failed"), "{got:?}");

    // `off`: nothing, while the counters still count.
    let before = r.dp.snapshot().expect("snapshot").drop_reason(DropReason::RedirectFailed).packets;
    let off = next_policy(&r, &policy("off"));
    r.dp.apply(&off).expect("reload");
    let got = messages(&mut r, &mut ring, 38004);
    assert_eq!(got, [], "kernel_log: off");
    assert_eq!(r.dp.snapshot().expect("snapshot").drop_reason(DropReason::RedirectFailed).packets, before + 1);
}

/// The bench's in-kernel player (`bench_replay`) hands each frame of its list, in order and
/// once per run, to the program in its target slot: played to imfw, a list of a SYN, a
/// WhatsApp ClientHello and a SYN of another flow leaves the entries and counters those
/// packets leave one call at a time, and the call's action is the last frame's. Its figures
/// in `cargo xtask bench` rest on this.
#[test]
fn bench_player_runs_each_frame_once_through_its_target() {
    use imfw::bench_refs::{BenchRefs, Reference, Replay};
    let r = rig(BLOCK_ALL);
    let wa = Conn::v4(41000, 443);
    let other = Conn::v4(41001, 443);
    let hello = ClientHello::new("web.whatsapp.com").build();
    let frames = vec![wa.syn(), wa.client(&hello), other.syn()];
    let mut replay = Replay::load(4).expect("load the player");
    replay.set_frames(&frames).expect("write the frames");
    replay.set_target(r.dp.program_fd().expect("imfw's program")).expect("set the target");
    let first = replay.run(3).expect("play");
    assert_eq!(first.last_action, XDP_PASS, "the last frame is a SYN, which passes");
    assert!(first.ns_per_frame > 0.0, "the kernel timed the runs");
    assert_decided(&r, &wa, "whatsapp", Method::TlsSni, Verdict::Drop);
    let e = r.entry(&other.syn()).expect("the second flow's entry");
    assert_eq!((e.packets, e.app), (1, 0), "one SYN, nothing to classify yet");
    assert_eq!(r.stat(Stat::Packets), 3);
    assert_eq!(r.stat(Stat::FlowsCreated), 2);
    // The list wraps: the next run plays the first frame (a packet of a decided flow now).
    let again = replay.run(2).expect("play on");
    assert_eq!(again.last_action, XDP_DROP, "the ClientHello of a dropped flow");
    assert_eq!(r.entry(&wa.syn()).expect("entry").packets, 4, "its SYN and ClientHello twice");
    assert_eq!(r.stat(Stat::FlowsCreated), 2, "no flow created twice");
    // The whole list to each of two targets, the reference first: each sees every frame once,
    // from the first, and the results come back in the targets' order.
    let refs = BenchRefs::load(64).expect("load the references");
    let imfw = r.dp.program_fd().expect("imfw's program");
    let stateful = refs.program_fd(Reference::Stateful).expect("reference");
    let each = replay.play_to_each(&[imfw, stateful], 1).expect("play to each");
    assert_eq!(each.len(), 2);
    assert_eq!(each[0].last_action, XDP_PASS, "imfw's last frame: the other flow's SYN");
    assert_eq!(each[1].last_action, XDP_PASS, "the reference passes everything");
    assert_eq!(r.stat(Stat::Packets), 8);
    assert_eq!(r.entry(&wa.syn()).expect("entry").packets, 6);
    let key = packet::tuple(&wa.syn()).expect("tuple").key();
    assert_eq!(refs.flow(&key).expect("reference table").map(|e| e.packets), Some(2), "its SYN and ClientHello");
}
