//! Hot swap on a running gateway: swaps under load, fault containment with auto-revert, and
//! refusals that leave the running release serving. Bounded in time; no timing assertions.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use flowgate_host::dataplane::Counters;
use flowgate_host::gateway::{Gateway, OnFault, Options, SwapError, SwapRequest};
use flowgate_host::io::{Port, Trace};
use flowgate_host::wasm::{Limits, Runtime};
use flowgate_host::{DEFAULT_MODULE, NativePolicy};
use flowgate_policy::Packet;
use flowgate_policy::synth::{self, Scale};
use flowgate_test_guests as guests;

/// A runtime with a 64 MiB memory cap and the default batch deadline.
fn runtime() -> Runtime {
    runtime_with_deadline(Limits::default().batch_deadline)
}

/// The same with a shorter deadline, for the module that loops.
fn runtime_with_deadline(batch_deadline: Duration) -> Runtime {
    let limits = Limits {
        memory_bytes: 64 << 20,
        batch_deadline,
        configure_deadline: Duration::from_secs(30),
    };
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("gateway-cache");
    Runtime::new(limits, Some(cache)).unwrap()
}

fn config() -> String {
    synth::config_yaml(Scale::with_peerings(60, 11))
}

fn traffic(config: &str, count: usize) -> Vec<Packet> {
    synth::packets(&flowgate_policy::parse(config, None).unwrap(), count, 12)
}

/// Counts what it hands out, so the test knows how many packets were sent.
struct Counted {
    inner: Trace,
    sent: Arc<AtomicU64>,
}

impl Port for Counted {
    fn fill(&mut self, batch: &mut Vec<Packet>, max: usize) -> usize {
        let n = self.inner.fill(batch, max);
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        n
    }
}

