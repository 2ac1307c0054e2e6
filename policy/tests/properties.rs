//! Property tests: the table against the reference oracle on generated configs and packets,
//! batch lookups against single ones, and the parser against arbitrary and mangled input.
//!
//! `FLOWGATE_PROPTEST_CASES` sets how many configs each property draws (default 10,000 for
//! the oracle property); every config is judged on a batch of up to 32 packets. The oracle
//! properties run on mostly IPv4 configs, mostly IPv6 ones, dual-stack ones (every side
//! exposing both families, packets of both and of mixed families) and small dual-stack
//! gateway workloads (`synth::Gateway`: wide prefixes, holes, shared service prefixes).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use common::arb::Families;
use common::{arb, cases, oracle};
use flowgate_policy::synth::{Gateway, GatewayShape, Stack, Traffic};
use flowgate_policy::{Config, Packet, Table, Verdict, parse};
use proptest::prelude::*;

/// Every packet's verdict is the oracle's, a batch lookup answers what single lookups do, and
/// so does the packed path.
fn judged_as_the_oracle(
    config: &Config,
    yaml: &str,
    packets: &[Packet],
) -> Result<(), TestCaseError> {
    use flowgate_policy::packed::{decode_verdict, encode_packets, judge_packed};
    let table = Table::build(config).unwrap();
    let single: Vec<Verdict> = packets.iter().map(|p| table.lookup(p)).collect();
    for (packet, &got) in packets.iter().zip(&single) {
        let expected = oracle::verdict(config, packet);
        prop_assert_eq!(
            oracle::from_table(&table, got),
            expected,
            "packet {:?}\nconfig:\n{}",
            packet,
            yaml
        );
    }
    let mut batch = vec![Verdict::default(); packets.len()];
    table.lookup_batch(packets, &mut batch);
    prop_assert_eq!(&batch, &single);
    let mut bytes = Vec::new();
    encode_packets(packets, &mut bytes);
    let mut answer = Vec::new();
    judge_packed(Some(&table), &bytes, &mut answer);
    let packed: Vec<Option<Verdict>> = answer
        .chunks_exact(4)
        .map(|r| decode_verdict(r.try_into().unwrap()))
        .collect();
    let single: Vec<Option<Verdict>> = single.into_iter().map(Some).collect();
    prop_assert_eq!(packed, single);
    Ok(())
}

proptest! {
    #![proptest_config(cases(2_000))]

    /// Mostly IPv6 configs and packets: the oracle's verdicts, in batches and packed too.
    #[test]
    fn ipv6_heavy_table_equals_oracle((config, packets) in arb::config_and_packets_of(Families::IPV6_HEAVY, 32)) {
        let parsed = parse(&config.yaml, None).map_err(|e| TestCaseError::fail(format!("generated config refused: {e}\n{}", config.yaml)))?;
        judged_as_the_oracle(&parsed, &config.yaml, &packets)?;
    }

    /// Dual-stack configs (each side exposing both families) and packets of both families
    /// and of mixed ones: the oracle's verdicts, in batches and packed too.
    #[test]
    fn dual_stack_table_equals_oracle((config, packets) in arb::config_and_packets_of(Families::Dual, 32)) {
        let parsed = parse(&config.yaml, None).map_err(|e| TestCaseError::fail(format!("generated config refused: {e}\n{}", config.yaml)))?;
        judged_as_the_oracle(&parsed, &config.yaml, &packets)?;
    }
}

proptest! {
    #![proptest_config(cases(200))]

    /// Small dual-stack gateway workloads, any seed: the whole mix and each family's stream
    /// judged as the oracle judges them.
    #[test]
    fn dual_stack_gateway_equals_oracle(vpcs in 3usize..=24, share in 0.2f64..=1.0, ports: bool, seed: u64) {
        let peerings = ((vpcs * (vpcs - 1) / 2) as f64 * share).ceil() as usize;
        let shape = GatewayShape { vpcs, peerings, ports, stack: Stack::Dual, seed };
        let mut gateway = Gateway::new(shape);
        let parsed = parse(gateway.yaml(), None).map_err(|e| TestCaseError::fail(format!("generated config refused: {e}\n{}", gateway.yaml())))?;
        prop_assert_eq!(parsed.peerings.len(), peerings);
        for traffic in [Traffic::All, Traffic::Ipv4, Traffic::Ipv6] {
            let packets = gateway.packets_of(traffic, 128);
            judged_as_the_oracle(&parsed, gateway.yaml(), &packets)?;
        }
    }
}

