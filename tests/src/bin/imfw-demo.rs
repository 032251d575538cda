//! `imfw-demo --imfw PATH --policy PATH`: builds the lab, runs imfw on its gateway with the
//! policy, sends real IM and web traffic through it and prints what got through, with imfw's
//! counters. Removes the lab on exit, on error and on Ctrl-C. Needs root.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use imfw_tests::{
    lab::Lab,
    protocols::{self, ClientHello},
    scenario::{run_cases, Case, Observed},
    servers::{self, TcpServer},
    util::Rng,
};

/// Whole-demo time budget; each step is bounded well below it.
const LIMIT: Duration = Duration::from_mins(1);
const WAIT: Duration = Duration::from_secs(2);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Turns Ctrl-C and SIGTERM into a flag checked between steps, so the lab guards drop and
/// clean up instead of the process dying with namespaces left behind.
fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

fn checkpoint(start: Instant, step: &str) -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted before {step}");
    }
    if start.elapsed() > LIMIT {
        bail!("out of time ({LIMIT:?}) before {step}");
    }
    Ok(())
}

struct Args {
    imfw: PathBuf,
    policy: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut imfw = None;
    let mut policy = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--imfw" => imfw = it.next().map(PathBuf::from),
            "--policy" => policy = it.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("usage: imfw-demo --imfw PATH --policy PATH");
                std::process::exit(0);
            }
            other => {
                bail!("unknown argument {other:?}; usage: imfw-demo --imfw PATH --policy PATH")
            }
        }
    }
    Ok(Args {
        imfw: imfw.context("--imfw PATH is required")?,
        policy: policy.context("--policy PATH is required")?,
    })
}

fn main() {
    catch_signals();
    if let Err(e) = run() {
        eprintln!("imfw-demo: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let start = Instant::now();
    let args = parse_args()?;
    let policy = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("reading {}", args.policy.display()))?;

    println!("building the lab (client, gateway, server, recorder namespaces)...");
    let mut lab = Lab::new()?;
    let high = Rng::from_time().range(20_000, 60_000) as u16;
    let server = TcpServer::start(&lab.server, &[80, 443, 1883, 5222, 6667, 8080, high])?;
    checkpoint(start, "starting imfw")?;
    println!(
        "starting imfw on the gateway ({}, {}) with {}...",
        lab.gw_lan,
        lab.gw_wan,
        args.policy.display()
    );
    lab.start_imfw_with(&args.imfw, &policy)?;

    checkpoint(start, "sending traffic")?;
    let (rows, cases) = plan(high);
    println!("sending {} connections through the gateway...", cases.len());
    let obs = run_cases(&lab.client, &server, cases, WAIT);
    checkpoint(start, "downloading")?;
    let mut downloads = Vec::new();
    for v6 in [false, true] {
        let dst = SocketAddr::new(Lab::server_ip(v6), 80);
        let r =
            servers::http_download(&lab.client, dst, "www.example.com", Duration::from_secs(15));
        downloads.push((dst, r));
    }
    checkpoint(start, "reading the counters")?;
    let stats = lab.imfw().stats()?;

    print_matrix(&rows, &obs, high);
    println!(
        "\nHTTP download of {} bytes with SHA-256 check:",
        servers::HTTP_BODY_LEN
    );
    for (dst, r) in &downloads {
        let verdict = match r {
            Ok(d) if d.sha256() == servers::http_body_sha256() => {
                format!("delivered, {} bytes, checksum ok", d.body.len())
            }
            Ok(d) => format!(
                "corrupt: {} bytes, status {:?}",
                d.body.len(),
                d.status_line
            ),
            Err(e) => format!("failed: {e:#}"),
        };
        println!("  {dst:<24} {verdict}");
    }
    println!("\nimfw counters (per app and verdict, frames as seen by XDP on both interfaces):");
    println!(
        "  {:<12} {:<9} {:>10} {:>14}",
        "APP", "VERDICT", "PACKETS", "BYTES"
    );
    let mut cells = stats.cells();
    cells.sort_by(|a, b| {
        (a.0.as_deref().unwrap_or("~"), &a.1).cmp(&(b.0.as_deref().unwrap_or("~"), &b.1))
    });
    for (app, verdict, c) in cells {
        println!(
            "  {:<12} {:<9} {:>10} {:>14}",
            app.as_deref().unwrap_or("(not IM)"),
            verdict,
            c.packets,
            c.bytes
        );
    }
    println!(
        "  drops by policy: {} packets; flows created: {}; classified: {}",
        stats.drops("policy").packets,
        stats.stat("flows_created"),
        stats.stat("classified")
    );
    let st = lab.stop_imfw()?;
    println!(
        "\nimfw stopped ({st}); removing the lab. Took {:.1} s.",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A table row: app, what the client sends, its own port, index of its first case.
type Row = (&'static str, String, u16, usize);

/// Every row's cases: IPv4 on 80, 443, the app's own port and `high`, IPv6 on its own port.
fn plan(high: u16) -> (Vec<Row>, Vec<Case>) {
    let mut openers = protocols::im_openers(&mut Rng::from_time());
    openers.push(protocols::late_sni_opener("chat.signal.org", "signal"));
    let mut cases = Vec::new();
    let mut rows = Vec::new();
    for o in &openers {
        rows.push((o.app, o.label.clone(), o.own_port, cases.len()));
        cases.extend(
            [80, 443, o.own_port, high]
                .iter()
                .map(|&p| Case::from_opener(o, p, false)),
        );
        cases.push(Case::from_opener(o, o.own_port, true));
    }
    for (i, sni) in ["www.example.com", "docs.rs"].into_iter().enumerate() {
        let mut ch = ClientHello::new(sni);
        ch.seed = 100 + i as u64;
        let bytes = ch.build();
        let label = format!("tls {sni}");
        rows.push(("(web)", label.clone(), 443, cases.len()));
        cases.extend(
            [80, 443, 443, high]
                .iter()
                .map(|&p| Case::other(&label, bytes.clone(), p, false)),
        );
        cases.push(Case::other(&label, bytes, 443, true));
    }
    (rows, cases)
}

fn print_matrix(rows: &[Row], obs: &[Observed], high: u16) {
    let w = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(12);
    println!();
    println!(
        "{:<10} {:<w$} {:<10} {:<10} {:<16} {:<16} {:<16}",
        "APP",
        "CLIENT SENDS",
        "IPv4 :80",
        "IPv4 :443",
        "IPv4 own port",
        &format!("IPv4 :{high}"),
        "IPv6 own port"
    );
    for (app, label, own, first) in rows {
        let cell = |i: usize| obs.get(first + i).map_or("-", Observed::word);
        println!(
            "{:<10} {:<w$} {:<10} {:<10} {:<16} {:<16} {:<16}",
            app,
            label,
            cell(0),
            cell(1),
            format!(":{own} {}", cell(2)),
            cell(3),
            format!(":{own} {}", cell(4)),
        );
    }
}
