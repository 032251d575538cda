//! The controller's side of monitored flows: segments XDP copies (`EVENT_STREAM`) go through
//! the content path of `imfw-monitor` (reassembly, message parsers, content policy,
//! compliance archive); its decisions come back here and are enforced in the flow table (drop
//! verdict, no more copies) and on the wire (TCP resets).

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use hashbrown::HashMap;
use imfw_common::{
    event::PayloadEvent,
    flow::{DIR_CLIENT, FLAG_CLEARED_CLIENT, FLAG_CLEARED_SERVER, FLAG_CONTENT_BLOCKED, FLAG_NO_COPY, FlowKey},
    verdict::Verdict,
};
use imfw_monitor::{
    archive::{Archive, ArchiveConfig, FlowId, SealKey},
    message::{Direction, Protocol},
    reassembly::{self, GapPolicy, Segment},
    session::{Action, FlowMeta, Monitor, MonitorConfig, MonitorStats},
};

use crate::{dataplane::Dataplane, packet, policy};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
/// How often old archive segments are looked for.
const RETENTION_EVERY_MS: u64 = 3_600_000;

/// How the content path resets a blocked connection: `reset(client, server, client_next,
/// server_next)`. `imfw run` sends real RSTs ([`crate::rst::reset_both`]); tests record them.
pub type Resetter = Box<dyn FnMut(SocketAddr, SocketAddr, u32, u32) -> Result<()> + Send>;

/// What the content path knows of a flow from its first copied segment.
enum Known {
    Read(FlowMeta),
    /// An app whose content imfw cannot read (end-to-end encrypted, or no parser): its copies
    /// were switched off.
    Unreadable,
}

/// The protocols with a message parser, by app id.
pub fn readable(app: &str) -> Option<Protocol> {
    match app {
        "xmpp" => Some(Protocol::Xmpp),
        "irc" => Some(Protocol::Irc),
        "mqtt" => Some(Protocol::Mqtt),
        // Chat web APIs over plain HTTP (self-hosted servers on http://); over TLS the parser
        // reports the flow encrypted at its first byte and its copies stop.
        "matrix" | "mattermost" | "rocketchat" | "slack" => Some(Protocol::Http),
        "msn" => Some(Protocol::Msnp),
        "ymsg" => Some(Protocol::Ymsg),
        "oscar" => Some(Protocol::Oscar),
        _ => None,
    }
}

pub struct ContentPath {
    monitor: Monitor,
    flows: HashMap<FlowKey, Known>,
    /// The flow table key of each readable flow, for the monitor's actions.
    keys: HashMap<FlowId, FlowKey>,
    /// `copies_lost` of each flow as last seen, to notice new ring losses.
    lost: HashMap<FlowKey, u16>,
    reset: Resetter,
    actions: Vec<Action>,
    retention_ms: u64,
    next_retention_ms: u64,
    /// `monitor.hold`: raise each direction's cleared mark as segments are read.
    hold: bool,
    /// Cleared marks to raise after the batch: (flow, direction) -> sequence number.
    release: HashMap<(FlowKey, usize), u32>,
    /// Segments of flows that left the table before their copy was read.
    pub orphans: u64,
    pub resets_failed: u64,
}

impl ContentPath {
    /// Opens the archive (recovering it after a crash: the recovery is logged) and the
    /// monitor with the policy's settings. A policy that monitors nothing needs no archive.
    pub fn open(p: &policy::Policy, now_ms: u64, reset: Resetter) -> Result<ContentPath> {
        if !p.monitors() {
            return Ok(ContentPath::with_archive(p, None, reset));
        }
        let m = &p.monitor;
        std::fs::create_dir_all(&m.archive).with_context(|| format!("creating the archive directory {}", m.archive.display()))?;
        if let Some(parent) = m.archive_key.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let key = SealKey::load_or_create(&m.archive_key).with_context(|| format!("the archive key {}", m.archive_key.display()))?;
        let (archive, report) = Archive::open(&m.archive, key, ArchiveConfig::default(), now_ms)
            .with_context(|| format!("opening the archive {} (check it with `imfw archive verify`)", m.archive.display()))?;
        log::info!("archive {}: {report:?}", m.archive.display());
        Ok(ContentPath::with_archive(p, Some(archive), reset))
    }

