//! Rebuild the program when bpf-linker changes (a new LLVM can change the object), and let
//! the BPF backend read and write unaligned words.
/// The global functions of src/klog.rs.
const KLOG_FUNCTIONS: [&str; 6] = [
    "imfw_klog_flow_insert_failed",
    "imfw_klog_stage_missing",
    "imfw_klog_redirect_failed",
    "imfw_klog_ring_full",
    "imfw_klog_classified",
    "imfw_klog_malformed",
];

fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        // Without it LLVM assumes BPF needs aligned access and reads a header field of a `[u8; N]`
        // byte by byte: an IPv6 header became 40 one-byte loads, each spilled to the stack. The
        // kernel accepts unaligned packet and map-value access on architectures that handle it
        // (x86-64, arm64: CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS); only stack access must stay
        // aligned, which LLVM keeps. bpf-linker (LLVM 22) does the code generation, so the
        // feature goes to it; rustc passes no other `--cpu-features`.
        println!("cargo::rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
        // The kernel log messages (src/klog.rs) stay global functions, which the verifier
        // checks once on their own instead of along every path that calls them; unexported,
        // the linker makes them static.
        println!("cargo::rustc-link-arg=--export={}", KLOG_FUNCTIONS.join(","));
    }
}
