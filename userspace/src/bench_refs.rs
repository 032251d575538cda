//! The bench's reference XDP programs (ebpf/src/bin/bench_refs.rs), embedded and run with
//! `BPF_PROG_TEST_RUN` like imfw's own program in [`crate::dataplane`], so that imfw's cost
//! per packet is read against figures measured the same way in the same run.
//!
//! The same object carries the end-to-end bench's traffic generator ([`TrafficGen`]), and the
//! references can be attached to an interface ([`BenchRefs::attach`]) to be measured on a link.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap, ProgramArray},
    programs::{xdp::XdpLinkId, ProgramFd, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use imfw_common::flow::FlowKey;

/// The reference object built by build.rs (aya-build copies each binary of `imfw-ebpf` into
/// `OUT_DIR` under its name).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_refs"));

/// The reference's flow table (`BENCH_REF_FLOWS` in the object).
const FLOWS: &str = "BENCH_REF_FLOWS";

/// The reference's per-flow value, as the program lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RefEntry {
    pub packets: u64,
    pub verdict: u32,
    _pad: u32,
}

// SAFETY: plain integers, no padding beyond the explicit field.
unsafe impl aya::Pod for RefEntry {}

/// Which reference program to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// Returns `XDP_PASS` and nothing else: the floor of a program run.
    Empty,
    /// Parses L2 to L4, one LRU lookup of the 5-tuple, an insert on a miss.
    Stateful,
}

impl Reference {
    pub fn program(self) -> &'static str {
        match self {
            Reference::Empty => "bench_empty",
            Reference::Stateful => "bench_stateful",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Reference::Empty => "empty program",
            Reference::Stateful => "stateful reference",
        }
    }
}

/// Both reference programs, loaded (needs root or CAP_BPF), with the stateful one's flow table.
pub struct BenchRefs {
    ebpf: Ebpf,
}

impl BenchRefs {
    /// Loads both programs; `flow_capacity` sizes the stateful reference's LRU table.
    pub fn load(flow_capacity: u32) -> Result<Self> {
        if OBJECT.is_empty() {
            bail!("the bench reference object is empty: rebuild without AYA_BUILD_SKIP");
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(FLOWS, flow_capacity)
            .load(OBJECT)
            .context("loading the bench reference object (needs root or CAP_BPF)")?;
        for r in [Reference::Empty, Reference::Stateful] {
            let prog: &mut Xdp = ebpf
                .program_mut(r.program())
                .ok_or_else(|| {
                    anyhow!("program {} missing from the reference object", r.program())
                })?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading the reference program {}", r.program()))?;
        }
        Ok(BenchRefs { ebpf })
    }

    fn program(&self, r: Reference) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(r.program())
            .ok_or_else(|| anyhow!("program {} missing", r.program()))?
            .try_into()?)
    }

    /// Reference `r`'s program, to hand to a [`Replay`].
    pub fn program_fd(&self, r: Reference) -> Result<&ProgramFd> {
        Ok(self.program(r)?.fd()?)
    }

    /// Runs one frame once; returns the XDP action.
    pub fn run(&self, r: Reference, frame: &[u8]) -> Result<u32> {
        Ok(self.run_timed(r, frame, 1)?.0)
    }

    /// Runs one frame `repeat` times; returns the XDP action and the kernel's mean time per
    /// run in nanoseconds (as [`crate::dataplane::Dataplane::test_run_timed`]).
    pub fn run_timed(&self, r: Reference, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        };
        let out = self
            .program(r)?
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", r.program()))?;
        #[expect(
            clippy::cast_precision_loss,
            reason = "a mean run time in ns is far below 2^52"
        )]
        let ns = out.duration.as_nanos() as f64;
        Ok((out.return_value, ns))
    }

    /// Attaches reference `r` in native (driver) mode to interface `ifindex` of the calling
    /// thread's network namespace. Native only: a reference measured in generic mode would not
    /// be the reference.
    pub fn attach(&mut self, r: Reference, ifindex: u32) -> Result<XdpLinkId> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(r.program())
            .ok_or_else(|| anyhow!("program {} missing", r.program()))?
            .try_into()?;
        prog.attach_to_if_index(ifindex, XdpMode::Driver)
            .with_context(|| {
                format!(
                    "attaching {} to interface #{ifindex} in native mode",
                    r.program()
                )
            })
    }

    /// Detaches what [`BenchRefs::attach`] attached.
    pub fn detach(&mut self, r: Reference, link: XdpLinkId) -> Result<()> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(r.program())
            .ok_or_else(|| anyhow!("program {} missing", r.program()))?
            .try_into()?;
        prog.detach(link)
            .with_context(|| format!("detaching {}", r.program()))
    }

    /// The stateful reference's entry for `key`, if any.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<RefEntry>> {
        let h: HashMap<_, FlowKey, RefEntry> = HashMap::try_from(
            self.ebpf
                .map(FLOWS)
                .ok_or_else(|| anyhow!("map {FLOWS} missing"))?,
        )?;
        match h.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(anyhow!("map {FLOWS}: {e}")),
        }
    }

    /// Empties the stateful reference's flow table, so that a long run never fills it (an
    /// insert into a full LRU table also evicts, which is not what the reference measures).
    pub fn clear_flows(&mut self) -> Result<usize> {
        let mut h: HashMap<_, FlowKey, RefEntry> = HashMap::try_from(
            self.ebpf
                .map_mut(FLOWS)
                .ok_or_else(|| anyhow!("map {FLOWS} missing"))?,
        )?;
        let keys: Vec<FlowKey> = h
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("map {FLOWS}: {e}"))?;
        for k in &keys {
            match h.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(anyhow!("map {FLOWS}: {e}")),
            }
        }
        Ok(keys.len())
    }
}

