//! The column path (`WasmPolicy::judge_columns`): bursts a dataplane's decoder lays out in
//! columns get the verdicts the fixture cases expect, and those `Policy::judge` and the native
//! library give (IPv4, mixed and dual-stack traffic), with one batch reused across bursts of
//! any size; slots left unset are dropped; a module's answer of the wrong length or with an
//! unknown verdict is a fault; a gateway's worker judges such bursts as it judges `Packet`s,
//! swaps and faults included.

use std::net::IpAddr;
use std::sync::Arc;

use flowgate_host::gateway::{self, OnFault, Options, SwapRequest};
use flowgate_host::wasm::WasmPolicy;
use flowgate_host::{DEFAULT_MODULE, Policy, PolicyFault, StartError};
use flowgate_policy::packed::Columns;
use flowgate_policy::synth::{self, Gateway, GatewayShape, Scale, Traffic};
use flowgate_policy::{Packet, Table, Verdict};
use flowgate_test_guests as guests;

/// `packets` laid out in `columns` as a decoder would, slots in reverse order (an IPv6
/// address list in another order than `encode_packets` gives), IPv4 packets through
/// `set_v4`.
fn lay_out(columns: &mut Columns, packets: &[Packet]) {
    columns.begin(packets.len()).unwrap();
    for (i, p) in packets.iter().enumerate().rev() {
        match (p.src, p.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                columns.set_v4(i, p.src_vni, p.proto, p.ports, src, dst)
            }
            _ => columns.set(i, p),
        }
        .unwrap();
    }
}

/// `packets` cut into bursts of changing size, an empty one among them: 256, 1, 1,024, 0,
/// 37 and 256 packets, again until none are left.
fn bursts(packets: &[Packet]) -> impl Iterator<Item = &[Packet]> {
    let mut rest = packets;
    [256, 1, 1024, 0, 37, 256]
        .into_iter()
        .cycle()
        .map_while(move |n| {
            (!rest.is_empty()).then(|| {
                let (burst, after) = rest.split_at(n.min(rest.len()));
                rest = after;
                burst
            })
        })
}

/// `packets` through `judge_columns`, checked equal to what `Policy::judge` gives.
fn judge_both(policy: &mut WasmPolicy, columns: &mut Columns, packets: &[Packet]) -> Vec<Verdict> {
    lay_out(columns, packets);
    let by_columns: Vec<Verdict> = policy.judge_columns(columns).unwrap().iter().collect();
    let mut by_packets = vec![Verdict::default(); packets.len()];
    policy.judge(packets, &mut by_packets).unwrap();
    assert_eq!(by_columns, by_packets);
    by_columns
}

