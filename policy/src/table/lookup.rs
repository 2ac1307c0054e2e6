//! Reading the table: per packet, binary searches with no data-dependent branch, the source
//! and destination searches in one loop, and one matrix read; per batch, [`LANES`] packets
//! at a time in stages ([`Table::lookup_batch`]), and the packed path's driver
//! ([`judge_packed`]), which fills the same lanes straight from a batch's columns.

use std::hint::select_unpredictable;
use std::net::IpAddr;

#[cfg(target_family = "wasm")]
use std::cell::RefCell;

use super::flat::{self, LANES, NO_PORT, NO_VPC, TURN};
use super::six::Walks;
use super::{Catalog, Keys, Seg, SegTable, Sides6, Table, VpcEntry, VpcTable};
use crate::batch::{Batch, column, shape, split_ports};
use crate::packet::{CandidatesId, DropReason, Packet, Ports, Verdict, VpcId};
use crate::prefetch::prefetch;
use crate::word::{UNKNOWN_VPC, VERDICT_BYTES, verdict_word};

impl<K: Copy + Ord> SegTable<K> {
    #[inline]
    pub(super) fn class(&self, key: K, port: Option<u16>) -> u32 {
        self.port_class(self.segs[last_at_or_below(&self.starts, key)], port)
    }

    /// The class of a port in a segment.
    #[inline]
    pub(super) fn port_class(&self, seg: Seg, port: Option<u16>) -> u32 {
        match port {
            Some(port) if seg.ports_len > 0 => {
                let at = seg.ports_at as usize;
                let starts = &self.port_starts[at..at + seg.ports_len as usize];
                self.port_classes[at + last_at_or_below(starts, port)]
            }
            _ => seg.portless,
        }
    }
}

/// The source and destination classes of a packet whose addresses are of one family: both
/// searches run in one loop, so the CPU overlaps their independent loads.
#[inline]
fn class_pair<K: Copy + Ord>(
    src: &SegTable<K>,
    src_key: K,
    dst: &SegTable<K>,
    dst_key: K,
    ports: Option<Ports>,
) -> (u32, u32) {
    let (s, d) = last_at_or_below2(&src.starts, src_key, &dst.starts, dst_key);
    let (s, d) = (src.segs[s], dst.segs[d]);
    (
        src.port_class(s, ports.map(|p| p.src)),
        dst.port_class(d, ports.map(|p| p.dst)),
    )
}

/// [`last_at_or_below`] of two independent searches, in lockstep. A search whose length
/// reached 1 stands still (its half is 0) while the other finishes.
#[inline]
fn last_at_or_below2<K: Copy + Ord>(a: &[K], key_a: K, b: &[K], key_b: K) -> (usize, usize) {
    let (mut base_a, mut len_a, mut base_b, mut len_b) = (0, a.len(), 0, b.len());
    while len_a > 1 || len_b > 1 {
        let (half_a, half_b) = (len_a / 2, len_b / 2);
        base_a = select_unpredictable(a[base_a + half_a] <= key_a, base_a + half_a, base_a);
        base_b = select_unpredictable(b[base_b + half_b] <= key_b, base_b + half_b, base_b);
        len_a -= half_a;
        len_b -= half_b;
    }
    (base_a, base_b)
}

/// The index of the last element of `sorted` that is at most `key` (0 when none is): a binary
/// search whose loop has no data-dependent branch, so the CPU never mispredicts it.
#[inline]
fn last_at_or_below<K: Copy + Ord>(sorted: &[K], key: K) -> usize {
    let mut base = 0;
    let mut len = sorted.len();
    while len > 1 {
        let half = len / 2;
        base = select_unpredictable(sorted[base + half] <= key, base + half, base);
        len -= half;
    }
    base
}

/// Up to [`LANES`] IPv4 packets of a batch, field by field, as the lookup stages read them.
/// A lane whose packet is not IPv4 on both sides holds anything: the caller looks that packet
/// up on its own.
#[derive(Debug, Clone, Copy)]
struct Lanes {
    vni: [u32; LANES],
    src: [u32; LANES],
    dst: [u32; LANES],
    /// Source ports, then destination ports, or [`NO_PORT`].
    ports: [[u32; LANES]; 2],
}

impl Lanes {
    const EMPTY: Lanes = Lanes {
        vni: [0; LANES],
        src: [0; LANES],
        dst: [0; LANES],
        ports: [[NO_PORT; LANES]; 2],
    };

    /// Puts packet `packet` in lane `i`; `false` when it is not IPv4 on both sides.
    #[inline]
    fn set(&mut self, i: usize, packet: &Packet) -> bool {
        let (src, dst, v4) = match (packet.src, packet.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (s.into(), d.into(), true),
            _ => (0, 0, false),
        };
        let ports = packet.ports.map_or((0, 0), |p| (p.src, p.dst));
        self.put(i, packet.src_vni, (src, dst), packet.ports.is_some(), ports);
        v4
    }

    /// Puts a packet's fields in lane `i`: its ports are `ports` when `has_ports`, else
    /// [`NO_PORT`]. Mixed traffic has and lacks ports at random, so this is chosen without a
    /// branch.
    #[inline(always)]
    fn put(
        &mut self,
        i: usize,
        vni: u32,
        (src, dst): (u32, u32),
        has_ports: bool,
        (src_port, dst_port): (u16, u16),
    ) {
        (self.vni[i], self.src[i], self.dst[i]) = (vni, src, dst);
        self.ports[0][i] = select_unpredictable(has_ports, src_port.into(), NO_PORT);
        self.ports[1][i] = select_unpredictable(has_ports, dst_port.into(), NO_PORT);
    }
}

/// Up to [`LANES`] IPv6 packets of a batch, field by field, as the lookup stages read them:
/// [`Lanes`] with each address as its upper and lower halves.
#[derive(Debug, Clone, Copy)]
struct Lanes6 {
    vni: [u32; LANES],
    /// Upper halves of the source and destination addresses: what the tries read.
    src: [u64; LANES],
    dst: [u64; LANES],
    /// Lower halves: what a split /64's trie reads.
    src_low: [u64; LANES],
    dst_low: [u64; LANES],
    /// Source ports, then destination ports, or [`NO_PORT`].
    ports: [[u32; LANES]; 2],
}

