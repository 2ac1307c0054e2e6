//! The policy table: lookup cost per packet, natively and through the Wasm component's packed
//! call (batches of 256), and build time. Native and Wasm judge the same packets.
//!
//! - `realistic/{native,wasm}/{1000,5000}[-noports]`: the gateway-shaped workload (100 VPCs
//!   and 1,000 peerings, 250 and 5,000), each timed batch the next 256 of a pool of a million
//!   distinct packets: what a gateway sees, and the figure to quote.
//!   `wasm` judges batches a dataplane's decoder laid out in columns (`judge_columns`: no
//!   encode pass, verdicts read where they lie); `wasm-packets` the same batches as `Packet`
//!   slices (`Policy::judge`: encoded, then decoded into a slice).
//! - `realistic/crossing/{256,1024}`: batches of 256 and 1,024 of the 1,000-peering workload
//!   (with ports) into a guest that answers without reading them: what crossing into the
//!   sandbox costs on this traffic, the floor of the Wasm path; `crossing-packets` the same
//!   through `Policy::judge`.
//! - `dual/{native,wasm}/{1000,5000}/{ipv4,ipv6,dual}`: the dual-stack gateway workload (120
//!   VPCs and 1,000 peerings, 300 and 5,000; each side one IPv4 and one IPv6 block, a fifth
//!   of the entries with port ranges, some holes, wide prefixes and shared service prefixes),
//!   batches of 256 from a million distinct packets as in `realistic`: `ipv4` only the mix's
//!   IPv4 packets, `ipv6` only its IPv6 ones, `dual` the whole mix (45 % IPv4, 45 % IPv6, 5 %
//!   of mixed families, 5 % random). One configuration for the three; `wasm` on the column
//!   path.
//! - `repeat/{native,wasm}/{10,100,1000,5000}`: the same 4,096 packets (the mixed generator,
//!   `synth::config_yaml`) judged again and again. The branch predictor learns them: a best
//!   case.
//! - `state/{configure,export,load,load-parts,finish}/{1000,5000}`: the gateway-shaped table
//!   (with ports) built from its YAML (parse and build: what adopting a state replaces),
//!   exported as a state, and loaded from it in one part and in parts of 65,536 words;
//!   `finish` is the load's last step alone, the checks of every index and the table's
//!   assembly.
//!
//! `cargo bench -p flowgate-benches --bench policy`

#![allow(clippy::expect_used)] // a benchmark with bad setup should stop loudly

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flowgate_benches::{Realistic, allowed, columns, setup};
use flowgate_host::wasm::Verdicts;
use flowgate_host::wasm::{Limits, Runtime, WasmPolicy};
use flowgate_host::{DEFAULT_MODULE, Policy};
use flowgate_policy::synth::{Gateway, GatewayShape, Traffic};
use flowgate_policy::{StateLoader, Table, Verdict};

const SIZES: [usize; 4] = [10, 100, 1_000, 5_000];
const BATCH: usize = flowgate_benches::PACKETS;
/// Packets per guest call on the Wasm path: the dataplane's default.
const GUEST_BATCH: usize = 256;

/// Batch sizes of the crossing rows.
const CROSSING_BATCHES: [usize; 2] = [256, 1024];

/// How many of a burst's verdicts let their packet through.
fn allowed_in(verdicts: &Verdicts<'_>) -> usize {
    verdicts
        .iter()
        .filter(|v| !matches!(v, Verdict::Drop(_)))
        .count()
}

/// The realistic workloads: peerings, and whether a quarter of the entries have port ranges.
const REALISTIC: [(usize, bool); 4] =
    [(1_000, true), (1_000, false), (5_000, true), (5_000, false)];

