//! Payload matchers: byte signatures, TLS server names, HTTP hosts. The parsing lives in
//! `imfw_common::matcher`, shared with userspace tests; this file feeds it packet bytes and
//! map lookups.

use aya_ebpf::{bindings::xdp_md, helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use imfw_common::{
    config::Config,
    flow::DIR_CLIENT,
    maps::{name_buckets, name_filter_bit, stun_key},
    matcher::{Bytes, CLIENT_HELLO_MIN, NAME_SLOTS, LAST_UNKNOWN, MAX_SIG_CLASSES, SCRATCH_LEN, SCRATCH_MASK, host_token, http_host_start, is_stun, lookup_suffixes, name_seed, skip_ows, stun_scan, sig_checks, is_quic_initial, is_client_hello_head, is_dns_response, sig_key, suffix_hashes_from, tls_has_ech, tls_sni, tls_sni_walk_after_head, ech_after_name},
    verdict::Method,
};

use crate::parse::{IPPROTO_TCP, IPPROTO_UDP, InPacket, Pkt};
use crate::maps::{IMFW_NAMEBITS, IMFW_NAMES, IMFW_SCRATCH, IMFW_SIGCLASS, IMFW_SIGPRE, IMFW_SIGS, IMFW_STUN, Job, Scratch, gen_of};

/// What the matchers made of a payload.
pub enum Outcome {
    Found(u16, Method),
    /// A TLS ClientHello that continues past this segment without a server name so far: the
    /// controller reassembles it.
    Controller,
    /// A copy for the controller; the flow goes on as if nothing matched.
    Copy,
    /// An HTTP Host or CONNECT target that no app claims: the connection's next requests
    /// may name other hosts (a proxy's keep-alive connection does), so inspection goes on.
    Named,
    /// A TLS server name that no app claims, in a ClientHello that hides no Encrypted Client
    /// Hello: what follows is encrypted and names nothing, so inspection ends here.
    NamedTls,
    /// A ClientHello whose name no app claims and that hides its real name with Encrypted
    /// Client Hello: the outer name says nothing of the server.
    Hidden,
    Nothing,
}

/// What the signature program made of a payload.
pub enum Sigs {
    Found(u16, Method),
    /// No payload to inspect (or it could not be read).
    Nothing,
    /// No signature matched; the payload is in the scratch buffer for the name matchers.
    Continue,
}

/// Loads the payload into the scratch buffer and looks up each signature shape.
#[inline(always)]
pub fn signatures(ctx: &XdpContext, cfg: &Config, job: &Job, scratch: *mut Scratch) -> Sigs {
    let generation = gen_of(cfg);
    let base = generation * MAX_SIG_CLASSES;
    let client_first = job.client_first != 0;
    let payload_len = job.payload_len as usize & 0xffff;
    if payload_len == 0 {
        return Sigs::Nothing;
    }
    // SAFETY: the per-CPU scratch buffer is ours for this program run.
    let buf = unsafe { &mut (*scratch).buf };
    let n = loaded_len(payload_len);
    if !load_payload(ctx, job.payload_off, n, buf) {
        return Sigs::Nothing;
    }
    // The last byte, for trailer checks: read at an index laundered through map memory, since
    // the compiler drops the mask of one it can prove in range and the verifier cannot.
    // SAFETY: the spill slots follow the buffer in the same per-CPU value.
    let spill = unsafe { &mut (*scratch).spill };
    let last_at = launder(&mut spill[3], payload_len.wrapping_sub(1) as u64) as usize & SCRATCH_MASK;
    let last = if payload_len <= SCRATCH_LEN { buf[last_at] as u64 } else { LAST_UNKNOWN as u64 };
    // One unknown value for the verifier, not two states through the loop below.
    let last = launder(&mut spill[3], last) as u16;
    let mut cand = sig_candidates(generation, buf, payload_len, job.server_port);
    let mut c = 0u32;
    while c < MAX_SIG_CLASSES {
        // Past the last candidate, nothing is left to look up (most payloads have none).
        if c >= cfg.sig_classes || cand == 0 {
            break;
        }
        let this = cand & 1;
        cand >>= 1;
        if this == 0 {
            c += 1;
            continue;
        }
        if let Some(shape) = IMFW_SIGCLASS.get(base + c) {
            if let Some(mut key) = sig_key(buf, n, shape, c as u16, job.dir) {
                key.generation = generation as u8;
                if let Some(v) = IMFW_SIGS.get_ptr(&key) {
                    // SAFETY: pointer into the map value, valid for this run.
                    let v = unsafe { &*v };
                    if sig_checks(v, buf, payload_len, client_first, job.server_port, last) {
                        return Sigs::Found(v.app, Method::Signature);
                    }
                }
            }
        }
        c += 1;
    }
    Sigs::Continue
}

/// Copies `n` bytes of the packet's payload from `payload_off` into the scratch buffer `buf`;
/// false when the packet does not hold them.
#[inline(always)]
fn load_payload(ctx: &XdpContext, payload_off: u32, n: usize, buf: &mut [u8; SCRATCH_LEN]) -> bool {
    // SAFETY: buf holds SCRATCH_LEN bytes and n <= SCRATCH_LEN; the helper checks the packet.
    unsafe { bpf_xdp_load_bytes(ctx.ctx, payload_off, buf.as_mut_ptr().cast(), n as u32) == 0 }
}

/// The signature shapes a payload of `len` bytes read from `buf`, to server port `port`, may match:
/// what the prefilter of policy generation `generation` leaves (userspace writes it with the
/// shapes, before the policy is marked ready).
#[inline(always)]
fn sig_candidates<B: Bytes>(generation: u32, buf: &B, len: usize, port: u16) -> u32 {
    match IMFW_SIGPRE.get(generation) {
        Some(pre) => pre.candidates(buf, len, port),
        None => u32::MAX,
    }
}

/// Bytes of a payload held in the scratch buffer: in [1, SCRATCH_LEN] for the verifier.
#[inline(always)]
fn loaded_len(payload_len: usize) -> usize {
    let want = if payload_len > SCRATCH_LEN { SCRATCH_LEN } else { payload_len };
    (want.wrapping_sub(1) & SCRATCH_MASK) + 1
}

/// Runs the STUN and name matchers on the payload [`signatures`] left in the scratch buffer,
/// and for a TLS name no app claims, the Encrypted Client Hello check.
#[inline(always)]
pub fn names(ctx: &XdpContext, cfg: &Config, job: &Job, scratch: *mut Scratch) -> Outcome {
    match run_names(ctx, cfg, job, scratch) {
        Ok(Named::App(app, method)) => Outcome::Found(app, method),
        Ok(Named::Copy) => Outcome::Copy,
        Ok(Named::Unknown) => Outcome::Named,
        Ok(Named::UnknownTls) => hidden(ctx, job.payload_off, job.payload_len),
        Ok(Named::Nothing) => Outcome::Nothing,
        Err(Handover) => Outcome::Controller,
    }
}

struct Handover;

enum Named {
    App(u16, Method),
    /// A server name (not an address literal) that no app claims.
    Unknown,
    /// As `Unknown`, in a TLS ClientHello: Encrypted Client Hello may hide the real name.
    UnknownTls,
    /// A DNS answer for the controller to learn from.
    Copy,
    Nothing,
}

#[inline(always)]
fn run_names(ctx: &XdpContext, cfg: &Config, job: &Job, scratch: *mut Scratch) -> Result<Named, Handover> {
    let dir = job.dir;
    let payload_len = job.payload_len as usize & 0xffff;
    if payload_len == 0 {
        return Ok(Named::Nothing);
    }
    // SAFETY: the per-CPU scratch buffer, filled by the signature program before its tail call.
    let buf = unsafe { &mut (*scratch).buf };
    // SAFETY: as above; the spill slots follow the buffer in the same per-CPU value.
    let spill = unsafe { &mut (*scratch).spill };
    // Each path out of the signature loop has narrowed `n` differently; laundered, they enter
    // the parsers' loops below as one verifier state.
    let n = ((launder(&mut spill[0], loaded_len(payload_len) as u64) as usize).wrapping_sub(1) & SCRATCH_MASK) + 1;
    if job.key.proto == IPPROTO_UDP {
        if dir == DIR_CLIENT && is_quic_initial(buf, n, payload_len) {
            // Encrypted with keys derived from its connection id: the controller decrypts it.
            return Err(Handover);
        }
        if dir != DIR_CLIENT && job.server_port == 53 && cfg.learn_dns != 0 && is_dns_response(buf, n) {
            return Ok(Named::Copy);
        }
    }
    // A STUN message is nothing else: decided here by its attributes, or by its realm (RFC 8489
    // §14.9, a domain of the service) through the name matcher. Either side's messages count.
    let (off, len, method) = if is_stun(buf, n) {
        // SAFETY: pointer into the map value, valid for this run.
        let lookup = |ty: u32| IMFW_STUN.get_ptr(&stun_key(gen_of(cfg), ty)).map(|m| unsafe { (*m).app });
        let scan = stun_scan(buf, n, lookup);
        if scan.app != 0 {
            return Ok(Named::App(scan.app, Method::Stun));
        }
        if scan.realm_len == 0 {
            return Ok(Named::Nothing);
        }
        (scan.realm_off, scan.realm_len, Method::Stun)
    } else if dir != DIR_CLIENT {
        return Ok(Named::Nothing);
    } else if buf[0] == 0x16 {
        // One call site for the name matcher, whichever protocol carried the name.
        let Some((off, len)) = sni_of(imfw_tls_sni(ctx.ctx, job.payload_off, job.payload_len)) else {
            // The record goes on past this segment: the name may be in what follows.
            return if client_hello_continues(buf, n) { Err(Handover) } else { Ok(Named::Nothing) };
        };
        (off, len, Method::TlsSni)
    } else {
        let Some((start, connect)) = http_host_start(buf, n) else { return Ok(Named::Nothing) };
        let start = launder(&mut spill[3], start as u64) as usize & SCRATCH_MASK;
        let start = skip_ows(buf, start, n);
        let start = launder(&mut spill[3], start as u64) as usize & SCRATCH_MASK;
        let Some((off, len)) = host_token(buf, start, n) else { return Ok(Named::Nothing) };
        (off, len, if connect { Method::HttpConnect } else { Method::HttpHost })
    };
    // Every exit of the parsers' loops reaches here with different exact values; laundered,
    // they merge into one verifier state instead of each exploring the name loops again.
    let off = launder(&mut spill[0], off as u64) as usize & SCRATCH_MASK;
    let len = launder(&mut spill[1], len as u64) as usize & 0xff;
    Ok(match imfw_name_app(ctx.ctx, gen_of(cfg), job.payload_off, off as u32, len as u32) {
        // An address literal (`192.0.2.1`, `[2001:db8::1]`) or a STUN realm names no service.
        0 => Named::Nothing,
        NAME_UNKNOWN if method as u8 == Method::Stun as u8 => Named::Nothing,
        // Only TLS names no app claims pay for the second walk over the extensions (`hidden`).
        NAME_UNKNOWN if method as u8 == Method::TlsSni as u8 => Named::UnknownTls,
        NAME_UNKNOWN => Named::Unknown,
        app => Named::App(app as u16, method),
    })
}

/// [`imfw_name_app`]'s result for a server name that no app claims (not an address literal):
/// above every app id.
const NAME_UNKNOWN: u32 = 0x1_0000;

/// The app of the server name at `off` (`len` bytes) of the payload at `payload_off` of the
/// packet, read in the packet, in policy generation `generation`: the longest of its domains
/// the policy has. [`NAME_UNKNOWN`] for a name no app claims, 0 for an address literal
/// (`192.0.2.1`, `[2001:db8::1]`) or an empty name.
///
/// A global function (exported by the linker, see build.rs): the verifier walks the hash loop
/// once, on its own, for the names stage (the main program's ClientHello path does the same
/// work within [`imfw_hello_app`]).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imfw_name_app(ctx: *mut xdp_md, generation: u32, payload_off: u32, off: u32, len: u32) -> u32 {
    let Some(scratch) = IMFW_SCRATCH.get_ptr_mut(0) else { return 0 };
    name_app_at(ctx, scratch, generation, payload_off, off as usize & SCRATCH_MASK, len as usize & 0xff)
}

