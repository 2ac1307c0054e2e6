//! The worked examples of SPEC sections 3.1 to 3.3, one test each, with the verdicts the spec
//! gives (or derives from its set definitions, as explained next to each case).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use flowgate_policy::packet::proto;
use flowgate_policy::{Packet, Table, parse};

fn table(yaml: &str) -> Table {
    let config = parse(yaml, None).unwrap_or_else(|e| panic!("config refused: {e}"));
    Table::build(&config).unwrap_or_else(|e| panic!("table refused: {e}"))
}

/// `"B 2.0.0.7:1000 -> 1.0.1.9:80 tcp"`, `"B 2.0.0.7 -> 1.0.1.9 icmp"`.
fn packet(t: &Table, text: &str) -> Packet {
    let words: Vec<&str> = text.split_whitespace().collect();
    let [vpc, src, "->", dst, proto_name] = words[..] else {
        panic!("bad packet {text}")
    };
    let vni = t.vpc(t.vpc_by_name(vpc).unwrap()).vni;
    let split = |s: &str| match s.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') || ip.starts_with('[') => (
            ip.trim_matches(['[', ']']).parse().unwrap(),
            Some(port.parse().unwrap()),
        ),
        _ => (s.trim_matches(['[', ']']).parse().unwrap(), None),
    };
    let ((src, sport), (dst, dport)) = (split(src), split(dst));
    match proto_name {
        "tcp" => Packet::tcp(vni, src, sport.unwrap(), dst, dport.unwrap()),
        "udp" => Packet::udp(vni, src, sport.unwrap(), dst, dport.unwrap()),
        "icmp" => Packet::portless(vni, src, dst, proto::ICMP),
        "icmpv6" => Packet::portless(vni, src, dst, proto::ICMPV6),
        other => panic!("unknown protocol {other}"),
    }
}

fn assert_verdicts(t: &Table, cases: &[(&str, &str)]) {
    for (text, expected) in cases {
        let verdict = t.lookup(&packet(t, text));
        assert_eq!(t.verdict_text(verdict), *expected, "packet {text}");
    }
}

fn vpcs(names: &[(&str, u32)]) -> String {
    names
        .iter()
        .map(|(name, vni)| {
            format!("apiVersion: gateway.githedgehog.com/v1alpha1\nkind: VPCInfo\nmetadata: {{name: {name}}}\nspec: {{vni: {vni}}}\n---\n")
        })
        .collect()
}

fn peering(a: &str, a_expose: &str, b: &str, b_expose: &str) -> String {
    format!(
        "apiVersion: gateway.githedgehog.com/v1alpha1\nkind: Peering\nmetadata: {{name: {a}--{b}}}\nspec:\n  peering:\n    {a}:\n      expose: {a_expose}\n    {b}:\n      expose: {b_expose}\n---\n"
    )
}

fn spec_3_1(a_prefix: &str) -> String {
    vpcs(&[("A", 1), ("B", 2), ("C", 3)])
        + &peering(
            "A",
            &format!("[{{ips: [{{cidr: {a_prefix}}}]}}]"),
            "B",
            "[{ips: [{cidr: 2.0.0.0/24}]}]",
        )
        + &peering(
            "B",
            "[{ips: [{cidr: 2.0.0.0/24}]}]",
            "C",
            "[{ips: [{cidr: 1.0.0.0/24}]}]",
        )
}

#[test]
fn spec_3_1_overlapping_but_distinct_prefixes() {
    let t = table(&spec_3_1("1.0.0.0/23"));
    assert_verdicts(
        &t,
        &[
            ("B 2.0.0.7:1000 -> 1.0.1.9:80 tcp", "allow(A)"),
            (
                "B 2.0.0.7:1000 -> 1.0.0.9:80 tcp",
                "allow-ambiguous([A, C])",
            ),
            ("A 1.0.0.9:1000 -> 2.0.0.7:80 tcp", "allow(B)"),
            ("C 1.0.0.9:1000 -> 2.0.0.7:80 tcp", "allow(B)"),
            (
                "B 2.0.1.7:1000 -> 1.0.1.9:80 tcp",
                "drop(source-not-exposed)",
            ),
            (
                "B 2.0.0.7:1000 -> 1.0.2.9:80 tcp",
                "drop(destination-not-exposed)",
            ),
            // Port-less entries match port-less packets too.
            ("B 2.0.0.7 -> 1.0.1.9 icmp", "allow(A)"),
            ("B 2.0.0.7 -> 1.0.0.9 icmp", "allow-ambiguous([A, C])"),
        ],
    );
}

