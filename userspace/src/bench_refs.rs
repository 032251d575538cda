//! The bench's reference XDP programs (ebpf/src/bin/bench_refs.rs), embedded and run with
//! `BPF_PROG_TEST_RUN` like imfw's own program in [`crate::dataplane`], so that imfw's cost
//! per packet is read against figures measured the same way in the same run.

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::HashMap,
    programs::{TestRun, TestRunOptions, Xdp},
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