    /// A content path over `archive` (none: decisions only, nothing recorded).
    pub fn with_archive(p: &policy::Policy, archive: Option<Archive>, reset: Resetter) -> ContentPath {
        let m = &p.monitor;
        let config = MonitorConfig {
            reassembly: reassembly::Config {
                gap_policy: match m.on_gap {
                    policy::model::OnGap::Skip => GapPolicy::Skip,
                    policy::model::OnGap::Drop => GapPolicy::Drop,
                },
                ..reassembly::Config::default()
            },
            total_budget_bytes: m.memory_bytes,
            max_flows: m.max_flows,
        };
        ContentPath {
            monitor: Monitor::new(config, p.content.clone(), archive),
            flows: HashMap::new(),
            keys: HashMap::new(),
            lost: HashMap::new(),
            reset,
            actions: Vec::new(),
            retention_ms: u64::from(m.retention_days) * 86_400_000,
            next_retention_ms: 0,
            hold: m.hold,
            release: HashMap::new(),
            orphans: 0,
            resets_failed: 0,
        }
    }

    /// A policy reload: later messages go through the new content rules, and the settings
    /// that can change live do (`hold`, `retention_days`). The others (`archive`,
    /// `archive_key`, `on_gap`, `max_flows`, `memory_mb`) size or locate state that lives as
    /// long as the process: they take effect at the next restart.
    pub fn set_policy(&mut self, p: &policy::Policy) {
        self.monitor.set_policy(p.content.clone());
        self.hold = p.monitor.hold;
        self.retention_ms = u64::from(p.monitor.retention_days) * 86_400_000;
    }

    pub fn stats(&self) -> MonitorStats {
        self.monitor.stats()
    }

    /// One copied segment.
    #[expect(clippy::similar_names, reason = "now_ns (monotonic) and now_ms (wall clock) are two clocks on purpose")]
    pub fn on_stream(&mut self, ev: &PayloadEvent, dp: &mut Dataplane, compiled: &policy::Compiled, now_ns: u64, now_ms: u64) -> Result<()> {
        let key = ev.key;
        if !self.flows.contains_key(&key) {
            let Some(mut e) = dp.flow(&key)? else {
                self.orphans += 1;
                return Ok(());
            };
            let app = compiled.app_name(e.app).unwrap_or("?").to_owned();
            let known = if let Some(protocol) = readable(&app) {
                let id = flow_id(&key, ev.client_is_a != 0);
                self.keys.insert(id, key);
                Known::Read(FlowMeta { id, app, protocol })
            } else {
                e.flags |= FLAG_NO_COPY;
                dp.set_flow(&key, &e)?;
                log::info!("{}: {app} content is not readable (encrypted); copies stopped", flow_id(&key, ev.client_is_a != 0));
                Known::Unreadable
            };
            self.flows.insert(key, known);
        }
        let Some(Known::Read(meta)) = self.flows.get(&key) else { return Ok(()) };
        let data = &ev.data[..usize::from(ev.len).min(ev.data.len())];
        let seg = Segment {
            direction: if ev.dir == DIR_CLIENT { Direction::ClientToServer } else { Direction::ServerToClient },
            seq: ev.seq,
            syn: ev.tcp_flags & TCP_SYN != 0,
            fin: ev.tcp_flags & TCP_FIN != 0,
            rst: ev.tcp_flags & TCP_RST != 0,
            payload: data,
            wire_len: u32::from(ev.wire_len),
        };
        self.monitor.segment(meta, &seg, now_ns, now_ms, &mut self.actions);
        let id = meta.id;
        self.enforce(dp)?;
        if self.hold && !seg.payload.is_empty() {
            // The held segment was read and allowed; its mark is raised by `release`, once
            // the archive holds what it carried.
            if let Some(mark) = self.monitor.read_up_to(&id, seg.direction) {
                self.release.insert((key, seg.direction.index()), mark);
            }
        }
        Ok(())
    }

    /// After each batch of copies: writes the archive's buffered records, then raises the
    /// cleared marks of the segments read, so that their retransmissions pass. A message thus
    /// reaches its recipient only after its record was handed to the kernel: a controller
    /// killed at any point loses no record of a delivered message (only a machine crash can
    /// lose the unsealed tail, which the next start reports). One map update per flow and
    /// direction per batch.
    pub fn release(&mut self, dp: &mut Dataplane) -> Result<()> {
        if self.release.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.monitor.flush_archive() {
            // The records stay counted as archive errors; holding the flows would not bring
            // them back, and the messages were checked by the content policy.
            log::error!("archive: {e}");
        }
        for ((key, dir), mark) in self.release.drain() {
            let Some(mut e) = dp.flow(&key)? else { continue };
            let (i, flag) = if dir == 0 { (0, FLAG_CLEARED_CLIENT) } else { (1, FLAG_CLEARED_SERVER) };
            if e.flags & flag == 0 || e.cleared[i] != mark {
                e.cleared[i] = mark;
                e.flags |= flag;
                dp.set_flow(&key, &e)?;
            }
        }
        Ok(())
    }

