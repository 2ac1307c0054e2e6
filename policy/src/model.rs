//! The validated configuration: what the table is built from, and what the reference oracle
//! reads. Every value here has passed the rules of SPEC section 4.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::packet::VpcId;
use crate::ports::PortList;

/// A validated configuration: VPCs sorted by name (so a [`VpcId`] is an index here) and the
/// peerings between them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The VPCs, sorted by name.
    pub vpcs: Vec<Vpc>,
    /// The peerings, in the order they were written.
    pub peerings: Vec<Peering>,
    /// What was read but skipped, for example objects of other kinds.
    pub notices: Vec<String>,
}

impl Config {
    /// The VPC with this id.
    pub fn vpc(&self, id: VpcId) -> &Vpc {
        &self.vpcs[id.0 as usize]
    }
}

/// A VPC, from its `VPCInfo` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpc {
    /// `metadata.name`.
    pub name: String,
    /// `spec.vni`, 1 to 16,777,215.
    pub vni: u32,
    /// `spec.subnets`, by name.
    pub subnets: BTreeMap<String, IpNet>,
}

/// A peering between two distinct VPCs, from a `Peering` or `GatewayPeering` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peering {
    /// `metadata.name`.
    pub name: String,
    /// `spec.gatewayGroup`, if given.
    pub gateway_group: Option<String>,
    /// The two sides, in VPC name order.
    pub sides: [Side; 2],
}

impl Peering {
    /// The side of `vpc` and the side facing it, if `vpc` is in this peering.
    pub fn sides_of(&self, vpc: VpcId) -> Option<(&Side, &Side)> {
        let [a, b] = &self.sides;
        if a.vpc == vpc {
            Some((a, b))
        } else if b.vpc == vpc {
            Some((b, a))
        } else {
            None
        }
    }
}

/// What one VPC exposes to the other in a peering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    /// The exposing VPC.
    pub vpc: VpcId,
    /// Its expose blocks, in the order written.
    pub blocks: Vec<Block>,
}

/// One expose block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Block {
    /// The private prefixes offered (`ips` entries with `cidr` or `vpcSubnet`).
    pub ips: Vec<Entry>,
    /// Prefixes removed from `ips` (`ips` entries with `not`).
    pub ips_not: Vec<IpNet>,
    /// The public prefixes (`as` entries with `cidr`); empty when the block has no `as`.
    pub as_: Vec<Entry>,
    /// Prefixes removed from `as_`.
    pub as_not: Vec<IpNet>,
    /// The NAT mode, if written.
    pub nat: Option<NatMode>,
    /// `default: true`: the fallback destination (SPEC 3.3).
    pub default: bool,
}

impl Block {
    /// The prefixes this block offers as destinations, and their exceptions: `as` when the
    /// block has `as`, otherwise `ips`.
    pub fn public(&self) -> (&[Entry], &[IpNet]) {
        if self.as_.is_empty() {
            (&self.ips, &self.ips_not)
        } else {
            (&self.as_, &self.as_not)
        }
    }
}

/// One prefix of an expose block, with the ports it is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The prefix.
    pub net: IpNet,
    /// `None`: any packet, with ports or without. `Some`: only TCP/UDP packets with a port in
    /// the list.
    pub ports: Option<PortList>,
    /// The subnet name when the entry was written as `vpcSubnet`.
    pub subnet: Option<String>,
}

/// How a block's addresses are translated. The filter's answer does not depend on it; the
/// validation rules for one-to-one mappings do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatMode {
    /// One-to-one (`static`, legacy `stateless`).
    Static,
    /// Many-to-one with connection state (`masquerade`, legacy `stateful`).
    Masquerade,
    /// Port forwarding (`portForward`).
    PortForward,
}
