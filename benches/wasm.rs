//! What the sandbox costs: host-to-guest calls, the packed and typed batch paths against the
//! native library on the same packets, epoch interruption, loading and instantiating, and the
//! reference oracle as the straightforward implementation to beat.
//!
//! `cargo bench -p flowgate-benches --bench wasm`

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark with bad setup should stop loudly

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flowgate_benches::{allowed, columns, setup};
use flowgate_host::wasm::{EngineOptions, Limits, Runtime, WasmPolicy};
use flowgate_host::{DEFAULT_MODULE, Policy};
use flowgate_policy::{Table, Verdict};

// The reference oracle of the property tests: SPEC section 3's set definitions, evaluated
// directly for each packet.
use flowgate_policy::oracle;

const SIZES: [usize; 6] = [1, 8, 32, 256, 1024, 4096];

fn runtime(options: EngineOptions) -> Runtime {
    Runtime::with_engine(Limits::default(), None, options).unwrap()
}

fn call(c: &mut Criterion) {
    let (yaml, _, _) = setup(10);
    let runtime = runtime(EngineOptions::default());
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let mut wasm = WasmPolicy::new(&runtime, &module, &yaml).unwrap();
    c.bench_function("call/noop", |b| {
        // `judge-packed` with no packets: the fixed cost of one call, there and back.
        b.iter(|| wasm.judge(black_box(&[]), &mut []).unwrap())
    });
    let empty = flowgate_policy::packed::Columns::default();
    c.bench_function("call/noop-columns", |b| {
        // The same through `judge_columns`: no encode, no decode.
        b.iter(|| assert!(wasm.judge_columns(black_box(&empty)).unwrap().is_empty()))
    });
}

fn batch(c: &mut Criterion) {
    let (yaml, config, packets) = setup(1_000);
    let table = Table::build(&config).expect("the table builds");
    let runtime = runtime(EngineOptions::default());
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let mut wasm = WasmPolicy::new(&runtime, &module, &yaml).unwrap();
    let null = runtime.load(flowgate_test_guests::NULL).unwrap();
    let mut null = WasmPolicy::new(&runtime, &null, &yaml).unwrap();
    let mut group = c.benchmark_group("batch");
    for n in SIZES {
        let batch = &packets[..n];
        let expected = allowed(&batch.iter().map(|p| table.lookup(p)).collect::<Vec<_>>());
        let mut out = vec![Verdict::default(); n];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("native", n), batch, |b, batch| {
            b.iter(|| {
                table.lookup_batch(black_box(batch), &mut out);
                assert_eq!(allowed(&out), expected);
            })
        });
        // The guest's own work (read the batch's columns, look up, encode verdicts), run
        // natively: what the packed path costs without the sandbox.
        let mut batch_bytes = Vec::new();
        flowgate_policy::packed::encode_packets(batch, &mut batch_bytes);
        let mut answer = Vec::new();
        group.bench_with_input(
            BenchmarkId::new("native-packed", n),
            &batch_bytes,
            |b, batch_bytes| {
                b.iter(|| {
                    flowgate_policy::packed::judge_packed(
                        Some(&table),
                        black_box(batch_bytes),
                        &mut answer,
                    );
                    assert_eq!(answer.len(), 4 * n);
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("packed", n), batch, |b, batch| {
            b.iter(|| {
                wasm.judge(black_box(batch), &mut out).unwrap();
                assert_eq!(allowed(&out), expected);
            })
        });
        // The same call into a guest that answers without reading the packets: the crossing
        // alone (encode, copy in, call, copy out, decode).
        group.bench_with_input(BenchmarkId::new("crossing", n), batch, |b, batch| {
            b.iter(|| {
                null.judge(black_box(batch), &mut out).unwrap();
                assert_eq!(allowed(&out), 0);
            })
        });
        // The column path: the batch laid out by the dataplane's decoder beforehand, the
        // verdicts read where they lie.
        let laid_out = columns(batch);
        let count = |v: flowgate_host::wasm::Verdicts<'_>| {
            v.iter().filter(|v| !matches!(v, Verdict::Drop(_))).count()
        };
        group.bench_with_input(BenchmarkId::new("columns", n), &laid_out, |b, burst| {
            b.iter(|| {
                assert_eq!(
                    count(wasm.judge_columns(black_box(burst)).unwrap()),
                    expected
                )
            })
        });
        group.bench_with_input(
            BenchmarkId::new("crossing-columns", n),
            &laid_out,
            |b, burst| {
                b.iter(|| assert_eq!(count(null.judge_columns(black_box(burst)).unwrap()), 0))
            },
        );
        group.bench_with_input(BenchmarkId::new("typed", n), batch, |b, batch| {
            b.iter(|| {
                wasm.judge_typed(black_box(batch), &mut out).unwrap();
                assert_eq!(allowed(&out), expected);
            })
        });
    }
    group.finish();
}

fn epoch(c: &mut Criterion) {
    let (yaml, config, packets) = setup(1_000);
    let table = Table::build(&config).expect("the table builds");
    let batch = &packets[..256];
    let expected = allowed(&batch.iter().map(|p| table.lookup(p)).collect::<Vec<_>>());
    let with = |epoch_interruption, pooling| EngineOptions {
        epoch_interruption,
        pooling,
        ..EngineOptions::default()
    };
    // Batch 256 on the 1,000-peering table with one engine feature changed at a time.
    let variants = [
        ("epoch", "on", with(true, true)),
        ("epoch", "off", with(false, true)),
        ("engine", "pooling-off", with(true, false)),
    ];
    for (group_name, name, options) in variants {
        let runtime = runtime(options);
        let module = runtime.load(DEFAULT_MODULE).unwrap();
        let mut wasm = WasmPolicy::new(&runtime, &module, &yaml).unwrap();
        let mut out = vec![Verdict::default(); 256];
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(256));
        group.bench_function(name, |b| {
            b.iter(|| {
                wasm.judge(black_box(batch), &mut out).unwrap();
                assert_eq!(allowed(&out), expected);
            })
        });
        group.finish();
    }
}

