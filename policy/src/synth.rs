//! Deterministic generators of large configurations and of traffic for them, for benchmarks,
//! demos and soak tests. The same seed gives the same output on every machine.
//!
//! The address plan: VPC `i` owns `10.0.0.0/8`'s `i`-th /20 (and `fd00:0:i::/48` for IPv6).
//! Each side of a peering exposes one or two of its VPC's five subnets, so a VPC's peerings
//! overlap as they do in real fabrics; one block in four also exposes a shared service /24 of
//! `172.16.0.0/22`, which makes destinations ambiguous; some blocks have ports, some are NATed
//! to `100.64.0.0/10`, and every twentieth VPC is an external network with a `default: true`
//! block.
//!
//! [`Gateway`] is the other shape, the one the benchmarks measure on: a gateway's many VPCs
//! and distinct packets spread over all of them.

mod gateway;

pub use gateway::{Gateway, GatewayShape, Stack, Traffic};

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::model::Config;
use crate::packet::Packet;

/// The shape of a generated configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// Number of VPCs (at most 4096).
    pub vpcs: usize,
    /// Number of peerings (at most `vpcs * (vpcs - 1) / 2`).
    pub peerings: usize,
    /// Seed of the generator.
    pub seed: u64,
}

impl Scale {
    /// `peerings` peerings among as many VPCs as give each about 20 peers (100 VPCs for 1,000
    /// peerings), and never fewer than the peerings need.
    pub fn with_peerings(peerings: usize, seed: u64) -> Self {
        let needed = (1..)
            .find(|v: &usize| v * (v - 1) / 2 >= peerings + peerings / 4)
            .unwrap_or(2);
        Scale {
            vpcs: (peerings / 10).max(needed).clamp(2, 4096),
            peerings,
            seed,
        }
    }
}

/// A configuration of the given scale, as YAML a user could have written.
pub fn config_yaml(scale: Scale) -> String {
    let mut rng = fastrand::Rng::with_seed(scale.seed);
    let vpcs = scale.vpcs.clamp(2, 4096);
    let peerings = scale.peerings.min(vpcs * (vpcs - 1) / 2);
    let mut out = String::with_capacity(peerings * 400);
    for i in 0..vpcs {
        let _ = writeln!(
            out,
            "kind: VPCInfo\nmetadata: {{name: {}}}\nspec: {{vni: {}}}\n---",
            vpc_name(i),
            1000 + i
        );
    }
    let mut pairs = std::collections::HashSet::new();
    let mut faced_by_default = vec![false; vpcs];
    let external = |i: usize| i % 20 == 19;
    let mut public_next: u32 = 0;
    while pairs.len() < peerings {
        let (a, b) = new_pair(&mut rng, vpcs, &mut pairs);
        let _ = writeln!(
            out,
            "kind: Peering\nmetadata: {{name: {}--{}}}\nspec:\n  peering:",
            vpc_name(a),
            vpc_name(b)
        );
        for (me, other) in [(a, b), (b, a)] {
            let _ = writeln!(out, "    {}:\n      expose:", vpc_name(me));
            if external(me) && !faced_by_default[other] {
                faced_by_default[other] = true;
                out.push_str("        - default: true\n");
                continue;
            }
            let v6 = rng.u8(..10) == 0;
            let _ = writeln!(out, "        - ips:");
            for _ in 0..rng.usize(1..=2) {
                let net = random_subnet(&mut rng, me, v6);
                let _ = writeln!(out, "            - cidr: \"{net}\"");
                if rng.u8(..5) == 0 {
                    let ports = ["80", "443", "22,80-90", "1024-65535", "53"][rng.usize(..5)];
                    let _ = writeln!(out, "              ports: \"{ports}\"");
                }
            }
            if !v6 && rng.u8(..4) == 0 {
                // A shared service prefix that several VPCs expose (SPEC 3.1's overlap).
                let _ = writeln!(out, "            - cidr: \"172.16.{}.0/24\"", rng.u8(..4));
            }
            if !v6 && rng.u8(..10) == 0 {
                // NAT to a public /24 of its own: 100.64.0.0/10 holds 16,384 of them.
                let public = Ipv4Addr::from(0x6440_0000 + ((public_next % 16_384) << 8));
                public_next += 1;
                let _ = writeln!(
                    out,
                    "          as: [{{cidr: \"{public}/24\"}}]\n          nat: {{masquerade: {{}}}}"
                );
            }
        }
        out.push_str("---\n");
    }
    out
}

/// A pair of distinct VPCs below `vpcs`, lower first, drawn until it is not in `pairs` (then
/// added). `pairs` must not hold every pair already.
fn new_pair(
    rng: &mut fastrand::Rng,
    vpcs: usize,
    pairs: &mut std::collections::HashSet<(usize, usize)>,
) -> (usize, usize) {
    loop {
        let (a, b) = (rng.usize(..vpcs), rng.usize(..vpcs));
        let (a, b) = (a.min(b), a.max(b));
        if a != b && pairs.insert((a, b)) {
            return (a, b);
        }
    }
}

