//! Hot swap on a running gateway: how long from `PUT /module` (through the admin API on
//! loopback) to the first batch judged by the new release, from the artifact cache and
//! compiling; and what 100 swaps cost the traffic (packets per second, batch latency) against
//! none; and at the realistic workload's sizes (1,000 and 5,000 peerings), `PUT /config` to
//! the first batch with both workers busy, with the parts of preparing a release.
//!
//! `cargo bench -p flowgate-benches --bench swap`

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark with bad setup should stop loudly

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flowgate_host::DEFAULT_MODULE;
use flowgate_host::admin::Endpoint;
use flowgate_host::admin::{AdminOptions, AdminServer, Client, Reply};
use flowgate_host::gateway::{Gateway, Options, SwapRequest};
use flowgate_host::io::Trace;
use flowgate_host::wasm::{Adoption, EngineOptions, Limits, Runtime, WasmPolicy};
use flowgate_policy::Packet;
use flowgate_policy::synth::{self, GatewayShape, Scale};
use flowgate_test_guests::HONEST_V2;

fn setup() -> (String, Arc<[Packet]>) {
    let config = synth::config_yaml(Scale::with_peerings(100, 5));
    let packets = synth::packets(&flowgate_policy::parse(&config, None).unwrap(), 20_000, 6);
    (config, packets.into())
}

fn runtime(cached: bool) -> Runtime {
    runtime_for(cached, 1)
}

/// A runtime with room for a gateway of `workers` workers.
fn runtime_for(cached: bool, workers: usize) -> Runtime {
    let cache = cached
        .then(|| std::env::temp_dir().join(format!("flowgate-bench-cache-{}", std::process::id())));
    let engine = EngineOptions::for_workers(workers);
    Runtime::with_engine(Limits::default(), cache, engine).unwrap()
}

/// Starts the gateway's workers replaying `packets` (each at most `limit` packets, unlimited
/// when `None`; each at `rate` packets a second, 0 flat out); returns the stop flag and their
/// handles.
fn start(
    gateway: &Arc<Gateway>,
    packets: &Arc<[Packet]>,
    limit: Option<u64>,
    rate: u64,
) -> (Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..gateway.options().workers)
        .map(|id| {
            let (gateway, stop, packets) = (gateway.clone(), stop.clone(), packets.clone());
            std::thread::spawn(move || {
                let mut source = Trace::new(packets, id * 977, rate, limit);
                gateway.run_worker(id, &mut source, &stop);
            })
        })
        .collect();
    (stop, handles)
}

/// An admin API for `gateway` on a Unix socket named after `name`, and a client of it.
fn admin(gateway: &Arc<Gateway>, name: &str) -> (AdminServer, Client) {
    let endpoint = Endpoint::Unix(
        std::env::temp_dir().join(format!("flowgate-bench-{}-{name}.sock", std::process::id())),
    );
    let server =
        AdminServer::start(gateway.clone(), AdminOptions::new(endpoint.clone(), None)).unwrap();
    (server, Client::new(endpoint, None))
}

/// Runs `swap` `iters` times; the total time from each request to the first batch judged by
/// the release it published.
fn to_first_batches(gateway: &Gateway, iters: u64, mut swap: impl FnMut() -> Reply) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let started = Instant::now();
        let answer = swap();
        let generation = answer.body["release"]["generation"]
            .as_u64()
            .expect("the swap went through");
        while gateway.judged_generation() < generation {
            std::hint::spin_loop();
        }
        total += started.elapsed();
    }
    total
}

fn to_first_batch(c: &mut Criterion) {
    let (config, packets) = setup();
    let mut group = c.benchmark_group("swap/to-first-batch");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    for (name, cached) in [("precompiled", true), ("compile", false)] {
        let options = Options {
            workers: 1,
            ..Options::default()
        };
        let gateway = Gateway::new(runtime(cached), DEFAULT_MODULE, &config, options).unwrap();
        let (stop, handles) = start(&gateway, &packets, None, 0);
        let (_admin, client) = admin(&gateway, name);
        let mut flip = false;
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                to_first_batches(&gateway, iters, || {
                    flip = !flip;
                    let module = if flip { HONEST_V2 } else { DEFAULT_MODULE };
                    client.swap_module(module, None, None).unwrap()
                })
            })
        });
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().for_each(|h| h.join().unwrap());
    }
    group.finish();
}

