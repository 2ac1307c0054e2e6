//! The admin API's audit trail: one record for every request that changes or tries to change
//! the gateway (swaps, rollbacks, watch actions; refusals included): when, who asked (the
//! [`Caller`]), what was asked, the releases before and after, the result. The changes the
//! gateway makes on its own account (the tag watch's swaps and shadows, SIGHUP's reloads,
//! auto-reverts) and their refusals are recorded the same way, as the gateway's, once an
//! admin API serves it. Each record goes to the log (`event = "audit"`) and, with an audit
//! file ([`AuditLog::open`], `--audit-log`), is appended to it as one JSON line and written
//! through to the disk before the answer is sent.
//! A change whose record cannot be written is not made: the record is written under the
//! gateway's swap lock, after the change is prepared and before it goes live.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::gateway::{OwnChange, Release};

/// Who made an admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A process on the Unix socket, as the kernel names it (`SO_PEERCRED`).
    Socket {
        /// Its user id.
        uid: u32,
        /// Its group id.
        gid: u32,
        /// Its process id, where the kernel gives one.
        pid: Option<i32>,
        /// The name of the token it presented, when the token file names its tokens.
        token: Option<String>,
    },
    /// A client over TCP.
    Tcp {
        /// Its address and port.
        addr: SocketAddr,
        /// The name of the token it presented, when the token file names its tokens.
        token: Option<String>,
    },
}

impl Caller {
    fn json(&self) -> Value {
        match self {
            Caller::Socket {
                uid,
                gid,
                pid,
                token,
            } => {
                json!({"transport": "unix", "uid": uid, "gid": gid, "pid": pid, "token": token})
            }
            Caller::Tcp { addr, token } => {
                json!({"transport": "tcp", "addr": addr.to_string(), "token": token})
            }
        }
    }
}

/// Why the audit file could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file could not be opened.
    #[error("the audit log {path} could not be opened: {error}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not a regular file of the gateway's own user, with one name, that no one
    /// else may read or write.
    #[error(
        "the audit log {path} is not a regular file of this user's alone, with one link, that only its owner can read (mode {mode:o}): it would say who changed the gateway to others, or be theirs to rewrite"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// A record could not be written through to the disk.
    #[error("the audit log {path} could not be written: {error}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// Where audit records go: the log, and the audit file (or an embedder's writer) when there
/// is one.
#[derive(Default)]
pub struct AuditLog {
    sink: Option<(PathBuf, Mutex<Sink>)>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("to", &self.sink.as_ref().map(|(name, _)| name))
            .finish()
    }
}

enum Sink {
    /// Written through to the disk after each record.
    File(File),
    /// Flushed after each record.
    Writer(Box<dyn Write + Send>),
}

impl Sink {
    /// Appends one record. A file that took only part of it, or could not write it through
    /// to the disk, is cut back to its length before (so that no refused change reads as
    /// made, and the next record starts a line of its own).
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File(file) => {
                let before = file.metadata()?.len();
                let written = file.write_all(line).and_then(|()| file.sync_data());
                if written.is_err() {
                    let _ = file.set_len(before);
                }
                written
            }
            Sink::Writer(writer) => writer.write_all(line).and_then(|()| writer.flush()),
        }
    }
}

/// A release as a record names it, on either side of a change.
pub(super) fn release_json(release: &Release) -> Value {
    json!({
        "generation": release.generation,
        "etag": release.etag(),
        "module_sha256": release.module_digest(),
        "config_sha256": release.config_digest,
        "source": release.source,
        "signer": release.signer.as_ref().map(signer_json),
        "origin": release.origin.as_str(),
        "why": release.why,
    })
}

/// Who signed a release's module: the key's file and fingerprint, and the identity signed.
pub(super) fn signer_json(signer: &crate::oci::Signer) -> Value {
    json!({
        "key": signer.key(),
        "fingerprint": signer.fingerprint().to_string(),
        "identity": signer.identity(),
        "signed_digest": signer.digest().to_string(),
        "detached": signer.detached(),
    })
}

