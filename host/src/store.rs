//! Folders flowgate keeps what it made for itself in (compiled artifacts, pulled modules),
//! and trusts on the way back in only because nobody else could have changed them.
//!
//! A [`PrivateDir`] is a folder the running user owns and only it can write, reached through
//! folders only it or root can change (or that others can write but, with the sticky bit,
//! not rename in), and through symlinks only it or root made: otherwise someone else could
//! put their files there, or swap the folder for theirs. Every folder on the way, symlinks
//! resolved, is checked each time the store is opened; one that fails is refused by name,
//! and nothing in it is read or written.
//!
//! Entries are sealed with HMAC-SHA256 under a key of the folder's own (32 random bytes in
//! `seal.key`, 0600, made exclusively and never through a symlink), so an entry copied in
//! from elsewhere, or made by anyone without the key, fails its seal. Files are written
//! whole: to a temporary file made exclusively under a random name, then renamed over the
//! entry, so readers never see half an entry and a symlink at a guessable name is never
//! followed.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The key's file, in the folder it seals.
const KEY_FILE: &str = "seal.key";
/// The key's length: SHA-256's block is longer, so HMAC uses it as it is.
const KEY_BYTES: usize = 32;
/// Symlinks followed on the way to a folder before it is refused (as the kernel's ELOOP).
const MAX_LINKS: usize = 40;
/// What a seal adds to an entry.
pub const SEAL_BYTES: usize = 32;

/// Why a store was not used, or an entry not read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The folder, or one on the way to it, is one someone else could change.
    #[error(
        "{path}: {problem}: the cache there is refused, nothing in it is read or written (a cache must be a folder the user running flowgate owns and only it can write, below folders only it or root can change)"
    )]
    Untrusted {
        /// The folder or symlink at fault.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// An entry larger than its reader takes.
    #[error("{path}: larger than {limit} bytes: not read")]
    TooLarge {
        /// The entry.
        path: PathBuf,
        /// The most its reader takes.
        limit: u64,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn untrusted(path: &Path, problem: impl Into<String>) -> StoreError {
    StoreError::Untrusted {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// A checked private folder and its sealing key.
pub struct PrivateDir {
    path: PathBuf,
    key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for PrivateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("PrivateDir")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PrivateDir {
    /// Opens `path` as a private folder, creating it (and missing parents) 0700 when absent,
    /// and reads its key, making one when there is none. A key that is not a regular file of
    /// the user's, 0600 or stricter and of the right length, is replaced with a warning:
    /// what it sealed is then made again.
    pub fn open(path: &Path) -> Result<PrivateDir, StoreError> {
        if !check_chain(path)? {
            create_private_dir(path).map_err(io_error(path))?;
            // Made now: checked again, in case someone else made a folder first.
            if !check_chain(path)? {
                return Err(io_error(path)(io::ErrorKind::NotFound.into()));
            }
        }
        let key = load_or_make_key(path)?;
        Ok(PrivateDir {
            path: path.to_owned(),
            key,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The private folder `name` inside this one, sealed with the same key.
    pub fn subdir(&self, name: &str) -> Result<PrivateDir, StoreError> {
        let path = self.entry_path(name)?;
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(&path)(e)),
        }
        let meta = std::fs::symlink_metadata(&path).map_err(io_error(&path))?;
        if !meta.is_dir() {
            return Err(untrusted(&path, "not a folder"));
        }
        check_own(&path, &meta)?;
        Ok(PrivateDir {
            path,
            key: self.key,
        })
    }

    fn entry_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        let mut parts = Path::new(name).components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(_)), None) if name != KEY_FILE => Ok(self.path.join(name)),
            _ => Err(untrusted(
                &self.path.join(name),
                "not an entry's name (one plain file name)",
            )),
        }
    }

    /// The seal of `parts`, in order: HMAC-SHA256 under the folder's key.
    pub fn seal(&self, parts: &[&[u8]]) -> [u8; SEAL_BYTES] {
        self.mac(parts).finalize().into_bytes().into()
    }

    /// Whether `seal` is the seal of `parts` (compared in constant time).
    pub fn verify(&self, parts: &[&[u8]], seal: &[u8]) -> bool {
        self.mac(parts).verify_slice(seal).is_ok()
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        #[allow(clippy::expect_used)] // HMAC takes a key of any length
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        for part in parts {
            // Each part's length first: parts cannot be shifted into one another.
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac
    }

    /// The entry `name`, or `None` when there is none; a symlink or anything but a regular
    /// file is an error, and so is an entry over `limit` bytes.
    pub fn read(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.entry_path(name)?;
        let file = match open_no_follow(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path)(e)),
        };
        let meta = file.metadata().map_err(io_error(&path))?;
        if !meta.is_file() {
            return Err(untrusted(&path, "not a regular file"));
        }
        if meta.len() > limit {
            return Err(StoreError::TooLarge { path, limit });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_error(&path))?;
        if bytes.len() as u64 > limit {
            return Err(StoreError::TooLarge { path, limit });
        }
        Ok(Some(bytes))
    }

    /// Writes the entry `name` whole or not at all.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.entry_path(name)?;
        write_whole(&self.path, &path, bytes)
    }
}

