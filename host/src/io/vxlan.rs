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

use flowgate_policy::{Catalog, Packet, Verdict};
use flowgate_wire::{FrameFault, parse_vxlan, set_payload_vni};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};

use crate::dataplane::Counters;
use crate::io::Port;
use crate::setting::Setting;

/// The largest datagram taken: a jumbo frame.
const MAX_DATAGRAM: usize = 9216;
/// How long a worker waits on a quiet socket before it looks at the stop flag again.
const POLL: Duration = Duration::from_millis(50);

/// Where an endpoint was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A `NAME=HOST:PORT` pair, as given.
    Pair(String),
    /// A line of an endpoints file.
    Line {
        /// The file's name.
        file: String,
        /// The line number, from 1.
        line: usize,
    },
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Pair(pair) => write!(f, "endpoint {pair}"),
            Place::Line { file, line } => write!(f, "{file}:{line}"),
        }
    }
}

/// Why endpoints were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// A pair without `=`.
    #[error("{place}: write NAME=HOST:PORT")]
    NotAPair {
        /// Where.
        place: Place,
    },
    /// A line of a file without a VPC name and an address.
    #[error("{place}: write `VPC-NAME HOST:PORT`")]
    NotALine {
        /// Where.
        place: Place,
    },
    /// Not an address and port.
    #[error("{place}: `{addr}` is not an address and port such as 127.0.0.1:4789: {error}")]
    Address {
        /// Where.
        place: Place,
        /// What was written.
        addr: String,
        /// Why it does not parse.
        error: std::net::AddrParseError,
    },
    /// A VPC given two endpoints.
    #[error("{place}: VPC `{vpc}` has two endpoints")]
    Twice {
        /// Where the second is.
        place: Place,
        /// The VPC's name.
        vpc: String,
    },
}

impl EndpointError {
    /// The setting at fault: [`Setting::Endpoint`], when the error is in a pair (a file's
    /// lines are named by the file).
    pub fn setting(&self) -> Option<Setting> {
        let (EndpointError::NotAPair { place }
        | EndpointError::NotALine { place }
        | EndpointError::Address { place, .. }
        | EndpointError::Twice { place, .. }) = self;
        matches!(place, Place::Pair(_)).then_some(Setting::Endpoint)
    }
}

/// Where each VPC's tunnel endpoint is, by VPC name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints(BTreeMap<String, SocketAddr>);

impl Endpoints {
    /// Reads `NAME=HOST:PORT` pairs and the lines of an endpoints file, one `NAME HOST:PORT`
    /// per line (`#` starts a comment); `file` names the file in errors.
    pub fn parse(pairs: &[String], file: Option<(&str, &str)>) -> Result<Endpoints, EndpointError> {
        let mut map = BTreeMap::new();
        let mut add = |name: &str, addr: &str, place: Place| -> Result<(), EndpointError> {
            let addr: SocketAddr = match addr.trim().parse() {
                Ok(addr) => addr,
                Err(error) => {
                    return Err(EndpointError::Address {
                        place,
                        addr: addr.trim().to_owned(),
                        error,
                    });
                }
            };
            if map.insert(name.trim().to_owned(), addr).is_some() {
                return Err(EndpointError::Twice {
                    place,
                    vpc: name.trim().to_owned(),
                });
            }
            Ok(())
        };
        if let Some((name, text)) = file {
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let place = Place::Line {
                    file: name.to_owned(),
                    line: n + 1,
                };
                let Some((vpc, addr)) = line.split_once(char::is_whitespace) else {
                    return Err(EndpointError::NotALine { place });
                };
                add(vpc, addr, place)?;
            }
        }
        for pair in pairs {
            let place = Place::Pair(pair.clone());
            let Some((vpc, addr)) = pair.split_once('=') else {
                return Err(EndpointError::NotAPair { place });
            };
            add(vpc, addr, place)?;
        }
        Ok(Endpoints(map))
    }

    /// The endpoint of the VPC named `name`.
    pub fn get(&self, name: &str) -> Option<SocketAddr> {
        self.0.get(name).copied()
    }
}

/// A socket a worker could not set up.
#[derive(Debug, thiserror::Error)]
#[error("setting the socket's read timeout: {0}")]
pub struct SocketError(pub std::io::Error);

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
    ) -> Result<VxlanPort, SocketError> {
        socket.set_read_timeout(Some(POLL)).map_err(SocketError)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_from_pairs_and_a_file_and_the_errors_that_say_where() {
        let file = "# tunnels\nalpha 127.0.0.1:4789\n\nbeta 127.0.0.2:4789 # the second\n";
        let endpoints =
            Endpoints::parse(&["gamma=127.0.0.3:4789".into()], Some(("tunnels", file))).unwrap();
        assert_eq!(
            endpoints.get("beta"),
            Some("127.0.0.2:4789".parse().unwrap())
        );
        assert_eq!(
            endpoints.get("gamma"),
            Some("127.0.0.3:4789".parse().unwrap())
        );

        let e = Endpoints::parse(&["alpha".into()], None).unwrap_err();
        assert_eq!(
            e,
            EndpointError::NotAPair {
                place: Place::Pair("alpha".into())
            }
        );
        assert_eq!(e.setting(), Some(Setting::Endpoint));
        assert_eq!(e.to_string(), "endpoint alpha: write NAME=HOST:PORT");

        let e =
            Endpoints::parse(&["alpha=127.0.0.9:1".into()], Some(("tunnels", file))).unwrap_err();
        assert_eq!(
            e,
            EndpointError::Twice {
                place: Place::Pair("alpha=127.0.0.9:1".into()),
                vpc: "alpha".into()
            }
        );

        let e = Endpoints::parse(&[], Some(("tunnels", "alpha nowhere\n"))).unwrap_err();
        assert!(
            matches!(&e, EndpointError::Address { place: Place::Line { line: 1, .. }, addr, .. } if addr == "nowhere"),
            "{e}"
        );
        assert_eq!(e.setting(), None, "a file's line is named by the file");
        assert!(
            e.to_string()
                .starts_with("tunnels:1: `nowhere` is not an address"),
            "{e}"
        );
    }
}
