//! A table exported as a state and loaded part by part answers exactly as the table it came
//! from; a state altered, cut or extended is refused, or loads to a table that still answers
//! without panicking. The hostile states (cut, oversized, wrong magic or version, an index
//! past its section) are at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

#[allow(unused_imports)] // the oracle
mod common;

use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;

use common::{arb, cases};
use flowgate_policy::packed::{encode_packets, judge_packed};
use flowgate_policy::synth::{self, Gateway, GatewayShape, Scale, Traffic};
use flowgate_policy::table::state::{MAGIC, SECTIONS, VERSION};
use flowgate_policy::{
    Config, MAX_STATE_WORDS, Packet, StateError, StateLoader, Table, Verdict, parse,
};
use proptest::prelude::*;

/// What differs between a table and the one loaded from its state, on these packets.
fn differences(original: &Table, loaded: &Table, packets: &[Packet]) -> Result<(), String> {
    let check = |same: bool, what: &str| if same { Ok(()) } else { Err(what.to_owned()) };
    check(original.stats() == loaded.stats(), "stats")?;
    check(original.catalog() == loaded.catalog(), "catalog")?;
    check(
        original.export_state() == loaded.export_state(),
        "the loaded table's own state",
    )?;
    let want: Vec<Verdict> = packets.iter().map(|p| original.lookup(p)).collect();
    let single: Vec<Verdict> = packets.iter().map(|p| loaded.lookup(p)).collect();
    check(want == single, "single lookups")?;
    let mut batch = vec![Verdict::default(); packets.len()];
    loaded.lookup_batch(packets, &mut batch);
    check(want == batch, "batch lookups")?;
    let mut encoded = Vec::new();
    encode_packets(packets, &mut encoded);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    judge_packed(Some(original), &encoded, &mut a);
    judge_packed(Some(loaded), &encoded, &mut b);
    check(a == b && a.len() == 4 * packets.len(), "packed verdicts")?;
    for v in &want {
        check(
            original.verdict_text(*v) == loaded.verdict_text(*v),
            "verdict text",
        )?;
    }
    Ok(())
}

/// Loads `words` in the parts that `cuts` (any positions, taken modulo the length) make,
/// empty parts included.
fn load_in_parts(words: &[u32], cuts: &[usize]) -> Result<Table, StateError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (words.len() + 1)).collect();
    cuts.push(0);
    cuts.push(words.len());
    cuts.sort_unstable();
    let mut loader = StateLoader::new();
    for pair in cuts.windows(2) {
        loader.push(&words[pair[0]..pair[1]])?;
    }
    loader.finish()
}

/// Loads `words` in parts of 65,536 words, as the host hands them over, vouching for them.
fn load_vouched(words: &[u32]) -> Result<Table, StateError> {
    let mut loader = StateLoader::new();
    for part in words.chunks(1 << 16) {
        loader.push(part)?;
    }
    loader.finish_vouched()
}

/// Both layouts of `config` round-trip: whole, word by word, in parts of 65,536 words (checked
/// and vouched for) and at the given cuts.
fn round_trips(config: &Config, packets: &[Packet], cuts: &[usize]) {
    for (table, layout) in [
        (Table::build(config).unwrap(), "tries"),
        (Table::build_searched(config).unwrap(), "searched"),
    ] {
        let words = table.export_state();
        assert_eq!(words[0], MAGIC);
        assert_eq!(words[2] as usize, words.len());
        let whole = Table::from_state(&words).unwrap();
        differences(&table, &whole, packets).unwrap_or_else(|e| panic!("{layout}: {e}"));
        let mut loader = StateLoader::new();
        for part in words.chunks(1 << 16) {
            loader.push(part).unwrap();
        }
        let chunked = loader.finish().unwrap();
        differences(&table, &chunked, packets).unwrap_or_else(|e| panic!("{layout}: {e}"));
        let vouched = load_vouched(&words).unwrap();
        differences(&table, &vouched, packets)
            .unwrap_or_else(|e| panic!("{layout}, vouched for: {e}"));
        let cut = load_in_parts(&words, cuts).unwrap();
        differences(&table, &cut, packets).unwrap_or_else(|e| panic!("{layout}: {e}"));
        if words.len() < 200_000 {
            let mut loader = StateLoader::new();
            for word in words.chunks(1) {
                loader.push(word).unwrap();
            }
            let single = loader.finish().unwrap();
            differences(&table, &single, packets).unwrap_or_else(|e| panic!("{layout}: {e}"));
        }
    }
}

