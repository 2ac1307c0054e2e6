//! Where the admin API listens and how a client reaches it: a Unix domain socket or TCP,
//! behind one [`Stream`] and [`Listener`].
//!
//! A Unix socket is private from its first instant: it is bound inside a fresh folder only
//! its user can enter, made 0600 there, and only then renamed into place, so no umask and no
//! race lets another user connect. A client checks the other side before it sends anything
//! (a token, a module): a socket file owned by another user, or a server process running as
//! another user, is refused (root excepted), and a folder others can write is warned about.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Caller;
use super::gate::Peer;

/// Where an admin API listens, or where a client finds it: `unix:PATH` or `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address.
    Tcp(String),
    /// A Unix domain socket.
    Unix(PathBuf),
}

impl Endpoint {
    /// Reads `unix:PATH` or `HOST:PORT`.
    pub fn parse(text: &str) -> Result<Endpoint, AdminEndpointError> {
        match text.strip_prefix("unix:") {
            Some("") => Err(AdminEndpointError::NoPath),
            Some(path) => Ok(Endpoint::Unix(PathBuf::from(path))),
            None if text.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
            }) =>
            {
                Ok(Endpoint::Tcp(text.to_owned()))
            }
            None => Err(AdminEndpointError::Form {
                text: text.to_owned(),
            }),
        }
    }

    /// The default: `$XDG_RUNTIME_DIR/flowgate/admin.sock`, else `/run/flowgate/admin.sock`.
    pub fn default_socket() -> Endpoint {
        let dir = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run"));
        Endpoint::Unix(dir.join("flowgate").join("admin.sock"))
    }
}

/// Why an admin endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminEndpointError {
    /// `unix:` with nothing after it.
    #[error("`unix:` needs a path, as in unix:/run/flowgate/admin.sock")]
    NoPath,
    /// Neither `unix:PATH` nor `HOST:PORT` with a port of digits.
    #[error("`{text}` is neither unix:PATH nor HOST:PORT (for example 127.0.0.1:8742)")]
    Form {
        /// The endpoint as written.
        text: String,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "http://{addr}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A connection, either kind.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix domain socket.
    Unix(UnixStream),
}

impl Stream {
    /// Connects to `endpoint`, waiting at most `timeout` for a TCP connection.
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<Stream> {
        match endpoint {
            Endpoint::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            Endpoint::Tcp(addr) => {
                use std::net::ToSocketAddrs;
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for a in addr.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => return Ok(Stream::Tcp(s)),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    /// Sets the read and write timeouts.
    pub fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
            Stream::Unix(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
        }
    }

    /// Connects to `endpoint` as [`Stream::connect`] does, and on a Unix socket checks whom
    /// it reached before anything is sent: the socket file and the process serving it must
    /// belong to this user or to root. A folder others can write (where another user could
    /// have put the socket) is warned about.
    pub fn connect_private(endpoint: &Endpoint, timeout: Duration) -> io::Result<Stream> {
        let Endpoint::Unix(path) = endpoint else {
            return Stream::connect(endpoint, timeout);
        };
        let me = nix::unistd::geteuid().as_raw();
        let meta = std::fs::symlink_metadata(path)?;
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a socket", path.display()),
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir_meta) = std::fs::metadata(dir)
            && dir_meta.mode() & 0o022 != 0
        {
            // Once a process: a command makes several requests.
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    folder = %dir.display(),
                    mode = format!("{:o}", dir_meta.mode() & 0o7777),
                    "the admin socket's folder can be written by others, who could put a socket of their own there: keep the socket in a folder only its user can write"
                );
            }
        }
        if meta.uid() != me && meta.uid() != 0 {
            return Err(foreign(format!(
                "{} is owned by uid {}, not by this user (uid {me}) or root: refusing to send it a token or a module",
                path.display(),
                meta.uid()
            )));
        }
        let stream = UnixStream::connect(path)?;
        let peer =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map_err(io::Error::from)?;
        if peer.uid() != me && peer.uid() != 0 {
            return Err(foreign(format!(
                "{} is served by a process of uid {}, not of this user (uid {me}) or root: refusing to send it a token or a module",
                path.display(),
                peer.uid()
            )));
        }
        Ok(Stream::Unix(stream))
    }

    /// The stream for a tokio runtime (it must be called inside one).
    pub(super) fn into_tokio(self) -> io::Result<TokioStream> {
        Ok(match self {
            Stream::Tcp(s) => {
                s.set_nonblocking(true)?;
                TokioStream::Tcp(tokio::net::TcpStream::from_std(s)?)
            }
            Stream::Unix(s) => {
                s.set_nonblocking(true)?;
                TokioStream::Unix(tokio::net::UnixStream::from_std(s)?)
            }
        })
    }
}

