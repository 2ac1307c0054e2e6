//! A workload shaped like a VPC gateway's, for honest benchmarks: many VPCs, each owning
//! sixteen /24s, random peerings that expose one to three of them, and traffic spread over
//! every VPC so that consecutive packets share nothing a branch predictor could learn.
//!
//! - VPC `i` owns the sixteen /24s of `10.0.0.0/8`'s `i`-th /20 (`10.0.16.0/20` is VPC 1's).
//! - Each side of a peering exposes one to three of its VPC's /24s; with `ports`, one entry in
//!   four carries a port range.
//! - Nine packets in ten go from a host of a prefix one side exposes to a host of a prefix the
//!   other side exposes (most allowed, some dropped on a port); the tenth goes from a random host of a random VPC to a random host of the plan.
//!   Every packet is drawn afresh, so a million of them are a million distinct 5-tuples.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

use crate::packet::Packet;

/// The shape of a gateway workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayShape {
    /// Number of VPCs (2 to 4,096: the /20s of `10.0.0.0/8`).
    pub vpcs: usize,
    /// Number of peerings (at most `vpcs * (vpcs - 1) / 2`).
    pub peerings: usize,
    /// Whether one entry in four carries a port range.
    pub ports: bool,
    /// Seed of the generator.
    pub seed: u64,
}

impl GatewayShape {
    /// The shapes the benchmarks name: 100 VPCs for up to 1,000 peerings, 250 for up to
    /// 5,000, and beyond that as many as give each VPC about 40 peers; never fewer than the
    /// peerings need.
    pub fn with_peerings(peerings: usize, ports: bool, seed: u64) -> Self {
        let needed = (2..4096)
            .find(|v: &usize| v * (v - 1) / 2 >= peerings + peerings / 4)
            .unwrap_or(4096);
        let usual = if peerings <= 1_000 {
            100
        } else if peerings <= 5_000 {
            250
        } else {
            peerings / 20
        };
        GatewayShape {
            vpcs: usual.max(needed).clamp(2, 4096),
            peerings,
            ports,
            seed,
        }
    }

    fn vpc_count(&self) -> usize {
        self.vpcs.clamp(2, 4096)
    }
}

/// Port ranges a quarter of the entries carry: services, ephemeral ranges, a few singles.
const PORT_RANGES: [&str; 6] = ["443", "80,443", "8000-8999", "1024-65535", "53", "22"];
/// Destination ports of generated TCP and UDP packets: inside and outside those ranges.
const DST_PORTS: [u16; 8] = [22, 53, 80, 443, 3306, 8080, 8443, 50_000];

/// One side of a generated peering: the source VPC's VNI and the /24s each side exposes.
#[derive(Debug, Clone)]
struct Side {
    vni: u32,
    mine: Vec<u32>,
    theirs: Vec<u32>,
}

/// A generated gateway workload: its configuration as YAML, and an endless source of packets.
#[derive(Debug, Clone)]
pub struct Gateway {
    shape: GatewayShape,
    yaml: String,
    sides: Vec<Side>,
    rng: fastrand::Rng,
}

/// The first address of VPC `vpc`'s `k`-th /24.
fn subnet(vpc: usize, k: u32) -> u32 {
    0x0a00_0000 | ((vpc as u32) << 12) | (k << 8)
}

impl Gateway {
    /// Generates the configuration of `shape`; packets come from [`Gateway::packets`].
    pub fn new(shape: GatewayShape) -> Self {
        let mut rng = fastrand::Rng::with_seed(shape.seed);
        let vpcs = shape.vpc_count();
        let peerings = shape.peerings.min(vpcs * (vpcs - 1) / 2);
        let mut yaml = String::with_capacity(peerings * 300 + vpcs * 80);
        for i in 0..vpcs {
            let _ = writeln!(
                yaml,
                "kind: VPCInfo\nmetadata: {{name: vpc-{i:04}}}\nspec: {{vni: {}}}\n---",
                vni(i)
            );
        }
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
            rng: fastrand::Rng::with_seed(shape.seed ^ 0x7a11_1c5e_ed00_0001),
        }
    }

    /// The configuration, as YAML a user could have written.
    pub fn yaml(&self) -> &str {
        &self.yaml
    }

    /// The next `count` packets of the endless stream.
    pub fn packets(&mut self, count: usize) -> Vec<Packet> {
        (0..count).map(|_| self.packet()).collect()
    }

    /// The next packet of the stream.
    pub fn packet(&mut self) -> Packet {
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
        let (src, dst) = (IpAddr::V4(src.into()), IpAddr::V4(dst.into()));
        let dst_port = DST_PORTS[rng.usize(..DST_PORTS.len())];
        match rng.u8(..20) {
            0..=13 => Packet::tcp(vni, src, rng.u16(1024..), dst, dst_port),
            14..=18 => Packet::udp(vni, src, rng.u16(1024..), dst, dst_port),
            _ => Packet::portless(vni, src, dst, crate::packet::proto::ICMP),
        }
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
}