/// A packet whose addresses are of two families is no IP packet, but the set definitions still
/// judge it: an IPv6 address is in no IPv4 set, so the half that is IPv6 is never exposed.
#[test]
fn mixed_family_packets_follow_the_set_definitions() {
    let t = table(&spec_3_1("1.0.0.0/23"));
    assert_verdicts(
        &t,
        &[
            (
                "B 2.0.0.7:1000 -> [2001:db8::9]:80 tcp",
                "drop(destination-not-exposed)",
            ),
            (
                "B [2001:db8::7]:1000 -> 1.0.1.9:80 tcp",
                "drop(source-not-exposed)",
            ),
            ("B 2001:db8::7 -> 1.0.0.9 icmp", "drop(source-not-exposed)"),
        ],
    );
}

#[test]
fn spec_3_1_equal_prefixes_make_every_packet_ambiguous() {
    let t = table(&spec_3_1("1.0.0.0/24"));
    assert_verdicts(
        &t,
        &[
            (
                "B 2.0.0.7:1000 -> 1.0.0.1:80 tcp",
                "allow-ambiguous([A, C])",
            ),
            (
                "B 2.0.0.7:1000 -> 1.0.0.255:80 tcp",
                "allow-ambiguous([A, C])",
            ),
            (
                "B 2.0.0.7:1000 -> 1.0.1.9:80 tcp",
                "drop(destination-not-exposed)",
            ),
            (
                "B 2.0.0.7:1000 -> 1.0.1.255:80 tcp",
                "drop(destination-not-exposed)",
            ),
        ],
    );
}

/// SPEC 3.2: X exposes 10.0.0.0/16 to Y, and 10.0.1.0/24 ports 80-90 to Z.
fn spec_3_2(y_exposes: &str) -> String {
    vpcs(&[("X", 10), ("Y", 20), ("Z", 30)])
        + &peering("X", "[{ips: [{cidr: 10.0.0.0/16}]}]", "Y", y_exposes)
        + &peering(
            "X",
            "[{ips: [{cidr: 10.0.1.0/24, ports: 80-90}]}]",
            "Z",
            "[{ips: [{cidr: 30.0.0.0/16}]}]",
        )
}

#[test]
fn spec_3_2_source_ports_restrict_their_peering_only() {
    let t = table(&spec_3_2("[{ips: [{cidr: 20.0.0.0/16}]}]"));
    assert_verdicts(
        &t,
        &[
            ("X 10.0.1.5:85 -> 30.0.0.1:443 tcp", "allow(Z)"),
            ("X 10.0.1.5:80 -> 30.0.0.1:443 udp", "allow(Z)"),
            ("X 10.0.1.5:90 -> 30.0.0.1:443 tcp", "allow(Z)"),
            // Port 22 is outside X–Z's source ports; X–Y offers the source, but not Z's prefix.
            (
                "X 10.0.1.5:22 -> 30.0.0.1:443 tcp",
                "drop(destination-not-exposed)",
            ),
            (
                "X 10.0.1.5:91 -> 30.0.0.1:443 tcp",
                "drop(destination-not-exposed)",
            ),
            // A port-restricted entry never matches ICMP.
            (
                "X 10.0.1.5 -> 30.0.0.1 icmp",
                "drop(destination-not-exposed)",
            ),
            ("X 10.0.1.5 -> 20.0.0.1 icmp", "allow(Y)"),
            ("X 10.0.1.5:22 -> 20.0.0.1:22 tcp", "allow(Y)"),
            // From Z, X's side of X–Z is the destination: port-restricted there as well.
            ("Z 30.0.0.1:5000 -> 10.0.1.5:85 tcp", "allow(X)"),
            (
                "Z 30.0.0.1:5000 -> 10.0.1.5:22 tcp",
                "drop(destination-not-exposed)",
            ),
            (
                "Z 30.0.0.1 -> 10.0.1.5 icmp",
                "drop(destination-not-exposed)",
            ),
            (
                "Z 30.0.0.1:5000 -> 10.0.2.5:85 tcp",
                "drop(destination-not-exposed)",
            ),
        ],
    );
}

