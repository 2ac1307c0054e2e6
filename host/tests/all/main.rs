//! The host's integration tests, one binary with a module per topic (as wasmtime does it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose
#![allow(missing_docs)]

mod authority;
mod cli;
mod faults;
mod fixtures;
mod hostile;
mod hostile_admin;
mod hostile_cache;
mod hostile_registry;
mod kit;
mod live;
mod oci;
mod paths;
mod refusals;
mod replay;
mod swap;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flowgate_host::admin::Endpoint;
use flowgate_host::admin::{AdminOptions, AdminServer, Client};
use flowgate_host::gateway::Gateway;
use flowgate_host::wasm::{Limits, Runtime};

/// A runtime that does not touch the user's cache.
pub fn runtime() -> Runtime {
    Runtime::new(Limits::default(), None).unwrap()
}

/// A socket path of its own for a test's gateway, short enough for a Unix socket's limit.
pub fn socket_path(what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir()
        .join(format!("flowgate-test-{}-{what}-{n}", std::process::id()))
        .join("admin.sock")
}

/// The admin API of `gateway` on a Unix socket of its own, and a client of it.
pub fn admin_on_socket(gateway: &Arc<Gateway>) -> (AdminServer, Client) {
    let endpoint = Endpoint::Unix(socket_path("admin"));
    let server =
        AdminServer::start(gateway.clone(), AdminOptions::new(endpoint.clone(), None)).unwrap();
    (server, Client::new(endpoint, None))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