/// The generator's mix (`BENCH_GEN_FRAMES`) and cursor (`BENCH_GEN_CURSOR`).
const GEN_FRAMES: &str = "BENCH_GEN_FRAMES";
const GEN_CURSOR: &str = "BENCH_GEN_CURSOR";
const GEN_PROGRAM: &str = "bench_gen";

/// The longest frame the generator can send (`GEN_FRAME_MAX` in the program).
pub const GEN_FRAME_MAX: usize = 1528;

/// Room for a frame in the map (`GEN_FRAME_ROOM` in the program).
const GEN_FRAME_ROOM: usize = 2048;

/// One frame of the mix, as the program lays it out.
#[repr(C)]
#[derive(Clone, Copy)]
struct GenFrame {
    len: u32,
    _pad: u32,
    data: [u8; GEN_FRAME_ROOM],
}

// SAFETY: integers and bytes, no implicit padding (8 + 2048 bytes, 8-aligned).
unsafe impl aya::Pod for GenFrame {}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct GenCursor {
    next: u32,
    count: u32,
}

// SAFETY: two integers.
unsafe impl aya::Pod for GenCursor {}

/// What one [`TrafficGen::play`] call did.
#[derive(Clone, Copy, Debug)]
pub struct Played {
    /// Wall time of the system call, as the injector sees it.
    pub wall: Duration,
    /// The kernel's mean time per frame over the call (generator, transmission and whatever
    /// the softirqs that ran inside the call did).
    pub kernel_ns_per_frame: f64,
}

/// The traffic generator: `bench_gen` with a mix of frames, run with `BPF_PROG_TEST_RUN` in
/// live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`) on an interface, which it sends the mix out
/// of, frame after frame, in order, wrapping around at the end.
pub struct TrafficGen {
    ebpf: Ebpf,
    count: u32,
    /// The frame handed to the kernel: as long as the mix's longest, so that the program only
    /// ever shrinks it (a grown tail is zeroed first, a cost the mix does not ask for).
    seed_frame: Vec<u8>,
}

impl TrafficGen {
    /// Loads the generator with `frames` (Ethernet frames, 14 to [`GEN_FRAME_MAX`] bytes).
    pub fn load(frames: &[Vec<u8>]) -> Result<Self> {
        if OBJECT.is_empty() {
            bail!("the bench reference object is empty: rebuild without AYA_BUILD_SKIP");
        }
        if frames.is_empty() {
            bail!("the traffic generator needs at least one frame");
        }
        let count = check_frames(frames)?;
        let longest = frames.iter().map(Vec::len).max().unwrap_or(0);
        let mut ebpf = load_frame_program(count, GEN_PROGRAM, "the traffic generator")?;
        write_frames(&mut ebpf, frames)?;
        let mut g = TrafficGen {
            ebpf,
            count,
            seed_frame: frames
                .iter()
                .find(|f| f.len() == longest)
                .cloned()
                .unwrap_or_default(),
        };
        g.rewind()?;
        Ok(g)
    }

    /// Frames in the mix.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether the mix is empty (never: [`TrafficGen::load`] refuses an empty one).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The next frame sent is the mix's first.
    pub fn rewind(&mut self) -> Result<()> {
        set_cursor(&mut self.ebpf, 0, self.count)
    }

