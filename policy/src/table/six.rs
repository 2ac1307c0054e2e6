//! The IPv6 lookup structures: each side (source or destination) of every VPC's IPv6 segment
//! table as multibit [`Trie`]s over the two halves of the address, read one byte a level like
//! the IPv4 sides.
//!
//! - **Upper halves.** Prefixes of /64 and shorter (subnets are /64, allocations /48 to /60)
//!   put every boundary at a multiple of 2^64, so the upper 64 bits tell the segment. Those
//!   upper halves share leading bytes: a site's /48, a provider's /32. A side finds the most
//!   leading bytes whose distinct values over all its boundaries are at most [`REGIONS`]
//!   (the *regions*, e.g. a site's /48 and a shared service /48: six bytes) and compares them
//!   away: a lane counts the region bases at most its upper half (a compare each, no branch),
//!   and reads the trie only for the bytes after them, from its VPC's root for that region.
//!   An upper half in no region lies between two (or before the first, or after the last),
//!   where no boundary is: the VPC's value for that gap is kept beside its roots and chosen
//!   without a branch.
//! - **Lower halves.** A /64 that holds a boundary within it (a hole cut from a /64, a host
//!   route) is a *split* leaf, [`SPLIT`] and an index: the lane reads a second trie over the
//!   lower 64 bits from that /64's root. Every lane of a side with split /64s takes that
//!   step, the others from a root they then ignore, so that no lane branches.
//!
//! A side is built only within its memory budget ([`budget_of`]); past it, the table keeps no
//! IPv6 tries and IPv6 packets take the per-VPC searches of the whole segment tables.

use std::hint::select_unpredictable;

use super::flat::{BIG, FLAGS, LANES, TURN, budget_of};
use super::trie::Trie;

/// The flag of a split /64's leaf: the rest is the index of its root in [`Side6::low`].
pub(super) const SPLIT: u32 = BIG;

/// Most regions of a side: the compares a lane makes to find its region.
pub(super) const REGIONS: usize = 4;

/// Deepest trie of a side: the eight bytes of a half.
pub(super) const MAX_DEPTH: u32 = 8;

/// One side of every VPC's IPv6 segment table.
#[derive(Debug, Clone)]
pub(super) struct Side6 {
    /// Bits of an upper half compared away: the leading `shift / 8` bytes, at most 7.
    pub(super) shift: u32,
    /// Regions in use: 1 to [`REGIONS`].
    pub(super) regions: u32,
    /// Each region's first upper half (its leading bytes, the rest zero), ascending; unused
    /// ones `u64::MAX`.
    pub(super) bases: [u64; REGIONS],
    /// The bits of `upper - base` that are zero for an upper half in the region.
    mask: u64,
    /// Over `(upper - base) << shift`.
    pub(super) upper: Trie,
    /// Each VPC's root of each region: VPC `v`'s region `r` at `v * REGIONS + r`.
    pub(super) roots: Box<[u32]>,
    /// Each VPC's value in each gap: VPC `v`'s values at `v * GAPS ..`, gap `g` before
    /// region `g` (gap `regions` after the last).
    pub(super) gaps: Box<[u32]>,
    /// Over the lower halves of the split /64s, a root each (node `i` split /64 `i`'s);
    /// `None` when none is split.
    pub(super) low: Option<Trie>,
    /// Split /64s: the low trie's roots.
    pub(super) low_roots: u32,
}

/// Gap values a VPC keeps: one more than its regions.
pub(super) const GAPS: usize = REGIONS + 1;

/// A table over `u64` keys: starts, ascending from 0, and values.
type Table64 = (Vec<u64>, Vec<u32>);