fn realistic(c: &mut Criterion) {
    let runtime = Runtime::new(Limits::default(), None).expect("wasmtime starts");
    let module = runtime
        .load(DEFAULT_MODULE)
        .expect("the default module loads");
    let null_module = runtime
        .load(flowgate_test_guests::NULL)
        .expect("the null guest loads");
    let mut group = c.benchmark_group("realistic");
    group.throughput(Throughput::Elements(GUEST_BATCH as u64));
    for (peerings, ports) in REALISTIC {
        let work = Realistic::new(peerings, ports, GUEST_BATCH);
        let name = format!("{peerings}{}", if ports { "" } else { "-noports" });
        let mut verdicts = vec![Verdict::default(); GUEST_BATCH];
        let mut batches = work.batches();
        group.bench_function(BenchmarkId::new("native", &name), |b| {
            b.iter(|| {
                let (batch, expected) = batches.next().expect("batches cycle");
                work.table.lookup_batch(black_box(batch), &mut verdicts);
                assert_eq!(allowed(&verdicts), expected);
            })
        });
        let mut wasm =
            WasmPolicy::new(&runtime, &module, &work.yaml).expect("the module takes the config");
        let laid_out = work.column_batches();
        let mut bursts = laid_out.iter().cycle();
        group.bench_function(BenchmarkId::new("wasm", &name), |b| {
            b.iter(|| {
                let (burst, expected) = bursts.next().expect("batches cycle");
                let verdicts = wasm
                    .judge_columns(black_box(burst))
                    .expect("the module judges");
                assert_eq!(allowed_in(&verdicts), *expected);
            })
        });
        drop(laid_out);
        let mut batches = work.batches();
        group.bench_function(BenchmarkId::new("wasm-packets", &name), |b| {
            b.iter(|| {
                let (batch, expected) = batches.next().expect("batches cycle");
                wasm.judge(black_box(batch), &mut verdicts)
                    .expect("the module judges");
                assert_eq!(allowed(&verdicts), expected);
            })
        });
    }
    // A guest that answers without reading the packets, on the same batches: the crossing
    // alone (copy in, call, copy out, check and decode; encode too for `crossing-packets`),
    // the floor under `wasm`.
    let work = Realistic::new(1_000, true, GUEST_BATCH);
    let mut null = WasmPolicy::new(&runtime, &null_module, &work.yaml).expect("the guest starts");
    for n in CROSSING_BATCHES {
        group.throughput(Throughput::Elements(n as u64));
        let laid_out: Vec<_> = work.pool.chunks_exact(n).map(columns).collect();
        let mut bursts = laid_out.iter().cycle();
        group.bench_function(BenchmarkId::new("crossing", n), |b| {
            b.iter(|| {
                let burst = bursts.next().expect("batches cycle");
                let verdicts = null
                    .judge_columns(black_box(burst))
                    .expect("the guest answers");
                assert_eq!(allowed_in(&verdicts), 0);
            })
        });
        drop(laid_out);
        let mut verdicts = vec![Verdict::default(); n];
        let mut batches = work.pool.chunks_exact(n).cycle();
        group.bench_function(BenchmarkId::new("crossing-packets", n), |b| {
            b.iter(|| {
                let batch = batches.next().expect("batches cycle");
                null.judge(black_box(batch), &mut verdicts)
                    .expect("the guest answers");
                assert_eq!(allowed(&verdicts), 0);
            })
        });
    }
    group.finish();
}

/// The traffic of the `dual` rows, by name.
const DUAL_TRAFFIC: [(&str, Traffic); 3] = [
    ("ipv4", Traffic::Ipv4),
    ("ipv6", Traffic::Ipv6),
    ("dual", Traffic::All),
];

fn dual(c: &mut Criterion) {
    let runtime = Runtime::new(Limits::default(), None).expect("wasmtime starts");
    let module = runtime
        .load(DEFAULT_MODULE)
        .expect("the default module loads");
    let mut group = c.benchmark_group("dual");
    group.throughput(Throughput::Elements(GUEST_BATCH as u64));
    for peerings in [1_000, 5_000] {
        for (name, traffic) in DUAL_TRAFFIC {
            let work = Realistic::dual(peerings, traffic, GUEST_BATCH);
            let id = format!("{peerings}/{name}");
            let mut verdicts = vec![Verdict::default(); GUEST_BATCH];
            let mut batches = work.batches();
            group.bench_function(BenchmarkId::new("native", &id), |b| {
                b.iter(|| {
                    let (batch, expected) = batches.next().expect("batches cycle");
                    work.table.lookup_batch(black_box(batch), &mut verdicts);
                    assert_eq!(allowed(&verdicts), expected);
                })
            });
            let mut wasm = WasmPolicy::new(&runtime, &module, &work.yaml)
                .expect("the module takes the config");
            let laid_out = work.column_batches();
            let mut bursts = laid_out.iter().cycle();
            group.bench_function(BenchmarkId::new("wasm", &id), |b| {
                b.iter(|| {
                    let (burst, expected) = bursts.next().expect("batches cycle");
                    let verdicts = wasm
                        .judge_columns(black_box(burst))
                        .expect("the module judges");
                    assert_eq!(allowed_in(&verdicts), *expected);
                })
            });
        }
    }
    group.finish();
}