fn vpc_name(i: usize) -> String {
    format!("vpc-{i:04}")
}

/// One of VPC `vpc`'s five subnets: its /20 or one of the four /22s in it (for IPv6, its /60
/// or one of four /62s). Peerings of one VPC pick among the same few, so they overlap.
fn random_subnet(rng: &mut fastrand::Rng, vpc: usize, v6: bool) -> IpNet {
    let pick = rng.u8(..5);
    let (quarter, extra) = if pick == 0 {
        (0, 0)
    } else {
        (u32::from(pick - 1), 2)
    };
    let net = if v6 {
        let base = (0xfd00_u128 << 112) | ((vpc as u128) << 80) | (u128::from(quarter) << 66);
        IpNet::new(IpAddr::V6(Ipv6Addr::from(base)), 60 + extra)
    } else {
        let base = 0x0a00_0000 | ((vpc as u32) << 12) | (quarter << 10);
        IpNet::new(IpAddr::V4(Ipv4Addr::from(base)), 20 + extra)
    };
    net.unwrap_or_default()
}

/// `count` packets for `config`: most between the prefixes two peered VPCs expose to each
/// other (allowed or ambiguous), the rest near misses of every kind (wrong port, a prefix not
/// exposed, an unknown VNI).
pub fn packets(config: &Config, count: usize, seed: u64) -> Vec<Packet> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::with_capacity(count);
    if config.peerings.is_empty() {
        return out;
    }
    while out.len() < count {
        let peering = &config.peerings[rng.usize(..config.peerings.len())];
        let (mine, theirs) = if rng.bool() {
            (&peering.sides[0], &peering.sides[1])
        } else {
            (&peering.sides[1], &peering.sides[0])
        };
        let src_nets: Vec<IpNet> = mine
            .blocks
            .iter()
            .flat_map(|b| b.ips.iter().map(|e| e.net))
            .collect();
        let dst_nets: Vec<IpNet> = theirs
            .blocks
            .iter()
            .flat_map(|b| b.public().0.iter().map(|e| e.net))
            .collect();
        let src = match src_nets.get(rng.usize(..src_nets.len().max(1))) {
            Some(net) if rng.u8(..10) != 0 => host_in(&mut rng, net),
            _ => IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | rng.u32(..1 << 24))),
        };
        let dst = match dst_nets.get(rng.usize(..dst_nets.len().max(1))) {
            Some(net) if rng.u8(..10) != 0 && net.addr().is_ipv6() == src.is_ipv6() => {
                host_in(&mut rng, net)
            }
            _ if src.is_ipv6() => {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, rng.u16(..)))
            }
            _ => IpAddr::V4(Ipv4Addr::from(rng.u32(..))),
        };
        let vni = if rng.u8(..50) == 0 {
            0
        } else {
            config.vpc(mine.vpc).vni
        };
        let port = |rng: &mut fastrand::Rng| [22, 53, 80, 85, 443, 8080][rng.usize(..6)];
        out.push(match rng.u8(..10) {
            0..=5 => Packet::tcp(vni, src, rng.u16(1024..), dst, port(&mut rng)),
            6..=8 => Packet::udp(vni, src, rng.u16(1024..), dst, port(&mut rng)),
            _ => Packet::portless(vni, src, dst, if src.is_ipv6() { 58 } else { 1 }),
        });
    }
    out
}

fn host_in(rng: &mut fastrand::Rng, net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(
            u32::from(n.network()) | (rng.u32(..) & !u32::from(n.netmask())),
        )),
        IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(
            u128::from(n.network()) | (rng.u128(..) & !u128::from(n.netmask())),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Table, Verdict};

    #[test]
    fn generated_configs_are_valid_deterministic_and_mixed() {
        let scale = Scale::with_peerings(300, 7);
        assert_eq!(scale.vpcs, 30);
        let yaml = config_yaml(scale);
        assert_eq!(yaml, config_yaml(scale));
        let config = crate::parse(&yaml, None).unwrap();
        assert_eq!(config.peerings.len(), 300);
        let table = Table::build(&config).unwrap();
        let packets = packets(&config, 5000, 1);
        assert_eq!(packets, super::packets(&config, 5000, 1));
        let mut kinds = [0usize; 3];
        for p in &packets {
            kinds[match table.lookup(p) {
                Verdict::Allow(_) => 0,
                Verdict::AllowAmbiguous(_) => 1,
                Verdict::Drop(_) => 2,
            }] += 1;
        }
        assert!(
            kinds.iter().all(|&k| k > 25),
            "allow / ambiguous / drop: {kinds:?}"
        );
    }
}
