//! The reference oracle: SPEC section 3's set definitions, written out as directly as possible.
//! Slow and obvious on purpose; it shares nothing with the table but the validated config.
//! The property tests check the table against it; the benchmarks measure the table against
//! it. Only with the `oracle` feature.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::model::{Block, Config, Entry, Side};
use crate::{Packet, VpcId};

/// A verdict with VPC names, comparable across implementations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// `allow(VPC)`.
    Allow(String),
    /// `allow-ambiguous([VPC, ...])`, names sorted.
    AllowAmbiguous(Vec<String>),
    /// `drop(reason)`.
    Drop(&'static str),
}

/// An entry matches an address and port when the prefix holds the address, and the entry has
/// no ports or the packet has a port in the entry's list.
fn entry_matches(entry: &Entry, addr: IpAddr, port: Option<u16>) -> bool {
    entry.net.contains(&addr)
        && match (&entry.ports, port) {
            (None, _) => true,
            (Some(list), Some(port)) => list.contains(port),
            (Some(_), None) => false,
        }
}

/// (addr, port) is in the union of `entries` minus the `nots`.
fn in_list(entries: &[Entry], nots: &[ipnet::IpNet], addr: IpAddr, port: Option<u16>) -> bool {
    entries.iter().any(|e| entry_matches(e, addr, port)) && !nots.iter().any(|n| n.contains(&addr))
}

/// (addr, port) ∈ S(P, X): what X's side offers as sources. A default block offers everything.
fn in_sources(side: &Side, addr: IpAddr, port: Option<u16>) -> bool {
    side.blocks
        .iter()
        .any(|b| b.default || in_list(&b.ips, &b.ips_not, addr, port))
}

/// (addr, port) ∈ D(P, Y) for traffic from X: Y's public prefixes, and for a default block every
/// address that no other block exposed to X covers.
fn in_destinations(
    config: &Config,
    x: VpcId,
    side: &Side,
    addr: IpAddr,
    port: Option<u16>,
) -> bool {
    side.blocks.iter().any(|b| {
        let (entries, nots) = b.public();
        in_list(entries, nots, addr, port) || (b.default && !covered_for(config, x, addr))
    })
}

/// Whether a non-default block exposed to X, in any of X's peerings, covers `addr`, any port.
fn covered_for(config: &Config, x: VpcId, addr: IpAddr) -> bool {
    config
        .peerings
        .iter()
        .filter_map(|p| p.sides_of(x))
        .any(|(_, theirs)| {
            theirs
                .blocks
                .iter()
                .filter(|b: &&Block| !b.default)
                .any(|b| {
                    let (entries, nots) = b.public();
                    entries.iter().any(|e| e.net.contains(&addr))
                        && !nots.iter().any(|n| n.contains(&addr))
                })
        })
}

/// The verdict of SPEC section 3 for one packet.
pub fn verdict(config: &Config, packet: &Packet) -> Expected {
    let Some(x) = config.vpcs.iter().position(|v| v.vni == packet.src_vni) else {
        return Expected::Drop("unknown-vpc");
    };
    let x = VpcId(x as u32);
    let (src_port, dst_port) = match packet.ports {
        Some(p) => (Some(p.src), Some(p.dst)),
        None => (None, None),
    };
    let mut admitting = BTreeSet::new();
    let mut source_exposed = false;
    for peering in &config.peerings {
        let Some((mine, theirs)) = peering.sides_of(x) else {
            continue;
        };
        let source_in = in_sources(mine, packet.src, src_port);
        source_exposed |= source_in;
        if source_in && in_destinations(config, x, theirs, packet.dst, dst_port) {
            admitting.insert(config.vpc(theirs.vpc).name.clone());
        }
    }
    let mut names: Vec<String> = admitting.into_iter().collect();
    match names.len() {
        0 if !source_exposed => Expected::Drop("source-not-exposed"),
        0 => Expected::Drop("destination-not-exposed"),
        1 => Expected::Allow(names.remove(0)),
        _ => Expected::AllowAmbiguous(names),
    }
}

/// A table verdict in the same terms.
pub fn from_table(table: &crate::Table, verdict: crate::Verdict) -> Expected {
    use crate::Verdict;
    match verdict {
        Verdict::Allow(v) => Expected::Allow(table.vpc(v).name.clone()),
        Verdict::AllowAmbiguous(set) => Expected::AllowAmbiguous(
            table
                .candidates(set)
                .iter()
                .map(|&v| table.vpc(v).name.clone())
                .collect(),
        ),
        Verdict::Drop(reason) => Expected::Drop(reason.as_str()),
    }
}
