//! A workload shaped like a VPC gateway's, for honest benchmarks: many VPCs, random peerings
//! among them, and traffic spread over every VPC so that consecutive packets share nothing a
//! branch predictor could learn. Every packet is drawn afresh, so a million of them are a
//! million distinct 5-tuples.
//!
//! Two stacks share the address plan: VPC `i` owns the sixteen /24s of `10.0.0.0/8`'s `i`-th
//! /20 (`10.0.16.0/20` is VPC 1's) and the sixteen /64s of the `i`-th /60 of the ULA
//! `fd12:3456:789a::/48` (`fd12:3456:789a:10::/60` is VPC 1's, `fd12:3456:789a:1f::/64` its
//! last /64).
//!
//! [`Stack::Ipv4`] ([`GatewayShape::with_peerings`]):
//! - Each side of a peering exposes one to three of its VPC's /24s; with `ports`, one entry in
//!   four carries a port range.
//! - Nine packets in ten go from a host of a prefix one side exposes to a host of a prefix the
//!   other side exposes (most allowed, some dropped on a port); the tenth goes from a random
//!   host of a random VPC to a random host of the plan.
//!
//! [`Stack::Dual`] ([`GatewayShape::dual`]):
//! - Each side of a peering exposes one IPv4 block and one IPv6 block, each of one to three of
//!   its VPC's subnets. With `ports`, one entry in five carries a port range; one block in six
//!   has a `not` (a hole of a quarter to a sixteenth of one of its prefixes), one in ten
//!   exposes the VPC's whole /20 or /60 instead, and one in eight adds one of two service
//!   prefixes per family that VPCs share (`172.16.s.0/24`, `2001:db8:53:s::/64`), so a VPC
//!   peered with two that expose the same one gets `allow-ambiguous` verdicts for it.
//! - Packets: 45 % IPv4 and 45 % IPv6 between prefixes the two sides of a peering expose (in
//!   the same family), 5 % from one side's prefix of one family to the other side's of the
//!   other (SPEC's sets do not ask for one family: most of these are allowed), 5 % from a
//!   random host of a random VPC to a random host of the plan, in either family.
//!   [`Traffic::Ipv4`] and [`Traffic::Ipv6`] draw the packets of one family of the same mix
//!   (19 in 20 between exposed prefixes, the 20th random).

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::packet::Packet;

/// The address families a gateway workload's VPCs expose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stack {
    /// IPv4 only: each side one block of /24s.
    #[default]
    Ipv4,
    /// IPv4 and IPv6: each side one block of /24s and one of /64s.
    Dual,
}

/// Which packets of a workload's mix to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Traffic {
    /// The whole mix.
    #[default]
    All,
    /// Only the mix's packets whose two addresses are IPv4.
    Ipv4,
    /// Only the mix's packets whose two addresses are IPv6 (for a [`Stack::Ipv4`] workload,
    /// random hosts of the plan's /60s, which no peering exposes).
    Ipv6,
}

/// The shape of a gateway workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayShape {
    /// Number of VPCs (2 to 4,096: the /20s of `10.0.0.0/8`, the /60s of the /48).
    pub vpcs: usize,
    /// Number of peerings (at most `vpcs * (vpcs - 1) / 2`).
    pub peerings: usize,
    /// Whether some entries carry a port range (one in four for IPv4, one in five dual).
    pub ports: bool,
    /// The address families the VPCs expose.
    pub stack: Stack,
    /// Seed of the generator.
    pub seed: u64,
}

impl GatewayShape {
    /// The IPv4 shapes the benchmarks name: 100 VPCs for up to 1,000 peerings, 250 for up to
    /// 5,000, and beyond that as many as give each VPC about 40 peers; never fewer than the
    /// peerings need.
    pub fn with_peerings(peerings: usize, ports: bool, seed: u64) -> Self {
        let usual = if peerings <= 1_000 {
            100
        } else if peerings <= 5_000 {
            250
        } else {
            peerings / 20
        };
        GatewayShape {
            vpcs: usual.max(needed(peerings)).clamp(2, 4096),
            peerings,
            ports,
            stack: Stack::Ipv4,
            seed,
        }
    }

