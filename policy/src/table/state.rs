//! A built [`Table`] as a *state*: a stream of `u32` words that another instance loads
//! instead of building the table again ([`Table::export_state`], [`StateLoader`]).
//!
//! # Layout
//! A header, then [`SECTIONS`] in their fixed order, each an array of elements of a fixed
//! width in words:
//!
//! - **header**: [`MAGIC`], [`VERSION`], the total word count (header included), then each
//!   section's length in words, in section order.
//! - `meta`: the layouts and their parameters (VNI index: 0 dense with its first VNI, 1 trie
//!   with its depth, 2 searched; each IPv4 side: 0 trie with its depth, 1 padded with its
//!   `log2`, 2 trie with a narrow last level with its depth; the IPv6 sides: 0 none, 1
//!   tries, then each side's depth, bits compared away and base, low word first), then the
//!   [`TableStats`] as eight `u64`, low word first.
//! - `vpc-vnis`, `vpc-name-ends`, `vpc-names`: each VPC's VNI, the end of its name in
//!   the names' bytes, and the names as UTF-8, four bytes a word (little-endian, zero
//!   padded).
//! - `set-ends`, `set-members`: the ambiguous verdicts' candidate sets, concatenated.
//! - `vni-a`, `vni-b`: the dense index's VPCs, or the trie's nodes, or the searched index's
//!   VNIs and VPCs.
//! - `src4-*` and `dst4-*`: an IPv4 side: its trie's nodes (with a narrow last level, the
//!   levels above it in `keys` and the narrow nodes in `values`), or a padded side's keys and
//!   values and its big tables (ends, starts, values concatenated).
//! - `port-maps` (13 words each: 8 starts two to a word, 8 classes, the port-less class),
//!   `long-portless`, `long-ends`, `long-starts`, `long-classes`: the IPv4 port maps.
//! - `v6-seg-ends`, `v6-port-ends`, `v6-starts` (4 words each, low word first), `v6-segs`
//!   (3 words each), `v6-port-starts`, `v6-port-classes`: the IPv6 segment tables, source
//!   then destination of each VPC, concatenated.
//! - `src6-nodes`, `src6-roots`, `src6-gaps`, `src6-low`, then `dst6-*` alike: an IPv6
//!   side's trie over the upper halves, each VPC's root of each region and value of each
//!   gap, and the trie over the split /64s' lower halves; empty without IPv6 sides.
//! - `rows` (source classes, destination classes of each VPC), `cells`: the matrices.
//!
//! # Loading
//! The loader decodes each section as its words arrive, straight into the container the
//! table keeps, allocated once at its size; an element cut between two parts waits in a
//! few words. Every size is checked against [`MAX_STATE_WORDS`] and against the others
//! before anything is allocated. [`StateLoader::finish`] then checks every index a lookup
//! follows, so that a table loaded from any words either is refused or answers without
//! panicking. [`StateLoader::finish_vouched`] checks only what laying the table out needs,
//! for words whose every index a `finish` of the same words already checked: the checks are
//! half of a load's time, and they answer alike for the same words.

use std::collections::TryReserveError;

use super::flat::{
    BIG, BigTable, FLAGS, LONG, LongMap, MAP_RANGES, MAX_FLAT, NO_VPC, PORTED, Padded, PortMap,
    PortMaps, Side4, TRIE_CAP, VniIndex,
};
use super::six::{GAPS, MAX_DEPTH, REGIONS, SPLIT, Side6, high_mask};
use super::trie::{FANOUT, Narrow, Trie, narrow_range};
use super::{Cell, Matrices, Row, Seg, SegTable, Sides6, Table, TableStats, VpcTable};
use crate::catalog::{Catalog, VpcEntry};
use crate::packet::VpcId;
use crate::word::WordDecoder;

/// The first word of a state.
pub const MAGIC: u32 = u32::from_le_bytes(*b"FGts");
/// The layout version this library writes and reads, raised whenever the layout changes.
pub const VERSION: u32 = 3;
/// Most words a state may have: 256 MiB, as many words as the matrices alone may have
/// ([`MAX_MATRIX_CELLS`](super::MAX_MATRIX_CELLS)) and a guest's default memory cap. The
/// state of a larger table is refused by the loader.
pub const MAX_STATE_WORDS: usize = 1 << 26;

/// The sections of a state, in order.
pub const SECTIONS: [&str; COUNT] = [
    "meta",
    "vpc-vnis",
    "vpc-name-ends",
    "vpc-names",
    "set-ends",
    "set-members",
    "vni-a",
    "vni-b",
    "src4-keys",
    "src4-values",
    "src4-big-ends",
    "src4-big-starts",
    "src4-big-values",
    "dst4-keys",
    "dst4-values",
    "dst4-big-ends",
    "dst4-big-starts",
    "dst4-big-values",
    "port-maps",
    "long-portless",
    "long-ends",
    "long-starts",
    "long-classes",
    "v6-seg-ends",
    "v6-port-ends",
    "v6-starts",
    "v6-segs",
    "v6-port-starts",
    "v6-port-classes",
    "src6-nodes",
    "src6-roots",
    "src6-gaps",
    "src6-low",
    "dst6-nodes",
    "dst6-roots",
    "dst6-gaps",
    "dst6-low",
    "rows",
    "cells",
];

const COUNT: usize = 39;
const META: usize = 0;
const VPC_VNIS: usize = 1;
const NAME_ENDS: usize = 2;
const NAMES: usize = 3;
const SET_ENDS: usize = 4;
const SET_MEMBERS: usize = 5;
const VNI_A: usize = 6;
const VNI_B: usize = 7;
/// The first of a side's five sections (`+ 5` for the destination side).
const SIDE: usize = 8;
const KEYS: usize = 0;
const VALUES: usize = 1;
const BIG_ENDS: usize = 2;
const BIG_STARTS: usize = 3;
const BIG_VALUES: usize = 4;
const MAPS: usize = 18;
const LONG_PORTLESS: usize = 19;
const LONG_ENDS: usize = 20;
const LONG_STARTS: usize = 21;
const LONG_CLASSES: usize = 22;
const V6_SEG_ENDS: usize = 23;
const V6_PORT_ENDS: usize = 24;
const V6_STARTS: usize = 25;
const V6_SEGS: usize = 26;
const V6_PORT_STARTS: usize = 27;
const V6_PORT_CLASSES: usize = 28;
/// The first of an IPv6 side's four sections (`+ 4` for the destination side).
const SIDE6: usize = 29;
const NODES6: usize = 0;
const ROOTS6: usize = 1;
const GAPS6: usize = 2;
const LOW6: usize = 3;
const ROWS: usize = 37;
const CELLS: usize = 38;

/// Words of an element of each section.
const WIDTH: [usize; COUNT] = {
    let mut width = [1; COUNT];
    width[MAPS] = MAP_WORDS;
    width[V6_STARTS] = 4;
    width[V6_SEGS] = 3;
    width[ROWS] = 2;
    width
};
/// The widest element.
const MAX_WIDTH: usize = MAP_WORDS;
/// Words of a [`PortMap`].
const MAP_WORDS: usize = MAP_RANGES / 2 + MAP_RANGES + 1;
/// Words of the `meta` section.
const META_WORDS: usize = STATS_AT + 2 * STATS;
/// Where the IPv6 sides' layout starts in `meta`: its kind, then [`SIDE6_WORDS`] a side.
const META6: usize = 6;
/// Words of an IPv6 side's layout in `meta`: its trie's depth, bits compared away, regions,
/// the low trie's depth and roots (0 for none), and the regions' bases, low word first.
const SIDE6_WORDS: usize = 5 + 2 * REGIONS;
/// Where the stats start in `meta`.
const STATS_AT: usize = META6 + 1 + 2 * SIDE6_WORDS;
/// Fields of [`TableStats`].
const STATS: usize = 8;
/// Words of the header.
const HEADER_WORDS: usize = 3 + COUNT;

const VNI_DENSE: u32 = 0;
const VNI_TRIE: u32 = 1;
const VNI_SEARCHED: u32 = 2;
const SIDE_TRIE: u32 = 0;
const SIDE_PADDED: u32 = 1;
const SIDE_NARROW: u32 = 2;
const SIX_NONE: u32 = 0;
const SIX_TRIES: u32 = 1;