    /// The index of the next frame to send.
    pub fn position(&self) -> Result<u32> {
        let c: Array<_, GenCursor> = Array::try_from(
            self.ebpf
                .map(GEN_CURSOR)
                .ok_or_else(|| anyhow!("map {GEN_CURSOR} missing"))?,
        )?;
        Ok(c.get(&0, 0)
            .map_err(|e| anyhow!("map {GEN_CURSOR}: {e}"))?
            .next)
    }

    /// Sends `frames` frames of the mix out of interface `ifindex` (of the calling thread's
    /// network namespace), `batch` frames per batch (the kernel allows 1 to 256; the frames of
    /// a batch are transmitted together at its end, and the softirqs they raise run before the
    /// next batch starts).
    pub fn play(&self, ifindex: u32, frames: u32, batch: u32) -> Result<Played> {
        let len = u32::try_from(self.seed_frame.len()).unwrap_or(u32::MAX);
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The kernel wants data_end equal to the frame's length and no metadata.
        let md: Vec<u8> = [0, len, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w: &u32| w.to_ne_bytes())
            .collect();
        let prog: &Xdp = self
            .ebpf
            .program(GEN_PROGRAM)
            .ok_or_else(|| anyhow!("program {GEN_PROGRAM} missing"))?
            .try_into()?;
        let opts = TestRunOptions {
            data_in: Some(&self.seed_frame),
            ctx_in: Some(&md),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(batch),
            ..TestRunOptions::new()
        };
        let t = Instant::now();
        let out = prog
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN (live frames) of {GEN_PROGRAM}"))?;
        let wall = t.elapsed();
        #[expect(
            clippy::cast_precision_loss,
            reason = "a mean time per frame in ns is far below 2^52"
        )]
        let ns = out.duration.as_nanos() as f64;
        Ok(Played {
            wall,
            kernel_ns_per_frame: ns,
        })
    }
}

/// The reference object with room for `frames` frames in `BENCH_GEN_FRAMES` and its program
/// `program` loaded (`what` names it in errors). The stateful reference's table, which
/// neither the generator nor the player uses, is kept small.
fn load_frame_program(frames: u32, program: &str, what: &str) -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(GEN_FRAMES, frames)
        .map_max_entries(FLOWS, 1)
        .load(OBJECT)
        .with_context(|| format!("loading {what} (needs root or CAP_BPF)"))?;
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} missing from the reference object"))?
        .try_into()?;
    prog.load()
        .with_context(|| format!("loading the program of {what}"))?;
    Ok(ebpf)
}

/// The number of `frames`, each checked to fit the program's frame room.
fn check_frames(frames: &[Vec<u8>]) -> Result<u32> {
    if let Some((i, f)) = frames
        .iter()
        .enumerate()
        .find(|(_, f)| !(14..=GEN_FRAME_MAX).contains(&f.len()))
    {
        bail!(
            "frame {i} is {} bytes: the player and the generator take 14 to {GEN_FRAME_MAX}",
            f.len()
        );
    }
    u32::try_from(frames.len()).map_err(|_| anyhow!("{} frames are too many", frames.len()))
}

/// Writes `frames` into `BENCH_GEN_FRAMES` from index 0 on.
fn write_frames(ebpf: &mut Ebpf, frames: &[Vec<u8>]) -> Result<()> {
    let mut map: Array<_, GenFrame> = Array::try_from(
        ebpf.map_mut(GEN_FRAMES)
            .ok_or_else(|| anyhow!("map {GEN_FRAMES} missing"))?,
    )?;
    let mut v = GenFrame {
        len: 0,
        _pad: 0,
        data: [0; GEN_FRAME_ROOM],
    };
    for (i, f) in (0u32..).zip(frames) {
        v.data[..f.len()].copy_from_slice(f);
        v.data[f.len()..].fill(0);
        v.len = u32::try_from(f.len()).unwrap_or(u32::MAX);
        map.set(i, v, 0)
            .map_err(|e| anyhow!("map {GEN_FRAMES}: {e}"))?;
    }
    Ok(())
}

/// Sets the cursor of `BENCH_GEN_CURSOR`: the next frame is `next`, of `count`.
fn set_cursor(ebpf: &mut Ebpf, next: u32, count: u32) -> Result<()> {
    let mut c: Array<_, GenCursor> = Array::try_from(
        ebpf.map_mut(GEN_CURSOR)
            .ok_or_else(|| anyhow!("map {GEN_CURSOR} missing"))?,
    )?;
    c.set(0, GenCursor { next, count }, 0)
        .map_err(|e| anyhow!("map {GEN_CURSOR}: {e}"))
}

