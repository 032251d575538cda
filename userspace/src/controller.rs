//! The controller's share of classification: payloads the data plane hands over (a TLS
//! ClientHello longer than its first segment) are reassembled here, matched with the same
//! name hashing as the kernel, and the verdict is written back into the flow table.
//! `imfw run` and `imfw classify` both feed their events through this one path.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Result;
use hashbrown::HashMap;
use imfw_common::{
    app::APP_ECH,
    event::PayloadEvent,
    flow::{DIR_CLIENT, FLAG_CONTROLLER, FlowKey, STATE_DECIDED},
    matcher::{NAME_MAX, NAME_SLOTS, SCRATCH_LEN, match_name},
    verdict::Method,
};

use crate::{dataplane::Dataplane, dns, packet, policy::Compiled, quic};

const IPPROTO_UDP: u8 = 17;

/// Bytes kept per flow: a ClientHello is at most one record of 16 KiB (RFC 8446 §5.1).
const FLOW_CAP: usize = 16 * 1024 + 5;
/// Flows reassembled at once; the oldest is given up when a new one would exceed this.
const FLOWS_CAP: usize = 4096;

/// What the controller decided for a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub key: FlowKey,
    pub app: u16,
    pub name: String,
    pub verdict: u8,
}

struct Pending {
    base: u32,
    segments: BTreeMap<u32, Vec<u8>>,
    bytes: usize,
    order: u64,
}

/// A QUIC flow whose ClientHello is being collected from its Initial packets.
struct QuicPending {
    crypto: quic::CryptoAssembler,
    datagrams: u32,
    order: u64,
}

/// Datagrams of a QUIC flow read before it is given up (a ClientHello spans two or three).
const QUIC_DATAGRAMS_MAX: u32 = 8;
/// Addresses learned from DNS at once.
const LEARNED_MAX: usize = 65_536;

pub struct Controller {
    names: HashMap<u64, u16>,
    pending: HashMap<FlowKey, Pending>,
    quic: HashMap<FlowKey, QuicPending>,
    /// Addresses of IM apps' names, from DNS answers.
    pub learned: dns::LearnedAddrs,
    /// Seconds on the caller's monotonic clock, for the learned addresses' expiry.
    now: u64,
    next: u64,
    /// Flows given up: over the caps, or not a parsable ClientHello.
    pub abandoned: u64,
}

impl Controller {
    pub fn new(compiled: &Compiled) -> Self {
        Controller {
            names: compiled.names.iter().map(|(k, v)| (k.hash, v.app)).collect(),
            pending: HashMap::new(),
            quic: HashMap::new(),
            learned: dns::LearnedAddrs::new(LEARNED_MAX, dns::DEFAULT_MIN_TTL, dns::DEFAULT_MAX_TTL),
            now: 0,
            next: 0,
            abandoned: 0,
        }
    }

    /// A policy reload: server names are matched against the new policy's domains.
    pub fn set_policy(&mut self, compiled: &Compiled) {
        self.names = compiled.names.iter().map(|(k, v)| (k.hash, v.app)).collect();
    }

    /// Advances the clock (seconds, monotonic) and removes the learned addresses that expired.
    pub fn tick(&mut self, now: u64, dp: &mut Dataplane) -> Result<()> {
        self.now = now;
        for addr in self.learned.expire(now) {
            dp.remove_learned(addr)?;
        }
        Ok(())
    }

    /// Takes one handed-over payload; returns the decision once the ClientHello is whole.
    pub fn on_payload(&mut self, ev: &PayloadEvent, dp: &mut Dataplane, compiled: &Compiled) -> Result<Option<Decision>> {
        let data = &ev.data[..usize::from(ev.len).min(ev.data.len())];
        if ev.key.proto == IPPROTO_UDP {
            if ev.dir == DIR_CLIENT {
                return self.on_quic(ev, data, dp, compiled);
            }
            self.on_dns(data, dp)?;
            return Ok(None);
        }
        self.abandoned += make_room(&mut self.pending, &ev.key, |p| p.order);
        self.next += 1;
        let order = self.next;
        let p = self.pending.entry(ev.key).or_insert_with(|| Pending { base: ev.seq, segments: BTreeMap::new(), bytes: 0, order });
        let rel = ev.seq.wrapping_sub(p.base);
        if (rel as usize) < FLOW_CAP && p.bytes + data.len() <= 2 * FLOW_CAP {
            // Retransmissions: the first copy stays.
            p.segments.entry(rel).or_insert_with(|| data.to_vec());
            p.bytes += data.len();
        }
        let stream = contiguous(&p.segments);
        let hello = match client_hello_sni(&stream) {
            Parse::Incomplete if stream.len() < FLOW_CAP => return Ok(None),
            Parse::Incomplete | Parse::NotHello => {
                self.pending.remove(&ev.key);
                self.abandoned += 1;
                return Self::write_back(dp, compiled, ev, 0, String::new(), false).map(|_| None);
            }
            Parse::Done(name, ech) => (name, ech),
        };
        self.pending.remove(&ev.key);
        let app = name_app(&self.names, hello.0.as_deref().unwrap_or(""));
        Self::write_back(dp, compiled, ev, app, hello.0.unwrap_or_default(), hello.1)
    }