/// Why a state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The first word is not [`MAGIC`].
    #[error("not a table state: word 0 is {found:#010x}, not {MAGIC:#010x}")]
    Magic {
        /// The first word.
        found: u32,
    },
    /// The layout version is not [`VERSION`].
    #[error("state layout version {found} at word 1; this library reads version {VERSION}")]
    Version {
        /// The version word.
        found: u32,
    },
    /// The declared total is past [`MAX_STATE_WORDS`].
    #[error(
        "the state declares {declared} words at word 2, more than the {MAX_STATE_WORDS} a state may have"
    )]
    TooLarge {
        /// The declared total.
        declared: u32,
    },
    /// The sections' lengths do not add up to the declared total.
    #[error(
        "the state declares {declared} words at word 2, but its header and sections add up to {sum}"
    )]
    Total {
        /// The declared total.
        declared: u32,
        /// The header's words and the sections' declared lengths.
        sum: u64,
    },
    /// A section's declared length breaks a rule of the layout.
    #[error("section `{section}` declares {words} words: {rule}")]
    SectionLength {
        /// The section.
        section: &'static str,
        /// Its declared length.
        words: u32,
        /// The rule broken.
        rule: &'static str,
    },
    /// The state ended before its declared total.
    #[error("the state ends after {got} words, short of the {declared} it declares")]
    Truncated {
        /// Words received.
        got: usize,
        /// Words declared (the header's length, while the header is incomplete).
        declared: usize,
    },
    /// Words arrived past the declared total.
    #[error("the state goes on past the {declared} words it declares")]
    TooLong {
        /// Words declared.
        declared: usize,
    },
    /// The allocator refused a section's container.
    #[error("no memory for section `{section}` ({elements} elements)")]
    Memory {
        /// The section.
        section: &'static str,
        /// Elements asked for.
        elements: usize,
    },
    /// A value breaks a bound the lookup relies on.
    #[error("section `{section}`, word {offset}: {what} ({value}, bound {bound})")]
    Invalid {
        /// The section.
        section: &'static str,
        /// The word's offset in the state.
        offset: usize,
        /// What is wrong.
        what: &'static str,
        /// The value found.
        value: u64,
        /// The bound it breaks.
        bound: u64,
    },
}

impl Table {
    /// The table as a state: words another instance loads with [`StateLoader`]. A table
    /// whose state would be longer than [`MAX_STATE_WORDS`] gets words the loader refuses.
    pub fn export_state(&self) -> Vec<u32> {
        let mut w = Writer {
            out: vec![0; HEADER_WORDS],
            next: 0,
        };
        w.out[0] = MAGIC;
        w.out[1] = VERSION;

        // meta
        let (vni_kind, vni_param) = match &self.vnis {
            VniIndex::Dense { first, .. } => (VNI_DENSE, *first),
            VniIndex::Trie(trie) => (VNI_TRIE, trie.depth),
            VniIndex::Searched { .. } => (VNI_SEARCHED, 0),
        };
        let side = |side: &Side4| match side {
            Side4::Trie(trie) => [SIDE_TRIE, trie.depth],
            Side4::Narrow(narrow) => [SIDE_NARROW, narrow.depth],
            Side4::Padded(padded) => [SIDE_PADDED, padded.log2],
        };
        let s = self.stats;
        let stats = [
            s.segments,
            s.port_ranges,
            s.source_classes,
            s.destination_classes,
            s.matrix_cells,
            s.candidate_sets,
            s.ipv4_bytes,
            s.ipv6_bytes,
        ];
        let six = self.six.as_ref().map(|s| [&s.src, &s.dst]);
        w.section(META, |o| {
            o.extend([vni_kind, vni_param]);
            o.extend(side(&self.src4));
            o.extend(side(&self.dst4));
            o.push(if six.is_some() { SIX_TRIES } else { SIX_NONE });
            for k in 0..2 {
                let mut words = [0; SIDE6_WORDS];
                if let Some(s) = six.map(|s| s[k]) {
                    let low = s.low.as_ref().map_or(0, |t| t.depth);
                    let head = [s.upper.depth, s.shift, s.regions, low, s.low_roots];
                    words[..5].copy_from_slice(&head);
                    for (pair, base) in words[5..].as_chunks_mut::<2>().0.iter_mut().zip(s.bases) {
                        *pair = [base as u32, (base >> 32) as u32];
                    }
                }
                o.extend(words);
            }
            for n in stats {
                let n = n as u64;
                o.extend([n as u32, (n >> 32) as u32]);
            }
        });

        // the catalog
        let vpcs = &self.catalog.vpcs;
        w.section(VPC_VNIS, |o| o.extend(vpcs.iter().map(|v| v.vni)));
        w.section(NAME_ENDS, |o| {
            o.extend(vpcs.iter().scan(0u32, |end, v| {
                *end = end.saturating_add(len32(v.name.len()));
                Some(*end)
            }));
        });
        w.section(NAMES, |o| {
            let mut bytes = vpcs.iter().flat_map(|v| v.name.bytes());
            loop {
                let mut word = [0u8; 4];
                let mut n = 0;
                for (b, byte) in word.iter_mut().zip(bytes.by_ref()) {
                    *b = byte;
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                o.push(u32::from_le_bytes(word));
            }
        });
        let sets = &self.catalog.candidate_sets;
        w.section(SET_ENDS, |o| o.extend(ends(sets.iter().map(Vec::len))));
        w.section(SET_MEMBERS, |o| {
            o.extend(sets.iter().flatten().map(|v| v.0))
        });

        // the VNI index
        let (a, b): (&[u32], &[u32]) = match &self.vnis {
            VniIndex::Dense { vpcs, .. } => (vpcs, &[]),
            VniIndex::Trie(trie) => (&trie.nodes, &[]),
            VniIndex::Searched { vnis, vpcs } => (vnis, vpcs),
        };
        w.section(VNI_A, |o| o.extend_from_slice(a));
        w.section(VNI_B, |o| o.extend_from_slice(b));

        // the IPv4 sides
        for (i, side) in [&self.src4, &self.dst4].into_iter().enumerate() {
            let at = SIDE + 5 * i;
            let empty = Padded::default();
            let (keys, values, padded) = match side {
                Side4::Trie(trie) => (&trie.nodes, &empty.values, &empty),
                Side4::Narrow(narrow) => (&narrow.nodes, &narrow.last, &empty),
                Side4::Padded(padded) => (&padded.keys, &padded.values, padded),
            };
            w.section(at + KEYS, |o| o.extend_from_slice(keys));
            w.section(at + VALUES, |o| o.extend_from_slice(values));
            w.section(at + BIG_ENDS, |o| {
                o.extend(ends(padded.big.iter().map(|t| t.starts.len())));
            });
            w.section(at + BIG_STARTS, |o| {
                o.extend(padded.big.iter().flat_map(|t| t.starts.iter()));
            });
            w.section(at + BIG_VALUES, |o| {
                o.extend(padded.big.iter().flat_map(|t| t.values.iter()));
            });
        }

        // the IPv4 port maps
        let ports = &self.ports;
        w.section(MAPS, |o| {
            for map in &ports.maps {
                let pairs = map.starts.as_chunks::<2>().0;
                o.extend(
                    pairs
                        .iter()
                        .map(|&[a, b]| u32::from(a) | u32::from(b) << 16),
                );
                o.extend_from_slice(&map.classes);
                o.push(map.portless);
            }
        });
        w.section(LONG_PORTLESS, |o| {
            o.extend(ports.long.iter().map(|m| m.portless));
        });
        w.section(LONG_ENDS, |o| {
            o.extend(ends(ports.long.iter().map(|m| m.starts.len())));
        });
        w.section(LONG_STARTS, |o| {
            o.extend(
                ports
                    .long
                    .iter()
                    .flat_map(|m| m.starts.iter().map(|&p| u32::from(p))),
            );
        });
        w.section(LONG_CLASSES, |o| {
            o.extend(ports.long.iter().flat_map(|m| m.classes.iter()));
        });

        // IPv6
        let v6 = || self.per_vpc.iter().flat_map(|t| [&t.src6, &t.dst6]);
        w.section(V6_SEG_ENDS, |o| o.extend(ends(v6().map(|t| t.segs.len()))));
        w.section(V6_PORT_ENDS, |o| {
            o.extend(ends(v6().map(|t| t.port_starts.len())));
        });
        w.section(V6_STARTS, |o| {
            for &k in v6().flat_map(|t| t.starts.iter()) {
                o.extend([
                    k as u32,
                    (k >> 32) as u32,
                    (k >> 64) as u32,
                    (k >> 96) as u32,
                ]);
            }
        });
        w.section(V6_SEGS, |o| {
            for s in v6().flat_map(|t| t.segs.iter()) {
                o.extend([s.portless, s.ports_at, s.ports_len]);
            }
        });
        w.section(V6_PORT_STARTS, |o| {
            o.extend(v6().flat_map(|t| t.port_starts.iter().map(|&p| u32::from(p))));
        });
        w.section(V6_PORT_CLASSES, |o| {
            o.extend(v6().flat_map(|t| t.port_classes.iter()));
        });

        // the IPv6 sides
        for k in 0..2 {
            let side = six.map(|s| s[k]);
            let at = SIDE6 + 4 * k;
            w.section(at + NODES6, |o| {
                o.extend_from_slice(side.map_or(&[][..], |s| &s.upper.nodes));
            });
            w.section(at + ROOTS6, |o| {
                o.extend_from_slice(side.map_or(&[][..], |s| &s.roots));
            });
            w.section(at + GAPS6, |o| {
                o.extend_from_slice(side.map_or(&[][..], |s| &s.gaps));
            });
            w.section(at + LOW6, |o| {
                let low = side.and_then(|s| s.low.as_ref());
                o.extend_from_slice(low.map_or(&[][..], |t| &t.nodes));
            });
        }

        // the matrices
        let m = &self.matrices;
        w.section(ROWS, |o| {
            for (v, row) in m.rows.iter().enumerate() {
                let next = m.rows.get(v + 1).map_or(m.cells.len(), |r| r.at);
                let src = next.saturating_sub(row.at).checked_div(row.dst_classes);
                o.extend([len32(src.unwrap_or(0)), len32(row.dst_classes)]);
            }
        });
        w.section(CELLS, |o| o.extend(m.cells.iter().map(|c| c.0)));

        let total = len32(w.out.len());
        w.out[2] = total;
        w.out
    }

    /// The table of a state given whole: [`StateLoader`] fed one part.
    pub fn from_state(words: &[u32]) -> Result<Table, StateError> {
        let mut loader = StateLoader::new();
        loader.push(words)?;
        loader.finish()
    }
}

/// A length as a section length word: past `u32::MAX`, a length the loader refuses.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The running ends of consecutive runs of these lengths.
fn ends(lens: impl Iterator<Item = usize>) -> impl Iterator<Item = u32> {
    lens.scan(0u32, |end, len| {
        *end = end.saturating_add(len32(len));
        Some(*end)
    })
}

/// Writes sections in order, each length into the header.
struct Writer {
    out: Vec<u32>,
    next: usize,
}

impl Writer {
    fn section(&mut self, section: usize, write: impl FnOnce(&mut Vec<u32>)) {
        debug_assert_eq!(section, self.next, "sections in order");
        let before = self.out.len();
        write(&mut self.out);
        self.out[3 + section] = len32(self.out.len() - before);
        self.next += 1;
    }
}

/// Consecutive runs of a section's elements, each split off into its own allocation of
/// its exact length as the elements arrive; their ends come from an earlier section.
#[derive(Debug)]
struct Runs<T> {
    done: Vec<Box<[T]>>,
    cur: Vec<T>,
}

impl<T> Default for Runs<T> {
    fn default() -> Self {
        Runs {
            done: Vec::new(),
            cur: Vec::new(),
        }
    }
}

impl<T> Runs<T> {
    fn begin(&mut self, ends: &[u32]) -> Result<(), TryReserveError> {
        self.done = alloc(ends.len())?;
        self.settle(ends)
    }

