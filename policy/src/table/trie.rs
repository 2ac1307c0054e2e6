//! Multibit tries over `u32` keys (IPv4 addresses, VNIs) and `u64` keys (the upper halves of
//! IPv6 addresses): a table of segments read one key byte at a time, each byte indexing a node
//! of 256 entries, so a lookup is as many loads as the trie has levels (one to four for `u32`
//! keys, one to eight for `u64` ones) and no compare at all.
//!
//! A trie holds many segment tables, one root each (root `r` is node `r`), and every path
//! has the same length: an entry before the last level is a node's index, an entry of the
//! last level is a value. The depth is the fewest key bytes that tell every segment apart (3
//! when every boundary of a `u32` key is a multiple of 256, as with /24 and shorter prefixes).
//! A range that
//! one segment covers whole points at a *uniform* node, one per level and value, shared by
//! every table.
//!
//! Memory grows with the segments' boundaries (a 1 KiB node per level for each, at worst),
//! so a trie is only built within a byte budget; past it, the caller keeps a search. A
//! [`Narrow`] trie keeps its last level in nodes of as many entries as their runs need.

use std::collections::HashMap;

/// Entries in a node: one per value of a key byte.
pub(super) const FANOUT: usize = 256;
/// Bytes of one node.
const NODE_BYTES: usize = FANOUT * 4;

/// Segment tables read a key byte at a time.
#[derive(Debug, Clone)]
pub(super) struct Trie {
    /// Key bytes read, from the most significant: 1 to 4 (`u32` keys) or 8 (`u64` keys).
    pub(super) depth: u32,
    /// 256-entry nodes; node `r` is table `r`'s root.
    pub(super) nodes: Box<[u32]>,
}

impl Trie {
    /// The trie of `tables` (each `(starts, values)`, `starts` ascending from 0), or `None`
    /// when it would take more than `budget` bytes.
    pub(super) fn new(tables: &[(Vec<u32>, Vec<u32>)], budget: usize) -> Option<Trie> {
        let wide: Vec<(Vec<u64>, &[u32])> = tables
            .iter()
            .map(|(starts, values)| (starts.iter().map(|&k| u64::from(k)).collect(), &values[..]))
            .collect();
        Trie::build(&wide, 32, budget)
    }

    /// [`Trie::new`] of tables over `u64` keys, read with [`Trie::step64`].
    pub(super) fn new64(tables: &[(Vec<u64>, Vec<u32>)], budget: usize) -> Option<Trie> {
        let tables: Vec<(Vec<u64>, &[u32])> = tables
            .iter()
            .map(|(starts, values)| (starts.clone(), &values[..]))
            .collect();
        Trie::build(&tables, 64, budget)
    }

    /// [`Trie::new64`] with each table's root node named in the returned roots, not table
    /// `r` at node `r`: a table of one segment is rooted at the uniform node of its value,
    /// shared.
    pub(super) fn new64_rooted(
        tables: &[(Vec<u64>, Vec<u32>)],
        budget: usize,
    ) -> Option<(Trie, Vec<u32>)> {
        let depth = depth_of(tables.iter().flat_map(|t| &t.0).copied(), 64);
        let mut builder = Builder {
            depth,
            bits: 64,
            nodes: Vec::new(),
            uniform: HashMap::new(),
            max_nodes: budget / NODE_BYTES,
        };
        let mut roots = Vec::with_capacity(tables.len());
        for (starts, values) in tables {
            let root = match (starts.len(), values.first()) {
                (1, Some(&value)) => builder.uniform(0, value)?,
                _ => {
                    let root = builder.alloc()?;
                    builder.fill(root as usize, 0, 0, starts, values)?;
                    root
                }
            };
            roots.push(root);
        }
        if builder.nodes.is_empty() {
            builder.alloc()?;
        }
        let trie = Trie {
            depth,
            nodes: builder.nodes.into(),
        };
        Some((trie, roots))
    }