fn foreign(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, message)
}

/// A connection on a tokio runtime, either kind.
#[derive(Debug)]
pub(super) enum TokioStream {
    /// TCP.
    Tcp(tokio::net::TcpStream),
    /// Unix domain socket.
    Unix(tokio::net::UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A listening socket, either kind. A Unix socket's file is removed when it is dropped.
#[derive(Debug)]
pub struct Listener {
    bound: Option<Bound>,
    /// The Unix socket's path and the file it bound there (device, inode), removed on drop
    /// while it is still that file.
    path: Option<(PathBuf, (u64, u64))>,
    endpoint: Endpoint,
}

#[derive(Debug)]
enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A listening socket on a tokio runtime.
pub(super) enum TokioListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// Listens on `endpoint`. A Unix socket's folder is created 0700 when missing; the socket
    /// is bound in a private folder beside it, made 0600 and renamed into place (see the
    /// module's doc). A socket file left by a gateway that is gone is replaced, one a live
    /// gateway answers on is not.
    pub fn bind(endpoint: &Endpoint) -> io::Result<Listener> {
        match endpoint {
            Endpoint::Tcp(addr) => {
                let listener = TcpListener::bind(addr)?;
                let endpoint = Endpoint::Tcp(listener.local_addr()?.to_string());
                Ok(Listener {
                    bound: Some(Bound::Tcp(listener)),
                    path: None,
                    endpoint,
                })
            }
            Endpoint::Unix(path) => {
                let dir = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                if !dir.exists() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)?;
                }
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a socket", path.display()),
                        ));
                    }
                    if UnixStream::connect(path).is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("a gateway already answers on {}", path.display()),
                        ));
                    }
                }
                if let Ok(meta) = std::fs::metadata(dir)
                    && meta.mode() & 0o002 != 0
                    && meta.mode() & 0o1000 == 0
                {
                    // Others could rename the private folder the socket is bound in, or
                    // the socket itself, and put their own in its place.
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{}: others can write this folder (mode {:o}, no sticky bit): the admin socket cannot be made private in it; use a folder only the gateway's user can write",
                            dir.display(),
                            meta.mode() & 0o7777
                        ),
                    ));
                }
                if let Ok(meta) = std::fs::metadata(dir)
                    && meta.mode() & 0o022 != 0
                {
                    tracing::warn!(
                        folder = %dir.display(),
                        mode = format!("{:o}", meta.mode() & 0o7777),
                        "the admin socket's folder can be written by others: they could replace the socket, or put one there while the gateway is down"
                    );
                }
                let listener = bind_privately(dir, path)?;
                let bound = std::fs::symlink_metadata(path)?;
                Ok(Listener {
                    bound: Some(Bound::Unix(listener)),
                    path: Some((path.clone(), (bound.dev(), bound.ino()))),
                    endpoint: endpoint.clone(),
                })
            }
        }
    }

    /// Where it listens (the port the system picked, for `HOST:0`).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The TCP address, for a TCP listener.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match &self.bound {
            Some(Bound::Tcp(l)) => l.local_addr().ok(),
            _ => None,
        }
    }

    /// The listening socket for a tokio runtime (it must be called inside one); the file of
    /// a Unix socket stays this listener's to remove.
    pub(super) fn take_tokio(&mut self) -> io::Result<TokioListener> {
        match self.bound.take() {
            Some(Bound::Tcp(l)) => {
                l.set_nonblocking(true)?;
                Ok(TokioListener::Tcp(tokio::net::TcpListener::from_std(l)?))
            }
            Some(Bound::Unix(l)) => {
                l.set_nonblocking(true)?;
                Ok(TokioListener::Unix(tokio::net::UnixListener::from_std(l)?))
            }
            None => Err(io::Error::other("the listener was already taken")),
        }
    }
}