/// The upper halves' table of a whole table: a /64 with a boundary inside it [`SPLIT`] and the
/// index of its lower half's table, pushed onto `low`.
fn upper_table(starts: &[u128], values: &[u32], low: &mut Vec<Table64>) -> Table64 {
    let (mut up, mut vals): Table64 = (Vec::new(), Vec::new());
    let mut push = |start: u64, value: u32| {
        if up.last() == Some(&start) {
            up.pop();
            vals.pop();
        }
        if vals.last() != Some(&value) {
            up.push(start);
            vals.push(value);
        }
    };
    // Starts grouped by their upper half: a group of one start on a /64 boundary is a
    // boundary of the upper halves; any other makes its /64 split, the next /64 taking the
    // group's last value (unless a later group starts there).
    let mut at = 0;
    while let Some(&first) = starts.get(at) {
        let upper = (first >> 64) as u64;
        let end = at + starts[at..].partition_point(|&s| (s >> 64) as u64 == upper);
        let last = values[end - 1];
        if end == at + 1 && first as u64 == 0 {
            push(upper, last);
        } else {
            // The lower half's table: from the value before the group, if the group does
            // not start the /64.
            let (mut lows, mut lvals) = (Vec::new(), Vec::new());
            if first as u64 != 0 {
                lows.push(0);
                lvals.push(values[at.saturating_sub(1)]);
            }
            lows.extend(starts[at..end].iter().map(|&s| s as u64));
            lvals.extend_from_slice(&values[at..end]);
            push(upper, SPLIT | low.len() as u32);
            low.push((lows, lvals));
            if let Some(next) = upper.checked_add(1) {
                push(next, last);
            }
        }
        at = end;
    }
    (up, vals)
}

impl Side6 {
    /// The side of the tables `tables[v]` (each `(starts, values)` over whole IPv6 keys,
    /// `starts[0] == 0`), or `None` past its budget (none without `tries`).
    pub(super) fn new(tables: &[(Vec<u128>, Vec<u32>)], tries: bool) -> Option<Side6> {
        let mut low = Vec::new();
        let uppers: Vec<Table64> = tables
            .iter()
            .map(|(s, v)| upper_table(s, v, &mut low))
            .collect();
        // Every boundary but the tables' first starts, sorted.
        let mut bounds: Vec<u64> = uppers
            .iter()
            .flat_map(|t| t.0.iter().skip(1).copied())
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let needed = bounds
            .iter()
            .map(|b| 8 - b.trailing_zeros().min(64) / 8)
            .max()
            .unwrap_or(1)
            .max(1);
        // The most leading bytes (leaving one to read) whose distinct values number at most
        // REGIONS: neighbours in order that differ within the first `c` bytes start a region.
        let differ = |c: u32| {
            bounds
                .windows(2)
                .filter(|w| (w[0] ^ w[1]).leading_zeros() / 8 < c)
                .count()
        };
        let common = (0..needed)
            .rev()
            .find(|&c| differ(c) < REGIONS)
            .unwrap_or(0);
        let shift = 8 * common;
        let mask = high_mask(shift);
        let mut bases = [u64::MAX; REGIONS];
        let mut regions = 0;
        for &b in &bounds {
            let base = b & mask;
            if regions == 0 || bases[regions - 1] != base {
                bases[regions] = base;
                regions += 1;
            }
        }
        if regions == 0 {
            bases[0] = 0;
            regions = 1;
        }
        let own: usize = uppers.iter().map(|t| t.0.len() * 12).sum::<usize>()
            + low.iter().map(|t| t.0.len() * 12).sum::<usize>();
        let budget = budget_of(own, tries);
        let (mut inside, mut gaps) = (Vec::new(), Vec::with_capacity(uppers.len() * GAPS));
        for (starts, values) in &uppers {
            let value_at = |key: u64| values[starts.partition_point(|&s| s <= key) - 1];
            for (r, &base) in bases.iter().enumerate() {
                if r >= regions {
                    // Never read: a lane's region is one in use.
                    inside.push((vec![0], vec![value_at(0)]));
                    gaps.push(value_at(u64::MAX));
                    continue;
                }
                // Gap `r` ends just before the region.
                gaps.push(value_at(base.saturating_sub(1)));
                let mut keys = vec![0];
                let mut vals = vec![value_at(base)];
                for (&s, &v) in starts.iter().zip(values) {
                    let d = s.wrapping_sub(base);
                    if s > base && d & mask == 0 {
                        keys.push(d << shift);
                        vals.push(v);
                    }
                }
                inside.push((keys, vals));
            }
            gaps.push(value_at(u64::MAX));
        }
        let (upper, roots) = Trie::new64_rooted(&inside, budget)?;
        let low_roots = u32::try_from(low.len()).ok()?;
        let low = match low.is_empty() {
            true => None,
            false => Some(Trie::new64(&low, budget.saturating_sub(upper.bytes()))?),
        };
        Some(Side6 {
            low_roots,
            shift,
            regions: regions as u32,
            bases,
            mask,
            upper,
            roots: roots.into(),
            gaps: gaps.into(),
            low,
        })
    }