proptest! {
    #![proptest_config(cases(10_000))]

    #[test]
    fn table_equals_oracle((config, packets) in arb::config_and_packets(32)) {
        let parsed = parse(&config.yaml, None).map_err(|e| TestCaseError::fail(format!("generated config refused: {e}\n{}", config.yaml)))?;
        let table = Table::build(&parsed).unwrap();
        for packet in &packets {
            let expected = oracle::verdict(&parsed, packet);
            let got = oracle::from_table(&table, table.lookup(packet));
            prop_assert_eq!(got, expected, "packet {:?}\nconfig:\n{}", packet, config.yaml);
        }
    }
}

proptest! {
    #![proptest_config(cases(2_000))]

    #[test]
    fn batch_equals_single((config, packets) in arb::config_and_packets(64)) {
        let table = Table::build(&parse(&config.yaml, None).unwrap()).unwrap();
        let mut batch = vec![Verdict::default(); packets.len()];
        table.lookup_batch(&packets, &mut batch);
        let single: Vec<Verdict> = packets.iter().map(|p| table.lookup(p)).collect();
        prop_assert_eq!(batch, single);
    }

    /// The packed path (a batch's columns read straight into lanes, looked up in stages 32 at
    /// a time) answers what single lookups answer, packets whose two addresses are of
    /// different families included (each address's family travels in the batch).
    #[test]
    fn packed_equals_single((config, packets) in arb::config_and_packets(64)) {
        use flowgate_policy::packed::{decode_verdict, encode_packets, judge_packed};
        let table = Table::build(&parse(&config.yaml, None).unwrap()).unwrap();
        let mut batch = Vec::new();
        encode_packets(&packets, &mut batch);
        let mut answer = Vec::new();
        judge_packed(Some(&table), &batch, &mut answer);
        let packed: Vec<Option<Verdict>> = answer
            .chunks_exact(4)
            .map(|r| decode_verdict(r.try_into().unwrap()))
            .collect();
        let single: Vec<Option<Verdict>> = packets.iter().map(|p| Some(table.lookup(p))).collect();
        prop_assert_eq!(packed, single);
    }

    /// Whatever bytes the packed path is given (here a batch with words overwritten and its
    /// end cut anywhere), it never panics, and it answers exactly what single lookups of the
    /// packets the batch decodes to answer, or nothing for a batch off its layout. Shape bits,
    /// port flags and address words the encoder never writes included.
    #[test]
    fn packed_path_answers_any_bytes_as_it_decodes_them(
        (config, packets) in arb::config_and_packets(40),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u32>()), 0..6),
        cut in any::<prop::sample::Index>(),
        cut_some in any::<bool>(),
    ) {
        use flowgate_policy::packed::{Batch, decode_verdict, encode_packets, judge_packed};
        let table = Table::build(&parse(&config.yaml, None).unwrap()).unwrap();
        let mut bytes = Vec::new();
        encode_packets(&packets, &mut bytes);
        let words = bytes.len() / 4;
        for (at, value) in edits {
            let at = 4 * at.index(words);
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        if cut_some {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let mut answer = vec![7; 3];
        judge_packed(Some(&table), &bytes, &mut answer);
        let decoded: Option<Vec<flowgate_policy::Packet>> =
            Batch::parse(&bytes).and_then(|b| b.packets().collect());
        match decoded {
            None => prop_assert!(answer.is_empty()),
            Some(decoded) => {
                let packed: Vec<Option<Verdict>> = answer
                    .chunks_exact(4)
                    .map(|r| decode_verdict(r.try_into().unwrap()))
                    .collect();
                let single: Vec<Option<Verdict>> =
                    decoded.iter().map(|p| Some(table.lookup(p))).collect();
                prop_assert_eq!(packed, single);
            }
        }
    }

    /// An explanation agrees with the verdict it explains: the peerings it says admit the
    /// packet are exactly the verdict's VPCs, and a drop's reason follows from what it found.
    #[test]
    fn explanations_agree_with_verdicts((config, packets) in arb::config_and_packets(32)) {
        use flowgate_policy::DropReason;
        let parsed = parse(&config.yaml, None).unwrap();
        let table = Table::build(&parsed).unwrap();
        for packet in &packets {
            let e = flowgate_policy::explain(&parsed, &table, packet);
            prop_assert_eq!(e.verdict, table.lookup(packet));
            let mut admitting: Vec<&str> = e.peerings.iter().filter(|p| p.admits).map(|p| p.remote.as_str()).collect();
            admitting.sort_unstable();
            let names = |ids: &[flowgate_policy::VpcId]| -> Vec<&str> { ids.iter().map(|&v| table.vpc(v).name.as_str()).collect() };
            let source_offered = e.peerings.iter().any(|p| p.source.iter().any(|m| m.miss.is_none()));
            match e.verdict {
                Verdict::Allow(v) => prop_assert_eq!(admitting, names(&[v])),
                Verdict::AllowAmbiguous(set) => prop_assert_eq!(admitting, names(table.candidates(set))),
                Verdict::Drop(DropReason::UnknownVpc) => prop_assert!(e.src_vpc.is_none() && e.peerings.is_empty()),
                Verdict::Drop(DropReason::SourceNotExposed) => prop_assert!(admitting.is_empty() && !source_offered),
                Verdict::Drop(_) => prop_assert!(admitting.is_empty() && source_offered),
            }
            prop_assert!(!e.notes.is_empty());
        }
    }

    #[test]
    fn parser_never_panics_on_arbitrary_text(text in ".{0,400}") {
        let _ = parse(&text, Some("arbitrary.yaml"));
    }

    #[test]
    fn parser_never_panics_on_mangled_configs(
        config in arb::config(),
        cuts in prop::collection::vec((any::<prop::sample::Index>(), 0usize..8, ".{0,6}"), 1..6),
    ) {
        let mut text = config.yaml.clone();
        for (at, len, insert) in cuts {
            let start = at.index(text.len() + 1);
            let end = (start + len).min(text.len());
            if text.is_char_boundary(start) && text.is_char_boundary(end) {
                text.replace_range(start..end, &insert);
            }
        }
        if let Ok(parsed) = parse(&text, Some("mangled.yaml")) {
            // Whatever is accepted must build and answer.
            let table = Table::build(&parsed).unwrap();
            for vni in config.vnis {
                let p = flowgate_policy::Packet::portless(vni, "10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), 1);
                let _ = table.lookup(&p);
            }
        }
    }
}

/// The generators must reach every kind of verdict, or the oracle property proves little.
#[test]
fn generated_cases_reach_every_verdict() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = arb::config_and_packets(32);
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..300 {
        let (config, packets) = strategy.new_tree(&mut runner).unwrap().current();
        let parsed = parse(&config.yaml, None).unwrap();
        let defaults = parsed
            .peerings
            .iter()
            .flat_map(|p| &p.sides)
            .flat_map(|s| &s.blocks)
            .any(|b| b.default);
        let table = Table::build(&parsed).unwrap();
        for packet in &packets {
            let kind = match oracle::verdict(&parsed, packet) {
                oracle::Expected::Allow(_) if defaults => "allow (config with a default block)",
                oracle::Expected::Allow(_) => "allow",
                oracle::Expected::AllowAmbiguous(_) => "allow-ambiguous",
                oracle::Expected::Drop(reason) => reason,
            };
            *seen.entry(kind).or_default() += 1;
            let _ = table.lookup(packet);
        }
    }
    for kind in [
        "allow",
        "allow (config with a default block)",
        "allow-ambiguous",
        "unknown-vpc",
        "source-not-exposed",
        "destination-not-exposed",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) >= 20,
            "verdict {kind} seen too rarely: {seen:?}"
        );
    }
}