/// Binds a Unix socket at `path` so that no other user can connect to it at any instant: in
/// a new folder beside it that only this user can enter (created exclusively, so nobody can
/// have prepared it), 0600, then renamed into place.
fn bind_privately(dir: &Path, path: &Path) -> io::Result<UnixListener> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let mut attempt = 0u32;
    let private = loop {
        let candidate = dir.join(format!(".fg{}-{stamp:x}-{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&candidate) {
            Ok(()) => break candidate,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let inside = private.join(name);
    let bound = (|| {
        // The umask may have taken bits from 0700; none can have been added.
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
        let listener = UnixListener::bind(&inside)?;
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inside, path)?;
        Ok(listener)
    })();
    if bound.is_err() {
        let _ = std::fs::remove_file(&inside);
    }
    let _ = std::fs::remove_dir(&private);
    bound
}

impl TokioListener {
    /// Waits for the next connection, and says who it is from.
    /// A Unix socket peer whose credentials cannot be read is [`Peer::Unknown`] (and is
    /// served nothing), its caller all ones.
    pub(super) async fn accept(&self) -> io::Result<(TokioStream, Peer, Caller)> {
        match self {
            TokioListener::Tcp(l) => {
                let (s, addr) = l.accept().await?;
                let caller = Caller::Tcp { addr, token: None };
                Ok((TokioStream::Tcp(s), Peer::Ip(addr.ip()), caller))
            }
            TokioListener::Unix(l) => {
                let (s, _) = l.accept().await?;
                let (peer, caller) = match s.peer_cred() {
                    Ok(c) => (
                        Peer::Uid(c.uid()),
                        Caller::Socket {
                            uid: c.uid(),
                            gid: c.gid(),
                            pid: c.pid(),
                            token: None,
                        },
                    ),
                    Err(_) => (
                        Peer::Unknown,
                        Caller::Socket {
                            uid: u32::MAX,
                            gid: u32::MAX,
                            pid: None,
                            token: None,
                        },
                    ),
                };
                Ok((TokioStream::Unix(s), peer, caller))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // A gateway started since may have put its own socket at the path: that one stays.
        if let Some((path, (dev, ino))) = &self.path
            && std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == *dev && m.ino() == *ino)
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_read_and_refused() {
        assert_eq!(
            Endpoint::parse("unix:/run/a.sock"),
            Ok(Endpoint::Unix(PathBuf::from("/run/a.sock")))
        );
        assert_eq!(
            Endpoint::parse("[::1]:8742"),
            Ok(Endpoint::Tcp("[::1]:8742".into()))
        );
        let refused = Endpoint::parse("unix:").unwrap_err();
        assert_eq!(refused, AdminEndpointError::NoPath);
        assert_eq!(
            refused.to_string(),
            "`unix:` needs a path, as in unix:/run/flowgate/admin.sock"
        );
        for bad in ["127.0.0.1", ":8742", "host:", "host:87a2", ""] {
            let refused = Endpoint::parse(bad).unwrap_err();
            assert_eq!(refused, AdminEndpointError::Form { text: bad.into() });
            assert_eq!(
                refused.to_string(),
                format!("`{bad}` is neither unix:PATH nor HOST:PORT (for example 127.0.0.1:8742)")
            );
        }
    }
}
