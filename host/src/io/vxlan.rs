//! A live VXLAN gateway's packet source: a UDP socket receiving VXLAN datagrams in batches
//! (`recvmmsg`), whose allowed packets leave re-encapsulated with their destination VPC's VNI
//! toward that VPC's tunnel endpoint, again in batches (`sendmmsg`).

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use flowgate_policy::{Catalog, Packet, Verdict};
use flowgate_wire::{FrameFault, parse_vxlan, set_payload_vni};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};

use crate::dataplane::Counters;
use crate::io::Port;

/// The largest datagram taken: a jumbo frame.
const MAX_DATAGRAM: usize = 9216;
/// How long a worker waits on a quiet socket before it looks at the stop flag again.
const POLL: Duration = Duration::from_millis(50);

/// Where each VPC's tunnel endpoint is, by VPC name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints(BTreeMap<String, SocketAddr>);

impl Endpoints {
    /// Reads `NAME=HOST:PORT` pairs (`--endpoint`) and the lines of an endpoints file, one
    /// `NAME HOST:PORT` per line (`#` starts a comment); `file` names the file in errors.
    pub fn parse(pairs: &[String], file: Option<(&str, &str)>) -> anyhow::Result<Endpoints> {
        let mut map = BTreeMap::new();
        let mut add = |name: &str, addr: &str, place: &dyn Fn() -> String| -> anyhow::Result<()> {
            let addr: SocketAddr = addr.trim().parse().with_context(|| {
                format!(
                    "{}: `{}` is not an address and port such as 127.0.0.1:4789",
                    place(),
                    addr.trim()
                )
            })?;
            if map.insert(name.trim().to_owned(), addr).is_some() {
                bail!("{}: VPC `{}` has two endpoints", place(), name.trim());
            }
            Ok(())
        };
        if let Some((name, text)) = file {
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let place = || format!("{name}:{}", n + 1);
                let Some((vpc, addr)) = line.split_once(char::is_whitespace) else {
                    bail!("{}: write `VPC-NAME HOST:PORT`", place());
                };
                add(vpc, addr, &place)?;
            }
        }
        for pair in pairs {
            let place = || format!("--endpoint {pair}");
            let Some((vpc, addr)) = pair.split_once('=') else {
                bail!("{}: write NAME=HOST:PORT", place());
            };
            add(vpc, addr, &place)?;
        }
        Ok(Endpoints(map))
    }

    /// The endpoint of the VPC named `name`.
    pub fn get(&self, name: &str) -> Option<SocketAddr> {
        self.0.get(name).copied()
    }
}

/// One worker's share of a VXLAN socket.
pub struct VxlanPort {
    socket: UdpSocket,
    endpoints: Arc<Endpoints>,
    stop: Arc<AtomicBool>,
    buffers: Vec<Vec<u8>>,
    lengths: Vec<usize>,
    /// For each packet of the current batch, the datagram it came from.
    origin: Vec<usize>,
    /// Unreadable datagrams since the last `deliver`, by reason.
    unreadable: [u64; FrameFault::COUNT],
}

impl VxlanPort {
    /// A source reading `socket` (shared between workers with `try_clone`) in batches of up to
    /// `batch` datagrams, until `stop` is set.
    pub fn new(
        socket: UdpSocket,
        endpoints: Arc<Endpoints>,
        stop: Arc<AtomicBool>,
        batch: usize,
    ) -> anyhow::Result<VxlanPort> {
        socket
            .set_read_timeout(Some(POLL))
            .context("setting the socket's read timeout")?;
        let batch = batch.max(1);
        Ok(VxlanPort {
            socket,
            endpoints,
            stop,
            buffers: vec![vec![0; MAX_DATAGRAM]; batch],
            lengths: Vec::with_capacity(batch),
            origin: Vec::with_capacity(batch),
            unreadable: [0; FrameFault::COUNT],
        })
    }

    /// Receives up to `max` datagrams, waiting at most [`POLL`] for the first.
    fn receive(&mut self, max: usize) -> usize {
        let fd = self.socket.as_raw_fd();
        let max = max.min(self.buffers.len());
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self.buffers[..max]
            .iter_mut()
            .map(|b| [IoSliceMut::new(&mut b[..])])
            .collect();
        self.lengths.clear();
        // nix's headers hold raw pointers (not `Send`): made per batch, two small allocations.
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(max, None);
        // MSG_WAITFORONE: block (up to the read timeout) for the first datagram only.
        if let Ok(received) = recvmmsg(
            fd,
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        ) {
            self.lengths.extend(received.map(|m| m.bytes));
        }
        self.lengths.len()
    }
}

impl Port for VxlanPort {
    fn fill(&mut self, batch: &mut Vec<Packet>, max: usize) -> usize {
        self.origin.clear();
        if self.stop.load(Ordering::Relaxed) {
            return 0;
        }
        let received = self.receive(max);
        for i in 0..received {
            match parse_vxlan(&self.buffers[i][..self.lengths[i]]) {
                Ok((packet, _)) => {
                    batch.push(packet);
                    self.origin.push(i);
                }
                Err(e) => self.unreadable[e.reason().index()] += 1,
            }
        }
        self.origin.len()
    }

    fn dry(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn deliver(
        &mut self,
        verdicts: Option<&[Verdict]>,
        catalog: &Catalog,
        counters: &mut Counters,
    ) {
        let unreadable = std::mem::take(&mut self.unreadable);
        for (reason, n) in FrameFault::ALL.into_iter().zip(unreadable) {
            if n > 0 {
                counters.count_drop(reason.as_str(), n);
            }
        }
        let Some(verdicts) = verdicts else {
            return;
        };
        // Each destination VPC's endpoint, looked up by name once per batch when first needed
        // (the catalog may change between batches with a swap).
        let mut endpoints: Vec<Option<Option<SocketAddr>>> = vec![None; catalog.vpcs.len()];
        let mut out: Vec<(usize, SocketAddr)> = Vec::with_capacity(verdicts.len());
        for (&verdict, &i) in verdicts.iter().zip(&self.origin) {
            if let Verdict::Allow(vpc) = verdict {
                let endpoint = endpoints.get_mut(vpc.0 as usize).and_then(|slot| {
                    *slot.get_or_insert_with(|| self.endpoints.get(&catalog.vpc(vpc).name))
                });
                match endpoint {
                    Some(addr) => {
                        let len = self.lengths[i];
                        set_payload_vni(&mut self.buffers[i][..len], catalog.vpc(vpc).vni);
                        out.push((i, addr));
                    }
                    None => counters.unsent += 1,
                }
            }
        }
        if out.is_empty() {
            return;
        }
        let slices: Vec<[IoSlice<'_>; 1]> = out
            .iter()
            .map(|&(i, _)| [IoSlice::new(&self.buffers[i][..self.lengths[i]])])
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = out
            .iter()
            .map(|&(_, addr)| Some(SockaddrStorage::from(addr)))
            .collect();
        let fd = self.socket.as_raw_fd();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(out.len(), None);
        let sent = sendmmsg(
            fd,
            &mut headers,
            slices.iter(),
            &addrs,
            Vec::<nix::sys::socket::ControlMessage<'_>>::new(),
            MsgFlags::empty(),
        )
        .map(|results| results.count())
        .unwrap_or(0);
        counters.unsent += (out.len() - sent.min(out.len())) as u64;
    }
}
