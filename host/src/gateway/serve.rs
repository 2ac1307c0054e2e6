//! Serving: a gateway's worker threads on their ports, until the caller's stop flag is raised
//! (or a time limit), re-reading the module and configuration when its reload flag is. The
//! library registers no signal handler: `flowgate serve` raises the stop flag on SIGINT and
//! SIGTERM and the reload flag on SIGHUP; an embedder raises them however it likes.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowgate_policy::Packet;

use super::{Gateway, ModuleBytes};
use crate::io::Trace;
use crate::io::vxlan::{Endpoints, VxlanPort};
use crate::oci::Signer;

/// Where the workers' packets come from.
pub enum Traffic {
    /// A trace given in a loop, each worker from its own offset, at `rate` packets per second
    /// over all workers (0: as fast as they go).
    Trace {
        /// The packets.
        packets: Arc<[Packet]>,
        /// Packets per second over all workers.
        rate: u64,
    },
    /// VXLAN on a UDP socket the workers share, allowed packets sent on to their VPC's
    /// endpoint.
    Vxlan {
        /// The socket.
        socket: UdpSocket,
        /// Each VPC's tunnel endpoint.
        endpoints: Arc<Endpoints>,
    },
}

/// What a reload reads again: the module (when it came from a file) with its signer, when
/// its detached signature verified, and the configuration; an error of the caller's own type,
/// logged, leaves the running release serving.
pub type Reread<'a, E> = dyn FnMut() -> Result<(Option<ModuleFile>, String), E> + 'a;

/// A module read again from its file, and who signed it.
pub type ModuleFile = (Vec<u8>, Option<Signer>);

/// The flags a caller steers serving with (`flowgate serve` raises them from signals).
#[derive(Debug, Clone, Default)]
pub struct Controls {
    /// Raised: the workers finish the batch in hand and serving returns.
    pub stop: Arc<AtomicBool>,
    /// Raised: the module and configuration are read again and reloaded; lowered once seen.
    pub reload: Arc<AtomicBool>,
}

/// Why serving did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A worker's copy of the shared socket could not be made.
    #[error("worker {worker}'s socket: {error}")]
    Socket {
        /// The worker.
        worker: usize,
        /// Why.
        error: std::io::Error,
    },
    /// A worker's thread could not be started.
    #[error("worker {worker}'s thread: {error}")]
    Thread {
        /// The worker.
        worker: usize,
        /// Why.
        error: std::io::Error,
    },
}

/// Runs one worker thread per worker of `gateway` on `traffic` until `controls.stop` is
/// raised or `duration` has passed (which raises it); when `controls.reload` is raised,
/// `reread` gives the files' contents and the gateway reloads them (publishing nothing when
/// they are unchanged). Returns when every worker has stopped.
pub fn serve<E: std::fmt::Display>(
    gateway: &Arc<Gateway>,
    traffic: Traffic,
    duration: Option<Duration>,
    controls: &Controls,
    reread: &mut Reread<'_, E>,
) -> Result<(), ServeError> {
    let Controls { stop, reload } = controls;

    let workers = gateway.options().workers;
    let batch = gateway.options().batch;
    let mut handles = Vec::with_capacity(workers);
    for id in 0..workers {
        let (gateway, stop) = (gateway.clone(), stop.clone());
        let work: Box<dyn FnOnce() + Send> = match &traffic {
            Traffic::Trace { packets, rate } => {
                let offset = id * packets.len().max(1) / workers;
                let mut port =
                    Trace::new(packets.clone(), offset, rate.div_ceil(workers as u64), None);
                Box::new(move || gateway.run_worker(id, &mut port, &stop))
            }
            Traffic::Vxlan { socket, endpoints } => {
                let socket = socket
                    .try_clone()
                    .map_err(|error| ServeError::Socket { worker: id, error })?;
                let endpoints = endpoints.clone();
                Box::new(
                    move || match VxlanPort::new(socket, endpoints, stop.clone(), batch) {
                        Ok(mut port) => gateway.run_worker(id, &mut port, &stop),
                        Err(e) => {
                            tracing::error!(worker = id, error = %format_args!("{e:#}"), "worker {id} could not start")
                        }
                    },
                )
            }
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("flowgate-worker-{id}"))
                .spawn(work)
                .map_err(|error| ServeError::Thread { worker: id, error })?,
        );
    }

    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if duration.is_some_and(|d| started.elapsed() >= d) {
            stop.store(true, Ordering::Relaxed);
        }
        if reload.swap(false, Ordering::Relaxed) {
            tracing::info!(
                event = "sighup",
                "SIGHUP: re-reading the module and configuration files"
            );
            match reread() {
                // Published or refused, the gateway logged it; unchanged, say so here.
                Ok((module, config)) => {
                    let module = module.as_ref().map(|(bytes, signer)| {
                        ModuleBytes::from(bytes.as_slice()).signed(signer.as_ref())
                    });
                    if let Ok(None) = gateway.reload(module, &config) {
                        tracing::info!(
                            event = "sighup",
                            generation = gateway.current().generation,
                            "SIGHUP: the module and configuration files are unchanged: nothing to publish"
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    event = "sighup",
                    error = %format_args!("{e:#}"),
                    "SIGHUP: the files could not be read; the running release keeps serving"
                ),
            }
        }
    }
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}
