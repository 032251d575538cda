//! Builds the XDP program for the BPF target (nightly, build-std) and leaves the object in
//! `OUT_DIR`, where `dataplane.rs` embeds it.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    build_tag()?;
    // AYA_BUILD_SKIP=1 builds userspace alone (for work on the controller without the BPF
    // toolchain); the binary then refuses to load with a clear message.
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        for name in ["imfw", "bench_refs"] {
            let obj = out.join(name);
            if !obj.exists() {
                fs::write(&obj, b"")?;
            }
        }
        println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let ebpf = aya_build::Package {
        name: "imfw-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}

/// `IMFW_BUILD_TAG` names a build (a packager's revision, the upgrade test's second binary):
/// `imfw --version` and `imfw status` show it, and the eBPF crate, which reads
/// it too, compiles to different code. Checked here so that a bad tag fails the build, not a
/// status line.
fn build_tag() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=IMFW_BUILD_TAG");
    let version = env::var("CARGO_PKG_VERSION")?;
    let line = match env::var("IMFW_BUILD_TAG") {
        Ok(tag) if !tag.is_empty() => {
            let ok = tag.len() <= 64
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
            if !ok {
                anyhow::bail!(
                    "IMFW_BUILD_TAG={tag:?}: at most 64 characters of A-Z a-z 0-9 . _ + -"
                );
            }
            format!("{version} (build {tag})")
        }
        _ => version,
    };
    println!("cargo::rustc-env=IMFW_VERSION_LINE={line}");
    Ok(())
}
