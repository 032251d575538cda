//! One writer per directory: an exclusive advisory lock on `archive.lock`, held as long as
//! the [`super::Archive`] lives.
//!
//! Two writers appending to one directory would each extend their own idea of the chain head
//! and interleave records that do not chain. `flock(2)` locks (what [`File::try_lock`] takes
//! on Linux) belong to the open file description, so the kernel drops them when the holder
//! exits or is killed, and a second open in the same process conflicts as well. The lock is
//! advisory: it keeps out other [`super::Archive`]s, not other programs. Readers (verify,
//! search, export) take no lock, and the file is not a segment, so they never read it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::Path;

use super::{io_err, ArchiveError};

pub(crate) const LOCK_FILE: &str = "archive.lock";

/// The lock file holds a decimal pid and a newline; more than this is not ours.
const PID_TEXT_MAX: u64 = 32;

/// Takes the lock of `dir` without waiting and writes this process's pid into the lock file
/// (for the error message of the next writer). The lock lasts as long as the returned file.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, ArchiveError> {
    let path = dir.join(LOCK_FILE);
    // Not truncated on open: the holder's pid must survive a failed attempt.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(ArchiveError::Locked {
                dir: dir.to_owned(),
                pid: read_pid(&mut file),
            })
        }
        Err(TryLockError::Error(e)) => return Err(io_err(&path)(e)),
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(io_err(&path))?;
    Ok(file)
}

/// The holder's pid, if the file holds one (it is empty for the instant between the holder's
/// lock and its write).
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = Vec::new();
    file.take(PID_TEXT_MAX).read_to_end(&mut text).ok()?;
    std::str::from_utf8(&text).ok()?.trim().parse().ok()
}
