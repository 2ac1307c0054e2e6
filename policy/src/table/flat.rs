//! The IPv4 lookup structures, laid out so that a search never branches on the data and
//! never follows a pointer it could compute:
//!
//! - [`Side4`]: one side (source or destination) of every VPC's IPv4 segment table: a
//!   [`Trie`] (one to four loads) when it fits its memory budget, else [`Padded`]: each VPC's
//!   table padded to the same power-of-two length `L`, VPC `v`'s at `v * L` of one array. A
//!   padded search is `log2(L)` steps of compare-and-`cmov`, the same count for every packet,
//!   so even the loop exit is predicted; and the table's address is arithmetic on the VPC
//!   index.
//! - [`PortMap`]: a segment's port ranges, padded to 8 in one cache line, searched in three
//!   such steps (in a Wasm guest with `simd128`, one compare of all eight starts).
//! - [`VniIndex`]: the VNIs, dense when their numbering is, else a trie, else padded.
//!
//! Padding costs memory only for VPCs with fewer segments than the largest (a few hundred
//! bytes each). A VPC whose table would make `L` exceed [`MAX_FLAT`] keeps its own table,
//! marked [`BIG`] in its padded slot and searched on a rare branch; so does a port map of more
//! than 8 ranges ([`LONG`]).

use std::hint::select_unpredictable;

use super::trie::{Narrow, Trie};

/// Packets a batch lookup takes through its stages together: enough to keep the CPU's
/// load queue busy, few enough that the stages' state stays in registers and L1.
pub(super) const LANES: usize = 32;

/// A tree value flag: the rest is an index into the port maps, not a class.
pub(super) const PORTED: u32 = 1 << 31;
/// A flag beside [`PORTED`]: the port map is one of the long ones.
pub(super) const LONG: u32 = 1 << 30;
/// A value of a padded slot: the VPC's table is in [`Padded::big`] at this index. (An IPv6
/// side's leaf with this flag is a split /64's: `six::SPLIT`.)
pub(super) const BIG: u32 = 1 << 29;
pub(super) const FLAGS: u32 = PORTED | LONG | BIG;

/// The largest padded length: beyond it a VPC's table is kept on its own.
pub(super) const MAX_FLAT: usize = 1 << 10;
/// Padded sides take at most this many times the bytes of their tables...
const PAD_FACTOR: usize = 8;
/// ... or this many bytes, whichever is more.
const PAD_FLOOR: usize = 1 << 20;

/// The index of the last of `keys` at most `key` (`keys.len()` a power of two, `keys[0]`
/// at most every key searched for): `log2(len)` compare-and-select steps.
#[inline(always)]
fn search_pow2<K: Copy + Ord>(keys: &[K], key: K) -> usize {
    let mut base = 0;
    let mut half = keys.len() / 2;
    while half > 0 {
        base = select_unpredictable(keys[base + half] <= key, base + half, base);
        half /= 2;
    }
    base
}

/// [`search_pow2`] in two arrays of the same length at once, so their loads overlap.
#[inline(always)]
fn search2_pow2(a: &[u32], key_a: u32, b: &[u32], key_b: u32) -> (usize, usize) {
    debug_assert_eq!(a.len(), b.len());
    let (mut base_a, mut base_b) = (0, 0);
    let mut half = a.len() / 2;
    while half > 0 {
        base_a = select_unpredictable(a[base_a + half] <= key_a, base_a + half, base_a);
        base_b = select_unpredictable(b[base_b + half] <= key_b, base_b + half, base_b);
        half /= 2;
    }
    (base_a, base_b)
}

/// One side (source or destination) of every VPC's IPv4 segment table: a [`Trie`] when it
/// fits its memory budget (the common case), its last level [`Narrow`] when that saves a
/// quarter of its memory or more, else padded tables searched by compare.
#[derive(Debug, Clone)]
pub(super) enum Side4 {
    Trie(Trie),
    Narrow(Narrow),
    Padded(Padded),
}

/// Tries may take this many times the bytes of their tables...
const TRIE_FACTOR: usize = 32;
/// ... or this many bytes, whichever is more...
const TRIE_FLOOR: usize = 4 << 20;
/// ... but never more than this: a guest has a few hundred MiB in all (the module's memory
/// cap), and a configuration that fitted with searched tables must still fit.
pub(super) const TRIE_CAP: usize = 32 << 20;

/// The byte budget of a trie of `tables`: none without `tries`.
pub(super) fn trie_budget(tables: &[(Vec<u32>, Vec<u32>)], tries: bool) -> usize {
    let own: usize = tables.iter().map(|t| t.0.len() * 8).sum();
    budget_of(own, tries)
}

