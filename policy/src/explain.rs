//! Why a packet gets its verdict: SPEC section 3's sets evaluated for one packet, with the
//! expose entries that put it in them and, for a drop, the entries it nearly matched. For
//! tools (`flowgate explain`), not the packet path: it walks the configuration, where the
//! [`Table`] only looks up classes. The verdict itself is always the table's.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::catalog::Catalog;
use crate::model::{Block, Config, Entry, Side};
use crate::packet::{Packet, Verdict, VpcId};
use crate::table::Table;

/// One expose entry whose prefix holds the address being explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMatch {
    /// The expose block, as a path such as `spec.peering.vpc-1.expose[0]`.
    pub block: String,
    /// The entry as written: `ips 10.0.2.0/24 ports 80-90`, `as 192.168.1.0/24`,
    /// `vpcSubnet subnet-01 (10.0.1.0/24)` or `default`.
    pub entry: String,
    /// `None` when the entry offers the address and port; otherwise why not, although its
    /// prefix holds the address (a near miss).
    pub miss: Option<String>,
}

/// How one peering of the source VPC judges the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeeringMatch {
    /// The peering's name.
    pub peering: String,
    /// The VPC at the other end.
    pub remote: String,
    /// The source VPC's entries whose prefix holds the source address.
    pub source: Vec<EntryMatch>,
    /// The remote VPC's entries whose prefix holds the destination address.
    pub destination: Vec<EntryMatch>,
    /// Some source entry and some destination entry offer the packet.
    pub admits: bool,
}

/// Why a packet gets its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The table's verdict.
    pub verdict: Verdict,
    /// The source VPC, when the VNI names one.
    pub src_vpc: Option<String>,
    /// Every peering of the source VPC, in configuration order.
    pub peerings: Vec<PeeringMatch>,
    /// The reasoning in sentences, the deciding one first.
    pub notes: Vec<String>,
}

fn offered(matches: &[EntryMatch]) -> bool {
    matches.iter().any(|m| m.miss.is_none())
}

/// Explains the verdict `table` gives `packet`; `table` must be built from `config`.
pub fn explain(config: &Config, table: &Table, packet: &Packet) -> Explanation {
    let verdict = table.lookup(packet);
    let Some(x) = table.vpc_by_vni(packet.src_vni) else {
        return Explanation {
            verdict,
            src_vpc: None,
            peerings: Vec::new(),
            notes: vec![format!("VNI {} names no VPC", packet.src_vni)],
        };
    };
    let (src_port, dst_port) = (packet.ports.map(|p| p.src), packet.ports.map(|p| p.dst));
    let peerings: Vec<PeeringMatch> = config
        .peerings
        .iter()
        .filter_map(|p| {
            let (mine, theirs) = p.sides_of(x)?;
            let source = source_matches(config, mine, packet.src, src_port);
            let destination = destination_matches(config, x, theirs, packet.dst, dst_port);
            Some(PeeringMatch {
                peering: p.name.clone(),
                remote: config.vpc(theirs.vpc).name.clone(),
                admits: offered(&source) && offered(&destination),
                source,
                destination,
            })
        })
        .collect();
    let me = config.vpc(x).name.clone();
    let notes = notes(&me, packet, &peerings);
    Explanation {
        verdict,
        src_vpc: Some(me),
        peerings,
        notes,
    }
}

fn side_path(config: &Config, side: &Side, block: usize) -> String {
    format!("spec.peering.{}.expose[{block}]", config.vpc(side.vpc).name)
}

fn entry_text(kind: &str, entry: &Entry) -> String {
    let mut text = match &entry.subnet {
        Some(name) => format!("vpcSubnet {name} ({})", entry.net),
        None => format!("{kind} {}", entry.net),
    };
    if let Some(ports) = &entry.ports {
        let _ = write!(text, " ports {ports}");
    }
    text
}

/// The entries of `entries` whose prefix holds `addr`, each with what keeps it from offering
/// (`addr`, `port`), if anything.
fn list_matches(
    block: &str,
    kind: &str,
    entries: &[Entry],
    nots: &[IpNet],
    addr: IpAddr,
    port: Option<u16>,
) -> Vec<EntryMatch> {
    entries
        .iter()
        .filter(|e| e.net.contains(&addr))
        .map(|e| {
            let miss = match (nots.iter().find(|n| n.contains(&addr)), &e.ports, port) {
                (Some(not), _, _) => Some(format!("removed by not {not}")),
                (None, Some(list), None) => Some(format!(
                    "the packet has no ports and the entry only offers ports {list}"
                )),
                (None, Some(list), Some(port)) if !list.contains(port) => {
                    Some(format!("port {port} is not in {list}"))
                }
                _ => None,
            };
            EntryMatch {
                block: block.to_owned(),
                entry: entry_text(kind, e),
                miss,
            }
        })
        .collect()
}

/// S(P, X): the private `ips`; a default block offers every address as a source.
fn source_matches(
    config: &Config,
    side: &Side,
    addr: IpAddr,
    port: Option<u16>,
) -> Vec<EntryMatch> {
    let mut out = Vec::new();
    for (i, block) in side.blocks.iter().enumerate() {
        let path = side_path(config, side, i);
        if block.default {
            out.push(EntryMatch {
                block: path.clone(),
                entry: "default".into(),
                miss: None,
            });
        }
        out.extend(list_matches(
            &path,
            "ips",
            &block.ips,
            &block.ips_not,
            addr,
            port,
        ));
    }
    out
}