    /// Once a second or so: timeouts, the archive's seals, ring losses, flows that left the table.
    #[expect(clippy::similar_names, reason = "now_ns (monotonic) and now_ms (wall clock) are two clocks on purpose")]
    pub fn tick(&mut self, dp: &mut Dataplane, now_ns: u64, now_ms: u64) -> Result<()> {
        let keys: Vec<FlowKey> = self.flows.keys().copied().collect();
        for key in keys {
            let entry = dp.flow(&key)?;
            let Some(Known::Read(meta)) = self.flows.get(&key) else {
                if entry.is_none() {
                    self.flows.remove(&key);
                }
                continue;
            };
            let id = meta.id;
            match entry {
                None => {
                    self.monitor.end_flow(&id, now_ms);
                    self.flows.remove(&key);
                    self.keys.remove(&id);
                    self.lost.remove(&key);
                }
                Some(e) => {
                    let seen = self.lost.entry(key).or_insert(0);
                    if e.copies_lost != *seen {
                        log::warn!("{id}: {} segment copies lost (event ring full)", e.copies_lost.wrapping_sub(*seen));
                        *seen = e.copies_lost;
                        self.monitor.ring_loss(&id, now_ns, now_ms, &mut self.actions);
                    }
                }
            }
        }
        self.monitor.poll(now_ns, now_ms, &mut self.actions);
        self.enforce(dp)?;
        if self.retention_ms > 0 && now_ms >= self.next_retention_ms {
            self.next_retention_ms = now_ms + RETENTION_EVERY_MS;
            match self.monitor.retain(now_ms, self.retention_ms) {
                Some(Ok(r)) => log::info!("archive retention: {r:?}"),
                Some(Err(e)) => log::error!("archive retention: {e}"),
                None => {}
            }
        }
        Ok(())
    }

    /// Seals and closes the archive.
    pub fn close(self, now_ms: u64) -> Result<MonitorStats> {
        self.monitor.close(now_ms).context("closing the archive")
    }

    fn enforce(&mut self, dp: &mut Dataplane) -> Result<()> {
        for action in std::mem::take(&mut self.actions) {
            match action {
                Action::Block { flow, reason, rst } => {
                    log::warn!("{flow}: blocked by the content policy: {reason}");
                    if let Some(key) = self.key_of(&flow) {
                        if let Some(mut e) = dp.flow(&key)? {
                            e.verdict = Verdict::Drop as u8;
                            // A policy reload keeps this verdict: it is not the policy's.
                            e.flags |= FLAG_NO_COPY | FLAG_CONTENT_BLOCKED;
                            dp.set_flow(&key, &e)?;
                        }
                    }
                    if let Some(s) = rst {
                        if let Err(e) = (self.reset)(flow.client, flow.server, s.client_next, s.server_next) {
                            self.resets_failed += 1;
                            log::error!("{flow}: resetting the connection: {e:#}");
                        }
                    }
                }
                Action::StopCopy { flow, reason } => {
                    log::info!("{flow}: content no longer readable ({reason}); copies stopped");
                    if let Some(key) = self.key_of(&flow) {
                        if let Some(mut e) = dp.flow(&key)? {
                            e.flags |= FLAG_NO_COPY;
                            dp.set_flow(&key, &e)?;
                        }
                        self.flows.insert(key, Known::Unreadable);
                        self.keys.remove(&flow);
                    }
                }
            }
        }
        Ok(())
    }

    fn key_of(&self, flow: &FlowId) -> Option<FlowKey> {
        self.keys.get(flow).copied()
    }
}

/// The flow's client and server as socket addresses.
pub fn flow_id(key: &FlowKey, client_is_a: bool) -> FlowId {
    let (c, cp) = key.client(client_is_a);
    let (s, sp) = key.server(client_is_a);
    FlowId { client: SocketAddr::new(packet::addr(c, key.family), cp), server: SocketAddr::new(packet::addr(s, key.family), sp) }
}