const REPLAY_PROGRAM: &str = "bench_replay";
const REPLAY_TARGET: &str = "BENCH_REPLAY_TARGET";

/// What one [`Replay::run`] call did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Replayed {
    /// The XDP action of the last run (the kernel returns only that one).
    pub last_action: u32,
    /// The kernel's mean time per frame over the call: the player's copy of the frame, the
    /// tail call and the target program.
    pub ns_per_frame: f64,
}

/// The in-kernel player: `bench_replay` runs a list of frames, one per run, back to back in
/// one `BPF_PROG_TEST_RUN` call (`repeat` = frames), handing each to a target program with a
/// tail call. What a program costs per packet in a stream of different packets (new flows,
/// a traffic mix), with warm code as in a driver's poll loop and without a system call per
/// packet; the player's own part is what it costs with the empty program as its target.
pub struct Replay {
    ebpf: Ebpf,
    capacity: u32,
    count: u32,
    /// The frame handed to the kernel; the player resizes it to each frame it writes.
    seed_frame: Vec<u8>,
}

impl Replay {
    /// Loads the player with room for `capacity` frames.
    pub fn load(capacity: u32) -> Result<Self> {
        if OBJECT.is_empty() {
            bail!("the bench reference object is empty: rebuild without AYA_BUILD_SKIP");
        }
        if capacity == 0 {
            bail!("the player needs room for at least one frame");
        }
        let ebpf = load_frame_program(capacity, REPLAY_PROGRAM, "the in-kernel player")?;
        Ok(Replay {
            ebpf,
            capacity,
            count: 0,
            seed_frame: vec![0; 64],
        })
    }

    /// The frames the next runs play, in order from the first (at most the capacity given
    /// to [`Replay::load`]).
    pub fn set_frames(&mut self, frames: &[Vec<u8>]) -> Result<()> {
        let count = check_frames(frames)?;
        if count == 0 || count > self.capacity {
            bail!(
                "{count} frames for a player with room for {}",
                self.capacity
            );
        }
        write_frames(&mut self.ebpf, frames)?;
        set_cursor(&mut self.ebpf, 0, count)?;
        self.count = count;
        Ok(())
    }

    /// The next frame played is the first again.
    pub fn rewind(&mut self) -> Result<()> {
        set_cursor(&mut self.ebpf, 0, self.count)
    }

    /// The program each frame is handed to (an XDP program: imfw's, or a reference's).
    pub fn set_target(&mut self, prog: &ProgramFd) -> Result<()> {
        let mut a = ProgramArray::try_from(
            self.ebpf
                .map_mut(REPLAY_TARGET)
                .ok_or_else(|| anyhow!("map {REPLAY_TARGET} missing"))?,
        )?;
        a.set(0, prog, 0)
            .map_err(|e| anyhow!("map {REPLAY_TARGET}: {e}"))
    }

    /// Plays the whole list once to each of `targets`, in turn from `targets[first % len]`
    /// (so that callers can vary which one meets the list first), each from the first frame.
    /// Returns what each call did, in the order of `targets`.
    pub fn play_to_each(&mut self, targets: &[&ProgramFd], first: usize) -> Result<Vec<Replayed>> {
        let mut out = vec![Replayed::default(); targets.len()];
        for k in 0..targets.len() {
            let t = (first + k) % targets.len();
            self.set_target(targets[t])?;
            self.rewind()?;
            out[t] = self.run(self.count)?;
        }
        Ok(out)
    }

    /// Plays `runs` frames (from the cursor on, wrapping at the end of the list) to the
    /// target in one call.
    pub fn run(&self, runs: u32) -> Result<Replayed> {
        if self.count == 0 {
            bail!("the player has no frames");
        }
        let prog: &Xdp = self
            .ebpf
            .program(REPLAY_PROGRAM)
            .ok_or_else(|| anyhow!("program {REPLAY_PROGRAM} missing"))?
            .try_into()?;
        let opts = TestRunOptions {
            data_in: Some(&self.seed_frame),
            repeat: runs,
            ..TestRunOptions::new()
        };
        let out = prog
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {REPLAY_PROGRAM}"))?;
        #[expect(
            clippy::cast_precision_loss,
            reason = "a mean time per frame in ns is far below 2^52"
        )]
        let ns = out.duration.as_nanos() as f64;
        Ok(Replayed {
            last_action: out.return_value,
            ns_per_frame: ns,
        })
    }
}
