//! What a staged shadow release costs the live path: gateway throughput with two workers flat
//! out on the realistic workload (1,000 and 5,000 peerings), without a shadow and with one
//! judging a share of the batches. The shadow is the same workload's other configuration
//! (another seed), so that most packets differ: the comparison's dearest case.
//!
//! `shadow/failing` measures the live path beside a shadow whose module fails (traps, or loops
//! until the batch deadline stops it): each run stages such a shadow afresh before it starts,
//! so that every run includes the fault and the discard.
//!
//! `cargo bench -p flowgate-benches --bench shadow`

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark with bad setup should stop loudly

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flowgate_host::DEFAULT_MODULE;
use flowgate_host::gateway::{DEFAULT_SHADOW_SHARE, Gateway, ModuleBytes, Options, SwapRequest};
use flowgate_host::io::Trace;
use flowgate_host::wasm::{EngineOptions, Limits, Runtime};
use flowgate_policy::Packet;
use flowgate_policy::synth::{self, GatewayShape};
use flowgate_test_guests as guests;

/// Each run lasts WINDOW; criterion's time per iteration is scaled to ELEMENTS packets at the
/// rate the run reached, so its throughput is the live packets per second of the run.
const WINDOW: Duration = Duration::from_millis(1500);
const ELEMENTS: u64 = 1_000_000;
const WORKERS: usize = 2;

fn runtime() -> Runtime {
    let cache = std::env::temp_dir().join(format!("flowgate-bench-cache-{}", std::process::id()));
    Runtime::with_engine(
        Limits::default(),
        Some(cache),
        EngineOptions::for_workers(WORKERS),
    )
    .unwrap()
}

fn live_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("shadow/live");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(ELEMENTS));
    for peerings in [1_000, 5_000] {
        let shape = |seed| GatewayShape::with_peerings(peerings, true, seed);
        let mut workload = synth::Gateway::new(shape(42));
        let config = workload.yaml().to_owned();
        let shadow_config = synth::Gateway::new(shape(43)).yaml().to_owned();
        let packets: Arc<[Packet]> = workload.packets(1 << 18).into();
        let mut rows = vec![None, Some(DEFAULT_SHADOW_SHARE)];
        if peerings == 1_000 {
            rows.extend([Some(0.125), Some(1.0)]);
        }
        for share in rows {
            let options = Options {
                workers: WORKERS,
                shadow_share: share.unwrap_or(0.0),
                ..Options::default()
            };
            let gateway = Gateway::new(runtime(), DEFAULT_MODULE, &config, options).unwrap();
            if share.is_some() {
                gateway
                    .stage_shadow(SwapRequest::config(&shadow_config))
                    .unwrap();
            }
            let name = match share {
                None => "no-shadow".to_owned(),
                Some(share) => format!("shadow-share-{share}"),
            };
            group.bench_function(BenchmarkId::new(name.clone(), peerings), |b| {
                b.iter_custom(|iters| timed_windows(&gateway, &packets, iters, || ()))
            });
            if let Some(shadow) = gateway.shadow() {
                let t = shadow.report().totals;
                eprintln!(
                    "shadow/live/{name}/{peerings}: the shadow judged {} of {} packets ({} changed)",
                    t.packets,
                    gateway.counters().packets,
                    t.changed
                );
            } else if share.is_some() {
                panic!("the shadow was discarded: {:?}", gateway.shadow_gone());
            }
        }
    }
    group.finish();
}

/// Runs `WORKERS` workers of `gateway` over `packets` for `WINDOW`, after `before` (untimed);
/// the time criterion is given for `ELEMENTS` live packets at the rate reached.
fn timed_windows(
    gateway: &Arc<Gateway>,
    packets: &Arc<[Packet]>,
    iters: u64,
    before: impl Fn(),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        before();
        let judged_before = gateway.counters().packets;
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..WORKERS)
            .map(|id| {
                let (gateway, stop, packets) = (gateway.clone(), stop.clone(), packets.clone());
                std::thread::spawn(move || {
                    let mut source = Trace::new(packets, id * 977, 0, None);
                    gateway.run_worker(id, &mut source, &stop);
                })
            })
            .collect();
        std::thread::sleep(WINDOW);
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().for_each(|h| h.join().unwrap());
        let judged = gateway.counters().packets - judged_before;
        total += started.elapsed().mul_f64(ELEMENTS as f64 / judged as f64);
    }
    total
}

/// The live path beside a shadow that traps, or loops until the batch deadline (500 ms of CPU
/// time by default) stops it, at 1,000 peerings and the default share: one packet in 4,096
/// triggers each.
fn failing_shadow(c: &mut Criterion) {
    let mut group = c.benchmark_group("shadow/failing");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(ELEMENTS));
    let mut workload = synth::Gateway::new(GatewayShape::with_peerings(1_000, true, 42));
    let config = workload.yaml().to_owned();
    let mut packets = workload.packets(1 << 18);
    for (i, p) in packets.iter_mut().enumerate() {
        let trigger = match i % 4096 {
            1000 => guests::trigger::TRAP,
            3000 => guests::trigger::SPIN,
            _ => continue,
        };
        *p = Packet::tcp(p.src_vni, p.src, trigger, p.dst, 80);
    }
    let packets: Arc<[Packet]> = packets.into();
    for (name, guest) in [
        ("no-shadow", None),
        ("trapping", Some(guests::TRAP)),
        ("looping", Some(guests::SPIN)),
    ] {
        let options = Options {
            workers: WORKERS,
            shadow_share: DEFAULT_SHADOW_SHARE,
            ..Options::default()
        };
        let gateway = Gateway::new(runtime(), DEFAULT_MODULE, &config, options).unwrap();
        let stage = || {
            if let Some(guest) = guest {
                gateway
                    .stage_shadow(SwapRequest::module(ModuleBytes::from(guest)))
                    .unwrap();
            }
        };
        group.bench_function(BenchmarkId::new(name, 1_000), |b| {
            b.iter_custom(|iters| timed_windows(&gateway, &packets, iters, stage))
        });
        if guest.is_some() {
            let faults = gateway.events().shadow_faults.values().sum::<u64>();
            let live = gateway.events().faults.len();
            eprintln!("shadow/failing/{name}: {faults} shadow faults, {live} live fault kinds");
            assert!(
                gateway.shadow().is_none(),
                "the failing shadow was discarded"
            );
        }
    }
    group.finish();
}

criterion_group!(benches, live_throughput, failing_shadow);
criterion_main!(benches);