#[test]
fn spec_3_2_a_shorter_prefix_in_another_peering_never_hides_a_longer_one() {
    // Y now also exposes Z's prefix through a shorter one: each peering is judged on its own.
    let t = table(&spec_3_2("[{ips: [{cidr: 30.0.0.0/8}]}]"));
    assert_verdicts(
        &t,
        &[
            (
                "X 10.0.1.5:85 -> 30.0.0.1:443 tcp",
                "allow-ambiguous([Y, Z])",
            ),
            ("X 10.0.1.5:22 -> 30.0.0.1:443 tcp", "allow(Y)"),
            ("X 10.0.1.5 -> 30.0.0.1 icmp", "allow(Y)"),
            ("X 10.0.1.5:85 -> 30.1.0.1:443 tcp", "allow(Y)"),
        ],
    );
}

#[test]
fn spec_3_2_destinations_match_public_prefixes_with_their_ports_whatever_the_nat() {
    for nat in [
        "{static: {}}",
        "{masquerade: {idleTimeout: 2m}}",
        "{stateless: {}}",
        "{stateful: {}}",
        "{portForward: {}}",
    ] {
        let x = format!(
            "[{{ips: [{{cidr: 10.0.0.0/24}}], as: [{{cidr: 192.168.1.0/24, ports: 443}}], nat: {nat}}}]"
        );
        let t = table(
            &(vpcs(&[("X", 10), ("Y", 20)])
                + &peering("X", &x, "Y", "[{ips: [{cidr: 20.0.0.0/16}]}]")),
        );
        assert_verdicts(
            &t,
            &[
                // Destinations are the public `as` prefixes, with the ports written on them.
                ("Y 20.0.0.1:5000 -> 192.168.1.5:443 tcp", "allow(X)"),
                (
                    "Y 20.0.0.1:5000 -> 192.168.1.5:80 tcp",
                    "drop(destination-not-exposed)",
                ),
                (
                    "Y 20.0.0.1 -> 192.168.1.5 icmp",
                    "drop(destination-not-exposed)",
                ),
                // The private prefix is not a destination when the block has `as`.
                (
                    "Y 20.0.0.1:5000 -> 10.0.0.5:443 tcp",
                    "drop(destination-not-exposed)",
                ),
                // Sources are always private: the filter runs before NAT. `ips` has no ports.
                ("X 10.0.0.5:5000 -> 20.0.0.1:22 tcp", "allow(Y)"),
                ("X 10.0.0.5 -> 20.0.0.1 icmp", "allow(Y)"),
                (
                    "X 192.168.1.5:5000 -> 20.0.0.1:22 tcp",
                    "drop(source-not-exposed)",
                ),
            ],
        );
    }
}

/// SPEC 3.3: X exposes 10.50.2.0/24 to Y, whose block is `default: true`, and to Z, which
/// exposes 10.50.3.0/24 on TCP port 443 only.
fn spec_3_3() -> Table {
    table(
        &(vpcs(&[("X", 10), ("Y", 20), ("Z", 30)])
            + &peering(
                "X",
                "[{ips: [{cidr: 10.50.2.0/24}]}]",
                "Y",
                "[{default: true}]",
            )
            + &peering(
                "X",
                "[{ips: [{cidr: 10.50.2.0/24}]}]",
                "Z",
                "[{ips: [{cidr: 10.50.3.0/24, ports: 443}]}]",
            )),
    )
}