    /// The dual-stack shapes the benchmarks name: 120 VPCs for up to 1,000 peerings, 300 for
    /// up to 5,000, and beyond that as many as give each VPC about 33 peers; never fewer than
    /// the peerings need.
    pub fn dual(peerings: usize, ports: bool, seed: u64) -> Self {
        let usual = if peerings <= 1_000 {
            120
        } else if peerings <= 5_000 {
            300
        } else {
            peerings / 100 * 6
        };
        GatewayShape {
            vpcs: usual.max(needed(peerings)).clamp(2, 4096),
            peerings,
            ports,
            stack: Stack::Dual,
            seed,
        }
    }

    fn vpc_count(&self) -> usize {
        self.vpcs.clamp(2, 4096)
    }
}

/// The fewest VPCs among which `peerings` random peerings (and a quarter more) fit.
fn needed(peerings: usize) -> usize {
    (2..4096)
        .find(|v: &usize| v * (v - 1) / 2 >= peerings + peerings / 4)
        .unwrap_or(4096)
}

/// Port ranges a quarter of the entries carry: services, ephemeral ranges, a few singles.
const PORT_RANGES: [&str; 6] = ["443", "80,443", "8000-8999", "1024-65535", "53", "22"];
/// Destination ports of generated TCP and UDP packets: inside and outside those ranges.
const DST_PORTS: [u16; 8] = [22, 53, 80, 443, 3306, 8080, 8443, 50_000];

/// One dual-stack block in this many has a `not`.
const HOLE_ONE_IN: u8 = 6;
/// One dual-stack block in this many exposes its VPC's whole /20 or /60.
const WIDE_ONE_IN: u8 = 10;
/// One dual-stack block in this many adds a shared service prefix.
const SERVICE_ONE_IN: u8 = 8;
/// Shared service prefixes per family.
const SERVICES: u32 = 2;

/// The ULA /48 whose /60s the VPCs own.
const V6_PLAN: u128 = 0xfd12_3456_789a_u128 << 80;
/// The /48 of the shared IPv6 service prefixes (`2001:db8:53::/48`).
const V6_SERVICES: u128 = 0x2001_0db8_0053_u128 << 80;
/// The /22 of the shared IPv4 service prefixes (`172.16.0.0/22`).
const V4_SERVICES: u32 = 0xac10_0000;

/// One side of a generated IPv4 peering: the source VPC's VNI and the /24s each side exposes.
#[derive(Debug, Clone)]
struct Side {
    vni: u32,
    mine: Vec<u32>,
    theirs: Vec<u32>,
}

/// One side of a generated dual-stack peering: the source VPC's VNI and the prefixes each
/// side exposes, IPv4 first, IPv6 second (`not`s included: a host drawn in a hole is dropped).
#[derive(Debug, Clone)]
struct DualSide {
    vni: u32,
    mine: [Vec<IpNet>; 2],
    theirs: [Vec<IpNet>; 2],
}

/// A generated gateway workload: its configuration as YAML, and an endless source of packets.
#[derive(Debug, Clone)]
pub struct Gateway {
    shape: GatewayShape,
    yaml: String,
    sides: Vec<Side>,
    dual: Vec<DualSide>,
    rng: fastrand::Rng,
}

/// The first address of VPC `vpc`'s `k`-th /24.
fn subnet(vpc: usize, k: u32) -> u32 {
    0x0a00_0000 | ((vpc as u32) << 12) | (k << 8)
}