fn repeat(c: &mut Criterion) {
    let runtime = Runtime::new(Limits::default(), None).expect("wasmtime starts");
    let module = runtime
        .load(DEFAULT_MODULE)
        .expect("the default module loads");
    let mut group = c.benchmark_group("repeat");
    group.throughput(Throughput::Elements(BATCH as u64));
    for peerings in SIZES {
        let (yaml, config, packets) = setup(peerings);
        let table = Table::build(&config).expect("the table builds");
        let mut verdicts = vec![Verdict::default(); packets.len()];
        // The answer every timed run must reproduce: allowed packets in the batch.
        let single: Vec<Verdict> = packets.iter().map(|p| table.lookup(p)).collect();
        let expected = allowed(&single);
        group.bench_with_input(
            BenchmarkId::new("native", peerings),
            &packets,
            |b, packets| {
                b.iter(|| {
                    table.lookup_batch(black_box(packets), &mut verdicts);
                    assert_eq!(allowed(&verdicts), expected);
                })
            },
        );
        let mut wasm =
            WasmPolicy::new(&runtime, &module, &yaml).expect("the module takes the config");
        group.bench_with_input(
            BenchmarkId::new("wasm", peerings),
            &packets,
            |b, packets| {
                b.iter(|| {
                    for (chunk, out) in black_box(packets)
                        .chunks(GUEST_BATCH)
                        .zip(verdicts.chunks_mut(GUEST_BATCH))
                    {
                        wasm.judge(chunk, out).expect("the module judges");
                    }
                    assert_eq!(allowed(&verdicts), expected);
                })
            },
        );
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    for peerings in SIZES {
        let (_, config, _) = setup(peerings);
        group.bench_with_input(
            BenchmarkId::from_parameter(peerings),
            &config,
            |b, config| {
                b.iter(|| {
                    let table = Table::build(black_box(config)).expect("the table builds");
                    assert_eq!(table.vpcs().len(), config.vpcs.len());
                    table
                })
            },
        );
    }
    group.finish();
}

/// Words of a part of a state: what one `list<u32>` call carries at most.
const STATE_PART: usize = 1 << 16;

fn state(c: &mut Criterion) {
    let mut group = c.benchmark_group("state");
    for peerings in [1_000, 5_000] {
        let yaml = Gateway::new(GatewayShape::with_peerings(peerings, true, 42))
            .yaml()
            .to_owned();
        let config = flowgate_policy::parse(&yaml, None).expect("the config parses");
        let table = Table::build(&config).expect("the table builds");
        let words = table.export_state();
        group.bench_with_input(BenchmarkId::new("configure", peerings), &yaml, |b, yaml| {
            b.iter(|| {
                let config = flowgate_policy::parse(black_box(yaml), None).expect("parses");
                Table::build(&config).expect("the table builds")
            })
        });
        group.bench_with_input(BenchmarkId::new("export", peerings), &table, |b, table| {
            b.iter(|| black_box(table).export_state())
        });
        group.bench_with_input(BenchmarkId::new("load", peerings), &words, |b, words| {
            b.iter(|| {
                let loaded = Table::from_state(black_box(words)).expect("the state loads");
                assert_eq!(loaded.stats(), table.stats());
                loaded
            })
        });
        group.bench_with_input(
            BenchmarkId::new("load-parts", peerings),
            &words,
            |b, words| {
                b.iter(|| {
                    let mut loader = StateLoader::new();
                    for part in black_box(words).chunks(STATE_PART) {
                        loader.push(part).expect("the part loads");
                    }
                    let loaded = loader.finish().expect("the state loads");
                    assert_eq!(loaded.stats(), table.stats());
                    loaded
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("finish", peerings), &words, |b, words| {
            b.iter_batched(
                || {
                    let mut loader = StateLoader::new();
                    loader.push(words).expect("the state loads");
                    loader
                },
                |loader| loader.finish().expect("the state loads"),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = realistic, dual, repeat, build, state
}
criterion_main!(benches);