    /// The trie of tables over keys of `bits` bits (32 or 64).
    fn build(tables: &[(Vec<u64>, &[u32])], bits: u32, budget: usize) -> Option<Trie> {
        let depth = depth_of(tables.iter().flat_map(|t| &t.0).copied(), bits);
        let max_nodes = budget / NODE_BYTES;
        if tables.len().max(1) > max_nodes {
            return None;
        }
        let mut builder = Builder {
            depth,
            bits,
            nodes: vec![0; tables.len().max(1) * FANOUT],
            uniform: HashMap::new(),
            max_nodes,
        };
        for (root, (starts, values)) in tables.iter().enumerate() {
            builder.fill(root, 0, 0, starts, values)?;
        }
        Some(Trie {
            depth,
            nodes: builder.nodes.into(),
        })
    }

    /// Key bytes a lookup reads.
    pub(super) fn depth(&self) -> u32 {
        self.depth
    }

    /// The value of `key` in table `root`.
    #[inline(always)]
    pub(super) fn find(&self, root: u32, key: u32) -> u32 {
        match self.depth {
            1 => self.walk::<1>(root, key),
            2 => self.walk::<2>(root, key),
            3 => self.walk::<3>(root, key),
            _ => self.walk::<4>(root, key),
        }
    }

    /// [`Trie::find`] with the depth known to the compiler: `D` loads, unrolled.
    #[inline(always)]
    pub(super) fn walk<const D: u32>(&self, root: u32, key: u32) -> u32 {
        let mut entry = root;
        for level in 0..D {
            entry = self.step(entry, key, level);
        }
        entry
    }

    /// One level of a walk: the entry that `key` takes in the node `entry` names, at `level`.
    #[inline(always)]
    pub(super) fn step(&self, entry: u32, key: u32, level: u32) -> u32 {
        let byte = (key >> (24 - 8 * level)) & 0xff;
        self.nodes[(entry as usize) << 8 | byte as usize]
    }

    /// The value of `u64` key `key` from node `root`.
    #[inline]
    pub(super) fn walk64(&self, root: u32, key: u64) -> u32 {
        let mut entry = root;
        for level in 0..self.depth {
            entry = self.step64(entry, key, level);
        }
        entry
    }

    /// [`Trie::step`] of a `u64` key.
    #[inline(always)]
    pub(super) fn step64(&self, entry: u32, key: u64, level: u32) -> u32 {
        let byte = (key >> (56 - 8 * level)) & 0xff;
        self.nodes[(entry as usize) << 8 | byte as usize]
    }

    /// Bytes the trie takes.
    pub(super) fn bytes(&self) -> usize {
        self.nodes.len() * 4
    }
}

/// Most bits a narrow node's offset may take: an entry naming it is `offset << 4 | k`.
const NARROW_OFFSET_BITS: u32 = 28;

/// A [`Trie`] over `u32` keys whose last level is *narrow*: a last-level node whose 256
/// entries come in aligned runs of `2^k` equal values is kept as its `256 >> k` distinct
/// ones (a uniform node as one entry), identical nodes once. An entry of the level above
/// names a narrow node as `offset << 4 | k`, and the last step reads
/// `last[offset + (byte >> k)]`: a shift and an add more than a plain step, for a last level
/// that takes a few KiB where 1 KiB nodes took MiBs (a `not` hole in a /24 makes the trie
/// four levels deep, and every /24 then points at a last-level node).
#[derive(Debug, Clone)]
pub(super) struct Narrow {
    /// Key bytes read: 2 to 4.
    pub(super) depth: u32,
    /// The levels but the last, 256-entry nodes as a [`Trie`]'s; node `r` is table `r`'s
    /// root. An entry of level `depth - 2` names a narrow node.
    pub(super) nodes: Box<[u32]>,
    /// The narrow nodes.
    pub(super) last: Box<[u32]>,
}

