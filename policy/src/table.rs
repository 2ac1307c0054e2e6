//! The lookup table: built once from a validated [`Config`], then read per packet.
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
//! is two binary searches, at most two more over a handful of ports, and one matrix read.
//! Nothing is allocated per packet, and the cost grows with the logarithm of the number of
//! segments, never with the number of peerings.
//!
//! # Why this structure
//! Chosen by measurement (`cargo bench -p flowgate-benches`, numbers in `BENCHMARKS.md`), at
//! 1,000 peerings (100 VPCs, 6,361 segments):
//! - **The straightforward way**, SPEC section 3's set definitions evaluated per packet (the
//!   property tests' oracle), costs about 1.7 µs a packet: every peering of the source VPC,
//!   every entry. Precomputing classes and verdicts takes that to tens of nanoseconds.
//! - **Interval tables, not tries or per-length hashes.** An exposed set is not a union of
//!   prefixes once `not` holes and port ranges carve it, and the verdict depends on the pair
//!   of sets the source and the destination fall in. Cutting the key space into disjoint
//!   segments handles holes, ports and overlaps alike, and keeps the tables small (about
//!   100 KB of keys at 1,000 peerings: they stay in L2). A DIR-24-8 style table would need
//!   tens of megabytes per VPC and direction; a Poptrie would still need the class pair.
//! - **Searches**: `partition_point` (a branch per step) gave 41 ns a packet; IPv4 keys as
//!   `u32` instead of `u128`, 40 ns; a search with no data-dependent branch, VNIs in their own
//!   dense array and 4-byte matrix cells, 26 ns; the source and destination searches in one
//!   loop (`last_at_or_below2`), so their independent loads overlap, took the Wasm path
//!   another 8 % (natively the CPU already overlapped them).
//! - **The packed path** reads lookup keys straight from the record (`Table::lookup_keys`)
//!   instead of building a [`Packet`] first.
//! - **Tried and not kept**: looking IPv4 packets up four at a time, their VNI searches in
//!   one loop and their eight segment searches in another, to overlap loads across packets.
//!   It took about 3 % off the Wasm path (70.5 against 72.3 ns a packet at batch 256) and
//!   nothing natively: in the guest the lanes' state lives in linear memory, so each step
//!   costs loads and stores of its own. Not worth a second lookup path.

use std::collections::BTreeMap;

use std::net::IpAddr;

use crate::addr::{Family, net_family, net_range};
use crate::model::{Config, Entry};
use crate::packet::{CandidatesId, DropReason, Packet, Ports, Verdict, VpcId};
use crate::ports::PortList;

/// A VPC as the table knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcInfo {
    /// Its name.
    pub name: String,
    /// Its VNI.
    pub vni: u32,
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
}

/// The names behind a table's verdicts: its VPCs and the candidate sets of ambiguous
/// verdicts. A host that runs the policy as a module rebuilds it from the module's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// The VPCs in name order: a [`VpcId`] indexes this list.
    pub vpcs: Vec<VpcInfo>,
    /// The candidates of each ambiguous verdict, in name order: a [`CandidatesId`] indexes
    /// this list.
    pub candidate_sets: Vec<Vec<VpcId>>,
}

impl Catalog {
    /// The VPC with this id.
    ///
    /// # Panics
    /// If the id is not of this catalog; see [`Catalog::knows`].
    pub fn vpc(&self, id: VpcId) -> &VpcInfo {
        &self.vpcs[id.0 as usize]
    }

    /// The VPC named `name`. (A linear search: a catalog a module hands over need not be
    /// sorted, and this is not on the packet path.)
    pub fn vpc_by_name(&self, name: &str) -> Option<VpcId> {
        self.vpcs
            .iter()
            .position(|v| v.name == name)
            .map(|i| VpcId(i as u32))
    }