#[test]
fn spec_3_3_default_block() {
    let t = spec_3_3();
    assert_verdicts(
        &t,
        &[
            ("X 10.50.2.9:1000 -> 8.8.8.8:53 udp", "allow(Y)"),
            ("X 10.50.2.9 -> 8.8.8.8 icmp", "allow(Y)"),
            ("X 10.50.2.9:1000 -> 10.50.3.4:443 tcp", "allow(Z)"),
            // Z's block covers the address, whatever the port, so the default does not.
            (
                "X 10.50.2.9:1000 -> 10.50.3.4:22 tcp",
                "drop(destination-not-exposed)",
            ),
            (
                "X 10.50.2.9 -> 10.50.3.4 icmp",
                "drop(destination-not-exposed)",
            ),
            // Just outside Z's prefix, the default takes over again.
            ("X 10.50.2.9:1000 -> 10.50.4.0:22 tcp", "allow(Y)"),
            ("X 10.50.2.9:1000 -> 10.50.2.255:22 tcp", "allow(Y)"),
            // The default offers every address as a source for replies from Y.
            ("Y 8.8.8.8:53 -> 10.50.2.9:1000 udp", "allow(X)"),
            ("Y 8.8.8.8 -> 10.50.2.9 icmp", "allow(X)"),
            (
                "Y 8.8.8.8:53 -> 10.50.9.9:1000 udp",
                "drop(destination-not-exposed)",
            ),
            // X's source must still be exposed.
            (
                "X 10.50.5.9:1000 -> 8.8.8.8:53 udp",
                "drop(source-not-exposed)",
            ),
        ],
    );
}

#[test]
fn ipv6_and_unknown_vpc() {
    let yaml = vpcs(&[("A", 1), ("B", 2)])
        + &peering(
            "A",
            "[{ips: [{cidr: 'fd00:a::/48'}]}]",
            "B",
            "[{ips: [{cidr: 'fd00:b::/64', ports: '22,443'}]}, {ips: [{cidr: 10.2.0.0/16}]}]",
        );
    let t = table(&yaml);
    assert_verdicts(
        &t,
        &[
            ("A [fd00:a::5]:999 -> [fd00:b::1]:443 tcp", "allow(B)"),
            (
                "A [fd00:a::5]:999 -> [fd00:b::1]:80 tcp",
                "drop(destination-not-exposed)",
            ),
            (
                "A fd00:a::5 -> fd00:b::1 icmpv6",
                "drop(destination-not-exposed)",
            ),
            ("A [fd00:a:0:1::5]:999 -> [fd00:b::1]:22 tcp", "allow(B)"),
            (
                "A [fd00:c::5]:999 -> [fd00:b::1]:22 tcp",
                "drop(source-not-exposed)",
            ),
            ("B [fd00:b::1]:22 -> [fd00:a::5]:999 tcp", "allow(A)"),
            // An IPv4 address never falls in an IPv6 prefix, and the other way round.
            (
                "B 10.2.0.1:22 -> 0.0.0.5:999 tcp",
                "drop(destination-not-exposed)",
            ),
        ],
    );
    let unknown = Packet::tcp(
        77,
        "10.0.0.1".parse().unwrap(),
        1,
        "10.0.0.2".parse().unwrap(),
        2,
    );
    assert_eq!(t.verdict_text(t.lookup(&unknown)), "drop(unknown-vpc)");
}

/// Explains `text` under `yaml`: the rendered peering lines, and the notes.
fn explained(yaml: &str, text: &str) -> flowgate_policy::Explanation {
    let config = parse(yaml, None).unwrap();
    let t = Table::build(&config).unwrap();
    flowgate_policy::explain(&config, &t, &packet(&t, text))
}

/// (peering, admits, source entries offering, destination entries offering) per peering.
fn offers(e: &flowgate_policy::Explanation) -> Vec<(String, bool, Vec<String>, Vec<String>)> {
    let offering = |ms: &[flowgate_policy::explain::EntryMatch]| {
        ms.iter()
            .filter(|m| m.miss.is_none())
            .map(|m| format!("{} {}", m.block, m.entry))
            .collect()
    };
    e.peerings
        .iter()
        .map(|p| {
            (
                p.peering.clone(),
                p.admits,
                offering(&p.source),
                offering(&p.destination),
            )
        })
        .collect()
}

