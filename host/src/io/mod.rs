//! Packet ports: where a gateway's packets come from and where the allowed ones go. A
//! [`Port`] gives a worker its batches and takes back their verdicts: a looping [`Trace`] of
//! 5-tuples (a trace file, or generated traffic), or a UDP socket receiving and forwarding
//! VXLAN ([`vxlan::VxlanPort`]). [`pcap`] replays captures through a policy.

pub mod pcap;
pub mod vxlan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowgate_policy::{Catalog, Packet, Verdict};

use crate::dataplane::Counters;

/// A source of packets for one worker.
pub trait Port: Send {
    /// Appends up to `max` packets to `batch`; returns how many. 0 with [`Port::dry`]: the
    /// source has nothing more; 0 otherwise: nothing arrived this time (a quiet socket).
    fn fill(&mut self, batch: &mut Vec<Packet>, max: usize) -> usize;

    /// Whether the source has nothing more to give. By default a source is dry as soon as
    /// `fill` gives nothing.
    fn dry(&self) -> bool {
        true
    }

    /// Called after every `fill`, with one verdict per packet it gave (`None`: their batch
    /// failed and they are dropped). A source that carries real frames forwards the allowed
    /// ones here, and counts into `counters` what it could not read or send.
    fn deliver(
        &mut self,
        verdicts: Option<&[Verdict]>,
        catalog: &Catalog,
        counters: &mut Counters,
    ) {
        let _ = (verdicts, catalog, counters);
    }
}

/// A trace of packets given in a loop, from an offset, optionally paced.
pub struct Trace {
    packets: Arc<[Packet]>,
    next: usize,
    pacer: Option<Pacer>,
    /// Stop after this many packets (for tests); `None`: loop forever.
    remaining: Option<u64>,
}

impl Trace {
    /// A replay of `packets` starting at `offset`, at `rate` packets per second (0: as fast as
    /// it can), stopping after `limit` packets if given.
    pub fn new(packets: Arc<[Packet]>, offset: usize, rate: u64, limit: Option<u64>) -> Self {
        let next = if packets.is_empty() {
            0
        } else {
            offset % packets.len()
        };
        Trace {
            packets,
            next,
            pacer: (rate > 0).then(|| Pacer::new(rate)),
            remaining: limit,
        }
    }
}

impl Port for Trace {
    fn fill(&mut self, batch: &mut Vec<Packet>, max: usize) -> usize {
        let mut want = max;
        if let Some(remaining) = self.remaining {
            want = want.min(usize::try_from(remaining).unwrap_or(usize::MAX));
        }
        if self.packets.is_empty() || want == 0 {
            return 0;
        }
        if let Some(pacer) = &mut self.pacer {
            pacer.wait_for(want as u64);
        }
        for _ in 0..want {
            batch.push(self.packets[self.next]);
            self.next = (self.next + 1) % self.packets.len();
        }
        if let Some(remaining) = &mut self.remaining {
            *remaining -= want as u64;
        }
        want
    }
}

/// Holds a source to a rate: sleeps until the packets about to be sent are due.
struct Pacer {
    start: Instant,
    sent: u64,
    rate: u64,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        Pacer {
            start: Instant::now(),
            sent: 0,
            rate,
        }
    }

    fn wait_for(&mut self, packets: u64) {
        let due = self.start + Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        self.sent += packets;
    }
}
