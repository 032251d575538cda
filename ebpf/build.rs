//! Rebuild the program when bpf-linker changes (a new LLVM can change the object), and let
//! the BPF backend read and write unaligned words.
/// The global functions: the ClientHello walks and match and the name matcher of
/// src/matching.rs, and the messages of src/klog.rs.
const GLOBAL_FUNCTIONS: [&str; 10] = [
    "imfw_tls_sni",
    "imfw_hello_app",
    "imfw_name_app",
    "imfw_tls_has_ech",
    "imfw_klog_flow_insert_failed",
    "imfw_klog_stage_missing",
    "imfw_klog_redirect_failed",
    "imfw_klog_ring_full",
    "imfw_klog_classified",
    "imfw_klog_malformed",
];

fn main() {
    // aya-build passes the host's architecture; the classification log needs to know it
    // (src/flow.rs, `report`).
    println!("cargo::rustc-check-cfg=cfg(bpf_target_arch, values(any()))");
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        // Without it LLVM assumes BPF needs aligned access and reads a header field of a `[u8; N]`
        // byte by byte: an IPv6 header became 40 one-byte loads, each spilled to the stack. The
        // kernel accepts unaligned packet and map-value access on architectures that handle it
        // (x86-64, arm64: CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS); only stack access must stay
        // aligned, which LLVM does not always keep: it may merge a struct's small fields into
        // one unaligned wide store (see the new flow entry in src/flow.rs), so such structs are
        // built in map memory. bpf-linker (LLVM 22) does the code generation, so the
        // feature goes to it; rustc passes no other `--cpu-features`.
        println!("cargo::rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
        // The ClientHello walks, the name matcher and the kernel log messages stay global functions, which the
        // verifier checks once on their own instead of along every path that calls them;
        // unexported, the linker makes them static.
        println!("cargo::rustc-link-arg=--export={}", GLOBAL_FUNCTIONS.join(","));
    }
}