impl Lanes6 {
    const EMPTY: Lanes6 = Lanes6 {
        vni: [0; LANES],
        src: [0; LANES],
        dst: [0; LANES],
        src_low: [0; LANES],
        dst_low: [0; LANES],
        ports: [[NO_PORT; LANES]; 2],
    };

    /// Puts packet `packet` in lane `i`; `false` when it is not IPv6 on both sides.
    #[inline]
    fn set(&mut self, i: usize, packet: &Packet) -> bool {
        let (src, dst, v6) = match (packet.src, packet.dst) {
            (IpAddr::V6(s), IpAddr::V6(d)) => (s.into(), d.into(), true),
            _ => (0, 0, false),
        };
        let split = |k: u128| ((k >> 64) as u64, k as u64);
        let ports = packet.ports.map_or((0, 0), |p| (p.src, p.dst));
        let has_ports = packet.ports.is_some();
        self.put(
            i,
            packet.src_vni,
            (split(src), split(dst)),
            has_ports,
            ports,
        );
        v6
    }

    /// Puts a packet's fields in lane `i`, as [`Lanes::put`] does.
    #[inline(always)]
    fn put(
        &mut self,
        i: usize,
        vni: u32,
        (src, dst): ((u64, u64), (u64, u64)),
        has_ports: bool,
        (src_port, dst_port): (u16, u16),
    ) {
        self.vni[i] = vni;
        (self.src[i], self.src_low[i]) = src;
        (self.dst[i], self.dst_low[i]) = dst;
        self.ports[0][i] = select_unpredictable(has_ports, src_port.into(), NO_PORT);
        self.ports[1][i] = select_unpredictable(has_ports, dst_port.into(), NO_PORT);
    }
}

/// Up to [`LANES`] packets whose two addresses are of different families: each address in
/// the lanes of both families (zero in the other), and which of them is IPv6.
#[derive(Debug, Clone, Copy)]
struct LanesMixed {
    four: Lanes,
    six: Lanes6,
    /// Whether each lane's source, then destination, address is IPv6.
    v6: [[bool; LANES]; 2],
}

impl LanesMixed {
    const EMPTY: LanesMixed = LanesMixed {
        four: Lanes::EMPTY,
        six: Lanes6::EMPTY,
        v6: [[false; LANES]; 2],
    };

    /// Puts packet `packet` in lane `i`.
    #[inline(always)]
    fn set(&mut self, i: usize, packet: &Packet) {
        let four = |a: IpAddr| match a {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(_) => 0,
        };
        let six = |a: IpAddr| match a {
            IpAddr::V6(a) => {
                let k = u128::from(a);
                ((k >> 64) as u64, k as u64)
            }
            IpAddr::V4(_) => (0, 0),
        };
        let ports = packet.ports.map_or((0, 0), |p| (p.src, p.dst));
        let has_ports = packet.ports.is_some();
        let vni = packet.src_vni;
        let (src, dst) = (packet.src, packet.dst);
        self.four
            .put(i, vni, (four(src), four(dst)), has_ports, ports);
        self.six.put(i, vni, (six(src), six(dst)), has_ports, ports);
        self.v6[0][i] = src.is_ipv6();
        self.v6[1][i] = dst.is_ipv6();
    }
}

/// Packets of one family gathered from a batch until they fill the lanes: the lanes, the
/// batch index of each lane's packet, and how many lanes are filled.
#[derive(Debug, Clone, Copy)]
struct Gather<L> {
    lanes: L,
    at: [u32; LANES],
    n: usize,
}

impl<L> Gather<L> {
    /// Takes the lane `self.n`, just filled, as batch packet `at`'s; whether the lanes are
    /// full now (then the caller looks them up).
    #[inline(always)]
    fn filled(&mut self, at: usize) -> bool {
        self.at[self.n] = at as u32;
        self.n += 1;
        self.n == LANES
    }

    /// Hands each filled lane's batch index and verdict word to `emit`, and empties the
    /// lanes.
    #[inline(always)]
    fn drain(&mut self, words: &[u32; LANES], emit: &mut impl FnMut(u32, u32)) {
        for (&at, &word) in self.at[..self.n].iter().zip(words) {
            emit(at, word);
        }
        self.n = 0;
    }
}

/// The gathered IPv4 and IPv6 packets of batches that hold both families.
#[derive(Debug, Clone, Copy)]
struct Dual {
    four: Gather<Lanes>,
    six: Gather<Lanes6>,
    /// Packets of mixed families, when the table has IPv6 sides.
    mixed: Gather<LanesMixed>,
    /// A chunk all of IPv4 packets, in [`Table::lookup_batch`].
    chunk4: Lanes,
    /// A chunk all of IPv6 packets, in [`Table::lookup_batch`].
    chunk6: Lanes6,
}

impl Dual {
    const NEW: Dual = Dual {
        four: Gather {
            lanes: Lanes::EMPTY,
            at: [0; LANES],
            n: 0,
        },
        six: Gather {
            lanes: Lanes6::EMPTY,
            at: [0; LANES],
            n: 0,
        },
        mixed: Gather {
            lanes: LanesMixed::EMPTY,
            at: [0; LANES],
            n: 0,
        },
        chunk4: Lanes::EMPTY,
        chunk6: Lanes6::EMPTY,
    };
}

/// The upper and lower halves of an IPv6 address of a batch's list (network byte order).
#[cfg(not(all(target_family = "wasm", target_feature = "simd128")))]
#[inline(always)]
fn halves(bytes: &[u8; 16]) -> (u64, u64) {
    let (upper, lower) = bytes.split_at(8);
    let half = |b: &[u8]| b.try_into().map_or(0, u64::from_be_bytes);
    (half(upper), half(lower))
}