/// Writes `path`, in `dir`, whole or not at all: the bytes go to a temporary file made
/// exclusively (`O_EXCL`, mode 0600, a random name: never through a symlink) and are synced,
/// then the file is renamed over `path` (which replaces a symlink there, never its target).
fn write_whole(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp")
        .tempfile_in(dir)
        .map_err(io_error(dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_error(tmp.path()))?;
    tmp.persist(path).map_err(|e| io_error(path)(e.error))?;
    Ok(())
}

/// Creates `dir` (and missing parents) readable by its owner only.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn open_no_follow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// A folder above the store: its owner (root or the user) and anyone who can write it
/// decide what the path below it leads to; others may write it only if the sticky bit keeps
/// them from renaming what is not theirs.
fn check_above(path: &Path, meta: &Metadata) -> Result<(), StoreError> {
    let (uid, mode) = (meta.uid(), meta.mode());
    if uid != 0 && uid != euid() {
        return Err(untrusted(
            path,
            format!("owned by uid {uid}, who could replace what is below it"),
        ));
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(untrusted(
            path,
            format!(
                "writable by {} (mode {:o}, no sticky bit), who could replace what is below it",
                others(mode),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// The store itself: the user's own, and only the user's to write.
fn check_own(path: &Path, meta: &Metadata) -> Result<(), StoreError> {
    let (uid, mode, me) = (meta.uid(), meta.mode(), euid());
    if uid != me {
        return Err(untrusted(
            path,
            format!("owned by uid {uid}, not by the user running flowgate (uid {me})"),
        ));
    }
    if mode & 0o022 != 0 {
        return Err(untrusted(
            path,
            format!("writable by {} (mode {:o})", others(mode), mode & 0o7777),
        ));
    }
    Ok(())
}

fn others(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "its group and others",
        (true, false) => "its group",
        _ => "others",
    }
}

/// Walks `dir` from `/` as the kernel resolves it, checking every folder it passes through
/// (symlinks resolved, each symlink's owner checked too), and the folder itself as the
/// store. `false`: the walk stopped at a component that does not exist yet (everything on
/// the way to it was checked).
fn check_chain(dir: &Path) -> Result<bool, StoreError> {
    let absolute = std::path::absolute(dir).map_err(io_error(dir))?;
    let mut todo: std::collections::VecDeque<PathBuf> = std::collections::VecDeque::new();
    push_front(&mut todo, &absolute);
    let mut at = PathBuf::from("/");
    let root = std::fs::symlink_metadata(&at).map_err(io_error(&at))?;
    check_above(&at, &root)?;
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        match part.components().next() {
            Some(Component::RootDir) => at = PathBuf::from("/"),
            Some(Component::ParentDir) => {
                at.pop();
            }
            Some(Component::Normal(name)) => {
                let next = at.join(name);
                let meta = match std::fs::symlink_metadata(&next) {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(io_error(&next)(e)),
                };
                if meta.file_type().is_symlink() {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(untrusted(
                            dir,
                            format!("more than {MAX_LINKS} symbolic links on the way"),
                        ));
                    }
                    let uid = meta.uid();
                    if uid != 0 && uid != euid() {
                        return Err(untrusted(
                            &next,
                            format!("a symbolic link made by uid {uid}"),
                        ));
                    }
                    let target = std::fs::read_link(&next).map_err(io_error(&next))?;
                    push_front(&mut todo, &target);
                    continue;
                }
                if !meta.is_dir() {
                    return Err(untrusted(&next, "not a folder"));
                }
                if todo.is_empty() {
                    check_own(&next, &meta)?;
                } else {
                    check_above(&next, &meta)?;
                }
                at = next;
            }
            _ => {}
        }
    }
    let meta = std::fs::symlink_metadata(&at).map_err(io_error(&at))?;
    check_own(&at, &meta)?;
    Ok(true)
}

/// Puts `path`'s components at the front of `todo`, in order.
fn push_front(todo: &mut std::collections::VecDeque<PathBuf>, path: &Path) {
    for part in path.components().rev() {
        todo.push_front(PathBuf::from(part.as_os_str()));
    }
}

/// The folder's key: read when it is sound, else made (and put in place exclusively unless a
/// bad one is being replaced).
fn load_or_make_key(dir: &Path) -> Result<[u8; KEY_BYTES], StoreError> {
    let path = dir.join(KEY_FILE);
    let replace = match read_key(&path) {
        Ok(Some(key)) => return Ok(key),
        Ok(None) => false,
        Err(problem) => {
            tracing::warn!(
                event = "cache-key-replaced",
                path = %path.display(),
                problem,
                "the cache's key is not trusted: a new one is made, and what the old one sealed is made again"
            );
            true
        }
    };
    let mut key = [0u8; KEY_BYTES];
    getrandom::getrandom(&mut key)
        .map_err(|e| io_error(&path)(io::Error::other(format!("no random key: {e}"))))?;
    // Made 0600 by the temporary file.
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp")
        .tempfile_in(dir)
        .map_err(io_error(dir))?;
    tmp.write_all(&key)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_error(tmp.path()))?;
    if replace {
        tmp.persist(&path).map_err(|e| io_error(&path)(e.error))?;
        return Ok(key);
    }
    match tmp.persist_noclobber(&path) {
        Ok(_) => Ok(key),
        // Another process made one at the same moment: theirs is the folder's key.
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => match read_key(&path) {
            Ok(Some(key)) => Ok(key),
            Ok(None) => Err(io_error(&path)(io::ErrorKind::NotFound.into())),
            Err(problem) => Err(untrusted(&path, problem)),
        },
        Err(e) => Err(io_error(&path)(e.error)),
    }
}

/// The key at `path`: `None` when there is none, the problem when it is not one to trust.
fn read_key(path: &Path) -> Result<Option<[u8; KEY_BYTES]>, String> {
    let mut file = match open_no_follow(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err("it is a symbolic link".into());
        }
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    let meta = file.metadata().map_err(|e| format!("unreadable: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != euid() {
        return Err(format!("owned by uid {}", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "readable or writable by others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    if meta.len() != KEY_BYTES as u64 {
        return Err(format!("{} bytes, not {KEY_BYTES}", meta.len()));
    }
    let mut key = [0u8; KEY_BYTES];
    file.read_exact(&mut key)
        .map_err(|e| format!("unreadable: {e}"))?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("flowgate-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        create_private_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn entries_sealed_with_another_key_fail() {
        let dir = scratch("keys");
        let (a, b) = (dir.join("a"), dir.join("b"));
        let (a, b) = (PrivateDir::open(&a).unwrap(), PrivateDir::open(&b).unwrap());
        let seal = a.seal(&[b"id", b"bytes"]);
        assert!(a.verify(&[b"id", b"bytes"], &seal));
        assert!(!b.verify(&[b"id", b"bytes"], &seal));
        // Parts cannot be shifted into one another.
        assert!(!a.verify(&[b"idb", b"ytes"], &seal));
        // The key stays: opened again, the folder seals the same.
        let again = PrivateDir::open(a.path()).unwrap();
        assert!(again.verify(&[b"id", b"bytes"], &seal));
        let mode = std::fs::metadata(a.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_key_others_can_read_or_a_symlinked_key_is_replaced() {
        let dir = scratch("bad-key");
        let store = PrivateDir::open(&dir).unwrap();
        let seal = store.seal(&[b"x"]);
        let key = dir.join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let replaced = PrivateDir::open(&dir).unwrap();
        assert!(!replaced.verify(&[b"x"], &seal), "a new key");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A symlink in the key's place, to a file of known bytes: not used, not written.
        let known = dir.join("known");
        std::fs::write(&known, [7u8; KEY_BYTES]).unwrap();
        std::fs::set_permissions(&known, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&key).unwrap();
        std::os::unix::fs::symlink(&known, &key).unwrap();
        let store = PrivateDir::open(&dir).unwrap();
        assert_ne!(store.key, [7u8; KEY_BYTES]);
        assert_eq!(std::fs::read(&known).unwrap(), [7u8; KEY_BYTES]);
        assert!(!std::fs::symlink_metadata(&key).unwrap().is_symlink());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_others_can_write_is_refused() {
        let dir = scratch("modes");
        let store = dir.join("store");
        create_private_dir(&store).unwrap();
        for mode in [0o770, 0o707, 0o777, 0o1777] {
            std::fs::set_permissions(&store, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = PrivateDir::open(&store).unwrap_err();
            assert!(
                matches!(&e, StoreError::Untrusted { path, .. } if *path == store),
                "{mode:o}: {e}"
            );
            assert!(e.to_string().contains("writable by"), "{e}");
        }
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
        PrivateDir::open(&store).unwrap();
        // A folder above it others can write, without the sticky bit.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = PrivateDir::open(&store).unwrap_err();
        assert!(
            matches!(&e, StoreError::Untrusted { path, .. } if *path == dir),
            "{e}"
        );
        // With it, they cannot rename what is not theirs.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        PrivateDir::open(&store).unwrap();
        // Through `..` and a symlink, the same folders are checked.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = PrivateDir::open(&store.join("../store")).unwrap_err();
        assert!(matches!(&e, StoreError::Untrusted { .. }), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("store", dir.join("link")).unwrap();
        PrivateDir::open(&dir.join("link")).unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(PrivateDir::open(&dir.join("link")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn entries_are_read_only_as_regular_files_within_their_limit() {
        let dir = scratch("entries");
        let store = PrivateDir::open(&dir).unwrap();
        store.write("e", b"0123456789").unwrap();
        assert_eq!(store.read("e", 10).unwrap().unwrap(), b"0123456789");
        assert!(matches!(
            store.read("e", 9),
            Err(StoreError::TooLarge { .. })
        ));
        assert_eq!(store.read("absent", 10).unwrap(), None);
        std::os::unix::fs::symlink(dir.join("e"), dir.join("link")).unwrap();
        assert!(store.read("link", 10).is_err());
        for name in ["../e", "a/b", "", KEY_FILE, "."] {
            assert!(store.read(name, 10).is_err(), "{name:?}");
            assert!(store.write(name, b"x").is_err(), "{name:?}");
        }
        // Writing replaces a symlink, never its target.
        store.write("link", b"new").unwrap();
        assert_eq!(std::fs::read(dir.join("e")).unwrap(), b"0123456789");
        assert_eq!(store.read("link", 10).unwrap().unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