    /// Closes every full run (empty ones included) and sizes the next.
    fn settle(&mut self, ends: &[u32]) -> Result<(), TryReserveError> {
        while let Some(&end) = ends.get(self.done.len()) {
            let start = match self.done.len() {
                0 => 0,
                i => ends[i - 1],
            };
            let len = end.saturating_sub(start) as usize;
            if self.cur.len() < len {
                return self.cur.try_reserve_exact(len - self.cur.len());
            }
            self.done
                .push(std::mem::take(&mut self.cur).into_boxed_slice());
        }
        Ok(())
    }

    /// Adds the next element; `false` past the last run.
    fn push(&mut self, ends: &[u32], item: T) -> Result<bool, TryReserveError> {
        if self.done.len() >= ends.len() {
            return Ok(false);
        }
        self.cur.push(item);
        self.settle(ends)?;
        Ok(true)
    }
}

/// An empty vector with room for exactly `n` elements, or the allocator's refusal.
fn alloc<T>(n: usize) -> Result<Vec<T>, TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)?;
    Ok(v)
}

/// A side's sections as they arrive.
#[derive(Debug, Default)]
struct SideParts {
    keys: Vec<u32>,
    values: Vec<u32>,
    big_ends: Vec<u32>,
    big_starts: Runs<u32>,
    big_values: Runs<u32>,
}

/// Every section as it arrives, in the containers the table keeps.
#[derive(Debug, Default)]
struct Parts {
    meta: Vec<u32>,
    vnis: Vec<u32>,
    name_ends: Vec<u32>,
    names: Runs<u8>,
    set_ends: Vec<u32>,
    sets: Runs<VpcId>,
    vni_a: Vec<u32>,
    vni_b: Vec<u32>,
    sides: [SideParts; 2],
    maps: Vec<PortMap>,
    long_portless: Vec<u32>,
    long_ends: Vec<u32>,
    long_starts: Runs<u16>,
    long_classes: Runs<u32>,
    v6_seg_ends: Vec<u32>,
    v6_port_ends: Vec<u32>,
    v6_starts: Runs<u128>,
    v6_segs: Runs<Seg>,
    v6_port_starts: Runs<u16>,
    v6_port_classes: Runs<u32>,
    /// Each IPv6 side's four sections, in order.
    six: [[Vec<u32>; 4]; 2],
    rows: Vec<[u32; 2]>,
    cells: Vec<Cell>,
}

/// Loads a state part by part.
#[derive(Debug)]
pub struct StateLoader {
    /// The header, as it arrives.
    head: [u32; HEADER_WORDS],
    /// Words received.
    got: usize,
    /// The section being filled (`COUNT` once all are).
    section: usize,
    /// Words of it still to come.
    left: usize,
    /// Elements of it taken.
    taken: usize,
    /// Where each section starts in the state.
    starts: [usize; COUNT],
    /// The words of an element cut between two parts.
    carry: [u32; MAX_WIDTH],
    carried: usize,
    parts: Parts,
    /// The first refusal: every later call answers it.
    failed: Option<StateError>,
}

impl Default for StateLoader {
    fn default() -> Self {
        StateLoader {
            head: [0; HEADER_WORDS],
            got: 0,
            section: 0,
            left: 0,
            taken: 0,
            starts: [0; COUNT],
            carry: [0; MAX_WIDTH],
            carried: 0,
            parts: Parts::default(),
            failed: None,
        }
    }
}

impl StateLoader {
    /// A loader that has received nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next part of the state (any split of the exported words, including parts of
    /// one word or of zero words).
    pub fn push(&mut self, part: &[u32]) -> Result<(), StateError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.take_part(part);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// The table, once every word has arrived and checked.
    pub fn finish(self) -> Result<Table, StateError> {
        self.finish_as(false)
    }

    /// The table, once every word has arrived, checking only what laying it out needs (the
    /// header, the sections' sizes against each other, the layouts and their parameters, the
    /// roots, the names, the small sections): for the words a [`finish`](Self::finish) of the
    /// same words accepted. The contents of the tries, the padded sides, the segment tables
    /// and the matrices are not checked, so other words may load into a table whose lookups
    /// panic or answer wrongly.
    pub fn finish_vouched(self) -> Result<Table, StateError> {
        self.finish_as(true)
    }