/// The IPv6-heavy and dual-stack generators must reach every kind of verdict on packets with
/// IPv6 addresses, and the dual-stack one on packets of mixed families, or their oracle
/// properties prove little about IPv6.
#[test]
fn ipv6_cases_reach_every_verdict() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    for families in [Families::IPV6_HEAVY, Families::Dual] {
        let mut runner = TestRunner::deterministic();
        let strategy = arb::config_and_packets_of(families, 32);
        let mut seen = std::collections::BTreeMap::<(&str, &str), usize>::new();
        for _ in 0..300 {
            let (config, packets) = strategy.new_tree(&mut runner).unwrap().current();
            let parsed = parse(&config.yaml, None).unwrap();
            for packet in &packets {
                let family = match (packet.src.is_ipv6(), packet.dst.is_ipv6()) {
                    (true, true) => "ipv6",
                    (false, false) => "ipv4",
                    _ => "mixed",
                };
                let kind = match oracle::verdict(&parsed, packet) {
                    oracle::Expected::Allow(_) => "allow",
                    oracle::Expected::AllowAmbiguous(_) => "allow-ambiguous",
                    oracle::Expected::Drop(reason) => reason,
                };
                *seen.entry((family, kind)).or_default() += 1;
            }
        }
        let mut wanted = vec![
            ("ipv6", "allow"),
            ("ipv6", "allow-ambiguous"),
            ("ipv6", "unknown-vpc"),
            ("ipv6", "source-not-exposed"),
            ("ipv6", "destination-not-exposed"),
        ];
        if families == Families::Dual {
            wanted.extend([
                ("ipv4", "allow"),
                ("ipv4", "allow-ambiguous"),
                ("mixed", "allow"),
                ("mixed", "destination-not-exposed"),
            ]);
        }
        for key in wanted {
            assert!(
                seen.get(&key).copied().unwrap_or(0) >= 20,
                "{families:?}: verdict {key:?} seen too rarely: {seen:?}"
            );
        }
    }
}