/// The byte budget of a trie of tables of `own` bytes: none without `tries`.
pub(super) fn budget_of(own: usize, tries: bool) -> usize {
    if tries {
        own.saturating_mul(TRIE_FACTOR).clamp(TRIE_FLOOR, TRIE_CAP)
    } else {
        0
    }
}

impl Side4 {
    /// The side of the tables `tables[v]` (each `(starts, values)`, `starts[0] == 0`): a trie
    /// if `tries` and it fits its budget, its last level narrow if that saves a quarter.
    pub(super) fn new(tables: &[(Vec<u32>, Vec<u32>)], tries: bool) -> Side4 {
        match Trie::new(tables, trie_budget(tables, tries)) {
            Some(trie) => match Narrow::of(&trie, tables.len().max(1)) {
                Some(narrow) if narrow.bytes() * 4 <= trie.bytes() * 3 => Side4::Narrow(narrow),
                _ => Side4::Trie(trie),
            },
            None => Side4::Padded(Padded::new(tables)),
        }
    }

    /// The value of `key` in VPC `vpc`'s table.
    #[inline]
    pub(super) fn find(&self, vpc: u32, key: u32) -> u32 {
        match self {
            Side4::Trie(trie) => trie.find(vpc, key),
            Side4::Narrow(narrow) => narrow.find(vpc, key),
            Side4::Padded(padded) => padded.find(vpc, key),
        }
    }

    /// For each of the first `N` lanes `i` (a multiple of [`TURN`]), the value of `keys[i]`
    /// in VPC `vpcs[i]`'s table (`vpcs[i]` must be a VPC of the table).
    #[inline(always)]
    pub(super) fn find_lanes<const N: usize>(
        &self,
        vpcs: &[u32; LANES],
        keys: &[u32; LANES],
        out: &mut [u32; LANES],
    ) {
        match self {
            Side4::Trie(trie) => trie_find_lanes::<N>(trie, vpcs, keys, out),
            Side4::Narrow(narrow) => narrow_find_lanes::<N>(narrow, vpcs, keys, out),
            Side4::Padded(padded) => padded.find_lanes::<N>(vpcs, keys, out),
        }
    }

    /// Bytes the side takes.
    pub(super) fn bytes(&self) -> usize {
        match self {
            Side4::Trie(trie) => trie.bytes(),
            Side4::Narrow(narrow) => narrow.bytes(),
            Side4::Padded(padded) => padded.bytes(),
        }
    }
}

/// [`Trie::find`] of the first `N` lanes, the depth dispatched once.
#[inline(always)]
fn trie_find_lanes<const N: usize>(
    trie: &Trie,
    roots: &[u32; LANES],
    keys: &[u32; LANES],
    out: &mut [u32; LANES],
) {
    match trie.depth() {
        1 => trie_lanes::<1, N>(trie, roots, keys, out),
        2 => trie_lanes::<2, N>(trie, roots, keys, out),
        3 => trie_lanes::<3, N>(trie, roots, keys, out),
        _ => trie_lanes::<4, N>(trie, roots, keys, out),
    }
}

/// Lanes a turn of a trie level's loop takes (the loop over [`LANES`] cut in chunks, each
/// unrolled whole). In Wasm every turn of a loop begins with an epoch check (two loads, a
/// compare and a branch, the pointer reloaded from a spill slot) and the loop's own count,
/// and LLVM unrolls these loops only by two: eight lanes a turn take 7-10 % off the Wasm
/// lookup, 1-3 % natively. (The VNI and verdict loops cut the same way gain nothing.)
pub(super) const TURN: usize = 8;

const _: () = assert!(LANES.is_multiple_of(TURN));

#[inline(always)]
fn trie_lanes<const D: u32, const N: usize>(
    trie: &Trie,
    roots: &[u32; LANES],
    keys: &[u32; LANES],
    out: &mut [u32; LANES],
) {
    *out = *roots;
    for level in 0..D {
        let (outs, keys) = (out.as_chunks_mut::<TURN>().0, keys.as_chunks::<TURN>().0);
        for (out, keys) in outs.iter_mut().zip(keys).take(N / TURN) {
            for (out, &key) in out.iter_mut().zip(keys) {
                *out = trie.step(*out, key, level);
            }
        }
    }
}

/// [`Narrow::find`] of the first `N` lanes, the depth dispatched once.
#[inline(always)]
fn narrow_find_lanes<const N: usize>(
    narrow: &Narrow,
    roots: &[u32; LANES],
    keys: &[u32; LANES],
    out: &mut [u32; LANES],
) {
    match narrow.depth {
        2 => narrow_lanes::<2, N>(narrow, roots, keys, out),
        3 => narrow_lanes::<3, N>(narrow, roots, keys, out),
        _ => narrow_lanes::<4, N>(narrow, roots, keys, out),
    }
}

