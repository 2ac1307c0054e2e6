//! Pulled modules kept on disk by manifest digest, so that a gateway restarted while its
//! registry is down starts from the module it last pulled (fail-static). The folder is a
//! [`PrivateDir`]: one another user could change is refused and never read. An entry is the
//! module followed by its seal under the folder's key, bound to the manifest digest; a tag
//! remembers the digest it last resolved to, sealed with the tag's name. An entry copied,
//! altered, cut or made without the key is not loaded.

use std::path::PathBuf;

use super::{Digest, Reference};
use crate::store::{PrivateDir, SEAL_BYTES, StoreError};

/// The largest entry read back: a module over it could not have been pulled (the registry's
/// limit is far below), so it is not read.
const MAX_ENTRY_BYTES: u64 = 1 << 30;

/// What the cache remembers of a module's signature, checked again against the keys trusted
/// when it stands in for the registry: the key's fingerprint and the identity signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignedRecord {
    /// The SHA-256 of the key's SubjectPublicKeyInfo DER.
    pub(crate) fingerprint: Digest,
    /// The identity the payload named (`docker-reference`).
    pub(crate) identity: String,
}

/// The largest signer record read back (an identity is at most 512 characters).
const MAX_SIGNER_BYTES: u64 = 1024;

/// The cache folder (created 0700).
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache in `dir`, checked each time it is used.
    pub fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    fn entry(manifest: &Digest) -> String {
        format!("{}.module", &manifest.to_string()["sha256:".len()..])
    }

    fn signer_entry(manifest: &Digest) -> String {
        format!("{}.signer", &manifest.to_string()["sha256:".len()..])
    }

    fn tag_key(r: &Reference) -> Option<String> {
        let tag = r.tag.as_ref()?;
        Some(format!("{}/{}:{tag}", r.registry, r.repository))
    }

    fn tag_file(key: &str) -> String {
        Digest::of(key.as_bytes()).to_string()["sha256:".len()..].to_owned()
    }

    /// Keeps `module`, pulled as `manifest` for `r` (whose tag now resolves to it).
    pub fn store(&self, r: &Reference, manifest: &Digest, module: &[u8]) -> Result<(), StoreError> {
        let dir = PrivateDir::open(&self.dir)?;
        let mut entry = module.to_vec();
        entry.extend_from_slice(&dir.seal(&[b"module".as_slice(), &manifest.0, module]));
        dir.write(&Self::entry(manifest), &entry)?;
        if let Some(key) = Self::tag_key(r) {
            let text = manifest.to_string();
            let mut tag = text.as_bytes().to_vec();
            tag.extend_from_slice(&dir.seal(&[b"tag".as_slice(), key.as_bytes(), text.as_bytes()]));
            dir.subdir("tags")?.write(&Self::tag_file(&key), &tag)?;
        }
        Ok(())
    }

    /// Remembers that the module pulled as `manifest` was signed as `record` says.
    pub(crate) fn store_signer(
        &self,
        manifest: &Digest,
        record: &SignedRecord,
    ) -> Result<(), StoreError> {
        let dir = PrivateDir::open(&self.dir)?;
        let text = format!("{} {}", record.fingerprint, record.identity);
        let mut entry = text.as_bytes().to_vec();
        entry.extend_from_slice(&dir.seal(&[b"signer".as_slice(), &manifest.0, text.as_bytes()]));
        dir.write(&Self::signer_entry(manifest), &entry)
    }

    /// What the cache remembers of the signature of the module pulled as `manifest`, when it
    /// has a record this cache sealed.
    pub(crate) fn load_signer(&self, manifest: &Digest) -> Option<SignedRecord> {
        let dir = PrivateDir::open(&self.dir).ok()?;
        let name = Self::signer_entry(manifest);
        let text = read_sealed(&dir, &dir, &name, MAX_SIGNER_BYTES, b"signer", &manifest.0)?;
        let (fingerprint, identity) = std::str::from_utf8(&text).ok()?.split_once(' ')?;
        Some(SignedRecord {
            fingerprint: Digest::parse(fingerprint).ok()?,
            identity: identity.to_owned(),
        })
    }

    /// The module `r` was last pulled as, when the cache has it intact: by its pinned digest,
    /// or by the digest its tag last resolved to. A refused folder, or an entry this cache did
    /// not seal, gives nothing, with a warning.
    pub fn load(&self, r: &Reference) -> Option<(Digest, Vec<u8>)> {
        let dir = match PrivateDir::open(&self.dir) {
            Ok(dir) => dir,
            Err(e) => {
                tracing::warn!(
                    event = "cache-refused",
                    error = %e,
                    "the module cache is not used: no module is taken from it"
                );
                return None;
            }
        };
        let manifest = match r.digest {
            Some(d) => d,
            None => {
                let key = Self::tag_key(r)?;
                let tags = dir.subdir("tags").map_err(warn_unread).ok()?;
                let file = Self::tag_file(&key);
                let text = read_sealed(&dir, &tags, &file, 1024, b"tag", key.as_bytes())?;
                Digest::parse(std::str::from_utf8(&text).ok()?).ok()?
            }
        };
        let name = Self::entry(&manifest);
        let module = read_sealed(&dir, &dir, &name, MAX_ENTRY_BYTES, b"module", &manifest.0)?;
        Some((manifest, module))
    }
}

/// What the entry `name` of `folder` holds (at most `limit` bytes), when it ends in the seal
/// of `cache` (the cache's folder, whose key seals) over `kind`, `key` and what it holds;
/// nothing, with a warning, when it is unreadable or does not.
fn read_sealed(
    cache: &PrivateDir,
    folder: &PrivateDir,
    name: &str,
    limit: u64,
    kind: &[u8],
    key: &[u8],
) -> Option<Vec<u8>> {
    let mut entry = folder.read(name, limit).map_err(warn_unread).ok()??;
    let len = entry.len().checked_sub(SEAL_BYTES)?;
    if !cache.verify(&[kind, key, &entry[..len]], &entry[len..]) {
        warn_unsealed(&folder.path().join(name));
        return None;
    }
    entry.truncate(len);
    Some(entry)
}

fn warn_unread(e: StoreError) {
    tracing::warn!(event = "cache-unreadable", error = %e, "a module cache entry is not read");
}

fn warn_unsealed(path: &std::path::Path) {
    tracing::warn!(
        event = "cache-unsealed",
        path = %path.display(),
        "a module cache entry does not carry this cache's seal (altered, copied in, or made without its key): ignored"
    );
}