/// D(P, Y) for traffic from `x`: the public prefixes (`as`, else `ips`), and for a default
/// block every address no other block exposed to `x` covers.
fn destination_matches(
    config: &Config,
    x: VpcId,
    side: &Side,
    addr: IpAddr,
    port: Option<u16>,
) -> Vec<EntryMatch> {
    let mut out = Vec::new();
    for (i, block) in side.blocks.iter().enumerate() {
        let path = side_path(config, side, i);
        if block.default {
            out.push(EntryMatch {
                block: path.clone(),
                entry: "default".into(),
                miss: covering(config, x, addr).map(|(block, entry)| {
                    format!(
                        "{block} {entry} covers it, and a default offers only what no other block exposed to {} covers",
                        config.vpc(x).name
                    )
                }),
            });
        }
        let (entries, nots) = block.public();
        let kind = if block.as_.is_empty() { "ips" } else { "as" };
        out.extend(list_matches(&path, kind, entries, nots, addr, port));
    }
    out
}

/// A non-default block exposed to `x`, in any of its peerings, that covers `addr` (any port).
fn covering(config: &Config, x: VpcId, addr: IpAddr) -> Option<(String, String)> {
    config
        .peerings
        .iter()
        .filter_map(|p| p.sides_of(x))
        .find_map(|(_, theirs)| {
            theirs
                .blocks
                .iter()
                .enumerate()
                .find_map(|(i, b): (usize, &Block)| {
                    if b.default {
                        return None;
                    }
                    let (entries, nots) = b.public();
                    let kind = if b.as_.is_empty() { "ips" } else { "as" };
                    let entry = entries.iter().find(|e| e.net.contains(&addr))?;
                    (!nots.iter().any(|n| n.contains(&addr)))
                        .then(|| (side_path(config, theirs, i), entry_text(kind, entry)))
                })
        })
}

fn endpoint(addr: IpAddr, port: Option<u16>) -> String {
    match (addr, port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    }
}

fn first_offer(matches: &[EntryMatch]) -> String {
    matches
        .iter()
        .find(|m| m.miss.is_none())
        .map(|m| format!("{} {}", m.block, m.entry))
        .unwrap_or_default()
}

fn notes(me: &str, packet: &Packet, peerings: &[PeeringMatch]) -> Vec<String> {
    let src = endpoint(packet.src, packet.ports.map(|p| p.src));
    let dst = endpoint(packet.dst, packet.ports.map(|p| p.dst));
    let admitting: Vec<&PeeringMatch> = peerings.iter().filter(|p| p.admits).collect();
    let mut notes = Vec::new();
    if peerings.is_empty() {
        notes.push(format!("{me} has no peerings"));
        return notes;
    }
    match admitting[..] {
        [one] => notes.push(format!(
            "only {} admits the packet: it goes to {} (source {}, destination {})",
            one.peering,
            one.remote,
            first_offer(&one.source),
            first_offer(&one.destination)
        )),
        [_, _, ..] => notes.push(format!(
            "{} peerings admit the packet ({}): allowed, the destination is left to a later stage",
            admitting.len(),
            admitting
                .iter()
                .map(|p| format!("{} to {}", p.peering, p.remote))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        [] if !peerings.iter().any(|p| offered(&p.source)) => {
            notes.push(format!(
                "the source {src} is in no source set of {me}'s peerings"
            ));
        }
        [] => {
            for p in peerings.iter().filter(|p| offered(&p.source)) {
                notes.push(format!(
                    "{} offers the source ({}), but the destination {dst} is in none of {}'s destination sets",
                    p.peering,
                    first_offer(&p.source),
                    p.remote
                ));
            }
        }
    }
    if admitting.is_empty() {
        for p in peerings {
            let sides = [
                ("source", &p.source, &src),
                ("destination", &p.destination, &dst),
            ];
            for (side, matches, what) in sides {
                for m in matches {
                    if let Some(miss) = &m.miss {
                        notes.push(format!(
                            "near miss in {}: {side} {what} is in {} {}, but {miss}",
                            p.peering, m.block, m.entry
                        ));
                    }
                }
            }
        }
    }
    notes
}

impl Explanation {
    /// What a module that has no configuration yet answers: every packet is
    /// `drop(unknown-vpc)`.
    pub fn unconfigured() -> Explanation {
        Explanation {
            verdict: Verdict::default(),
            src_vpc: None,
            peerings: Vec::new(),
            notes: vec!["no configuration yet: every packet is drop(unknown-vpc)".into()],
        }
    }

    /// The explanation of an instance that adopted its table without the configuration's text
    /// (see `export-state` in `wit/policy.wit`): the verdict alone.
    pub fn adopted(table: &Table, verdict: Verdict) -> Explanation {
        Explanation {
            verdict,
            src_vpc: None,
            peerings: Vec::new(),
            notes: vec![format!(
                "{}: this instance adopted a built table without its configuration, and explains no peering",
                table.verdict_text(verdict)
            )],
        }
    }

    /// The explanation as text for people, VPCs named through `catalog`.
    pub fn render(&self, catalog: &Catalog) -> String {
        let mut out = format!("verdict: {}\n", catalog.verdict_text(self.verdict));
        for note in &self.notes {
            let _ = writeln!(out, "  {note}");
        }
        for p in &self.peerings {
            let _ = writeln!(
                out,
                "peering {} (to {}): {}",
                p.peering,
                p.remote,
                if p.admits { "admits" } else { "does not admit" }
            );
            for (side, matches) in [("source", &p.source), ("destination", &p.destination)] {
                if matches.is_empty() {
                    let _ = writeln!(out, "  {side}: in no entry");
                }
                for m in matches {
                    let _ = match &m.miss {
                        None => writeln!(out, "  {side}: {} {}", m.block, m.entry),
                        Some(miss) => {
                            writeln!(out, "  {side}: {} {} (near miss: {miss})", m.block, m.entry)
                        }
                    };
                }
            }
        }
        out
    }
}