    fn finish_as(self, vouched: bool) -> Result<Table, StateError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.got < HEADER_WORDS || self.section < COUNT {
            let declared = match self.got {
                0..3 => HEADER_WORDS,
                _ => (self.head[2] as usize).max(HEADER_WORDS),
            };
            return Err(StateError::Truncated {
                got: self.got,
                declared,
            });
        }
        assemble(self.parts, &self.starts, vouched)
    }

    fn lens(&self) -> &[u32] {
        &self.head[3..]
    }

    fn take_part(&mut self, mut words: &[u32]) -> Result<(), StateError> {
        if self.got < HEADER_WORDS {
            let n = words.len().min(HEADER_WORDS - self.got);
            self.head[self.got..self.got + n].copy_from_slice(&words[..n]);
            self.got += n;
            words = &words[n..];
            if self.got < HEADER_WORDS {
                return Ok(());
            }
            self.check_header()?;
            self.section = 0;
            self.left = self.lens()[0] as usize;
            self.begin_section()?;
            self.next_sections()?;
        }
        while !words.is_empty() {
            if self.section == COUNT {
                return Err(StateError::TooLong {
                    declared: self.head[2] as usize,
                });
            }
            let n = words.len().min(self.left);
            let (now, rest) = words.split_at(n);
            self.consume(now)?;
            self.left -= n;
            self.got += n;
            words = rest;
            self.next_sections()?;
        }
        Ok(())
    }

    /// Checks the header's sizes against the bound and against each other.
    fn check_header(&mut self) -> Result<(), StateError> {
        let [magic, version, total] = [self.head[0], self.head[1], self.head[2]];
        if magic != MAGIC {
            return Err(StateError::Magic { found: magic });
        }
        if version != VERSION {
            return Err(StateError::Version { found: version });
        }
        if total as usize > MAX_STATE_WORDS {
            return Err(StateError::TooLarge { declared: total });
        }
        let lens: [u32; COUNT] = std::array::from_fn(|s| self.head[3 + s]);
        let sum = lens.iter().map(|&l| u64::from(l)).sum::<u64>() + HEADER_WORDS as u64;
        if sum != u64::from(total) {
            return Err(StateError::Total {
                declared: total,
                sum,
            });
        }
        let refuse = |s: usize, rule: &'static str| StateError::SectionLength {
            section: SECTIONS[s],
            words: lens[s],
            rule,
        };
        for s in 0..COUNT {
            if !(lens[s] as usize).is_multiple_of(WIDTH[s]) {
                return Err(refuse(s, "not a whole number of elements"));
            }
        }
        let vpcs = lens[VPC_VNIS];
        let rules = [
            (META, META_WORDS as u64, "the meta section's length"),
            (NAME_ENDS, u64::from(vpcs), "one end a VPC"),
            (ROWS, 2 * u64::from(vpcs), "one row a VPC"),
            (V6_SEG_ENDS, 2 * u64::from(vpcs), "two IPv6 tables a VPC"),
            (V6_PORT_ENDS, 2 * u64::from(vpcs), "two IPv6 tables a VPC"),
            (
                LONG_ENDS,
                u64::from(lens[LONG_PORTLESS]),
                "one end a long map",
            ),
            (
                LONG_CLASSES,
                u64::from(lens[LONG_STARTS]),
                "one class a port start",
            ),
            (
                V6_SEGS,
                u64::from(lens[V6_STARTS]) / 4 * 3,
                "one segment a start",
            ),
            (
                V6_PORT_CLASSES,
                u64::from(lens[V6_PORT_STARTS]),
                "one class a port start",
            ),
            (
                SIDE + BIG_VALUES,
                u64::from(lens[SIDE + BIG_STARTS]),
                "one value a start",
            ),
            (
                SIDE + 5 + BIG_VALUES,
                u64::from(lens[SIDE + 5 + BIG_STARTS]),
                "one value a start",
            ),
        ];
        for (s, want, rule) in rules {
            if u64::from(lens[s]) != want {
                return Err(refuse(s, rule));
            }
        }
        let mut at = HEADER_WORDS;
        for (start, len) in self.starts.iter_mut().zip(lens) {
            *start = at;
            at += len as usize;
        }
        Ok(())
    }

    /// Closes the sections that are complete and begins the next.
    fn next_sections(&mut self) -> Result<(), StateError> {
        while self.section < COUNT && self.left == 0 {
            self.end_section()?;
            self.section += 1;
            if self.section < COUNT {
                self.left = self.lens()[self.section] as usize;
                self.taken = 0;
                self.begin_section()?;
            }
        }
        Ok(())
    }

    /// Takes words of the current section: an element cut between parts waits in `carry`.
    fn consume(&mut self, mut now: &[u32]) -> Result<(), StateError> {
        let width = WIDTH[self.section];
        if self.carried > 0 {
            let k = (width - self.carried).min(now.len());
            self.carry[self.carried..self.carried + k].copy_from_slice(&now[..k]);
            self.carried += k;
            now = &now[k..];
            if self.carried < width {
                return Ok(());
            }
            let carry = self.carry;
            self.carried = 0;
            self.take(&carry[..width])?;
        }
        let (whole, rest) = now.split_at(now.len() / width * width);
        self.take(whole)?;
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carried = rest.len();
        Ok(())
    }

    /// The state's word offset of element `i` of the current section, from those taken.
    fn offset(&self, i: usize) -> usize {
        self.starts[self.section] + (self.taken + i) * WIDTH[self.section]
    }

    fn begin_section(&mut self) -> Result<(), StateError> {
        let s = self.section;
        let n = self.lens()[s] as usize / WIDTH[s];
        let oom = |_| StateError::Memory {
            section: SECTIONS[s],
            elements: n,
        };
        let p = &mut self.parts;
        match s {
            META => p.meta = alloc(n).map_err(oom)?,
            VPC_VNIS => p.vnis = alloc(n).map_err(oom)?,
            NAME_ENDS => p.name_ends = alloc(n).map_err(oom)?,
            NAMES => p.names.begin(&p.name_ends).map_err(oom)?,
            SET_ENDS => p.set_ends = alloc(n).map_err(oom)?,
            SET_MEMBERS => p.sets.begin(&p.set_ends).map_err(oom)?,
            VNI_A => p.vni_a = alloc(n).map_err(oom)?,
            VNI_B => p.vni_b = alloc(n).map_err(oom)?,
            MAPS => p.maps = alloc(n).map_err(oom)?,
            LONG_PORTLESS => p.long_portless = alloc(n).map_err(oom)?,
            LONG_ENDS => p.long_ends = alloc(n).map_err(oom)?,
            LONG_STARTS => p.long_starts.begin(&p.long_ends).map_err(oom)?,
            LONG_CLASSES => p.long_classes.begin(&p.long_ends).map_err(oom)?,
            V6_SEG_ENDS => p.v6_seg_ends = alloc(n).map_err(oom)?,
            V6_PORT_ENDS => p.v6_port_ends = alloc(n).map_err(oom)?,
            V6_STARTS => p.v6_starts.begin(&p.v6_seg_ends).map_err(oom)?,
            V6_SEGS => p.v6_segs.begin(&p.v6_seg_ends).map_err(oom)?,
            V6_PORT_STARTS => p.v6_port_starts.begin(&p.v6_port_ends).map_err(oom)?,
            V6_PORT_CLASSES => p.v6_port_classes.begin(&p.v6_port_ends).map_err(oom)?,
            ROWS => p.rows = alloc(n).map_err(oom)?,
            CELLS => p.cells = alloc(n).map_err(oom)?,
            _ if s >= SIDE6 => p.six[(s - SIDE6) / 4][(s - SIDE6) % 4] = alloc(n).map_err(oom)?,
            _ => {
                let side = &mut p.sides[(s - SIDE) / 5];
                match (s - SIDE) % 5 {
                    KEYS => side.keys = alloc(n).map_err(oom)?,
                    VALUES => side.values = alloc(n).map_err(oom)?,
                    BIG_ENDS => side.big_ends = alloc(n).map_err(oom)?,
                    BIG_STARTS => side.big_starts.begin(&side.big_ends).map_err(oom)?,
                    _ => side.big_values.begin(&side.big_ends).map_err(oom)?,
                }
            }
        }
        Ok(())
    }

    /// Checks what a section's own elements must satisfy for the sections after it:
    /// the ends of runs, before the runs' section allocates them.
    fn end_section(&mut self) -> Result<(), StateError> {
        let s = self.section;
        let lens: [u32; COUNT] = std::array::from_fn(|s| self.head[3 + s]);
        let p = &self.parts;
        let (ends, total): (&[u32], u64) = match s {
            NAME_ENDS => {
                // Bytes: the names' words hold them, padded to a whole word.
                let bytes = p.name_ends.last().map_or(0, |&e| u64::from(e));
                let words = u64::from(lens[NAMES]);
                if bytes.div_ceil(4) != words {
                    return Err(self.invalid(
                        s,
                        p.name_ends.len().saturating_sub(1),
                        "the names' bytes do not fill their words",
                        bytes,
                        4 * words,
                    ));
                }
                (&p.name_ends, bytes)
            }
            SET_ENDS => (&p.set_ends, u64::from(lens[SET_MEMBERS])),
            LONG_ENDS => (&p.long_ends, u64::from(lens[LONG_STARTS])),
            V6_SEG_ENDS => (&p.v6_seg_ends, u64::from(lens[V6_STARTS]) / 4),
            V6_PORT_ENDS => (&p.v6_port_ends, u64::from(lens[V6_PORT_STARTS])),
            _ if (SIDE..MAPS).contains(&s) && (s - SIDE) % 5 == BIG_ENDS => {
                (&p.sides[(s - SIDE) / 5].big_ends, u64::from(lens[s + 1]))
            }
            _ => return Ok(()),
        };
        let mut last = 0;
        for (i, &end) in ends.iter().enumerate() {
            if end < last {
                return Err(self.invalid(s, i, "ends not ascending", end.into(), last.into()));
            }
            last = end;
        }
        if u64::from(last) != total {
            return Err(self.invalid(
                s,
                ends.len().saturating_sub(1),
                "the last end is not the length of the runs' section",
                last.into(),
                total,
            ));
        }
        Ok(())
    }

    /// The refusal of element `i` of section `s` ([`Place::bad`]).
    fn invalid(
        &self,
        s: usize,
        i: usize,
        what: &'static str,
        value: u64,
        bound: u64,
    ) -> StateError {
        Place {
            starts: &self.starts,
            vouched: false,
        }
        .bad(s, i, what, value, bound)
    }

    /// Takes whole elements of the current section.
    fn take(&mut self, elems: &[u32]) -> Result<(), StateError> {
        let s = self.section;
        let oom = |_| StateError::Memory {
            section: SECTIONS[s],
            elements: 1,
        };
        let p = &mut self.parts;
        let mut bad = None;
        match s {
            META => p.meta.extend_from_slice(elems),
            VPC_VNIS => p.vnis.extend_from_slice(elems),
            NAME_ENDS => p.name_ends.extend_from_slice(elems),
            NAMES => {
                for (i, &w) in elems.iter().enumerate() {
                    for b in w.to_le_bytes() {
                        if !p.names.push(&p.name_ends, b).map_err(oom)? && b != 0 {
                            bad = Some((i, "padding after the names is not zero", w, 0));
                        }
                    }
                }
            }
            SET_ENDS => p.set_ends.extend_from_slice(elems),
            SET_MEMBERS => {
                for &w in elems {
                    p.sets.push(&p.set_ends, VpcId(w)).map_err(oom)?;
                }
            }
            VNI_A => p.vni_a.extend_from_slice(elems),
            VNI_B => p.vni_b.extend_from_slice(elems),
            MAPS => {
                for m in elems.as_chunks::<MAP_WORDS>().0 {
                    let mut starts = [0; MAP_RANGES];
                    for (pair, &w) in starts.as_chunks_mut::<2>().0.iter_mut().zip(m) {
                        *pair = [w as u16, (w >> 16) as u16];
                    }
                    let mut classes = [0; MAP_RANGES];
                    classes.copy_from_slice(&m[MAP_RANGES / 2..MAP_RANGES / 2 + MAP_RANGES]);
                    p.maps.push(PortMap {
                        starts,
                        classes,
                        portless: m[MAP_WORDS - 1],
                    });
                }
            }
            LONG_PORTLESS => p.long_portless.extend_from_slice(elems),
            LONG_ENDS => p.long_ends.extend_from_slice(elems),
            LONG_STARTS | V6_PORT_STARTS => {
                let (runs, ends) = match s {
                    LONG_STARTS => (&mut p.long_starts, &p.long_ends),
                    _ => (&mut p.v6_port_starts, &p.v6_port_ends),
                };
                for (i, &w) in elems.iter().enumerate() {
                    match u16::try_from(w) {
                        Ok(port) => {
                            runs.push(ends, port).map_err(oom)?;
                        }
                        Err(_) => {
                            bad = Some((i, "a port past 65535", w, u32::from(u16::MAX)));
                            break;
                        }
                    }
                }
            }
            LONG_CLASSES => {
                for &w in elems {
                    p.long_classes.push(&p.long_ends, w).map_err(oom)?;
                }
            }
            V6_SEG_ENDS => p.v6_seg_ends.extend_from_slice(elems),
            V6_PORT_ENDS => p.v6_port_ends.extend_from_slice(elems),
            V6_STARTS => {
                for &[a, b, c, d] in elems.as_chunks::<4>().0 {
                    let k = u128::from(a)
                        | u128::from(b) << 32
                        | u128::from(c) << 64
                        | u128::from(d) << 96;
                    p.v6_starts.push(&p.v6_seg_ends, k).map_err(oom)?;
                }
            }
            V6_SEGS => {
                for &[portless, ports_at, ports_len] in elems.as_chunks::<3>().0 {
                    let seg = Seg {
                        portless,
                        ports_at,
                        ports_len,
                    };
                    p.v6_segs.push(&p.v6_seg_ends, seg).map_err(oom)?;
                }
            }
            V6_PORT_CLASSES => {
                for &w in elems {
                    p.v6_port_classes.push(&p.v6_port_ends, w).map_err(oom)?;
                }
            }
            ROWS => p.rows.extend(elems.as_chunks::<2>().0),
            CELLS => p.cells.extend(elems.iter().map(|&w| Cell(w))),
            _ if s >= SIDE6 => p.six[(s - SIDE6) / 4][(s - SIDE6) % 4].extend_from_slice(elems),
            _ => {
                let side = &mut p.sides[(s - SIDE) / 5];
                match (s - SIDE) % 5 {
                    KEYS => side.keys.extend_from_slice(elems),
                    VALUES => side.values.extend_from_slice(elems),
                    BIG_ENDS => side.big_ends.extend_from_slice(elems),
                    BIG_STARTS => {
                        for &w in elems {
                            side.big_starts.push(&side.big_ends, w).map_err(oom)?;
                        }
                    }
                    _ => {
                        for &w in elems {
                            side.big_values.push(&side.big_ends, w).map_err(oom)?;
                        }
                    }
                }
            }
        }
        if let Some((i, what, value, bound)) = bad {
            return Err(StateError::Invalid {
                section: SECTIONS[s],
                offset: self.offset(i),
                what,
                value: value.into(),
                bound: bound.into(),
            });
        }
        self.taken += elems.len() / WIDTH[s];
        Ok(())
    }
}