    /// A side from its parts, as a state holds them (checked by the loader).
    pub(super) fn from_parts(
        (shift, regions, bases): (u32, u32, [u64; REGIONS]),
        upper: Trie,
        roots: Box<[u32]>,
        gaps: Box<[u32]>,
        low: Option<(Trie, u32)>,
    ) -> Side6 {
        let (low, low_roots) = low.map_or((None, 0), |(t, r)| (Some(t), r));
        Side6 {
            low_roots,
            shift,
            regions,
            bases,
            mask: high_mask(shift),
            upper,
            roots,
            gaps,
            low,
        }
    }

    /// The region a lane's upper half is counted into, and how many bases are at most it
    /// (its gap, when it is in no region), at most the regions in use.
    #[inline(always)]
    fn region(&self, upper: u64) -> (usize, usize) {
        let mut count = 0;
        for &base in &self.bases {
            count += usize::from(upper >= base);
        }
        let count = count.min(self.regions as usize);
        (count.saturating_sub(1), count)
    }

    /// The value of an address whose halves are `upper` and `lower` in VPC `vpc`'s table: a
    /// class or a port map.
    #[inline]
    pub(super) fn find(&self, vpc: u32, upper: u64, lower: u64) -> u32 {
        let (r, count) = self.region(upper);
        let d = upper.wrapping_sub(self.bases[r]);
        let at = vpc as usize * REGIONS + r;
        let mut entry = self.roots[at];
        for level in 0..self.upper.depth {
            entry = self.upper.step64(entry, d << self.shift, level);
        }
        let gap = self.gaps[vpc as usize * GAPS + count];
        let value = select_unpredictable(d & self.mask == 0, entry, gap);
        match &self.low {
            Some(low) if is_split(value) => low.walk64(value & !SPLIT, lower),
            _ => value,
        }
    }

    /// For each of the first `N` lanes `i` (a multiple of [`TURN`]), the value of the address
    /// whose halves are `uppers[i]` and `lowers[i]` in VPC `vpcs[i]`'s table (`vpcs[i]` must
    /// be a VPC of the table): every lane's region, then the tries' levels in lockstep, the
    /// depths dispatched once. `w` holds each lane's key, root and gap between the steps.
    #[inline(always)]
    pub(super) fn find_lanes<const N: usize>(
        &self,
        vpcs: &[u32; LANES],
        (uppers, lowers): (&[u64; LANES], &[u64; LANES]),
        w: &mut Walks,
        out: &mut [u32; LANES],
    ) {
        // In turns of TURN lanes, each unrolled whole (see `flat::TURN`).
        for turn in (0..N).step_by(TURN) {
            for i in turn..turn + TURN {
                let (r, count) = self.region(uppers[i]);
                let d = uppers[i].wrapping_sub(self.bases[r]);
                w.inside[i] = d & self.mask == 0;
                w.keys[i] = d << self.shift;
                w.roots[i] = self.roots[vpcs[i] as usize * REGIONS + r];
                w.gaps[i] = self.gaps[vpcs[i] as usize * GAPS + count];
            }
        }
        levels::<N>(&self.upper, &w.roots, &w.keys, out);
        for ((out, &gap), &inside) in out.iter_mut().zip(&w.gaps).zip(&w.inside).take(N) {
            *out = select_unpredictable(inside, *out, gap);
        }
        if let Some(low) = &self.low {
            for (root, &value) in w.roots.iter_mut().zip(out.iter()).take(N) {
                *root = select_unpredictable(is_split(value), value & !SPLIT, 0);
            }
            // The gaps are chosen: their slots take the low trie's answers.
            let found = &mut w.gaps;
            levels::<N>(low, &w.roots, lowers, found);
            for (out, &found) in out.iter_mut().zip(found.iter()).take(N) {
                *out = select_unpredictable(is_split(*out), found, *out);
            }
        }
    }

