//! Serving: a gateway's worker threads on their ports, until SIGINT or SIGTERM (or a time
//! limit), with SIGHUP re-reading the module and configuration files.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowgate_policy::Packet;

use super::Gateway;
use crate::io::Trace;
use crate::io::vxlan::{Endpoints, VxlanPort};

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

/// What SIGHUP reads again: the module (when it came from a file) and the configuration.
pub type Reread<'a> = dyn FnMut() -> anyhow::Result<(Option<Vec<u8>>, String)> + 'a;

/// Runs one worker thread per worker of `gateway` on `traffic` until SIGINT, SIGTERM or
/// `duration`; on SIGHUP, `reread` gives the files' contents and the gateway reloads them
/// (publishing nothing when they are unchanged). Returns when every worker has stopped.
pub fn serve(
    gateway: &Arc<Gateway>,
    traffic: Traffic,
    duration: Option<Duration>,
    reread: &mut Reread<'_>,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

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
                let (socket, endpoints) = (socket.try_clone()?, endpoints.clone());
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
                .spawn(work)?,
        );
    }

    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if duration.is_some_and(|d| started.elapsed() >= d) {
            stop.store(true, Ordering::Relaxed);
        }
        if hup.swap(false, Ordering::Relaxed) {
            tracing::info!(
                event = "sighup",
                "SIGHUP: re-reading the module and configuration files"
            );
            match reread() {
                // Published or refused, the gateway logged it; unchanged, say so here.
                Ok((module, config)) => {
                    if let Ok(None) = gateway.reload(module.as_deref(), &config) {
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