/// [`halves`] in Wasm's vector instructions: one shuffle swaps the bytes of both halves,
/// which Wasm's scalar instructions would do a byte at a time.
#[cfg(all(target_family = "wasm", target_feature = "simd128"))]
#[inline(always)]
fn halves(bytes: &[u8; 16]) -> (u64, u64) {
    use core::arch::wasm32::{u8x16_shuffle, u64x2, u64x2_extract_lane};
    let (upper, lower) = bytes.split_at(8);
    let half = |b: &[u8]| b.try_into().map_or(0, u64::from_le_bytes);
    let v = u64x2(half(upper), half(lower));
    let swapped = u8x16_shuffle::<7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8>(v, v);
    (
        u64x2_extract_lane::<0>(swapped),
        u64x2_extract_lane::<1>(swapped),
    )
}

/// Where the stages of [`Table::lookup_lanes`] keep their answers.
#[derive(Debug, Clone)]
struct Stages {
    vpcs: [u32; LANES],
    roots: [u32; LANES],
    /// Each lane's source value, then its destination value: a class, or a port map to
    /// resolve.
    sides: [[u32; LANES]; 2],
    /// The IPv6 sides' steps.
    walks: Walks,
}

/// The lanes a flush of gathered lanes holding at most this many packets looks up, where a
/// fuller one looks up all [`LANES`]: a batch that holds both families ends with three
/// flushes, about half full. (A lane count for each of the four turns made the guest's code
/// half as large again and its compile twice as long.)
const HALF: usize = LANES / 2;
const _: () = assert!(HALF.is_multiple_of(TURN));

// Every index into `Stages::sides` has its bit in a `ported_mask`, which reads the flag as
// the sign bit.
const _: () = assert!(2 * LANES <= u64::BITS as usize && flat::PORTED == 1 << 31);

/// Bit `k` set when value `k` of `sides` (flattened) names a port map.
#[cfg(not(all(target_family = "wasm", target_feature = "simd128")))]
#[inline(always)]
fn ported_mask(sides: &[[u32; LANES]; 2]) -> u64 {
    let mut mask = 0;
    for (k, &value) in sides.as_flattened().iter().enumerate() {
        mask |= u64::from(value >> 31) << k;
    }
    mask
}

/// [`ported_mask`] in Wasm's vector instructions: the flags of four values at a time, as the
/// sign bits of four lanes.
#[cfg(all(target_family = "wasm", target_feature = "simd128"))]
#[inline(always)]
fn ported_mask(sides: &[[u32; LANES]; 2]) -> u64 {
    use core::arch::wasm32::{i32x4_bitmask, u32x4};
    let mut mask = 0;
    for (i, &[a, b, c, d]) in sides.as_flattened().as_chunks::<4>().0.iter().enumerate() {
        mask |= u64::from(i32x4_bitmask(u32x4(a, b, c, d))) << (4 * i);
    }
    mask
}

impl Stages {
    const NEW: Stages = Stages {
        vpcs: [NO_VPC; LANES],
        roots: [0; LANES],
        sides: [[0; LANES]; 2],
        walks: Walks::NEW,
    };
}

impl Table {
    /// The verdict for one packet.
    #[inline]
    pub fn lookup(&self, packet: &Packet) -> Verdict {
        let keys = match (packet.src, packet.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Keys::V4(s.into(), d.into()),
            (IpAddr::V6(s), IpAddr::V6(d)) => Keys::V6(s.into(), d.into()),
            _ => return self.lookup_mixed(packet),
        };
        let vpc = self.vnis.find(packet.src_vni);
        let Some(t) = self.per_vpc.get(vpc as usize) else {
            return Verdict::Drop(DropReason::UnknownVpc);
        };
        let (s, d) = self.classes(vpc, t, keys, packet.ports);
        self.verdict(self.matrices.word(vpc, s, d).unwrap_or(UNKNOWN_VPC))
    }

    /// Each slot of `out` (a chunk's, at most [`LANES`]) the verdict of its lane's word.
    #[inline(always)]
    fn put_verdicts(&self, out: &mut [Verdict], words: &[u32; LANES]) {
        for (verdict, &word) in out.iter_mut().zip(words) {
            *verdict = self.verdict(word);
        }
    }

    /// The verdict of a word of the matrices.
    #[inline]
    fn verdict(&self, word: u32) -> Verdict {
        self.decoder.verdict(word).unwrap_or_default()
    }

    /// The source and destination classes of a packet of VPC `vpc`, whose tables are `t`.
    #[inline(always)]
    fn classes(&self, vpc: u32, t: &VpcTable, keys: Keys, ports: Option<Ports>) -> (u32, u32) {
        match keys {
            Keys::V4(s, d) => {
                let (s, d) = flat::find_pair(&self.src4, &self.dst4, vpc, s, d);
                (
                    self.ports.class(s, ports.map(|p| p.src)),
                    self.ports.class(d, ports.map(|p| p.dst)),
                )
            }
            Keys::V6(s, d) => match &self.six {
                Some(six) => {
                    let src = six.src.find(vpc, (s >> 64) as u64, s as u64);
                    let dst = six.dst.find(vpc, (d >> 64) as u64, d as u64);
                    (
                        self.ports.class(src, ports.map(|p| p.src)),
                        self.ports.class(dst, ports.map(|p| p.dst)),
                    )
                }
                None => class_pair(&t.src6, s, &t.dst6, d, ports),
            },
        }
    }

    /// The class of an IPv6 address on one side (`src` or not) of VPC `vpc`.
    fn side6(&self, vpc: u32, t: &VpcTable, src: bool, key: u128, port: Option<u16>) -> u32 {
        match &self.six {
            Some(six) => {
                let side = if src { &six.src } else { &six.dst };
                let value = side.find(vpc, (key >> 64) as u64, key as u64);
                self.ports.class(value, port)
            }
            None if src => t.src6.class(key, port),
            None => t.dst6.class(key, port),
        }
    }