/// Dual-stack gateway workloads as dense as the property draws reach every kind of verdict
/// in each family, ambiguous ones included (rare: a shared service prefix two peers expose,
/// to a source the client exposes to both).
#[test]
fn dual_stack_gateway_cases_reach_every_verdict() {
    let mut seen = std::collections::BTreeMap::<(bool, &str), usize>::new();
    for seed in 0..100 {
        let shape = GatewayShape {
            vpcs: 12,
            peerings: 66,
            ports: true,
            stack: Stack::Dual,
            seed,
        };
        let mut gateway = Gateway::new(shape);
        let parsed = parse(gateway.yaml(), None).unwrap();
        for packet in gateway.packets(192) {
            let kind = match oracle::verdict(&parsed, &packet) {
                oracle::Expected::Allow(_) => "allow",
                oracle::Expected::AllowAmbiguous(_) => "allow-ambiguous",
                oracle::Expected::Drop(reason) => reason,
            };
            *seen.entry((packet.dst.is_ipv6(), kind)).or_default() += 1;
        }
    }
    for v6 in [false, true] {
        for kind in [
            "allow",
            "allow-ambiguous",
            "source-not-exposed",
            "destination-not-exposed",
        ] {
            assert!(
                seen.get(&(v6, kind)).copied().unwrap_or(0) >= 5,
                "verdict {kind} (IPv6: {v6}) seen too rarely: {seen:?}"
            );
        }
    }
}

/// `packets` whose two addresses are IPv6 (`Some(true)`), IPv4 (`Some(false)`), or any, over
/// and over, `n` of them (none when there is none of that family).
fn cycled(packets: &[Packet], v6: Option<bool>, n: usize) -> Vec<Packet> {
    let of = |p: &&Packet| v6.is_none_or(|v6| p.src.is_ipv6() == v6 && p.dst.is_ipv6() == v6);
    let some: Vec<Packet> = packets.iter().filter(of).cloned().collect();
    some.iter().cycle().take(n).cloned().collect()
}

