//! `cargo xtask bench`: builds and runs the measurement programs, each of which prints one JSON
//! record per figure (see [`Record`]), and turns the records into a table on stdout,
//! `target/bench/results.json` and one SVG chart per scaling curve.
//!
//! The measurement programs (they need root and the BPF toolchain):
//! - `imfw` example `bench_xdp`: cost per packet in XDP against an empty and a minimal
//!   stateful reference program, measured in the same run;
//! - `imfw` example `bench_scale`: new flows per second, a SYN flood against the flow table,
//!   and cost as domains, address ranges and flows grow;
//! - `imfw` example `bench_veth`: Mpps at the receiver of a veth pair whose peer runs imfw
//!   (or a reference program) in native mode, the traffic mix played with live frames;
//! - `imfw` example `bench_ndpi`: imfw's in-kernel packets per second on a realistic traffic
//!   mix against ndpiReader (Debian's libndpi-bin) on the same mix, as a pcap;
//! - `imfw-monitor` example `monitor_throughput`: the controller's content path (reassembly,
//!   parsers, content policy, archive), against a pass that only copies the same bytes.
//!
//! A figure never fails the bench: each target is printed as met or not met. Only a program
//! that cannot run (or prints no record) is an error.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::{cargo, prereq, run_checked, target_dir, workspace_root};

#[derive(Args)]
pub struct Options {
    /// A first look in about a minute: fewer repeats, smaller tables.
    #[arg(long)]
    quick: bool,
    /// Run only these parts (`xdp`, `scale`, `veth`, `ndpi`, `controller`); all when absent.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also print how each figure was measured (always in results.json).
    #[arg(long)]
    notes: bool,
}

/// One measurement program.
struct Part {
    id: &'static str,
    package: &'static str,
    example: &'static str,
    /// Arguments besides `--quick`.
    args: &'static [&'static str],
}

const PARTS: &[Part] = &[
    Part {
        id: "xdp",
        package: "imfw",
        example: "bench_xdp",
        args: &[],
    },
    Part {
        id: "scale",
        package: "imfw",
        example: "bench_scale",
        args: &[],
    },
    Part {
        id: "veth",
        package: "imfw",
        example: "bench_veth",
        args: &[],
    },
    Part {
        id: "ndpi",
        package: "imfw",
        example: "bench_ndpi",
        args: &[],
    },
    Part {
        id: "controller",
        package: "imfw-monitor",
        example: "monitor_throughput",
        args: &["--records", "--repeat", "5", "--pin"],
    },
];

/// A figure as the measurement programs print it (one JSON object per line on stdout).
#[derive(Clone, Debug)]
pub struct Record {
    scenario: String,
    name: String,
    value: f64,
    unit: String,
    reference: Option<(String, f64)>,
    target: Option<Target>,
    chart: Option<Chart>,
    note: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    RatioMax(f64),
    RatioMin(f64),
    ValueMax(f64),
    ValueMin(f64),
}

#[derive(Clone, Debug)]
struct Chart {
    id: String,
    title: String,
    x_label: String,
    x: f64,
}

impl Record {
    /// Reads one line; `None` for a line that is not a record (with the reason).
    pub fn parse(line: &str) -> Result<Record, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
        let scenario = text("scenario").ok_or("no \"scenario\"")?;
        let name = text("name").ok_or("no \"name\"")?;
        let value = num(&v, "value").ok_or("no numeric \"value\"")?;
        let unit = text("unit").ok_or("no \"unit\"")?;
        let reference = match (text("ref"), num(&v, "ref_value")) {
            (Some(r), Some(x)) => Some((r, x)),
            (None, None) => None,
            _ => return Err("\"ref\" and \"ref_value\" go together".into()),
        };
        let target = match v.get("target") {
            None | Some(Value::Null) => None,
            Some(t) => Some(
                [
                    ("ratio_max", Target::RatioMax as fn(f64) -> Target),
                    ("ratio_min", Target::RatioMin),
                    ("value_max", Target::ValueMax),
                    ("value_min", Target::ValueMin),
                ]
                .into_iter()
                .find_map(|(k, make)| num(t, k).map(make))
                .ok_or("\"target\" needs one of ratio_max, ratio_min, value_max, value_min")?,
            ),
        };
        if matches!(target, Some(Target::RatioMax(_) | Target::RatioMin(_))) && reference.is_none()
        {
            return Err("a ratio target needs \"ref_value\"".into());
        }
        let chart = match v.get("chart") {
            None | Some(Value::Null) => None,
            Some(c) => Some(Chart {
                id: c
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or("chart without \"id\"")?
                    .to_owned(),
                title: c
                    .get("title")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                x_label: c
                    .get("x_label")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                x: num(c, "x").ok_or("chart without numeric \"x\"")?,
            }),
        };
        Ok(Record {
            scenario,
            name,
            value,
            unit,
            reference,
            target,
            chart,
            note: text("note"),
        })
    }

    fn ratio(&self) -> Option<f64> {
        self.reference
            .as_ref()
            .and_then(|(_, r)| (*r != 0.0).then(|| self.value / r))
    }

    /// Whether the target is met; `None` without a target (or without the ratio it needs).
    fn met(&self) -> Option<bool> {
        Some(match self.target? {
            Target::RatioMax(x) => self.ratio()? <= x,
            Target::RatioMin(x) => self.ratio()? >= x,
            Target::ValueMax(x) => self.value <= x,
            Target::ValueMin(x) => self.value >= x,
        })
    }

    fn target_text(&self) -> String {
        match self.target {
            None => String::new(),
            Some(Target::RatioMax(x)) => format!("ratio <= {x}"),
            Some(Target::RatioMin(x)) => format!("ratio >= {x}"),
            Some(Target::ValueMax(x)) => format!("<= {} {}", num(x), self.unit),
            Some(Target::ValueMin(x)) => format!(">= {} {}", num(x), self.unit),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "ref": self.reference.as_ref().map(|r| &r.0),
            "ref_value": self.reference.as_ref().map(|r| r.1),
            "ratio": self.ratio(),
            "target": self.target_text(),
            "met": self.met(),
            "chart": self.chart.as_ref().map(|c| json!({"id": c.id, "title": c.title, "x_label": c.x_label, "x": c.x})),
            "note": self.note,
        })
    }
}