impl Narrow {
    /// `trie` (its roots the nodes `0..roots`, every node reached from them) with its last
    /// level narrow, or `None` for a trie of one level.
    pub(super) fn of(trie: &Trie, roots: usize) -> Option<Narrow> {
        let depth = trie.depth;
        if depth < 2 {
            return None;
        }
        let nodes = trie.nodes.as_chunks::<FANOUT>().0;
        // Each node's level, from the roots down (a child may come before its parent).
        const UNSEEN: u32 = u32::MAX;
        let mut level = vec![UNSEEN; nodes.len()];
        level.iter_mut().take(roots).for_each(|l| *l = 0);
        for l in 0..depth - 1 {
            for n in 0..nodes.len() {
                if level[n] == l {
                    for &child in &nodes[n] {
                        level[child as usize] = l + 1;
                    }
                }
            }
        }
        // The nodes kept keep their order, so the roots keep their indices.
        let mut index = vec![u32::MAX; nodes.len()];
        let mut kept = 0;
        for (n, &l) in level.iter().enumerate() {
            if l < depth - 1 {
                index[n] = kept;
                kept += 1;
            }
        }
        // The last level's distinct narrow nodes, each with its `k`.
        let mut narrow: Vec<(u32, Vec<u32>)> = Vec::new();
        let mut stored: HashMap<Vec<u32>, usize> = HashMap::new();
        let mut named: HashMap<u32, usize> = HashMap::new();
        for (n, node) in nodes.iter().enumerate() {
            if level[n] == UNSEEN || level[n] + 2 != depth {
                continue;
            }
            for &child in node {
                named.entry(child).or_insert_with(|| {
                    let leaf = &nodes[child as usize];
                    let k = (0..8)
                        .take_while(|&k| {
                            let run = 2 << k;
                            leaf.chunks(run).all(|c| c.iter().all(|&e| e == c[0]))
                        })
                        .count() as u32;
                    let entries: Vec<u32> = leaf.iter().step_by(1 << k).copied().collect();
                    *stored.entry(entries.clone()).or_insert_with(|| {
                        narrow.push((k, entries));
                        narrow.len() - 1
                    })
                });
            }
        }
        // Laid out largest first, every node starts at a multiple of its length (all are
        // powers of two), which the loader checks.
        let mut order: Vec<usize> = (0..narrow.len()).collect();
        order.sort_by_key(|&i| narrow[i].0);
        let mut entry = vec![0; narrow.len()];
        let mut last = Vec::new();
        for i in order {
            let offset = u32::try_from(last.len())
                .ok()
                .filter(|o| o >> NARROW_OFFSET_BITS == 0)?;
            entry[i] = offset << 4 | narrow[i].0;
            last.extend_from_slice(&narrow[i].1);
        }
        let mut out = Vec::with_capacity(kept as usize * FANOUT);
        for (n, node) in nodes.iter().enumerate() {
            if level[n] == UNSEEN {
                continue;
            } else if level[n] + 2 < depth {
                out.extend(node.iter().map(|&child| index[child as usize]));
            } else if level[n] + 2 == depth {
                out.extend(node.iter().map(|child| entry[named[child]]));
            }
        }
        Some(Narrow {
            depth,
            nodes: out.into(),
            last: last.into(),
        })
    }

    /// The value of `key` in table `root`.
    pub(super) fn find(&self, root: u32, key: u32) -> u32 {
        match self.depth {
            2 => self.walk::<2>(root, key),
            3 => self.walk::<3>(root, key),
            _ => self.walk::<4>(root, key),
        }
    }

    /// [`Narrow::find`] with the depth known to the compiler.
    #[inline(always)]
    fn walk<const D: u32>(&self, root: u32, key: u32) -> u32 {
        let mut entry = root;
        for level in 0..D - 1 {
            entry = self.step(entry, key, level);
        }
        self.leaf(entry, key, D - 1)
    }

