//! Faults are the module's own: a deadline measures the CPU time the guest itself ran, so a
//! thread that waits for a core never faults an honest module, while a module that loops is
//! still stopped once it has run its budget, however busy the machine is; and a fault tells
//! whether the module made it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use flowgate_host::gateway::{Options, SwapRequest};
use flowgate_host::wasm::{EngineOptions, Limits, Runtime, WasmPolicy};
use flowgate_host::{DEFAULT_MODULE, NativePolicy, Policy, PolicyFault};
use flowgate_policy::synth::{self, Scale};
use flowgate_policy::{Packet, Verdict};
use flowgate_test_guests as guests;

/// The CPU time the calling thread has run.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .unwrap()
        .into()
}

/// `config` without its first peering, and a packet of `packets` that `config` lets through
/// and the configuration without the peering drops (both judged by the native library).
fn without_one_peering(config: &str, packets: &[Packet]) -> (String, Packet) {
    let documents: Vec<&str> = config.split("\n---\n").collect();
    let peering = documents
        .iter()
        .position(|d| d.trim_start().starts_with("kind: Peering"))
        .unwrap();
    let fewer = documents
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != peering)
        .map(|(_, d)| *d)
        .collect::<Vec<_>>()
        .join("\n---\n");
    let mut before = NativePolicy::new(config, None).unwrap();
    let mut after = NativePolicy::new(&fewer, None).unwrap();
    let (mut b, mut a) = (vec![Verdict::default(); 1], vec![Verdict::default(); 1]);
    let packet = packets
        .iter()
        .find(|p| {
            before.judge(std::slice::from_ref(p), &mut b).unwrap();
            after.judge(std::slice::from_ref(p), &mut a).unwrap();
            !matches!(b[0], Verdict::Drop(_)) && matches!(a[0], Verdict::Drop(_))
        })
        .copied()
        .expect("traffic over the removed peering");
    (fewer, packet)
}

/// 128 workers judging at full speed on this 2-core machine, with an honest module: a thread
/// waits for a core far longer than a batch deadline, mid-batch. The operator removes one
/// peering; seconds of traffic later no batch has faulted, nothing was reverted, and the
/// peering is still removed.
#[test]
fn busy_workers_never_fault_an_honest_module_or_undo_the_operator() {
    let workers = 128;
    let config = synth::config_yaml(Scale::with_peerings(40, 8));
    let packets: Arc<[Packet]> =
        synth::packets(&flowgate_policy::parse(&config, None).unwrap(), 8192, 5).into();
    let (fewer, crossing) = without_one_peering(&config, &packets);
    let gateway = crate::gateway_with(
        &config,
        Limits {
            memory_bytes: 64 << 20,
            ..Limits::default()
        },
        Options {
            workers,
            ..Options::default()
        },
    );
    let (stop, handles) = crate::run_workers(&gateway, &packets, 131, 0);
    std::thread::sleep(Duration::from_secs(3));
    let swapped = gateway.swap(SwapRequest::config(&fewer)).unwrap();
    assert_eq!(swapped.generation, 2);
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let events = gateway.events();
    assert!(
        events.faults.is_empty(),
        "an honest module faulted while its threads waited for a core: {:?}",
        events.faults
    );
    assert!(events.rollbacks.is_empty(), "{:?}", events.rollbacks);
    drop(events);
    let counters = gateway.counters();
    assert_eq!(counters.faults, 0, "{counters:?}");
    assert!(counters.packets > 0);
    let current = gateway.current();
    assert_eq!(current.generation, 2);
    assert_eq!(&*current.config, fewer.as_str());
    // The release serving drops the removed peering's traffic, as the native library does.
    let mut worker = gateway.worker(0);
    let mut out = [Verdict::default(); 1];
    let burst = worker.judge(&[crossing], &mut out);
    assert!(
        matches!(burst.verdicts, Some([Verdict::Drop(_)])),
        "{:?}",
        burst.verdicts
    );
}