/// [`imfw_name_app`]'s work, also done by [`imfw_hello_app`].
#[inline(always)]
fn name_app_at(ctx: *mut xdp_md, scratch: *mut Scratch, generation: u32, payload_off: u32, off: usize, len: usize) -> u32 {
    // SAFETY: the per-CPU scratch value, ours for this program run.
    let slots = unsafe { &mut (*scratch).hashes };
    // SAFETY: as above; the spill slots follow the buffer in the same per-CPU value.
    let spill = unsafe { &raw mut (*scratch).spill[2] };
    let name = Opaque(InPacket::new(&XdpContext::new(ctx), payload_off as usize), spill);
    let (h, count) = suffix_hashes_from(name_seed(generation), &name, off, len, slots);
    let app = name_lookups(slots, generation, count as u32, h);
    if app != 0 {
        return app;
    }
    let last = name.at((off + len).wrapping_sub(1));
    if len == 0 || last.is_ascii_digit() || last == b']' { 0 } else { NAME_UNKNOWN }
}

/// A payload read in the packet, whose [`Bytes::opaque`] passes values through a spill slot of
/// the scratch value: the name hash's dot loop then leaves each iteration with unknown values
/// that the verifier finds alike, where exact ones multiplied its states past its limit.
struct Opaque(InPacket, *mut u64);