    /// A client datagram of a QUIC flow: Initial packets are decrypted and their CRYPTO frames
    /// collected until the ClientHello is whole.
    fn on_quic(&mut self, ev: &PayloadEvent, data: &[u8], dp: &mut Dataplane, compiled: &Compiled) -> Result<Option<Decision>> {
        self.abandoned += make_room(&mut self.quic, &ev.key, |p| p.order);
        self.next += 1;
        let order = self.next;
        let st = self.quic.entry(ev.key).or_insert_with(|| QuicPending { crypto: quic::CryptoAssembler::new(), datagrams: 0, order });
        st.datagrams += 1;
        if quic::is_client_initial(data) {
            if let Ok(frames) = quic::decrypt_initials(data) {
                st.crypto.push_frames(&frames);
            }
        }
        if let Some(info) = st.crypto.client_hello().and_then(quic::client_hello_info) {
            self.quic.remove(&ev.key);
            let name = info.server_name.unwrap_or_default();
            let app = name_app(&self.names, &name);
            return Self::write_back(dp, compiled, ev, app, name, info.ech);
        }
        if st.crypto.gave_up() || st.datagrams >= QUIC_DATAGRAMS_MAX {
            self.quic.remove(&ev.key);
            self.abandoned += 1;
            return Self::write_back(dp, compiled, ev, 0, String::new(), false);
        }
        Ok(None)
    }

    /// A DNS answer: the addresses of names that belong to an app (directly or through a
    /// CNAME) are added to the app's networks until their TTL runs out. Addresses already in a
    /// configured network are left alone, so learning never overrides the catalogue or policy.
    fn on_dns(&mut self, data: &[u8], dp: &mut Dataplane) -> Result<()> {
        let Ok(resp) = dns::parse_response(data) else { return Ok(()) };
        let res = resp.addresses_for_question();
        let Some(app) = res.names.iter().map(|n| name_app(&self.names, n)).find(|&a| a != 0) else { return Ok(()) };
        for a in &res.addrs {
            if self.learned.get(a.addr).is_none() && dp.addr_app(a.addr)?.is_some() {
                continue;
            }
            match self.learned.learn(a.addr, app, a.ttl, self.now) {
                dns::Change::Inserted { evicted } => {
                    if let Some(old) = evicted {
                        dp.remove_learned(old)?;
                    }
                    dp.set_learned(a.addr, app)?;
                }
                dns::Change::AppChanged { .. } => dp.set_learned(a.addr, app)?,
                dns::Change::Refreshed => {}
            }
        }
        Ok(())
    }

    /// Writes the verdict for a flow the controller read the server name of (`name`, empty for
    /// none). Without a name (or with an address literal), the server's address decides; so it
    /// does when Encrypted Client Hello (`ech`) hid the real name, and else the policy's choice
    /// for hidden names (app `ech`) applies.
    fn write_back(dp: &mut Dataplane, compiled: &Compiled, ev: &PayloadEvent, app: u16, name: String, ech: bool) -> Result<Option<Decision>> {
        let Some(mut e) = dp.flow(&ev.key)? else { return Ok(None) };
        let named = !name.is_empty() && name.parse::<IpAddr>().is_err() && !name.starts_with('[');
        let addr_app = if app == 0 && (!named || ech) { dp.flow_addr_app(&ev.key, &e)? } else { 0 };
        let (app, method) = if app != 0 {
            (app, if ev.key.proto == IPPROTO_UDP { Method::Quic } else { Method::TlsSni })
        } else if addr_app != 0 {
            (addr_app, Method::Address)
        } else if ech {
            (APP_ECH, Method::Ech)
        } else {
            (0, Method::None)
        };
        let (client, _) = ev.key.client(ev.client_is_a != 0);
        let client: IpAddr = packet::addr(client, ev.key.family);
        let action = dp.decide(compiled, client, app);
        e.app = app;
        e.method = method as u8;
        e.verdict = action.verdict;
        e.redirect_slot = action.redirect_slot;
        e.state = STATE_DECIDED;
        e.flags &= !FLAG_CONTROLLER;
        dp.set_flow(&ev.key, &e)?;
        Ok((app != 0).then_some(Decision { key: ev.key, app, name, verdict: action.verdict }))
    }
}