/// The configure deadline is the module's CPU time too: instances started at once on 2 cores
/// (as a swap prepares one per worker while workers judge) each read a configuration within a
/// deadline of a few times what reading it alone costs, though they wait far longer for a core.
#[test]
fn configure_deadlines_ignore_the_wait_for_a_core() {
    let config = synth::config_yaml(Scale::with_peerings(1500, 21));
    let threads = 24;
    let probe = Runtime::new(Limits::default(), None).unwrap();
    let module = probe.load(DEFAULT_MODULE).unwrap();
    let alone = (0..3)
        .map(|_| {
            let before = thread_cpu();
            WasmPolicy::new(&probe, &module, &config).unwrap();
            thread_cpu() - before
        })
        .min()
        .unwrap();
    drop(probe);
    let deadline = (alone * 4).max(Duration::from_millis(20));
    let runtime = Arc::new(
        Runtime::with_engine(
            Limits {
                memory_bytes: 64 << 20,
                configure_deadline: deadline,
                ..Limits::default()
            },
            None,
            EngineOptions::for_workers(threads),
        )
        .unwrap(),
    );
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (runtime, module, config, start) = (
                runtime.clone(),
                module.clone(),
                config.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                let (cpu, wall) = (thread_cpu(), Instant::now());
                let started = WasmPolicy::new(&runtime, &module, &config).map(|_| ());
                (started, thread_cpu() - cpu, wall.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let slowest = results.iter().map(|r| r.2).max().unwrap();
    for (started, cpu, wall) in &results {
        assert!(
            started.is_ok(),
            "configure refused with a {deadline:?} deadline (alone it takes {alone:?} of CPU; here {cpu:?} of CPU in {wall:?}): {}",
            started.as_ref().err().unwrap()
        );
    }
    // The case is one: some thread waited for a core longer than the deadline.
    assert!(slowest > deadline, "{slowest:?} <= {deadline:?}");
}

/// What one spinning batch cost: the fault, the CPU time the thread ran, the time it took.
type Spun = (Result<(), PolicyFault>, Duration, Duration);

/// A module that loops is stopped once it has run its batch deadline of CPU time, no sooner
/// and at most a few ticks later, even when its thread shares 2 cores with 7 others that loop:
/// each is faulted within a bounded time, a few deadlines.
#[test]
fn a_looping_module_is_stopped_on_its_own_cpu_time_under_contention() {
    let threads = 8;
    let budget = Duration::from_millis(100);
    let config = synth::config_yaml(Scale::with_peerings(20, 3));
    let runtime = Arc::new(
        Runtime::with_engine(
            Limits {
                memory_bytes: 64 << 20,
                batch_deadline: budget,
                ..Limits::default()
            },
            None,
            EngineOptions::for_workers(threads),
        )
        .unwrap(),
    );
    let module = runtime.load(guests::SPIN).unwrap();
    let mut batch = synth::packets(&flowgate_policy::parse(&config, None).unwrap(), 256, 1);
    let p = batch[100];
    batch[100] = Packet::tcp(p.src_vni, p.src, guests::trigger::SPIN, p.dst, 80);
    let start = Arc::new(Barrier::new(threads));
    let (tx, rx) = mpsc::channel::<Spun>();
    for _ in 0..threads {
        let (runtime, module, config, batch, start, tx) = (
            runtime.clone(),
            module.clone(),
            config.clone(),
            batch.clone(),
            start.clone(),
            tx.clone(),
        );
        std::thread::spawn(move || {
            let mut policy = WasmPolicy::new(&runtime, &module, &config).unwrap();
            let mut out = vec![Verdict::default(); batch.len()];
            start.wait();
            let (cpu, wall) = (thread_cpu(), Instant::now());
            let fault = policy.judge(&batch, &mut out);
            let _ = tx.send((fault, thread_cpu() - cpu, wall.elapsed()));
        });
    }
    drop(tx);
    // A loop nothing stops would hang the test: every thread must answer within a bound.
    let bound = Instant::now() + Duration::from_secs(60);
    for _ in 0..threads {
        let left = bound.saturating_duration_since(Instant::now());
        let (fault, cpu, wall) = rx
            .recv_timeout(left)
            .expect("a looping module was not stopped within 60 s");
        let fault = fault.err().unwrap();
        assert!(matches!(fault, PolicyFault::Deadline), "{fault}");
        assert!(fault.is_module_fault());
        assert!(
            cpu >= budget,
            "stopped after {cpu:?} of CPU time ({wall:?} of waiting and running), short of its {budget:?}"
        );
        assert!(
            cpu <= budget + Duration::from_millis(40),
            "ran {cpu:?} of CPU time on a {budget:?} budget"
        );
        eprintln!("looping batch stopped after {cpu:?} of CPU time, {wall:?} of wall time");
    }
}

/// Each fault says whether the module made it: its trap, loop, memory hog, short answer and
/// refused configuration are the module's; a full instance pool (the host's room, not the
/// module's doing) and a worker with no instance are not.
#[test]
fn faults_say_whether_the_module_made_them() {
    let config = synth::config_yaml(Scale::with_peerings(20, 3));
    let runtime = Runtime::with_engine(
        Limits {
            memory_bytes: 64 << 20,
            batch_deadline: Duration::from_millis(50),
            ..Limits::default()
        },
        None,
        EngineOptions {
            instances: 2,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let batch = synth::packets(&flowgate_policy::parse(&config, None).unwrap(), 64, 1);
    let with_trigger = |port: u16| {
        let mut b = batch.clone();
        let p = b[10];
        b[10] = Packet::tcp(p.src_vni, p.src, port, p.dst, 80);
        b
    };
    let mut out = vec![Verdict::default(); batch.len()];
    let cases = [
        (guests::TRAP, with_trigger(guests::trigger::TRAP), "trap"),
        (
            guests::SPIN,
            with_trigger(guests::trigger::SPIN),
            "deadline",
        ),
        (guests::HOG, with_trigger(guests::trigger::HOG), "memory"),
        (guests::SHORT, batch.clone(), "wrong-length"),
    ];
    for (module, packets, reason) in cases {
        let module = runtime.load(module).unwrap();
        let mut policy = WasmPolicy::start(&runtime, &module, &config).unwrap();
        let fault = policy.judge(&packets, &mut out).unwrap_err();
        assert_eq!(fault.reason(), reason, "{fault}");
        assert!(fault.is_module_fault(), "{fault}");
    }
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let refused = WasmPolicy::start(&runtime, &module, "kind: VPCInfo\nspec: 7\n")
        .err()
        .unwrap();
    assert!(matches!(refused, PolicyFault::Start(_)), "{refused}");
    assert!(refused.is_module_fault());

    // The pool has room for two instances: a third start, and a restart (which needs a fresh
    // instance beside the old one), fail for want of room, the host's failure.
    let mut first = WasmPolicy::start(&runtime, &module, &config).unwrap();
    let _second = WasmPolicy::start(&runtime, &module, &config).unwrap();
    let third = WasmPolicy::start(&runtime, &module, &config).err().unwrap();
    assert!(matches!(third, PolicyFault::Host(_)), "{third}");
    assert!(!third.is_module_fault(), "{third}");
    let restart = first.restart().unwrap_err();
    assert!(restart.to_string().contains("concurrent"), "{restart}");
    let restarted = Policy::restart(&mut first).unwrap_err();
    assert!(matches!(restarted, PolicyFault::Host(_)), "{restarted}");
    assert!(!restarted.is_module_fault());
    assert!(!PolicyFault::NoInstance.is_module_fault());
}

/// A gateway of 8 workers on 2 cores, every one of them fed batches that make the module loop:
/// each batch is stopped after its own deadline of CPU time, and the gateway reverts from the
/// module within a bounded time.
#[test]
fn a_looping_module_on_busy_workers_is_still_reverted() {
    let workers = 8;
    let config = synth::config_yaml(Scale::with_peerings(30, 5));
    let mut packets = synth::packets(&flowgate_policy::parse(&config, None).unwrap(), 4096, 9);
    for (i, p) in packets.iter_mut().enumerate() {
        if i % 512 == 7 {
            *p = Packet::tcp(p.src_vni, p.src, guests::trigger::SPIN, p.dst, 80);
        }
    }
    let packets: Arc<[Packet]> = packets.into();
    let gateway = crate::gateway_with(
        &config,
        Limits {
            memory_bytes: 64 << 20,
            batch_deadline: Duration::from_millis(100),
            ..Limits::default()
        },
        Options {
            workers,
            fault_limit: 3,
            fault_window: Duration::from_secs(60),
            ..Options::default()
        },
    );
    let looping = gateway.swap(SwapRequest::module(guests::SPIN)).unwrap();
    let swapped = Instant::now();
    let (stop, handles) = crate::run_workers(&gateway, &packets, 512, 0);
    let bound = swapped + Duration::from_secs(60);
    while gateway.current().generation == looping.generation && Instant::now() < bound {
        std::thread::sleep(Duration::from_millis(10));
    }
    let reverted = swapped.elapsed();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    assert!(
        gateway.current().generation > looping.generation,
        "still on the looping module after {reverted:?}"
    );
    assert_eq!(gateway.current().info.name, "flowgate-guest");
    let events = gateway.events();
    assert!(
        events.faults.get("deadline").copied().unwrap_or(0) >= 3,
        "{:?}",
        events.faults
    );
    eprintln!("reverted from the looping module {reverted:?} after the swap");
}