/// VPC `vpc`'s `k`-th /24 (`k` < 16), or its whole /20 (`k` = 16), as a prefix.
fn v4_net(vpc: usize, k: u32) -> IpNet {
    let net = match k {
        16 => Ipv4Net::new(Ipv4Addr::from(subnet(vpc, 0)), 20),
        _ => Ipv4Net::new(Ipv4Addr::from(subnet(vpc, k)), 24),
    };
    IpNet::V4(net.unwrap_or_default())
}

/// VPC `vpc`'s `k`-th /64 (`k` < 16), or its whole /60 (`k` = 16), as a prefix.
fn v6_net(vpc: usize, k: u32) -> IpNet {
    let base = V6_PLAN | ((vpc as u128 & 0xfff) << 68);
    let net = match k {
        16 => Ipv6Net::new(Ipv6Addr::from(base), 60),
        _ => Ipv6Net::new(Ipv6Addr::from(base | (u128::from(k & 15) << 64)), 64),
    };
    IpNet::V6(net.unwrap_or_default())
}

/// Shared service prefix `s` of a family.
fn service(v6: bool, s: u32) -> IpNet {
    if v6 {
        let net = Ipv6Net::new(Ipv6Addr::from(V6_SERVICES | (u128::from(s) << 64)), 64);
        IpNet::V6(net.unwrap_or_default())
    } else {
        let net = Ipv4Net::new(Ipv4Addr::from(V4_SERVICES | (s << 8)), 24);
        IpNet::V4(net.unwrap_or_default())
    }
}

/// A random host of `net`.
fn host_in(rng: &mut fastrand::Rng, net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(
            u32::from(n.network()) | (rng.u32(..) & u32::from(n.hostmask())),
        )),
        IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(
            u128::from(n.network()) | (rng.u128(..) & u128::from(n.hostmask())),
        )),
    }
}