    /// A packet whose source and destination are of different families: no real IP packet,
    /// but a [`Packet`] can say it, and the sets of the spec still give it a verdict.
    #[cold]
    fn lookup_mixed(&self, packet: &Packet) -> Verdict {
        let vpc = self.vnis.find(packet.src_vni);
        let Some(t) = self.per_vpc.get(vpc as usize) else {
            return Verdict::Drop(DropReason::UnknownVpc);
        };
        let (src_port, dst_port) = (packet.ports.map(|p| p.src), packet.ports.map(|p| p.dst));
        let s = match packet.src {
            IpAddr::V4(a) => self.ports.class(self.src4.find(vpc, a.into()), src_port),
            IpAddr::V6(a) => self.side6(vpc, t, true, a.into(), src_port),
        };
        let d = match packet.dst {
            IpAddr::V4(a) => self.ports.class(self.dst4.find(vpc, a.into()), dst_port),
            IpAddr::V6(a) => self.side6(vpc, t, false, a.into(), dst_port),
        };
        self.verdict(self.matrices.word(vpc, s, d).unwrap_or(UNKNOWN_VPC))
    }

    /// The verdicts for a batch: `out[i]` is `lookup(&packets[i])`, computed in stages over
    /// 32 packets at a time: their VPCs, then their classes, then their verdicts.
    ///
    /// # Panics
    /// If `out` is not exactly as long as `packets` (a caller's bug, not an input error).
    pub fn lookup_batch(&self, packets: &[Packet], out: &mut [Verdict]) {
        assert_eq!(packets.len(), out.len(), "one verdict slot per packet");
        if packets.len() < LANES / 4 {
            // Too few to overlap: staging would cost more than it hides.
            for (packet, verdict) in packets.iter().zip(out.iter_mut()) {
                *verdict = self.lookup(packet);
            }
            return;
        }
        let (mut lanes, mut stages, mut words) = (Lanes::EMPTY, Stages::NEW, [0; LANES]);
        let mut ahead = packets.chunks(LANES).skip(1);
        for (first, chunk) in (0..).step_by(LANES).zip(packets.chunks(LANES)) {
            // The pool of a busy gateway is far larger than the caches: the next lanes'
            // packets are fetched while these are looked up.
            if let Some(next) = ahead.next() {
                prefetch(next);
            }
            let mut all_v4 = true;
            for (i, packet) in chunk.iter().enumerate() {
                all_v4 &= lanes.set(i, packet);
            }
            if !all_v4 {
                // The batch holds both families: the rest of it on the way that gathers them
                // (its state kept off this frame: an IPv4 batch does not pay for it).
                self.lookup_batch_of_both(packets, first, (&mut stages, &mut words), out);
                return;
            }
            self.lookup_lanes::<LANES>(&lanes, &mut stages, &mut words);
            self.put_verdicts(&mut out[first..first + chunk.len()], &words);
        }
    }

    /// [`Table::lookup_batch`] from the chunk at `first` on, which is not all IPv4: each chunk
    /// all IPv4 or all IPv6 looked up as it is, the others gathered by family.
    #[inline(never)]
    fn lookup_batch_of_both(
        &self,
        packets: &[Packet],
        first: usize,
        (stages, words): (&mut Stages, &mut [u32; LANES]),
        out: &mut [Verdict],
    ) {
        let mut dual = Dual::NEW;
        let mut ahead = packets[first..].chunks(LANES).skip(1);
        for (first, chunk) in (first..).step_by(LANES).zip(packets[first..].chunks(LANES)) {
            if let Some(next) = ahead.next() {
                prefetch(next);
            }
            self.lookup_chunk_of_both(&mut dual, (chunk, first), stages, words, out);
        }
        let mut emit = |at: u32, word: u32| out[at as usize] = self.verdict(word);
        if dual.four.n > 0 {
            self.flush_four(&mut dual.four, stages, words, &mut emit);
        }
        if let Some(six) = &self.six {
            if dual.six.n > 0 {
                self.flush_six(six, &mut dual.six, stages, words, &mut emit);
            }
            if dual.mixed.n > 0 {
                self.flush_mixed(six, &mut dual.mixed, stages, words, &mut emit);
            }
        }
    }