/// An axis label: whole numbers without decimals.
fn tick(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        // Whole at this scale: three significant digits would print "557" for 556.6 anyway.
        num(x.round())
    } else {
        num(x)
    }
}

/// A number for the table: three significant digits, thousands separated.
fn num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let a = x.abs();
    if a >= 1000.0 {
        let s = format!("{:.0}", x.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if x < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub fn run(opts: &Options) -> Result<()> {
    for o in &opts.only {
        if !PARTS.iter().any(|p| p.id == o) {
            bail!(
                "unknown part {o:?}; the parts are {}",
                PARTS.iter().map(|p| p.id).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let parts: Vec<&Part> = PARTS
        .iter()
        .filter(|p| opts.only.is_empty() || opts.only.iter().any(|o| o == p.id))
        .collect();
    prereq::ensure()?;
    println!("xtask: building the measurement programs (release)");
    let mut build = cargo();
    build.args(["build", "--release"]);
    for p in &parts {
        build.args(["-p", p.package, "--example", p.example]);
    }
    run_checked(&mut build).context("building the benchmarks")?;

    let started = Instant::now();
    let mut records = Vec::new();
    for p in &parts {
        let bin = target_dir().join("release/examples").join(p.example);
        println!("xtask: bench {} ({})", p.id, bin.display());
        let mut cmd = Command::new(&bin);
        cmd.current_dir(workspace_root())
            .args(p.args)
            .stderr(Stdio::inherit());
        if opts.quick {
            cmd.arg("--quick");
        }
        let out = cmd
            .output()
            .with_context(|| format!("could not start {}", bin.display()))?;
        if !out.status.success() {
            bail!("{} failed ({})", bin.display(), out.status);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut n = 0;
        for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
            match Record::parse(line) {
                Ok(r) => {
                    records.push(r);
                    n += 1;
                }
                Err(why) => bail!("{}: a line that is not a record ({why}): {line}", p.example),
            }
        }
        if n == 0 {
            bail!("{} printed no record", p.example);
        }
    }
    let took = started.elapsed();
    print!("{}", table(&records, opts.notes));
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let results = json!({
        "date": utc_now(),
        "machine": machine(),
        "quick": opts.quick,
        "seconds": took.as_secs_f64(),
        "records": records.iter().map(Record::to_json).collect::<Vec<_>>(),
    });
    let path = dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "\nxtask: {} figures in {:.0} s; results in {}",
        records.len(),
        took.as_secs_f64(),
        path.display()
    );
    for (id, svg) in charts(&records) {
        let path = dir.join(format!("{id}.svg"));
        fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        println!("xtask: chart {}", path.display());
    }
    Ok(())
}

/// The report: one row per figure, grouped by scenario, then the targets met and missed.
fn table(records: &[Record], notes: bool) -> String {
    let mut out = String::new();
    let head = ["figure", "value", "reference", "ratio", "target", ""];
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|r| {
            [
                format!("{}: {}", r.scenario, r.name),
                format!("{} {}", num(r.value), r.unit),
                r.reference
                    .as_ref()
                    .map(|(n, v)| format!("{n} {}", num(*v)))
                    .unwrap_or_default(),
                r.ratio().map(|x| format!("{x:.2}x")).unwrap_or_default(),
                r.target_text(),
                match r.met() {
                    Some(true) => "met".into(),
                    Some(false) => "NOT MET".into(),
                    None => String::new(),
                },
            ]
        })
        .collect();
    let mut widths = head.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w.saturating_sub(c.chars().count());
            // Numbers right-aligned, text left-aligned.
            if i == 1 || i == 3 {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            }
            s.push_str("  ");
        }
        s.trim_end().to_owned()
    };
    let _ = writeln!(out, "\n{}", line(head));
    let _ = writeln!(
        out,
        "{}",
        line(widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str))
    );
    for row in &rows {
        let _ = writeln!(out, "{}", line(row.each_ref().map(String::as_str)));
    }
    let (met, missed): (Vec<&Record>, Vec<&Record>) = records
        .iter()
        .filter(|r| r.met().is_some())
        .partition(|r| r.met() == Some(true));
    let _ = writeln!(
        out,
        "\ntargets: {} met, {} not met",
        met.len(),
        missed.len()
    );
    for r in missed {
        let _ = writeln!(
            out,
            "  not met: {}: {} ({})",
            r.scenario,
            r.name,
            r.target_text()
        );
    }
    let with_notes: Vec<&Record> = records.iter().filter(|r| r.note.is_some()).collect();
    if notes && !with_notes.is_empty() {
        let _ = writeln!(out, "\nhow each figure was measured:");
        for r in with_notes {
            let _ = writeln!(
                out,
                "  {}: {}: {}",
                r.scenario,
                r.name,
                r.note.as_deref().unwrap_or("")
            );
        }
    }
    out
}