proptest! {
    #![proptest_config(cases(300))]

    /// Batches of several hundred packets, in runs of one family and of every family, so that
    /// a batch lookup meets chunks of one family and of both, and gathered lanes that fill
    /// over many chunks or are left partly filled at the end: a batch lookup and the packed
    /// path answer what single lookups do, and those the oracle.
    #[test]
    fn long_batches_equal_single(
        (config, packets) in arb::config_and_packets_of(Families::Dual, 64),
        runs in prop::collection::vec((prop::option::of(any::<bool>()), 1..400usize), 1..5),
    ) {
        use flowgate_policy::packed::{decode_verdict, encode_packets, judge_packed};
        let parsed = parse(&config.yaml, None).unwrap();
        let table = Table::build(&parsed).unwrap();
        for packet in &packets {
            let got = oracle::from_table(&table, table.lookup(packet));
            prop_assert_eq!(got, oracle::verdict(&parsed, packet), "packet {:?}", packet);
        }
        let long: Vec<Packet> = runs
            .iter()
            .flat_map(|&(v6, n)| cycled(&packets, v6, n))
            .collect();
        let single: Vec<Verdict> = long.iter().map(|p| table.lookup(p)).collect();
        let mut batch = vec![Verdict::default(); long.len()];
        table.lookup_batch(&long, &mut batch);
        prop_assert_eq!(&batch, &single);
        let mut bytes = Vec::new();
        encode_packets(&long, &mut bytes);
        let mut answer = Vec::new();
        judge_packed(Some(&table), &bytes, &mut answer);
        let packed: Vec<Option<Verdict>> = answer
            .chunks_exact(4)
            .map(|r| decode_verdict(r.try_into().unwrap()))
            .collect();
        let single: Vec<Option<Verdict>> = single.into_iter().map(Some).collect();
        prop_assert_eq!(packed, single);
    }
}

proptest! {
    #![proptest_config(cases(2_000))]

    /// The compare-searched layout, which a table falls back to when a trie would pass its
    /// memory budget, answers what the tries answer, one packet at a time and in batches.
    #[test]
    fn searched_layout_equals_tries((config, packets) in arb::config_and_packets(64)) {
        let parsed = parse(&config.yaml, None).unwrap();
        let (tries, searched) = (Table::build(&parsed).unwrap(), Table::build_searched(&parsed).unwrap());
        let (mut a, mut b) = (vec![Verdict::default(); packets.len()], vec![Verdict::default(); packets.len()]);
        tries.lookup_batch(&packets, &mut a);
        searched.lookup_batch(&packets, &mut b);
        prop_assert_eq!(&a, &b);
        let single: Vec<Verdict> = packets.iter().map(|p| searched.lookup(p)).collect();
        prop_assert_eq!(a, single);
    }
}

proptest! {
    #![proptest_config(cases(4_000))]

    /// IPv6 prefixes that differ in the upper half of the address, as sites allocate them
    /// (/48 to /64, a few host routes): the tries over the upper halves, the split /64s
    /// searched whole, one packet at a time, in batches and on the packed path, against the
    /// oracle.
    #[test]
    fn upper_half_prefixes_equal_oracle(
        (config, packets) in arb::config_and_packets_planned(Families::Dual, arb::Plan::Upper, 64),
    ) {
        use flowgate_policy::packed::{decode_verdict, encode_packets, judge_packed};
        let parsed = parse(&config.yaml, None).map_err(|e| TestCaseError::fail(format!("generated config refused: {e}\n{}", config.yaml)))?;
        let table = Table::build(&parsed).unwrap();
        let single: Vec<Verdict> = packets.iter().map(|p| table.lookup(p)).collect();
        for (packet, got) in packets.iter().zip(&single) {
            let expected = oracle::verdict(&parsed, packet);
            prop_assert_eq!(oracle::from_table(&table, *got), expected, "packet {:?}\nconfig:\n{}", packet, config.yaml);
        }
        let mut batch = vec![Verdict::default(); packets.len()];
        table.lookup_batch(&packets, &mut batch);
        prop_assert_eq!(&batch, &single);
        let mut columns = Vec::new();
        encode_packets(&packets, &mut columns);
        let mut answer = Vec::new();
        judge_packed(Some(&table), &columns, &mut answer);
        let packed: Vec<Verdict> = answer
            .chunks_exact(4)
            .map(|r| decode_verdict(r.try_into().unwrap()).unwrap())
            .collect();
        prop_assert_eq!(&packed, &single);
        let searched = Table::build_searched(&parsed).unwrap();
        searched.lookup_batch(&packets, &mut batch);
        prop_assert_eq!(&batch, &single);
    }
}
