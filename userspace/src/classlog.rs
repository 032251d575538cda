//! The controller's side of the classification log: the XDP program appends each classified
//! flow's `FlowEvent` to its CPU's section of a memory-mapped array, and [`ClassLog::read`]
//! takes them from there, without a system call (see `imfw_common::event::ClassLogPos` for the
//! protocol).

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Result, anyhow, bail};
use aya::maps::{Map, MapData};
use imfw_common::{
    event::{ClassLogPos, FlowEvent},
    maps::CLASS_LOG_SLOTS,
};

/// A map's values mapped into this process (`BPF_F_MMAPABLE`), unmapped on drop.
struct Mapping {
    /// Page-aligned, so aligned for every value type.
    ptr: NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access goes through the atomics and
// volatile reads of `ClassLog`, whichever thread makes it.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps the `len` bytes of values of the array `map`, read-only or read-write.
    fn new(name: &str, map: &MapData, len: usize, write: bool) -> Result<Self> {
        let prot = if write { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks `len` against the
        // map's size and the fd's flags.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, map.fd().as_fd().as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            bail!("mapping {name} into memory ({len} bytes): {}", std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p).ok_or_else(|| anyhow!("mapping {name}: null address"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

/// Reads the classification log of one loaded program.
pub struct ClassLog {
    records: Mapping,
    positions: Mapping,
    cpus: usize,
    /// Holds the maps open for as long as they are mapped here.
    _maps: [MapData; 2],
}

impl ClassLog {
    /// Entries `IMFW_CLASSLOG` and `IMFW_CLASSPOS` need for `cpus` CPUs (set at load time).
    pub fn entries(cpus: usize) -> Result<(u32, u32)> {
        let c = u32::try_from(cpus).map_err(|_| anyhow!("{cpus} CPUs"))?;
        let records = c.checked_mul(CLASS_LOG_SLOTS).ok_or_else(|| anyhow!("{cpus} CPUs: classification log too large"))?;
        Ok((records, c))
    }

    /// Maps the two arrays of a program loaded with [`ClassLog::entries`] for `cpus` CPUs.
    pub fn new(records: Map, positions: Map, cpus: usize) -> Result<Self> {
        let (Map::Array(records), Map::Array(positions)) = (records, positions) else {
            bail!("the classification log's maps are not arrays");
        };
        let (n, _) = Self::entries(cpus)?;
        let records_len = n as usize * size_of::<FlowEvent>();
        let positions_len = cpus * size_of::<ClassLogPos>();
        Ok(ClassLog {
            records: Mapping::new("the classification log", &records, records_len, false)?,
            positions: Mapping::new("the classification log's positions", &positions, positions_len, true)?,
            cpus,
            _maps: [records, positions],
        })
    }

    /// Appends to `out` every record written since the last read, CPU by CPU (each CPU's in
    /// the order written), and frees their slots.
    pub fn read(&mut self, out: &mut Vec<FlowEvent>) {
        const _: () = assert!(size_of::<ClassLogPos>() == 64 && size_of::<FlowEvent>().is_multiple_of(8));
        for cpu in 0..self.cpus {
            // SAFETY: `cpu` < the mapped positions; the mapping is page-aligned, so each u64
            // field is aligned. The kernel writes `written` and this reader `read`.
            let (written, read) = unsafe {
                let pos = self.positions.ptr.as_ptr().cast::<ClassLogPos>().add(cpu);
                (AtomicU64::from_ptr(&raw mut (*pos).written), AtomicU64::from_ptr(&raw mut (*pos).read))
            };
            // Acquire: the records counted are visible once the count is.
            let end = written.load(Ordering::Acquire);
            let start = read.load(Ordering::Relaxed);
            // The program never runs more than a section ahead; a count that says otherwise is
            // not trusted past one section.
            let start = start.max(end.saturating_sub(u64::from(CLASS_LOG_SLOTS)));
            for i in start..end {
                let index = cpu * CLASS_LOG_SLOTS as usize + (i % u64::from(CLASS_LOG_SLOTS)) as usize;
                // SAFETY: `index` < cpus * CLASS_LOG_SLOTS, the records mapped; FlowEvent is
                // plain integers, any bytes are a value; the slot is not rewritten before
                // `read` passes it (below).
                out.push(unsafe { self.records.ptr.as_ptr().cast::<FlowEvent>().add(index).read_volatile() });
            }
            // Release: the records are read before their slots are handed back.
            read.store(end, Ordering::Release);
        }
    }
}
