//! `flowgate serve --source vxlan` as a live gateway on loopback: a sender sends VXLAN
//! datagrams, one receiver per VPC tunnel endpoint counts what arrives, and the counts match
//! the verdicts `flowgate check` gives for the same 5-tuples.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowgate_policy::json::packet_json;
use flowgate_policy::synth;
use flowgate_policy::{Table, parse};
use serde_json::Value;

use crate::cli::{flowgate, stdout};

const CONFIG: &str = "fixtures/pcap/config.yaml";

#[test]
fn live_gateway_forwards_what_check_allows() {
    let yaml = std::fs::read_to_string(crate::repo().join(CONFIG)).unwrap();
    let config = parse(&yaml, None).unwrap();
    let table = Table::build(&config).unwrap();
    let mut packets = synth::packets(&config, 3_000, 11);
    packets
        .iter_mut()
        .step_by(97)
        .for_each(|p| p.src_vni = 4242);

    // What `flowgate check` says of the same 5-tuples: allowed packets per VPC.
    let lines: String = packets
        .iter()
        .map(|p| format!("{}\n", packet_json(table.catalog(), p)))
        .collect();
    let trace = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("live.jsonl");
    std::fs::write(&trace, lines).unwrap();
    let check = flowgate(
        &[
            "check",
            "--config",
            CONFIG,
            "--packets",
            trace.to_str().unwrap(),
        ],
        "",
    );
    assert!(check.status.success());
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_drops: BTreeMap<String, u64> = BTreeMap::new();
    for line in stdout(&check).lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let (map, key) = match v["verdict"].as_str() {
            Some("allow") => (&mut expected, &v["dst_vpc"]),
            Some("drop") => (&mut expected_drops, &v["reason"]),
            _ => continue,
        };
        *map.entry(key.as_str().unwrap().to_owned()).or_default() += 1;
    }
    // C is never a packet's only destination here: its 1.0.0.0/24 lies in A's 1.0.0.0/23, so
    // what reaches it is ambiguous (and not forwarded).
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        ["A", "B"],
        "traffic reaches A and B: {expected:?}"
    );

    // One receiver per VPC endpoint, each checking the VNI of what it gets.
    let done = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    let mut endpoint_args = Vec::new();
    for vpc in &config.vpcs {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        endpoint_args.push(format!("{}={}", vpc.name, socket.local_addr().unwrap()));
        let (done, vni) = (done.clone(), vpc.vni);
        receivers.push((
            vpc.name.clone(),
            std::thread::spawn(move || {
                let (mut count, mut wrong_vni) = (0u64, 0u64);
                let mut buf = [0u8; 9216];
                while !done.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        count += 1;
                        if n < 8 || u32::from_be_bytes([0, buf[4], buf[5], buf[6]]) != vni {
                            wrong_vni += 1;
                        }
                    }
                }
                (count, wrong_vni)
            }),
        ));
    }

    let admin_arg = format!("unix:{}", crate::socket_path("live").display());
    let mut args = vec![
        "serve",
        "--source",
        "vxlan",
        "--listen",
        "127.0.0.1:0",
        "--config",
        CONFIG,
        "--admin",
        &admin_arg,
        "--workers",
        "2",
        "--batch",
        "64",
        "--duration",
        "60",
    ];
    for e in &endpoint_args {
        args.extend(["--endpoint", e.as_str()]);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(&args)
        .current_dir(crate::repo())
        .env(
            "FLOWGATE_CACHE_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/live-cache"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // `serve` says where its admin API and its VXLAN socket are (both picked by the system).
    let (mut admin, mut gateway): (Option<String>, Option<SocketAddr>) = (None, None);
    while admin.is_none() || gateway.is_none() {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited early"
        );
        if let Some((_, at)) = line.trim().split_once("admin API on ") {
            admin = Some(at.to_owned());
        }
        if let Some(addr) = line
            .trim()
            .strip_prefix("flowgate: receiving VXLAN on udp://")
        {
            gateway = Some(addr.parse().unwrap());
        }
    }
    let (admin, gateway) = (admin.unwrap(), gateway.unwrap());
    std::thread::spawn(move || for _ in stderr.lines() {});

    // Send, paced so that loopback's socket buffers never overflow; halfway, swap the module
    // through the admin API, as an operator would on a live gateway.
    let client = flowgate_host::admin::Client::new(
        flowgate_host::admin::Endpoint::parse(&admin).unwrap(),
        None,
    );
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (i, chunk) in packets.chunks(50).enumerate() {
        if i == packets.len() / 100 {
            let answer = client
                .swap_module(flowgate_test_guests::HONEST_V2, None, None)
                .unwrap();
            assert_eq!(answer.status, 200, "{}", answer.body);
        }
        for p in chunk {
            let datagram = flowgate_wire::vxlan_datagram(p, b"flowgate").unwrap();
            sender.send_to(&datagram, gateway).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Wait (bounded) until the gateway has counted every packet.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = client.status().unwrap().body;
        if status["counters"]["packets"] == packets.len() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200)); // the last datagrams in flight
    done.store(true, Ordering::Relaxed);
    let got: BTreeMap<String, (u64, u64)> = receivers
        .into_iter()
        .map(|(name, h)| (name, h.join().unwrap()))
        .collect();
    terminate(&child);
    let out = child.wait_with_output().unwrap();
    let status: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();

    for (vpc, (count, wrong_vni)) in &got {
        assert_eq!(
            *count,
            expected.get(vpc).copied().unwrap_or(0),
            "{vpc}: {got:?}"
        );
        assert_eq!(*wrong_vni, 0, "{vpc}");
    }
    assert_eq!(status["counters"]["packets"], packets.len());
    assert_eq!(status["generation"], 2, "the swap took: {status}");
    assert_eq!(status["counters"]["unsent"], 0);
    let drops: BTreeMap<String, u64> =
        serde_json::from_value(status["counters"]["drops"].clone()).unwrap();
    assert_eq!(drops, expected_drops);
}

fn terminate(child: &std::process::Child) {
    crate::signal(child.id(), "TERM");
}