/// Cuts spread over a state of any length.
const CUTS: [usize; 9] = [1, 2, 3, 5, 37, 38, 1001, 65_537, 300_001];

#[test]
fn every_fixture_table_round_trips() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut configs = vec![root.join("default/config.yaml")];
    for case in std::fs::read_dir(root.join("cases")).unwrap() {
        configs.push(case.unwrap().path().join("config.yaml"));
    }
    let mut tried = 0;
    for path in configs {
        let text = std::fs::read_to_string(&path).unwrap();
        let Ok(config) = parse(&text, None) else {
            continue;
        };
        let packets = synth::packets(&config, 2_000, 7);
        round_trips(&config, &packets, &CUTS);
        tried += 1;
    }
    assert!(tried >= 8, "{tried} fixture tables");
}

#[test]
fn gateway_tables_round_trip() {
    for (peerings, ports) in [(1_000, true), (1_000, false), (5_000, true), (5_000, false)] {
        let mut gateway = Gateway::new(GatewayShape::with_peerings(peerings, ports, 42));
        let config = parse(gateway.yaml(), None).unwrap();
        let packets = gateway.packets(20_000);
        round_trips(&config, &packets, &CUTS);
    }
    let config = parse(&synth::config_yaml(Scale::with_peerings(300, 42)), None).unwrap();
    round_trips(&config, &synth::packets(&config, 5_000, 7), &CUTS);
}

/// `n` VPCs with VNIs `vni(i)`, VPC `i` peered with `i + 1` and `i + 2`: each side exposes
/// an IPv4 /24 and an IPv6 /64 of its own for the peering, and one of each it exposes in
/// both its peerings (so some verdicts are ambiguous); `ports` on the first.
fn ring(n: usize, vni: impl Fn(usize) -> u32, ports: &str) -> String {
    let mut yaml = String::new();
    for i in 0..n {
        yaml += &format!(
            "kind: VPCInfo\nmetadata: {{name: v{i}}}\nspec: {{vni: {}}}\n---\n",
            vni(i)
        );
    }
    for i in 0..n {
        for k in 1..=2 {
            let j = (i + k) % n;
            if j == i || (k == 2 && n < 4) || (k == 1 && n == 2 && i == 1) {
                continue;
            }
            let side = |me: usize, peer: usize| {
                format!(
                    "      expose:\n        - ips: [{{cidr: 10.{me}.{peer}.0/24, ports: \"{ports}\"}}, {{cidr: 10.{me}.255.0/24}}]\n        - ips: [{{cidr: 'fd00:{me:x}:{peer:x}::/64', ports: \"{ports}\"}}, {{cidr: 'fd00:{me:x}:ffff::/64'}}]\n"
                )
            };
            yaml += &format!(
                "kind: Peering\nmetadata: {{name: v{i}--v{j}}}\nspec:\n  peering:\n    v{i}:\n{}    v{j}:\n{}---\n",
                side(i, j),
                side(j, i)
            );
        }
    }
    yaml
}

/// Packets between the ring's exposed prefixes, of both families, with and without ports.
fn ring_packets(config: &Config, vni: impl Fn(usize) -> u32, n: usize) -> Vec<Packet> {
    let mut packets = synth::packets(config, 3_000, 9);
    let ports = [0u16, 1, 2, 3, 21, 22, 23, 80, 443, 1000, 65_535];
    for i in 0..n {
        for j in [(i + 1) % n, (i + 2) % n, (i + 3) % n] {
            for (k, &port) in ports.iter().enumerate() {
                let (a, b) = (i as u32, j as u32);
                let v4 = |me: u32, peer: u32| {
                    std::net::IpAddr::from([10, me as u8, peer as u8, k as u8])
                };
                let v6 = |me: u32, peer: u32| {
                    std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                        0xfd00_u128 << 112
                            | u128::from(me) << 96
                            | u128::from(peer) << 80
                            | k as u128,
                    ))
                };
                for (src, dst) in [
                    (v4(a, b), v4(b, a)),
                    (v4(a, 255), v4(b, 255)),
                    (v6(a, b), v6(b, a)),
                    (v6(a, 0xffff), v6(b, 0xffff)),
                    (v4(a, b), v6(b, a)),
                ] {
                    packets.push(Packet::tcp(vni(i), src, port, dst, port));
                    packets.push(Packet::portless(vni(i), src, dst, 1));
                }
            }
        }
    }
    packets
}

/// The VNI of each VPC of a ring.
type Vnis = fn(usize) -> u32;