#[inline(always)]
fn narrow_lanes<const D: u32, const N: usize>(
    narrow: &Narrow,
    roots: &[u32; LANES],
    keys: &[u32; LANES],
    out: &mut [u32; LANES],
) {
    *out = *roots;
    for level in 0..D {
        let (outs, keys) = (out.as_chunks_mut::<TURN>().0, keys.as_chunks::<TURN>().0);
        for (out, keys) in outs.iter_mut().zip(keys).take(N / TURN) {
            for (out, &key) in out.iter_mut().zip(keys) {
                *out = match level + 1 == D {
                    false => narrow.step(*out, key, level),
                    true => narrow.leaf(*out, key, level),
                };
            }
        }
    }
}

/// One side of every VPC's IPv4 segment table, padded to one length.
#[derive(Debug, Clone, Default)]
pub(super) struct Padded {
    /// log2 of the padded length `L`.
    pub(super) log2: u32,
    /// Segment starts: VPC `v`'s at `v * L ..`, padded with `u32::MAX`.
    pub(super) keys: Box<[u32]>,
    /// The value of each segment: a class, or [`PORTED`] and a port map's index; padding
    /// repeats the last segment's value. A VPC kept on its own has [`BIG`] and its index.
    pub(super) values: Box<[u32]>,
    /// Tables too long to pad.
    pub(super) big: Box<[BigTable]>,
}

/// A VPC's table too long to pad, searched on its own.
#[derive(Debug, Clone)]
pub(super) struct BigTable {
    pub(super) starts: Box<[u32]>,
    pub(super) values: Box<[u32]>,
}

impl Padded {
    /// The side of the tables `tables[v]` (each `(starts, values)`, `starts[0] == 0`).
    pub(super) fn new(tables: &[(Vec<u32>, Vec<u32>)]) -> Padded {
        let longest = tables.iter().map(|t| t.0.len()).max().unwrap_or(1);
        // Padding may cost at most PAD_FACTOR times the tables' own size (or PAD_FLOOR
        // bytes): one VPC with many segments must not pad thousands of small ones to its
        // length. Tables longer than the chosen length are kept on their own.
        let own: usize = tables.iter().map(|t| t.0.len() * 8).sum();
        let budget = (own * PAD_FACTOR).max(PAD_FLOOR);
        let mut len = longest.next_power_of_two().clamp(1, MAX_FLAT);
        while len > 1 && tables.len() * len * 8 > budget {
            len /= 2;
        }
        let mut keys = Vec::with_capacity(tables.len() * len);
        let mut values = Vec::with_capacity(tables.len() * len);
        let mut big = Vec::new();
        for (starts, vals) in tables {
            if starts.len() > len {
                keys.push(0);
                values.push(BIG | big.len() as u32);
                big.push(BigTable {
                    starts: starts.clone().into(),
                    values: vals.clone().into(),
                });
                keys.resize(keys.len() + len - 1, u32::MAX);
                values.resize(values.len() + len - 1, BIG | (big.len() as u32 - 1));
                continue;
            }
            keys.extend_from_slice(starts);
            values.extend_from_slice(vals);
            let last = vals.last().copied().unwrap_or(0);
            keys.resize(keys.len() + len - starts.len(), u32::MAX);
            values.resize(values.len() + len - vals.len(), last);
        }
        Padded {
            log2: len.trailing_zeros(),
            keys: keys.into(),
            values: values.into(),
            big: big.into(),
        }
    }

    #[inline(always)]
    fn slot(&self, vpc: u32) -> std::ops::Range<usize> {
        let at = (vpc as usize) << self.log2;
        at..at + (1 << self.log2)
    }

    /// The value of `key` in VPC `vpc`'s table.
    #[inline]
    pub(super) fn find(&self, vpc: u32, key: u32) -> u32 {
        let slot = self.slot(vpc);
        let value = self.values[slot.start + search_pow2(&self.keys[slot], key)];
        self.unbig(value, key)
    }

    /// For each lane `i`, the value of `keys[i]` in VPC `vpcs[i]`'s table (`vpcs[i]` must be
    /// a VPC of the table). The lanes' searches run in lockstep, one step of every lane before
    /// the next step of any: each step's loads are independent across lanes, so their cache
    /// misses overlap instead of queueing one packet behind another.
    #[inline(always)]
    fn find_lanes<const N: usize>(
        &self,
        vpcs: &[u32; LANES],
        keys: &[u32; LANES],
        out: &mut [u32; LANES],
    ) {
        let mut at = [0usize; LANES];
        for (at, &vpc) in at.iter_mut().zip(vpcs).take(N) {
            *at = (vpc as usize) << self.log2;
        }
        let mut half = (1usize << self.log2) / 2;
        while half > 0 {
            for (at, &key) in at.iter_mut().zip(keys).take(N) {
                *at = select_unpredictable(self.keys[*at + half] <= key, *at + half, *at);
            }
            half /= 2;
        }
        for ((out, &at), &key) in out.iter_mut().zip(&at).zip(keys).take(N) {
            *out = self.unbig(self.values[at], key);
        }
    }