impl Bytes for Opaque {
    #[inline(always)]
    fn at(&self, i: usize) -> u8 {
        self.0.at(i)
    }

    #[inline(always)]
    fn word(&self, i: usize) -> u64 {
        self.0.word(i)
    }

    #[inline(always)]
    fn opaque(&self, v: u64) -> u64 {
        // SAFETY: a valid, aligned slot of the per-CPU scratch value, which nothing else uses
        // while the name is hashed.
        launder(unsafe { &mut *self.1 }, v)
    }
}

/// The server name of the ClientHello that starts the payload at `payload_off` of the packet
/// (`payload_len` bytes long), read in the packet, as `offset << 16 | length` (the offset in the
/// payload); 0 when the bytes present carry none.
///
/// A global function (exported by the linker, see build.rs), called by the names stage: the
/// verifier walks the extension loop once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imfw_tls_sni(ctx: *mut xdp_md, payload_off: u32, payload_len: u32) -> u32 {
    let payload = InPacket::new(&XdpContext::new(ctx), payload_off as usize);
    match tls_sni(&payload, loaded_len(payload_len as usize & 0xffff)) {
        // A name is at least one byte long, and lies in the buffer.
        Some((off, len)) => ((off as u32 & SCRATCH_MASK as u32) << 16) | (len as u32 & 0xffff),
        None => 0,
    }
}

