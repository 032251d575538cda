//! Payload matchers: byte signatures, TLS server names, HTTP hosts. The parsing lives in
//! `imfw_common::matcher`, shared with userspace tests; this file feeds it packet bytes and
//! map lookups.

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use imfw_common::{
    config::Config,
    flow::DIR_CLIENT,
    matcher::{MAX_SIG_CLASSES, NameKey, SCRATCH_LEN, SCRATCH_MASK, host_token, http_host_start, is_stun, lookup_suffixes, skip_ows, stun_app, sig_checks, sig_key, suffix_hashes, tls_sni},
    verdict::Method,
};

use crate::maps::{IMFW_NAMES, IMFW_SIGCLASS, IMFW_SIGS, IMFW_STUN, Job, Scratch};

/// What the matchers made of a payload.
pub enum Outcome {
    Found(u16, Method),
    /// A TLS ClientHello that continues past this segment without a server name so far: the
    /// controller reassembles it.
    Controller,
    Nothing,
}

/// Runs the matchers on the payload `job` describes.
#[inline(always)]
pub fn inspect(ctx: &XdpContext, cfg: &Config, job: &Job, scratch: *mut Scratch) -> Outcome {
    match run(ctx, cfg, job, scratch) {
        Ok(Some((app, method))) => Outcome::Found(app, method),
        Ok(None) => Outcome::Nothing,
        Err(Handover) => Outcome::Controller,
    }
}

struct Handover;

#[inline(always)]
fn run(ctx: &XdpContext, cfg: &Config, job: &Job, scratch: *mut Scratch) -> Result<Option<(u16, Method)>, Handover> {
    let dir = job.dir;
    let client_first = job.client_first != 0;
    let payload_len = job.payload_len as usize & 0xffff;
    if payload_len == 0 {
        return Ok(None);
    }
    // SAFETY: the per-CPU scratch buffer is ours for this program run.
    let buf = unsafe { &mut (*scratch).buf };
    let want = if payload_len > SCRATCH_LEN { SCRATCH_LEN } else { payload_len };
    // In [1, SCRATCH_LEN] for the verifier (payload_len > 0 here).
    let n = ((want.wrapping_sub(1)) & SCRATCH_MASK) + 1;
    // SAFETY: buf holds SCRATCH_LEN bytes and n <= SCRATCH_LEN; the helper checks the packet.
    let rc = unsafe { bpf_xdp_load_bytes(ctx.ctx, job.payload_off, buf.as_mut_ptr().cast(), n as u32) };
    if rc != 0 {
        return Ok(None);
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
                    if sig_checks(v, buf, payload_len, client_first) {
                        return Ok(Some((v.app, Method::Signature)));
                    }
                }
            }
        }
        c += 1;
    }

    // SAFETY: as above; the slots and spill follow the buffer in the same per-CPU value.
    let (slots, spill) = unsafe { (&mut (*scratch).hashes, &mut (*scratch).spill) };
    // Each path out of the signature loop has narrowed `n` differently; laundered, they enter
    // the parsers' loops below as one verifier state.
    let n = ((launder(&mut spill[0], n as u64) as usize).wrapping_sub(1) & SCRATCH_MASK) + 1;
    // A STUN message is nothing else: decided here either way, so the attribute walk's exits
    // never reach the name parsers. Either side's messages carry the vendor's attributes.
    if is_stun(buf, n) {
        // SAFETY: pointer into the map value, valid for this run.
        let lookup = |ty: u32| IMFW_STUN.get_ptr(&ty).map(|m| unsafe { (*m).app });
        return Ok(match stun_app(buf, n, lookup) {
            0 => None,
            app => Some((app, Method::Stun)),
        });
    }
    if dir != DIR_CLIENT {
        return Ok(None);
    }
    // One call site for the name matcher, whichever protocol carried the name.
    let (off, len, method) = if buf[0] == 0x16 {
        let Some((off, len)) = tls_sni(buf, n) else {
            // The record goes on past this segment: the name may be in what follows.
            return if client_hello_continues(buf, n) { Err(Handover) } else { Ok(None) };
        };
        (off, len, Method::TlsSni)
    } else {
        let Some((start, connect)) = http_host_start(buf, n) else { return Ok(None) };
        let start = launder(&mut spill[3], start as u64) as usize & SCRATCH_MASK;
        let start = skip_ows(buf, start, n);
        let start = launder(&mut spill[3], start as u64) as usize & SCRATCH_MASK;
        let Some((off, len)) = host_token(buf, start, n) else { return Ok(None) };
        (off, len, if connect { Method::HttpConnect } else { Method::HttpHost })
    };
    // Every exit of the parsers' loops reaches here with different exact values; laundered,
    // they merge into one verifier state instead of each exploring the name loops again.
    let off = launder(&mut spill[0], off as u64) as usize & SCRATCH_MASK;
    let len = launder(&mut spill[1], len as u64) as usize & 0xff;
    let (h, count) = suffix_hashes(buf, off, len, slots);
    let count = launder(&mut spill[2], count as u64) as usize;
    // SAFETY: pointer into the map value, valid for this run.
    let lookup = |h: u64| IMFW_NAMES.get_ptr(&NameKey { hash: h }).map(|m| unsafe { (*m).app });
    Ok(match lookup_suffixes(slots, count, h, lookup) {
        0 => None,
        app => Some((app, method)),
    })
}

/// A ClientHello record (RFC 8446 §5.1) longer than the bytes present.
#[inline(always)]
fn client_hello_continues(buf: &[u8; SCRATCH_LEN], n: usize) -> bool {
    let record = 5 + (((buf[3] as usize) << 8) | buf[4] as usize);
    n >= 6 && buf[1] == 3 && buf[5] == 1 && record > n
}

/// Stores and reloads a value through map memory, which the verifier does not track.
#[inline(always)]
fn launder(slot: &mut u64, v: u64) -> u64 {
    // SAFETY: slot is a valid, aligned u64 in the per-CPU scratch value.
    unsafe {
        core::ptr::write_volatile(slot, v);
        core::ptr::read_volatile(slot)
    }
}