    /// Resolves a [`BIG`] value by searching the VPC's own table.
    #[inline(always)]
    fn unbig(&self, value: u32, key: u32) -> u32 {
        if value & FLAGS == BIG {
            self.find_big(value, key)
        } else {
            value
        }
    }

    #[cold]
    #[inline(never)]
    fn find_big(&self, value: u32, key: u32) -> u32 {
        let big = &self.big[(value & !BIG) as usize];
        big.values[big.starts.partition_point(|&k| k <= key) - 1]
    }

    /// Bytes the side takes.
    pub(super) fn bytes(&self) -> usize {
        (self.keys.len() + self.values.len()) * 4
            + self
                .big
                .iter()
                .map(|t| (t.starts.len() + t.values.len()) * 4)
                .sum::<usize>()
    }
}

/// The values of `src_key` in `src`'s and `dst_key` in `dst`'s table of VPC `vpc`: padded
/// searches in one loop when the sides have the same length, so their loads overlap.
#[inline(always)]
pub(super) fn find_pair(
    src: &Side4,
    dst: &Side4,
    vpc: u32,
    src_key: u32,
    dst_key: u32,
) -> (u32, u32) {
    let (Side4::Padded(src), Side4::Padded(dst)) = (src, dst) else {
        return (src.find(vpc, src_key), dst.find(vpc, dst_key));
    };
    if src.log2 != dst.log2 {
        return (src.find(vpc, src_key), dst.find(vpc, dst_key));
    }
    let (a, b) = (src.slot(vpc), dst.slot(vpc));
    let (i, j) = search2_pow2(&src.keys[a.clone()], src_key, &dst.keys[b.clone()], dst_key);
    (
        src.unbig(src.values[a.start + i], src_key),
        dst.unbig(dst.values[b.start + j], dst_key),
    )
}

/// The index of the last of a map's `starts` at most `port`: [`search_pow2`] with each step
/// an addition, not a select (LLVM's x86 backend turned a select of this search into a
/// branch, which mixed traffic mispredicts).
#[cfg(not(all(target_family = "wasm", target_feature = "simd128")))]
#[inline(always)]
fn port_index(starts: &[u16; MAP_RANGES], port: u16) -> usize {
    let mut base = 0;
    let mut half = MAP_RANGES / 2;
    while half > 0 {
        base += usize::from(starts[base + half] <= port) * half;
        half /= 2;
    }
    base
}

/// [`port_index`] in Wasm's vector instructions: the count of starts at most `port`, less one
/// (`starts[0]` is 0), from one compare of all eight.
#[cfg(all(target_family = "wasm", target_feature = "simd128"))]
#[inline(always)]
fn port_index(starts: &[u16; MAP_RANGES], port: u16) -> usize {
    use core::arch::wasm32::{i16x8_bitmask, u16x8, u16x8_le, u16x8_splat};
    let [a, b, c, d, e, f, g, h] = *starts;
    let at_most = u16x8_le(u16x8(a, b, c, d, e, f, g, h), u16x8_splat(port));
    i16x8_bitmask(at_most).count_ones() as usize - 1
}

/// The port of a lane whose packet has none: past every `u16`.
pub(super) const NO_PORT: u32 = 1 << 16;

/// Ranges in a [`PortMap`]: 99 % of the segments of the realistic workloads have at most 8
/// (most have 2 to 5); the others are searched on their own.
pub(super) const MAP_RANGES: usize = 8;

/// Port ranges of one segment, padded to [`MAP_RANGES`] and to one cache line: searched in
/// three steps (one vector compare in a Wasm guest), with one cache miss at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub(super) struct PortMap {
    /// First port of each range; `starts[0] == 0`, padding `u16::MAX`.
    pub(super) starts: [u16; MAP_RANGES],
    /// The class of each range; padding repeats the last.
    pub(super) classes: [u32; MAP_RANGES],
    /// The class of packets without ports.
    pub(super) portless: u32,
}

impl PortMap {
    /// The class of `port` ([`NO_PORT`] for none), chosen without a branch.
    #[inline(always)]
    fn class(&self, port: u32) -> u32 {
        let by_port = self.classes[port_index(&self.starts, port as u16)];
        select_unpredictable(port < NO_PORT, by_port, self.portless)
    }
}

