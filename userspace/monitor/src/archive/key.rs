//! The secret seal key and HMAC-SHA256 (RFC 2104) over length-prefixed fields.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::format::Hash;
use super::ArchiveError;

type HmacSha256 = Hmac<Sha256>;

/// Key file contents: 64 lowercase hex digits and an optional newline.
const KEY_FILE_MAX: u64 = 65;

/// The secret that authenticates seals and the head file. Keep it outside the archive
/// directory: whoever can read it can rewrite the archive undetectably.
#[derive(Clone)]
pub struct SealKey {
    mac: HmacSha256,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    pub fn from_bytes(bytes: [u8; 32]) -> SealKey {
        // HMAC accepts keys of any length (RFC 2104 section 2), so this cannot fail.
        let mac =
            <HmacSha256 as Mac>::new_from_slice(&bytes).expect("HMAC takes keys of any length");
        SealKey { mac }
    }

    /// Reads a key file: 64 lowercase hex digits, optionally followed by a newline, readable
    /// by its owner only (group or other permissions are refused, as ssh does).
    pub fn load(path: &Path) -> Result<SealKey, ArchiveError> {
        let bad = |reason: &str| ArchiveError::Key {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let file = File::open(path).map_err(super::io_err(path))?;
        let meta = file.metadata().map_err(super::io_err(path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(bad("readable or writable by group or others; chmod 600 it"));
        }
        let mut text = Vec::new();
        file.take(KEY_FILE_MAX + 1)
            .read_to_end(&mut text)
            .map_err(super::io_err(path))?;
        let hex = text.strip_suffix(b"\n").unwrap_or(&text);
        let hash = Hash::from_hex(hex).ok_or_else(|| bad("expected 64 lowercase hex digits"))?;
        Ok(SealKey::from_bytes(hash.0))
    }

    /// Loads the key file, or creates it (mode 0600, 32 bytes from /dev/urandom) if absent.
    pub fn load_or_create(path: &Path) -> Result<SealKey, ArchiveError> {
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        let mut file = match created {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return SealKey::load(path),
            Err(e) => return Err(super::io_err(path)(e)),
        };
        let mut bytes = [0u8; 32];
        let written = File::open("/dev/urandom")
            .and_then(|mut r| r.read_exact(&mut bytes))
            .and_then(|()| writeln!(file, "{}", Hash(bytes)))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            // A half-written key file would be refused on every later start.
            let _ = fs::remove_file(path);
            return Err(super::io_err(path)(e));
        }
        Ok(SealKey::from_bytes(bytes))
    }

    /// HMAC over a domain string and fields, each prefixed with its length so that no two
    /// field lists give the same input.
    pub(crate) fn mac(&self, domain: &str, fields: &[&[u8]]) -> Hash {
        Hash(self.keyed(domain, fields).finalize().into_bytes().into())
    }

    /// Compares in constant time.
    pub(crate) fn check(&self, domain: &str, fields: &[&[u8]], mac: &Hash) -> bool {
        self.keyed(domain, fields).verify_slice(&mac.0).is_ok()
    }

    fn keyed(&self, domain: &str, fields: &[&[u8]]) -> HmacSha256 {
        let mut m = self.mac.clone();
        m.update(&(domain.len() as u64).to_be_bytes());
        m.update(domain.as_bytes());
        for field in fields {
            m.update(&(field.len() as u64).to_be_bytes());
            m.update(field);
        }
        m
    }
}