fn load(c: &mut Criterion) {
    let mut group = c.benchmark_group("load");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    let uncached = runtime(EngineOptions::default());
    group.bench_function("compile", |b| {
        b.iter(|| uncached.load(black_box(DEFAULT_MODULE)).unwrap())
    });
    let dir = std::env::temp_dir().join(format!("flowgate-bench-load-{}", std::process::id()));
    let cached = Runtime::new(Limits::default(), Some(dir.clone())).unwrap();
    cached.load(DEFAULT_MODULE).unwrap();
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(4));
    group.bench_function("deserialize", |b| {
        b.iter(|| cached.load(black_box(DEFAULT_MODULE)).unwrap())
    });
    for (name, pooling) in [
        ("instantiate/pooling", true),
        ("instantiate/on-demand", false),
    ] {
        let runtime = runtime(EngineOptions {
            pooling,
            ..EngineOptions::default()
        });
        let module = runtime.load(DEFAULT_MODULE).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| module.instantiate_only(&runtime).unwrap())
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

fn straightforward(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup/oracle");
    group.sample_size(10);
    for peerings in [10, 100, 1_000] {
        let (_, config, packets) = setup(peerings);
        let table = Table::build(&config).expect("the table builds");
        let batch = &packets[..256];
        let expected: Vec<oracle::Expected> = batch
            .iter()
            .map(|p| oracle::from_table(&table, table.lookup(p)))
            .collect();
        group.throughput(Throughput::Elements(256));
        group.bench_with_input(BenchmarkId::from_parameter(peerings), batch, |b, batch| {
            b.iter(|| {
                let got: Vec<oracle::Expected> = batch
                    .iter()
                    .map(|p| oracle::verdict(&config, black_box(p)))
                    .collect();
                assert_eq!(got, expected);
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = call, batch, epoch, load, straightforward
}
criterion_main!(benches);