    /// A level but the last: as [`Trie::step`].
    #[inline(always)]
    pub(super) fn step(&self, entry: u32, key: u32, level: u32) -> u32 {
        let byte = (key >> (24 - 8 * level)) & 0xff;
        self.nodes[(entry as usize) << 8 | byte as usize]
    }

    /// The last level, `level`: the value `key` takes in the narrow node `entry` names.
    #[inline(always)]
    pub(super) fn leaf(&self, entry: u32, key: u32, level: u32) -> u32 {
        let byte = (key >> (24 - 8 * level)) & 0xff;
        self.last[(entry >> 4) as usize + (byte >> (entry & 15)) as usize]
    }

    /// Bytes the trie takes.
    pub(super) fn bytes(&self) -> usize {
        (self.nodes.len() + self.last.len()) * 4
    }
}

/// The entries of the narrow node an entry `offset << 4 | k` names: `256 >> k` of them from
/// `offset`, a multiple of their count; `None` for a `k` past 8 or an offset off that
/// multiple. (Aligned, the nodes a loader checks, however forged the entries naming them,
/// hold at most nine times the narrow entries: one tiling for each `k`.)
pub(super) fn narrow_range(entry: u32) -> Option<std::ops::Range<usize>> {
    let k = entry & 15;
    let offset = (entry >> 4) as usize;
    let len = FANOUT.checked_shr(k).filter(|&len| len > 0)?;
    offset.is_multiple_of(len).then(|| offset..offset + len)
}

/// The fewest bytes of a `bits`-bit key that tell apart segments starting at `starts`: 1 at
/// least.
fn depth_of(starts: impl Iterator<Item = u64>, bits: u32) -> u32 {
    starts
        .map(|start| bits / 8 - start.trailing_zeros().min(bits) / 8)
        .max()
        .unwrap_or(1)
        .max(1)
}

struct Builder {
    depth: u32,
    /// Bits of a key: 32 or 64.
    bits: u32,
    nodes: Vec<u32>,
    /// The uniform node of each (level, value).
    uniform: HashMap<(u32, u32), u32>,
    max_nodes: usize,
}

impl Builder {
    /// A new node of zeros, or `None` past the budget.
    fn alloc(&mut self) -> Option<u32> {
        let index = self.nodes.len() / FANOUT;
        if index >= self.max_nodes {
            return None;
        }
        self.nodes.resize(self.nodes.len() + FANOUT, 0);
        Some(index as u32)
    }

    /// Fills node `node` of `level`, which covers the keys from `base` on, from the segments
    /// that overlap it (`starts[0]` at most `base`).
    fn fill(
        &mut self,
        node: usize,
        level: u32,
        base: u128,
        starts: &[u64],
        values: &[u32],
    ) -> Option<()> {
        let span = 1u128 << (self.bits - 8 - 8 * level);
        let mut first = 0;
        // The last uniform child: runs of entries share one, and hashing each costs.
        let mut last_uniform = None;
        for byte in 0..FANOUT {
            let lo = base + byte as u128 * span;
            let hi = lo + span;
            while first + 1 < starts.len() && u128::from(starts[first + 1]) <= lo {
                first += 1;
            }
            let mut end = first + 1;
            while end < starts.len() && u128::from(starts[end]) < hi {
                end += 1;
            }
            let entry = if level + 1 == self.depth {
                // The depth makes every last-level range lie in one segment.
                debug_assert_eq!(end, first + 1);
                values[first]
            } else if end == first + 1 {
                match last_uniform {
                    Some((value, node)) if value == values[first] => node,
                    _ => {
                        let node = self.uniform(level + 1, values[first])?;
                        last_uniform = Some((values[first], node));
                        node
                    }
                }
            } else {
                let child = self.alloc()?;
                self.fill(
                    child as usize,
                    level + 1,
                    lo,
                    &starts[first..end],
                    &values[first..end],
                )?;
                child
            };
            self.nodes[node * FANOUT + byte] = entry;
        }
        Some(())
    }