    /// [`Table::lookup_batch`]'s chunk of `packets` from `first`, its families found before
    /// any lane is filled: all IPv4 or all IPv6, looked up as they are; else each packet
    /// joins its family's gathered lanes, or the lanes of packets of mixed families, which
    /// are looked up whenever they are full.
    #[inline(always)]
    fn lookup_chunk_of_both(
        &self,
        dual: &mut Dual,
        (packets, first): (&[Packet], usize),
        stages: &mut Stages,
        words: &mut [u32; LANES],
        out: &mut [Verdict],
    ) {
        // Each packet's family, as masks: IPv4 on both sides, IPv6 on both sides.
        let (mut four, mut six) = (0u64, 0u64);
        for (i, packet) in packets.iter().enumerate() {
            let (src6, dst6) = (packet.src.is_ipv6(), packet.dst.is_ipv6());
            four |= u64::from(!(src6 | dst6)) << i;
            six |= u64::from(src6 & dst6) << i;
        }
        let all = u64::MAX >> (64 - packets.len());
        let chunk_out = &mut out[first..first + packets.len()];
        if four == all {
            for (i, packet) in packets.iter().enumerate() {
                dual.chunk4.set(i, packet);
            }
            self.lookup_lanes::<LANES>(&dual.chunk4, stages, words);
            self.put_verdicts(chunk_out, words);
            return;
        }
        let sides6 = self.six.as_ref();
        if let (Some(sides6), true) = (sides6, six == all) {
            for (i, packet) in packets.iter().enumerate() {
                dual.chunk6.set(i, packet);
            }
            self.lookup_lanes6::<LANES>(sides6, &dual.chunk6, stages, words);
            self.put_verdicts(chunk_out, words);
            return;
        }
        let mut emit = |at: u32, word: u32| out[at as usize] = self.verdict(word);
        let mut bits = four;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let g = &mut dual.four;
            g.lanes.set(g.n, &packets[i]);
            if g.filled(first + i) {
                self.flush_four(g, stages, words, &mut emit);
            }
        }
        let Some(sides6) = sides6 else {
            // No IPv6 sides: the IPv6 packets are looked up on their own.
            let mut rest = all & !four;
            while rest != 0 {
                let i = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                out[first + i] = self.lookup(&packets[i]);
            }
            return;
        };
        let mut bits = six;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let g = &mut dual.six;
            g.lanes.set(g.n, &packets[i]);
            if g.filled(first + i) {
                self.flush_six(sides6, g, stages, words, &mut emit);
            }
        }
        let mut mixed = all & !(four | six);
        while mixed != 0 {
            let i = mixed.trailing_zeros() as usize;
            mixed &= mixed - 1;
            let g = &mut dual.mixed;
            g.lanes.set(g.n, &packets[i]);
            if g.filled(first + i) {
                self.flush_mixed(sides6, g, stages, words, &mut emit);
            }
        }
    }

    /// Looks up the gathered IPv4 lanes, hands each filled lane's batch index and verdict
    /// word to `emit`, and empties them.
    #[inline(always)]
    fn flush_four(
        &self,
        g: &mut Gather<Lanes>,
        st: &mut Stages,
        words: &mut [u32; LANES],
        emit: &mut impl FnMut(u32, u32),
    ) {
        match g.n <= HALF {
            true => self.lookup_gathered::<HALF>(&g.lanes, st, words),
            false => self.lookup_gathered::<LANES>(&g.lanes, st, words),
        }
        g.drain(words, emit);
    }

    /// [`Table::flush_four`] of the gathered IPv6 lanes.
    #[inline(always)]
    fn flush_six(
        &self,
        six: &Sides6,
        g: &mut Gather<Lanes6>,
        st: &mut Stages,
        words: &mut [u32; LANES],
        emit: &mut impl FnMut(u32, u32),
    ) {
        match g.n <= HALF {
            true => self.lookup_gathered6::<HALF>(six, &g.lanes, st, words),
            false => self.lookup_gathered6::<LANES>(six, &g.lanes, st, words),
        }
        g.drain(words, emit);
    }

    /// [`Table::flush_four`] of the gathered packets of mixed families.
    #[inline(always)]
    fn flush_mixed(
        &self,
        six: &Sides6,
        g: &mut Gather<LanesMixed>,
        st: &mut Stages,
        words: &mut [u32; LANES],
        emit: &mut impl FnMut(u32, u32),
    ) {
        match g.n <= HALF {
            true => self.lookup_lanes_mixed::<HALF>(six, &g.lanes, st, words),
            false => self.lookup_lanes_mixed::<LANES>(six, &g.lanes, st, words),
        }
        g.drain(words, emit);
    }

    /// [`Table::lookup_lanes`] of gathered lanes, kept out of the gathering loops, which run
    /// it once every [`LANES`] packets of a family: inlined into them, a Wasm guest's IPv6
    /// packets took 9-12 % longer.
    #[inline(never)]
    fn lookup_gathered<const N: usize>(
        &self,
        lanes: &Lanes,
        st: &mut Stages,
        words: &mut [u32; LANES],
    ) {
        self.lookup_lanes::<N>(lanes, st, words);
    }

    /// [`Table::lookup_lanes6`] of gathered lanes (see [`Table::lookup_gathered`]).
    #[inline(never)]
    fn lookup_gathered6<const N: usize>(
        &self,
        six: &Sides6,
        lanes: &Lanes6,
        st: &mut Stages,
        words: &mut [u32; LANES],
    ) {
        self.lookup_lanes6::<N>(six, lanes, st, words);
    }

    /// The verdicts of the IPv4 packets in `lanes`, as packed verdict words, in stages: every
    /// packet's VPC, then every packet's source and destination segment values, then the
    /// port classes of the values that name a port map, then every verdict. Within a stage
    /// the packets' lookups are independent, so the CPU runs many of them at once and their
    /// cache misses overlap; one packet at a time, each lookup is a chain of dependent loads.
    /// The first `N` lanes are looked up (all [`LANES`] of a chunk, as many turns as a
    /// flush of gathered lanes fills), whatever they hold, so that each stage's loop has a
    /// constant count, which the compilers unroll (in Wasm, a loop would also pay an epoch
    /// check a turn). The port stage is the exception: only the values that name a port map (about
    /// two in five on the realistic workloads) are marked in a mask, and only they pay for a
    /// map's load and search.
    ///
    /// `st` holds the stages' answers. Natively it is a local of the caller. A Wasm guest's
    /// packed path keeps it, the lanes and the words in a static: a local array of a guest
    /// lives on the shadow stack, at an offset from a stack pointer that Cranelift keeps
    /// reloading from a spill slot, where a static's address is a constant folded into every
    /// access (this, and the records' ports read without a branch: Wasm 43 -> 35 ns a packet
    /// at 1,000 peerings). In the guest this is inlined into that path, so that the
    /// constant addresses reach every stage.
    #[cfg_attr(target_family = "wasm", inline(always))]
    fn lookup_lanes<const N: usize>(&self, lanes: &Lanes, st: &mut Stages, out: &mut [u32; LANES]) {
        if !self.lane_vpcs::<N>(&lanes.vni, st, out) {
            return;
        }
        let [src, dst] = &mut st.sides;
        self.src4.find_lanes::<N>(&st.roots, &lanes.src, src);
        self.dst4.find_lanes::<N>(&st.roots, &lanes.dst, dst);
        self.lane_verdicts::<N>(&lanes.ports, st, out);
    }

    /// [`Table::lookup_lanes`] of IPv6 packets: the tries over the addresses' halves, then
    /// the same port maps and matrices.
    #[cfg_attr(target_family = "wasm", inline(always))]
    fn lookup_lanes6<const N: usize>(
        &self,
        six: &Sides6,
        lanes: &Lanes6,
        st: &mut Stages,
        out: &mut [u32; LANES],
    ) {
        if !self.lane_vpcs::<N>(&lanes.vni, st, out) {
            return;
        }
        let [src, dst] = &mut st.sides;
        let w = &mut st.walks;
        six.src
            .find_lanes::<N>(&st.roots, (&lanes.src, &lanes.src_low), w, src);
        six.dst
            .find_lanes::<N>(&st.roots, (&lanes.dst, &lanes.dst_low), w, dst);
        self.lane_verdicts::<N>(&lanes.ports, st, out);
    }

    /// [`Table::lookup_lanes`] of packets of mixed families: each side looked up in both
    /// families' tries, the address's family choosing the value. Such packets are rare (no
    /// real IP packet is one), and this costs the stages of both families.
    #[inline(never)]
    fn lookup_lanes_mixed<const N: usize>(
        &self,
        six: &Sides6,
        lanes: &LanesMixed,
        st: &mut Stages,
        out: &mut [u32; LANES],
    ) {
        if !self.lane_vpcs::<N>(&lanes.four.vni, st, out) {
            return;
        }
        let [src, dst] = &mut st.sides;
        self.src4.find_lanes::<N>(&st.roots, &lanes.four.src, src);
        self.dst4.find_lanes::<N>(&st.roots, &lanes.four.dst, dst);
        let (w, mut found) = (&mut st.walks, [0; LANES]);
        let l6 = &lanes.six;
        six.src
            .find_lanes::<N>(&st.roots, (&l6.src, &l6.src_low), w, &mut found);
        for ((value, &found), &v6) in src.iter_mut().zip(&found).zip(&lanes.v6[0]).take(N) {
            *value = select_unpredictable(v6, found, *value);
        }
        six.dst
            .find_lanes::<N>(&st.roots, (&l6.dst, &l6.dst_low), w, &mut found);
        for ((value, &found), &v6) in dst.iter_mut().zip(&found).zip(&lanes.v6[1]).take(N) {
            *value = select_unpredictable(v6, found, *value);
        }
        self.lane_verdicts::<N>(&lanes.four.ports, st, out);
    }

    /// The first stage of a lookup: each lane's VPC and the root its tables are read from
    /// (lanes of no VPC search VPC 0's tables for nothing). `false`, with every word
    /// `drop(unknown-vpc)`, for a table of no VPCs.
    #[inline(always)]
    fn lane_vpcs<const N: usize>(
        &self,
        vnis: &[u32; LANES],
        st: &mut Stages,
        out: &mut [u32; LANES],
    ) -> bool {
        // Every lookup of lanes starts here: `N` is held to whole turns once, for all stages.
        const { assert!(N > 0 && N <= LANES && N.is_multiple_of(TURN)) };
        self.vnis.find_lanes::<N>(vnis, &mut st.vpcs);
        if self.per_vpc.is_empty() {
            out.fill(UNKNOWN_VPC);
            return false;
        }
        for (root, &vpc) in st.roots.iter_mut().zip(&st.vpcs).take(N) {
            *root = select_unpredictable(vpc != NO_VPC, vpc, 0);
        }
        true
    }

    /// The last stages of a lookup: the values that name a port map resolved by the lanes'
    /// ports, then every lane's verdict word.
    #[inline(always)]
    fn lane_verdicts<const N: usize>(
        &self,
        ports: &[[u32; LANES]; 2],
        st: &mut Stages,
        out: &mut [u32; LANES],
    ) {
        // The values that name a port map, as a mask built without a branch; only they are
        // resolved, lowest bit first.
        // A table without port maps skips the stage (a branch every batch takes alike).
        if !self.ports.is_empty() {
            // Only the first N lanes of each side.
            let live = u64::MAX >> (64 - N);
            let mut ported = ported_mask(&st.sides) & (live | live << LANES);
            let (sides, ports) = (st.sides.as_flattened_mut(), ports.as_flattened());
            while ported != 0 {
                let k = ported.trailing_zeros() as usize;
                ported &= ported - 1;
                sides[k] = self.ports.ported_class(sides[k], ports[k]);
            }
        }
        let [src, dst] = &st.sides;
        for (i, word) in out.iter_mut().enumerate().take(N) {
            *word = self
                .matrices
                .word(st.vpcs[i], src[i], dst[i])
                .unwrap_or(UNKNOWN_VPC);
        }
    }

    /// The names behind the verdicts.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The VPCs, in name order: a [`VpcId`] indexes this slice.
    pub fn vpcs(&self) -> &[VpcEntry] {
        &self.catalog.vpcs
    }

    /// The VPC with this id.
    pub fn vpc(&self, id: VpcId) -> &VpcEntry {
        self.catalog.vpc(id)
    }

    /// The VPC whose VNI is `vni`.
    #[inline]
    pub fn vpc_by_vni(&self, vni: u32) -> Option<VpcId> {
        let vpc = self.vnis.find(vni);
        (vpc != NO_VPC).then_some(VpcId(vpc))
    }

    /// The VPC named `name`.
    pub fn vpc_by_name(&self, name: &str) -> Option<VpcId> {
        self.catalog.vpc_by_name(name)
    }

    /// The candidates of an ambiguous verdict, in name order.
    pub fn candidates(&self, id: CandidatesId) -> &[VpcId] {
        self.catalog.candidates(id)
    }

    /// The verdict in the notation of the spec; see [`Catalog::verdict_text`].
    pub fn verdict_text(&self, verdict: Verdict) -> String {
        self.catalog.verdict_text(verdict)
    }
}