fn under_load(c: &mut Criterion) {
    let (config, packets) = setup();
    // Each run lasts WINDOW; criterion's time per iteration is scaled to ELEMENTS packets at
    // the rate the run reached, so its throughput is the packets per second of the run.
    const WINDOW: Duration = Duration::from_millis(1500);
    const ELEMENTS: u64 = 1_000_000;
    let mut group = c.benchmark_group("swap/under-load");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(ELEMENTS));
    for swaps in [0usize, 100] {
        let mut latencies: Vec<Duration> = Vec::new();
        group.bench_function(BenchmarkId::new("swaps", swaps), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let options = Options {
                        workers: 2,
                        record_batches: true,
                        ..Options::default()
                    };
                    let gateway =
                        Gateway::new(runtime(true), DEFAULT_MODULE, &config, options).unwrap();
                    let started = Instant::now();
                    let (stop, handles) = start(&gateway, &packets, None, 0);
                    // The swaps are spread over the first two thirds of the window.
                    for i in 0..swaps {
                        let due = started + WINDOW * 2 / 3 * i as u32 / swaps as u32;
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        let module = if i % 2 == 0 {
                            HONEST_V2
                        } else {
                            DEFAULT_MODULE
                        };
                        gateway.swap(SwapRequest::module(module)).unwrap();
                    }
                    std::thread::sleep(
                        (started + WINDOW).saturating_duration_since(Instant::now()),
                    );
                    stop.store(true, Ordering::Relaxed);
                    handles.into_iter().for_each(|h| h.join().unwrap());
                    let elapsed = started.elapsed();
                    let records = gateway.records();
                    let judged: u64 = records.iter().map(|r| r.packets as u64).sum();
                    assert_eq!(judged, gateway.counters().packets);
                    total += elapsed.mul_f64(ELEMENTS as f64 / judged as f64);
                    latencies.extend(records.iter().map(|r| r.latency));
                }
                total
            })
        });
        latencies.sort_unstable();
        if let Some(max) = latencies.last() {
            eprintln!(
                "swap/under-load/swaps/{swaps}: {} batches, batch latency median {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
                latencies.len(),
                latencies[latencies.len() / 2],
                latencies[latencies.len() * 99 / 100],
                latencies[latencies.len() * 999 / 1000],
                max
            );
        }
    }
    group.finish();
}