/// Gives up the oldest flow of `flows` when `key` is new and the table is full; returns how many
/// flows were given up (0 or 1).
fn make_room<V>(flows: &mut HashMap<FlowKey, V>, key: &FlowKey, order: impl Fn(&V) -> u64) -> u64 {
    if flows.contains_key(key) || flows.len() < FLOWS_CAP {
        return 0;
    }
    let Some(oldest) = flows.iter().min_by_key(|(_, v)| order(v)).map(|(k, _)| *k) else { return 0 };
    flows.remove(&oldest);
    1
}

/// The bytes from the first segment on, up to the first hole.
fn contiguous(segments: &BTreeMap<u32, Vec<u8>>) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    for (&rel, seg) in segments {
        let rel = rel as usize;
        if rel > out.len() {
            break;
        }
        let skip = out.len() - rel;
        if skip < seg.len() {
            out.extend_from_slice(&seg[skip..]);
        }
    }
    out
}

enum Parse {
    Incomplete,
    NotHello,
    /// The server name, if the ClientHello has one, and whether it has Encrypted Client Hello.
    Done(Option<String>, bool),
}

/// The server name of a whole ClientHello record (RFC 8446 §5.1); the handshake message inside
/// is read by the same parser as QUIC's.
fn client_hello_sni(b: &[u8]) -> Parse {
    if b.len() < 6 {
        return Parse::Incomplete;
    }
    if b[0] != 0x16 || b[1] != 3 || b[5] != 1 {
        return Parse::NotHello;
    }
    let record = 5 + usize::from(u16::from_be_bytes([b[3], b[4]]));
    if b.len() < record {
        return Parse::Incomplete;
    }
    match quic::client_hello_info(&b[5..record]) {
        Some(info) => Parse::Done(info.server_name.map(|n| n.trim_end_matches('.').to_owned()), info.ech),
        None => Parse::NotHello,
    }
}

/// The app of a name, by the kernel's own suffix hashing.
fn name_app(names: &HashMap<u64, u16>, name: &str) -> u16 {
    if name.is_empty() || name.len() > NAME_MAX {
        return 0;
    }
    let mut buf = [0u8; SCRATCH_LEN];
    buf[..name.len()].copy_from_slice(name.as_bytes());
    let mut slots = [0u64; NAME_SLOTS];
    match_name(&buf, 0, name.len(), &mut slots, |h| names.get(&h).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str, pad: usize) -> Vec<u8> {
        let n = name.as_bytes();
        let mut ext = Vec::new();
        ext.extend_from_slice(&[0x00, 0x15]);
        ext.extend_from_slice(&(pad as u16).to_be_bytes());
        ext.extend(std::iter::repeat_n(0u8, pad));
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&((n.len() + 5) as u16).to_be_bytes());
        ext.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
        ext.extend_from_slice(n);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[1; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn reassembly_in_any_order_with_retransmissions() {
        let h = hello("web.whatsapp.com", 3000);
        let mut segs = BTreeMap::new();
        // Out of order, with an overlapping retransmission.
        segs.insert(2000u32, h[2000..].to_vec());
        assert!(matches!(client_hello_sni(&contiguous(&segs)), Parse::Incomplete));
        segs.insert(0u32, h[..1448].to_vec());
        assert!(matches!(client_hello_sni(&contiguous(&segs)), Parse::Incomplete), "hole at 1448..2000");
        segs.insert(1000u32, h[1000..2100].to_vec());
        let Parse::Done(Some(name), false) = client_hello_sni(&contiguous(&segs)) else { panic!("not parsed") };
        assert_eq!(name, "web.whatsapp.com");
    }

    #[test]
    fn not_a_hello_and_no_name() {
        assert!(matches!(client_hello_sni(b"GET / HTTP/1.1\r\n"), Parse::NotHello));
        let mut h = hello("a.example", 10);
        h[5] = 2;
        assert!(matches!(client_hello_sni(&h), Parse::NotHello));
        // Every truncation is incomplete or parsed, never a panic.
        let h = hello("a.example", 100);
        for cut in 0..h.len() {
            let _ = client_hello_sni(&h[..cut]);
        }
    }
}
