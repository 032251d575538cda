//! `imfw`: the command line of the instant-messaging firewall.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow};
use clap::{Parser, Subcommand, ValueEnum};
use imfw::{
    classify, control,
    controller::Controller,
    dataplane::{AttachMode, Dataplane, Event, parse_event},
    events,
    notify::{self, Message, Notifier},
    policy::{self, Compiled},
    rangetab::RangeTable,
};
use imfw_common::ranges::RANGE_SUB_BLOCKS;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

/// Exit status for an invalid policy (or other bad input the user must fix).
const EXIT_BAD_INPUT: u8 = 2;
/// How often the loop reads the classification log, and the event ring besides its wakeups:
/// the latest a classification is logged (the kernel reports those without waking the reader).
/// Reading the log costs no system call; each CPU's section holds `CLASS_LOG_SLOTS` records.
const EVENT_DRAIN: std::time::Duration = std::time::Duration::from_millis(50);

/// imfw: an eBPF/XDP instant-messaging firewall for Linux gateways.
#[derive(Parser)]
#[command(version = imfw::status::VERSION_LINE, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the XDP program on the gateway's interfaces and enforce a policy until SIGINT/SIGTERM.
    Run {
        /// Policy file (YAML).
        #[arg(long)]
        policy: PathBuf,
        /// Interfaces to attach to, comma-separated (LAN and WAN: the program sees both directions).
        #[arg(long, value_delimiter = ',', required = true)]
        iface: Vec<String>,
        /// Control socket for `imfw stats`.
        #[arg(long, default_value = control::DEFAULT_PATH)]
        control: PathBuf,
        /// Flow-table capacity (least recently used flows are evicted when full).
        #[arg(long, default_value_t = imfw_common::maps::FLOWS_DEFAULT)]
        flows: u32,
        #[command(flatten)]
        pins: PinArgs,
        /// On SIGTERM/SIGINT, detach from the interfaces and remove the pins (an uninstall).
        /// Without it the program, its links and its maps stay pinned and enforcing, and the
        /// next `imfw run` adopts them.
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Remove what `imfw run` left pinned: detach the XDP program from every interface and
    /// remove the pins (the flow table goes with them).
    Unload {
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Validate a policy; errors name file, line and column. Exit status 2 when invalid.
    Check {
        #[arg(long)]
        policy: PathBuf,
    },
    /// Classify the flows of pcap/pcapng captures with the same XDP program (`BPF_PROG_TEST_RUN`).
    Classify {
        /// Policy (default: the built-in default policy).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// One JSON object per flow per line.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        captures: Vec<PathBuf>,
    },
    /// The compliance archive: verify its chain and seals, search it, export it.
    Archive {
        #[command(subcommand)]
        cmd: ArchiveCmd,
    },
    /// State of a running instance: interfaces and modes, policy file, hash and generation,
    /// uptime, reloads, headline counters.
    Status {
        #[arg(long, default_value = control::DEFAULT_PATH)]
        control: PathBuf,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// The flow table of a running instance, busiest flows first, filtered.
    Flows {
        #[arg(long, default_value = control::DEFAULT_PATH)]
        control: PathBuf,
        /// Only flows of this app (`none`: flows of no app).
        #[arg(long)]
        app: Option<String>,
        /// Only flows with this verdict.
        #[arg(long, value_parser = ["pending", "allow", "drop", "redirect", "monitor"])]
        verdict: Option<String>,
        /// Only flows whose client or server is this address or in this network.
        #[arg(long)]
        addr: Option<String>,
        /// At most this many flows (the reply still says how many matched).
        #[arg(long, default_value_t = imfw::flows::LIMIT_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..=imfw::flows::LIMIT_MAX as u64))]
        limit: u64,
        /// What busiest means.
        #[arg(long, default_value = "bytes", value_parser = ["bytes", "packets"])]
        sort: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running instance to read its policy file again (as SIGHUP does) and wait for the
    /// result. Exit 0 when the new policy took effect, 2 when it was refused (the errors are
    /// printed as `imfw check` prints them; the running policy stays in force).
    Reload {
        #[arg(long, default_value = control::DEFAULT_PATH)]
        control: PathBuf,
    },
    /// Counters of a running instance.
    Stats {
        #[arg(long, default_value = control::DEFAULT_PATH)]
        control: PathBuf,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct PinArgs {
    /// Directory on a BPF filesystem for the pinned program, links and maps.
    #[arg(long, default_value = imfw::pins::DEFAULT_DIR)]
    pin_dir: PathBuf,
}

/// Where `imfw run` keeps the archive and its sealing key unless the policy says otherwise.
const ARCHIVE_DIR: &str = "/var/lib/imfw/archive";
const ARCHIVE_KEY: &str = "/var/lib/imfw/archive.key";
/// Exit status of `imfw archive verify` on an archive that fails verification.
const EXIT_TAMPERED: u8 = 3;

#[derive(Subcommand)]
enum ArchiveCmd {
    /// Check every record's hash chain, every seal and the head file. Exit status 3 when
    /// anything was changed, removed, reordered or inserted.
    Verify {
        #[command(flatten)]
        at: ArchiveAt,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Records that match every filter given, one line each.
    Search {
        #[command(flatten)]
        at: ArchiveAt,
        #[command(flatten)]
        filter: ArchiveFilter,
    },
    /// Records that match every filter given, as stored: one JSON object per line.
    Export {
        #[command(flatten)]
        at: ArchiveAt,
        #[command(flatten)]
        filter: ArchiveFilter,
    },
}

#[derive(clap::Args)]
struct ArchiveAt {
    /// Archive directory.
    #[arg(long, default_value = ARCHIVE_DIR)]
    dir: PathBuf,
    /// Sealing key file (verify only).
    #[arg(long, default_value = ARCHIVE_KEY)]
    key: PathBuf,
}

#[derive(clap::Args)]
struct ArchiveFilter {
    /// Records at or after this time: UNIX seconds, or YYYY-MM-DD[THH:MM[:SS]] in UTC.
    #[arg(long, value_parser = parse_time)]
    from: Option<u64>,
    /// Records before this time (same forms).
    #[arg(long, value_parser = parse_time)]
    until: Option<u64>,
    /// App id (xmpp, irc, mqtt, ...).
    #[arg(long)]
    app: Option<String>,
    /// Part of a sender or recipient (case-insensitive).
    #[arg(long)]
    party: Option<String>,
    /// Part of a message body (case-insensitive).
    #[arg(long)]
    text: Option<String>,
}

impl ArchiveFilter {
    fn filter(self) -> imfw_monitor::archive::Filter {
        imfw_monitor::archive::Filter { from: self.from, until: self.until, app: self.app, party: self.party, text: self.text }
    }
}

/// A time on the command line, in UNIX milliseconds: UNIX seconds, or a UTC date and time.
fn parse_time(text: &str) -> std::result::Result<u64, String> {
    let bad = || format!("`{text}` is not a time; expected UNIX seconds or YYYY-MM-DD[THH:MM[:SS]] (UTC)");
    if let Ok(secs) = text.parse::<u64>() {
        return secs.checked_mul(1000).ok_or_else(bad);
    }
    let (date, time) = text.split_once(['T', ' ']).unwrap_or((text, "00:00:00"));
    let ymd: Vec<&str> = date.split('-').collect();
    let hms: Vec<&str> = time.trim_end_matches('Z').split(':').collect();
    let [y, m, day] = ymd.as_slice() else { return Err(bad()) };
    let (y, m, day): (i64, i64, i64) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, day.parse().map_err(|_| bad())?);
    let num = |s: Option<&&str>, max: i64| -> std::result::Result<i64, String> {
        let v = s.map_or(Ok(0), |s| s.parse::<i64>().map_err(|_| bad()))?;
        if (0..=max).contains(&v) { Ok(v) } else { Err(bad()) }
    };
    let (hh, mm, ss) = (num(hms.first(), 23)?, num(hms.get(1), 59)?, num(hms.get(2), 60)?);
    if hms.len() > 3 || !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    // Days from 1970-01-01 of a proleptic Gregorian date (the civil-from-days inverse).
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).ok().and_then(|s| s.checked_mul(1000)).ok_or_else(bad)
}

fn archive_cmd(cmd: ArchiveCmd) -> Result<ExitCode> {
    use imfw_monitor::archive::{self, Event};
    match cmd {
        ArchiveCmd::Verify { at, json } => {
            let key = archive::SealKey::load(&at.key).with_context(|| format!("reading the sealing key {}", at.key.display()))?;
            let report = archive::verify(&at.dir, &key).with_context(|| format!("reading the archive {}", at.dir.display()))?;
            if json {
                let problems: Vec<serde_json::Value> = report
                    .problems
                    .iter()
                    .map(|p| serde_json::json!({"segment": p.segment, "offset": p.offset, "seq": p.seq, "problem": p.kind.to_string()}))
                    .collect();
                let out = serde_json::json!({
                    "ok": report.is_ok(), "segments": report.segments.len(), "records": report.records,
                    "seals": report.seals, "last_sealed_seq": report.last_sealed_seq,
                    "unsealed_records": report.unsealed_records, "recoveries": report.recoveries.len(),
                    "retention_cuts": report.retentions.len(), "problems_total": report.problems_total, "problems": problems,
                });
                println!("{out}");
            } else {
                println!(
                    "{}: {} segments, {} records, {} seals (last sealed record {}), {} records after the last seal, {} recoveries after a crash, {} retention cuts",
                    at.dir.display(),
                    report.segments.len(),
                    report.records,
                    report.seals,
                    report.last_sealed_seq.map_or_else(|| "none".to_owned(), |s| s.to_string()),
                    report.unsealed_records,
                    report.recoveries.len(),
                    report.retentions.len(),
                );
                for p in &report.problems {
                    let seg = p.segment.map_or_else(String::new, |s| format!("segment {s} "));
                    let off = p.offset.map_or_else(String::new, |o| format!("offset {o} "));
                    let seq = p.seq.map_or_else(String::new, |s| format!("record {s} "));
                    println!("PROBLEM {seg}{off}{seq}: {}", p.kind);
                }
                println!("{}", if report.is_ok() { "verified" } else { "FAILED: the archive was altered" });
            }
            Ok(if report.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_TAMPERED) })
        }
        ArchiveCmd::Search { at, filter } => {
            let mut out = std::io::stdout().lock();
            for hit in archive::search(&at.dir, &filter.filter())? {
                let hit = match hit {
                    Ok(h) => h,
                    Err(e) => {
                        log::warn!("{e}");
                        continue;
                    }
                };
                let r = &hit.record;
                let mark = if r.incomplete { " (incomplete)" } else { "" };
                let line = match &r.event {
                    Event::Message { app, flow, message, decision } => format!(
                        "{} #{} {app} {flow} {} -> {}: {:?}{mark} [{:?}{}]",
                        r.time,
                        r.seq,
                        message.sender.as_deref().unwrap_or("?"),
                        message.recipients.join(","),
                        message.body,
                        decision.action,
                        decision.matches.iter().fold(String::new(), |mut acc, m| {
                            use std::fmt::Write as _;
                            let _ = write!(acc, " {}: {}", m.rule, m.reason);
                            acc
                        }),
                    ),
                    other => format!("{} #{} {}", r.time, r.seq, serde_json::to_string(other).unwrap_or_default()),
                };
                if writeln!(out, "{line}").is_err() {
                    break;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCmd::Export { at, filter } => {
            let mut out = std::io::stdout().lock();
            let stats = archive::export(&at.dir, &filter.filter(), &mut out)?;
            if stats.skipped > 0 {
                log::warn!("{} unreadable records skipped; run `imfw archive verify`", stats.skipped);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // The policy's `observability.kernel_log` chooses the kernel's messages, in the program.
    b.filter_module(imfw::klog::TARGET, log::LevelFilter::Trace);
    let journal = stderr_is_journal();
    match format {
        LogFormat::Text => b.format(move |buf, r| {
            imfw::metrics::count_log(r.level());
            // Under systemd, journald reads the priority from a `<N>` prefix (sd-daemon(3)).
            let prio = if journal { syslog_prefix(r.level()) } else { "" };
            let source = if imfw::klog::is_kernel(r) { "source=kernel " } else { "" };
            writeln!(buf, "{prio}imfw {}: {source}{}", r.level().as_str().to_lowercase(), r.args())
        }),
        LogFormat::Json => b.format(|buf, r| {
            imfw::metrics::count_log(r.level());
            let mut line = serde_json::json!({
                "ts": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                "level": r.level().as_str().to_lowercase(),
                "msg": r.args().to_string(),
            });
            if imfw::klog::is_kernel(r) {
                line["source"] = serde_json::json!("kernel");
            }
            writeln!(buf, "{line}")
        }),
    };
    b.init();
}

/// The sd-daemon(3) priority prefix of a log level.
fn syslog_prefix(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "<3>",
        log::Level::Warn => "<4>",
        log::Level::Info => "<6>",
        log::Level::Debug | log::Level::Trace => "<7>",
    }
}

/// Whether stderr is connected to journald: systemd sets `JOURNAL_STREAM` to the device and
/// inode of the stream it connected (systemd.exec(5)).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsRawFd as _;
    let Some(want) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a stat into the buffer it is given; the fd is our stderr.
    if unsafe { libc::fstat(std::io::stderr().as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so it filled the struct.
    let st = unsafe { st.assume_init() };
    want.to_str() == Some(&format!("{}:{}", st.st_dev, st.st_ino))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if !matches!(cli.cmd, Cmd::Run { .. }) {
        // A reporting command piped into `head` ends quietly when the reader goes, as other
        // command-line tools do, instead of panicking in `println!`. Not `imfw run`: a
        // client that closes the control socket early must cost the controller an EPIPE,
        // never its life.
        // SAFETY: restores the default disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.cmd {
        Cmd::Check { policy } => return check(&policy),
        Cmd::Run { policy, iface, control, flows, pins, detach_on_exit } => {
            run(&policy, &iface, &control, flows, &pins.pin_dir, detach_on_exit)
        }
        Cmd::Unload { pins } => unload(&pins.pin_dir),
        Cmd::Classify { policy, json, captures } => classify_cmd(policy.as_deref(), json, &captures),
        Cmd::Status { control, json } => control::request(&control, "status").map(|v| {
            println!("{}", if json { v.to_string() } else { imfw::status::render(&v) });
            ExitCode::SUCCESS
        }),
        Cmd::Flows { control, app, verdict, addr, limit, sort, json } => {
            flows_cmd(&control, &imfw::flows::Query { app, verdict, addr, limit: usize::try_from(limit).ok(), sort: Some(sort) }, json)
        }
        Cmd::Stats { control, json } => stats(&control, json),
        Cmd::Reload { control } => reload_cmd(&control),
        Cmd::Archive { cmd } => archive_cmd(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads and compiles a policy, printing every error; `None` means exit with `EXIT_BAD_INPUT`.
fn load_policy(path: &Path) -> Option<Compiled> {
    let compiled = policy::load(path).and_then(|p| p.compile());
    match compiled {
        Ok(c) => Some(c),
        Err(errors) => {
            eprintln!("{errors}");
            None
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match load_policy(path) {
        Some(c) => {
            println!(
                "{}: ok ({} apps, {} signatures, {} domains, {} address ranges, {} source networks)",
                path.display(),
                c.apps.len(),
                c.sigs.len(),
                c.names.len(),
                c.addr4.len() + c.addr6.len(),
                c.src4.len() + c.src6.len()
            );
            match RangeTable::build(&c.addr4) {
                Ok(t) => {
                    println!(
                        "  IPv4 range table: {} steps in {} buckets, {} of them with a sub-index (room for {RANGE_SUB_BLOCKS})",
                        t.steps.len(),
                        t.buckets.len(),
                        t.sub_indexed()
                    );
                    if let Some(s) = t.shortfall() {
                        println!("  {s}");
                    }
                }
                Err(e) => {
                    eprintln!("{}: the IPv4 range table cannot be built: {e:#}", path.display());
                    return ExitCode::from(EXIT_BAD_INPUT);
                }
            }
            ExitCode::SUCCESS
        }
        None => ExitCode::from(EXIT_BAD_INPUT),
    }
}

#[expect(clippy::too_many_lines, reason = "the daemon's one event loop reads best in one place; issue 6 splits it with reloads")]
fn run(policy_path: &Path, ifaces: &[String], control_path: &Path, flows: u32, pin_dir: &Path, detach_on_exit: bool) -> Result<ExitCode> {
    let loaded = policy::load(policy_path).and_then(|p| p.compile().map(|c| (p, c)));
    let (policy_full, compiled) = match loaded {
        Ok(pc) => pc,
        Err(errors) => {
            eprintln!("{errors}");
            log::error!("refusing to start: {} is not a valid policy", policy_path.display());
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    if ifaces.iter().any(|i| i.trim().is_empty()) {
        log::error!("refusing to start: an empty interface name in --iface (under systemd: set IMFW_IFACES in /etc/default/imfw)");
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    for i in ifaces {
        if let Err(e) = imfw::dataplane::ifindex(i) {
            log::error!("refusing to start: {e:#}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    }
    for name in &compiled.redirect_ifaces {
        if let Err(e) = imfw::dataplane::ifindex(name) {
            log::error!("refusing to start: redirect target: {e:#}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    }
    // The content path of monitored flows, with its compliance archive: opened before the
    // data plane changes, so that a bad archive setting refuses the start cleanly.
    let mut content = match imfw::content_path::ContentPath::open(&policy_full, wall_ms(), Box::new(imfw::rst::reset_both)) {
        Ok(c) => c,
        Err(e) => {
            log::error!("refusing to start: {e:#}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let pins = imfw::pins::PinDir::new(pin_dir);
    pins.prepare(!detach_on_exit)?;
    let _lock = pins.lock()?;
    // Adopts a compatible pinned state (flows keep their verdicts), or refuses before any change.
    let mut dp = Dataplane::load_pinned(flows, pins)?;
    let first = dp.apply(&compiled).context("writing the policy into the maps")?;
    for i in ifaces {
        let mode = dp.attach(i)?;
        log::info!("attached to {i} in {} mode", mode.name());
        if mode == AttachMode::Generic {
            log::warn!("{i}: GENERIC XDP mode: enforcement works but at a fraction of line rate");
        }
    }
    dp.commit_pins().context("pinning the program, its links and its maps")?;
    let ring = dp.take_events().ok_or_else(|| anyhow!("event ring already taken"))?;
    let kernel_log = dp.kernel_logger()?;
    let mut controller = Controller::new(&compiled);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let shared = Arc::new(Mutex::new(control::Shared {
        dataplane: dp,
        compiled,
        policy_file: policy_path.display().to_string(),
        started: Instant::now(),
        reloads: 0,
        reloads_failed: 0,
        policy_version: first.version,
        policy_generation: first.generation,
    }));
    // systemd's notification socket and watchdog (no-ops when not run by systemd).
    let notifier = Notifier::from_env();
    let result = rt.block_on(async {
        let listener = control::bind(control_path)?;
        let (to_loop, mut from_socket) = tokio::sync::mpsc::channel::<control::LoopRequest>(4);
        tokio::spawn(control::serve(listener, shared.clone(), to_loop));
        tokio::spawn(imfw::klog::forward(kernel_log));
        imfw::metrics::start(policy_full.observability.prometheus, shared.clone()).await?;
        // SAFETY: the ring buffer owns its fd and outlives the registration (both dropped here).
        let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow!("polling the event ring: {e}"))?;
        let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
        let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
        let mut running_monitor = policy_full.monitor.clone();
        log::info!("ready: policy {} on {}", policy_path.display(), ifaces.join(","));
        // Attached, maps written, control socket answering: dependents may start now.
        if let Ok(s) = shared.lock() {
            notifier.send_or_warn(&Message::ready().status(&serving_status(&s)));
        }
        // Pinged from this loop, so a wedged loop stops pinging and systemd restarts us.
        let mut watchdog = notifier.watchdog().map(tokio::time::interval);
        let clock = Instant::now();
        let mut expiry = tokio::time::interval(std::time::Duration::from_secs(10));
        let mut second = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut drain = tokio::time::interval(EVENT_DRAIN);
        loop {
            tokio::select! {
                _ = second.tick() => {
                    // The heartbeat the data plane reads (see `controller_down`); reassembly
                    // timeouts, archive seals, ring losses of monitored flows.
                    if let Ok(mut s) = shared.lock() {
                        if let Err(e) = s.dataplane.heartbeat() {
                            log::error!("heartbeat: {e:#}");
                        }
                        if let Err(e) = content.tick(&mut s.dataplane, mono_ns(clock), wall_ms()) {
                            log::error!("content path: {e:#}");
                        }
                        imfw::metrics::set_content(content.stats());
                    }
                }
                _ = expiry.tick() => {
                    // Learned DNS addresses whose TTL ran out leave the app networks.
                    if let Ok(mut s) = shared.lock() {
                        if let Err(e) = controller.tick(clock.elapsed().as_secs(), &mut s.dataplane) {
                            log::error!("controller: {e:#}");
                        }
                    }
                }
                () = tick_or_never(watchdog.as_mut()) => notifier.send_or_warn(&Message::watchdog()),
                _ = hup.recv() => {
                    if let Ok(mut s) = shared.lock() {
                        // Logged and counted inside; the running policy stays on error.
                        let _ = reload_notified(&notifier, policy_path, &mut s, &mut controller, &mut running_monitor, &mut content);
                    }
                }
                Some(request) = from_socket.recv() => match request {
                    control::LoopRequest::Reload(reply) => {
                        let answer = match shared.lock() {
                            Ok(mut s) => match reload_notified(&notifier, policy_path, &mut s, &mut controller, &mut running_monitor, &mut content) {
                                Ok(summary) => serde_json::json!({"reloaded": true, "policy": s.policy_file, "message": summary}),
                                Err(errors) => serde_json::json!({"reloaded": false, "policy": s.policy_file, "errors": errors}),
                            },
                            Err(_) => serde_json::json!({"error": "controller state poisoned"}),
                        };
                        let _ = reply.send(answer);
                    }
                },
                _ = term.recv() => {
                    notifier.send_or_warn(&Message::stopping().status("SIGTERM: stopping"));
                    log::info!("SIGTERM: stopping");
                    break;
                }
                _ = int.recv() => {
                    notifier.send_or_warn(&Message::stopping().status("SIGINT: stopping"));
                    log::info!("SIGINT: stopping");
                    break;
                }
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    let batch = read_ring(guard.get_inner_mut());
                    guard.clear_ready();
                    // The flows' classifications first, as they happened first.
                    log_classified(&shared);
                    handle_events(&batch, &shared, &mut controller, &mut content, clock);
                }
                _ = drain.tick() => {
                    // Classifications do not wake the loop (a wakeup costs an interrupt each):
                    // read them here.
                    log_classified(&shared);
                    let batch = read_ring(ring.get_mut());
                    if !batch.is_empty() {
                        handle_events(&batch, &shared, &mut controller, &mut content, clock);
                    }
                }
            }
        }
        anyhow::Ok(())
    });
    let _ = std::fs::remove_file(control_path);
    // The control server's tasks go with the runtime; then the state is ours alone.
    drop(rt);
    let dp = Arc::try_unwrap(shared)
        .map_err(|_| anyhow!("the controller state is still shared"))?
        .into_inner()
        .map_err(|_| anyhow!("state poisoned"))?
        .dataplane;
    let end = if detach_on_exit {
        dp.unload().map(|done| {
            for line in done {
                log::info!("{line}");
            }
            "detached and unpinned; exiting".to_owned()
        })
    } else {
        dp.leave_pinned().map(|kept| format!("{kept}; exiting"))
    };
    match content.close(wall_ms()) {
        Ok(stats) => log::info!("content path: {stats:?}"),
        Err(e) => log::error!("content path: {e:#}"),
    }
    result?;
    log::info!("{}", end?);
    Ok(ExitCode::SUCCESS)
}

/// `imfw unload`: detaches the pinned links and removes every pin, saying what it removed.
fn unload(pin_dir: &Path) -> Result<ExitCode> {
    let pins = imfw::pins::PinDir::new(pin_dir);
    if !pin_dir.exists() || pins.is_empty() {
        println!("nothing pinned under {}", pin_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let _lock = pins.lock()?;
    for line in pins.remove_all()? {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for the next tick of `interval`, or forever without one.
async fn tick_or_never(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The one-line state for `systemctl status`: policy, its hash, interfaces and modes.
fn serving_status(s: &control::Shared) -> String {
    let ifaces: Vec<String> = s.dataplane.attached().iter().map(|a| format!("{} ({})", a.iface, a.mode.name())).collect();
    format!("enforcing {} (policy {}) on {}", s.policy_file, s.compiled.hash.get(..12).unwrap_or(&s.compiled.hash), ifaces.join(", "))
}

/// [`reload`] between the notifications systemd expects of a reload (`Type=notify-reload`):
/// `RELOADING=1` with the monotonic clock before, `READY=1` with a status saying whether the
/// new policy took effect after. SIGHUP and `imfw reload` both come here.
fn reload_notified(
    notifier: &Notifier,
    path: &Path,
    s: &mut control::Shared,
    controller: &mut Controller,
    running_monitor: &mut policy::Monitor,
    content: &mut imfw::content_path::ContentPath,
) -> std::result::Result<String, String> {
    notifier.send_or_warn(&Message::reloading(notify::monotonic_usec()).status(&format!("reloading {}", path.display())));
    let outcome = match reload(path, s, controller, running_monitor, content) {
        Ok(done) => {
            let sw = &done.switched;
            let later = if done.needs_restart.is_empty() {
                String::new()
            } else {
                format!(" (monitor.{} take effect at the next restart)", done.needs_restart.join(", monitor."))
            };
            Ok(format!(
                "reloaded {}: policy version {} in force, {} decided flows re-evaluated, {} changed verdict{later}",
                path.display(),
                sw.version,
                sw.flows,
                sw.changed
            ))
        }
        Err(e) => Err(format!("{e:#}")),
    };
    let status = match &outcome {
        Ok(summary) => format!("{summary}; {}", serving_status(s)),
        Err(errors) => format!(
            "reload refused ({} errors; see the log or `imfw check`), the running policy stays: {}",
            errors.lines().filter(|l| !l.trim().is_empty()).count(),
            serving_status(s)
        ),
    };
    notifier.send_or_warn(&Message::ready().status(&status));
    outcome
}

/// What a reload did.
#[derive(Debug)]
pub struct Reloaded {
    /// The data plane's side: generation, version, flows re-evaluated.
    pub switched: imfw::dataplane::Switched,
    /// Monitor settings that changed but take effect at the next restart.
    pub needs_restart: Vec<&'static str>,
}

/// SIGHUP (and `imfw reload`): reads, checks and compiles the whole policy file again, then
/// puts it in force: the maps switch atomically (`Dataplane::switch`: no packet sees parts of
/// two policies), decided flows are re-evaluated, and the content rules and the live monitor
/// settings follow. A file with any error, or a policy the data plane cannot take (a
/// redirect interface that does not exist, an archive that cannot be opened), is refused:
/// counted, logged as `imfw check` prints it, and the running policy stays in force whole.
fn reload(
    path: &Path,
    s: &mut control::Shared,
    controller: &mut Controller,
    running_monitor: &mut policy::Monitor,
    content: &mut imfw::content_path::ContentPath,
) -> Result<Reloaded> {
    let r = try_reload(path, s, controller, running_monitor, content);
    match &r {
        Ok(done) => {
            s.reloads += 1;
            let sw = &done.switched;
            log::info!(
                "reloaded {}: policy version {} (generation {}, hash {}) in force; {} decided flows re-evaluated, {} changed verdict{}",
                path.display(),
                sw.version,
                sw.generation,
                s.compiled.hash.get(..12).unwrap_or(&s.compiled.hash),
                sw.flows,
                sw.changed,
                if sw.content_blocked > 0 { format!(", {} blocked by content rules kept", sw.content_blocked) } else { String::new() },
            );
            if !done.needs_restart.is_empty() {
                log::warn!("reload: monitor.{} changed; this takes effect at the next restart", done.needs_restart.join(", monitor."));
            }
        }
        Err(e) => {
            s.reloads_failed += 1;
            log::error!("reload refused, the running policy stays in force: {e:#}");
        }
    }
    r
}

fn try_reload(
    path: &Path,
    shared: &mut control::Shared,
    controller: &mut Controller,
    running_monitor: &mut policy::Monitor,
    content: &mut imfw::content_path::ContentPath,
) -> Result<Reloaded> {
    let mut next = policy::load(path).map_err(|errors| anyhow!("{} is not a valid policy\n{errors}", path.display()))?;
    next.keep_app_ids(&shared.compiled.apps);
    let compiled = next.compile().map_err(|errors| anyhow!("{} is not a valid policy\n{errors}", path.display()))?;
    // A policy that starts monitoring needs the archive the running one did without: opened
    // first, so that a bad archive refuses the reload before anything changes.
    let fresh = if next.monitors() && !shared.compiled.monitors() {
        Some(imfw::content_path::ContentPath::open(&next, wall_ms(), Box::new(imfw::rst::reset_both))?)
    } else {
        None
    };
    let switched = match shared.dataplane.apply(&compiled) {
        Ok(sw) => sw,
        Err(e) => {
            if let Some(Err(e2)) = fresh.map(|f| f.close(wall_ms())) {
                log::error!("content path: {e2:#}");
            }
            return Err(e.context("putting the new policy in force"));
        }
    };
    let opened = fresh.is_some();
    if let Some(fresh) = fresh {
        let old = std::mem::replace(content, fresh);
        if let Err(e) = old.close(wall_ms()) {
            log::error!("content path: {e:#}");
        }
    } else {
        content.set_policy(&next);
    }
    controller.set_policy(&compiled);
    let m = &next.monitor;
    let was = &*running_monitor;
    let needs_restart: Vec<&'static str> = [
        ("archive", m.archive != was.archive),
        ("archive_key", m.archive_key != was.archive_key),
        ("on_gap", m.on_gap != was.on_gap),
        ("max_flows", m.max_flows != was.max_flows),
        ("memory_mb", m.memory_bytes != was.memory_bytes),
    ]
    .into_iter()
    .filter_map(|(k, changed)| (changed && !opened).then_some(k))
    .collect();
    // What still differs stays recorded as running, so the warning repeats until a restart.
    let mut keep = next.monitor.clone();
    if !needs_restart.is_empty() {
        keep.archive.clone_from(&was.archive);
        keep.archive_key.clone_from(&was.archive_key);
        keep.on_gap = was.on_gap;
        keep.max_flows = was.max_flows;
        keep.memory_bytes = was.memory_bytes;
    }
    *running_monitor = keep;
    shared.compiled = compiled;
    shared.policy_version = switched.version;
    shared.policy_generation = switched.generation;
    Ok(Reloaded { switched, needs_restart })
}

/// `imfw reload`: the running controller reloads on its main loop and answers with the outcome.
fn reload_cmd(control_path: &Path) -> Result<ExitCode> {
    let v = control::request_within(control_path, "reload", control::RELOAD_LIMIT + std::time::Duration::from_secs(5))?;
    if v["reloaded"].as_bool() == Some(true) {
        println!("{}", v["message"].as_str().unwrap_or("reloaded"));
        return Ok(ExitCode::SUCCESS);
    }
    let errors = v["errors"].as_str().ok_or_else(|| anyhow!("bad reply from the controller: {v}"))?;
    eprintln!("{}", errors.trim_end());
    eprintln!("reload refused: {} is not a valid policy; the running policy stays in force", v["policy"].as_str().unwrap_or("the policy file"));
    Ok(ExitCode::from(EXIT_BAD_INPUT))
}

/// Everything the event ring holds now.
fn read_ring(rb: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        if let Some(ev) = parse_event(&item) {
            out.push(ev);
        }
    }
    out
}

/// Logs the flows classified since the last read of the classification log.
fn log_classified(shared: &Arc<Mutex<control::Shared>>) {
    let Ok(mut s) = shared.lock() else { return };
    let s = &mut *s;
    for ev in s.dataplane.classified() {
        log::info!("{}", events::describe(&ev, &s.compiled));
    }
}

/// Logs classifications, hands payloads to the controller and segments to the content path.
fn handle_events(
    batch: &[Event],
    shared: &Arc<Mutex<control::Shared>>,
    controller: &mut Controller,
    content: &mut imfw::content_path::ContentPath,
    clock: Instant,
) {
    let Ok(mut s) = shared.lock() else { return };
    let s = &mut *s;
    for ev in batch {
        match ev {
            Event::Classified(ev) => log::info!("{}", events::describe(ev, &s.compiled)),
            Event::Payload(p) => match controller.on_payload(p, &mut s.dataplane, &s.compiled) {
                Ok(Some(d)) => log::info!("{}", events::describe_decision(&d, p, &s.compiled)),
                Ok(None) => {}
                Err(e) => log::error!("controller: {e:#}"),
            },
            Event::Stream(p) => {
                if let Err(e) = content.on_stream(p, &mut s.dataplane, &s.compiled, mono_ns(clock), wall_ms()) {
                    log::error!("content path: {e:#}");
                }
            }
        }
    }
    if let Err(e) = content.release(&mut s.dataplane) {
        log::error!("content path: {e:#}");
    }
}

/// Wall-clock milliseconds since the UNIX epoch, for the archive's records.
fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Monotonic nanoseconds since `start`, for reassembly timeouts.
fn mono_ns(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn classify_cmd(policy_path: Option<&Path>, json: bool, captures: &[PathBuf]) -> Result<ExitCode> {
    let compiled = match policy_path {
        Some(p) => match load_policy(p) {
            Some(c) => c,
            None => return Ok(ExitCode::from(EXIT_BAD_INPUT)),
        },
        None => policy::parse(policy::default_policy_text(), "default.yaml")
            .and_then(|p| p.compile())
            .map_err(|e| anyhow!("built-in default policy: {e}"))?,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for path in captures {
        let report = classify::classify_capture(path, &compiled).with_context(|| format!("classifying {}", path.display()))?;
        if json {
            for f in &report.flows {
                writeln!(out, "{}", f.to_json())?;
            }
        } else {
            writeln!(out, "{}", classify::render_table(&path.display().to_string(), &report))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn flows_cmd(control_path: &Path, query: &imfw::flows::Query, json: bool) -> Result<ExitCode> {
    if let Some(a) = &query.addr {
        policy::Cidr::parse(a).map_err(|e| anyhow!("--addr: {e}"))?;
    }
    let v = control::request(control_path, &format!("flows {}", serde_json::to_string(query)?))?;
    if json {
        println!("{v}");
    } else {
        let listing: imfw::flows::Listing = serde_json::from_value(v).context("bad flows reply from the controller")?;
        println!("{}", imfw::flows::render(&listing));
    }
    Ok(ExitCode::SUCCESS)
}

fn stats(control_path: &Path, json: bool) -> Result<ExitCode> {
    let v = control::request(control_path, "stats")?;
    if json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<12} {:<9} {:>12} {:>14}", "APP", "VERDICT", "PACKETS", "BYTES");
    for c in v["counters"].as_array().into_iter().flatten() {
        println!(
            "{:<12} {:<9} {:>12} {:>14}",
            c["app"].as_str().unwrap_or("(not IM)"),
            c["verdict"].as_str().unwrap_or("?"),
            c["packets"],
            c["bytes"]
        );
    }
    println!("\ndrops by reason:");
    for (k, c) in v["drops"].as_object().into_iter().flatten() {
        println!("  {k:<16} {:>12} packets {:>14} bytes", c["packets"], c["bytes"]);
    }
    println!("\ndata plane:");
    for (k, n) in v["stats"].as_object().into_iter().flatten() {
        println!("  {k:<20} {n:>12}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_on_the_command_line() {
        assert_eq!(super::parse_time("0"), Ok(0));
        assert_eq!(super::parse_time("1700000000"), Ok(1_700_000_000_000));
        assert_eq!(super::parse_time("1970-01-02"), Ok(86_400_000));
        assert_eq!(super::parse_time("2026-11-25T22:21:50Z"), Ok(1_795_645_310_000));
        assert_eq!(super::parse_time("2000-03-01 00:00"), Ok(951_868_800_000));
        for bad in ["2026-13-01", "2026-11-25T25:00", "yesterday", "2026-11", "-5"] {
            assert!(super::parse_time(bad).is_err(), "{bad}");
        }
    }
}
