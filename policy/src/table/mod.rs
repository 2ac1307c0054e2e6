//! The lookup table: built once from a validated [`Config`](crate::Config), then read per packet.
//!
//! # How a lookup works
//! For each source VPC X the table holds two *segment tables* per address family:
//! - the **source table** cuts the address space into segments where the set of peers Y whose
//!   peering offers the address as a source of X, S(P, X), does not change, and within a segment,
//!   the port ranges where it does not change. Each distinct set of peers is a *source class*.
//! - the **destination table** does the same for D(P, Y) over all of X's peers Y, including the
//!   fallback of a `default: true` block: *destination classes*.
//!
//! Because two peerings between the same two VPCs are refused, a peering of X is named by its
//! remote VPC, and a class is a set of VPCs. The packet's verdict depends only on the pair
//! (source class, destination class): the intersection of the two sets is M of SPEC section 3.
//! The table precomputes that verdict for every pair of X's classes into a matrix, so a lookup
//! is the VPC of the VNI, one search per side, at most two more over a handful of ports, and
//! one matrix read. Nothing is allocated per packet, and the cost never grows with the number
//! of peerings.
//!
//! # Layout
//! - **VNIs**: a dense array when their numbering is dense (one load), else a trie, else a
//!   padded search (`flat::VniIndex`).
//! - **IPv4 sides**: every VPC's source and destination segments as multibit tries (`trie`):
//!   a key byte a level, so a side is three loads for /24 and shorter prefixes, four
//!   otherwise, and no compare. A trie is only built within a memory budget (32 times the
//!   segment tables' bytes, at least 4 MiB, at most 32 MiB); past it a side is padded
//!   segment tables searched by compare (`flat`), every VPC's padded to one power-of-two
//!   length so that its address is computed and every search takes the same steps.
//! - **Ports**: a segment's value is its class, or (flagged) a port map: up to 8 ranges in
//!   one cache line, searched by one compare of the eight starts (longer maps on their own).
//! - **Matrices**: every VPC's in one array, their cells the packed verdict words of
//!   `judge-packed`, which the packed path copies out as they are; a per-catalog table
//!   (`WordDecoder`) turns a word into a [`Verdict`] with no branch on its kind.
//! - **IPv6**, the cold family: per-VPC segment tables and branch-free binary searches.
//!
//! A batch ([`Table::lookup_batch`], and the packed path's
//! [`judge_packed`](crate::packed::judge_packed)) is looked up 32 packets (`LANES`) at a
//! time, in stages and in lockstep: the packets' IPv4 fields in lanes, then every lane's VPC,
//! every trie level of every lane (eight lanes a turn, so a Wasm guest pays a loop turn's
//! epoch check once per eight), the port maps of only the values that name one, and every
//! lane's verdict. Within a stage the lanes' loads are independent, so their cache misses
//! overlap. Natively the next lanes' packets are prefetched (`prefetch`); a Wasm guest keeps
//! its lanes in statics, whose addresses Cranelift folds into every access, and builds the
//! ported mask with `simd128`.
//!
//! # Why this structure
//! Each choice was measured (`cargo bench -p flowgate-benches --bench policy`: the realistic
//! workload, 1,000 peerings with ports, batch 256, every batch new packets; native / Wasm
//! per packet):
//! - **Precomputed classes and verdicts**, not SPEC section 3's sets evaluated per packet
//!   (the property tests' oracle): about 1.7 µs a packet against tens of nanoseconds.
//! - **Segments, not prefixes**: an exposed set is not a union of prefixes once `not` holes
//!   and port ranges carve it; disjoint segments handle holes, ports and overlaps alike. A
//!   DIR-24-8 table would need tens of megabytes per VPC and side.
//! - **Searches with no data-dependent branch** (`select_unpredictable`): 99 -> 68 ns native.
//! - **Stages over 32 lanes** (every lane's VPC, then every lane's classes...): 68 -> 59 ns
//!   native; **searched in lockstep**, every lane's step before any lane's next: 47 -> 35 ns.
//!   16 lanes were 10 % slower at 5,000 peerings; 64 were 1-3 % slower, except natively at
//!   5,000 peerings (5 % faster).
//! - **Tries** in place of the padded searches: 37 / 76 -> 29.8 / 59.8 ns; the table grew
//!   from about 0.4 to 1.3 MB at 1,000 peerings (5.4 MB at 5,000), and a lookup still
//!   touches few lines.
//! - **Verdict words decoded through a table**, not a `match` on the kind that mixed
//!   traffic mispredicts, and the matrices in one array: 29.8 / 59.8 -> 27.1 / 54.1 ns.
//! - **Port maps in one cache line, resolved only where a value names one** (about two
//!   values in five): native 21.7 -> 19.4 ns, Wasm 31.0 -> 29.6 ns.
//! - **The guest's side**: working arrays in statics and the ports read without a branch
//!   (Wasm 43 -> 35 ns), the batch as columns of words (40.9 -> 35.3 ns), `simd128` and trie
//!   levels eight lanes a turn (30.4 -> 24.6 ns, 1.18x native).
//! - **Prefetching the next lanes' packets**, natively: 7-16 % less.
//!
//! Measured and rejected: wide search nodes of 15 keys a line (the scalar count was slower
//! than the binary search, 73 against 68 ns); the port search as a vectorized count; matrix
//! cells as 16-bit or 8-bit indices into the distinct words (no gain, or 3-9 % slower for
//! the extra dependent load); each source value carrying its matrix row (Wasm 2.6 % faster
//! at 1,000 peerings, 5 % slower at 5,000); a sentinel VPC for unknown VNIs (no change, and
//! an invariant every user of the sides would keep); 16-bit trie leaves; batches grouped by
//! VPC (at most what the sort would cost); raising LLVM's unroll threshold (9 % slower, the
//! component 25 % larger); prefetching in the host's column encoder (no gain).
//!
//! `BENCHMARKS.md` (its design decisions) has every measurement, how it was taken, and
//! where the time goes now.