/// Where refusals point (the sections' starts in the state), and whether the indices a
/// lookup follows are checked or vouched for ([`StateLoader::finish_vouched`]).
struct Place<'a> {
    starts: &'a [usize; COUNT],
    vouched: bool,
}

impl Place<'_> {
    /// The refusal of element `i` of section `s`.
    fn bad(&self, s: usize, i: usize, what: &'static str, value: u64, bound: u64) -> StateError {
        StateError::Invalid {
            section: SECTIONS[s],
            offset: self.starts[s] + i * WIDTH[s],
            what,
            value,
            bound,
        }
    }
}

/// The elements whose content to check: none when the indices are vouched for.
fn to_check<T>(vouched: bool, elements: &[T]) -> &[T] {
    if vouched { &[] } else { elements }
}

/// The class bound a value needs: one more than the largest class it can give, through its
/// port map if it names one; `None` for a map past the maps.
fn value_need(v: u32, maps: &[u64], long: &[u64]) -> Option<u64> {
    if v & PORTED == 0 {
        Some(u64::from(v) + 1)
    } else if v & LONG != 0 {
        long.get((v & !(PORTED | LONG)) as usize).copied()
    } else {
        maps.get((v & !PORTED) as usize).copied()
    }
}

/// What a trie's last-level value that names nothing is refused as.
const VALUE_REFUSED: &str = "a trie value names a port map past the maps, or a VPC past the VPCs";

/// A need in [`block_needs`] of a node holding a value that names nothing.
const NAMES_NOTHING: u32 = u32::MAX;
/// A need in [`block_needs`] too large for a `u32`: past any class bound.
const NEEDS_MORE: u32 = u32::MAX - 1;

/// The need of every aligned narrow node `last` could hold, for each `k` (nodes of
/// `256 >> k` entries; `needs[k][j]` the node at `j << (8 - k)`): the largest need of its
/// values ([`NEEDS_MORE`] from that on, read as past any class bound), or [`NAMES_NOTHING`]
/// when one names nothing. Each `k` halves the one after it: about twice `last`'s length in
/// all, in time linear in it, however many entries name the nodes.
fn block_needs(
    last: &[u32],
    value: impl Fn(u32) -> Option<u64>,
) -> Result<Vec<Vec<u32>>, TryReserveError> {
    let need = |v: u32| value(v).map_or(NAMES_NOTHING, |n| n.min(u64::from(NEEDS_MORE)) as u32);
    let mut needs: Vec<Vec<u32>> = Vec::new();
    needs.try_reserve_exact(9)?;
    let mut one = alloc(last.len())?;
    one.extend(last.iter().map(|&v| need(v)));
    needs.push(one);
    for _ in 0..8 {
        let below = &needs[needs.len() - 1];
        let mut level = alloc(below.len() / 2)?;
        level.extend(below.as_chunks::<2>().0.iter().map(|&[a, b]| {
            if a == NAMES_NOTHING || b == NAMES_NOTHING {
                NAMES_NOTHING
            } else {
                a.max(b)
            }
        }));
        needs.push(level);
    }
    // Built from k = 8 (one entry) up; indexed by k.
    needs.reverse();
    Ok(needs)
}

