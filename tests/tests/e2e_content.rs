//! End-to-end content policy with real servers in the lab's server namespace: Debian's
//! ngircd (IRC) and mosquitto (MQTT), with scripted IRC clients and mosquitto's own clients in
//! the client namespace and `imfw run` on the gateway monitoring them. A clean message is
//! delivered and archived; a message with a blocked keyword (and, over IRC, a DCC offer of a
//! blocked file type) never reaches the recipient, the sender's connection is reset, and the
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

/// ngircd in the server namespace, killed on drop.
struct Ngircd(Child);

impl Drop for Ngircd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_ngircd(lab: &Lab, dir: &TempDir) -> Ngircd {
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
    Ngircd(child)
}

/// A scripted IRC client: registers, then sends and reads lines.
struct Irc {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Irc {
    fn connect(lab: &Lab, nick: &str) -> Irc {
        let dst = SocketAddr::new(SERVER4.into(), IRC_PORT);
        let deadline = Instant::now() + EXPECT;
        let s = loop {
            match lab.client_connect(dst, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("{nick}: connecting to ngircd: {e:#}"),
            }
        };
        s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let r = BufReader::new(s.try_clone().expect("clone"));
        let mut c = Irc { w: s, r };
        c.send(&format!("NICK {nick}\r\nUSER {nick} 0 * :{nick} of the lab\r\n")).expect("register");
        assert!(c.wait_for(" 001 ", EXPECT).is_some(), "{nick}: no welcome from ngircd");
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
    let out = output_within(Command::new(ImfwProc::bin()).args(args), Duration::from_secs(30)).expect("imfw archive");
    (out.status.code().unwrap_or(-1), format!("{}{}", out.stdout, out.stderr))
}

#[test]
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
         - {{name: no-executables, action: block, files: {{extensions: [exe]}}}}\nmonitor: {{archive: {}, archive_key: {}}}\n",
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
    assert!(got.as_deref().is_some_and(|l| l.starts_with(":alice!")), "bob did not get alice's clean message\n{}", lab.imfw_log_tail());

    alice.send("PRIVMSG bob :the Project Falcon numbers are in\r\n").expect("send");
    assert!(bob.wait_for("Falcon", NEVER).is_none(), "the blocked message reached bob");
    assert!(alice.is_reset_within(EXPECT), "alice's connection was not reset\n{}", lab.imfw_log_tail());

    let mut carol = Irc::connect(&lab, "carol");
    carol.send("PRIVMSG bob :\u{1}DCC SEND \"invoice 2026.exe\" 3221225986 5000 73802\u{1}\r\n").expect("send");
    assert!(bob.wait_for("DCC SEND", NEVER).is_none(), "the blocked file offer reached bob");
    assert!(carol.is_reset_within(EXPECT), "carol's connection was not reset\n{}", lab.imfw_log_tail());

    // bob's own connection is untouched.
    bob.send("PRIVMSG bob :note to self\r\n").expect("bob still connected");
    assert!(bob.wait_for("note to self", EXPECT).is_some(), "bob's connection broke");
    drop((alice, bob, carol));
    let status = lab.stop_imfw().expect("stop imfw");
    assert!(status.success(), "imfw exited with {status}");

    let (a, k) = (archive.to_str().expect("utf-8 path"), key.to_str().expect("utf-8 path"));
    let (code, out) = imfw(&["archive", "verify", "--dir", a, "--key", k]);
    assert_eq!(code, 0, "verify after the run:\n{out}");
    let (_, found) = imfw(&["archive", "search", "--dir", a, "--app", "irc"]);
    for needle in ["lunch at noon?", "Project Falcon", "secrets", "no-executables", "note to self"] {
        assert!(found.contains(needle), "archive lacks {needle:?}:\n{found}");
    }
    let (_, exported) = imfw(&["archive", "export", "--dir", a, "--party", "alice"]);
    assert!(exported.lines().count() >= 2 && exported.lines().all(|l| l.starts_with('{')), "export:\n{exported}");

    // Tampering: one changed byte in a message body fails verification.
    let seg = fs::read_dir(&archive)
        .expect("archive dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("a segment file");
    let mut bytes = fs::read(&seg).expect("read segment");
    let at = bytes.windows(5).position(|w| w == b"lunch").expect("the clean message in the segment");
    bytes[at] = b'p';
    fs::write(&seg, bytes).expect("tamper");
    let (code, out) = imfw(&["archive", "verify", "--dir", a, "--key", k]);
    assert_eq!(code, 3, "verify after tampering:\n{out}");
}

/// A child process killed on drop (a broker, a subscriber).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn mqtt_through_the_gateway_is_archived_and_blocked_by_content() {
    use std::io::Read as _;
    if let Err(e) = require_root() {
        panic!("{e:#}");
    }
    let dir = TempDir::new("imfw-mqtt").expect("temp dir");
    let archive = dir.path().join("archive");
    let key = dir.path().join("archive.key");
    let conf = dir.path().join("mosquitto.conf");
    fs::write(&conf, format!("listener 1883 {SERVER4}\nallow_anonymous true\npersistence false\n")).expect("write mosquitto.conf");
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
            lab.client.command("mosquitto_pub").args(["-h", &host, "-t", "lab/chat", "-i", "alice", "-m", text]),
            Duration::from_secs(20),
        )
    };
    // The broker may take a moment to listen: the first clean publish is retried.
    let deadline = Instant::now() + EXPECT;
    while !publish("warming up").is_ok_and(|o| o.status.success()) {
        assert!(Instant::now() < deadline, "mosquitto_pub never got through\n{}", lab.imfw_log_tail());
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut sub = Proc(
        lab.client
            .command("mosquitto_sub")
            .args(["-h", &host, "-t", "lab/chat", "-i", "bob", "-v", "-W", "20"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let clean = publish("lunch at noon?").expect("mosquitto_pub");
    assert!(clean.status.success(), "clean publish failed: {}", clean.stderr);
    let _ = publish("the Project Falcon numbers are in");
    std::thread::sleep(NEVER);
    let _ = sub.0.kill();
    let mut got = String::new();
    if let Some(mut out) = sub.0.stdout.take() {
        let _ = out.read_to_string(&mut got);
    }
    assert!(got.contains("lab/chat lunch at noon?"), "the subscriber missed the clean message: {got:?}\n{}", lab.imfw_log_tail());
    assert!(!got.contains("Falcon"), "the blocked message reached the subscriber: {got:?}");
    let status = lab.stop_imfw().expect("stop imfw");
    assert!(status.success(), "imfw exited with {status}");
    let (a, k) = (archive.to_str().expect("utf-8 path"), key.to_str().expect("utf-8 path"));
    let (code, out) = imfw(&["archive", "verify", "--dir", a, "--key", k]);
    assert_eq!(code, 0, "verify after the run:\n{out}");
    let (_, found) = imfw(&["archive", "search", "--dir", a, "--app", "mqtt"]);
    for needle in ["lunch at noon?", "lab/chat", "alice", "secrets"] {
        assert!(found.contains(needle), "archive lacks {needle:?}:\n{found}");
    }
}
