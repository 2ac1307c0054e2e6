//! Building the table from a validated configuration: per source VPC, the segment tables of
//! both directions and families, their classes, and the verdict matrix.

use std::collections::BTreeMap;

use super::flat::{PortMaps, Side4, VniIndex};
use super::six::Side6;
use super::{
    Cell, MAX_BUILD_STEPS, MAX_CLASS_MEMBERS, MAX_MATRIX_CELLS, Matrices, Row, Seg, SegTable,
    Sides6, Table, TableStats, VpcTable,
};
use crate::addr::{Family, net_family, net_range};
use crate::catalog::{Catalog, VpcEntry};
use crate::config::ConfigError;
use crate::model::{Config, Entry};
use crate::packet::{CandidatesId, DropReason, Verdict, VpcId};
use crate::ports::PortList;

/// What building a table may still take, against the bounds above: a hostile configuration
/// is refused early instead of taking the machine's memory or time (the realistic workload
/// at 5,000 peerings takes well under a hundredth of each; see the tests).
struct Budget {
    cells: usize,
    members: usize,
    steps: usize,
}

/// The bound a build ran past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exhausted {
    Cells,
    Members,
    Steps,
}

impl Budget {
    const FULL: Budget = Budget {
        cells: MAX_MATRIX_CELLS,
        members: MAX_CLASS_MEMBERS,
        steps: MAX_BUILD_STEPS,
    };

    fn take(left: &mut usize, n: usize, bound: Exhausted) -> Result<(), Exhausted> {
        *left = left.checked_sub(n).ok_or(bound)?;
        Ok(())
    }

    fn cells(&mut self, n: usize) -> Result<(), Exhausted> {
        Budget::take(&mut self.cells, n, Exhausted::Cells)
    }

    fn members(&mut self, n: usize) -> Result<(), Exhausted> {
        Budget::take(&mut self.members, n, Exhausted::Members)
    }

    fn steps(&mut self, n: usize) -> Result<(), Exhausted> {
        Budget::take(&mut self.steps, n, Exhausted::Steps)
    }
}

impl Exhausted {
    /// The refusal of a configuration whose VPC `vpc` ran past this bound.
    fn refusal(self, vpc: &str) -> ConfigError {
        let what = match self {
            Exhausted::Cells => format!(
                "verdict cells (source classes times destination classes, {MAX_MATRIX_CELLS} at most over all VPCs)"
            ),
            Exhausted::Members => {
                format!("class members ({MAX_CLASS_MEMBERS} at most over all VPCs)")
            }
            Exhausted::Steps => format!("steps of work ({MAX_BUILD_STEPS} at most)"),
        };
        ConfigError {
            object: Some(format!("VPCInfo `{vpc}`")),
            ..ConfigError::whole(format!(
                "the peerings of this VPC make the lookup table too large: it runs out of {what}; peerings whose exposed prefixes overlap less, or fewer of them, make it smaller"
            ))
        }
    }
}

/// One VPC's tables as built, before the IPv4 ones join the padded sides.
struct Built {
    src4: SegTable<u128>,
    src6: SegTable<u128>,
    dst4: SegTable<u128>,
    dst6: SegTable<u128>,
    dst_classes: usize,
    matrix: Box<[Cell]>,
}

/// The starts and values of an IPv4 segment table, its port maps added to `ports`.
fn flat_table(table: &SegTable<u128>, ports: &mut PortMaps) -> (Vec<u32>, Vec<u32>) {
    let starts = table.starts.iter().map(|&k| k as u32).collect();
    (starts, flat_values(table, ports))
}

/// The values of a segment table's segments: a class, or a port map added to `ports`.
fn flat_values(table: &SegTable<u128>, ports: &mut PortMaps) -> Vec<u32> {
    table
        .segs
        .iter()
        .map(|seg| {
            if seg.ports_len == 0 {
                return seg.portless;
            }
            let at = seg.ports_at as usize..(seg.ports_at + seg.ports_len) as usize;
            ports.add(
                seg.portless,
                &table.port_starts[at.clone()],
                &table.port_classes[at],
            )
        })
        .collect()
}