#[test]
fn long_port_maps_ipv6_and_sparse_vnis_round_trip() {
    let long = "1,3,5,7,9,11,13,15,17,19,21,23,25";
    let layouts: [(usize, Vnis, &str); 4] = [
        (12, |i| 100 + i as u32, long),
        (12, |i| 1 + (i as u32) * 1_000_003, "80,443"),
        (
            40,
            |i| 1 + (i as u32).wrapping_mul(2_654_435_761) % 16_000_000,
            long,
        ),
        (2, |i| [1, 16_777_215][i], "22"),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (n, vni, ports) in layouts {
        let config = parse(&ring(n, vni, ports), None).unwrap();
        let packets = ring_packets(&config, vni, n);
        round_trips(&config, &packets, &CUTS);
        for table in [
            Table::build(&config).unwrap(),
            Table::build_searched(&config).unwrap(),
        ] {
            seen.extend(layouts_of(&table.export_state()));
        }
    }
    // A hub whose destination table is too long to pad: a big table.
    let config = parse(&hub(520), None).unwrap();
    round_trips(&config, &synth::packets(&config, 5_000, 3), &CUTS);
    let words = Table::build_searched(&config).unwrap().export_state();
    seen.extend(layouts_of(&words));
    let want = [
        "vni dense",
        "vni trie",
        "vni searched",
        "ipv4 trie",
        "ipv4 padded",
        "big tables",
        "long port maps",
        "ipv6 port ranges",
    ];
    for layout in want {
        assert!(seen.contains(layout), "{layout} not reached: {seen:?}");
    }
}

/// The layouts a state holds, read from its `meta` section and its sections' lengths.
fn layouts_of(words: &[u32]) -> Vec<&'static str> {
    let meta = &words[section(words, "meta")];
    let mut layouts = vec![["vni dense", "vni trie", "vni searched"][meta[0] as usize]];
    for side in [meta[2], meta[4]] {
        layouts.push(["ipv4 trie", "ipv4 padded", "ipv4 narrow"][side as usize]);
    }
    for (name, layout) in [
        ("src4-big-ends", "big tables"),
        ("dst4-big-ends", "big tables"),
        ("long-ends", "long port maps"),
        ("v6-port-starts", "ipv6 port ranges"),
    ] {
        if !section(words, name).is_empty() {
            layouts.push(layout);
        }
    }
    layouts
}

/// A hub peered with `spokes` VPCs, each exposing a /24 of its own with a gap after it.
fn hub(spokes: usize) -> String {
    let mut yaml = String::from("kind: VPCInfo\nmetadata: {name: hub}\nspec: {vni: 1}\n");
    for i in 0..spokes {
        yaml += &format!(
            "---\nkind: VPCInfo\nmetadata: {{name: s{i}}}\nspec: {{vni: {}}}\n---\nkind: Peering\nmetadata: {{name: hub--s{i}}}\nspec:\n  peering:\n    hub:\n      expose: [{{ips: [{{cidr: 10.0.0.0/16}}]}}]\n    s{i}:\n      expose: [{{ips: [{{cidr: 20.{}.{}.0/24}}]}}]\n",
            i + 2,
            i / 128,
            2 * (i % 128)
        );
    }
    yaml
}

proptest! {
    #![proptest_config(cases(1_000))]

    /// Generated configs, both layouts, loaded in parts cut anywhere.
    #[test]
    fn generated_tables_round_trip_in_any_parts(
        (config, packets) in arb::config_and_packets(64),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let parsed = parse(&config.yaml, None).unwrap();
        for table in [Table::build(&parsed).unwrap(), Table::build_searched(&parsed).unwrap()] {
            let words = table.export_state();
            let loaded = load_in_parts(&words, &cuts).unwrap();
            let same = differences(&table, &loaded, &packets);
            prop_assert!(same.is_ok(), "{:?}\n{}", same, config.yaml);
        }
    }

    /// A state with one word changed, cut short or extended is refused, or loads to a table
    /// that answers every kind of lookup without panicking.
    #[test]
    fn altered_states_are_refused_or_answer(
        (config, packets) in arb::config_and_packets(64),
        searched in any::<bool>(),
        at in any::<prop::sample::Index>(),
        how in 0..5u8,
        value in any::<u32>(),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let parsed = parse(&config.yaml, None).unwrap();
        let table = if searched { Table::build_searched(&parsed) } else { Table::build(&parsed) };
        let mut words = table.unwrap().export_state();
        let i = at.index(words.len());
        match how {
            0 => words[i] = value,
            1 => words[i] ^= 1 << (value % 32),
            2 => words[i] = words[i].wrapping_add(value % 5).wrapping_sub(2),
            3 => words.truncate(i),
            _ => words.push(value),
        }
        if let Ok(loaded) = load_in_parts(&words, &cuts) {
            answer_everything(&loaded, &packets);
        }
    }
}