mod build;
mod flat;
pub(crate) mod lookup;
mod trie;

pub use crate::catalog::{Catalog, VpcEntry};

use crate::packet::Verdict;
use crate::word::{WordDecoder, verdict_word};

/// Most verdict cells a table may have, over all VPCs (4 bytes each: 256 MiB). A VPC's matrix
/// is its source classes times its destination classes, which a configuration within the
/// text limits can make quadratic in its entries.
pub const MAX_MATRIX_CELLS: usize = 1 << 26;
/// Most VPC indices the class sets of a table may hold in all (4 bytes each): a set per
/// class, which overlapping prefixes can make as large as the VPC's peers.
pub const MAX_CLASS_MEMBERS: usize = 1 << 26;
/// Most steps of work a build may take (a step: an active range looked at while cutting
/// segments, a port bound looked at while cutting port maps, a member looked at while
/// intersecting two classes), about a second natively. Overlapping ranges make the cutting
/// quadratic.
pub const MAX_BUILD_STEPS: usize = 1 << 30;

/// The flow filter's lookup table. Immutable once built; cheap to share between threads.
#[derive(Debug, Clone)]
pub struct Table {
    catalog: Catalog,
    /// The verdicts of the matrices' words.
    decoder: WordDecoder,
    /// The VPC of each VNI.
    vnis: flat::VniIndex,
    /// Every VPC's IPv4 source and destination segments, and their port maps.
    src4: flat::Side4,
    dst4: flat::Side4,
    ports4: flat::PortMaps4,
    per_vpc: Vec<VpcTable>,
    matrices: Matrices,
    stats: TableStats,
}

/// A packet's two addresses as lookup keys: IPv4 as `u32`, IPv6 as `u128`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Keys {
    V4(u32, u32),
    V6(u128, u128),
}

#[derive(Debug, Clone)]
struct VpcTable {
    /// IPv6 source and destination segment tables (IPv4's are in [`Table::src4`] and
    /// [`Table::dst4`]).
    src6: SegTable<u128>,
    dst6: SegTable<u128>,
}

/// Every VPC's verdict matrix, in one array: the verdict for (source class, destination
/// class) of VPC `v` is at `rows[v].at + src * rows[v].dst_classes + dst`, as a [`Cell`].
#[derive(Debug, Clone)]
struct Matrices {
    rows: Box<[Row]>,
    cells: Box<[Cell]>,
}

/// Where a VPC's matrix starts, and its row length (its number of destination classes).
#[derive(Debug, Clone, Copy)]
struct Row {
    at: usize,
    dst_classes: usize,
}

impl Matrices {
    /// The verdict of a VPC's class pair as a packed word, or `None` for no VPC.
    #[inline]
    fn word(&self, vpc: u32, src_class: u32, dst_class: u32) -> Option<u32> {
        let row = self.rows.get(vpc as usize)?;
        let at = row.at + src_class as usize * row.dst_classes + dst_class as usize;
        Some(self.cells[at].0)
    }
}

/// Segments of one family's key space, each with a class for port-less packets and, where
/// ports matter, a port map.
#[derive(Debug, Clone)]
struct SegTable<K> {
    /// First key of each segment; `starts[0] == 0`.
    starts: Box<[K]>,
    segs: Box<[Seg]>,
    /// First port of each port range; each segment's slice starts with port 0.
    port_starts: Box<[u16]>,
    port_classes: Box<[u32]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seg {
    /// Class of packets without ports, and of every packet when `ports_len == 0`.
    portless: u32,
    ports_at: u32,
    ports_len: u32,
}

/// Sizes of a built table, for reports and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Address segments over all source and destination tables.
    pub segments: usize,
    /// Port ranges stored within segments.
    pub port_ranges: usize,
    /// Source classes over all VPCs.
    pub source_classes: usize,
    /// Destination classes over all VPCs.
    pub destination_classes: usize,
    /// Precomputed verdicts over all VPCs.
    pub matrix_cells: usize,
    /// Distinct sets of candidates of ambiguous verdicts.
    pub candidate_sets: usize,
    /// Bytes of the IPv4 lookup structures (tries or padded segment tables, and port maps).
    pub ipv4_bytes: usize,
}

impl Table {
    /// Sizes of the table.
    pub fn stats(&self) -> TableStats {
        self.stats
    }
}

/// A precomputed verdict in four bytes: the word of a `judge-packed` verdict record (see
/// [`packed`](crate::packed)), so that the packed path copies it out as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cell(u32);

impl Cell {
    fn new(verdict: Verdict) -> Cell {
        Cell(verdict_word(verdict))
    }
}
