//! `cargo xtask test`: prerequisites, release build, every test, then the accuracy score.
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{cargo, prereq, run_checked, target_dir, workspace_root};

#[derive(Args)]
pub struct Options {
    /// Skip the accuracy scorer even when the labelled captures are present.
    #[arg(long)]
    skip_accuracy: bool,
    /// Extra arguments for the test binaries (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    test_args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    prereq::ensure()?;
    let imfw = target_dir().join("release/imfw");
    let upgrade = upgrade_bin()?;

    println!("xtask: building the release binary");
    run_checked(cargo().args(["build", "--release", "-p", "imfw"])).context("release build")?;

    // The workspace's lints (clippy pedantic, see Cargo.toml) on every target, tests and
    // examples included, as errors: they stay clean because this gate fails on them.
    prereq::ensure_clippy()?;
    println!("xtask: clippy on every target, warnings as errors");
    run_checked(cargo().args([
        "clippy",
        "--release",
        "--workspace",
        "--exclude",
        "imfw-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found warnings")?;

    println!("xtask: running the tests (root tests share kernel state: one thread)");
    run_checked(
        cargo()
            // Every test binary runs even after one fails, so one run shows every failure.
            .args([
                "test",
                "--workspace",
                "--exclude",
                "imfw-ebpf",
                "--no-fail-fast",
            ])
            .args(["--", "--test-threads=1"])
            .args(&opts.test_args)
            .env("IMFW_BIN", &imfw)
            .env(UPGRADE_BIN_ENV, &upgrade),
    )
    .context("tests failed")?;

    if !opts.skip_accuracy {
        accuracy(&imfw.to_string_lossy())?;
    }
    Ok(())
}

/// The tag of the upgrade test's second binary.
const UPGRADE_TAG: &str = "upgrade-test";
/// Where the tests find it (read by `tests/tests/e2e_pinned.rs`).
const UPGRADE_BIN_ENV: &str = "IMFW_UPGRADE_BIN";

/// Builds the binary that the upgrade test moves to: the same sources with `IMFW_BUILD_TAG`
/// set, so its version, status and XDP program code differ. Built first, under the
/// `tagged-build` feature (artifacts of their own, dependencies shared, nothing rebuilt when
/// both are current), and copied out of `release/`, which the plain build then takes back.
fn upgrade_bin() -> Result<std::path::PathBuf> {
    println!(
        "xtask: building the tagged binary for the upgrade test (IMFW_BUILD_TAG={UPGRADE_TAG})"
    );
    run_checked(
        cargo()
            .args([
                "build",
                "--release",
                "-p",
                "imfw",
                "--features",
                "tagged-build",
            ])
            .env("IMFW_BUILD_TAG", UPGRADE_TAG),
    )
    .context("tagged release build")?;
    let built = target_dir().join("release/imfw");
    let dir = target_dir().join(UPGRADE_TAG);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let copy = dir.join("imfw");
    // A new file, not a write into the old one, which a test may still be running.
    let tmp = dir.join("imfw.tmp");
    std::fs::copy(&built, &tmp)
        .with_context(|| format!("copying {} to {}", built.display(), tmp.display()))?;
    std::fs::rename(&tmp, &copy)
        .with_context(|| format!("renaming {} to {}", tmp.display(), copy.display()))?;
    Ok(copy)
}

/// Scores `imfw classify` on the labelled captures in `../shared`, when they are there.
fn accuracy(imfw: &str) -> Result<()> {
    let root = workspace_root();
    let script = root.join("../shared/eval/accuracy.py");
    let truth = root.join("../shared/pcaps/expected.csv");
    if !script.is_file() || !truth.is_file() {
        println!("xtask: accuracy: no ../shared/eval/accuracy.py or ../shared/pcaps/expected.csv, skipped");
        return Ok(());
    }
    println!("xtask: accuracy: scoring imfw classify on ../shared/pcaps");
    let out = Command::new("python3")
        .current_dir(&root)
        .args([
            "../shared/eval/accuracy.py",
            "--truth",
            "../shared/pcaps/expected.csv",
            "--pcaps",
            "../shared/pcaps",
            "--imfw",
            imfw,
        ])
        .output()
        .context("running python3 ../shared/eval/accuracy.py")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    if !out.status.success() {
        bail!("accuracy.py exited with {}", out.status);
    }
    if let Some(line) = stdout.lines().find(|l| l.starts_with("ERROR")) {
        bail!("accuracy.py reported an error: {line}");
    }
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    if !last.starts_with("SCORE") {
        bail!("accuracy.py's last line is not a SCORE line: {last:?}");
    }
    Ok(())
}
