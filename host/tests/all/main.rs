//! The host's integration tests, one binary with a module per topic (as wasmtime does it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose
#![allow(missing_docs)]

mod audit;
mod authority;
mod cli;
mod columns;
mod faults;
mod fixtures;
mod hostile;
mod hostile_admin;
mod hostile_cache;
mod hostile_keys;
mod hostile_registry;
mod hostile_signatures;
mod kit;
mod live;
mod memory;
mod oci;
mod paths;
mod prepare;
mod refusals;
mod replay;
mod shadow;
mod sign;
mod signing;
mod swap;
mod trusted;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use flowgate_host::DEFAULT_MODULE;
use flowgate_host::admin::Endpoint;
use flowgate_host::admin::{AdminOptions, AdminServer, Client};
use flowgate_host::gateway::{Gateway, Options};
use flowgate_host::io::Trace;
use flowgate_host::wasm::{EngineOptions, Limits, Runtime};
use flowgate_policy::Packet;

/// A runtime that does not touch the user's cache.
pub fn runtime() -> Runtime {
    Runtime::new(Limits::default(), None).unwrap()
}

/// A gateway on the default module with `options`, on a runtime of `limits` with room for
/// its workers.
pub fn gateway_with(config: &str, limits: Limits, options: Options) -> Arc<Gateway> {
    let engine = EngineOptions::for_workers(options.workers);
    let runtime = Runtime::with_engine(limits, None, engine).unwrap();
    Gateway::new(runtime, DEFAULT_MODULE, config, options).unwrap()
}

/// Every worker of `gateway` judging `packets` on a thread of its own, worker `id` starting
/// at packet `id * stride`, at `rate` packets a second (0: flat out), until the flag returned
/// is set.
pub fn run_workers(
    gateway: &Arc<Gateway>,
    packets: &Arc<[Packet]>,
    stride: usize,
    rate: u64,
) -> (Arc<AtomicBool>, Vec<JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..gateway.options().workers)
        .map(|id| {
            let (gateway, stop, packets) = (gateway.clone(), stop.clone(), packets.clone());
            std::thread::spawn(move || {
                let mut source = Trace::new(packets, id * stride, rate, None);
                gateway.run_worker(id, &mut source, &stop);
            })
        })
        .collect();
    (stop, handles)
}

/// Sends process `pid` the signal `name` (`TERM`, `HUP`) with kill(1); whether it was sent.
pub fn signal(pid: u32, name: &str) -> bool {
    std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
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