/// Looks `packets` up every way there is, and names every verdict.
fn answer_everything(table: &Table, packets: &[Packet]) {
    let mut batch = vec![Verdict::default(); packets.len()];
    table.lookup_batch(packets, &mut batch);
    for (packet, verdict) in packets.iter().zip(&batch) {
        let _ = table.lookup(packet);
        let _ = table.verdict_text(*verdict);
    }
    let mut encoded = Vec::new();
    encode_packets(packets, &mut encoded);
    let mut out = Vec::new();
    judge_packed(Some(table), &encoded, &mut out);
}

/// The dual-stack gateway of 1,000 peerings, and its table's state.
fn dual_gateway_state() -> (Gateway, Vec<u32>) {
    let gateway = Gateway::new(GatewayShape::dual(1_000, true, 42));
    let config = parse(gateway.yaml(), None).unwrap();
    (gateway, Table::build(&config).unwrap().export_state())
}

/// The random choices of the alteration tests: xorshift, the same on every run.
fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// Alters `words` 400 times, one word at a time: a word of `places` chosen by `next`, given
/// `alter`'s value for it. Each altered state is loaded; a table loaded answers `packets`
/// (without panicking). Returns how many were refused and how many loaded.
fn altered_one_at_a_time(
    words: &[u32],
    places: &[usize],
    packets: &[Packet],
    next: &mut impl FnMut() -> u64,
    alter: impl Fn(u32, &mut dyn FnMut() -> u64) -> u32,
) -> (usize, usize) {
    let (mut refused, mut loaded) = (0, 0);
    for _ in 0..400 {
        let mut altered = words.to_vec();
        let at = places[(next() % places.len() as u64) as usize];
        altered[at] = alter(altered[at], next);
        match Table::from_state(&altered) {
            Ok(table) => {
                answer_everything(&table, packets);
                loaded += 1;
            }
            Err(_) => refused += 1,
        }
    }
    (refused, loaded)
}

/// The 1,000-peering gateway's state (tries, port maps) with one word altered at a time, at
/// random: each is refused or answers.
#[test]
fn a_gateway_state_altered_anywhere_is_refused_or_answers() {
    let mut gateway = Gateway::new(GatewayShape::with_peerings(1_000, true, 42));
    let config = parse(gateway.yaml(), None).unwrap();
    let packets = gateway.packets(512);
    let words = Table::build(&config).unwrap().export_state();
    let places: Vec<usize> = (0..words.len()).collect();
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let (refused, loaded) =
        altered_one_at_a_time(&words, &places, &packets, &mut next, |old, next| {
            match next() % 3 {
                0 => next() as u32,
                1 => old ^ 1 << (next() % 32),
                _ => old.wrapping_add(1),
            }
        });
    // Most words are trie entries and verdict cells, many of which another valid value
    // replaces; the checks must still refuse a good part.
    assert!(
        refused > 40 && loaded > 40,
        "{refused} refused, {loaded} loaded"
    );
}

// The hostile states.

/// The words of section `name` in a state.
fn section(words: &[u32], name: &str) -> Range<usize> {
    let i = SECTIONS.iter().position(|s| *s == name).unwrap();
    let header = 3 + SECTIONS.len();
    let start = header + words[3..3 + i].iter().map(|&l| l as usize).sum::<usize>();
    start..start + words[3 + i] as usize
}

fn spec_3_2() -> Table {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/cases");
    let text = std::fs::read_to_string(root.join("spec-3.2-ports/config.yaml")).unwrap();
    Table::build(&parse(&text, None).unwrap()).unwrap()
}

fn invalid_in(e: StateError, name: &str) {
    match e {
        StateError::Invalid { section, .. } if section == name => {}
        other => panic!("want a refusal in `{name}`, got {other:?}"),
    }
}

#[test]
fn a_state_cut_anywhere_is_refused() {
    let words = spec_3_2().export_state();
    for end in 0..words.len() {
        let e = Table::from_state(&words[..end]).err().unwrap();
        assert!(
            matches!(e, StateError::Truncated { got, .. } if got == end),
            "cut at {end}: {e:?}"
        );
    }
    let mut longer = words.clone();
    longer.push(0);
    let e = Table::from_state(&longer).err().unwrap();
    assert_eq!(
        e,
        StateError::TooLong {
            declared: words.len()
        }
    );
    // A loader that refused answers the same refusal ever after.
    let mut loader = StateLoader::new();
    loader.push(&longer).unwrap_err();
    assert_eq!(loader.push(&[]), Err(e.clone()));
    assert_eq!(loader.finish().err(), Some(e));
}