    /// The node of `level` whose every key has `value`.
    fn uniform(&mut self, level: u32, value: u32) -> Option<u32> {
        if let Some(&node) = self.uniform.get(&(level, value)) {
            return Some(node);
        }
        let entry = if level + 1 == self.depth {
            value
        } else {
            self.uniform(level + 1, value)?
        };
        let node = self.alloc()?;
        let at = node as usize * FANOUT;
        self.nodes[at..at + FANOUT].fill(entry);
        self.uniform.insert((level, value), node);
        Some(node)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn reference(starts: &[u32], values: &[u32], key: u32) -> u32 {
        values[starts.partition_point(|&k| k <= key) - 1]
    }

    fn probes(starts: &[u32]) -> impl Iterator<Item = u32> + '_ {
        starts
            .iter()
            .flat_map(|&k| [k, k.wrapping_sub(1), k.saturating_add(1), k | 0xff])
            .chain([0, 1, 255, 256, u32::MAX, u32::MAX - 1, 123_456_789])
    }

    #[test]
    fn tries_answer_like_their_tables_at_every_depth() {
        let slash24: (Vec<u32>, Vec<u32>) = (
            vec![0, 0x0a00_0100, 0x0a00_0300, 0x0b00_0000],
            vec![0, 5, 6, 0],
        );
        let slash8 = (vec![0, 0x0a00_0000, 0x0b00_0000], vec![1, 2, 1]);
        let slash16 = (vec![0, 0xc0a8_0000, 0xc0a9_0000], vec![3, 4, 3]);
        let hosts = (
            vec![0, 0x0a00_0001, 0x0a00_0002, u32::MAX],
            vec![7, 8, 7, 9],
        );
        let one = (vec![0], vec![42]);
        for (tables, depth) in [
            (vec![slash8.clone(), one.clone()], 1),
            (vec![slash16.clone(), slash8.clone()], 2),
            (vec![slash24.clone(), slash8.clone(), one.clone()], 3),
            (vec![hosts, slash24, slash16, one], 4),
        ] {
            let trie = Trie::new(&tables, 1 << 20).expect("within budget");
            assert_eq!(trie.depth(), depth);
            for (root, (starts, values)) in tables.iter().enumerate() {
                for key in probes(starts) {
                    let want = reference(starts, values, key);
                    assert_eq!(
                        trie.find(root as u32, key),
                        want,
                        "root {root}, key {key:#x}"
                    );
                }
            }
        }
    }