/// A random host of a random one of `nets` (the unspecified address if there is none).
fn host_of(rng: &mut fastrand::Rng, nets: &[IpNet]) -> IpAddr {
    match nets.get(rng.usize(..nets.len().max(1))) {
        Some(net) => host_in(rng, net),
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

/// Writes one expose block of VPC `vpc` in one family and returns the prefixes it lists
/// (its `not` included).
fn dual_block(
    rng: &mut fastrand::Rng,
    yaml: &mut String,
    vpc: usize,
    v6: bool,
    ports: bool,
) -> Vec<IpNet> {
    let net = |k| if v6 { v6_net(vpc, k) } else { v4_net(vpc, k) };
    let mut nets = Vec::with_capacity(4);
    if rng.u8(..WIDE_ONE_IN) == 0 {
        nets.push(net(16));
    } else {
        let count = rng.usize(1..=3);
        while nets.len() < count {
            let candidate = net(rng.u32(..16));
            if !nets.contains(&candidate) {
                nets.push(candidate);
            }
        }
    }
    if rng.u8(..SERVICE_ONE_IN) == 0 {
        nets.push(service(v6, rng.u32(..SERVICES)));
    }
    yaml.push_str("        - ips:\n");
    for net in &nets {
        let _ = writeln!(yaml, "            - cidr: \"{net}\"");
        if ports && rng.u8(..5) == 0 {
            let ports = PORT_RANGES[rng.usize(..PORT_RANGES.len())];
            let _ = writeln!(yaml, "              ports: \"{ports}\"");
        }
    }
    if rng.u8(..HOLE_ONE_IN) == 0 {
        let around = nets[rng.usize(..nets.len())];
        let len = around.prefix_len() + rng.u8(2..=4);
        if let Ok(hole) = IpNet::new(host_in(rng, &around), len) {
            let hole = hole.trunc();
            let _ = writeln!(yaml, "            - not: \"{hole}\"");
            nets.push(hole);
        }
    }
    nets
}

impl Gateway {
    /// Generates the configuration of `shape`; packets come from [`Gateway::packets`].
    pub fn new(shape: GatewayShape) -> Self {
        match shape.stack {
            Stack::Ipv4 => Self::ipv4(shape),
            Stack::Dual => Self::dual(shape),
        }
    }

    fn ipv4(shape: GatewayShape) -> Self {
        let mut rng = fastrand::Rng::with_seed(shape.seed);
        let vpcs = shape.vpc_count();
        let peerings = shape.peerings.min(vpcs * (vpcs - 1) / 2);
        let mut yaml = String::with_capacity(peerings * 300 + vpcs * 80);
        write_vpcs(&mut yaml, vpcs);
        let mut pairs = std::collections::HashSet::new();
        let mut sides = Vec::with_capacity(peerings * 2);
        while pairs.len() < peerings {
            let (a, b) = super::new_pair(&mut rng, vpcs, &mut pairs);
            let _ = writeln!(
                yaml,
                "kind: Peering\nmetadata: {{name: vpc-{a:04}--vpc-{b:04}}}\nspec:\n  peering:"
            );
            let mut exposed = [Vec::new(), Vec::new()];
            for (side, vpc) in [a, b].into_iter().enumerate() {
                let _ = writeln!(yaml, "    vpc-{vpc:04}:\n      expose:\n        - ips:");
                let count = rng.usize(1..=3);
                while exposed[side].len() < count {
                    let net = subnet(vpc, rng.u32(..16));
                    if exposed[side].contains(&net) {
                        continue;
                    }
                    exposed[side].push(net);
                    let _ = writeln!(yaml, "            - cidr: \"{}/24\"", Ipv4Addr::from(net));
                    if shape.ports && rng.u8(..4) == 0 {
                        let ports = PORT_RANGES[rng.usize(..PORT_RANGES.len())];
                        let _ = writeln!(yaml, "              ports: \"{ports}\"");
                    }
                }
            }
            yaml.push_str("---\n");
            let [ea, eb] = exposed;
            sides.push(Side {
                vni: vni(a),
                mine: ea.clone(),
                theirs: eb.clone(),
            });
            sides.push(Side {
                vni: vni(b),
                mine: eb,
                theirs: ea,
            });
        }
        Gateway {
            shape,
            yaml,
            sides,
            dual: Vec::new(),
            rng: fastrand::Rng::with_seed(shape.seed ^ 0x7a11_1c5e_ed00_0001),
        }
    }

    fn dual(shape: GatewayShape) -> Self {
        let mut rng = fastrand::Rng::with_seed(shape.seed);
        let vpcs = shape.vpc_count();
        let peerings = shape.peerings.min(vpcs * (vpcs - 1) / 2);
        let mut yaml = String::with_capacity(peerings * 700 + vpcs * 80);
        write_vpcs(&mut yaml, vpcs);
        let mut pairs = std::collections::HashSet::new();
        let mut sides = Vec::with_capacity(peerings * 2);
        while pairs.len() < peerings {
            let (a, b) = super::new_pair(&mut rng, vpcs, &mut pairs);
            let _ = writeln!(
                yaml,
                "kind: Peering\nmetadata: {{name: vpc-{a:04}--vpc-{b:04}}}\nspec:\n  peering:"
            );
            let mut exposed: [[Vec<IpNet>; 2]; 2] = Default::default();
            for (side, vpc) in [a, b].into_iter().enumerate() {
                let _ = writeln!(yaml, "    vpc-{vpc:04}:\n      expose:");
                for (family, v6) in [false, true].into_iter().enumerate() {
                    exposed[side][family] = dual_block(&mut rng, &mut yaml, vpc, v6, shape.ports);
                }
            }
            yaml.push_str("---\n");
            let [ea, eb] = exposed;
            sides.push(DualSide {
                vni: vni(a),
                mine: ea.clone(),
                theirs: eb.clone(),
            });
            sides.push(DualSide {
                vni: vni(b),
                mine: eb,
                theirs: ea,
            });
        }
        Gateway {
            shape,
            yaml,
            sides: Vec::new(),
            dual: sides,
            rng: fastrand::Rng::with_seed(shape.seed ^ 0x7a11_1c5e_ed00_0001),
        }
    }

    /// The shape this workload was generated from.
    pub fn shape(&self) -> GatewayShape {
        self.shape
    }

    /// The configuration, as YAML a user could have written.
    pub fn yaml(&self) -> &str {
        &self.yaml
    }

    /// The next `count` packets of the endless stream.
    pub fn packets(&mut self, count: usize) -> Vec<Packet> {
        self.packets_of(Traffic::All, count)
    }

    /// The next `count` packets of the endless stream of `traffic`.
    pub fn packets_of(&mut self, traffic: Traffic, count: usize) -> Vec<Packet> {
        (0..count).map(|_| self.packet_of(traffic)).collect()
    }

    /// The next packet of the stream.
    pub fn packet(&mut self) -> Packet {
        self.packet_of(Traffic::All)
    }

    /// The next packet of the stream of `traffic`.
    pub fn packet_of(&mut self, traffic: Traffic) -> Packet {
        match (self.shape.stack, traffic) {
            (Stack::Ipv4, Traffic::All | Traffic::Ipv4) => self.ipv4_packet(),
            (Stack::Ipv4, Traffic::Ipv6) => {
                let (vni, src, dst) = self.random_hosts(true);
                finish(&mut self.rng, vni, src, dst)
            }
            (Stack::Dual, _) => self.dual_packet(traffic),
        }
    }

    fn ipv4_packet(&mut self) -> Packet {
        let rng = &mut self.rng;
        let vpcs = self.shape.vpc_count();
        let (vni, src, dst) = match self.sides.get(rng.usize(..self.sides.len().max(1))) {
            Some(side) if rng.u8(..10) != 0 => (
                side.vni,
                side.mine[rng.usize(..side.mine.len())] | rng.u32(..256),
                side.theirs[rng.usize(..side.theirs.len())] | rng.u32(..256),
            ),
            _ => {
                let src_vpc = rng.usize(..vpcs);
                (
                    vni(src_vpc),
                    subnet(src_vpc, 0) | rng.u32(..1 << 12),
                    subnet(rng.usize(..vpcs), 0) | rng.u32(..1 << 12),
                )
            }
        };
        finish(rng, vni, IpAddr::V4(src.into()), IpAddr::V4(dst.into()))
    }

    fn dual_packet(&mut self, traffic: Traffic) -> Packet {
        /// What a packet goes between.
        enum Kind {
            /// Prefixes of one family the two sides of a peering expose (0: IPv4, 1: IPv6).
            Exposed(usize),
            /// One side's prefix of one family to the other side's of the other.
            Mixed,
            /// Random hosts of the plan, IPv6 or not.
            Random(bool),
        }
        let rng = &mut self.rng;
        let kind = match traffic {
            Traffic::All => match rng.u8(..20) {
                0..=8 => Kind::Exposed(0),
                9..=17 => Kind::Exposed(1),
                18 => Kind::Mixed,
                _ => Kind::Random(rng.bool()),
            },
            // 45 % exposed against 2.5 % random, as in the whole mix.
            Traffic::Ipv4 if rng.u8(..19) != 0 => Kind::Exposed(0),
            Traffic::Ipv4 => Kind::Random(false),
            Traffic::Ipv6 if rng.u8(..19) != 0 => Kind::Exposed(1),
            Traffic::Ipv6 => Kind::Random(true),
        };
        let side = self.dual.get(rng.usize(..self.dual.len().max(1)));
        let (vni, src, dst) = match (kind, side) {
            (Kind::Exposed(family), Some(side)) => {
                let (mine, theirs) = (&side.mine[family], &side.theirs[family]);
                (side.vni, host_of(rng, mine), host_of(rng, theirs))
            }
            (Kind::Mixed, Some(side)) => {
                let family = rng.usize(..2);
                let (mine, theirs) = (&side.mine[family], &side.theirs[1 - family]);
                (side.vni, host_of(rng, mine), host_of(rng, theirs))
            }
            (Kind::Random(v6), _) => self.random_hosts(v6),
            (_, None) => self.random_hosts(false),
        };
        finish(&mut self.rng, vni, src, dst)
    }

    /// A random VPC's VNI, a random host of its space and a random host of another's.
    fn random_hosts(&mut self, v6: bool) -> (u32, IpAddr, IpAddr) {
        let rng = &mut self.rng;
        let vpcs = self.shape.vpc_count();
        let net = |vpc| if v6 { v6_net(vpc, 16) } else { v4_net(vpc, 16) };
        let src_vpc = rng.usize(..vpcs);
        let src = host_in(rng, &net(src_vpc));
        let dst_vpc = rng.usize(..vpcs);
        let dst = host_in(rng, &net(dst_vpc));
        (vni(src_vpc), src, dst)
    }
}

/// A packet between `src` and `dst`: TCP seven times in ten, UDP a quarter, ICMP (ICMPv6 from
/// an IPv6 source) otherwise; a random source port and a destination port of [`DST_PORTS`].
fn finish(rng: &mut fastrand::Rng, vni: u32, src: IpAddr, dst: IpAddr) -> Packet {
    use crate::packet::proto;
    let dst_port = DST_PORTS[rng.usize(..DST_PORTS.len())];
    match rng.u8(..20) {
        0..=13 => Packet::tcp(vni, src, rng.u16(1024..), dst, dst_port),
        14..=18 => Packet::udp(vni, src, rng.u16(1024..), dst, dst_port),
        _ if src.is_ipv6() => Packet::portless(vni, src, dst, proto::ICMPV6),
        _ => Packet::portless(vni, src, dst, proto::ICMP),
    }
}

/// The `VPCInfo` objects of VPCs `0..vpcs`.
fn write_vpcs(yaml: &mut String, vpcs: usize) {
    for i in 0..vpcs {
        let _ = writeln!(
            yaml,
            "kind: VPCInfo\nmetadata: {{name: vpc-{i:04}}}\nspec: {{vni: {}}}\n---",
            vni(i)
        );
    }
}

/// The VNI of VPC `i`.
fn vni(i: usize) -> u32 {
    2000 + i as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Table, Verdict};

    #[test]
    fn the_gateway_shape_is_what_it_says() {
        let shape = GatewayShape::with_peerings(1_000, true, 3);
        assert_eq!(shape.vpcs, 100);
        assert_eq!(GatewayShape::with_peerings(5_000, false, 3).vpcs, 250);
        let mut gateway = Gateway::new(shape);
        assert_eq!(gateway.yaml(), Gateway::new(shape).yaml());
        let config = crate::parse(gateway.yaml(), None).unwrap();
        assert_eq!((config.vpcs.len(), config.peerings.len()), (100, 1_000));
        let entries: Vec<_> = config
            .peerings
            .iter()
            .flat_map(|p| &p.sides)
            .flat_map(|s| &s.blocks)
            .flat_map(|b| &b.ips)
            .collect();
        assert!(entries.iter().all(|e| e.net.prefix_len() == 24));
        let ported = entries.iter().filter(|e| e.ports.is_some()).count();
        assert!(
            (entries.len() / 6..entries.len() / 3).contains(&ported),
            "{ported} of {} entries have ports",
            entries.len()
        );

        let table = Table::build(&config).unwrap();
        let packets = gateway.packets(20_000);
        let distinct: std::collections::HashSet<_> = packets.iter().collect();
        assert!(distinct.len() > 19_900, "{} distinct", distinct.len());
        let allowed = packets
            .iter()
            .filter(|p| matches!(table.lookup(p), Verdict::Allow(_)))
            .count();
        // 90 % are drawn between exposed prefixes; a ported entry (one in four) on either
        // side drops most of those that miss its range: about 0.9 * 0.8 * 0.8 pass.
        assert!(
            (10_000..16_000).contains(&allowed),
            "{allowed} allowed of 20,000"
        );
        // A batch of 256 touches most VPCs, as a gateway's does.
        let vnis: std::collections::HashSet<_> = packets[..256].iter().map(|p| p.src_vni).collect();
        assert!(vnis.len() > 80, "{} VPCs in a batch", vnis.len());
    }

    /// Which families a packet's two addresses are of.
    fn family(p: &Packet) -> &'static str {
        match (p.src.is_ipv6(), p.dst.is_ipv6()) {
            (false, false) => "ipv4",
            (true, true) => "ipv6",
            _ => "mixed",
        }
    }

    /// What a verdict is, in three words.
    fn kind(v: Verdict) -> &'static str {
        match v {
            Verdict::Allow(_) => "allow",
            Verdict::AllowAmbiguous(_) => "ambiguous",
            Verdict::Drop(_) => "drop",
        }
    }

    #[test]
    fn the_dual_stack_shape_is_what_it_says() {
        use std::collections::{BTreeMap, HashSet};
        let shape = GatewayShape::dual(1_000, true, 3);
        assert_eq!((shape.vpcs, shape.stack), (120, Stack::Dual));
        assert_eq!(GatewayShape::dual(5_000, true, 3).vpcs, 300);
        let mut gateway = Gateway::new(shape);
        assert_eq!(gateway.yaml(), Gateway::new(shape).yaml());
        let config = crate::parse(gateway.yaml(), None).unwrap();
        assert_eq!((config.vpcs.len(), config.peerings.len()), (120, 1_000));

        // Each side: one IPv4 block and one IPv6 block, each of its own VPC's space (or a
        // service prefix), some wide, some with a hole, some with a service prefix.
        let (mut blocks, mut holes, mut wide, mut services) = (0, 0, 0, 0);
        let (mut entries, mut ported) = (0, 0);
        for side in config.peerings.iter().flat_map(|p| &p.sides) {
            let vpc = side.vpc.0 as usize;
            let families: Vec<bool> = side
                .blocks
                .iter()
                .map(|b| b.ips[0].net.addr().is_ipv6())
                .collect();
            assert_eq!(families, [false, true]);
            for block in &side.blocks {
                blocks += 1;
                holes += usize::from(!block.ips_not.is_empty());
                let mut service_here = false;
                for entry in &block.ips {
                    entries += 1;
                    ported += usize::from(entry.ports.is_some());
                    let net = entry.net;
                    let v6 = net.addr().is_ipv6();
                    let own = if v6 { v6_net(vpc, 16) } else { v4_net(vpc, 16) };
                    if own.contains(&net) {
                        wide += usize::from(net == own);
                        assert!([20, 60, 24, 64].contains(&net.prefix_len()), "{net}");
                    } else {
                        assert!((0..SERVICES).any(|s| service(v6, s) == net), "{net}");
                        service_here = true;
                    }
                    assert!(
                        net.addr().is_ipv6() == v6
                            && block.ips.iter().all(|e| e.net.addr().is_ipv6() == v6)
                    );
                }
                services += usize::from(service_here);
                assert!(
                    block
                        .ips_not
                        .iter()
                        .all(|n| block.ips.iter().any(|e| e.net.contains(n) && e.net != *n))
                );
            }
        }
        // 4,000 blocks: a sixth with a hole, a tenth wide, an eighth with a service prefix;
        // a fifth of the entries ported.
        assert_eq!(blocks, 4_000);
        let near = |got: usize, of: usize, one_in: usize| {
            let want = of / one_in;
            assert!(
                got.abs_diff(want) < want / 5,
                "{got} of {of}, want about one in {one_in}"
            );
        };
        near(holes, blocks, HOLE_ONE_IN.into());
        near(wide, blocks, WIDE_ONE_IN.into());
        near(services, blocks, SERVICE_ONE_IN.into());
        near(ported, entries, 5);

        let table = Table::build(&config).unwrap();
        let packets = gateway.packets(20_000);
        let distinct: HashSet<_> = packets.iter().collect();
        assert!(distinct.len() > 19_990, "{} distinct", distinct.len());
        // 45 % + 2.5 % (random) of each family, 5 % mixed.
        let mut mix = BTreeMap::<&str, usize>::new();
        for p in &packets {
            *mix.entry(family(p)).or_default() += 1;
        }
        assert!((9_100..9_900).contains(&mix["ipv4"]), "{mix:?}");
        assert!((9_100..9_900).contains(&mix["ipv6"]), "{mix:?}");
        assert!((800..1_200).contains(&mix["mixed"]), "{mix:?}");

        // Every family reaches every kind of verdict.
        let mut seen = BTreeMap::<(&str, &str), usize>::new();
        for p in &packets {
            *seen.entry((family(p), kind(table.lookup(p)))).or_default() += 1;
        }
        for f in ["ipv4", "ipv6"] {
            let n = |k| seen.get(&(f, k)).copied().unwrap_or(0);
            assert!(n("allow") > 5_000, "{f}: {seen:?}");
            assert!(n("ambiguous") > 10, "{f}: {seen:?}");
            assert!(n("drop") > 1_000, "{f}: {seen:?}");
        }

        // The per-family streams are of their family and reach the same verdicts.
        for (traffic, f) in [(Traffic::Ipv4, "ipv4"), (Traffic::Ipv6, "ipv6")] {
            let packets = gateway.packets_of(traffic, 10_000);
            assert!(packets.iter().all(|p| family(p) == f), "{f}");
            let allowed = packets
                .iter()
                .filter(|p| !matches!(table.lookup(p), Verdict::Drop(_)))
                .count();
            let mixed_share = (seen[&(f, "allow")] + seen[&(f, "ambiguous")]) * 10_000 / mix[f];
            assert!(
                allowed.abs_diff(mixed_share) < 400,
                "{f}: {allowed} against {mixed_share}"
            );
        }

        // A batch of 256 touches most VPCs, as a gateway's does.
        let vnis: HashSet<_> = packets[..256].iter().map(|p| p.src_vni).collect();
        assert!(vnis.len() > 80, "{} VPCs in a batch", vnis.len());
    }

    /// The table's verdicts on the dual-stack workload are the oracle's.
    #[cfg(feature = "oracle")]
    #[test]
    fn dual_stack_verdicts_are_the_oracles() {
        let mut gateway = Gateway::new(GatewayShape::dual(300, true, 11));
        let config = crate::parse(gateway.yaml(), None).unwrap();
        let table = Table::build(&config).unwrap();
        for traffic in [Traffic::All, Traffic::Ipv4, Traffic::Ipv6] {
            for p in gateway.packets_of(traffic, 3_000) {
                let want = crate::oracle::verdict(&config, &p);
                assert_eq!(
                    crate::oracle::from_table(&table, table.lookup(&p)),
                    want,
                    "{p:?}"
                );
            }
        }
    }

    #[test]
    fn the_ipv4_shape_has_no_ipv6() {
        let mut gateway = Gateway::new(GatewayShape::with_peerings(200, true, 5));
        assert!(!gateway.yaml().contains("::"));
        assert!(gateway.packets(2_000).iter().all(|p| family(p) == "ipv4"));
        assert!(
            gateway
                .packets_of(Traffic::Ipv4, 2_000)
                .iter()
                .all(|p| family(p) == "ipv4")
        );
        let config = crate::parse(gateway.yaml(), None).unwrap();
        let table = Table::build(&config).unwrap();
        for p in gateway.packets_of(Traffic::Ipv6, 2_000) {
            assert_eq!(family(&p), "ipv6");
            assert!(matches!(table.lookup(&p), Verdict::Drop(_)), "{p:?}");
        }
    }
}