/// Checks a trie's every reachable index: nodes of levels before the last hold node indices
/// (each node reached at one level only, no root below level 0), the last level's values
/// pass `leaf` (one that does not is refused as `leaf_refused`). Returns each node's need:
/// the largest of its leaves' (0 for unreached ones, and for every node when the indices are
/// vouched for).
fn check_trie(
    place: &Place<'_>,
    (s, leaf_refused): (usize, &'static str),
    (depth, max_depth): (u32, u32),
    nodes: &[u32],
    roots: &[u32],
    mut leaf: impl FnMut(u32) -> Option<u64>,
) -> Result<Vec<u64>, StateError> {
    if !(1..=max_depth).contains(&depth) {
        return Err(place.bad(META, 0, "a trie's depth", depth.into(), max_depth.into()));
    }
    if !nodes.len().is_multiple_of(FANOUT) || nodes.is_empty() {
        return Err(place.bad(
            s,
            0,
            "a trie's nodes are not whole or none",
            nodes.len() as u64,
            FANOUT as u64,
        ));
    }
    let count = nodes.len() / FANOUT;
    if let Some(&root) = roots.iter().find(|&&r| r as usize >= count) {
        return Err(place.bad(
            s,
            0,
            "a root past the trie's nodes",
            root.into(),
            count as u64,
        ));
    }
    if place.vouched {
        return Ok(vec![0; count]);
    }
    let nodes = nodes.as_chunks::<FANOUT>().0;
    const UNSEEN: u8 = u8::MAX;
    let mut level = vec![UNSEEN; count];
    for &root in roots {
        level[root as usize] = 0;
    }
    let last = depth as u8 - 1;
    for l in 0..last {
        for n in 0..count {
            if level[n] != l {
                continue;
            }
            // A child repeated in a run was checked at its first entry (the runs are long:
            // a prefix shorter than a level fills a run of one child).
            let mut prev = None;
            for (i, &e) in nodes[n].iter().enumerate() {
                if prev.replace(e) == Some(e) {
                    continue;
                }
                let at = n * FANOUT + i;
                let Some(seen) = level.get_mut(e as usize) else {
                    return Err(place.bad(
                        s,
                        at,
                        "a trie node index past the nodes",
                        e.into(),
                        count as u64,
                    ));
                };
                if *seen == UNSEEN {
                    *seen = l + 1;
                } else if *seen != l + 1 {
                    return Err(place.bad(
                        s,
                        at,
                        "a trie node reached at two levels",
                        e.into(),
                        count as u64,
                    ));
                }
            }
        }
    }
    let mut need = vec![0u64; count];
    for n in 0..count {
        if level[n] != last {
            continue;
        }
        let mut most = 0;
        let mut prev = None;
        for (i, &v) in nodes[n].iter().enumerate() {
            if prev.replace(v) == Some(v) {
                continue;
            }
            let Some(v) = leaf(v) else {
                return Err(place.bad(s, n * FANOUT + i, leaf_refused, v.into(), 0));
            };
            most = most.max(v);
        }
        need[n] = most;
    }
    for l in (0..last).rev() {
        for n in 0..count {
            if level[n] == l {
                need[n] = nodes[n]
                    .iter()
                    .map(|&e| need[e as usize])
                    .max()
                    .unwrap_or(0);
            }
        }
    }
    Ok(need)
}

/// Checks a run of segment starts: non-empty, from 0, ascending.
fn check_starts<K: Copy + Ord + Default>(
    place: &Place<'_>,
    s: usize,
    first: usize,
    starts: &[K],
) -> Result<(), StateError> {
    if place.vouched {
        return Ok(());
    }
    if starts.first() != Some(&K::default()) {
        return Err(place.bad(s, first, "a table does not start at 0", 0, 0));
    }
    if let Some(i) = starts.windows(2).position(|w| w[0] > w[1]) {
        return Err(place.bad(s, first + i + 1, "starts not ascending", 0, 0));
    }
    Ok(())
}

/// An IPv6 side of the loaded sections (`s` its first section, `at` its layout's place in
/// `meta`, `words` that layout), checking every index a lookup follows: the regions' roots
/// and the upper trie's nodes, the split /64s' roots in the low trie, the classes against the
/// VPC's `bound`, and each trie within the budget a build keeps to.
fn check_side6(
    place: &Place<'_>,
    (s, at): (usize, usize),
    words: &[u32],
    vpc_count: usize,
    bound: &[u64],
    value: &impl Fn(u32) -> Option<u64>,
    [nodes, roots, gaps, low]: [Vec<u32>; 4],
) -> Result<Side6, StateError> {
    let bad = |s: usize, i: usize, what: &'static str, value: u64, bound: u64| {
        place.bad(s, i, what, value, bound)
    };
    let [depth, shift, regions, low_depth, low_roots] =
        [words[0], words[1], words[2], words[3], words[4]];
    let mut bases = [0; REGIONS];
    for (base, pair) in bases.iter_mut().zip(words[5..].as_chunks::<2>().0) {
        *base = u64::from(pair[0]) | u64::from(pair[1]) << 32;
    }
    if !shift.is_multiple_of(8) || shift > 56 {
        return Err(bad(META, at + 1, "bits compared away", shift.into(), 56));
    }
    if !(1..=REGIONS as u32).contains(&regions) {
        return Err(bad(
            META,
            at + 2,
            "an IPv6 side's regions",
            regions.into(),
            REGIONS as u64,
        ));
    }
    let used = &bases[..regions as usize];
    if used.windows(2).any(|w| w[0] >= w[1]) || used.iter().any(|&b| b & !high_mask(shift) != 0) {
        return Err(bad(
            META,
            at + 5,
            "regions' bases not ascending or past their bytes",
            0,
            0,
        ));
    }
    for (sub, len) in [(NODES6, nodes.len()), (LOW6, low.len())] {
        if len > TRIE_CAP / 4 {
            return Err(bad(
                s + sub,
                0,
                "an IPv6 trie past its budget",
                len as u64 * 4,
                TRIE_CAP as u64,
            ));
        }
    }
    if roots.len() != vpc_count * REGIONS {
        return Err(bad(
            s + ROOTS6,
            0,
            "not a root a region a VPC",
            roots.len() as u64,
            (vpc_count * REGIONS) as u64,
        ));
    }
    if gaps.len() != vpc_count * GAPS {
        return Err(bad(
            s + GAPS6,
            0,
            "not a value a gap a VPC",
            gaps.len() as u64,
            (vpc_count * GAPS) as u64,
        ));
    }
    let count = (nodes.len() / FANOUT) as u64;
    if let Some(i) = roots.iter().position(|&r| u64::from(r) >= count) {
        return Err(bad(
            s + ROOTS6,
            i,
            "a root past the trie's nodes",
            roots[i].into(),
            count,
        ));
    }
    // The low trie first: a split leaf's need is its root's.
    let low_need = match (low_depth, low_roots, low.len()) {
        (0, 0, 0) => Vec::new(),
        (_, 0, _) => return Err(bad(META, at + 4, "a low trie of no roots", 0, 1)),
        (_, roots, nodes) if roots as usize > nodes / FANOUT => {
            let nodes = (nodes / FANOUT) as u64;
            return Err(bad(
                META,
                at + 4,
                "a low trie's roots past its nodes",
                roots.into(),
                nodes,
            ));
        }
        _ => {
            let all: Vec<u32> = (0..low_roots).collect();
            let need = check_trie(
                place,
                (s + LOW6, VALUE_REFUSED),
                (low_depth, MAX_DEPTH),
                &low,
                &all,
                value,
            )?;
            all.iter().map(|&r| need[r as usize]).collect()
        }
    };
    let leaf = |v: u32| {
        if v & FLAGS == SPLIT {
            low_need.get((v & !SPLIT) as usize).copied()
        } else {
            value(v)
        }
    };
    let need = check_trie(
        place,
        (s + NODES6, VALUE_REFUSED),
        (depth, MAX_DEPTH),
        &nodes,
        &roots,
        leaf,
    )?;
    for (v, (roots, gaps)) in roots.chunks(REGIONS).zip(gaps.chunks(GAPS)).enumerate() {
        let most = roots.iter().map(|&r| need[r as usize]).max().unwrap_or(0);
        if most > bound[v] {
            return Err(bad(
                s + ROOTS6,
                v * REGIONS,
                "a class past the VPC's classes",
                most.saturating_sub(1),
                bound[v],
            ));
        }
        for (g, &gap) in gaps.iter().enumerate() {
            match leaf(gap) {
                Some(need) if need <= bound[v] => {}
                _ => {
                    return Err(bad(
                        s + GAPS6,
                        v * GAPS + g,
                        "a gap's value past the VPC's classes or the maps",
                        gap.into(),
                        bound[v],
                    ));
                }
            }
        }
    }
    let trie = |depth: u32, nodes: Vec<u32>| Trie {
        depth,
        nodes: nodes.into(),
    };
    let low = (low_roots > 0).then(|| (trie(low_depth, low), low_roots));
    Ok(Side6::from_parts(
        (shift, regions, bases),
        trie(depth, nodes),
        roots.into(),
        gaps.into(),
        low,
    ))
}

