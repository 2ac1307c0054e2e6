//! Pulled modules kept on disk by manifest digest, so that a gateway restarted while its
//! registry is down starts from the module it last pulled (fail-static). An entry is the
//! module followed by sha256(manifest digest ++ module): an entry copied, altered or cut is
//! not loaded. A tag remembers the digest it last resolved to.

use std::path::{Path, PathBuf};

use super::{Digest, Reference};

/// The cache folder (created 0700).
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache in `dir`.
    pub fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    fn entry(&self, manifest: &Digest) -> PathBuf {
        self.dir.join(format!(
            "{}.module",
            &manifest.to_string()["sha256:".len()..]
        ))
    }

    fn tag_file(&self, r: &Reference) -> Option<PathBuf> {
        let tag = r.tag.as_ref()?;
        let key = Digest::of(format!("{}/{}:{tag}", r.registry, r.repository).as_bytes());
        Some(
            self.dir
                .join("tags")
                .join(&key.to_string()["sha256:".len()..]),
        )
    }

    fn seal(manifest: &Digest, module: &[u8]) -> Digest {
        let mut bytes = manifest.0.to_vec();
        bytes.extend_from_slice(module);
        Digest::of(&bytes)
    }

    /// Keeps `module`, pulled as `manifest` for `r` (whose tag now resolves to it).
    pub fn store(&self, r: &Reference, manifest: &Digest, module: &[u8]) -> std::io::Result<()> {
        crate::wasm::create_private_dir(&self.dir.join("tags"))?;
        let mut entry = module.to_vec();
        entry.extend_from_slice(&Self::seal(manifest, module).0);
        write_whole(&self.entry(manifest), &entry)?;
        if let Some(tag_file) = self.tag_file(r) {
            write_whole(&tag_file, manifest.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// The module `r` was last pulled as, when the cache has it intact: by its pinned digest,
    /// or by the digest its tag last resolved to.
    pub fn load(&self, r: &Reference) -> Option<(Digest, Vec<u8>)> {
        let manifest = match r.digest {
            Some(d) => d,
            None => {
                let text = std::fs::read_to_string(self.tag_file(r)?).ok()?;
                Digest::parse(text.trim()).ok()?
            }
        };
        let entry = std::fs::read(self.entry(&manifest)).ok()?;
        let split = entry.len().checked_sub(32)?;
        let (module, seal) = entry.split_at(split);
        (Self::seal(&manifest, module).0[..] == *seal).then(|| (manifest, module.to_vec()))
    }
}

/// Writes `path` whole or not at all.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