#[test]
fn wrong_magic_version_or_sizes_are_refused_before_any_section() {
    let words = spec_3_2().export_state();
    let with = |at: usize, value: u32| {
        let mut w = words.clone();
        w[at] = value;
        Table::from_state(&w).err().unwrap()
    };
    assert_eq!(with(0, MAGIC ^ 1), StateError::Magic { found: MAGIC ^ 1 });
    assert_eq!(
        with(1, VERSION + 1),
        StateError::Version { found: VERSION + 1 }
    );
    // A header claiming 2^31 words is refused from its first words alone.
    let mut loader = StateLoader::new();
    let mut huge = words[..3 + SECTIONS.len()].to_vec();
    huge[2] = 1 << 31;
    assert_eq!(
        loader.push(&huge),
        Err(StateError::TooLarge { declared: 1 << 31 })
    );
    const { assert!(MAX_STATE_WORDS < 1 << 31) };
    // A total that the sections do not add up to, and a section claiming more than all.
    assert!(matches!(with(2, words[2] - 1), StateError::Total { .. }));
    let cells = SECTIONS.iter().position(|s| *s == "cells").unwrap();
    assert!(matches!(
        with(3 + cells, u32::MAX),
        StateError::Total { .. }
    ));
    // Sizes that disagree with each other: a port map cut in its middle, and a row count
    // that is not the VPC count, with the total kept right.
    for (name, more) in [("port-maps", 1), ("rows", 2)] {
        let s = SECTIONS.iter().position(|s| *s == name).unwrap();
        let mut w = words.clone();
        w[3 + s] += more;
        w[2] += more;
        let e = Table::from_state(&w).err().unwrap();
        assert!(
            matches!(e, StateError::SectionLength { section, .. } if section == name),
            "{name}: {e:?}"
        );
    }
}

#[test]
fn an_index_past_its_section_is_refused() {
    let table = spec_3_2();
    let words = table.export_state();
    let vpcs = table.vpcs().len() as u32;
    let refused = |name: &str, edit: &dyn Fn(&mut Vec<u32>)| {
        let mut w = words.clone();
        edit(&mut w);
        invalid_in(Table::from_state(&w).err().unwrap(), name);
    };
    // A VNI's VPC past the VPCs (dense index).
    refused("vni-a", &|w| {
        let at = section(w, "vni-a").start;
        w[at] = vpcs;
    });
    // A trie node index past the nodes, and a trie value past the VPC's classes.
    refused("src4-keys", &|w| {
        let keys = section(w, "src4-keys");
        let nodes = (keys.len() / 256) as u32;
        let entry = keys.start + 10;
        w[entry] = nodes;
    });
    refused("dst4-keys", &|w| {
        let keys = section(w, "dst4-keys");
        let last = keys.end - 1;
        w[last] = 1 << 20;
    });
    // A port map past the maps.
    refused("src4-keys", &|w| {
        let keys = section(w, "src4-keys");
        let maps = (section(w, "port-maps").len() / 13) as u32;
        let last = keys.end - 1;
        w[last] = 1 << 31 | maps;
    });
    // A matrix past the cells, and a verdict the catalog does not know.
    refused("rows", &|w| {
        let at = section(w, "rows").start;
        w[at] += 1;
    });
    refused("cells", &|w| {
        let at = section(w, "cells").start;
        w[at] = 1 << 30 | vpcs;
    });
    // A VPC name that is not UTF-8.
    refused("vpc-names", &|w| {
        let at = section(w, "vpc-names").start;
        w[at] = 0xffff_ffff;
    });
    // An IPv6 segment whose port ranges run past its table's.
    refused("v6-segs", &|w| {
        let segs = section(w, "v6-segs");
        w[segs.start + 1] = 5;
        w[segs.start + 2] = 1;
    });
    // Run ends that go backwards.
    refused("v6-seg-ends", &|w| {
        let at = section(w, "v6-seg-ends").start;
        w[at] = u32::MAX;
    });
}

