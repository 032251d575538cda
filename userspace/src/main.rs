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
    /// Counters of a running instance.
    Stats {
        #[arg(long, default_value = control::DEFAULT_PATH)]
        control: PathBuf,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
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
        Cmd::Stats { control, json } => stats(&control, json),
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

fn run(policy_path: &Path, ifaces: &[String], control_path: &Path, flows: u32) -> Result<ExitCode> {
    let Some(compiled) = load_policy(policy_path) else {
        log::error!("refusing to start: {} is not a valid policy", policy_path.display());
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
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
    dp.apply(&compiled).context("writing the policy into the maps")?;
    for i in ifaces {
        let mode = dp.attach(i)?;
        log::info!("attached to {i} in {} mode", mode.name());
        if mode == AttachMode::Generic {
            log::warn!("{i}: GENERIC XDP mode: enforcement works but at a fraction of line rate");
        }
    }
    let ring = dp.take_events().ok_or_else(|| anyhow!("event ring already taken"))?;
    let mut controller = Controller::new(&compiled);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let shared = Arc::new(Mutex::new(control::Shared {
        dataplane: dp,
        compiled,
        policy_file: policy_path.display().to_string(),
        started: Instant::now(),
    }));
    let result = rt.block_on(async {
        let listener = control::bind(control_path)?;
        tokio::spawn(control::serve(listener, shared.clone()));
        // SAFETY: the ring buffer owns its fd and outlives the registration (both dropped here).
        let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow!("polling the event ring: {e}"))?;
        let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
        log::info!("ready: policy {} on {}", policy_path.display(), ifaces.join(","));
        let clock = Instant::now();
        let mut expiry = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = expiry.tick() => {
                    // Learned DNS addresses whose TTL ran out leave the app networks.
                    if let Ok(mut s) = shared.lock() {
                        if let Err(e) = controller.tick(clock.elapsed().as_secs(), &mut s.dataplane) {
                            log::error!("controller: {e:#}");
                        }
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
                            }
                        }
                    }
                }
            }
        }
        anyhow::Ok(())
    });
    let _ = std::fs::remove_file(control_path);
    let detach = shared.lock().map_err(|_| anyhow!("state poisoned"))?.dataplane.detach_all();
    result?;
    detach?;
    log::info!("detached; exiting");
    Ok(ExitCode::SUCCESS)
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
