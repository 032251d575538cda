//! Builds the XDP program for the BPF target (nightly, build-std) and leaves the object in
//! `OUT_DIR`, where `dataplane.rs` embeds it.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
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