/// Bytes of a segment table.
fn seg_bytes(t: &SegTable<u128>) -> usize {
    t.starts.len() * 16 + t.segs.len() * size_of::<Seg>() + t.port_starts.len() * 6
}

impl Table {
    /// Builds the table of a validated configuration, or refuses one that would make it
    /// larger than [`MAX_MATRIX_CELLS`], [`MAX_CLASS_MEMBERS`] or [`MAX_BUILD_STEPS`] allow,
    /// naming the VPC whose peerings ran past the bound.
    pub fn build(config: &Config) -> Result<Table, ConfigError> {
        Table::build_with(config, true, Budget::FULL)
    }

    /// [`Table::build`] with the compare-searched layout that a trie falls back to past its
    /// memory budget, whatever the budget: for tests that check both layouts answer alike.
    #[cfg(feature = "oracle")]
    #[doc(hidden)]
    pub fn build_searched(config: &Config) -> Result<Table, ConfigError> {
        Table::build_with(config, false, Budget::FULL)
    }

    fn build_with(config: &Config, tries: bool, mut budget: Budget) -> Result<Table, ConfigError> {
        let vpcs: Vec<VpcEntry> = config
            .vpcs
            .iter()
            .map(|v| VpcEntry {
                name: v.name.clone(),
                vni: v.vni,
            })
            .collect();
        let mut by_vni: Vec<(u32, u32)> = vpcs
            .iter()
            .enumerate()
            .map(|(i, v)| (v.vni, i as u32))
            .collect();
        by_vni.sort_unstable();
        let mut candidates = Interner::default();
        let built: Vec<Built> = (0..vpcs.len())
            .map(|i| {
                build_vpc(config, VpcId(i as u32), &mut candidates, &mut budget)
                    .map_err(|e| e.refusal(&vpcs[i].name))
            })
            .collect::<Result<_, _>>()?;
        let mut stats = TableStats {
            candidate_sets: candidates.sets.len(),
            ..TableStats::default()
        };
        let mut ports = PortMaps::default();
        let (mut src4, mut dst4) = (Vec::new(), Vec::new());
        let mut per_vpc = Vec::with_capacity(built.len());
        let (mut rows, mut cells) = (Vec::with_capacity(built.len()), Vec::new());
        for b in built {
            for t in [&b.src4, &b.src6, &b.dst4, &b.dst6] {
                stats.segments += t.segs.len();
                stats.port_ranges += t.port_starts.len();
            }
            stats.destination_classes += b.dst_classes;
            stats.source_classes += b.matrix.len() / b.dst_classes.max(1);
            stats.matrix_cells += b.matrix.len();
            src4.push(flat_table(&b.src4, &mut ports));
            dst4.push(flat_table(&b.dst4, &mut ports));
            per_vpc.push(VpcTable {
                src6: b.src6,
                dst6: b.dst6,
            });
            rows.push(Row {
                at: cells.len(),
                dst_classes: b.dst_classes,
            });
            cells.extend_from_slice(&b.matrix);
        }
        let (src4, dst4) = (Side4::new(&src4, tries), Side4::new(&dst4, tries));
        let (v4_maps, v4_mark) = (ports.bytes(), (ports.maps.len(), ports.long.len()));
        stats.ipv4_bytes = src4.bytes() + dst4.bytes() + v4_maps;
        let mut sides6 = [Vec::new(), Vec::new()];
        for t in &per_vpc {
            for (side, table) in sides6.iter_mut().zip([&t.src6, &t.dst6]) {
                side.push((table.starts.to_vec(), flat_values(table, &mut ports)));
            }
        }
        let [src6, dst6] = sides6.map(|tables| Side6::new(&tables, tries));
        let six = match (src6, dst6) {
            (Some(src), Some(dst)) => Some(Sides6 { src, dst }),
            _ => {
                // IPv6 packets take the per-VPC searches: the maps of their values go.
                ports.maps.truncate(v4_mark.0);
                ports.long.truncate(v4_mark.1);
                None
            }
        };
        let searched: usize = per_vpc
            .iter()
            .map(|t| seg_bytes(&t.src6) + seg_bytes(&t.dst6))
            .sum();
        stats.ipv6_bytes =
            searched + ports.bytes() + six.as_ref().map_or(0, |s| s.src.bytes() + s.dst.bytes())
                - v4_maps;
        let candidate_sets = candidates
            .sets
            .into_iter()
            .map(|set| set.into_iter().map(VpcId).collect())
            .collect();
        let catalog = Catalog {
            vpcs,
            candidate_sets,
        };
        Ok(Table {
            decoder: crate::word::WordDecoder::new(&catalog),
            catalog,
            vnis: VniIndex::new(&by_vni, tries),
            src4,
            dst4,
            six,
            ports,
            per_vpc,
            matrices: Matrices {
                rows: rows.into(),
                cells: cells.into(),
            },
            stats,
        })
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
        interner.ids.insert(Vec::new(), 0);
        interner.sets.push(Vec::new());
        interner
    }

