//! The admin API's audit trail: a record for every request that changes or tries to change the
//! gateway, naming its caller (a Unix socket's peer credentials, a TCP client's address and
//! token name), written before the change goes live; a change it cannot record is not made.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use flowgate_host::admin::{
    AdminOptions, AdminServer, AuditLog, Client, Endpoint, ServerTokens, read_server_tokens,
};
use flowgate_host::gateway::{Gateway, Options};
use flowgate_policy::synth::{self, Scale};
use serde_json::Value;

fn config(seed: u64) -> String {
    synth::config_yaml(Scale::with_peerings(20, seed))
}

fn gateway() -> Arc<Gateway> {
    crate::gateway_with(
        &config(1),
        flowgate_host::wasm::Limits::default(),
        Options::default(),
    )
}

/// A private folder of its own for a test's files.
pub(crate) fn folder(what: &str) -> PathBuf {
    let dir = crate::socket_path(what).parent().unwrap().to_owned();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The records of an audit file.
pub(crate) fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Each record's request and result.
pub(crate) fn requests_and_results(records: &[Value]) -> Vec<(&str, &str)> {
    records
        .iter()
        .map(|r| {
            (
                r["request"].as_str().unwrap(),
                r["result"].as_str().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_change_and_refusal_on_the_socket_is_recorded_with_the_callers_credentials() {
    let gateway = gateway();
    let log = folder("audit-socket").join("audit.jsonl");
    let endpoint = Endpoint::Unix(crate::socket_path("audit-socket"));
    let options = AdminOptions {
        audit: Arc::new(AuditLog::open(&log).unwrap()),
        ..AdminOptions::new(endpoint.clone(), None)
    };
    let _server = AdminServer::start(gateway.clone(), options).unwrap();
    let client = Client::new(endpoint.clone(), None);

    let first = gateway.current().etag();
    let swapped = client.swap_config(&config(2), None).unwrap();
    assert_eq!(swapped.status, 200);
    let refused = client.swap_config("kind: nothing\n", None).unwrap();
    assert_eq!(refused.status, 422);
    let back = client.rollback().unwrap();
    assert_eq!(back.status, 200);
    // A watch action on a gateway that follows no tag: refused, and recorded.
    assert_eq!(client.watch("pause").unwrap().status, 409);
    // A configuration that is not text is refused before the gateway is asked, and recorded.
    let Endpoint::Unix(socket) = &endpoint else {
        unreachable!()
    };
    let mut raw = std::os::unix::net::UnixStream::connect(socket).unwrap();
    raw.write_all(b"PUT /config HTTP/1.1\r\nHost: flowgate\r\nContent-Length: 2\r\n\r\n\xff\xfe")
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut raw, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A read changes nothing and is not recorded.
    assert_eq!(client.status().unwrap().status, 200);

    let records = records(&log);
    assert_eq!(records.len(), 5, "{records:#?}");
    let me = serde_json::json!({
        "transport": "unix",
        "uid": nix::unistd::geteuid().as_raw(),
        "gid": nix::unistd::getegid().as_raw(),
        "pid": std::process::id(),
        "token": null,
    });
    for r in &records {
        assert_eq!(r["caller"], me);
        assert!(r["time_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }
    let (s, f, b) = (&records[0], &records[1], &records[2]);
    assert_eq!(
        (s["request"].as_str(), s["result"].as_str()),
        (Some("PUT /config"), Some("changed"))
    );
    assert_eq!(s["before"]["etag"].as_str(), Some(first.as_str()));
    assert_eq!(s["after"]["etag"].as_str(), swapped.etag.as_deref());
    let config_sha256 = flowgate_host::hex(&<sha2::Sha256 as sha2::Digest>::digest(config(2)));
    assert_eq!(s["after"]["config_sha256"].as_str(), Some(&*config_sha256));
    assert_eq!(
        (f["request"].as_str(), f["result"].as_str()),
        (Some("PUT /config"), Some("config-refused"))
    );
    assert!(f["after"].is_null() && f["error"].as_str().is_some());
    assert_eq!(f["before"]["etag"].as_str(), swapped.etag.as_deref());
    assert_eq!(
        (b["request"].as_str(), b["result"].as_str()),
        (Some("POST /rollback"), Some("changed"))
    );
    assert_eq!(b["after"]["etag"].as_str(), back.etag.as_deref());
    assert_eq!(b["before"]["etag"].as_str(), swapped.etag.as_deref());
    let w = &records[3];
    assert_eq!(
        (w["request"].as_str(), w["result"].as_str()),
        (Some("POST /watch/pause"), Some("watch-refused"))
    );
    assert!(w["before"].is_null(), "the gateway follows no tag");
    assert_eq!(
        (
            records[4]["request"].as_str(),
            records[4]["result"].as_str()
        ),
        (Some("PUT /config"), Some("bad-request"))
    );
}

#[test]
fn a_tcp_caller_is_recorded_by_its_address_and_the_name_of_its_token() {
    let gateway = gateway();
    let dir = folder("audit-tcp");
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        "# the operators\nalice alice-0123456789abcdef\n\nbob bob-0123456789abcdef\n",
    )
    .unwrap();
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let ServerTokens::Named(named) = read_server_tokens(&tokens).unwrap() else {
        panic!("two named tokens");
    };
    let log = dir.join("audit.jsonl");
    let options = AdminOptions {
        named_tokens: named,
        audit: Arc::new(AuditLog::open(&log).unwrap()),
        ..AdminOptions::new(Endpoint::Tcp("127.0.0.1:0".into()), None)
    };
    let server = AdminServer::start(gateway, options).unwrap();
    let endpoint = server.endpoint().clone();
    let stranger = Client::new(endpoint.clone(), Some("mallory-0123456789abcdef".into()));
    assert_eq!(stranger.swap_config(&config(2), None).unwrap().status, 401);
    let bob = Client::new(endpoint, Some("bob-0123456789abcdef".into()));
    assert_eq!(bob.swap_config(&config(2), None).unwrap().status, 200);
    let records = records(&log);
    assert_eq!(
        records.len(),
        1,
        "the stranger changed nothing: {records:#?}"
    );
    let caller = &records[0]["caller"];
    assert_eq!(caller["transport"], "tcp");
    assert_eq!(caller["token"], "bob");
    assert!(caller["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
}

/// A sink that refuses every write, as a full disk does.
struct Full;

impl Write for Full {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A sink that takes every byte and cannot flush them.
struct Unflushed;

impl Write for Unflushed {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

#[test]
fn a_change_whose_record_cannot_be_written_is_not_made() {
    for (name, sink) in [
        ("the full sink", Box::new(Full) as Box<dyn Write + Send>),
        ("the unflushed sink", Box::new(Unflushed)),
    ] {
        let gateway = gateway();
        // A release to roll back to, made before the sink was the gateway's.
        gateway
            .swap(flowgate_host::gateway::SwapRequest::config(&config(3)))
            .unwrap();
        let endpoint = Endpoint::Unix(crate::socket_path("audit-full"));
        let options = AdminOptions {
            audit: Arc::new(AuditLog::to_writer(name, sink)),
            ..AdminOptions::new(endpoint.clone(), None)
        };
        let _server = AdminServer::start(gateway.clone(), options).unwrap();
        let client = Client::new(endpoint, None);
        let before = gateway.current();
        for reply in [
            client.swap_config(&config(2), None).unwrap(),
            client.rollback().unwrap(),
        ] {
            assert_eq!(reply.status, 422, "{name}");
            assert_eq!(reply.body["reason"], "audit-failed");
            assert!(reply.body["error"].as_str().unwrap().contains(name));
        }
        let after = gateway.current();
        assert_eq!(after.generation, before.generation, "{name}");
        assert_eq!(*after.config, *before.config);
    }
}

#[test]
fn named_tokens_on_the_socket_are_recorded_too() {
    let gateway = gateway();
    let log = folder("audit-named-socket").join("audit.jsonl");
    let endpoint = Endpoint::Unix(crate::socket_path("audit-named-socket"));
    let options = AdminOptions {
        named_tokens: vec![("carol".into(), "carol-0123456789abcdef".into())],
        audit: Arc::new(AuditLog::open(&log).unwrap()),
        ..AdminOptions::new(endpoint.clone(), None)
    };
    let _server = AdminServer::start(gateway, options).unwrap();
    let carol = Client::new(endpoint, Some("carol-0123456789abcdef".into()));
    assert_eq!(carol.swap_config(&config(2), None).unwrap().status, 200);
    let records = records(&log);
    assert_eq!(records[0]["caller"]["transport"], "unix");
    assert_eq!(records[0]["caller"]["token"], "carol");
}

/// A gateway of `workers` workers that reverts after 3 faults and follows the tag
/// `oci://127.0.0.1:1/t/p:prod` (no registry needed: the watch's swaps are made directly), its
/// admin API on a socket writing audit records to `audit`.
fn following_with_audit(
    audit: AuditLog,
    workers: usize,
) -> (Arc<Gateway>, AdminServer, flowgate_host::oci::Reference) {
    let gateway = crate::gateway_with(
        &config(1),
        flowgate_host::wasm::Limits::default(),
        Options {
            workers,
            fault_limit: 3,
            fault_window: std::time::Duration::from_secs(60),
            ..Options::default()
        },
    );
    let tag = flowgate_host::oci::Reference::parse("oci://127.0.0.1:1/t/p:prod").unwrap();
    gateway.watch_tag(&tag).unwrap();
    let options = AdminOptions {
        audit: Arc::new(audit),
        ..AdminOptions::new(Endpoint::Unix(crate::socket_path("audit-own")), None)
    };
    let server = AdminServer::start(gateway.clone(), options).unwrap();
    (gateway, server, tag)
}

/// Runs the workers of `gateway` on traffic one packet in 16 of which makes the trapping test
/// module trap, until `done` holds (at most 60 s).
fn faulting_until(gateway: &Arc<Gateway>, done: impl Fn(&Gateway) -> bool) {
    traffic_until(gateway, true, done);
}

/// Runs the workers of `gateway` on traffic (one packet in 16 made to trap the trapping test
/// module when `traps`) until `done` holds (at most 60 s).
fn traffic_until(gateway: &Arc<Gateway>, traps: bool, done: impl Fn(&Gateway) -> bool) {
    use flowgate_policy::{Packet, synth};
    let packets: Arc<[Packet]> = {
        let parsed = flowgate_policy::parse(&config(2), None).unwrap();
        let mut p = synth::packets(&parsed, 1024, 3);
        for p in p.iter_mut().step_by(16).filter(|_| traps) {
            *p = Packet::tcp(
                p.src_vni,
                p.src,
                flowgate_test_guests::trigger::TRAP,
                p.dst,
                80,
            );
        }
        p.into()
    };
    let (stop, handles) = crate::run_workers(gateway, &packets, 0, 2_000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done(gateway) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn the_gateways_own_changes_are_recorded_as_its_own() {
    use flowgate_host::oci::Digest;
    use flowgate_test_guests as guests;
    use std::sync::atomic::AtomicBool;
    let log = folder("audit-own").join("audit.jsonl");
    let (gateway, _server, tag) = following_with_audit(AuditLog::open(&log).unwrap(), 1);
    let never = AtomicBool::new(false);
    let first = gateway.current();

    // The tag watch's swap.
    let moved = Digest::of(b"v2");
    let taken = gateway
        .swap_by_watch(guests::HONEST_V2, &tag, moved, None, &never)
        .unwrap()
        .unwrap();
    // SIGHUP's reload of a changed configuration file.
    let reloaded = gateway.reload(None, &config(2)).unwrap().unwrap();
    // A reload of what already serves changes nothing, and records nothing.
    assert!(gateway.reload(None, &config(2)).unwrap().is_none());
    // A refused reload is recorded as refused.
    assert!(gateway.reload(None, "kind: nothing\n").is_err());
    // Auto-revert from an operator's trapping module (its swap, by the Rust API, has no caller
    // to record: the admin API records its own requests).
    let faulty = gateway
        .swap(flowgate_host::gateway::SwapRequest::module(guests::TRAP))
        .unwrap();
    faulting_until(&gateway, |g| g.current().cause == "auto-revert");
    let reverted = gateway.current();
    assert_eq!(reverted.cause, "auto-revert");

    let records = records(&log);
    let own = serde_json::json!({"transport": "gateway"});
    assert_eq!(
        requests_and_results(&records),
        [
            ("tag watch: swap", "changed"),
            ("SIGHUP: reload", "changed"),
            ("SIGHUP: reload", "config-refused"),
            ("auto-revert", "changed"),
        ],
        "{records:#?}"
    );
    let refused = &records[2];
    assert_eq!(refused["caller"], own);
    assert_eq!(refused["before"]["etag"].as_str(), Some(&*reloaded.etag()));
    assert!(refused["after"].is_null() && refused["error"].as_str().is_some());
    let changes = [&records[0], &records[1], &records[3]];
    let steps = [
        (&first, &taken, "tag-watch"),
        (&taken, &reloaded, "sighup"),
        (&faulty, &reverted, "auto-revert"),
    ];
    for (record, (before, after, origin)) in changes.into_iter().zip(steps) {
        assert_eq!(record["caller"], own, "{record:#}");
        assert_eq!(record["before"]["etag"].as_str(), Some(&*before.etag()));
        assert_eq!(record["after"]["etag"].as_str(), Some(&*after.etag()));
        assert_eq!(record["after"]["origin"], origin);
        assert_eq!(record["after"]["why"].as_str(), Some(&*after.why));
    }
    assert!(
        records[3]["after"]["why"]
            .as_str()
            .unwrap()
            .contains("trap")
    );
}

#[test]
fn an_own_change_whose_record_cannot_be_written_is_not_made() {
    use flowgate_host::gateway::Decision;
    use flowgate_host::oci::Digest;
    use flowgate_test_guests as guests;
    use std::sync::atomic::AtomicBool;
    let (gateway, _server, tag) =
        following_with_audit(AuditLog::to_writer("the full sink", Box::new(Full)), 1);
    let never = AtomicBool::new(false);
    let before = gateway.current();
    let moved = Digest::of(b"v2");
    let refused = gateway
        .swap_by_watch(guests::HONEST_V2, &tag, moved, None, &never)
        .err()
        .map(|e| e.reason().as_str());
    assert_eq!(refused, Some("audit-failed"));
    // Not the module's fault: the watch takes the digest again once records can be written.
    assert_eq!(gateway.watch_decision(&moved), Decision::Take);
    let refused = gateway.reload(None, &config(2)).err();
    assert_eq!(refused.map(|e| e.reason().as_str()), Some("audit-failed"));
    let after = gateway.current();
    assert_eq!(after.generation, before.generation);
    assert_eq!(*after.config, *before.config);
    assert_eq!(after.module_digest(), before.module_digest());

    // An auto-revert is refused too (tried again while the faults go on): the trapping module
    // an operator swapped in keeps serving, its batches failing closed.
    let faulty = gateway
        .swap(flowgate_host::gateway::SwapRequest::module(guests::TRAP))
        .unwrap();
    faulting_until(&gateway, |g| g.events().revert_failures > 0);
    assert!(gateway.events().revert_failures > 0);
    assert_eq!(gateway.current().generation, faulty.generation);
}

/// A sink that refuses the records holding `refused`, as a full disk would, and keeps the
/// others.
struct Refusing {
    refused: &'static str,
    kept: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Write for Refusing {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if String::from_utf8_lossy(bytes).contains(self.refused) {
            return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
        }
        self.kept.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_gated_watch_does_not_promote_a_shadow_whose_record_cannot_be_written() {
    use flowgate_host::gateway::watch::{ShadowGate, watch};
    use flowgate_host::gateway::{Decision, ShadowBudget};
    use flowgate_host::oci::Reference;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let Some(registry) = crate::oci::start() else {
        return;
    };
    let tag = Reference::parse(&registry.reference("t/p:prod")).unwrap();
    let moved = crate::oci::push(&tag, flowgate_test_guests::HONEST_V2);
    let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Refusing {
        refused: "shadow promoted",
        kept: kept.clone(),
    };
    let gateway = crate::gateway_with(
        &config(1),
        flowgate_host::wasm::Limits::default(),
        Options {
            workers: 1,
            shadow_share: 1.0,
            ..Options::default()
        },
    );
    let options = AdminOptions {
        audit: Arc::new(AuditLog::to_writer("the refusing sink", Box::new(sink))),
        ..AdminOptions::new(Endpoint::Unix(crate::socket_path("audit-gate")), None)
    };
    let _server = AdminServer::start(gateway.clone(), options).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (gateway, stop, tag) = (gateway.clone(), stop.clone(), tag.clone());
        std::thread::spawn(move || {
            let gate = ShadowGate {
                judge_for: Duration::from_millis(300),
                budget: ShadowBudget::Share(1.0),
            };
            let registry = crate::oci::client();
            let interval = Duration::from_millis(200);
            watch(&gateway, &registry, None, &tag, interval, Some(gate), &stop);
        })
    };
    let unrecorded = |g: &Gateway| g.events().shadow_ends.get("unrecorded").copied() > Some(0);
    traffic_until(&gateway, false, unrecorded);
    stop.store(true, Ordering::Release);
    watcher.join().unwrap();

    assert!(unrecorded(&gateway), "{:?}", gateway.events().shadow_ends);
    assert_eq!(gateway.current().generation, 1, "nothing was promoted");
    assert_eq!(
        gateway.watch_decision(&moved),
        Decision::Take,
        "not quarantined: the watch stages it again later"
    );
    let kept = String::from_utf8(kept.lock().unwrap().clone()).unwrap();
    let records: Vec<Value> = kept
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!records.is_empty());
    for r in &records {
        assert_eq!(r["request"], "tag watch: shadow staged", "{r:#}");
        assert_eq!(r["result"], "changed");
    }
}