impl AuditLog {
    /// Records to the log only.
    pub fn log_only() -> Self {
        AuditLog::default()
    }

    /// Appends records to `path` as well: created for its owner alone (0600) if missing,
    /// never through a symbolic link (nor waiting on a FIFO); an existing file must be a
    /// regular file of this process's user, with one link, that no one else can read or
    /// write.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|error| AuditError::Open {
                path: path.to_owned(),
                error,
            })?;
        let meta = file.metadata().map_err(|error| AuditError::Open {
            path: path.to_owned(),
            error,
        })?;
        let mode = meta.mode() & 0o7777;
        let mine = meta.uid() == nix::unistd::geteuid().as_raw();
        if !meta.is_file() || !mine || meta.nlink() != 1 || mode & 0o077 != 0 {
            return Err(AuditError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        Ok(AuditLog {
            sink: Some((path.to_owned(), Mutex::new(Sink::File(file)))),
        })
    }

    /// Appends records to `writer` (an embedder's own sink, `name` in errors), flushed after
    /// each: a record that cannot be written refuses its change, as with a file.
    pub fn to_writer(name: &str, writer: Box<dyn Write + Send>) -> Self {
        AuditLog {
            sink: Some((PathBuf::from(name), Mutex::new(Sink::Writer(writer)))),
        }
    }

    /// Writes one record: `request` (such as `PUT /config`) by `caller`, what served (or the
    /// watch's state) `before` and `after` it (none when nothing changed), and the `result`
    /// (`changed`, or the refusal's reason) with its error, if any.
    pub fn record(
        &self,
        caller: Option<&Caller>,
        request: &str,
        (before, after): (Value, Option<Value>),
        result: &str,
        error: Option<&str>,
    ) -> Result<(), AuditError> {
        let caller = caller.map_or(Value::Null, Caller::json);
        self.write(caller, request, (before, after), result, error)
    }

    /// Writes the record of a change the gateway makes on its own account, `what` (such as
    /// `auto-revert`; see [`crate::gateway::OwnRecord`]), from release `before`, made or
    /// refused: its caller is `{"transport": "gateway"}`. SIGHUP's reloads are among them:
    /// the gateway is not told who sent the signal.
    pub fn record_own(
        &self,
        what: &str,
        before: &Release,
        change: OwnChange<'_>,
    ) -> Result<(), AuditError> {
        let caller = json!({"transport": "gateway"});
        let before = release_json(before);
        match change {
            OwnChange::Made(after) => {
                let after = Some(release_json(after));
                self.write(caller, what, (before, after), "changed", None)
            }
            OwnChange::Refused { reason, error } => {
                self.write(caller, what, (before, None), reason, Some(error))
            }
        }
    }

    fn write(
        &self,
        caller: Value,
        request: &str,
        (before, after): (Value, Option<Value>),
        result: &str,
        error: Option<&str>,
    ) -> Result<(), AuditError> {
        // The key that signed the module of the release made, when it was signed.
        let signing_key = after
            .as_ref()
            .and_then(|a| a.get("signer"))
            .cloned()
            .unwrap_or(Value::Null);
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_millis());
        let record = json!({
            "time_unix_ms": time_ms,
            "caller": caller,
            "request": request,
            "before": before,
            "after": after,
            "signing_key": signing_key,
            "result": result,
            "error": error,
        });
        if let Some((path, sink)) = &self.sink {
            let mut line = record.to_string();
            line.push('\n');
            let mut sink = sink
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            sink.append(line.as_bytes())
                .map_err(|error| AuditError::Write {
                    path: path.clone(),
                    error,
                })?;
        }
        // Logged once it is in the file: a record that could not be written did not happen.
        tracing::info!(
            event = "audit",
            record = %record,
            "audit: {request} by {caller}: {result}"
        );
        Ok(())
    }
}