/// Port maps of the IPv4 segments whose class depends on the port.
#[derive(Debug, Clone, Default)]
pub(super) struct PortMaps {
    pub(super) maps: Vec<PortMap>,
    /// Maps of more than [`MAP_RANGES`] ranges.
    pub(super) long: Vec<LongMap>,
}

/// A port map of more than [`MAP_RANGES`] ranges, searched on its own.
#[derive(Debug, Clone)]
pub(super) struct LongMap {
    pub(super) portless: u32,
    pub(super) starts: Box<[u16]>,
    pub(super) classes: Box<[u32]>,
}

impl PortMaps {
    /// The value of a segment whose port ranges `starts` (from 0) have `classes`.
    pub(super) fn add(&mut self, portless: u32, starts: &[u16], classes: &[u32]) -> u32 {
        if starts.len() > MAP_RANGES {
            self.long.push(LongMap {
                portless,
                starts: starts.into(),
                classes: classes.into(),
            });
            return PORTED | LONG | (self.long.len() as u32 - 1);
        }
        let mut map = PortMap {
            starts: [u16::MAX; MAP_RANGES],
            classes: [classes.last().copied().unwrap_or(portless); MAP_RANGES],
            portless,
        };
        map.starts[..starts.len()].copy_from_slice(starts);
        map.classes[..classes.len()].copy_from_slice(classes);
        self.maps.push(map);
        PORTED | (self.maps.len() as u32 - 1)
    }

    /// The class of a segment value for a packet with `port` (or none): the value itself,
    /// unless it names a port map. No branch on the data, except for long maps.
    #[inline(always)]
    pub(super) fn class(&self, value: u32, port: Option<u16>) -> u32 {
        let port = port.map_or(NO_PORT, u32::from);
        if value & (PORTED | LONG) == PORTED | LONG {
            return self.long_class(value, port);
        }
        let ported = value & PORTED != 0;
        let Some(map) = self
            .maps
            .get(select_unpredictable(ported, (value & !PORTED) as usize, 0))
        else {
            return value;
        };
        select_unpredictable(ported, map.class(port), value)
    }

    /// The class of a [`PORTED`] value for a lane's port ([`NO_PORT`] for none).
    #[inline(always)]
    pub(super) fn ported_class(&self, value: u32, port: u32) -> u32 {
        if value & LONG != 0 {
            return self.long_class(value, port);
        }
        self.maps[(value & !PORTED) as usize].class(port)
    }

    #[cold]
    #[inline(never)]
    fn long_class(&self, value: u32, port: u32) -> u32 {
        let map = &self.long[(value & !(PORTED | LONG)) as usize];
        match u16::try_from(port) {
            Ok(port) => map.classes[map.starts.partition_point(|&p| p <= port) - 1],
            Err(_) => map.portless,
        }
    }

    /// Whether there are no maps: no IPv4 segment's class depends on the port.
    pub(super) fn is_empty(&self) -> bool {
        self.maps.is_empty() && self.long.is_empty()
    }

    /// Bytes the maps take.
    pub(super) fn bytes(&self) -> usize {
        self.maps.len() * size_of::<PortMap>()
            + self
                .long
                .iter()
                .map(|m| m.starts.len() * 2 + m.classes.len() * 4 + 4)
                .sum::<usize>()
    }
}

/// The VPC of each VNI, in the layout that suits the VNIs.
#[derive(Debug, Clone)]
pub(super) enum VniIndex {
    /// VNIs within a short range (the usual numbering): VNI `first + i`'s VPC at `i`, one
    /// load.
    Dense { first: u32, vpcs: Box<[u32]> },
    /// Scattered VNIs: a [`Trie`] of one table, each VNI a segment.
    Trie(Trie),
    /// Past the trie's budget: the VNIs in ascending order, padded to a power of two, with
    /// the VPC of each.
    Searched { vnis: Box<[u32]>, vpcs: Box<[u32]> },
}

/// The VPC of a VNI no VPC has.
pub(super) const NO_VPC: u32 = u32::MAX;

/// A dense VNI index may have this many slots per VNI...
const DENSE_FACTOR: usize = 16;
/// ... or this many slots, whichever is more.
const DENSE_FLOOR: usize = 1 << 12;