    /// The id of `set`; a new set's members (kept twice) are taken from `budget`.
    fn intern(&mut self, set: Vec<u32>, budget: &mut Budget) -> Result<u32, Exhausted> {
        if let Some(&id) = self.ids.get(&set) {
            return Ok(id);
        }
        budget.members(2 * set.len() + 1)?;
        let id = self.sets.len() as u32;
        self.sets.push(set.clone());
        self.ids.insert(set, id);
        Ok(id)
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

fn build_vpc(
    config: &Config,
    me: VpcId,
    candidates: &mut Interner,
    budget: &mut Budget,
) -> Result<Built, Exhausted> {
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
        src.push(segment(family, s, &mut src_classes, budget)?);
        dst.push(segment(family, d, &mut dst_classes, budget)?);
    }
    let src_sets = &src_classes.sets;
    let dst_sets = &dst_classes.sets;
    // Taken before the matrix is allocated.
    budget.cells(src_sets.len().saturating_mul(dst_sets.len()))?;
    let mut matrix = Vec::with_capacity(src_sets.len() * dst_sets.len());
    let mut both = Vec::new();
    for (s, src_set) in src_sets.iter().enumerate() {
        for dst_set in dst_sets {
            let verdict = if s == 0 {
                Verdict::Drop(DropReason::SourceNotExposed)
            } else {
                budget.steps(src_set.len() + dst_set.len())?;
                intersect(src_set, dst_set, &mut both);
                match both.as_slice() {
                    [] => Verdict::Drop(DropReason::DestinationNotExposed),
                    [only] => Verdict::Allow(VpcId(*only)),
                    _ => Verdict::AllowAmbiguous(CandidatesId(
                        candidates.intern(both.clone(), budget)?,
                    )),
                }
            };
            matrix.push(Cell::new(verdict));
        }
    }
    let [src4, src6]: [SegTable<u128>; 2] = src.try_into().unwrap_or_else(|_| unreachable!());
    let [dst4, dst6]: [SegTable<u128>; 2] = dst.try_into().unwrap_or_else(|_| unreachable!());
    Ok(Built {
        src4,
        src6,
        dst4,
        dst6,
        dst_classes: dst_sets.len(),
        matrix: matrix.into(),
    })
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
fn segment(
    family: Family,
    mut input: SideInput<'_>,
    classes: &mut Interner,
    budget: &mut Budget,
) -> Result<SegTable<u128>, Exhausted> {
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
        // Each active range is looked at once, and against each open hole.
        budget.steps((active.len() + 1) * (holes.len() + 1))?;
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
        let portless_class = classes.intern(portless.clone(), budget)?;
        let port_map = port_map(&portless, &ported, portless_class, classes, budget)?;
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
    Ok(table)
}

/// The port ranges of one segment with their classes; empty when every port has the port-less
/// class.
fn port_map(
    portless: &[u32],
    ported: &[&Include<'_>],
    portless_class: u32,
    classes: &mut Interner,
    budget: &mut Budget,
) -> Result<Vec<(u16, u32)>, Exhausted> {
    if ported.is_empty() {
        return Ok(Vec::new());
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
        budget.steps(portless.len() + ported.len())?;
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
        let class = classes.intern(members.clone(), budget)?;
        if map.last().is_none_or(|&(_, c)| c != class) {
            map.push((port, class));
        }
    }
    if map.len() == 1 && map[0].1 == portless_class {
        map.clear();
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub peered with `spokes` VPCs: in each peering the hub exposes host `i` of its /16
    /// on ports 1000 to 1000+i, and the spoke its own /24; the hub's side also has a /8 in
    /// every peering, with a `not` of its host. Source classes, destination classes, their
    /// members and the segments' active ranges all grow with `spokes`.
    fn hub(spokes: usize) -> Config {
        let mut yaml = String::from("kind: VPCInfo\nmetadata: {name: hub}\nspec: {vni: 1}\n");
        for i in 0..spokes {
            yaml += &format!(
                "---\nkind: VPCInfo\nmetadata: {{name: s{i}}}\nspec: {{vni: {}}}\n",
                i + 2
            );
            yaml += &format!(
                "---\nkind: Peering\nmetadata: {{name: hub--s{i}}}\nspec:\n  peering:\n    hub:\n      expose:\n        - ips: [{{cidr: 10.0.{}.{}/32, ports: 1000-{}}}]\n        - ips: [{{cidr: 11.0.0.0/8}}, {{not: 11.0.{}.{}/32}}]\n    s{i}:\n      expose: [{{ips: [{{cidr: 20.{}.{}.0/24}}]}}]\n",
                i / 256,
                i % 256,
                1000 + i,
                i / 256,
                i % 256,
                i / 256,
                i % 256
            );
        }
        crate::parse(&yaml, None).unwrap()
    }

    #[test]
    fn a_table_past_a_bound_is_refused_naming_the_vpc() {
        let config = hub(40);
        let full = Table::build(&config).unwrap();
        let stats = full.stats();
        assert!(stats.matrix_cells > 40 * 40, "{stats:?}");
        for (budget, bound) in [
            (
                Budget {
                    cells: 40 * 40,
                    ..Budget::FULL
                },
                "verdict cells",
            ),
            (
                Budget {
                    members: 40 * 40,
                    ..Budget::FULL
                },
                "class members",
            ),
            (
                Budget {
                    steps: 40 * 40,
                    ..Budget::FULL
                },
                "steps of work",
            ),
        ] {
            let e = Table::build_with(&config, true, budget).err().unwrap();
            assert_eq!(e.object.as_deref(), Some("VPCInfo `hub`"), "{e}");
            assert!(
                e.message.contains("too large") && e.message.contains(bound),
                "{e}"
            );
        }
        // Each bound is what it says: the full table fits in exactly its own size.
        let cells = Budget {
            cells: stats.matrix_cells,
            ..Budget::FULL
        };
        assert!(Table::build_with(&config, true, cells).is_ok());
        let fewer = Budget {
            cells: stats.matrix_cells - 1,
            ..Budget::FULL
        };
        assert!(Table::build_with(&config, true, fewer).is_err());
    }

    #[cfg(feature = "synth")]
    #[test]
    fn the_realistic_workload_takes_a_small_part_of_each_bound() {
        use crate::synth::{Gateway, GatewayShape};
        let gateway = Gateway::new(GatewayShape::with_peerings(5_000, true, 42));
        let config = crate::parse(gateway.yaml(), None).unwrap();
        let mut budget = Budget::FULL;
        let mut candidates = Interner::default();
        for i in 0..config.vpcs.len() {
            build_vpc(&config, VpcId(i as u32), &mut candidates, &mut budget).unwrap();
        }
        let used = |left: usize, all: usize| (all - left) as f64 / all as f64;
        assert!(used(budget.cells, MAX_MATRIX_CELLS) < 0.01, "cells");
        assert!(used(budget.members, MAX_CLASS_MEMBERS) < 0.01, "members");
        assert!(used(budget.steps, MAX_BUILD_STEPS) < 0.01, "steps");
    }
}