/// Judges a packed batch: `output` gets one verdict record per packet of `input`, or nothing
/// when `input` does not follow the batch layout (an IPv6 address past the list included).
/// With no table, every packet is `drop(unknown-vpc)`.
pub fn judge_packed(table: Option<&Table>, input: &[u8], output: &mut Vec<u8>) {
    output.clear();
    let Some(batch) = Batch::parse(input) else {
        return;
    };
    let Some(table) = table else {
        if batch.packets().all(|p| p.is_some()) {
            let record = UNKNOWN_VPC.to_le_bytes();
            output.extend(std::iter::repeat_n(record, batch.len()).flatten());
        }
        return;
    };
    // Reserved, not zeroed: each chunk's records are appended as they are judged.
    output.reserve_exact(batch.len() * VERDICT_BYTES);
    #[cfg(target_family = "wasm")]
    let judged = {
        thread_local! {
            static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::NEW) };
        }
        SCRATCH.with_borrow_mut(|s| judge_lanes(table, &batch, output, s))
    };
    #[cfg(not(target_family = "wasm"))]
    let judged = {
        let mut scratch = Scratch::NEW;
        judge_lanes(table, &batch, output, &mut scratch)
    };
    if judged.is_err() {
        output.clear();
    }
}

/// The working memory of [`judge_packed`]: a chunk's lanes, the lookup's stages, the
/// verdict words and their records. Natively it lives on the stack; a Wasm guest keeps it in
/// a static (see `Table::lookup_lanes` for why).
#[derive(Debug, Clone)]
struct Scratch {
    lanes: Lanes,
    /// A chunk of IPv6 packets.
    lanes6: Lanes6,
    stages: Stages,
    words: [u32; LANES],
    records: [[u8; VERDICT_BYTES]; LANES],
    /// Each family's packets of a batch that holds both.
    dual: Dual,
}