/// Runs the gateway's workers over `packets` (each from its own offset, at most `limit` packets
/// each, at `rate` per worker) while `during` runs on this thread, then until every worker's
/// source is dry (or, without a limit, until `during` returns). Returns packets sent per worker.
fn with_traffic(
    gateway: &Arc<Gateway>,
    packets: &[Packet],
    limit: Option<u64>,
    rate: u64,
    during: impl FnOnce(),
) -> Vec<u64> {
    let packets: Arc<[Packet]> = packets.into();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = gateway.options().workers;
    let sent: Vec<Arc<AtomicU64>> = (0..workers).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let started = Arc::new(Barrier::new(workers + 1));
    let handles: Vec<_> = (0..workers)
        .map(|id| {
            let (gateway, stop, sent, packets, started) = (
                gateway.clone(),
                stop.clone(),
                sent[id].clone(),
                packets.clone(),
                started.clone(),
            );
            std::thread::spawn(move || {
                let mut source = Counted {
                    inner: Trace::new(packets, id * 977, rate, limit),
                    sent,
                };
                started.wait();
                gateway.run_worker(id, &mut source, &stop);
            })
        })
        .collect();
    started.wait();
    during();
    if limit.is_some() {
        // Bounded: every source runs dry after `limit` packets; the deadline is a backstop.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while handles.iter().any(|h| !h.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    sent.iter().map(|s| s.load(Ordering::Relaxed)).collect()
}

/// What the native library counts for the packets `with_traffic` sent.
fn native_counts(config: &str, packets: &[Packet], sent: &[u64]) -> Counters {
    let mut policy = NativePolicy::new(config, None).unwrap();
    let mut total = Counters::default();
    for (id, &n) in sent.iter().enumerate() {
        let mut source = Trace::new(packets.into(), id * 977, 0, Some(n));
        let mut all = Vec::new();
        while source.fill(&mut all, 256) > 0 {}
        flowgate_host::dataplane::judge_all(&mut policy, &all, 256, &mut total, |_, _| {}).unwrap();
    }
    total
}

/// Waits (bounded) until every worker has judged a batch with `generation`.
fn until_judged_by(gateway: &Gateway, generation: u64) {
    for _ in 0..3000 {
        let records = gateway.records();
        if (0..gateway.options().workers).all(|w| {
            records
                .iter()
                .any(|r| r.worker == w && r.generation == generation)
        }) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the workers never judged a batch with generation {generation}");
}

#[test]
fn a_hundred_swaps_under_load_lose_nothing_and_mix_nothing() {
    let config = config();
    let packets = traffic(&config, 20_000);
    let options = Options {
        workers: 2,
        record_batches: true,
        ..Options::default()
    };
    let gateway = Gateway::new(runtime(), DEFAULT_MODULE, &config, options).unwrap();
    let mut generations = vec![1];
    let sent = with_traffic(&gateway, &packets, None, 50_000, || {
        until_judged_by(&gateway, 1);
        for i in 0..100 {
            let module = if i % 2 == 0 {
                guests::HONEST_V2
            } else {
                DEFAULT_MODULE
            };
            let release = gateway.swap(SwapRequest::module(module)).unwrap();
            assert_eq!(
                release.info.version,
                if i % 2 == 0 { "0.2.0" } else { "0.1.0" }
            );
            generations.push(release.generation);
        }
        until_judged_by(&gateway, 101);
    });
    let total: u64 = sent.iter().sum();
    let counters = gateway.counters();
    assert_eq!(
        counters.packets, total,
        "every packet sent got exactly one verdict"
    );
    assert_eq!(counters.faults, 0);
    assert!(!counters.drops.contains_key("policy-fault"));

    // Both modules are honest: the verdicts are the native library's, packet for packet.
    let native = native_counts(&config, &packets, &sent);
    assert_eq!(
        (
            counters.allowed,
            counters.ambiguous,
            &counters.drops,
            &counters.forwarded
        ),
        (
            native.allowed,
            native.ambiguous,
            &native.drops,
            &native.forwarded
        )
    );

    // Every batch was judged by one published release, and each worker only moved forward.
    let records = gateway.records();
    assert_eq!(records.iter().map(|r| r.packets as u64).sum::<u64>(), total);
    assert!(records.iter().all(|r| r.verdicts == r.packets));
    let published: BTreeSet<u64> = generations.iter().copied().collect();
    for worker in 0..2 {
        let seen: Vec<u64> = records
            .iter()
            .filter(|r| r.worker == worker)
            .map(|r| r.generation)
            .collect();
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "worker {worker} went back a generation"
        );
        assert!(
            seen.iter().all(|g| published.contains(g)),
            "a batch was judged by an unpublished release"
        );
    }
    assert_eq!(generations.last(), Some(&101));
    assert_eq!(gateway.events().swaps.get("module"), Some(&100));
    assert_eq!(
        gateway.good_generations().len(),
        flowgate_host::gateway::KEEP_GOOD
    );
}

/// Packets where every fifth batch of 256 carries one packet with `port` as source port.
fn with_triggers(packets: &[Packet], port: u16) -> Vec<Packet> {
    let mut out = packets.to_vec();
    for (i, p) in out.iter_mut().enumerate() {
        if i % (256 * 5) == 17 {
            *p = Packet::tcp(p.src_vni, p.src, port, p.dst, 80);
        }
    }
    out
}

fn faulty_guest_is_contained(guest: &[u8], trigger: u16, fault: &str, runtime: Runtime) {
    let config = config();
    let packets = with_triggers(&traffic(&config, 256 * 40), trigger);
    let options = Options {
        workers: 1,
        fault_limit: 3,
        fault_window: Duration::from_secs(60),
        ..Options::default()
    };
    let gateway = Gateway::new(runtime, DEFAULT_MODULE, &config, options).unwrap();
    let faulty = gateway
        .swap(SwapRequest::module(guest))
        .expect("the faulty guest passes its canary");
    assert_ne!(faulty.info.name, "flowgate-guest");
    let sent: u64 = with_traffic(&gateway, &packets, Some(256 * 200), 0, || {})
        .iter()
        .sum();
    // Wait for the background revert (bounded).
    for _ in 0..3000 {
        if gateway.current().cause == "auto-revert" {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let counters = gateway.counters();
    assert_eq!(
        counters.packets, sent,
        "every packet got a verdict, faults or not"
    );
    let events = gateway.events();
    assert!(
        events.faults.get(fault).copied().unwrap_or(0) >= 3,
        "{fault} faults counted: {:?}",
        events.faults
    );
    assert_eq!(
        events.rollbacks.get("auto"),
        Some(&1),
        "auto-revert after 3 faults"
    );
    drop(events);
    let dropped = counters.drops.get("policy-fault").copied().unwrap_or(0);
    assert!(
        dropped >= 3 * 256 && dropped % 256 == 0,
        "whole batches dropped, fail-closed: {dropped}"
    );
    let current = gateway.current();
    assert_eq!(
        (current.cause.as_str(), current.info.name.as_str()),
        ("auto-revert", "flowgate-guest")
    );
    // The gateway keeps answering, with the reverted release.
    let again: u64 = with_traffic(&gateway, &packets, Some(256 * 10), 0, || {})
        .iter()
        .sum();
    assert_eq!(gateway.counters().packets, sent + again);
    assert_eq!(
        gateway
            .counters()
            .drops
            .get("policy-fault")
            .copied()
            .unwrap_or(0),
        dropped
    );
}

#[test]
fn a_trapping_guest_is_contained_and_reverted() {
    faulty_guest_is_contained(guests::TRAP, guests::trigger::TRAP, "trap", runtime());
}

#[test]
fn a_looping_guest_is_contained_and_reverted() {
    faulty_guest_is_contained(
        guests::SPIN,
        guests::trigger::SPIN,
        "deadline",
        runtime_with_deadline(Duration::from_millis(100)),
    );
}

#[test]
fn a_memory_eating_guest_is_contained_and_reverted() {
    faulty_guest_is_contained(guests::HOG, guests::trigger::HOG, "memory", runtime());
}

#[test]
fn on_fault_previous_rejudges_with_the_last_good_release() {
    let config = config();
    let packets = with_triggers(&traffic(&config, 256 * 40), guests::trigger::TRAP);
    let options = Options {
        workers: 1,
        on_fault: OnFault::Previous,
        fault_limit: 1000,
        record_batches: true,
        ..Options::default()
    };
    let gateway = Gateway::new(runtime(), DEFAULT_MODULE, &config, options).unwrap();
    // The worker must see generation 1 before the swap to hold it as its previous release;
    // traffic goes on until the trapping module has faulted a few times.
    let sent: u64 = with_traffic(&gateway, &packets, None, 20_000, || {
        until_judged_by(&gateway, 1);
        gateway.swap(SwapRequest::module(guests::TRAP)).unwrap();
        for _ in 0..3000 {
            if gateway.events().faults.get("trap").copied().unwrap_or(0) >= 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .iter()
    .sum();
    let counters = gateway.counters();
    assert_eq!(counters.packets, sent);
    assert!(gateway.events().faults.get("trap").copied().unwrap_or(0) >= 3);
    assert!(
        !counters.drops.contains_key("policy-fault"),
        "faulted batches were judged again: {:?}",
        counters.drops
    );
}

/// A gateway with one worker on the default module.
fn one_worker_gateway(config: &str) -> Arc<Gateway> {
    Gateway::new(
        runtime(),
        DEFAULT_MODULE,
        config,
        Options {
            workers: 1,
            ..Options::default()
        },
    )
    .unwrap()
}

#[test]
fn a_short_answering_guest_is_refused_by_the_canary() {
    let config = config();
    let gateway = one_worker_gateway(&config);
    let e = gateway
        .swap(SwapRequest::module(guests::SHORT))
        .err()
        .unwrap();
    assert!(matches!(e, SwapError::Canary(_)), "{e}");
    assert_eq!(gateway.current().generation, 1);
    assert_eq!(gateway.events().refusals.get("canary-failed"), Some(&1));
}

#[test]
fn refusals_through_the_admin_api_leave_the_old_release_serving() {
    let config = config();
    let gateway = one_worker_gateway(&config);
    let (_admin, client) = crate::admin_on_socket(&gateway);
    let running = client.status().unwrap().body;
    let digest = running["module"]["sha256"].as_str().unwrap().to_owned();
    let etag = running["etag"].as_str().unwrap().to_owned();

    let wrong_world = {
        let mut c = wasm_encoder::Component::new();
        c.section(&wasm_encoder::ComponentInstanceSection::new());
        c.finish()
    };
    let bad_config = "kind: VPCInfo\nmetadata: {name: a}\nspec: {vni: 0}\n";
    let cases: Vec<(flowgate_host::admin::Reply, u16, &str)> = vec![
        (
            client.swap_module(b"not a component", None, None).unwrap(),
            422,
            "not-a-component",
        ),
        (
            client.swap_module(&wrong_world, None, None).unwrap(),
            422,
            "wrong-world",
        ),
        (
            client.swap_config(bad_config, None).unwrap(),
            422,
            "config-refused",
        ),
        (
            client
                .swap_module(guests::HONEST_V2, None, Some(&"0".repeat(64)))
                .unwrap(),
            412,
            "stale-digest",
        ),
    ];
    for (answer, status, reason) in cases {
        assert_eq!(
            (answer.status, answer.body["reason"].as_str()),
            (status, Some(reason)),
            "{}",
            answer.body
        );
        let now = client.status().unwrap().body;
        assert_eq!(
            now["generation"], 1,
            "the old release keeps serving after {reason}"
        );
        assert_eq!(now["module"]["sha256"], digest.as_str());
    }
    let refused = client.swap_config(bad_config, None).unwrap();
    assert!(
        refused.body["error"].as_str().unwrap().contains("spec.vni"),
        "{}",
        refused.body
    );

    // A compare-and-swap with the right ETag goes through; rollback returns to it.
    let swapped = client
        .swap_module(guests::HONEST_V2, Some(&config), Some(&etag))
        .unwrap();
    assert_eq!(swapped.status, 200, "{}", swapped.body);
    assert_eq!(swapped.body["release"]["module"]["version"], "0.2.0");
    assert_eq!(client.status().unwrap().body["generation"], 2);
    let back = client.rollback().unwrap();
    assert_eq!(
        (
            back.status,
            back.body["release"]["module"]["sha256"].as_str()
        ),
        (200, Some(digest.as_str()))
    );
    assert_eq!(
        client.rollback().unwrap().status,
        409,
        "nothing left to roll back to"
    );

    let metrics = client.metrics().unwrap();
    for line in [
        "flowgate_swap_refusals_total{reason=\"stale-digest\"} 1",
        "flowgate_swap_refusals_total{reason=\"config-refused\"} 2",
        "flowgate_rollbacks_total{cause=\"operator\"} 1",
        "flowgate_generation 3",
    ] {
        assert!(metrics.contains(line), "metrics lack `{line}`:\n{metrics}");
    }
    assert!(metrics.contains(&format!("sha256=\"{digest}\"")));
}

/// A configuration refused by one of the gateway's limits names the setting an operator may
/// raise; one refused for what it says names none.
#[test]
fn a_refusal_by_a_limit_names_its_setting_through_the_admin_api() {
    let config = config();
    let gateway = Gateway::new(
        runtime(),
        DEFAULT_MODULE,
        &config,
        Options {
            workers: 1,
            max_config_bytes: config.len() + 100,
            ..Options::default()
        },
    )
    .unwrap();
    let (_admin, client) = crate::admin_on_socket(&gateway);
    let too_big = format!("{config}\n#{}\n", "x".repeat(200));
    let refused = client.swap_config(&too_big, None).unwrap();
    assert_eq!(
        (
            refused.status,
            refused.body["reason"].as_str(),
            refused.body["setting"].as_str()
        ),
        (422, Some("config-refused"), Some("config-bytes")),
        "{}",
        refused.body
    );
    let bad = client
        .swap_config("kind: VPCInfo\nmetadata: {name: a}\nspec: {vni: 0}\n", None)
        .unwrap();
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.body.get("setting").is_none(), "{}", bad.body);
    assert_eq!(gateway.current().generation, 1);
}