    /// The candidates of an ambiguous verdict, in name order.
    ///
    /// # Panics
    /// If the id is not of this catalog; see [`Catalog::knows`].
    pub fn candidates(&self, id: CandidatesId) -> &[VpcId] {
        &self.candidate_sets[id.0 as usize]
    }

    /// Whether every index in `verdict` is of this catalog (a module's answer may not be).
    pub fn knows(&self, verdict: Verdict) -> bool {
        match verdict {
            Verdict::Allow(vpc) => (vpc.0 as usize) < self.vpcs.len(),
            Verdict::AllowAmbiguous(set) => (set.0 as usize) < self.candidate_sets.len(),
            Verdict::Drop(_) => true,
        }
    }

    /// The verdict in the notation of the spec: `allow(vpc-2)`, `allow-ambiguous([vpc-a, vpc-c])`,
    /// `drop(source-not-exposed)`.
    pub fn verdict_text(&self, verdict: Verdict) -> String {
        match verdict {
            Verdict::Allow(vpc) => format!("allow({})", self.vpc(vpc).name),
            Verdict::AllowAmbiguous(set) => {
                format!(
                    "allow-ambiguous([{}])",
                    self.candidate_names(set).join(", ")
                )
            }
            Verdict::Drop(reason) => format!("drop({reason})"),
        }
    }

    /// The names of an ambiguous verdict's candidates, in name order.
    pub fn candidate_names(&self, id: CandidatesId) -> Vec<&str> {
        self.candidates(id)
            .iter()
            .map(|&v| self.vpc(v).name.as_str())
            .collect()
    }
}

/// The flow filter's lookup table. Immutable once built; cheap to share between threads.
#[derive(Debug, Clone)]
pub struct Table {
    catalog: Catalog,
    /// VNIs in ascending order, and the VPC of each.
    vnis: Box<[u32]>,
    vni_vpcs: Box<[VpcId]>,
    per_vpc: Vec<VpcTable>,
}

/// A packet's two addresses as lookup keys: IPv4 as `u32`, IPv6 as `u128`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Keys {
    V4(u32, u32),
    V6(u128, u128),
}

#[derive(Debug, Clone)]
struct VpcTable {
    /// Source segment tables: IPv4 keyed by `u32`, IPv6 by `u128`.
    src4: SegTable<u32>,
    src6: SegTable<u128>,
    /// Destination segment tables.
    dst4: SegTable<u32>,
    dst6: SegTable<u128>,
    /// Number of destination classes: the matrix row length.
    dst_classes: usize,
    /// Verdict for (source class, destination class) at `src * dst_classes + dst`, as a
    /// [`Cell`].
    matrix: Box<[Cell]>,
}

