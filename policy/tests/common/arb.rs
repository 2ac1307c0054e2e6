//! proptest strategies for small configs full of overlap, and for packets aimed at them.
//! Configs are generated valid by construction and rendered to YAML, so the parser and the
//! validator see them as a user would write them.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowgate_policy::Packet;
use flowgate_policy::packet::proto;
use proptest::prelude::*;

const PORT_LISTS: &[&str] = &["80", "80-90", "22,443", "1000-2000", "0-1023", "443"];
const PACKET_PORTS: &[u16] = &[
    0, 22, 53, 79, 80, 85, 90, 91, 443, 1000, 1500, 2000, 2001, 65535,
];
const V4_LENS: &[u8] = &[16, 22, 22, 23, 24, 25, 26, 32];
const V6_LENS: &[u8] = &[112, 118, 118, 120, 121, 124, 128];
/// IPv6 lengths of [`Plan::Upper`]: the ones above, 64 shorter, and host routes.
const V6_UPPER_LENS: &[u8] = &[48, 54, 54, 56, 57, 60, 64, 64, 128];

/// Where IPv6 prefixes differ: within the lowest bits of one /64 (every boundary inside it),
/// or in the upper half of the address (boundaries of /48 to /64, a few host routes), as
/// sites allocate them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Low,
    Upper,
}

/// Which pool a prefix or an address comes from.
#[derive(Debug, Clone, Copy)]
enum Pool {
    Private,
    Public,
}

fn addr(plan: Plan, v6: bool, pool: Pool, bits: u32) -> IpAddr {
    let at = if plan == Plan::Upper { 64 } else { 0 };
    match (v6, pool) {
        (false, Pool::Private) => IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (bits & 0x3ff))),
        (false, Pool::Public) => IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 | (bits & 0x1ff))),
        (true, Pool::Private) => IpAddr::V6(Ipv6Addr::from(
            0xfd00_u128 << 112 | u128::from(bits & 0x3ff) << at,
        )),
        (true, Pool::Public) => IpAddr::V6(Ipv6Addr::from(
            0xfd01_u128 << 112 | u128::from(bits & 0x1ff) << at,
        )),
    }
}

fn prefix(plan: Plan, v6: bool, pool: Pool, bits: u32, len_pick: usize) -> ipnet::IpNet {
    let len = match (v6, plan) {
        (true, Plan::Low) => V6_LENS[len_pick % V6_LENS.len()],
        (true, Plan::Upper) => V6_UPPER_LENS[len_pick % V6_UPPER_LENS.len()],
        (false, _) => V4_LENS[len_pick % V4_LENS.len()],
    };
    ipnet::IpNet::new(addr(plan, v6, pool, bits), len)
        .expect("length fits the family")
        .trunc()
}

/// One list of a block (`ips` or `as`): cidrs with optional ports, and an optional `not` strictly
/// inside one of the cidrs.
#[derive(Debug, Clone)]
struct ListSeed {
    cidrs: Vec<(u32, usize, Option<usize>)>,
    not: Option<(usize, u8, u32)>,
}

fn list_seed() -> impl Strategy<Value = ListSeed> {
    (
        prop::collection::vec(
            (
                any::<u32>(),
                any::<usize>(),
                prop::option::weighted(0.35, any::<usize>()),
            ),
            1..=3,
        ),
        prop::option::weighted(0.3, (any::<usize>(), 1u8..=4, any::<u32>())),
    )
        .prop_map(|(cidrs, not)| ListSeed { cidrs, not })
}

#[derive(Debug, Clone)]
struct BlockSeed {
    v6: bool,
    ips: ListSeed,
    as_: Option<ListSeed>,
    default: bool,
}

/// The address families of a generated config and its packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Families {
    /// A block is IPv6 with this probability, and so is a packet's address not aimed at the
    /// config's own prefixes.
    Weighted(f64),
    /// Every side has two to four blocks, IPv4 and IPv6 in turn (so both families); packets
    /// are half IPv6, and one in five has a destination of the other family.
    Dual,
}

impl Families {
    /// Mostly IPv4, as the first generators were.
    pub const IPV4_HEAVY: Families = Families::Weighted(0.25);
    /// Mostly IPv6.
    pub const IPV6_HEAVY: Families = Families::Weighted(0.75);

    fn v6(self) -> f64 {
        match self {
            Families::Weighted(v6) => v6,
            Families::Dual => 0.5,
        }
    }
}

fn block_seed(families: Families) -> impl Strategy<Value = BlockSeed> {
    (
        prop::bool::weighted(families.v6()),
        list_seed(),
        prop::option::weighted(0.25, list_seed()),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(v6, ips, as_, default)| BlockSeed {
            v6,
            ips,
            as_,
            default,
        })
}

/// A generated configuration, as YAML, with the VNIs it uses.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub yaml: String,
    pub vnis: Vec<u32>,
    /// Every prefix the config names, so packets can aim at them.
    pub nets: Vec<ipnet::IpNet>,
    /// The private prefixes each VPC exposes (by VPC index), to aim sources at.
    pub own: Vec<Vec<ipnet::IpNet>>,
    /// Where its IPv6 prefixes differ.
    pub plan: Plan,
}

