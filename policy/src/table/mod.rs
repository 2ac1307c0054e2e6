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
//! is the VPC of the VNI, one search per side, at most one port map per side, and one matrix
//! read. Nothing is allocated per packet, and the cost never grows with the number of
//! peerings.
//!
//! # Layout
//! - **VNIs**: a dense array when their numbering is dense (one load), else a trie, else a
//!   padded search (`flat::VniIndex`).
//! - **IPv4 sides**: every VPC's source and destination segments as multibit tries (`trie`):
//!   a key byte a level, one load a level and no compare, a root per VPC and uniform nodes
//!   shared. Where it saves a quarter of the trie's memory, the last level is *narrow*: a
//!   node whose entries come in aligned runs of `2^k` keeps `256 >> k` of them, identical
//!   nodes once (`trie::Narrow`; a `not` hole in a /24 makes a trie four levels deep, every
//!   /24 then pointing at a last-level node, mostly uniform). A trie is built only within a
//!   memory budget (`flat::trie_budget`); past it a
//!   side keeps padded segment tables searched by compare (`flat`), every VPC's padded to
//!   one power-of-two length, so that a table's address is arithmetic and every search takes
//!   the same steps. A property test holds both layouts to the same answers.
//! - **Ports**: a segment's value is its class or, flagged, a port map. A short map, its
//!   range starts and their classes, fills one cache line and is searched without a branch
//!   (in a Wasm guest, by one vector compare of the starts); longer maps are searched on
//!   their own.
//! - **Matrices**: every VPC's in one array, their cells the packed verdict words of
//!   `judge-packed`, which the packed path copies out as they are; a per-catalog table
//!   ([`WordDecoder`]) turns a word into a [`Verdict`] with no
//!   branch on its kind.
//! - **IPv6 sides** (`six`): the same tries over the upper 64 bits of the address, where
//!   /64 and shorter prefixes put every boundary. The leading bytes the boundaries share are
//!   compared away: a side keeps up to four *regions* (a site's /48, a service /48), a lane
//!   finds its region by four compares and reads only the bytes after it (two levels for
//!   /64s under /48s), from its VPC's root for the region; between regions a VPC's value is
//!   kept beside its roots. A /64 with a boundary inside it (a hole, a host route) is a
//!   split leaf, whose lanes read a second trie over the lower 64 bits. Past their budget
//!   the sides are not built and IPv6 packets take the per-VPC segment tables' binary
//!   searches one at a time; the table keeps those tables whole in any case.
//!
//! # Stages
//! A batch ([`Table::lookup_batch`], and the packed path's
//! [`judge_packed`](crate::packed::judge_packed)) is looked up `LANES` packets at a time:
//! the packets' fields go into lanes, then every lane's VPC, every trie level of every lane,
//! the port maps of only the values that name one, and every lane's verdict. A chunk all of
//! one family fills that family's lanes as it is; in a chunk of both, the packets of each
//! family (found first as a bit mask, so that no branch is taken a packet) join their
//! family's lanes, which are looked up whenever they fill and at the batch's end (only the
//! turns of lanes filled), their verdicts written back by index. A packet whose two
//! addresses are of different families joins lanes of their own, whose sides are looked up
//! in both families' tries, the address's family choosing the value. Within a stage the
//! lanes' loads are independent, so their cache misses overlap, where one packet at a time
//! is a chain of dependent loads. Natively the next lanes' packets are prefetched
//! (`prefetch`).
//!
//! # Why this structure
//! - **Precomputed classes and verdicts**, not SPEC section 3's sets evaluated per packet
//!   (the property tests' oracle, orders of magnitude slower).
//! - **Segments, not prefixes**: an exposed set is not a union of prefixes once `not` holes
//!   and port ranges carve it; disjoint segments handle holes, ports and overlaps alike, and
//!   the verdict needs the pair of classes, which a DIR-24-8 table (far more memory per VPC
//!   and side) or a Poptrie would still have to find. The build stays fast, and so do swaps.
//! - **Searches with no data-dependent branch** (`select_unpredictable`), since mixed traffic
//!   mispredicts any branch on a key.
//! - **Stages in lockstep**: every lane takes a step before any lane takes the next, so the
//!   CPU keeps many loads in flight; `LANES` is the width that measured best overall.
//! - **Tries** where memory allows, since a level is one load with no compare; padded tables
//!   remain for configurations a trie would make too large for a guest's memory. A narrow
//!   last level costs a shift and an add, and keeps the lookups' working set small enough
//!   for the caches when random hosts would touch every line of 1 KiB last-level nodes.
//! - **IPv6 on the upper halves, common bytes compared away**: a trie over the upper eight
//!   bytes would be eight loads; with the regions' bytes compared away a dual-stack
//!   gateway's IPv6 sides take two levels and one of the lower half, where per-VPC binary
//!   searches took about seven dependent compares of `u128`s a side, a packet at a time.
//! - **Families gathered into their own lanes**, not both families' stages run on every
//!   lane: the stages of a family are as many as its packets need.
//! - **Verdict words decoded through a table**, not a `match` on the kind that mixed traffic
//!   mispredicts, and the matrices in one array.
//! - **Port maps resolved only where a value names one**, since most values name none.
//! - **Turns of several lanes** in the trie levels: each level's loop is cut into turns of
//!   `flat::TURN` lanes, each unrolled whole, so a Wasm guest pays a loop turn and its epoch
//!   check once per turn.
//! - **The guest's side**: the batch arrives as columns of words that fill the lanes with one
//!   load a field; the lanes and the stages' answers live in statics, whose addresses
//!   Cranelift folds into every access; `simd128` searches a port map, finds the ported
//!   values a vector at a time, and swaps the bytes of an IPv6 address's halves (listed in
//!   network order) with one shuffle.
//!
//! Rejected after measuring: wide search nodes; a vectorized count for the port search;
//! matrix cells as narrow indices into the distinct words; each source value carrying its
//! matrix row; a sentinel VPC for unknown VNIs; 16-bit trie leaves; batches grouped by VPC; a
//! raised LLVM unroll threshold; prefetching in the host's column encoder.
//!
//! `BENCHMARKS.md`, under "Design decisions, and the measurements behind them", has the
//! measurement behind each of these choices and where the time goes now.

mod build;
mod flat;
pub(crate) mod lookup;
mod six;
pub mod state;
mod trie;

pub use crate::catalog::{Catalog, VpcEntry};
pub use state::{MAX_STATE_WORDS, StateError, StateLoader};

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
    /// Every VPC's IPv4 source and destination segments.
    src4: flat::Side4,
    dst4: flat::Side4,
    /// Every VPC's IPv6 source and destination segments over the addresses' upper halves,
    /// when they fit their budget.
    six: Option<Sides6>,
    /// The port maps of the IPv4 and IPv6 sides' values.
    ports: flat::PortMaps,
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

/// The IPv6 sides of every VPC.
#[derive(Debug, Clone)]
struct Sides6 {
    src: six::Side6,
    dst: six::Side6,
}

#[derive(Debug, Clone)]
struct VpcTable {
    /// IPv6 source and destination segment tables, whole: what a [`six::SPLIT`] leaf of
    /// [`Table::six`], or a table without it, searches.
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
    /// Bytes of the IPv6 lookup structures (tries over the upper halves, their port maps,
    /// and the per-VPC segment tables).
    pub ipv6_bytes: usize,
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