#[test]
fn a_vouched_load_skips_the_index_checks_and_no_other() {
    let table = spec_3_2();
    let words = table.export_state();
    let edited = |name: &str, at: usize, value: u32| {
        let mut w = words.clone();
        w[section(&words, name).start + at] = value;
        w
    };
    // The tries' indices and the verdict words: refused when checked, loaded when vouched for
    // (only words a checked load accepted are vouched for).
    let vpcs = table.vpcs().len() as u32;
    let nodes = (section(&words, "src4-keys").len() / 256) as u32;
    for (name, at, value) in [("cells", 0, 1 << 30 | vpcs), ("src4-keys", 10, nodes)] {
        let w = edited(name, at, value);
        invalid_in(Table::from_state(&w).err().unwrap(), name);
        assert!(load_vouched(&w).is_ok(), "{name} vouched for");
    }
    // What laying the table out needs is checked alike: the header, the sizes, a cut state,
    // the names.
    let mut wrong_magic = words.clone();
    wrong_magic[0] ^= 1;
    let mut wrong_size = words.clone();
    let maps = SECTIONS.iter().position(|s| *s == "port-maps").unwrap();
    wrong_size[3 + maps] += 1;
    wrong_size[2] += 1;
    for w in [
        wrong_magic,
        wrong_size,
        words[..words.len() - 1].to_vec(),
        edited("vpc-names", 0, u32::MAX),
    ] {
        assert_eq!(
            load_vouched(&w).err(),
            Table::from_state(&w).err(),
            "refused alike"
        );
        assert!(load_vouched(&w).is_err());
    }
}

#[test]
fn a_candidate_past_the_vpcs_is_refused() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/cases");
    let text = std::fs::read_to_string(root.join("spec-3.1-overlap/config.yaml")).unwrap();
    let table = Table::build(&parse(&text, None).unwrap()).unwrap();
    assert!(!table.catalog().candidate_sets.is_empty());
    let mut words = table.export_state();
    let at = section(&words, "set-members").start;
    words[at] = table.vpcs().len() as u32;
    invalid_in(Table::from_state(&words).err().unwrap(), "set-members");
}

// The IPv6 sides.

/// The dual-stack gateway's table (IPv6 tries over upper halves, split /64s) round-trips, and
/// its state carries both IPv6 sides.
#[test]
fn dual_gateway_tables_round_trip() {
    for peerings in [1_000, 5_000] {
        let mut gateway = Gateway::new(GatewayShape::dual(peerings, true, 42));
        let config = parse(gateway.yaml(), None).unwrap();
        let packets = gateway.packets(20_000);
        round_trips(&config, &packets, &CUTS);
        let words = Table::build(&config).unwrap().export_state();
        if peerings == 1_000 {
            // The `not` holes make both IPv4 sides four levels deep: narrow last levels.
            let layouts = layouts_of(&words);
            assert_eq!(layouts.iter().filter(|&&l| l == "ipv4 narrow").count(), 2);
        }
        for name in [
            "src6-nodes",
            "src6-roots",
            "src6-gaps",
            "src6-low",
            "dst6-low",
        ] {
            assert!(!section(&words, name).is_empty(), "{name}");
        }
        // Without tries, no IPv6 sides either.
        let words = Table::build_searched(&config).unwrap().export_state();
        assert!(section(&words, "src6-nodes").is_empty());
    }
}

/// The dual-stack gateway's state with one word of its IPv6 sides (or their layout in `meta`)
/// altered at a time: each is refused or answers.
#[test]
fn a_dual_state_altered_in_its_ipv6_sides_is_refused_or_answers() {
    let (mut gateway, words) = dual_gateway_state();
    let packets = gateway.packets(512);
    let meta = section(&words, "meta");
    let mut places: Vec<usize> = (meta.start + 6..meta.start + 6 + 1 + 2 * 13).collect();
    for side in ["src6", "dst6"] {
        for part in ["nodes", "roots", "gaps", "low"] {
            places.extend(section(&words, &format!("{side}-{part}")));
        }
    }
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let (refused, loaded) =
        altered_one_at_a_time(&words, &places, &packets, &mut next, |old, next| {
            match next() % 4 {
                0 => next() as u32,
                1 => old ^ 1 << (next() % 32),
                2 => old.wrapping_add(1),
                _ => 1 << 29 | (next() % 300) as u32,
            }
        });
    assert!(
        refused > 40 && loaded > 40,
        "{refused} refused, {loaded} loaded"
    );
}