/// Builds the table of the loaded sections, checking every index a lookup follows unless
/// they are `vouched` for.
fn assemble(p: Parts, starts: &[usize; COUNT], vouched: bool) -> Result<Table, StateError> {
    let place = Place { starts, vouched };
    let bad = |s: usize, i: usize, what: &'static str, value: u64, bound: u64| {
        place.bad(s, i, what, value, bound)
    };
    let vpc_count = p.vnis.len();
    let n = vpc_count as u64;
    let meta = &p.meta;

    // the catalog
    let mut vpcs = Vec::with_capacity(vpc_count);
    for (i, (name, vni)) in p.names.done.into_iter().zip(p.vnis).enumerate() {
        let at = i.checked_sub(1).map_or(0, |i| p.name_ends[i] as usize / 4);
        let name = String::from_utf8(name.into_vec())
            .map_err(|_| bad(NAMES, at, "a VPC name is not UTF-8", i as u64, n))?;
        vpcs.push(VpcEntry { name, vni });
    }
    let mut candidate_sets = Vec::with_capacity(p.sets.done.len());
    for (i, set) in p.sets.done.into_iter().enumerate() {
        if let Some(&VpcId(v)) = set.iter().find(|v| v.0 as usize >= vpc_count) {
            let at = i.checked_sub(1).map_or(0, |i| p.set_ends[i] as usize);
            return Err(bad(
                SET_MEMBERS,
                at,
                "a candidate past the VPCs",
                v.into(),
                n,
            ));
        }
        candidate_sets.push(set.into_vec());
    }
    let catalog = Catalog {
        vpcs,
        candidate_sets,
    };
    let decoder = WordDecoder::new(&catalog);

    // the matrices
    let mut rows = Vec::with_capacity(vpc_count);
    let mut at = 0usize;
    let cells = p.cells.len();
    for (v, &[src, dst]) in p.rows.iter().enumerate() {
        let end = (src as usize)
            .checked_mul(dst as usize)
            .and_then(|c| c.checked_add(at))
            .filter(|&end| end <= cells)
            .ok_or_else(|| bad(ROWS, v, "a matrix past the cells", src.into(), cells as u64))?;
        rows.push(Row {
            at,
            dst_classes: dst as usize,
        });
        at = end;
    }
    if at != cells {
        return Err(bad(
            ROWS,
            0,
            "the matrices do not fill the cells",
            at as u64,
            cells as u64,
        ));
    }
    if !vouched && let Some(i) = p.cells.iter().position(|c| decoder.verdict(c.0).is_none()) {
        return Err(bad(
            CELLS,
            i,
            "a verdict word the catalog does not know",
            p.cells[i].0.into(),
            0,
        ));
    }
    let bounds: [Vec<u64>; 2] = [0, 1].map(|k| p.rows.iter().map(|r| u64::from(r[k])).collect());

    // the VNI index
    let vpc_or_none = |v: u32| ((v as usize) < vpc_count || v == NO_VPC).then_some(0u64);
    let check_vpcs =
        |s: usize, vpcs: &[u32]| match vpcs.iter().position(|&v| vpc_or_none(v).is_none()) {
            Some(i) => Err(bad(s, i, "a VNI's VPC past the VPCs", vpcs[i].into(), n)),
            None => Ok(()),
        };
    let (vni_a, vni_b) = (p.vni_a, p.vni_b);
    let unused = |s: usize, len: usize| match len {
        0 => Ok(()),
        _ => Err(bad(
            s,
            0,
            "a section the layout does not use is not empty",
            len as u64,
            0,
        )),
    };
    let vnis = match meta[0] {
        VNI_DENSE => {
            unused(VNI_B, vni_b.len())?;
            if vni_a.is_empty() {
                return Err(bad(VNI_A, 0, "a dense VNI index is empty", 0, 1));
            }
            check_vpcs(VNI_A, &vni_a)?;
            VniIndex::Dense {
                first: meta[1],
                vpcs: vni_a.into(),
            }
        }
        VNI_TRIE => {
            unused(VNI_B, vni_b.len())?;
            check_trie(
                &place,
                (VNI_A, VALUE_REFUSED),
                (meta[1], 4),
                &vni_a,
                &[0],
                vpc_or_none,
            )?;
            VniIndex::Trie(Trie {
                depth: meta[1],
                nodes: vni_a.into(),
            })
        }
        VNI_SEARCHED => {
            if !vni_a.len().is_power_of_two() || vni_a.len() != vni_b.len() {
                return Err(bad(
                    VNI_B,
                    0,
                    "a searched VNI index's length",
                    vni_b.len() as u64,
                    vni_a.len() as u64,
                ));
            }
            check_vpcs(VNI_B, &vni_b)?;
            VniIndex::Searched {
                vnis: vni_a.into(),
                vpcs: vni_b.into(),
            }
        }
        kind => return Err(bad(META, 0, "a VNI index layout", kind.into(), 2)),
    };

    // the port maps
    let mut map_need = Vec::with_capacity(p.maps.len());
    for (i, map) in p.maps.iter().enumerate() {
        if map.starts[0] != 0 || map.starts.windows(2).any(|w| w[0] > w[1]) {
            return Err(bad(
                MAPS,
                i,
                "a port map's starts are not ascending from 0",
                0,
                0,
            ));
        }
        let most = map
            .classes
            .iter()
            .chain([&map.portless])
            .max()
            .copied()
            .unwrap_or(0);
        map_need.push(u64::from(most) + 1);
    }
    let mut long = Vec::with_capacity(p.long_portless.len());
    let mut long_need = Vec::with_capacity(p.long_portless.len());
    let long_runs = p.long_starts.done.into_iter().zip(p.long_classes.done);
    for (i, (portless, (starts, classes))) in p.long_portless.into_iter().zip(long_runs).enumerate()
    {
        let first = i.checked_sub(1).map_or(0, |i| p.long_ends[i] as usize);
        check_starts(&place, LONG_STARTS, first, &starts)?;
        let most = classes
            .iter()
            .chain([&portless])
            .max()
            .copied()
            .unwrap_or(0);
        long_need.push(u64::from(most) + 1);
        long.push(LongMap {
            portless,
            starts,
            classes,
        });
    }
    let value = |v: u32| value_need(v, &map_need, &long_need);

    // the IPv4 sides
    let [src_parts, dst_parts] = p.sides;
    let mut sides = Vec::with_capacity(2);
    for (k, side) in [src_parts, dst_parts].into_iter().enumerate() {
        let s = SIDE + 5 * k;
        let bound = &bounds[k];
        let over = |i: usize, need: u64, v: usize| {
            bad(
                s,
                i,
                "a class past the VPC's classes",
                need.saturating_sub(1),
                bound[v],
            )
        };
        // A trie side, plain or narrow: no big tables, every VPC's root its own, each root's
        // need within its VPC's classes.
        let big = [
            side.big_ends.len(),
            side.big_starts.done.iter().map(|r| r.len()).sum(),
            side.big_values.done.iter().map(|r| r.len()).sum(),
        ];
        let no_big = || {
            [BIG_ENDS, BIG_STARTS, BIG_VALUES]
                .into_iter()
                .zip(big)
                .try_for_each(|(sub, len)| unused(s + sub, len))
        };
        let roots = || -> Vec<u32> { (0..vpc_count.max(1) as u32).collect() };
        let within = |need: Vec<u64>| match need
            .iter()
            .zip(bound)
            .position(|(need, bound)| need > bound)
        {
            Some(v) => Err(over(v * FANOUT, need[v], v)),
            None => Ok(()),
        };
        let built = match meta[2 + 2 * k] {
            SIDE_TRIE => {
                unused(s + VALUES, side.values.len())?;
                no_big()?;
                let depth = meta[3 + 2 * k];
                let need = check_trie(
                    &place,
                    (s + KEYS, VALUE_REFUSED),
                    (depth, 4),
                    &side.keys,
                    &roots(),
                    value,
                )?;
                within(need)?;
                Side4::Trie(Trie {
                    depth,
                    nodes: side.keys.into(),
                })
            }
            SIDE_NARROW => {
                no_big()?;
                let depth = meta[3 + 2 * k];
                if !(2..=4).contains(&depth) {
                    return Err(bad(
                        META,
                        3 + 2 * k,
                        "a narrow trie's depth",
                        depth.into(),
                        4,
                    ));
                }
                let last = side.values;
                // The levels above the last checked as a trie whose values name narrow
                // nodes: each named node aligned and within the narrow nodes, its need read
                // from every aligned node's, worked out once (none when vouched for).
                let needs = match place.vouched {
                    true => Vec::new(),
                    false => block_needs(&last, value).map_err(|_| StateError::Memory {
                        section: SECTIONS[s + VALUES],
                        elements: 2 * last.len(),
                    })?,
                };
                let named = |entry: u32| {
                    let range = narrow_range(entry).filter(|r| r.end <= last.len())?;
                    let k = (entry & 15) as usize;
                    let need = *needs.get(k)?.get(range.start / range.len())?;
                    match need {
                        NAMES_NOTHING => None,
                        NEEDS_MORE => Some(u64::MAX),
                        need => Some(u64::from(need)),
                    }
                };
                let levels = (depth - 1, 3);
                let what = "a narrow node named off its alignment, past the narrow nodes, or \
                    holding a value past its bounds";
                let need = check_trie(
                    &place,
                    (s + KEYS, what),
                    levels,
                    &side.keys,
                    &roots(),
                    named,
                )?;
                within(need)?;
                Side4::Narrow(Narrow {
                    depth,
                    nodes: side.keys.into(),
                    last: last.into(),
                })
            }
            SIDE_PADDED => {
                let log2 = meta[3 + 2 * k];
                if log2 > MAX_FLAT.trailing_zeros() {
                    return Err(bad(
                        META,
                        3 + 2 * k,
                        "a padded side's log2",
                        log2.into(),
                        MAX_FLAT.trailing_zeros().into(),
                    ));
                }
                let len = vpc_count
                    .checked_shl(log2)
                    .filter(|l| l >> log2 == vpc_count);
                if len.is_none_or(|len| side.keys.len() != len || side.values.len() != len) {
                    return Err(bad(
                        s + VALUES,
                        0,
                        "a padded side's length",
                        side.values.len() as u64,
                        len.map_or(u64::MAX, |len| len as u64),
                    ));
                }
                let mut big = Vec::with_capacity(side.big_ends.len());
                let mut big_need = Vec::with_capacity(side.big_ends.len());
                let runs = side.big_starts.done.into_iter().zip(side.big_values.done);
                for (i, (starts, values)) in runs.enumerate() {
                    let first = i.checked_sub(1).map_or(0, |i| side.big_ends[i] as usize);
                    check_starts(&place, s + BIG_STARTS, first, &starts)?;
                    let mut most = 0;
                    for (j, &v) in to_check(vouched, &values).iter().enumerate() {
                        most = most.max(value(v).ok_or_else(|| {
                            bad(
                                s + BIG_VALUES,
                                first + j,
                                "a value names a port map past the maps",
                                v.into(),
                                0,
                            )
                        })?);
                    }
                    big_need.push(most);
                    big.push(BigTable { starts, values });
                }
                for (i, &v) in to_check(vouched, &side.values).iter().enumerate() {
                    let need = if v & FLAGS == BIG {
                        big_need.get((v & !BIG) as usize).copied()
                    } else {
                        value(v)
                    };
                    let vpc = i >> log2;
                    match need {
                        None => {
                            return Err(bad(
                                s + VALUES,
                                i,
                                "a value names a map or big table past them",
                                v.into(),
                                0,
                            ));
                        }
                        Some(need) if need > bound[vpc] => return Err(over(i, need, vpc)),
                        Some(_) => {}
                    }
                }
                Side4::Padded(Padded {
                    log2,
                    keys: side.keys.into(),
                    values: side.values.into(),
                    big: big.into(),
                })
            }
            kind => {
                return Err(bad(
                    META,
                    2 + 2 * k,
                    "an IPv4 side's layout",
                    kind.into(),
                    1,
                ));
            }
        };
        sides.push(built);
    }
    let (Some(dst4), Some(src4)) = (sides.pop(), sides.pop()) else {
        return Err(bad(META, 2, "an IPv4 side is missing", 0, 2));
    };

    // IPv6
    let mut per_vpc = Vec::with_capacity(vpc_count);
    let mut tables = p
        .v6_starts
        .done
        .into_iter()
        .zip(p.v6_segs.done)
        .zip(
            p.v6_port_starts
                .done
                .into_iter()
                .zip(p.v6_port_classes.done),
        )
        .enumerate()
        .map(|(t, ((starts, segs), (port_starts, port_classes)))| {
            let first = t.checked_sub(1).map_or(0, |t| p.v6_seg_ends[t] as usize);
            let first_port = t.checked_sub(1).map_or(0, |t| p.v6_port_ends[t] as usize);
            check_starts(&place, V6_STARTS, first, &starts)?;
            let bound = bounds[t % 2][t / 2];
            for (i, seg) in to_check(vouched, &segs).iter().enumerate() {
                let end = u64::from(seg.ports_at) + u64::from(seg.ports_len);
                if end > port_starts.len() as u64 {
                    return Err(bad(
                        V6_SEGS,
                        first + i,
                        "a segment's port ranges past its table's",
                        end,
                        port_starts.len() as u64,
                    ));
                }
                if u64::from(seg.portless) >= bound {
                    return Err(bad(
                        V6_SEGS,
                        first + i,
                        "a class past the VPC's classes",
                        seg.portless.into(),
                        bound,
                    ));
                }
            }
            if !vouched && let Some(i) = port_classes.iter().position(|&c| u64::from(c) >= bound) {
                return Err(bad(
                    V6_PORT_CLASSES,
                    first_port + i,
                    "a class past the VPC's classes",
                    port_classes[i].into(),
                    bound,
                ));
            }
            Ok(SegTable {
                starts,
                segs,
                port_starts,
                port_classes,
            })
        });
    for _ in 0..vpc_count {
        let (Some(src6), Some(dst6)) = (tables.next(), tables.next()) else {
            return Err(bad(V6_SEG_ENDS, 0, "an IPv6 table is missing", 0, 0));
        };
        per_vpc.push(VpcTable {
            src6: src6?,
            dst6: dst6?,
        });
    }

    // the IPv6 sides
    let six = match meta[META6] {
        SIX_NONE => {
            for (k, sections) in p.six.iter().enumerate() {
                for (i, section) in sections.iter().enumerate() {
                    unused(SIDE6 + 4 * k + i, section.len())?;
                }
            }
            None
        }
        SIX_TRIES => {
            let mut sides = Vec::with_capacity(2);
            for (k, [nodes, roots, gaps, low]) in p.six.into_iter().enumerate() {
                let s = SIDE6 + 4 * k;
                let at = META6 + 1 + SIDE6_WORDS * k;
                let side = check_side6(
                    &place,
                    (s, at),
                    &meta[at..at + SIDE6_WORDS],
                    vpc_count,
                    &bounds[k],
                    &value,
                    [nodes, roots, gaps, low],
                )?;
                sides.push(side);
            }
            let (Some(dst), Some(src)) = (sides.pop(), sides.pop()) else {
                return Err(bad(META, META6, "an IPv6 side is missing", 0, 2));
            };
            Some(Sides6 { src, dst })
        }
        kind => return Err(bad(META, META6, "the IPv6 sides' layout", kind.into(), 1)),
    };

    // the stats
    let stat = |i: usize| {
        let (lo, hi) = (meta[STATS_AT + 2 * i], meta[STATS_AT + 1 + 2 * i]);
        usize::try_from(u64::from(lo) | u64::from(hi) << 32).map_err(|_| {
            bad(
                META,
                STATS_AT + 2 * i,
                "a size past this machine's",
                u64::from(hi) << 32,
                usize::MAX as u64,
            )
        })
    };
    let stats = TableStats {
        segments: stat(0)?,
        port_ranges: stat(1)?,
        source_classes: stat(2)?,
        destination_classes: stat(3)?,
        matrix_cells: stat(4)?,
        candidate_sets: stat(5)?,
        ipv4_bytes: stat(6)?,
        ipv6_bytes: stat(7)?,
    };

    Ok(Table {
        catalog,
        decoder,
        vnis,
        src4,
        dst4,
        six,
        ports: PortMaps { maps: p.maps, long },
        per_vpc,
        matrices: Matrices {
            rows: rows.into(),
            cells: p.cells.into(),
        },
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every aligned node's need, read from [`block_needs`], is its values' largest, or
    /// names nothing when one of them does, for every `k` and length of the narrow nodes.
    #[test]
    fn block_needs_are_each_aligned_nodes_largest_need() {
        let value = |v: u32| (!v.is_multiple_of(97)).then_some(u64::from(v % 1_000) + 1);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in [0, 1, 2, 255, 256, 257, 511, 512, 1_000, 2_048] {
            let last: Vec<u32> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Mostly values that name something, so that whole nodes do too.
                    (seed % 5_000) as u32 * 97 + u32::from(!seed.is_multiple_of(40))
                })
                .collect();
            let needs = block_needs(&last, value).unwrap();
            assert_eq!(needs.len(), 9);
            for (k, needs) in needs.iter().enumerate() {
                let size = FANOUT >> k;
                assert_eq!(needs.len(), len / size, "k {k}, {len} entries");
                for (j, &got) in needs.iter().enumerate() {
                    let node = &last[j * size..(j + 1) * size];
                    let want = node
                        .iter()
                        .try_fold(0, |most, &v| Some(value(v)?.max(most)))
                        .map_or(NAMES_NOTHING, |n| n as u32);
                    assert_eq!(got, want, "k {k}, node {j} of {len} entries");
                }
            }
        }
    }
}
