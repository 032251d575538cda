//! End-to-end content policy with real servers in the lab's server namespace: Debian's
//! ngircd (IRC), mosquitto (MQTT) and prosody (XMPP), with scripted IRC and XMPP clients and
//! mosquitto's own clients in the client namespace and `imfw run` on the gateway monitoring
//! them. A clean message is delivered and archived; a message with a blocked keyword (and a
//! DCC or out-of-band file offer of a blocked file type) never reaches the recipient, the sender's connection is reset, and the
//! archive records the block; the archive verifies after the run and fails verification
//! after a byte of it is changed. Needs root, the servers and the release binary (`cargo
//! xtask test` provides all of them).
use std::{
    fs,
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use imfw_tests::{
    imfw_proc::ImfwProc,
    lab::{Lab, SERVER4},
    util::{output_within, require_root, TempDir},
};

const IRC_PORT: u16 = 6667;
/// Longest wait for a line the test expects.
const EXPECT: Duration = Duration::from_secs(10);
/// How long a recipient listens for a message that must never arrive.
const NEVER: Duration = Duration::from_secs(3);

/// A child process killed on drop (a server, a subscriber).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_ngircd(lab: &Lab, dir: &TempDir) -> Proc {
    let conf = dir.path().join("ngircd.conf");
    fs::write(
        &conf,
        format!(
            "[Global]\nName = irc.lab.example\nInfo = imfw lab\nListen = {SERVER4}\nPorts = {IRC_PORT}\nPidFile = {}\nMotdPhrase = lab\n\
             [Limits]\nMaxConnectionsIP = 20\nPingTimeout = 120\nPongTimeout = 60\n\
             [Options]\nIdent = no\nPAM = no\nDNS = no\n",
            dir.path().join("ngircd.pid").display()
        ),
    )
    .expect("write ngircd.conf");
    let child = lab
        .server
        .command("ngircd")
        .args(["--nodaemon", "--config"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ngircd (Debian package ngircd; `cargo xtask test` installs it)");
    Proc(child)
}

/// A TCP connection from the client namespace to the lab server's `port`, retried while the
/// server starts (at most [`EXPECT`]); reads time out after 200 ms so that waits stay bounded.
fn connect_to_server(lab: &Lab, port: u16, who: &str) -> TcpStream {
    let dst = SocketAddr::new(SERVER4.into(), port);
    let deadline = Instant::now() + EXPECT;
    let s = loop {
        match lab.client_connect(dst, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("{who}: connecting to port {port}: {e:#}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    s
}

/// A scripted IRC client: registers, then sends and reads lines.
struct Irc {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Irc {
    fn connect(lab: &Lab, nick: &str) -> Irc {
        let s = connect_to_server(lab, IRC_PORT, nick);
        let r = BufReader::new(s.try_clone().expect("clone"));
        let mut c = Irc { w: s, r };
        c.send(&format!(
            "NICK {nick}\r\nUSER {nick} 0 * :{nick} of the lab\r\n"
        ))
        .expect("register");
        assert!(
            c.wait_for(" 001 ", EXPECT).is_some(),
            "{nick}: no welcome from ngircd"
        );
        c
    }

    fn send(&mut self, text: &str) -> std::io::Result<()> {
        self.w.write_all(text.as_bytes())
    }

    /// Reads lines until one contains `needle` (answering PINGs) or `limit` passes.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            match self.r.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {
                    if let Some(token) = line.strip_prefix("PING ") {
                        let _ = self.send(&format!("PONG {token}"));
                    }
                    if line.contains(needle) {
                        return Some(line.clone());
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Whether the connection was reset (or closed) within `limit`: a read fails or ends.
    fn is_reset_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            match self.r.read_line(&mut line) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

fn imfw(args: &[&str]) -> (i32, String) {
    let out = output_within(
        Command::new(ImfwProc::bin()).args(args),
        Duration::from_secs(30),
    )
    .expect("imfw archive");
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", out.stdout, out.stderr),
    )
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario through the lab: each step needs the state the steps before it left")]
fn irc_through_the_gateway_is_archived_and_blocked_by_content() {
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
    let dir = TempDir::new("imfw-content").expect("temp dir");
    let archive = dir.path().join("archive");
    let key = dir.path().join("archive.key");
    let mut lab = Lab::new().expect("lab");
    let _ircd = start_ngircd(&lab, &dir);
    let policy = format!(
        "version: 1\napps: {{irc: monitor}}\ncontent:\n  rules:\n    - {{name: secrets, action: block, keywords: [project falcon]}}\n    \
         - {{name: no-executables, action: block, files: {{extensions: [exe]}}}}\n    \
         - {{name: cards, action: block, patterns: [payment_card]}}\n    \
         - {{name: phishing, action: block, urls: {{domains: [phish.example]}}}}\n\
         monitor: {{archive: {}, archive_key: {}}}\n",
        archive.display(),
        key.display()
    );
    if let Err(e) = lab.start_imfw(&policy) {
        panic!("{e:#}");
    }
    let mut bob = Irc::connect(&lab, "bob");
    let mut alice = Irc::connect(&lab, "alice");

    alice.send("PRIVMSG bob :lunch at noon?\r\n").expect("send");
    let got = bob.wait_for("lunch at noon?", EXPECT);
    assert!(
        got.as_deref().is_some_and(|l| l.starts_with(":alice!")),
        "bob did not get alice's clean message\n{}",
        lab.imfw_log_tail()
    );

    alice
        .send("PRIVMSG bob :the Project Falcon numbers are in\r\n")
        .expect("send");
    assert!(
        bob.wait_for("Falcon", NEVER).is_none(),
        "the blocked message reached bob"
    );
    assert!(
        alice.is_reset_within(EXPECT),
        "alice's connection was not reset\n{}",
        lab.imfw_log_tail()
    );

    let mut carol = Irc::connect(&lab, "carol");
    carol
        .send("PRIVMSG bob :\u{1}DCC SEND \"invoice 2026.exe\" 3221225986 5000 73802\u{1}\r\n")
        .expect("send");
    assert!(
        bob.wait_for("DCC SEND", NEVER).is_none(),
        "the blocked file offer reached bob"
    );
    assert!(
        carol.is_reset_within(EXPECT),
        "carol's connection was not reset\n{}",
        lab.imfw_log_tail()
    );

    // A card number and a link to a blocked domain: the same.
    let mut dave = Irc::connect(&lab, "dave");
    dave.send("PRIVMSG bob :pay with 4111-1111-1111-1111 please\r\n")
        .expect("send");
    assert!(
        bob.wait_for("pay with", NEVER).is_none(),
        "the card number reached bob"
    );
    assert!(
        dave.is_reset_within(EXPECT),
        "dave's connection was not reset\n{}",
        lab.imfw_log_tail()
    );
    let mut erin = Irc::connect(&lab, "erin");
    erin.send("PRIVMSG bob :reset your password at HTTPS://Login.PHISH.example/reset\r\n")
        .expect("send");
    assert!(
        bob.wait_for("reset your password", NEVER).is_none(),
        "the phishing link reached bob"
    );
    assert!(
        erin.is_reset_within(EXPECT),
        "erin's connection was not reset\n{}",
        lab.imfw_log_tail()
    );

    // bob's own connection is untouched.
    bob.send("PRIVMSG bob :note to self\r\n")
        .expect("bob still connected");
    assert!(
        bob.wait_for("note to self", EXPECT).is_some(),
        "bob's connection broke"
    );
    drop((alice, bob, carol, dave, erin));
    let status = lab.stop_imfw().expect("stop imfw");
    assert!(status.success(), "imfw exited with {status}");

    let (a, k) = (
        archive.to_str().expect("utf-8 path"),
        key.to_str().expect("utf-8 path"),
    );
    let (code, out) = imfw(&["archive", "verify", "--dir", a, "--key", k]);
    assert_eq!(code, 0, "verify after the run:\n{out}");
    let (_, found) = imfw(&["archive", "search", "--dir", a, "--app", "irc"]);
    for needle in [
        "lunch at noon?",
        "Project Falcon",
        "secrets",
        "no-executables",
        "cards",
        "phishing",
        "note to self",
    ] {
        assert!(found.contains(needle), "archive lacks {needle:?}:\n{found}");
    }
    let (_, exported) = imfw(&["archive", "export", "--dir", a, "--party", "alice"]);
    assert!(
        exported.lines().count() >= 2 && exported.lines().all(|l| l.starts_with('{')),
        "export:\n{exported}"
    );

    // Tampering: one changed byte in a message body fails verification.
    let seg = fs::read_dir(&archive)
        .expect("archive dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("a segment file");
    let mut bytes = fs::read(&seg).expect("read segment");
    let at = bytes
        .windows(5)
        .position(|w| w == b"lunch")
        .expect("the clean message in the segment");
    bytes[at] = b'p';
    fs::write(&seg, bytes).expect("tamper");
    let (code, out) = imfw(&["archive", "verify", "--dir", a, "--key", k]);
    assert_eq!(code, 3, "verify after tampering:\n{out}");
}

/// Polls `imfw status` until `field` reaches `want` or [`EXPECT`] passes.
fn wait_status(lab: &Lab, field: &str, want: u64) -> bool {
    let deadline = Instant::now() + EXPECT;
    while Instant::now() < deadline {
        if lab
            .imfw()
            .status()
            .is_ok_and(|v| v[field].as_u64() == Some(want))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn sighup_reloads_content_rules_and_a_bad_file_changes_nothing() {
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
    let dir = TempDir::new("imfw-reload").expect("temp dir");
    let archive = dir.path().join("archive");
    let key = dir.path().join("archive.key");
    let mut lab = Lab::new().expect("lab");
    let _ircd = start_ngircd(&lab, &dir);
    let policy = |words: &str| {
        format!(
            "version: 1\napps: {{irc: monitor}}\ncontent:\n  rules:\n    - {{name: secrets, action: block, keywords: [{words}]}}\n\
             monitor: {{archive: {}, archive_key: {}}}\n",
            archive.display(),
            key.display()
        )
    };
    if let Err(e) = lab.start_imfw(&policy("project falcon")) {
        panic!("{e:#}");
    }
    let mut bob = Irc::connect(&lab, "bob");
    let mut alice = Irc::connect(&lab, "alice");
    alice
        .send("PRIVMSG bob :the heron audit is due\r\n")
        .expect("send");
    assert!(
        bob.wait_for("heron audit is due", EXPECT).is_some(),
        "not blocked yet\n{}",
        lab.imfw_log_tail()
    );

    // A broken file: refused, counted, and the running rules stay.
    let file = lab.imfw().policy_path().to_path_buf();
    fs::write(&file, "version: 1\napps: {irc: monitr}\n").expect("write the bad policy");
    lab.imfw().hangup().expect("SIGHUP");
    assert!(
        wait_status(&lab, "reloads_failed", 1),
        "the bad reload was not counted\n{}",
        lab.imfw_log_tail()
    );
    assert!(
        lab.imfw_log_tail().contains("reload refused"),
        "{}",
        lab.imfw_log_tail()
    );
    alice
        .send("PRIVMSG bob :the heron audit moved\r\n")
        .expect("send");
    assert!(
        bob.wait_for("heron audit moved", EXPECT).is_some(),
        "a refused reload changed the rules\n{}",
        lab.imfw_log_tail()
    );
    alice
        .send("PRIVMSG bob :project falcon is go\r\n")
        .expect("send");
    assert!(
        bob.wait_for("falcon", NEVER).is_none(),
        "the old rule went away with the bad file"
    );
    assert!(
        alice.is_reset_within(EXPECT),
        "alice was not reset by the old rule\n{}",
        lab.imfw_log_tail()
    );

    // A good file: its rule applies to the next message.
    fs::write(&file, policy("heron audit")).expect("write the new policy");
    lab.imfw().hangup().expect("SIGHUP");
    assert!(
        wait_status(&lab, "reloads", 1),
        "the good reload did not take\n{}",
        lab.imfw_log_tail()
    );
    let mut carol = Irc::connect(&lab, "carol");
    carol
        .send("PRIVMSG bob :project falcon is fine now\r\n")
        .expect("send");
    assert!(
        bob.wait_for("falcon is fine", EXPECT).is_some(),
        "the dropped rule still applies\n{}",
        lab.imfw_log_tail()
    );
    carol
        .send("PRIVMSG bob :the heron audit numbers\r\n")
        .expect("send");
    assert!(
        bob.wait_for("heron audit numbers", NEVER).is_none(),
        "the reloaded rule did not block"
    );
    assert!(
        carol.is_reset_within(EXPECT),
        "carol was not reset\n{}",
        lab.imfw_log_tail()
    );
    drop((alice, bob, carol));
    let status = lab.stop_imfw().expect("stop imfw");
    assert!(status.success(), "imfw exited with {status}");
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario through the lab: each step needs the state the steps before it left")]
fn mqtt_through_the_gateway_is_archived_and_blocked_by_content() {
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
    let dir = TempDir::new("imfw-mqtt").expect("temp dir");
    let archive = dir.path().join("archive");
    let key = dir.path().join("archive.key");
    let conf = dir.path().join("mosquitto.conf");
    fs::write(
        &conf,
        format!("listener 1883 {SERVER4}\nallow_anonymous true\npersistence false\n"),
    )
    .expect("write mosquitto.conf");
    let mut lab = Lab::new().expect("lab");
    let _broker = Proc(
        lab.server
            .command("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (Debian package mosquitto; `cargo xtask test` installs it)"),
    );
    let policy = format!(
        "version: 1\napps: {{mqtt: monitor}}\ncontent:\n  rules:\n    - {{name: secrets, action: block, keywords: [project falcon]}}\n\
         monitor: {{archive: {}, archive_key: {}}}\n",
        archive.display(),
        key.display()
    );
    if let Err(e) = lab.start_imfw(&policy) {
        panic!("{e:#}");
    }
    let host = SERVER4.to_string();
    let publish = |text: &str| {
        output_within(
            lab.client
                .command("mosquitto_pub")
                .args(["-h", &host, "-t", "lab/chat", "-i", "alice", "-m", text]),
            Duration::from_secs(20),
        )
    };
    // The broker may take a moment to listen: the first clean publish is retried.
    let deadline = Instant::now() + EXPECT;
    while !publish("warming up").is_ok_and(|o| o.status.success()) {
        assert!(
            Instant::now() < deadline,
            "mosquitto_pub never got through\n{}",
            lab.imfw_log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut sub = Proc(
        lab.client
            .command("mosquitto_sub")
            .args(["-h", &host, "-t", "lab/chat", "-i", "bob", "-v", "-W", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub"),
    );
    // The subscriber's lines, read on a thread (it ends with the subscriber).
    let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let out = sub.0.stdout.take().expect("subscriber stdout");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(mut l) = sink.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    let seen = |needle: &str| lines.lock().is_ok_and(|l| l.contains(needle));
    // Held segments make the subscription take a few retransmissions: publish until it has.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen("lab/chat ready") {
        assert!(
            Instant::now() < deadline,
            "the subscriber never subscribed\n{}",
            lab.imfw_log_tail()
        );
        let _ = publish("ready");
        std::thread::sleep(Duration::from_millis(500));
    }
    let clean = publish("lunch at noon?").expect("mosquitto_pub");
    assert!(
        clean.status.success(),
        "clean publish failed: {}",
        clean.stderr
    );
    let deadline = Instant::now() + EXPECT;
    while !seen("lab/chat lunch at noon?") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = publish("the Project Falcon numbers are in");
    std::thread::sleep(NEVER);
    let got = lines.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(
        got.contains("lab/chat lunch at noon?"),
        "the subscriber missed the clean message: {got:?}\n{}",
        lab.imfw_log_tail()
    );
    assert!(
        !got.contains("Falcon"),
        "the blocked message reached the subscriber: {got:?}"
    );
    let status = lab.stop_imfw().expect("stop imfw");
    assert!(status.success(), "imfw exited with {status}");
    let (a, k) = (
        archive.to_str().expect("utf-8 path"),
        key.to_str().expect("utf-8 path"),
    );
    let (code, out) = imfw(&["archive", "verify", "--dir", a, "--key", k]);
    assert_eq!(code, 0, "verify after the run:\n{out}");
    let (_, found) = imfw(&["archive", "search", "--dir", a, "--app", "mqtt"]);
    for needle in ["lunch at noon?", "lab/chat", "alice", "secrets"] {
        assert!(found.contains(needle), "archive lacks {needle:?}:\n{found}");
    }
}

/// A scripted XMPP client (RFC 6120/6121 without TLS: SASL PLAIN, resource binding, presence).
struct Xmpp {
    s: TcpStream,
    got: String,
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Xmpp {
    const HEADER: &'static str = "<?xml version='1.0'?><stream:stream to='lab.example' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

    fn connect(lab: &Lab, user: &str) -> Xmpp {
        let s = connect_to_server(lab, 5222, user);
        let mut c = Xmpp {
            s,
            got: String::new(),
        };
        c.send(Self::HEADER).expect("stream");
        assert!(
            c.wait_for("</stream:features>", EXPECT),
            "{user}: no stream features: {}",
            c.got
        );
        let auth = base64(format!("\0{user}\0lab-secret").as_bytes());
        c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{auth}</auth>"
        ))
        .expect("auth");
        assert!(
            c.wait_for("<success", EXPECT),
            "{user}: SASL failed: {}",
            c.got
        );
        c.send(Self::HEADER).expect("restart");
        assert!(
            c.wait_for("</stream:features>", EXPECT),
            "{user}: no features after SASL: {}",
            c.got
        );
        c.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>lab</resource></bind></iq>").expect("bind");
        assert!(
            c.wait_for("</jid>", EXPECT),
            "{user}: bind failed: {}",
            c.got
        );
        c.send("<presence/>").expect("presence");
        c
    }

    fn send(&mut self, text: &str) -> std::io::Result<()> {
        self.s.write_all(text.as_bytes())
    }

    /// Reads until `needle` has arrived (in anything read since the connection opened).
    fn wait_for(&mut self, needle: &str, limit: Duration) -> bool {
        use std::io::Read as _;
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while !self.got.contains(needle) && Instant::now() < deadline {
            match self.s.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return false,
            }
        }
        self.got.contains(needle)
    }

    fn is_reset_within(&mut self, limit: Duration) -> bool {
        use std::io::Read as _;
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => self.got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

fn start_prosody(lab: &Lab, dir: &TempDir) -> Proc {
    let data = dir.path().join("data");
    let accounts = data.join("lab%2eexample").join("accounts");
    fs::create_dir_all(&accounts).expect("prosody data dir");
    for user in ["alice", "bob", "carol"] {
        fs::write(
            accounts.join(format!("{user}.dat")),
            "return {\n\t[\"password\"] = \"lab-secret\";\n};\n",
        )
        .expect("account");
    }
    let conf = dir.path().join("prosody.cfg.lua");
    fs::write(
        &conf,
        format!(
            "run_as_root = true\ndaemonize = false\npidfile = \"{pid}\"\ndata_path = \"{data}\"\n\
             interfaces = {{ \"{SERVER4}\" }}\nc2s_ports = {{ 5222 }}\ns2s_ports = {{ }}\n\
             modules_enabled = {{ \"roster\"; \"saslauth\"; \"disco\"; \"ping\" }}\nmodules_disabled = {{ \"s2s\"; \"tls\" }}\n\
             c2s_require_encryption = false\nallow_unencrypted_plain_auth = true\nauthentication = \"internal_plain\"\n\
             log = {{ info = \"{log}\" }}\nVirtualHost \"lab.example\"\n",
            pid = dir.path().join("prosody.pid").display(),
            data = data.display(),
            log = dir.path().join("prosody.log").display(),
        ),
    )
    .expect("write prosody.cfg.lua");
    Proc(
        lab.server
            .command("prosody")
            .arg("--config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prosody (Debian package prosody; `cargo xtask test` installs it)"),
    )
}

#[test]
fn xmpp_through_the_gateway_is_archived_and_blocked_by_content() {
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
    let dir = TempDir::new("imfw-xmpp").expect("temp dir");
    let archive = dir.path().join("archive");
    let key = dir.path().join("archive.key");
    let mut lab = Lab::new().expect("lab");
    let _server = start_prosody(&lab, &dir);
    let policy = format!(
        "version: 1\napps: {{xmpp: monitor}}\ncontent:\n  rules:\n    - {{name: secrets, action: block, keywords: [project falcon]}}\n    \
         - {{name: no-executables, action: block, files: {{extensions: [exe]}}}}\nmonitor: {{archive: {}, archive_key: {}}}\n",
        archive.display(),
        key.display()
    );
    if let Err(e) = lab.start_imfw(&policy) {
        panic!("{e:#}");
    }
    let log = || fs::read_to_string(dir.path().join("prosody.log")).unwrap_or_default();
    let mut bob = Xmpp::connect(&lab, "bob");
    let mut alice = Xmpp::connect(&lab, "alice");
    alice
        .send("<message to='bob@lab.example' type='chat'><body>lunch at noon?</body></message>")
        .expect("send");
    assert!(
        bob.wait_for("lunch at noon?", EXPECT),
        "bob did not get alice's message: {}\nprosody: {}\n{}",
        bob.got,
        log(),
        lab.imfw_log_tail()
    );
    alice.send("<message to='bob@lab.example' type='chat'><body>the Project Falcon numbers</body></message>").expect("send");
    assert!(
        !bob.wait_for("Falcon", NEVER),
        "the blocked message reached bob"
    );
    assert!(
        alice.is_reset_within(EXPECT),
        "alice's connection was not reset\n{}",
        lab.imfw_log_tail()
    );
    let mut carol = Xmpp::connect(&lab, "carol");
    carol
        .send("<message to='bob@lab.example' type='chat'><body>invoice attached</body><x xmlns='jabber:x:oob'><url>http://files.lab.example/invoice.exe</url></x></message>")
        .expect("send");
    assert!(
        !bob.wait_for("invoice", NEVER),
        "the blocked file offer reached bob"
    );
    assert!(
        carol.is_reset_within(EXPECT),
        "carol's connection was not reset\n{}",
        lab.imfw_log_tail()
    );
    drop((alice, bob, carol));
    let status = lab.stop_imfw().expect("stop imfw");
    assert!(status.success(), "imfw exited with {status}");
    let (a, k) = (
        archive.to_str().expect("utf-8 path"),
        key.to_str().expect("utf-8 path"),
    );
    let (code, out) = imfw(&["archive", "verify", "--dir", a, "--key", k]);
    assert_eq!(code, 0, "verify after the run:\n{out}");
    let (_, found) = imfw(&["archive", "search", "--dir", a, "--app", "xmpp"]);
    for needle in [
        "lunch at noon?",
        "alice@lab.example",
        "bob@lab.example",
        "secrets",
        "no-executables",
    ] {
        assert!(found.contains(needle), "archive lacks {needle:?}:\n{found}");
    }
}