impl VniIndex {
    /// The index of `(vni, vpc)` pairs, sorted by VNI: dense or a trie if `fast` and the VNIs
    /// suit it, else searched.
    pub(super) fn new(sorted: &[(u32, u32)], fast: bool) -> VniIndex {
        if let (true, Some(&(first, _)), Some(&(last, _))) = (fast, sorted.first(), sorted.last()) {
            // In u64: the span of all 2^32 VNIs overflows a 32-bit usize.
            let span = u64::from(last - first) + 1;
            let most = (sorted.len().saturating_mul(DENSE_FACTOR)).max(DENSE_FLOOR);
            if span <= most as u64 {
                let mut vpcs = vec![NO_VPC; span as usize];
                for &(vni, vpc) in sorted {
                    vpcs[(vni - first) as usize] = vpc;
                }
                return VniIndex::Dense {
                    first,
                    vpcs: vpcs.into(),
                };
            }
        }
        // Slot 0 holds VNI 0 (a VPC's, or none), so every VNI searched for is at least it.
        let mut pairs = Vec::with_capacity(sorted.len() + 1);
        if sorted.first().is_none_or(|&(vni, _)| vni != 0) {
            pairs.push((0, NO_VPC));
        }
        pairs.extend_from_slice(sorted);
        if fast {
            // As one segment table: each VNI a segment of its VPC, the gaps NO_VPC's.
            let (mut starts, mut values) = (Vec::new(), Vec::new());
            let mut push = |start: u32, value: u32| {
                if starts.last() == Some(&start) {
                    starts.pop();
                    values.pop();
                }
                if values.last() != Some(&value) {
                    starts.push(start);
                    values.push(value);
                }
            };
            for &(vni, vpc) in &pairs {
                push(vni, vpc);
                if let Some(next) = vni.checked_add(1) {
                    push(next, NO_VPC);
                }
            }
            let table = [(starts, values)];
            if let Some(trie) = Trie::new(&table, trie_budget(&table, true)) {
                return VniIndex::Trie(trie);
            }
        }
        let len = pairs.len().next_power_of_two();
        pairs.resize(len, (u32::MAX, NO_VPC));
        VniIndex::Searched {
            vnis: pairs.iter().map(|p| p.0).collect(),
            vpcs: pairs.iter().map(|p| p.1).collect(),
        }
    }

    /// [`VniIndex::find`] of every lane (searches in lockstep, see [`Padded::find_lanes`]).
    #[inline(always)]
    pub(super) fn find_lanes<const N: usize>(&self, vnis: &[u32; LANES], out: &mut [u32; LANES]) {
        match self {
            VniIndex::Dense { first, vpcs } => {
                for (out, &vni) in out.iter_mut().zip(vnis).take(N) {
                    *out = dense(*first, vpcs, vni);
                }
            }
            VniIndex::Trie(trie) => trie_find_lanes::<N>(trie, &[0; LANES], vnis, out),
            VniIndex::Searched { vnis: keys, vpcs } => {
                let mut at = [0usize; LANES];
                let mut half = keys.len() / 2;
                while half > 0 {
                    for (at, &vni) in at.iter_mut().zip(vnis).take(N) {
                        *at = select_unpredictable(keys[*at + half] <= vni, *at + half, *at);
                    }
                    half /= 2;
                }
                for ((out, &at), &vni) in out.iter_mut().zip(at.iter()).zip(vnis).take(N) {
                    *out = select_unpredictable(keys[at] == vni, vpcs[at], NO_VPC);
                }
            }
        }
    }

    /// The index of the VPC whose VNI is `vni`, or [`NO_VPC`].
    #[inline(always)]
    pub(super) fn find(&self, vni: u32) -> u32 {
        match self {
            VniIndex::Dense { first, vpcs } => dense(*first, vpcs, vni),
            VniIndex::Trie(trie) => trie.find(0, vni),
            VniIndex::Searched { vnis, vpcs } => {
                let i = search_pow2(vnis, vni);
                select_unpredictable(vnis[i] == vni, vpcs[i], NO_VPC)
            }
        }
    }
}