pub fn config() -> impl Strategy<Value = GenConfig> {
    config_of(Families::IPV4_HEAVY)
}

/// A config of `families`.
pub fn config_of(families: Families) -> impl Strategy<Value = GenConfig> {
    config_planned(families, Plan::Low)
}

/// A config of `families` with IPv6 prefixes of `plan`.
pub fn config_planned(families: Families, plan: Plan) -> impl Strategy<Value = GenConfig> {
    let blocks = match families {
        Families::Weighted(_) => 1..=3usize,
        Families::Dual => 2..=4,
    };
    (2usize..=4)
        .prop_flat_map(move |n| {
            let pair = (0..n, 0..n);
            let side = || prop::collection::vec(block_seed(families), blocks.clone());
            (
                Just(n),
                prop::collection::vec((pair, side(), side()), 2..=7),
            )
        })
        .prop_map(move |(n, mut peerings)| {
            if families == Families::Dual {
                for (_, a, b) in &mut peerings {
                    for (i, block) in a.iter_mut().chain(b.iter_mut()).enumerate() {
                        block.v6 = i % 2 == 1;
                    }
                }
            }
            render(plan, n, peerings)
        })
}

/// A peering to render: the two VPC indices and each side's blocks.
type PeeringSeed = ((usize, usize), Vec<BlockSeed>, Vec<BlockSeed>);

fn render(plan: Plan, n: usize, peerings: Vec<PeeringSeed>) -> GenConfig {
    let mut yaml = String::new();
    let vnis: Vec<u32> = (0..n).map(|i| 100 + i as u32).collect();
    for (i, vni) in vnis.iter().enumerate() {
        let _ = write!(
            yaml,
            "kind: VPCInfo\nmetadata: {{name: v{i}}}\nspec: {{vni: {vni}}}\n---\n"
        );
    }
    let mut nets = Vec::new();
    let mut own = vec![Vec::new(); n];
    let mut seen = std::collections::HashSet::new();
    let mut faced_by_default = std::collections::HashSet::new();
    for ((a, b), side_a, side_b) in peerings {
        let (a, b) = (a.min(b), a.max(b));
        if a == b || !seen.insert((a, b)) {
            continue;
        }
        let _ = write!(
            yaml,
            "kind: Peering\nmetadata: {{name: v{a}--v{b}}}\nspec:\n  peering:\n"
        );
        for (me, other, blocks) in [(a, b, side_a), (b, a, side_b)] {
            let _ = write!(yaml, "    v{me}:\n      expose:\n");
            for block in blocks {
                let default = block.default && faced_by_default.insert(other);
                let before = nets.len();
                render_block(plan, &mut yaml, &block, default, &mut nets);
                own[me].extend(nets[before..].iter().filter(|n| !is_public(n)));
            }
            if yaml.ends_with("expose:\n") {
                yaml.push_str("        []\n");
            }
        }
        yaml.push_str("---\n");
    }
    GenConfig {
        yaml,
        vnis,
        nets,
        own,
        plan,
    }
}

fn is_public(net: &ipnet::IpNet) -> bool {
    match net {
        ipnet::IpNet::V4(n) => n.network().octets()[0] == 192,
        ipnet::IpNet::V6(n) => n.network().segments()[0] == 0xfd01,
    }
}

fn render_block(
    plan: Plan,
    yaml: &mut String,
    block: &BlockSeed,
    default: bool,
    nets: &mut Vec<ipnet::IpNet>,
) {
    if default {
        yaml.push_str("        - default: true\n");
        return;
    }
    yaml.push_str("        - ips:\n");
    render_list(plan, yaml, block.v6, Pool::Private, &block.ips, true, nets);
    if let Some(as_) = &block.as_ {
        yaml.push_str("          as:\n");
        render_list(plan, yaml, block.v6, Pool::Public, as_, false, nets);
        yaml.push_str("          nat: {masquerade: {}}\n");
    }
}

fn render_list(
    plan: Plan,
    yaml: &mut String,
    v6: bool,
    pool: Pool,
    list: &ListSeed,
    private: bool,
    all: &mut Vec<ipnet::IpNet>,
) {
    let mut nets = Vec::new();
    for &(bits, len, ports) in &list.cidrs {
        let net = prefix(plan, v6, pool, bits, len);
        nets.push(net);
        let _ = writeln!(yaml, "            - cidr: \"{net}\"");
        if let Some(p) = ports.filter(|_| private || v6 || bits % 2 == 0) {
            let _ = writeln!(
                yaml,
                "              ports: \"{}\"",
                PORT_LISTS[p % PORT_LISTS.len()]
            );
        }
    }
    all.extend(&nets);
    if let Some((which, extra, bits)) = list.not {
        let base = nets[which % nets.len()];
        let len = (base.prefix_len() + extra).min(base.max_prefix_len());
        if len > base.prefix_len() {
            // An address inside `base`, then the longer prefix around it.
            let not = ipnet::IpNet::new(host_in(plan, &base, bits), len)
                .expect("length fits")
                .trunc();
            all.push(not);
            let _ = writeln!(yaml, "            - not: \"{not}\"");
        }
    }
}

