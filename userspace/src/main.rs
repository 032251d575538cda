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
    policy::{self, Compiled},
};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

/// Exit status for an invalid policy (or other bad input the user must fix).
const EXIT_BAD_INPUT: u8 = 2;

/// imfw: an eBPF/XDP instant-messaging firewall for Linux gateways.
#[derive(Parser)]
#[command(version, about)]
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
    /// State of a running instance: interfaces, policy file and hash, uptime, reloads.
    Status {
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
    match format {
        LogFormat::Text => b.format(|buf, r| writeln!(buf, "imfw {}: {}", r.level().as_str().to_lowercase(), r.args())),
        LogFormat::Json => b.format(|buf, r| {
            let line = serde_json::json!({
                "ts": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                "level": r.level().as_str().to_lowercase(),
                "msg": r.args().to_string(),
            });
            writeln!(buf, "{line}")
        }),
    };
    b.init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.cmd {
        Cmd::Check { policy } => return check(&policy),
        Cmd::Run { policy, iface, control, flows } => run(&policy, &iface, &control, flows),
        Cmd::Classify { policy, json, captures } => classify_cmd(policy.as_deref(), json, &captures),
        Cmd::Status { control } => control::request(&control, "status").map(|v| {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string()));
            ExitCode::SUCCESS
        }),
        Cmd::Stats { control, json } => stats(&control, json),
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
            ExitCode::SUCCESS
        }
        None => ExitCode::from(EXIT_BAD_INPUT),
    }
}

#[expect(clippy::too_many_lines, reason = "the daemon's one event loop reads best in one place; issue 6 splits it with reloads")]
fn run(policy_path: &Path, ifaces: &[String], control_path: &Path, flows: u32) -> Result<ExitCode> {
    let loaded = policy::load(policy_path).and_then(|p| p.compile().map(|c| (p, c)));
    let (policy_full, compiled) = match loaded {
        Ok(pc) => pc,
        Err(errors) => {
            eprintln!("{errors}");
            log::error!("refusing to start: {} is not a valid policy", policy_path.display());
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
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
    let mut dp = Dataplane::load(flows)?;
    let first = dp.apply(&compiled).context("writing the policy into the maps")?;
    for i in ifaces {
        let mode = dp.attach(i)?;
        log::info!("attached to {i} in {} mode", mode.name());
        if mode == AttachMode::Generic {
            log::warn!("{i}: GENERIC XDP mode: enforcement works but at a fraction of line rate");
        }
    }
    let ring = dp.take_events().ok_or_else(|| anyhow!("event ring already taken"))?;
    let mut controller = Controller::new(&compiled);
    // The content path of monitored flows, with its compliance archive.
    let mut content = match imfw::content_path::ContentPath::open(&policy_full, wall_ms(), Box::new(imfw::rst::reset_both)) {
        Ok(c) => c,
        Err(e) => {
            log::error!("refusing to start: {e:#}");
            dp.detach_all()?;
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
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
    let result = rt.block_on(async {
        let listener = control::bind(control_path)?;
        tokio::spawn(control::serve(listener, shared.clone()));
        // SAFETY: the ring buffer owns its fd and outlives the registration (both dropped here).
        let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow!("polling the event ring: {e}"))?;
        let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
        let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
        let mut running_monitor = policy_full.monitor.clone();
        log::info!("ready: policy {} on {}", policy_path.display(), ifaces.join(","));
        let clock = Instant::now();
        let mut expiry = tokio::time::interval(std::time::Duration::from_secs(10));
        let mut second = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = second.tick() => {
                    // Reassembly timeouts, archive seals, ring losses of monitored flows.
                    if let Ok(mut s) = shared.lock() {
                        if let Err(e) = content.tick(&mut s.dataplane, mono_ns(clock), wall_ms()) {
                            log::error!("content path: {e:#}");
                        }
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
                _ = hup.recv() => {
                    if let Ok(mut s) = shared.lock() {
                        // Logged and counted inside; the running policy stays on error.
                        let _ = reload(policy_path, &mut s, &mut controller, &mut running_monitor, &mut content);
                    }
                }
                _ = term.recv() => { log::info!("SIGTERM: detaching"); break; }
                _ = int.recv() => { log::info!("SIGINT: detaching"); break; }
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    let rb = guard.get_inner_mut();
                    let batch: Vec<_> = {
                        let mut out = Vec::new();
                        while let Some(item) = rb.next() {
                            if let Some(ev) = parse_event(&item) { out.push(ev); }
                        }
                        out
                    };
                    guard.clear_ready();
                    if let Ok(mut s) = shared.lock() {
                        let s = &mut *s;
                        for ev in &batch {
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
                }
            }
        }
        anyhow::Ok(())
    });
    let _ = std::fs::remove_file(control_path);
    let detach = shared.lock().map_err(|_| anyhow!("state poisoned"))?.dataplane.detach_all();
    match content.close(wall_ms()) {
        Ok(stats) => log::info!("content path: {stats:?}"),
        Err(e) => log::error!("content path: {e:#}"),
    }
    result?;
    detach?;
    log::info!("detached; exiting");
    Ok(ExitCode::SUCCESS)
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