/// [`imfw_hello_app`]'s result for a ClientHello without a server name in the bytes present:
/// above every other result.
const NO_NAME: u32 = 0x2_0000;
/// [`imfw_hello_app`]'s result for a name no app claims in a ClientHello that carries an
/// Encrypted Client Hello (the name is the outer, public one).
const NAME_HIDDEN: u32 = 0x3_0000;

/// The app of the server name of the ClientHello that starts the payload at `payload_off` of
/// the packet (`payload_len` bytes long): [`imfw_tls_sni`]'s walk, then [`imfw_name_app`]'s
/// match, with their results, or [`NO_NAME`]; and for a name no app claims, the walk of
/// [`imfw_tls_has_ech`], from the extension after the name on: [`NAME_HIDDEN`] when it finds
/// the extension. The caller has checked the payload's head and length (`client_hello`), which
/// the walk does not read again.
///
/// A global function (exported by the linker, see build.rs) for the main program's
/// ClientHello path: one BPF call and return there instead of two or three (about 10 ns each
/// here). The names stage keeps the three calls: with this function in its place, the stage
/// verified in 610,000 instructions instead of 306,000, for a path that only ClientHellos the
/// main program leaves take.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imfw_hello_app(ctx: *mut xdp_md, generation: u32, payload_off: u32, payload_len: u32) -> u32 {
    let Some(scratch) = IMFW_SCRATCH.get_ptr_mut(0) else { return NO_NAME };
    let payload = InPacket::new(&XdpContext::new(ctx), payload_off as usize);
    let present = loaded_len(payload_len as usize & 0xffff);
    // The caller checked the head and the length (`client_hello`).
    let Some(walk) = tls_sni_walk_after_head(&payload, present) else { return NO_NAME };
    let (off, len) = walk.name;
    // SAFETY: the per-CPU scratch value, ours for this program run; `name_app_at` uses the
    // third spill slot only.
    let spill = unsafe { &mut (*scratch).spill };
    // The walk's exits merge into one verifier state before the name's loops, as in
    // `run_names`.
    let off = launder(&mut spill[0], off as u64) as usize & SCRATCH_MASK;
    let len = launder(&mut spill[1], len as u64) as usize & 0xff;
    // Where the ECH walk would go on, kept in map memory across the name's loops rather than
    // carried through them as the verifier's state (each of the walk's exits its own).
    // SAFETY: a valid, aligned slot of the per-CPU scratch value, which `name_app_at` leaves.
    unsafe { core::ptr::write_volatile(&mut spill[4], walk.ech_rest()) };
    let app = name_app_at(ctx, scratch, generation, payload_off, off, len);
    if app != NAME_UNKNOWN {
        return app;
    }
    // A name no app claims: the ECH walk goes on from the extension after it.
    // SAFETY: as above.
    if ech_after_name(&payload, unsafe { core::ptr::read_volatile(&spill[4]) }) {
        return NAME_HIDDEN;
    }
    app
}

/// [`imfw_tls_sni`]'s result as offset and length.
#[inline(always)]
fn sni_of(r: u32) -> Option<(usize, usize)> {
    if r == 0 { None } else { Some(((r >> 16) as usize, (r & 0xffff) as usize)) }
}