    /// Bytes the side takes.
    pub(super) fn bytes(&self) -> usize {
        self.upper.bytes()
            + self.low.as_ref().map_or(0, Trie::bytes)
            + (self.roots.len() + self.gaps.len()) * 4
    }
}

/// Where [`Side6::find_lanes`] keeps each lane's trie key, root and gap value between its
/// steps: natively a local of the caller's; a Wasm guest's packed path keeps it in a static
/// with the other stages' answers (see `Table::lookup_lanes`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Walks {
    keys: [u64; LANES],
    roots: [u32; LANES],
    gaps: [u32; LANES],
    inside: [bool; LANES],
}

impl Walks {
    pub(super) const NEW: Walks = Walks {
        keys: [0; LANES],
        roots: [0; LANES],
        gaps: [0; LANES],
        inside: [false; LANES],
    };
}

/// The trie's levels of the first `N` lanes from `roots`, in turns of [`TURN`] lanes (see
/// `flat::TURN`), the depth dispatched once.
#[inline(always)]
fn levels<const N: usize>(
    trie: &Trie,
    roots: &[u32; LANES],
    keys: &[u64; LANES],
    out: &mut [u32; LANES],
) {
    match trie.depth {
        1 => levels_of::<1, N>(trie, roots, keys, out),
        2 => levels_of::<2, N>(trie, roots, keys, out),
        3 => levels_of::<3, N>(trie, roots, keys, out),
        4 => levels_of::<4, N>(trie, roots, keys, out),
        5 => levels_of::<5, N>(trie, roots, keys, out),
        6 => levels_of::<6, N>(trie, roots, keys, out),
        7 => levels_of::<7, N>(trie, roots, keys, out),
        _ => levels_of::<8, N>(trie, roots, keys, out),
    }
}

#[inline(always)]
fn levels_of<const D: u32, const N: usize>(
    trie: &Trie,
    roots: &[u32; LANES],
    keys: &[u64; LANES],
    out: &mut [u32; LANES],
) {
    *out = *roots;
    for level in 0..D {
        let (outs, keys) = (out.as_chunks_mut::<TURN>().0, keys.as_chunks::<TURN>().0);
        for (out, keys) in outs.iter_mut().zip(keys).take(N / TURN) {
            for (out, &key) in out.iter_mut().zip(keys) {
                *out = trie.step64(*out, key, level);
            }
        }
    }
}

/// Whether a value is a split /64's.
#[inline(always)]
pub(super) fn is_split(value: u32) -> bool {
    value & FLAGS == SPLIT
}