#[test]
fn explain_names_the_peerings_and_prefixes_of_spec_3_1() {
    let yaml = spec_3_1("1.0.0.0/23");
    let (b_src, a_dst, c_dst) = (
        "spec.peering.B.expose[0] ips 2.0.0.0/24".to_owned(),
        "spec.peering.A.expose[0] ips 1.0.0.0/23".to_owned(),
        "spec.peering.C.expose[0] ips 1.0.0.0/24".to_owned(),
    );
    // Only A--B admits: 1.0.1.9 is in A's /23, not in C's /24.
    let e = explained(&yaml, "B 2.0.0.7:1000 -> 1.0.1.9:80 tcp");
    assert_eq!(
        offers(&e),
        [
            (
                "A--B".into(),
                true,
                vec![b_src.clone()],
                vec![a_dst.clone()]
            ),
            ("B--C".into(), false, vec![b_src.clone()], vec![]),
        ]
    );
    assert!(
        e.notes[0].starts_with("only A--B admits the packet: it goes to A"),
        "{:?}",
        e.notes
    );
    // Both admit: ambiguous, both named.
    let e = explained(&yaml, "B 2.0.0.7:1000 -> 1.0.0.9:80 tcp");
    assert_eq!(
        offers(&e),
        [
            (
                "A--B".into(),
                true,
                vec![b_src.clone()],
                vec![a_dst.clone()]
            ),
            (
                "B--C".into(),
                true,
                vec![b_src.clone()],
                vec![c_dst.clone()]
            ),
        ]
    );
    assert!(e.notes[0].contains("A--B to A, B--C to C"), "{:?}", e.notes);
    // From A: A--B admits with A's /23 as source and B's /24 as destination.
    let e = explained(&yaml, "A 1.0.0.9:1000 -> 2.0.0.7:80 tcp");
    assert_eq!(
        offers(&e),
        [(
            "A--B".into(),
            true,
            vec![a_dst.clone()],
            vec!["spec.peering.B.expose[0] ips 2.0.0.0/24".into()]
        )]
    );
    // Source in no set.
    let e = explained(&yaml, "B 2.0.1.7:1000 -> 1.0.1.9:80 tcp");
    assert!(e.peerings.iter().all(|p| p.source.is_empty()));
    assert_eq!(
        e.notes[0],
        "the source 2.0.1.7:1000 is in no source set of B's peerings"
    );
    // Source offered by both, destination in neither.
    let e = explained(&yaml, "B 2.0.0.7:1000 -> 1.0.2.9:80 tcp");
    assert_eq!(
        e.notes[..2],
        [
            format!(
                "A--B offers the source ({b_src}), but the destination 1.0.2.9:80 is in none of A's destination sets"
            ),
            format!(
                "B--C offers the source ({b_src}), but the destination 1.0.2.9:80 is in none of C's destination sets"
            ),
        ]
    );
}

#[test]
fn explain_shows_near_misses_on_ports_and_defaults() {
    // SPEC 3.3: Z's block covers 10.50.3.0/24 on port 443 only; Y is the default.
    let yaml = vpcs(&[("X", 1), ("Y", 2), ("Z", 3)])
        + &peering(
            "X",
            "[{ips: [{cidr: 10.50.2.0/24}]}]",
            "Y",
            "[{default: true}]",
        )
        + &peering(
            "X",
            "[{ips: [{cidr: 10.50.2.0/24}]}]",
            "Z",
            "[{ips: [{cidr: 10.50.3.0/24, ports: '443'}]}]",
        );
    let e = explained(&yaml, "X 10.50.2.9:1000 -> 10.50.3.4:22 tcp");
    let misses: Vec<&str> = e
        .peerings
        .iter()
        .flat_map(|p| &p.destination)
        .filter_map(|m| m.miss.as_deref())
        .collect();
    assert_eq!(
        misses,
        [
            "spec.peering.Z.expose[0] ips 10.50.3.0/24 ports 443 covers it, and a default offers only what no other block exposed to X covers",
            "port 22 is not in 443",
        ]
    );
    assert!(e.notes.iter().any(|n| n.starts_with("near miss in X--Z: destination 10.50.3.4:22 is in spec.peering.Z.expose[0] ips 10.50.3.0/24 ports 443, but port 22 is not in 443")), "{:?}", e.notes);
    let e = explained(&yaml, "X 10.50.2.9 -> 8.8.8.8 icmp");
    assert_eq!(
        offers(&e)[0],
        (
            "X--Y".into(),
            true,
            vec!["spec.peering.X.expose[0] ips 10.50.2.0/24".into()],
            vec!["spec.peering.Y.expose[0] default".into()]
        )
    );
}
