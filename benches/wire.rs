//! Real packets end to end, each beside the same path with the policy call skipped, so the
//! policy's share shows:
//! - `replay/{policy,skip-policy}`: a 20,000-frame VXLAN capture read, parsed, judged a batch
//!   of 256 per guest call, and written out (allowed, ambiguous and dropped captures); skipped,
//!   every readable frame goes to the allowed capture unchanged;
//! - `live/{policy,skip-policy}`: one gateway worker on a loopback UDP socket receiving
//!   bursts of 1,000 VXLAN datagrams queued on its socket (`recvmmsg`), judging them, and
//!   sending the allowed ones re-encapsulated to their VPC's endpoint (`sendmmsg`); skipped,
//!   each packet gets the verdict the policy would give, computed beforehand, so the same
//!   packets are sent.
//!
//! `cargo bench -p flowgate-benches --bench wire`

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark with bad setup should stop loudly

use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowgate_benches::setup;
use flowgate_host::dataplane::Counters;
use flowgate_host::io::Port;
use flowgate_host::io::pcap::{self, CaptureReader, CaptureWriter, Outputs, Record};
use flowgate_host::io::vxlan::{Endpoints, VxlanPort};
use flowgate_host::wasm::{Limits, Runtime, WasmPolicy};
use flowgate_host::{DEFAULT_MODULE, Policy};
use flowgate_policy::Verdict;

const FRAMES: usize = 20_000;
const BURST: usize = 1_000;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("flowgate-bench-{}-{name}", std::process::id()))
}

fn replay_bench(c: &mut Criterion) {
    let (yaml, config, _) = setup(100);
    let packets = flowgate_policy::synth::packets(&config, FRAMES, 3);
    let capture = tmp("in.pcap");
    let mut w = CaptureWriter::create(&capture).unwrap();
    for (i, p) in packets.iter().enumerate() {
        let data = flowgate_wire::vxlan_frame(p, &[0u8; 64]).unwrap();
        let record = Record {
            timestamp: Duration::from_micros(i as u64),
            orig_len: data.len() as u32,
            data,
        };
        w.write_record(&record).unwrap();
    }
    w.finish().unwrap();

    let runtime = Runtime::new(Limits::default(), None).unwrap();
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let mut policy = WasmPolicy::new(&runtime, &module, &yaml).unwrap();
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(FRAMES as u64));
    for (name, skip_policy) in [("policy", false), ("skip-policy", true)] {
        let run = |policy: &mut WasmPolicy| {
            let mut input = CaptureReader::open(&capture).unwrap();
            let mut outputs = Outputs {
                allowed: Some(CaptureWriter::create(&tmp("out.pcap")).unwrap()),
                ambiguous: Some(CaptureWriter::create(&tmp("amb.pcap")).unwrap()),
                dropped: Some(CaptureWriter::create(&tmp("drops.pcap")).unwrap()),
            };
            let options = pcap::Options {
                batch: 256,
                default_vni: None,
                skip_policy,
            };
            let report = pcap::replay(policy, &mut input, &mut outputs, options, |_| {}).unwrap();
            assert_eq!(report.frames, FRAMES as u64);
            report
        };
        // One run outside the timing, for the time per phase.
        let t = run(&mut policy).timings;
        let per_second = |d: Duration| FRAMES as f64 / d.as_secs_f64() / 1e6;
        eprintln!(
            "replay/{name}: parse {:.2} M/s, judge {:.2} M/s, write {:.2} M/s",
            per_second(t.parse),
            per_second(t.judge),
            per_second(t.write)
        );
        group.bench_function(name, |b| b.iter(|| run(&mut policy)));
    }
    group.finish();
    for f in ["in.pcap", "out.pcap", "amb.pcap", "drops.pcap"] {
        let _ = std::fs::remove_file(tmp(f));
    }
}

fn live_bench(c: &mut Criterion) {
    let (yaml, config, _) = setup(100);
    let packets = flowgate_policy::synth::packets(&config, BURST, 4);
    let datagrams: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| flowgate_wire::vxlan_datagram(p, &[0u8; 64]).unwrap())
        .collect();
    // With the policy call skipped, each packet gets the verdict the policy would give
    // (computed beforehand), so the same packets are forwarded: only the call is missing.
    let table = flowgate_policy::Table::build(&config).expect("the table builds");
    let precomputed: Vec<Verdict> = packets.iter().map(|p| table.lookup(p)).collect();

    // Every VPC's endpoint is one receiver, which only drains its socket.
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = receiver.local_addr().unwrap();
    let pairs: Vec<String> = config
        .vpcs
        .iter()
        .map(|v| format!("{}={to}", v.name))
        .collect();
    let endpoints = Arc::new(Endpoints::parse(&pairs, None).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    receiver
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let drain = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 9216];
            while !done.load(Ordering::Relaxed) {
                let _ = receiver.recv(&mut buf);
            }
        })
    };
    // The gateway's socket, and a sender that sends a burst when asked.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
    let gateway = socket.local_addr().unwrap();
    // The burst is queued on the gateway's socket before the clock starts: what is timed is
    // the gateway draining it, not the sender's one-by-one `send_to`s.
    let (go, bursts) = mpsc::channel::<()>();
    let (sent, queued) = mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        let out = UdpSocket::bind("127.0.0.1:0").unwrap();
        for () in bursts {
            for d in &datagrams {
                out.send_to(d, gateway).unwrap();
            }
            sent.send(()).unwrap();
        }
    });

    let runtime = Runtime::new(Limits::default(), None).unwrap();
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let mut policy = WasmPolicy::new(&runtime, &module, &yaml).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut source = VxlanPort::new(socket, endpoints, stop, 256).unwrap();
    let mut group = c.benchmark_group("live");
    group.throughput(Throughput::Elements(BURST as u64));
    for (name, skip_policy) in [("policy", false), ("skip-policy", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    go.send(()).unwrap();
                    queued.recv().unwrap();
                    let started = Instant::now();
                    let (mut seen, mut counters) = (0, Counters::default());
                    let mut batch = Vec::with_capacity(256);
                    let mut verdicts = vec![Verdict::default(); 256];
                    while seen < BURST {
                        batch.clear();
                        let n = source.fill(&mut batch, 256);
                        assert!(n > 0, "the burst stalled: {seen} of {BURST} arrived");
                        let out = &mut verdicts[..n];
                        if skip_policy {
                            // Loopback keeps one sender's datagrams in order.
                            out.copy_from_slice(&precomputed[seen..seen + n]);
                        } else {
                            policy.judge(&batch, out).unwrap();
                        }
                        let catalog = policy.catalog();
                        source.deliver(Some(out), catalog, &mut counters);
                        seen += n;
                    }
                    total += started.elapsed();
                    assert_eq!(counters.unsent, 0);
                }
                total
            })
        });
    }
    group.finish();
    drop(go);
    sender.join().unwrap();
    done.store(true, Ordering::Relaxed);
    drain.join().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = replay_bench, live_bench
}
criterion_main!(benches);