/// The top `bits` bits of a `u64` set (0 to 64).
pub(super) fn high_mask(bits: u32) -> u64 {
    u64::MAX.checked_shl(64 - bits).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(starts: &[u128], values: &[u32], key: u128) -> u32 {
        values[starts.partition_point(|&k| k <= key) - 1]
    }

    fn net(s: &str) -> u128 {
        s.parse::<std::net::Ipv6Addr>().unwrap().into()
    }

    fn probes(starts: &[u128]) -> impl Iterator<Item = u128> + '_ {
        starts
            .iter()
            .flat_map(|&k| {
                [
                    k,
                    k.wrapping_sub(1),
                    k.saturating_add(1),
                    k | u128::from(u64::MAX),
                    k.wrapping_sub(1 << 64),
                    k.saturating_add(1 << 64),
                ]
            })
            .chain([0, 1, u128::MAX, u128::MAX - 1, net("2001:db8::1"), 1 << 127])
    }

    #[test]
    fn sides_answer_like_their_tables() {
        let slash64 = (
            vec![
                0,
                net("fd00:0:1:10::"),
                net("fd00:0:1:11::"),
                net("fd00:0:2::"),
            ],
            vec![1, 2, 3, 1],
        );
        let slash48 = (vec![0, net("fd00:0:7::"), net("fd00:0:8::")], vec![0, 5, 0]);
        let host = (
            vec![
                0,
                net("fd00:0:3::1"),
                net("fd00:0:3::2"),
                net("fd00:0:3:1::"),
            ],
            vec![0, 6, 7, 8],
        );
        let hole = (
            vec![
                0,
                net("fd00:0:3::"),
                net("fd00:0:3:0:4000::"),
                net("fd00:0:3:0:8000::"),
            ],
            vec![0, 1, 2, 1],
        );
        let service = (
            vec![
                0,
                net("2001:db8:53::"),
                net("2001:db8:53:1::"),
                net("fd00:0:9::"),
            ],
            vec![0, 4, 0, 3],
        );
        let one = (vec![0], vec![9]);
        let low = (vec![0, 5, 1 << 64], vec![1, 2, 3]);
        let top = (vec![0, u128::MAX - 3], vec![1, 2]);
        let many = (
            vec![0, 1 << 64, 2 << 64, 3 << 64, 4 << 64, 5 << 64, 6 << 64],
            vec![1, 2, 3, 4, 5, 6, 7],
        );
        let spread = (
            (0..7)
                .map(|i| (i * 0x0101_0101_0101_0101u128) << 64)
                .collect(),
            (0..7).collect(),
        );
        let mut sites: Vec<u128> = (1..7u128).map(|i| i << 80 | 0xfd00 << 112).collect();
        sites.extend([0, net("fd00:0:1:10::")]);
        sites.sort_unstable();
        let sites = (sites, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        // Expected (bits compared away, regions, depth, split /64s): the most leading bytes
        // of the boundaries' upper halves with at most four distinct values, and the bytes
        // after them that the boundaries need.
        for (tables, (shift, regions, depth, split)) in [
            (vec![slash64.clone(), slash48.clone()], (56, 4, 1, false)),
            (vec![slash48.clone(), one.clone()], (40, 1, 1, false)),
            (
                vec![slash64.clone(), host.clone(), one.clone()],
                (56, 3, 1, true),
            ),
            (vec![hole.clone(), slash64.clone()], (56, 3, 1, true)),
            (vec![service.clone(), slash64.clone()], (56, 4, 1, false)),
            (vec![one.clone()], (0, 1, 1, false)),
            (vec![low, slash48.clone()], (56, 3, 1, true)),
            (vec![top, slash64.clone()], (56, 3, 1, true)),
            (vec![many, one.clone()], (56, 1, 1, false)),
            (vec![spread, one.clone()], (0, 1, 8, false)),
            (vec![sites, hole.clone()], (40, 1, 3, true)),
        ] {
            let side = Side6::new(&tables, true).expect("within budget");
            let got = (
                side.shift,
                side.regions,
                side.upper.depth,
                side.low.is_some(),
            );
            assert_eq!(got, (shift, regions, depth, split));
            for (vpc, (starts, values)) in tables.iter().enumerate() {
                for key in probes(starts) {
                    let want = reference(starts, values, key);
                    let got = side.find(vpc as u32, (key >> 64) as u64, key as u64);
                    assert_eq!(got, want, "vpc {vpc}, key {key:#x}");
                }
                let keys: Vec<u128> = probes(starts).collect();
                let uppers = std::array::from_fn(|i| (keys[i % keys.len()] >> 64) as u64);
                let lowers = std::array::from_fn(|i| keys[i % keys.len()] as u64);
                let mut out = [0; LANES];
                let mut walks = Walks::NEW;
                side.find_lanes::<LANES>(
                    &[vpc as u32; LANES],
                    (&uppers, &lowers),
                    &mut walks,
                    &mut out,
                );
                for i in 0..LANES {
                    let want = side.find(vpc as u32, uppers[i], lowers[i]);
                    assert_eq!(out[i], want, "{:#x}:{:#x}", uppers[i], lowers[i]);
                }
            }
        }
    }

    #[test]
    fn a_side_past_its_budget_is_not_built() {
        // 5,000 /64s scattered over the upper halves: nodes of their own at every level.
        let mut starts: Vec<u128> = (0..5_000u128)
            .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) & u128::from(u64::MAX)) << 64)
            .collect();
        starts.push(0);
        starts.sort_unstable();
        starts.dedup();
        let values: Vec<u32> = (0..starts.len() as u32).map(|i| i % 3).collect();
        assert!(Side6::new(&[(starts, values)], true).is_none());
        assert!(Side6::new(&[(vec![0, 1 << 100], vec![1, 2])], false).is_none());
    }
}