impl Scratch {
    const NEW: Scratch = Scratch {
        lanes: Lanes::EMPTY,
        lanes6: Lanes6::EMPTY,
        stages: Stages::NEW,
        words: [0; LANES],
        records: [[0; VERDICT_BYTES]; LANES],
        dual: Dual::NEW,
    };
}

/// The upper and lower halves of IPv6 address `index` of `list`, and whether the index is
/// past the list (then the halves are zero's): no branch on the index.
#[inline(always)]
fn listed(list: &[[u8; 16]], index: u32) -> ((u64, u64), bool) {
    let address = list.get(index as usize);
    (halves(address.unwrap_or(&[0; 16])), address.is_none())
}

/// Appends `batch`'s verdict records to `output` (one a packet) [`LANES`] packets at a time:
/// their columns' words straight into the lanes, the lanes looked up in stages. A chunk all
/// of one family fills that family's lanes as it is; in a chunk of both, each IPv4 or IPv6
/// packet joins its family's gathered lanes, looked up whenever they fill (and at the end),
/// their records written in place, and a packet of mixed families is looked up on its own.
/// `Err` for an IPv6 address past the list.
#[inline(always)]
fn judge_lanes(
    table: &Table,
    batch: &Batch<'_>,
    output: &mut Vec<u8>,
    s: &mut Scratch,
) -> Result<(), ()> {
    let word = |w: &[u8; 4]| u32::from_le_bytes(*w);
    let columns = [
        column::VNI,
        column::SHAPE,
        column::PORTS,
        column::SRC,
        column::DST,
    ]
    .map(|c| batch.column(c).chunks(LANES));
    let [vnis, shapes, ports, srcs, dsts] = columns;
    let chunks = vnis.zip(shapes).zip(ports).zip(srcs.zip(dsts));
    let list = batch.v6_list();
    // Nothing gathered is left from a batch refused before its end.
    (s.dual.four.n, s.dual.six.n, s.dual.mixed.n) = (0, 0, 0);
    for (first, (((vni, shape), ports), (src, dst))) in (0..).step_by(LANES).zip(chunks) {
        // The families of the chunk: the shape bits any packet has, and those all have.
        let (mut any, mut every) = (0, u32::MAX);
        for shape in shape {
            (any, every) = (any | word(shape), every & word(shape));
        }
        let fields = vni
            .iter()
            .zip(shape)
            .zip(ports.iter().zip(src.iter().zip(dst)))
            .enumerate();
        if any & shape::V6 == 0 {
            for (i, ((vni, shape), (ports, (src, dst)))) in fields {
                s.lanes.put(
                    i,
                    word(vni),
                    (word(src), word(dst)),
                    word(shape) & shape::PORTS != 0,
                    split_ports(word(ports)),
                );
            }
            table.lookup_lanes::<LANES>(&s.lanes, &mut s.stages, &mut s.words);
        } else if let (Some(six), true) = (&table.six, every & shape::V6 == shape::V6) {
            let mut bad = false;
            for (i, ((vni, shape), (ports, (src, dst)))) in fields {
                let (src, src_bad) = listed(list, word(src));
                let (dst, dst_bad) = listed(list, word(dst));
                bad |= src_bad | dst_bad;
                s.lanes6.put(
                    i,
                    word(vni),
                    (src, dst),
                    word(shape) & shape::PORTS != 0,
                    split_ports(word(ports)),
                );
            }
            if bad {
                return Err(());
            }
            table.lookup_lanes6::<LANES>(six, &s.lanes6, &mut s.stages, &mut s.words);
        } else {
            let at = output.len();
            output.resize(at + vni.len() * VERDICT_BYTES, 0);
            judge_dual(table, batch, first, output, s)?;
            continue;
        }
        let words = &s.words[..vni.len()];
        let records = &mut s.records[..words.len()];
        for (record, word) in records.iter_mut().zip(words.iter()) {
            *record = word.to_le_bytes();
        }
        output.extend_from_slice(records.as_flattened());
    }
    let mut emit = |at: u32, word: u32| put_record(output, at, word);
    if s.dual.four.n > 0 {
        table.flush_four(&mut s.dual.four, &mut s.stages, &mut s.words, &mut emit);
    }
    if let Some(six) = &table.six {
        if s.dual.six.n > 0 {
            table.flush_six(six, &mut s.dual.six, &mut s.stages, &mut s.words, &mut emit);
        }
        if s.dual.mixed.n > 0 {
            let mixed = &mut s.dual.mixed;
            table.flush_mixed(six, mixed, &mut s.stages, &mut s.words, &mut emit);
        }
    }
    Ok(())
}

/// Writes the verdict record of packet `at` in place.
#[inline(always)]
fn put_record(output: &mut [u8], at: u32, word: u32) {
    let at = at as usize * VERDICT_BYTES;
    if let Some(record) = output.get_mut(at..at + VERDICT_BYTES) {
        record.copy_from_slice(&word.to_le_bytes());
    }
}