#[test]
fn every_case_through_the_column_path() {
    let runtime = crate::runtime();
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let cases =
        flowgate_policy::cases::Case::load_all(&crate::repo().join("fixtures/cases")).unwrap();
    let mut columns = Columns::default();
    let mut failures = Vec::new();
    let mut judged = 0;
    for case in cases {
        let problems = match WasmPolicy::new(&runtime, &module, &case.config) {
            Err(StartError::Config(e)) => case.check_error(Some(&e)),
            Err(e) => vec![format!("the module failed: {e}")],
            Ok(mut policy) => {
                let catalog = policy.catalog().clone();
                case.check_verdicts(&catalog, |packets| {
                    judged += packets.len();
                    judge_both(&mut policy, &mut columns, packets)
                })
            }
        };
        failures.extend(problems.into_iter().map(|p| format!("{}: {p}", case.name)));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(judged > 50, "only {judged} fixture packets");
}

/// Realistic traffic (IPv4, ports) and the mixed generator's, in bursts of changing size
/// through one reused batch: the native table's verdicts.
#[test]
fn the_column_path_judges_as_the_library_does() {
    let runtime = crate::runtime();
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let mut gateway = Gateway::new(GatewayShape::with_peerings(200, true, 42));
    let realistic = (gateway.yaml().to_owned(), gateway.packets(3000));
    let mixed_yaml = synth::config_yaml(Scale::with_peerings(100, 3));
    let mixed = synth::packets(&flowgate_policy::parse(&mixed_yaml, None).unwrap(), 3000, 9);
    let v6 = mixed
        .iter()
        .filter(|p| p.src.is_ipv6() || p.dst.is_ipv6())
        .count();
    assert!(v6 > 100, "only {v6} IPv6 packets in the mixed traffic");
    let mut columns = Columns::with_capacity(16);
    for (yaml, packets) in [realistic, (mixed_yaml, mixed)] {
        let table = Table::build(&flowgate_policy::parse(&yaml, None).unwrap()).unwrap();
        let mut policy = WasmPolicy::new(&runtime, &module, &yaml).unwrap();
        for burst in bursts(&packets) {
            let mut native = vec![Verdict::default(); burst.len()];
            table.lookup_batch(burst, &mut native);
            assert_eq!(judge_both(&mut policy, &mut columns, burst), native);
        }
    }
}

/// The dual-stack gateway workload the benchmarks measure (IPv4, IPv6 and mixed-family
/// packets, ports, holes, shared service prefixes) and each family's stream, in bursts of changing size: the column
/// path, the `Packet` path and the typed call give the native table's verdicts.
#[test]
fn dual_stack_traffic_through_both_paths_as_the_library_judges() {
    let runtime = crate::runtime();
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let mut gateway = Gateway::new(GatewayShape::dual(1_000, true, 42));
    let table = Table::build(&flowgate_policy::parse(gateway.yaml(), None).unwrap()).unwrap();
    let mut policy = WasmPolicy::new(&runtime, &module, gateway.yaml()).unwrap();
    let mut columns = Columns::with_capacity(16);
    let mut seen = std::collections::BTreeMap::<(bool, bool, &str), usize>::new();
    for traffic in [Traffic::All, Traffic::Ipv4, Traffic::Ipv6] {
        let packets = gateway.packets_of(traffic, 3000);
        for burst in bursts(&packets) {
            let mut native = vec![Verdict::default(); burst.len()];
            table.lookup_batch(burst, &mut native);
            assert_eq!(judge_both(&mut policy, &mut columns, burst), native);
            let mut typed = vec![Verdict::default(); burst.len()];
            policy.judge_typed(burst, &mut typed).unwrap();
            assert_eq!(typed, native);
            for (p, v) in burst.iter().zip(&native) {
                let kind = match v {
                    Verdict::Allow(_) => "allow",
                    Verdict::AllowAmbiguous(_) => "ambiguous",
                    Verdict::Drop(_) => "drop",
                };
                *seen
                    .entry((p.src.is_ipv6(), p.dst.is_ipv6(), kind))
                    .or_default() += 1;
            }
        }
    }
    // Each family reached every kind of verdict, and mixed-family packets both.
    for family in [(false, false), (true, true)] {
        for kind in ["allow", "ambiguous", "drop"] {
            let n = seen.get(&(family.0, family.1, kind)).copied().unwrap_or(0);
            assert!(n > 0, "no {kind} for {family:?}: {seen:?}");
        }
    }
    for family in [(false, true), (true, false)] {
        for kind in ["allow", "drop"] {
            let n = seen.get(&(family.0, family.1, kind)).copied().unwrap_or(0);
            assert!(n > 0, "no {kind} for {family:?}: {seen:?}");
        }
    }
}

/// A slot the decoder left unset is `drop(unknown-vpc)`, whatever the burst before put there.
#[test]
fn an_unset_slot_is_dropped() {
    let runtime = crate::runtime();
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let mut gateway = Gateway::new(GatewayShape::with_peerings(200, true, 42));
    let packets = gateway.packets(300);
    let table = Table::build(&flowgate_policy::parse(gateway.yaml(), None).unwrap()).unwrap();
    let mut policy = WasmPolicy::new(&runtime, &module, gateway.yaml()).unwrap();
    let mut columns = Columns::default();
    lay_out(&mut columns, &packets);
    let allowed = policy
        .judge_columns(&columns)
        .unwrap()
        .iter()
        .filter(|v| !matches!(v, Verdict::Drop(_)))
        .count();
    assert!(
        allowed > 100,
        "only {allowed} allowed: the check below would prove little"
    );
    columns.begin(packets.len()).unwrap();
    for (i, p) in packets.iter().enumerate().step_by(2) {
        columns.set(i, p).unwrap();
    }
    let verdicts = policy.judge_columns(&columns).unwrap();
    for (i, p) in packets.iter().enumerate() {
        let want = if i % 2 == 0 {
            table.lookup(p)
        } else {
            Verdict::default()
        };
        assert_eq!(verdicts.verdict(i), Some(want), "packet {i}");
    }
}

/// A module that answers a verdict word its configuration does not know, or one verdict too
/// few, faults the burst on the column path as on the `Packet` path.
#[test]
fn a_bad_answer_through_the_column_path_is_a_fault() {
    let runtime = crate::runtime();
    let config = synth::config_yaml(Scale::with_peerings(40, 8));
    let mut batch = synth::packets(&flowgate_policy::parse(&config, None).unwrap(), 64, 1);
    let mut columns = Columns::default();
    let unknown = runtime.load(guests::UNKNOWN).unwrap();
    let mut policy = WasmPolicy::start(&runtime, &unknown, &config).unwrap();
    // Without its trigger the module is honest.
    lay_out(&mut columns, &batch);
    assert!(policy.judge_columns(&columns).is_ok());
    for at in [40, 11] {
        let p = batch[at];
        batch[at] = Packet::tcp(p.src_vni, p.src, guests::trigger::UNKNOWN, p.dst, 80);
    }
    lay_out(&mut columns, &batch);
    let fault = policy.judge_columns(&columns).unwrap_err();
    assert!(
        matches!(fault, PolicyFault::UnknownVerdict { index: 11 }),
        "{fault}"
    );
    assert!(fault.is_module_fault());
    let mut out = vec![Verdict::default(); batch.len()];
    let fault = policy.judge(&batch, &mut out).unwrap_err();
    assert!(
        matches!(fault, PolicyFault::UnknownVerdict { index: 11 }),
        "{fault}"
    );

    let short = runtime.load(guests::SHORT).unwrap();
    let mut policy = WasmPolicy::start(&runtime, &short, &config).unwrap();
    let fault = policy.judge_columns(&columns).unwrap_err();
    assert!(
        matches!(
            fault,
            PolicyFault::WrongLength {
                expected: 64,
                got: 63
            }
        ),
        "{fault}"
    );
}

/// A gateway of one worker on the default module and a generated configuration.
fn one_worker(config: &str, on_fault: OnFault) -> Arc<gateway::Gateway> {
    let options = Options {
        workers: 1,
        on_fault,
        fault_limit: 1000,
        ..Options::default()
    };
    gateway::Gateway::new(crate::runtime(), DEFAULT_MODULE, config, options).unwrap()
}

/// A worker's column path gets the verdicts and the counts of its `Packet` path, picks up a
/// swap at the next burst, and meets a module's fault as the `Packet` path does: judged again
/// by the previous release under `--on-fault previous`, otherwise the burst dropped whole as
/// `policy-fault`.
#[test]
fn a_worker_judges_decoded_bursts_as_it_judges_packets() {
    let config = synth::config_yaml(Scale::with_peerings(60, 11));
    let mut packets = synth::packets(&flowgate_policy::parse(&config, None).unwrap(), 256 * 4, 12);
    // One packet of the last burst makes the trapping module trap.
    let last = &mut packets[256 * 3 + 17];
    *last = Packet::tcp(last.src_vni, last.src, guests::trigger::TRAP, last.dst, 80);
    let native = Table::build(&flowgate_policy::parse(&config, None).unwrap()).unwrap();
    let want: Vec<Verdict> = packets.iter().map(|p| native.lookup(p)).collect();

    for on_fault in [OnFault::Previous, OnFault::FailClosed] {
        let by_columns = one_worker(&config, on_fault);
        let by_packets = one_worker(&config, on_fault);
        let (mut stage, mut other) = (by_columns.worker(0), by_packets.worker(0));
        let mut columns = Columns::default();
        let mut out = vec![Verdict::default(); 256];
        for (i, burst) in packets.chunks(256).enumerate() {
            if i == 2 {
                by_columns.swap(SwapRequest::module(guests::TRAP)).unwrap();
                by_packets.swap(SwapRequest::module(guests::TRAP)).unwrap();
            }
            lay_out(&mut columns, burst);
            let judged = stage.judge_columns(&columns);
            let expected_generation = if i < 2 { 1 } else { 2 };
            assert_eq!(judged.generation, expected_generation, "burst {i}");
            let verdicts: Option<Vec<Verdict>> = judged.verdicts.map(|v| v.iter().collect());
            let names = judged.catalog.clone();
            let packet_path = other.judge(burst, &mut out);
            assert_eq!(
                verdicts.as_deref(),
                packet_path.verdicts,
                "burst {i}, {on_fault:?}"
            );
            assert_eq!(&names, packet_path.catalog, "burst {i}");
            match (i, on_fault, &verdicts) {
                (3, OnFault::FailClosed, None) => {}
                (3, OnFault::FailClosed, Some(_)) => panic!("a trapped burst got verdicts"),
                (_, _, Some(v)) => assert_eq!(v[..], want[i * 256..(i + 1) * 256], "burst {i}"),
                (_, _, None) => panic!("burst {i} dropped, {on_fault:?}"),
            }
        }
        let counters = by_columns.counters();
        assert_eq!(counters, by_packets.counters(), "{on_fault:?}");
        assert_eq!(counters.packets, 256 * 4);
        assert_eq!(counters.faults, u64::from(on_fault == OnFault::FailClosed));
        let dropped = counters.drops.get("policy-fault").copied().unwrap_or(0);
        let expected = if on_fault == OnFault::FailClosed {
            256
        } else {
            0
        };
        assert_eq!(dropped, expected, "{on_fault:?}");
        assert_eq!(by_columns.events().faults.get("trap"), Some(&1));
    }
}