#[test]
fn an_ipv6_index_or_layout_past_its_bounds_is_refused() {
    let gateway = Gateway::new(GatewayShape::dual(100, true, 7));
    let table = Table::build(&parse(gateway.yaml(), None).unwrap()).unwrap();
    let words = table.export_state();
    let refused = |name: &str, edit: &dyn Fn(&mut Vec<u32>)| {
        let mut w = words.clone();
        edit(&mut w);
        invalid_in(Table::from_state(&w).err().unwrap(), name);
    };
    // The source side's layout in `meta`: depth, bits compared away, regions, the low trie's
    // depth and roots, the bases.
    let side = section(&words, "meta").start + 7;
    for (at, value) in [(0, 9), (0, 0), (1, 60), (1, 12), (2, 0), (2, 5), (4, 0)] {
        refused("meta", &|w| w[side + at] = value);
    }
    // Bases not ascending.
    refused("meta", &|w| {
        let (a, b) = (w[side + 5], w[side + 6]);
        (w[side + 5], w[side + 6]) = (w[side + 7], w[side + 8]);
        (w[side + 7], w[side + 8]) = (a, b);
    });
    // A root past the nodes, and a node index past them.
    refused("src6-roots", &|w| {
        let nodes = (section(w, "src6-nodes").len() / 256) as u32;
        let at = section(w, "src6-roots").start;
        w[at] = nodes;
    });
    refused("dst6-nodes", &|w| {
        let nodes = section(w, "dst6-nodes");
        // An entry of the first VPC's root of its first region: a node index (depth 2).
        let root = w[section(w, "dst6-roots").start] as usize;
        w[nodes.start + 256 * root] = (nodes.len() / 256) as u32 + 7;
    });
    // A split /64 past the low trie's roots, a class past the VPC's, a port map past the maps.
    let last = |w: &Vec<u32>, name: &str| section(w, name).end - 1;
    refused("src6-nodes", &|w| {
        let at = last(w, "src6-nodes");
        w[at] = 1 << 29 | 100_000;
    });
    // (A class of the low trie is checked against the VPCs whose split /64 it is.)
    refused("dst6-roots", &|w| {
        let at = last(w, "dst6-low");
        w[at] = 1 << 20;
    });
    refused("src6-gaps", &|w| {
        let at = last(w, "src6-gaps");
        w[at] = 1 << 31 | 1 << 24;
    });
    // Sections whose lengths the VPCs fix.
    let cut = |w: &mut Vec<u32>, name: &str| {
        let at = section(w, name).end - 1;
        w.remove(at);
        let i = SECTIONS.iter().position(|s| *s == name).unwrap();
        w[3 + i] -= 1;
        w[2] -= 1;
    };
    refused("src6-roots", &|w| cut(w, "src6-roots"));
    refused("dst6-gaps", &|w| cut(w, "dst6-gaps"));
    // IPv6 sides in a table said to have none.
    refused("src6-nodes", &|w| {
        let at = section(w, "meta").start + 6;
        w[at] = 0;
    });
}

/// The dual-stack gateway's state with one word of its IPv4 sides (narrow last levels) or
/// their layout in `meta` altered at a time: each is refused or answers.
#[test]
fn a_dual_state_altered_in_its_narrow_ipv4_sides_is_refused_or_answers() {
    let (mut gateway, words) = dual_gateway_state();
    let packets = gateway.packets(512);
    let meta = section(&words, "meta");
    let mut places: Vec<usize> = (meta.start + 2..meta.start + 6).collect();
    for name in ["src4-keys", "src4-values", "dst4-keys", "dst4-values"] {
        places.extend(section(&words, name));
    }
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let (refused, loaded) =
        altered_one_at_a_time(&words, &places, &packets, &mut next, |old, next| {
            match next() % 5 {
                0 => next() as u32,
                1 => old ^ 1 << (next() % 32),
                2 => old.wrapping_add(1),
                3 => (next() % 4_000) as u32 * 16 + (next() % 10) as u32,
                _ => 1 << 31 | (next() % 300) as u32,
            }
        });
    assert!(
        refused > 40 && loaded > 10,
        "{refused} refused, {loaded} loaded"
    );
}