/// Judges the chunk of up to [`LANES`] packets from `first` of a batch that holds both
/// families (their records already in `output`): the chunk's IPv4 packets, then its IPv6
/// ones, join their family's gathered lanes, which are looked up whenever they fill; the
/// packets of mixed families (and IPv6 ones when the table has no IPv6 sides) are looked up
/// on their own. `Err` for an IPv6 address past the list.
#[inline(always)]
fn judge_dual(
    table: &Table,
    batch: &Batch<'_>,
    first: usize,
    output: &mut [u8],
    s: &mut Scratch,
) -> Result<(), ()> {
    let word = |w: &[u8; 4]| u32::from_le_bytes(*w);
    let end = batch.len().min(first + LANES);
    let column = |c: usize| batch.column(c).get(first..end).unwrap_or_default();
    let (vnis, shapes, ports, srcs, dsts) = (
        column(column::VNI),
        column(column::SHAPE),
        column(column::PORTS),
        column(column::SRC),
        column(column::DST),
    );
    let list = batch.v6_list();
    // Each packet's family, as masks: IPv4 on both sides, IPv6 on both sides (when the table
    // has IPv6 sides).
    let has_six = table.six.is_some();
    let (mut four, mut six) = (0u64, 0u64);
    for (i, shape) in shapes.iter().enumerate() {
        let shape = word(shape);
        let (src6, dst6) = (shape & shape::SRC_V6 != 0, shape & shape::DST_V6 != 0);
        four |= u64::from(!(src6 | dst6)) << i;
        six |= u64::from(src6 & dst6 & has_six) << i;
    }
    let field = |c: &[[u8; 4]], i: usize| c.get(i).map_or(0, word);
    let mut emit = |at: u32, word: u32| put_record(output, at, word);
    let mut bits = four;
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        let g = &mut s.dual.four;
        g.lanes.put(
            g.n,
            field(vnis, i),
            (field(srcs, i), field(dsts, i)),
            field(shapes, i) & shape::PORTS != 0,
            split_ports(field(ports, i)),
        );
        if g.filled(first + i) {
            table.flush_four(g, &mut s.stages, &mut s.words, &mut emit);
        }
    }
    if let Some(sides6) = &table.six {
        let mut bad = false;
        let mut bits = six;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let (src, src_bad) = listed(list, field(srcs, i));
            let (dst, dst_bad) = listed(list, field(dsts, i));
            bad |= src_bad | dst_bad;
            let g = &mut s.dual.six;
            g.lanes.put(
                g.n,
                field(vnis, i),
                (src, dst),
                field(shapes, i) & shape::PORTS != 0,
                split_ports(field(ports, i)),
            );
            if g.filled(first + i) {
                table.flush_six(sides6, g, &mut s.stages, &mut s.words, &mut emit);
            }
        }
        // Packets of mixed families: each address into both families' lanes, a listed
        // one read only when it is IPv6.
        let all = u64::MAX.checked_shr(64 - shapes.len() as u32).unwrap_or(0);
        let mut bits = all & !(four | six);
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let shape = field(shapes, i);
            let (src6, dst6) = (shape & shape::SRC_V6 != 0, shape & shape::DST_V6 != 0);
            let (src, dst) = (field(srcs, i), field(dsts, i));
            let (src_halves, src_bad) = listed(list, select_unpredictable(src6, src, 0));
            let (dst_halves, dst_bad) = listed(list, select_unpredictable(dst6, dst, 0));
            bad |= (src6 & src_bad) | (dst6 & dst_bad);
            let (vni, has_ports) = (field(vnis, i), shape & shape::PORTS != 0);
            let ports = split_ports(field(ports, i));
            let g = &mut s.dual.mixed;
            let lanes = &mut g.lanes;
            lanes.four.put(g.n, vni, (src, dst), has_ports, ports);
            lanes
                .six
                .put(g.n, vni, (src_halves, dst_halves), has_ports, ports);
            (lanes.v6[0][g.n], lanes.v6[1][g.n]) = (src6, dst6);
            if g.filled(first + i) {
                table.flush_mixed(sides6, g, &mut s.stages, &mut s.words, &mut emit);
            }
        }
        return if bad { Err(()) } else { Ok(()) };
    }
    // No IPv6 sides: the IPv6 packets, and those of mixed families, on their own.
    let all = u64::MAX.checked_shr(64 - shapes.len() as u32).unwrap_or(0);
    let mut mixed = all & !four;
    while mixed != 0 {
        let i = mixed.trailing_zeros() as usize;
        mixed &= mixed - 1;
        let packet = batch.packet(first + i).ok_or(())?;
        put_record(
            output,
            (first + i) as u32,
            verdict_word(table.lookup(&packet)),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_off_its_layout_gets_no_verdicts() {
        let packet = Packet::portless(
            1,
            "fd00::1".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            58,
        );
        let mut good = Vec::new();
        crate::batch::encode_packets(&[packet; 2], &mut good);
        let mut out = vec![1, 2, 3];
        judge_packed(None, &good, &mut out);
        assert_eq!(out, [0; 8], "drop(unknown-vpc) without a table");

        let mut more = good.clone();
        more[0] = 3;
        let mut index_past_the_list = good.clone();
        // Packet 1's source address index (word 1 + 3n + 1) is 2 of a list of 2.
        index_past_the_list[4 * 8..4 * 9].copy_from_slice(&2u32.to_le_bytes());
        for (bad, why) in [
            (&good[..good.len() - 1], "a partial word"),
            (&good[..good.len() - 4], "a partial address list"),
            (&good[..3], "no packet count"),
            (&more[..], "more packets than the columns hold"),
            (&[0xff; 4][..], "a count whose columns overflow"),
        ] {
            assert!(Batch::parse(bad).is_none(), "{why}");
            judge_packed(None, bad, &mut out);
            assert!(out.is_empty(), "{why}");
        }
        assert!(Batch::parse(&index_past_the_list).is_some());
        let table = Table::build(&crate::Config::default()).unwrap();
        for table in [None, Some(&table)] {
            judge_packed(table, &good, &mut out);
            assert_eq!(out.len(), 8);
            judge_packed(table, &index_past_the_list, &mut out);
            assert!(out.is_empty(), "an IPv6 address past the list");
        }
    }
}