/// A first client payload that is a TLS ClientHello, matched in the main program: its server
/// name decides the flow there, without the two inspection stages, their tail calls and their
/// second flow lookup, and without a copy of the payload (the prefilter, the extension walk
/// and the name matcher read the packet in place). `None` where the stages would conclude
/// otherwise: a payload that a signature shape may match (the stages run the signatures
/// first), one without a server name in the bytes present (the controller may reassemble it)
/// and one whose name is an address literal (the server's address decides).
#[inline(always)]
pub fn client_hello(ctx: &XdpContext, cfg: &Config, pkt: &Pkt, server_port: u16) -> Option<Outcome> {
    if pkt.key.proto != IPPROTO_TCP || pkt.payload_len < CLIENT_HELLO_MIN {
        return None;
    }
    // One bounds check for the head and the prefilter's bytes: a ClientHello has at least
    // CLIENT_HELLO_MIN bytes, more than the window.
    let win = InPacket::new(ctx, pkt.payload_off).window()?;
    if !is_client_hello_head([win.at(0), win.at(1), win.at(2), win.at(3), win.at(4), win.at(5)]) {
        return None;
    }
    let generation = gen_of(cfg);
    let payload_len = pkt.payload_len & 0xffff;
    // The head checked above fixes some of the bytes the prefilter reads.
    let pre = IMFW_SIGPRE.get(generation);
    if pre.map_or(u32::MAX, |p| p.candidates_hello_with(payload_len, server_port, |i| win.at(i))) != 0 {
        return None;
    }
    let (payload_off, payload_len) = (pkt.payload_off as u32, payload_len as u32);
    Some(match imfw_hello_app(ctx.ctx, generation, payload_off, payload_len) {
        0 | NO_NAME => return None,
        NAME_UNKNOWN => Outcome::NamedTls,
        NAME_HIDDEN => Outcome::Hidden,
        app => Outcome::Found(app as u16, Method::TlsSni),
    })
}

/// The app of the longest domain of policy generation `generation` among a server name's
/// suffixes: the whole name's hash `whole`, then the `count` suffix hashes
/// [`suffix_hashes_from`] left in `slots` (the scratch value's); 0 for none.
///
/// Inlined into [`imfw_name_app`], a global function that the verifier checks once: a call
/// of its own cost about 10 ns per name (a BPF call and return, with the kernel's return-stack
/// mitigations).
#[inline(always)]
fn name_lookups(slots: &[u64; NAME_SLOTS], generation: u32, count: u32, whole: u64) -> u32 {
    // Inlined: LLVM left the closure a function of its own, a BPF call per suffix looked up.
    let lookup = #[inline(always)]
    |h| name_app(generation, h);
    lookup_suffixes(slots, count as usize & 0xff, whole, lookup) as u32
}

/// The app of domain hash `hash` in generation `generation`. Most suffixes of a name (`com`,
/// `cdn.example.com`) are no domain of the policy: the name filter's bit rules them out with
/// one array read, before the name table's two buckets for the hash are read.
#[inline(always)]
fn name_app(generation: u32, hash: u64) -> Option<u16> {
    let (word, bit) = name_filter_bit(generation, hash);
    match IMFW_NAMEBITS.get(word) {
        Some(w) if *w & bit != 0 => {}
        _ => return None,
    }
    let (a, b) = name_buckets(generation, hash);
    if let Some(app) = IMFW_NAMES.get(a).and_then(|k| k.app(hash)) {
        return Some(app);
    }
    IMFW_NAMES.get(b).and_then(|k| k.app(hash))
}

/// Whether a ClientHello whose server name no app claims hides its real name with Encrypted
/// Client Hello (the extension walk of [`imfw_tls_has_ech`]).
#[inline(always)]
fn hidden(ctx: &XdpContext, payload_off: u32, payload_len: u32) -> Outcome {
    if imfw_tls_has_ech(ctx.ctx, payload_off, payload_len) != 0 { Outcome::Hidden } else { Outcome::NamedTls }
}

/// 1 when the ClientHello that starts the payload at `payload_off` of the packet
/// (`payload_len` bytes long) carries an `encrypted_client_hello` extension, else 0; read in
/// the packet.
///
/// A global function (exported by the linker, see build.rs): the verifier walks the extension
/// loop once, on its own, rather than after each of the name matchers' paths, so the check
/// runs in the names stage instead of a third program and its tail call.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imfw_tls_has_ech(ctx: *mut xdp_md, payload_off: u32, payload_len: u32) -> u32 {
    let payload = InPacket::new(&XdpContext::new(ctx), payload_off as usize);
    tls_has_ech(&payload, loaded_len(payload_len as usize & 0xffff)) as u32
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