impl VpcTable {
    #[inline]
    fn verdict(&self, src_class: u32, dst_class: u32) -> Verdict {
        self.matrix[src_class as usize * self.dst_classes + dst_class as usize].verdict()
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

impl<K: Copy + Ord> SegTable<K> {
    /// Segments and port ranges.
    fn sizes(&self) -> (usize, usize) {
        (self.segs.len(), self.port_starts.len())
    }

    #[inline]
    fn class(&self, key: K, port: Option<u16>) -> u32 {
        self.port_class(self.segs[last_at_or_below(&self.starts, key)], port)
    }

    /// The class of a port in a segment.
    #[inline]
    fn port_class(&self, seg: Seg, port: Option<u16>) -> u32 {
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
        base_a = if a[base_a + half_a] <= key_a {
            base_a + half_a
        } else {
            base_a
        };
        base_b = if b[base_b + half_b] <= key_b {
            base_b + half_b
        } else {
            base_b
        };
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
        base = if sorted[base + half] <= key {
            base + half
        } else {
            base
        };
        len -= half;
    }
    base
}

impl SegTable<u128> {
    /// The same table keyed by `u32`: for IPv4, whose keys all fit.
    fn narrow(self) -> SegTable<u32> {
        SegTable {
            starts: self.starts.iter().map(|&k| k as u32).collect(),
            segs: self.segs,
            port_starts: self.port_starts,
            port_classes: self.port_classes,
        }
    }
}

impl Table {
    /// Builds the table of a validated configuration.
    pub fn build(config: &Config) -> Table {
        let vpcs: Vec<VpcInfo> = config
            .vpcs
            .iter()
            .map(|v| VpcInfo {
                name: v.name.clone(),
                vni: v.vni,
            })
            .collect();
        let mut by_vni: Vec<(u32, VpcId)> = vpcs
            .iter()
            .enumerate()
            .map(|(i, v)| (v.vni, VpcId(i as u32)))
            .collect();
        by_vni.sort_unstable();
        let mut candidates = Interner::default();
        let per_vpc = (0..vpcs.len())
            .map(|i| build_vpc(config, VpcId(i as u32), &mut candidates))
            .collect();
        let candidate_sets = candidates
            .sets
            .into_iter()
            .map(|set| set.into_iter().map(VpcId).collect())
            .collect();
        Table {
            catalog: Catalog {
                vpcs,
                candidate_sets,
            },
            vnis: by_vni.iter().map(|&(vni, _)| vni).collect(),
            vni_vpcs: by_vni.iter().map(|&(_, vpc)| vpc).collect(),
            per_vpc,
        }
    }

    /// The verdict for one packet.
    #[inline]
    pub fn lookup(&self, packet: &Packet) -> Verdict {
        let keys = match (packet.src, packet.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Keys::V4(s.into(), d.into()),
            (IpAddr::V6(s), IpAddr::V6(d)) => Keys::V6(s.into(), d.into()),
            _ => return self.lookup_mixed(packet),
        };
        self.lookup_keys(packet.src_vni, keys, packet.ports)
    }

    /// The verdict for a packet given as lookup keys: [`Table::lookup`] without building a
    /// [`Packet`] (the packed path reads the keys straight from the record).
    #[inline]
    pub(crate) fn lookup_keys(&self, vni: u32, keys: Keys, ports: Option<Ports>) -> Verdict {
        let Some(vpc) = self.vpc_by_vni(vni) else {
            return Verdict::Drop(DropReason::UnknownVpc);
        };
        let t = &self.per_vpc[vpc.0 as usize];
        let (s, d) = match keys {
            Keys::V4(s, d) => class_pair(&t.src4, s, &t.dst4, d, ports),
            Keys::V6(s, d) => class_pair(&t.src6, s, &t.dst6, d, ports),
        };
        t.verdict(s, d)
    }

    /// A packet whose source and destination are of different families: no real IP packet,
    /// but a [`Packet`] can say it, and the sets of the spec still give it a verdict.
    #[cold]
    fn lookup_mixed(&self, packet: &Packet) -> Verdict {
        let Some(vpc) = self.vpc_by_vni(packet.src_vni) else {
            return Verdict::Drop(DropReason::UnknownVpc);
        };
        let t = &self.per_vpc[vpc.0 as usize];
        let (src_port, dst_port) = (packet.ports.map(|p| p.src), packet.ports.map(|p| p.dst));
        let s = match packet.src {
            IpAddr::V4(a) => t.src4.class(a.into(), src_port),
            IpAddr::V6(a) => t.src6.class(a.into(), src_port),
        };
        let d = match packet.dst {
            IpAddr::V4(a) => t.dst4.class(a.into(), dst_port),
            IpAddr::V6(a) => t.dst6.class(a.into(), dst_port),
        };
        t.verdict(s, d)
    }

    /// The verdicts for a batch: `out[i]` is `lookup(&packets[i])`.
    ///
    /// # Panics
    /// If `out` is not exactly as long as `packets` (a caller's bug, not an input error).
    pub fn lookup_batch(&self, packets: &[Packet], out: &mut [Verdict]) {
        assert_eq!(packets.len(), out.len(), "one verdict slot per packet");
        for (packet, verdict) in packets.iter().zip(out.iter_mut()) {
            *verdict = self.lookup(packet);
        }
    }

    /// The names behind the verdicts.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The VPCs, in name order: a [`VpcId`] indexes this slice.
    pub fn vpcs(&self) -> &[VpcInfo] {
        &self.catalog.vpcs
    }

    /// The VPC with this id.
    pub fn vpc(&self, id: VpcId) -> &VpcInfo {
        self.catalog.vpc(id)
    }

    /// The VPC whose VNI is `vni`.
    #[inline]
    pub fn vpc_by_vni(&self, vni: u32) -> Option<VpcId> {
        let i = last_at_or_below(&self.vnis, vni);
        (self.vnis.get(i) == Some(&vni)).then(|| self.vni_vpcs[i])
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

    /// Sizes of the table.
    pub fn stats(&self) -> TableStats {
        let mut stats = TableStats {
            candidate_sets: self.catalog.candidate_sets.len(),
            ..Default::default()
        };
        for t in &self.per_vpc {
            for (segments, port_ranges) in [
                t.src4.sizes(),
                t.src6.sizes(),
                t.dst4.sizes(),
                t.dst6.sizes(),
            ] {
                stats.segments += segments;
                stats.port_ranges += port_ranges;
            }
            stats.destination_classes += t.dst_classes;
            stats.source_classes += t.matrix.len() / t.dst_classes.max(1);
            stats.matrix_cells += t.matrix.len();
        }
        stats
    }
}

/// A verdict in four bytes (half a `Verdict`), so more of the matrix stays in cache:
/// 0 `source-not-exposed`, 1 `destination-not-exposed`, 2 + 2k `allow(k)`,
/// 3 + 2k `allow-ambiguous(k)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cell(u32);

impl Cell {
    fn new(verdict: Verdict) -> Cell {
        Cell(match verdict {
            Verdict::Drop(DropReason::DestinationNotExposed) => 1,
            Verdict::Drop(_) => 0,
            Verdict::Allow(vpc) => 2 + 2 * vpc.0,
            Verdict::AllowAmbiguous(set) => 3 + 2 * set.0,
        })
    }

    #[inline]
    fn verdict(self) -> Verdict {
        match self.0 {
            0 => Verdict::Drop(DropReason::SourceNotExposed),
            1 => Verdict::Drop(DropReason::DestinationNotExposed),
            n if n % 2 == 0 => Verdict::Allow(VpcId((n - 2) / 2)),
            n => Verdict::AllowAmbiguous(CandidatesId((n - 3) / 2)),
        }
    }
}

/// Interns sets of VPC indices; set 0 is the empty set.
#[derive(Default)]
struct Interner {
    ids: BTreeMap<Vec<u32>, u32>,
    sets: Vec<Vec<u32>>,
}

impl Interner {
    fn with_empty() -> Self {
        let mut interner = Self::default();
        interner.intern(Vec::new());
        interner
    }

    fn intern(&mut self, set: Vec<u32>) -> u32 {
        if let Some(&id) = self.ids.get(&set) {
            return id;
        }
        let id = self.sets.len() as u32;
        self.sets.push(set.clone());
        self.ids.insert(set, id);
        id
    }
}

/// An address range that adds a member, possibly for some ports only.
struct Include<'a> {
    lo: u128,
    hi: u128,
    member: u32,
    block: u32,
    ports: Option<&'a PortList>,
}

/// An address range removed from one block (a `not`).
struct Hole {
    lo: u128,
    hi: u128,
    block: u32,
}

/// What one side (source or destination) of one family contributes, before segmentation.
#[derive(Default)]
struct SideInput<'a> {
    includes: Vec<Include<'a>>,
    holes: Vec<Hole>,
    /// The member added to every address that no include covers (a `default: true` block).
    fallback: Option<u32>,
}

impl<'a> SideInput<'a> {
    fn add_entries(
        &mut self,
        family: Family,
        member: u32,
        block: u32,
        entries: &'a [Entry],
        nots: &[ipnet::IpNet],
    ) {
        for e in entries.iter().filter(|e| net_family(&e.net) == family) {
            let (lo, hi) = net_range(&e.net);
            self.includes.push(Include {
                lo,
                hi,
                member,
                block,
                ports: e.ports.as_ref(),
            });
        }
        for n in nots.iter().filter(|n| net_family(n) == family) {
            let (lo, hi) = net_range(n);
            self.holes.push(Hole { lo, hi, block });
        }
    }
}

fn build_vpc(config: &Config, me: VpcId, candidates: &mut Interner) -> VpcTable {
    let mut src_classes = Interner::with_empty();
    let mut dst_classes = Interner::with_empty();
    let mut src = Vec::with_capacity(2);
    let mut dst = Vec::with_capacity(2);
    for family in [Family::V4, Family::V6] {
        let mut s = SideInput::default();
        let mut d = SideInput::default();
        let mut block_id = 0u32;
        for peering in &config.peerings {
            let Some((mine, theirs)) = peering.sides_of(me) else {
                continue;
            };
            let peer = theirs.vpc.0;
            for block in &mine.blocks {
                if block.default {
                    // A default block offers every address as a source, whatever the port; it
                    // gets a block id of its own so that the block's `not`s do not apply.
                    s.includes.push(Include {
                        lo: 0,
                        hi: family.max_key(),
                        member: peer,
                        block: block_id,
                        ports: None,
                    });
                    block_id += 1;
                }
                s.add_entries(family, peer, block_id, &block.ips, &block.ips_not);
                block_id += 1;
            }
            for block in &theirs.blocks {
                if block.default {
                    d.fallback = Some(peer);
                }
                let (entries, nots) = block.public();
                d.add_entries(family, peer, block_id, entries, nots);
                block_id += 1;
            }
        }
        src.push(segment(family, s, &mut src_classes));
        dst.push(segment(family, d, &mut dst_classes));
    }
    let src_sets = &src_classes.sets;
    let dst_sets = &dst_classes.sets;
    let mut matrix = Vec::with_capacity(src_sets.len() * dst_sets.len());
    let mut both = Vec::new();
    for (s, src_set) in src_sets.iter().enumerate() {
        for dst_set in dst_sets {
            let verdict = if s == 0 {
                Verdict::Drop(DropReason::SourceNotExposed)
            } else {
                intersect(src_set, dst_set, &mut both);
                match both.as_slice() {
                    [] => Verdict::Drop(DropReason::DestinationNotExposed),
                    [only] => Verdict::Allow(VpcId(*only)),
                    _ => Verdict::AllowAmbiguous(CandidatesId(candidates.intern(both.clone()))),
                }
            };
            matrix.push(Cell::new(verdict));
        }
    }
    let [src4, src6]: [SegTable<u128>; 2] = src.try_into().unwrap_or_else(|_| unreachable!());
    let [dst4, dst6]: [SegTable<u128>; 2] = dst.try_into().unwrap_or_else(|_| unreachable!());
    VpcTable {
        src4: src4.narrow(),
        src6,
        dst4: dst4.narrow(),
        dst6,
        dst_classes: dst_sets.len(),
        matrix: matrix.into(),
    }
}

fn intersect(a: &[u32], b: &[u32], out: &mut Vec<u32>) {
    out.clear();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
}

/// A segment while building: first key, port-less class, port map (first port, class).
type Segment = (u128, u32, Vec<(u16, u32)>);

/// Cuts one family's key space into segments of constant membership and interns their classes.
fn segment(family: Family, mut input: SideInput<'_>, classes: &mut Interner) -> SegTable<u128> {
    let max = family.max_key();
    let mut bounds: Vec<u128> = vec![0];
    for (lo, hi) in input
        .includes
        .iter()
        .map(|i| (i.lo, i.hi))
        .chain(input.holes.iter().map(|h| (h.lo, h.hi)))
    {
        bounds.push(lo);
        if hi < max {
            bounds.push(hi + 1);
        }
    }
    bounds.sort_unstable();
    bounds.dedup();
    input.includes.sort_by_key(|i| i.lo);
    input.holes.sort_by_key(|h| h.lo);

    // Adjacent segments with equal classes are merged.
    let mut segments: Vec<Segment> = Vec::new();
    let (mut next_include, mut next_hole) = (0, 0);
    let mut active: Vec<&Include<'_>> = Vec::new();
    let mut holes: Vec<&Hole> = Vec::new();
    let mut portless: Vec<u32> = Vec::new();
    let mut ported: Vec<&Include<'_>> = Vec::new();
    for &start in &bounds {
        active.retain(|i| i.hi >= start);
        holes.retain(|h| h.hi >= start);
        while next_include < input.includes.len() && input.includes[next_include].lo <= start {
            active.push(&input.includes[next_include]);
            next_include += 1;
        }
        while next_hole < input.holes.len() && input.holes[next_hole].lo <= start {
            holes.push(&input.holes[next_hole]);
            next_hole += 1;
        }
        portless.clear();
        ported.clear();
        for include in active
            .iter()
            .filter(|i| !holes.iter().any(|h| h.block == i.block))
        {
            match include.ports {
                None => portless.push(include.member),
                Some(_) => ported.push(include),
            }
        }
        if let (Some(fallback), true) = (input.fallback, portless.is_empty() && ported.is_empty()) {
            portless.push(fallback);
        }
        portless.sort_unstable();
        portless.dedup();
        let portless_class = classes.intern(portless.clone());
        let port_map = port_map(&portless, &ported, portless_class, classes);
        match segments.last() {
            Some((_, c, map)) if *c == portless_class && *map == port_map => {}
            _ => segments.push((start, portless_class, port_map)),
        }
    }

    let mut table = SegTable {
        starts: segments.iter().map(|s| s.0).collect(),
        segs: Box::default(),
        port_starts: Box::default(),
        port_classes: Box::default(),
    };
    let mut segs = Vec::with_capacity(segments.len());
    let (mut port_starts, mut port_classes) = (Vec::new(), Vec::new());
    for (_, portless, map) in segments {
        segs.push(Seg {
            portless,
            ports_at: port_starts.len() as u32,
            ports_len: map.len() as u32,
        });
        for (port, class) in map {
            port_starts.push(port);
            port_classes.push(class);
        }
    }
    table.segs = segs.into();
    table.port_starts = port_starts.into();
    table.port_classes = port_classes.into();
    table
}

/// The port ranges of one segment with their classes; empty when every port has the port-less
/// class.
fn port_map(
    portless: &[u32],
    ported: &[&Include<'_>],
    portless_class: u32,
    classes: &mut Interner,
) -> Vec<(u16, u32)> {
    if ported.is_empty() {
        return Vec::new();
    }
    let mut bounds: Vec<u16> = vec![0];
    for include in ported {
        for r in include.ports.map(PortList::ranges).unwrap_or_default() {
            bounds.push(r.lo);
            if r.hi < u16::MAX {
                bounds.push(r.hi + 1);
            }
        }
    }
    bounds.sort_unstable();
    bounds.dedup();
    let mut map: Vec<(u16, u32)> = Vec::new();
    let mut members = Vec::new();
    for port in bounds {
        members.clear();
        members.extend_from_slice(portless);
        members.extend(
            ported
                .iter()
                .filter(|i| i.ports.is_some_and(|p| p.contains(port)))
                .map(|i| i.member),
        );
        members.sort_unstable();
        members.dedup();
        let class = classes.intern(members.clone());
        if map.last().is_none_or(|&(_, c)| c != class) {
            map.push((port, class));
        }
    }
    if map.len() == 1 && map[0].1 == portless_class {
        map.clear();
    }
    map
}
