//! Payload matchers: byte signatures, TLS server names, HTTP hosts. The parsing lives in
//! `imfw_common::matcher`, shared with userspace tests; this file feeds it packet bytes and
//! map lookups.

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use imfw_common::{
    config::Config,
    flow::DIR_CLIENT,
    matcher::{MAX_SIG_CLASSES, NameKey, SCRATCH_LEN, SCRATCH_MASK, http_host, match_name, sig_checks, sig_key, tls_sni},
    verdict::Method,
};

use crate::{
    maps::{IMFW_NAMES, IMFW_SCRATCH, IMFW_SIGCLASS, IMFW_SIGS},
    parse::Pkt,
};

#[inline(always)]
pub fn inspect(ctx: &XdpContext, cfg: &Config, pkt: &Pkt, dir: u8, client_first: bool) -> Option<(u16, Method)> {
    let scratch = IMFW_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch buffer is ours for this program run.
    let buf = unsafe { &mut (*scratch).buf };
    let want = if pkt.payload_len > SCRATCH_LEN { SCRATCH_LEN } else { pkt.payload_len };
    // In [1, SCRATCH_LEN] for the verifier (payload_len > 0 here).
    let n = ((want.wrapping_sub(1)) & SCRATCH_MASK) + 1;
    // SAFETY: buf holds SCRATCH_LEN bytes and n <= SCRATCH_LEN; the helper checks the packet.
    let rc = unsafe { bpf_xdp_load_bytes(ctx.ctx, pkt.payload_off as u32, buf.as_mut_ptr().cast(), n as u32) };
    if rc != 0 {
        return None;
    }

    let mut c = 0u32;
    while c < MAX_SIG_CLASSES {
        if c >= cfg.sig_classes {
            break;
        }
        if let Some(shape) = IMFW_SIGCLASS.get(c) {
            if let Some(key) = sig_key(buf, n, shape, c as u16, dir) {
                if let Some(v) = IMFW_SIGS.get_ptr(&key) {
                    // SAFETY: pointer into the map value, valid for this run.
                    let v = unsafe { &*v };
                    if sig_checks(v, buf, pkt.payload_len, client_first) {
                        return Some((v.app, Method::Signature));
                    }
                }
            }
        }
        c += 1;
    }

    if dir != DIR_CLIENT {
        return None;
    }
    let lookup = |h: u64| IMFW_NAMES.get_ptr(&NameKey { hash: h }).map(|m| unsafe { (*m).app });
    if buf[0] == 0x16 {
        let (off, len) = tls_sni(buf, n)?;
        return match_name(buf, off, len, lookup).map(|app| (app, Method::TlsSni));
    }
    let (off, len, connect) = http_host(buf, n)?;
    let method = if connect { Method::HttpConnect } else { Method::HttpHost };
    match_name(buf, off, len, lookup).map(|app| (app, method))
}