/// `PUT /config` to the first batch judged by the new release, at the realistic workload's
/// sizes, with 2, 8 and 16 workers judging its traffic at 1 Mpps in all (each worker its
/// share), and with 2 and 16 flat out; the CPU time each swap took over every thread that
/// prepared it is printed beside (criterion times one figure). And the parts of preparing a
/// release, each on its own: parsing and building the table natively, configuring one Wasm
/// instance, and one instance adopting the state (with the checks, and vouched for).
fn config_at_scale(c: &mut Criterion) {
    const RATE: u64 = 1_000_000;
    let mut group = c.benchmark_group("swap/config");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(10));
    let configuring = runtime(true);
    let module = configuring.load(DEFAULT_MODULE).unwrap();
    for peerings in [1_000, 5_000] {
        let shape = |seed| GatewayShape::with_peerings(peerings, true, seed);
        let mut first = synth::Gateway::new(shape(42));
        let second = synth::Gateway::new(shape(43));
        let configs = [first.yaml().to_owned(), second.yaml().to_owned()];
        group.bench_function(BenchmarkId::new("parse-build", peerings), |b| {
            b.iter(|| {
                let config = flowgate_policy::parse(&configs[0], None).unwrap();
                flowgate_policy::Table::build(&config).unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("configure-one-instance", peerings), |b| {
            b.iter(|| WasmPolicy::new(&configuring, &module, &configs[0]).unwrap())
        });
        // Adopting the state one instance built: with the checks (as the one that checks a
        // release's state does), and vouched for (as every worker's instance does).
        let plan = WasmPolicy::new(&configuring, &module, &configs[0])
            .unwrap()
            .blueprint()
            .unwrap();
        group.bench_function(BenchmarkId::new("adopt-one-instance", peerings), |b| {
            b.iter(|| WasmPolicy::adopt(&configuring, &plan).unwrap())
        });
        group.bench_function(
            BenchmarkId::new("adopt-one-instance-vouched", peerings),
            |b| b.iter(|| WasmPolicy::start_from(&configuring, &plan, Adoption::Vouched).unwrap()),
        );

        let packets: Arc<[Packet]> = first.packets(1 << 18).into();
        // Workers at 1 Mpps in all, then flat out (rate 0).
        for (workers, rate) in [(2, RATE), (8, RATE), (16, RATE), (2, 0), (16, 0)] {
            let options = Options {
                workers,
                ..Options::default()
            };
            let gateway = Gateway::new(
                runtime_for(true, workers),
                DEFAULT_MODULE,
                &configs[0],
                options,
            )
            .unwrap();
            let (stop, handles) = start(&gateway, &packets, None, rate / workers as u64);
            let traffic = if rate == 0 { "flat-out" } else { "1mpps" };
            let name = format!("config-{peerings}-{workers}-{traffic}");
            let (_admin, client) = admin(&gateway, &name);
            let mut flip = 0;
            let (mut cpu, mut configure, mut wall) = (Vec::new(), Vec::new(), Vec::new());
            let id = format!("to-first-batch/{peerings}/{workers}-workers-{traffic}");
            group.bench_function(BenchmarkId::from_parameter(&id), |b| {
                b.iter_custom(|iters| {
                    to_first_batches(&gateway, iters, || {
                        flip = 1 - flip;
                        let answer = client.swap_config(&configs[flip], None).unwrap();
                        let prepared = &answer.body["release"]["prepared"];
                        cpu.extend(prepared["cpu_ms"].as_f64());
                        configure.extend(prepared["configure_ms"].as_f64());
                        wall.extend(prepared["wall_ms"].as_f64());
                        answer
                    })
                })
            });
            stop.store(true, Ordering::Relaxed);
            handles.into_iter().for_each(|h| h.join().unwrap());
            let median = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
            };
            let swaps = cpu.len();
            if swaps == 0 {
                continue; // the row was filtered out
            }
            eprintln!(
                "swap/config/{id}: medians over {swaps} swaps: CPU time over its threads {:.1} ms; configured state after {:.1} ms, every instance after {:.1} ms",
                median(cpu),
                median(configure),
                median(wall),
            );
        }
    }
    group.finish();
}

/// Gateway throughput with one worker and with two, on the realistic workload (1,000 peerings,
/// 262,144 distinct packets replayed by each worker from its own offset): how it scales
/// across cores. Each run lasts WINDOW; criterion's time is scaled to ELEMENTS packets at the
/// rate the run reached, so its throughput is the packets per second of the run.
fn scaling(c: &mut Criterion) {
    const WINDOW: Duration = Duration::from_millis(1500);
    const ELEMENTS: u64 = 1_000_000;
    let mut workload = synth::Gateway::new(GatewayShape::with_peerings(1_000, true, 42));
    let config = workload.yaml().to_owned();
    let packets: Arc<[Packet]> = workload.packets(1 << 18).into();
    let mut group = c.benchmark_group("serve/workers");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(ELEMENTS));
    for workers in [1, 2] {
        let options = Options {
            workers,
            ..Options::default()
        };
        let gateway = Gateway::new(runtime(true), DEFAULT_MODULE, &config, options).unwrap();
        group.bench_function(BenchmarkId::from_parameter(workers), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let before = gateway.counters().packets;
                    let started = Instant::now();
                    let (stop, handles) = start(&gateway, &packets, None, 0);
                    std::thread::sleep(WINDOW);
                    stop.store(true, Ordering::Relaxed);
                    handles.into_iter().for_each(|h| h.join().unwrap());
                    let judged = gateway.counters().packets - before;
                    total += started.elapsed().mul_f64(ELEMENTS as f64 / judged as f64);
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    to_first_batch,
    under_load,
    config_at_scale,
    scaling
);
criterion_main!(benches);