/// A host inside `net` (of [`Plan::Upper`], `bits` spread over both halves).
fn host_in(plan: Plan, net: &ipnet::IpNet, bits: u32) -> IpAddr {
    let bits = match plan {
        Plan::Low => u128::from(bits),
        Plan::Upper => u128::from(bits) << 40 | u128::from(bits),
    };
    match net {
        ipnet::IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(
            u32::from(n.network()) | (bits as u32 & !u32::from(n.netmask())),
        )),
        ipnet::IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(
            u128::from(n.network()) | (bits & !u128::from(n.netmask())),
        )),
    }
}

/// A packet from one of the VNIs (or, rarely, an unknown one), mostly to and from addresses
/// inside the config's own prefixes, sometimes near them or far away; one in seven has a
/// destination of the other family than its source (inside the config's prefixes of that
/// family when it has some).
pub fn packet(config: &GenConfig) -> impl Strategy<Value = Packet> + use<> {
    packet_of(config, Families::IPV4_HEAVY)
}

/// A packet for `config` of `families`: as [`packet`], IPv6 with `families`' weight where it
/// is not aimed at the config's own prefixes.
pub fn packet_of(config: &GenConfig, families: Families) -> impl Strategy<Value = Packet> + use<> {
    let config = config.clone();
    let unknown = prop::bool::weighted(0.05);
    let end = (0u8..10, any::<usize>(), any::<u32>());
    let mixed = match families {
        Families::Weighted(_) => 1.0 / 7.0,
        Families::Dual => 0.2,
    };
    let picks = (
        any::<usize>(),
        unknown,
        prop::bool::weighted(families.v6()),
        end.clone(),
        end,
        0u8..5,
        any::<(usize, usize)>(),
        prop::bool::weighted(mixed),
    );
    picks.prop_map(
        move |(
            vpc,
            unknown,
            v6,
            (src_kind, src_pick, src_bits),
            (dst_kind, dst_pick, dst_bits),
            proto_pick,
            (sp, dp),
            mixed,
        )| {
            let vpc = vpc % config.vnis.len();
            let vni = if unknown {
                config.vnis.iter().max().copied().unwrap_or(0) + 1
            } else {
                config.vnis[vpc]
            };
            let own = &config.own[vpc];
            let plan = config.plan;
            let src = match src_kind {
                0..=7 if !own.is_empty() => host_in(plan, &own[src_pick % own.len()], src_bits),
                0..=4 => addr(plan, v6, Pool::Private, src_bits),
                5..=8 => addr(plan, v6, Pool::Public, src_bits),
                _ if v6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, src_bits as u16)),
                _ => IpAddr::V4(Ipv4Addr::new(8, 8, 8, src_bits as u8)),
            };
            let v6 = src.is_ipv6() != mixed;
            let all: Vec<&ipnet::IpNet> = config
                .nets
                .iter()
                .filter(|n| matches!(n, ipnet::IpNet::V6(_)) == v6)
                .collect();
            let dst = match dst_kind {
                0..=6 if !all.is_empty() => host_in(plan, all[dst_pick % all.len()], dst_bits),
                0..=4 => addr(plan, v6, Pool::Private, dst_bits),
                5..=8 => addr(plan, v6, Pool::Public, dst_bits),
                _ if v6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, dst_bits as u16)),
                _ => IpAddr::V4(Ipv4Addr::new(8, 8, 8, dst_bits as u8)),
            };
            let (sport, dport) = (
                PACKET_PORTS[sp % PACKET_PORTS.len()],
                PACKET_PORTS[dp % PACKET_PORTS.len()],
            );
            match proto_pick {
                0 | 1 => Packet::tcp(vni, src, sport, dst, dport),
                2 => Packet::udp(vni, src, sport, dst, dport),
                3 => Packet::portless(
                    vni,
                    src,
                    dst,
                    if src.is_ipv6() {
                        proto::ICMPV6
                    } else {
                        proto::ICMP
                    },
                ),
                _ => Packet::portless(vni, src, dst, 47),
            }
        },
    )
}

/// A generated config with a batch of packets for it.
pub fn config_and_packets(max_packets: usize) -> impl Strategy<Value = (GenConfig, Vec<Packet>)> {
    config_and_packets_of(Families::IPV4_HEAVY, max_packets)
}

/// A generated config of `families` with a batch of packets for it.
pub fn config_and_packets_of(
    families: Families,
    max_packets: usize,
) -> impl Strategy<Value = (GenConfig, Vec<Packet>)> {
    config_and_packets_planned(families, Plan::Low, max_packets)
}

/// A generated config of `families`, its IPv6 prefixes of `plan`, with a batch of packets.
pub fn config_and_packets_planned(
    families: Families,
    plan: Plan,
    max_packets: usize,
) -> impl Strategy<Value = (GenConfig, Vec<Packet>)> {
    config_planned(families, plan).prop_flat_map(move |c| {
        let packets = prop::collection::vec(packet_of(&c, families), 1..=max_packets);
        (Just(c), packets)
    })
}