/// The VPC of `vni` in a dense index from `first`: one load, no branch on the VNI.
#[inline(always)]
fn dense(first: u32, vpcs: &[u32], vni: u32) -> u32 {
    let at = vni.wrapping_sub(first) as usize;
    let inside = at < vpcs.len();
    let vpc = vpcs[select_unpredictable(inside, at, 0)];
    select_unpredictable(inside, vpc, NO_VPC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(starts: &[u32], values: &[u32], key: u32) -> u32 {
        values[starts.partition_point(|&k| k <= key) - 1]
    }

    #[test]
    fn padded_sides_answer_like_their_tables_big_ones_included() {
        let table = |n: u32, step: u32| -> (Vec<u32>, Vec<u32>) {
            (
                (0..n).map(|i| i * step).collect(),
                (0..n).map(|i| i + 7).collect(),
            )
        };
        let mut tables = vec![table(1, 1), table(3, 1000), table(16, 77), table(17, 3)];
        tables.push(table(MAX_FLAT as u32 + 5, 11));
        tables.push((vec![0, u32::MAX - 1, u32::MAX], vec![1, 2, 3]));
        let side = Padded::new(&tables);
        let (side, padded) = (Side4::Padded(side.clone()), side);
        assert!(padded.big.len() == 1 && padded.log2 == MAX_FLAT.trailing_zeros());
        for (vpc, (starts, values)) in tables.iter().enumerate() {
            let probes = starts
                .iter()
                .flat_map(|&k| [k, k.wrapping_sub(1), k.saturating_add(1)])
                .chain([0, 1, u32::MAX, u32::MAX - 1, 123_456]);
            for key in probes {
                let want = reference(starts, values, key);
                assert_eq!(side.find(vpc as u32, key), want, "vpc {vpc}, key {key}");
                let (a, b) = find_pair(&side, &side, vpc as u32, key, key / 2);
                assert_eq!((a, b), (want, reference(starts, values, key / 2)));
            }
        }
    }

    #[test]
    fn a_side_past_its_trie_budget_is_searched_and_answers_alike() {
        // 6,000 hosts scattered over the address space: each needs nodes of its own at the
        // three lower levels, far more than the 4 MiB floor allows for 96 KB of tables.
        let hosts: Vec<u32> = (0..6_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let mut starts: Vec<u32> = hosts.iter().flat_map(|&h| [h, h.wrapping_add(1)]).collect();
        starts.push(0);
        starts.sort_unstable();
        starts.dedup();
        let values: Vec<u32> = (0..starts.len() as u32).map(|i| i % 5).collect();
        let tables = vec![
            (starts.clone(), values.clone()),
            (vec![0, 1 << 24], vec![1, 2]),
        ];
        assert!(trie_budget(&tables, true) == TRIE_FLOOR);
        let side = Side4::new(&tables, true);
        assert!(
            matches!(side, Side4::Padded(_)),
            "the trie should be over budget"
        );
        let lanes: [u32; LANES] = std::array::from_fn(|i| hosts[i * 7]);
        let mut found = [0; LANES];
        side.find_lanes::<LANES>(&[0; LANES], &lanes, &mut found);
        for (key, got) in lanes.iter().zip(found) {
            assert_eq!(got, reference(&starts, &values, *key), "key {key:#x}");
        }
        for key in [0, 1, (1 << 24) - 1, 1 << 24, u32::MAX] {
            assert_eq!(
                side.find(1, key),
                reference(&tables[1].0, &tables[1].1, key)
            );
        }
        // Small tables get their trie, unless told otherwise.
        assert!(matches!(Side4::new(&tables[1..], true), Side4::Trie(_)));
        assert!(matches!(Side4::new(&tables[1..], false), Side4::Padded(_)));
    }

    #[test]
    fn a_side_of_holed_slash24s_narrows_its_last_level_and_its_lanes_answer_alike() {
        // Forty tables of sixteen /24s each, every third /24 with a /26 hole: four levels,
        // the last mostly uniform nodes, which a narrow last level keeps as one entry each.
        let tables: Vec<(Vec<u32>, Vec<u32>)> = (0..40u32)
            .map(|t| {
                let mut starts = vec![0];
                let mut values = vec![0];
                for i in 0..16u32 {
                    let net = 0x0a00_0000 | t << 12 | i << 8;
                    starts.push(net);
                    values.push(1 + (t + i) % 7);
                    if i % 3 == 0 {
                        starts.extend([net | 0x40, net | 0x80]);
                        values.extend([0, 1 + (t + i) % 7]);
                    }
                }
                starts.push(0x0a00_0000 | (t + 1) << 12);
                values.push(0);
                (starts, values)
            })
            .collect();
        let side = Side4::new(&tables, true);
        let Side4::Narrow(narrow) = &side else {
            panic!("a narrow last level should save a quarter here");
        };
        assert_eq!(narrow.depth, 4);
        for (vpc, (starts, values)) in tables.iter().enumerate() {
            let keys: Vec<u32> = starts
                .iter()
                .flat_map(|&k| [k, k.wrapping_sub(1), k | 0x3f, k | 0xff, k + 0x41])
                .collect();
            for lanes in keys.chunks(LANES) {
                let lanes: [u32; LANES] = std::array::from_fn(|i| lanes[i % lanes.len()]);
                let mut found = [0; LANES];
                side.find_lanes::<LANES>(&[vpc as u32; LANES], &lanes, &mut found);
                for (&key, got) in lanes.iter().zip(found) {
                    let want = reference(starts, values, key);
                    assert_eq!(got, want, "vpc {vpc}, key {key:#x}");
                    assert_eq!(side.find(vpc as u32, key), want, "vpc {vpc}, key {key:#x}");
                }
            }
        }
    }

    #[test]
    fn one_long_table_does_not_pad_all_the_others_to_its_length() {
        let mut tables = vec![(vec![0, 10], vec![1, 2]); 4096];
        tables.push(((0..1000).map(|i| i * 3).collect(), (0..1000).collect()));
        let side = Padded::new(&tables);
        assert!(side.bytes() <= 2 << 20, "{} bytes", side.bytes());
        assert_eq!(side.big.len(), 1);
        assert_eq!(side.find(4096, 2_999), 999);
        assert_eq!(side.find(4096, 1_500), 500);
        assert_eq!(side.find(17, 9), 1);
        assert_eq!(side.find(17, 10), 2);
    }

    #[test]
    fn port_maps_answer_by_port_and_without() {
        let mut maps = PortMaps::default();
        let short = maps.add(9, &[0, 22, 23, 80, 91], &[1, 2, 1, 3, 1]);
        let starts: Vec<u16> = (0..40).map(|i| i * 1000).collect();
        let classes: Vec<u32> = (0..40).map(|i| 100 + i).collect();
        let long = maps.add(8, &starts, &classes);
        assert_eq!(long & LONG, LONG);
        for (port, want) in [
            (0, 1),
            (21, 1),
            (22, 2),
            (23, 1),
            (79, 1),
            (80, 3),
            (90, 3),
            (91, 1),
            (65535, 1),
        ] {
            assert_eq!(maps.class(short, Some(port)), want, "port {port}");
        }
        assert_eq!(maps.class(short, None), 9);
        assert_eq!(maps.class(long, Some(38_999)), 138);
        assert_eq!(maps.class(long, Some(39_000)), 139);
        assert_eq!(maps.class(long, Some(65_535)), 139);
        assert_eq!(maps.class(long, None), 8);
        // A full map is short; one range more makes it long. Both answer alike.
        let starts: Vec<u16> = (0..=MAP_RANGES as u16).map(|i| i * 10).collect();
        let classes: Vec<u32> = (0..=MAP_RANGES as u32).map(|i| 50 + i).collect();
        let full = maps.add(7, &starts[..MAP_RANGES], &classes[..MAP_RANGES]);
        let over = maps.add(7, &starts, &classes);
        assert_eq!((full & LONG, over & LONG), (0, LONG));
        for port in [0, 9, 10, 69, 70, 79, 80, 81, 65_535] {
            let at = starts.partition_point(|&s| s <= port) - 1;
            assert_eq!(maps.class(over, Some(port)), classes[at], "port {port}");
            let at = at.min(MAP_RANGES - 1);
            assert_eq!(maps.class(full, Some(port)), classes[at], "port {port}");
        }
        // A plain class passes through, with or without ports.
        assert_eq!(maps.class(5, Some(80)), 5);
        assert_eq!(maps.class(5, None), 5);
    }

    #[test]
    fn vnis_are_found_exactly() {
        let scattered = [(5, 0), (7, 1), (8, 4), (1000, 2), (u32::MAX - 1, 3)];
        let dense = [(5, 0), (7, 1), (8, 4), (1000, 2), (1001, 3)];
        for (pairs, fast, layout) in [
            (&scattered, true, "trie"),
            (&scattered, false, "searched"),
            (&dense, true, "dense"),
            (&dense, false, "searched"),
        ] {
            let index = VniIndex::new(pairs, fast);
            let found = match index {
                VniIndex::Dense { .. } => "dense",
                VniIndex::Trie(_) => "trie",
                VniIndex::Searched { .. } => "searched",
            };
            assert_eq!(found, layout);
            for &(vni, want) in pairs {
                assert_eq!(index.find(vni), want, "{layout}: vni {vni}");
            }
            for vni in [0, 4, 6, 9, 999, 1002, u32::MAX] {
                assert_eq!(index.find(vni), NO_VPC, "{layout}: vni {vni}");
            }
            let probes = [5, 6, 7, 8, 9, 1000, 1001, u32::MAX - 1, u32::MAX, 0, 4];
            let vnis = std::array::from_fn(|i| probes[i % probes.len()]);
            let mut vpcs = [0; LANES];
            index.find_lanes::<LANES>(&vnis, &mut vpcs);
            for (vni, vpc) in vnis.iter().zip(vpcs) {
                assert_eq!(vpc, index.find(*vni), "{layout}: vni {vni}");
            }
        }
        for fast in [true, false] {
            assert_eq!(VniIndex::new(&[(0, 4)], fast).find(0), 4);
            assert_eq!(VniIndex::new(&[(0, 4)], fast).find(1), NO_VPC);
            assert_eq!(VniIndex::new(&[], fast).find(0), NO_VPC);
        }
    }
}