    /// Tables of segments whose starts fall on random boundaries (multiples of `1 << shift`,
    /// `shift` from each start's own draw), values from a few, so that runs and uniform nodes
    /// occur as they do in gateway tables.
    fn tables() -> impl Strategy<Value = Vec<(Vec<u32>, Vec<u32>)>> {
        let start = (
            any::<u32>(),
            prop::sample::select(vec![0u32, 4, 6, 8, 12, 16, 24]),
        );
        let table = prop::collection::vec((start, 0u32..5), 0..40).prop_map(|draws| {
            let mut starts: Vec<(u32, u32)> = draws
                .into_iter()
                .map(|((key, shift), value)| (key & !((1u64 << shift) - 1) as u32, value))
                .collect();
            starts.push((0, 9));
            starts.sort_unstable_by_key(|s| s.0);
            starts.dedup_by_key(|s| s.0);
            starts.into_iter().unzip()
        });
        prop::collection::vec(table, 1..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// A trie with its last level narrow answers every key as the trie does, the
        /// boundaries' neighbours and random keys alike, and takes no more memory.
        #[test]
        fn narrow_tries_answer_as_their_tries(
            tables in tables(),
            keys in prop::collection::vec(any::<u32>(), 64),
        ) {
            let trie = Trie::new(&tables, 1 << 24).expect("within budget");
            let Some(narrow) = Narrow::of(&trie, tables.len()) else {
                prop_assert_eq!(trie.depth(), 1);
                return Ok(());
            };
            prop_assert!(narrow.bytes() <= trie.bytes());
            for (root, (starts, _)) in tables.iter().enumerate() {
                for key in probes(starts).chain(keys.iter().copied()) {
                    let (got, want) = (narrow.find(root as u32, key), trie.find(root as u32, key));
                    prop_assert_eq!(got, want, "root {}, key {:#x}", root, key);
                }
            }
        }
    }

    #[test]
    fn a_narrow_last_level_keeps_each_run_once() {
        // Every /24 of 10.0/16 whole to one of three values, but one with a hole of a /26:
        // four levels, the last of uniform nodes and one of runs of 64.
        let mut starts = vec![0];
        let mut values = vec![0];
        for i in 0..256u32 {
            starts.push(0x0a00_0000 + (i << 8));
            values.push(1 + i % 3);
        }
        starts.extend([0x0a00_0540, 0x0a00_0580, 0x0a01_0000]);
        values.extend([0, 1 + 5 % 3, 0]);
        let mut table: Vec<(u32, u32)> = starts.into_iter().zip(values).collect();
        table.sort_unstable_by_key(|t| t.0);
        let table: (Vec<u32>, Vec<u32>) = table.into_iter().unzip();
        let tables = [table.clone(), table];
        let trie = Trie::new(&tables, 1 << 24).expect("within budget");
        assert_eq!(trie.depth(), 4);
        let narrow = Narrow::of(&trie, 2).expect("four levels");
        // Uniform nodes of values 0 to 3 one entry each, the holed /24 four runs of 64.
        assert_eq!(narrow.last.len(), 4 + 4);
        for (root, (starts, values)) in tables.iter().enumerate() {
            for key in probes(starts) {
                let want = reference(starts, values, key);
                assert_eq!(narrow.find(root as u32, key), want, "{key:#x}");
            }
        }
        // A one-level trie has no level to narrow.
        let one = Trie::new(&[(vec![0, 0x0a00_0000], vec![1, 2])], 1 << 20).unwrap();
        assert!(Narrow::of(&one, 1).is_none());
    }

    #[test]
    fn uniform_nodes_are_shared_and_the_budget_holds() {
        // Two tables with the same /24s: only their roots and the nodes under 10.0/16 differ.
        let t = (vec![0, 0x0a00_0100, 0x0a00_0200], vec![0, 1, 0]);
        let trie = Trie::new(&[t.clone(), t.clone()], 1 << 20).expect("within budget");
        // 2 roots, 2 nodes for 10/8 and 2 for 10.0/16, uniform nodes for value 0 at levels 1
        // and 2.
        assert_eq!(trie.bytes(), 8 * NODE_BYTES);
        // Every /24 of 10.0/16 its own segment, then value 2 from 10.1.0.0 on: 1 root, 1 node
        // under 10/8, 1 under 10.0/16, and the uniform nodes of values 0 and 2 at levels 1
        // and 2.
        let mut starts = vec![0];
        starts.extend((0..=256).map(|i| 0x0a00_0000 + (i << 8)));
        let values: Vec<u32> = (0..starts.len() as u32).map(|i| i % 3).collect();
        assert_eq!(values.last(), Some(&2));
        let many = (starts, values);
        assert!(Trie::new(std::slice::from_ref(&many), 6 * NODE_BYTES).is_none());
        let trie = Trie::new(std::slice::from_ref(&many), 7 * NODE_BYTES).expect("fits");
        assert_eq!(trie.bytes(), 7 * NODE_BYTES);
        for key in probes(&many.0) {
            assert_eq!(
                trie.find(0, key),
                reference(&many.0, &many.1, key),
                "{key:#x}"
            );
        }
    }
}
