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

    println!("xtask: building the release binary");
    run_checked(cargo().args(["build", "--release", "-p", "imfw"])).context("release build")?;

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
            .env("IMFW_BIN", &imfw),
    )
    .context("tests failed")?;

    if !opts.skip_accuracy {
        accuracy(&imfw.to_string_lossy())?;
    }
    Ok(())
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