/// Entries that name narrow nodes, each on the path of a packet that is then looked up,
/// altered one at a time to name another node (aligned or not, within the narrow nodes or
/// past them, of any `k`): each state is refused, or loads and answers that packet (a
/// missing check would read past the narrow nodes and panic).
#[test]
fn a_narrow_node_named_on_a_packets_path_is_refused_or_answers() {
    let (mut gateway, words) = dual_gateway_state();
    assert_eq!(layouts_of(&words)[1..3], ["ipv4 narrow", "ipv4 narrow"]);
    let keys = section(&words, "src4-keys");
    let vnis = section(&words, "vpc-vnis");
    let last = section(&words, "src4-values").len() as u32;
    // The source side's depth is 4: the entry a key's third byte takes in VPC `vpc`'s trie.
    let entry_of = |vpc: u32, key: u32| {
        let step = |node: u32, byte: u32| keys.start + 256 * node as usize + (byte & 0xff) as usize;
        let n1 = words[step(vpc, key >> 24)];
        let n2 = words[step(n1, key >> 16)];
        step(n2, key >> 8)
    };
    let mut next = xorshift(0x853c_49e6_748f_ea9b);
    let (mut refused, mut loaded) = (0, 0);
    for packet in gateway.packets_of(Traffic::Ipv4, 300) {
        let (IpAddr::V4(src), IpAddr::V4(_)) = (packet.src, packet.dst) else {
            continue;
        };
        let Some(vpc) = words[vnis.clone()]
            .iter()
            .position(|&v| v == packet.src_vni)
        else {
            continue;
        };
        let at = entry_of(vpc as u32, u32::from(src));
        let k = (next() % 10) as u32;
        let offset = match next() % 3 {
            0 => last.saturating_sub((next() % 300) as u32),
            1 => (next() % u64::from(last)) as u32,
            _ => (next() % u64::from(last)) as u32 & !0xff,
        };
        let mut altered = words.clone();
        altered[at] = offset << 4 | k;
        match Table::from_state(&altered) {
            Ok(table) => {
                answer_everything(&table, std::slice::from_ref(&packet));
                loaded += 1;
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        refused > 30 && loaded > 30,
        "{refused} refused, {loaded} loaded"
    );
}

#[test]
fn a_narrow_node_past_its_bounds_or_off_its_alignment_is_refused() {
    let (_, words) = dual_gateway_state();
    assert_eq!(layouts_of(&words)[1..3], ["ipv4 narrow", "ipv4 narrow"]);
    let refused = |name: &str, edit: &dyn Fn(&mut Vec<u32>)| {
        let mut w = words.clone();
        edit(&mut w);
        invalid_in(Table::from_state(&w).err().unwrap(), name);
    };
    // The depth of a narrow side: 2 to 4.
    let meta = section(&words, "meta").start;
    for depth in [0, 1, 5] {
        refused("meta", &|w| w[meta + 3] = depth);
    }
    // An entry of the source side's level above its narrow nodes (VPC 0's root, its first
    // child, that node's first child: a node of the third level) naming a node with a k of
    // 9, off its alignment, and past the narrow nodes.
    let level2 = |w: &Vec<u32>| {
        let keys = section(w, "src4-keys").start;
        let child = |node: u32| w[keys + 256 * node as usize];
        keys + 256 * child(child(0)) as usize
    };
    let values = section(&words, "src4-values").len() as u32;
    let past = values.next_multiple_of(256);
    for entry in [9, 1 << 4 | 1, 8 << 4 | 4, values << 4 | 8, past << 4] {
        refused("src4-keys", &|w| {
            let at = level2(w);
            w[at] = entry;
        });
    }
    // A value of a narrow node naming a port map past the maps, or a class past its VPC's.
    for value in [1 << 31 | 1 << 24, 1 << 20] {
        refused("src4-keys", &|w| {
            let at = section(w, "src4-values").start;
            w[at] = value;
        });
    }
    // A big table beside a narrow side.
    refused("src4-big-ends", &|w| {
        let at = section(w, "src4-big-ends").start;
        w.insert(at, 1);
        let i = SECTIONS.iter().position(|s| *s == "src4-big-ends").unwrap();
        w[3 + i] += 1;
        w[2] += 1;
    });
}

/// A state whose IPv6 trie is larger than a build's budget for it is refused before its
/// nodes are checked.
#[test]
fn an_ipv6_trie_past_its_budget_is_refused() {
    let gateway = Gateway::new(GatewayShape::dual(100, false, 7));
    let words = Table::build(&parse(gateway.yaml(), None).unwrap())
        .unwrap()
        .export_state();
    let nodes = section(&words, "src6-low");
    let extra = (32 << 20) / 4 - nodes.len() + 256;
    let mut big = words[..nodes.end].to_vec();
    big.extend(std::iter::repeat_n(0, extra));
    big.extend_from_slice(&words[nodes.end..]);
    let i = SECTIONS.iter().position(|s| *s == "src6-low").unwrap();
    big[3 + i] += extra as u32;
    big[2] += extra as u32;
    let e = Table::from_state(&big).err().unwrap();
    assert!(e.to_string().contains("past its budget"), "{e}");
    invalid_in(e, "src6-low");
}