/// One SVG per chart id: each series (the records' names without their x) is a line over a
/// log x axis; y from zero.
fn charts(records: &[Record]) -> Vec<(String, String)> {
    let mut by_id: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        if let Some(c) = &r.chart {
            by_id.entry(c.id.as_str()).or_default().push(r);
        }
    }
    by_id
        .into_iter()
        .map(|(id, rs)| (sanitize(id), svg(&rs)))
        .collect()
}

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Records of one chart form one curve, unless their names say otherwise: a name written
/// "<series> @ <x>" puts the point on the curve "<series>", so one chart can compare curves.
fn series_name(r: &Record) -> String {
    match r.name.split_once(" @ ") {
        Some((series, _)) => series.trim().to_owned(),
        None => r
            .chart
            .as_ref()
            .map_or_else(String::new, |c| c.title.clone()),
    }
}

#[expect(clippy::too_many_lines, reason = "one drawing, top to bottom")]
fn svg(rs: &[&Record]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 400.0;
    const L: f64 = 70.0;
    const R: f64 = 200.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    const COLOURS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
    ];
    let chart = rs.first().and_then(|r| r.chart.as_ref());
    let title = chart.map_or("", |c| c.title.as_str());
    let x_label = chart.map_or("", |c| c.x_label.as_str());
    let unit = rs.first().map_or("", |r| r.unit.as_str());
    let xs: Vec<f64> = rs
        .iter()
        .filter_map(|r| r.chart.as_ref().map(|c| c.x.max(1.0).log10()))
        .collect();
    let (x0, x1) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    let (x0, x1) = if x1 > x0 {
        (x0.floor(), x1.ceil())
    } else {
        (x0 - 1.0, x0 + 1.0)
    };
    let ymax = rs.iter().map(|r| r.value).fold(0.0_f64, f64::max).max(1e-9) * 1.15;
    let px = |x: f64| L + (x.max(1.0).log10() - x0) / (x1 - x0) * (W - L - R);
    let py = |y: f64| H - B - y / ymax * (H - T - B);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15">{}</text>"#,
        L,
        esc(title)
    );
    // Axes, decade ticks on x, five ticks on y.
    let _ = writeln!(
        s,
        r#"<line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        H - B,
        W - R,
        H - B
    );
    let _ = writeln!(
        s,
        r#"<line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="black"/>"#,
        H - B
    );
    let mut d = x0;
    while d <= x1 + 1e-9 {
        let x = px(10f64.powf(d));
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            H - B,
            H - B + 5.0,
            H - B + 20.0,
            tick(10f64.powf(d))
        );
        d += 1.0;
    }
    for i in 0..=5 {
        let v = ymax / 1.15 * f64::from(i) / 5.0;
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y:.1}" x2="{L}" y2="{y:.1}" stroke="black"/><line x1="{L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            L - 5.0,
            W - R,
            L - 8.0,
            y + 4.0,
            tick(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (L + W - R) / 2.0,
        H - 12.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"#,
        (T + H - B) / 2.0,
        (T + H - B) / 2.0,
        esc(unit)
    );
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rs {
        if let Some(c) = &r.chart {
            series
                .entry(series_name(r))
                .or_default()
                .push((c.x, r.value));
        }
    }
    let legend = series.len() > 1;
    for (i, (name, mut pts)) in series.into_iter().enumerate() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for (x, y) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{}: {} {}</title></circle>"#,
                px(*x),
                py(*y),
                esc(&name),
                num(*y),
                esc(unit)
            );
        }
        if !legend {
            continue;
        }
        let ly = T + 10.0 + 18.0 * f64::from(u32::try_from(i).unwrap_or(u32::MAX));
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            W - R + 10.0,
            W - R + 30.0,
            W - R + 35.0,
            ly + 4.0,
            esc(&name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// What the figures were measured on.
fn machine() -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map_or("unknown", str::trim);
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({"cpu": model, "cores": cores, "kernel": kernel.trim(), "hostname": fs::read_to_string("/etc/hostname").unwrap_or_default().trim()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_targets_are_judged() {
        let r = Record::parse(r#"{"scenario":"xdp-cost","name":"decided","value":100,"unit":"ns/packet","ref":"stateful","ref_value":90,"target":{"ratio_max":1.25}}"#).unwrap();
        assert!((r.ratio().unwrap() - 100.0 / 90.0).abs() < 1e-9);
        assert_eq!(r.met(), Some(true));
        let r = Record::parse(
            r#"{"scenario":"s","name":"n","value":250,"unit":"ns","target":{"value_max":200}}"#,
        )
        .unwrap();
        assert_eq!(r.met(), Some(false));
        let r = Record::parse(
            r#"{"scenario":"s","name":"n","value":1.2,"unit":"Gbit/s","target":{"value_min":1}}"#,
        )
        .unwrap();
        assert_eq!(r.met(), Some(true));
        let r = Record::parse(r#"{"scenario":"s","name":"n","value":5,"unit":"x"}"#).unwrap();
        assert_eq!(r.met(), None);
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        for (line, why) in [
            ("not json", "not JSON"),
            (r#"{"name":"n","value":1,"unit":"u"}"#, "scenario"),
            (
                r#"{"scenario":"s","name":"n","value":"1","unit":"u"}"#,
                "value",
            ),
            (
                r#"{"scenario":"s","name":"n","value":1,"unit":"u","ref":"r"}"#,
                "go together",
            ),
            (
                r#"{"scenario":"s","name":"n","value":1,"unit":"u","target":{"ratio_max":1}}"#,
                "ratio target",
            ),
            (
                r#"{"scenario":"s","name":"n","value":1,"unit":"u","target":{"max":1}}"#,
                "one of",
            ),
        ] {
            let e = Record::parse(line).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn charts_join_points_by_series() {
        let line = |name: &str, x: u32, v: u32| {
            format!(
                r#"{{"scenario":"scaling","name":"{name} @ {x}","value":{v},"unit":"ns/packet","chart":{{"id":"domains","title":"t","x_label":"domains","x":{x}}}}}"#
            )
        };
        let rs: Vec<Record> = [
            line("not blocked", 10, 100),
            line("not blocked", 100_000, 110),
            line("blocked", 10, 90),
            line("blocked", 100_000, 95),
        ]
        .iter()
        .map(|l| Record::parse(l).unwrap())
        .collect();
        let c = charts(&rs);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, "domains");
        assert_eq!(c[0].1.matches("<polyline").count(), 2);
        assert_eq!(c[0].1.matches("<circle").count(), 4);
        assert!(c[0].1.starts_with("<svg") && c[0].1.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn a_chart_without_series_names_is_one_curve() {
        let line = |x: u32, v: u32| {
            format!(
                r#"{{"scenario":"scaling","name":"{x} flows","value":{v},"unit":"ns/packet","chart":{{"id":"flows","title":"t","x_label":"flows","x":{x}}}}}"#
            )
        };
        let rs: Vec<Record> = [line(1000, 126), line(1_000_000, 127)]
            .iter()
            .map(|l| Record::parse(l).unwrap())
            .collect();
        let c = charts(&rs);
        assert_eq!(c[0].1.matches("<polyline").count(), 1);
        assert_eq!(c[0].1.matches("<circle").count(), 2);
    }

    #[test]
    fn numbers_are_readable() {
        assert_eq!(num(1_234_567.0), "1,234,567");
        assert_eq!(num(123.4), "123");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(1.234), "1.23");
        assert_eq!(tick(10.0), "10");
        assert_eq!(tick(100_000.0), "100,000");
        assert_eq!(tick(556.6), "557");
        assert_eq!(tick(0.0), "0");
    }
}
