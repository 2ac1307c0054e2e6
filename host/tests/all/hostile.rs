//! The hostile-input regression suite: what an attacker or a careless operator sends, and
//! what must happen. Every refusal leaves the running release serving, and traffic flowing.
//! What registries answer (altered blobs and manifests, oversize modules, unknown layouts,
//! missing tags, logins refused, a registry gone) is pinned down against a real registry in
//! `oci.rs` and `hostile_registry.rs`; the admin API's transport, the socket and the token in
//! `hostile_admin.rs`; caches and files in `hostile_cache.rs`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowgate_host::admin::{AdminOptions, AdminServer, Client};
use flowgate_host::admin::{Endpoint, Stream};
use flowgate_host::gateway::{Gateway, Options, SwapError, SwapRequest, instances_needed};
use flowgate_host::wasm::StartError;
use flowgate_host::wasm::{Limits, Runtime};
use flowgate_host::{DEFAULT_MODULE, OverLimit, Policy, Setting};
use flowgate_policy::synth::{self, Scale};
use flowgate_policy::{Packet, Verdict};
use flowgate_test_guests as guests;

use crate::cli::flowgate;

const SPEC_3_1: &str = "fixtures/cases/spec-3.1-overlap/config.yaml";

pub(crate) fn config() -> String {
    synth::config_yaml(Scale::with_peerings(30, 5))
}

pub(crate) fn gateway(config: &str, workers: usize) -> Arc<Gateway> {
    let options = Options {
        workers,
        ..Options::default()
    };
    crate::gateway_with(config, Limits::default(), options)
}

/// Sends `raw` on a new connection to `endpoint`, then half-closes (or, with `hold`, keeps the
/// connection open that long), and returns the status line of the answer, if any.
pub(crate) fn raw(endpoint: &Endpoint, raw: &[u8], hold: Option<Duration>) -> String {
    let mut s = Stream::connect(endpoint, Duration::from_secs(5)).unwrap();
    s.set_timeouts(Duration::from_secs(30), Duration::from_secs(30))
        .unwrap();
    // The server may answer (503) and close before all is written.
    let _ = s.write_all(raw);
    match hold {
        Some(d) => std::thread::sleep(d),
        None => {
            let _ = match &s {
                Stream::Unix(u) => u.shutdown(std::net::Shutdown::Write),
                Stream::Tcp(t) => t.shutdown(std::net::Shutdown::Write),
            };
        }
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

fn generation(client: &Client) -> u64 {
    client.status().unwrap().body["generation"]
        .as_u64()
        .unwrap()
}

/// A body shorter than its Content-Length (a client that died mid-upload) is refused
/// and nothing goes live; so is an unfinished chunked body.
#[test]
fn a_truncated_upload_never_goes_live() {
    let config = config();
    let gateway = gateway(&config, 1);
    let (admin, client) = crate::admin_on_socket(&gateway);
    let half = &config.as_bytes()[..config.len() / 2];
    let mut request = format!(
        "PUT /config HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        config.len()
    )
    .into_bytes();
    request.extend_from_slice(half);
    let status = raw(admin.endpoint(), &request, None);
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    let mut chunked =
        b"PUT /config HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked.extend_from_slice(format!("{:x}\r\n", half.len()).as_bytes());
    chunked.extend_from_slice(half);
    chunked.extend_from_slice(b"\r\n");
    let status = raw(admin.endpoint(), &chunked, None);
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    // A complete chunked body is fine.
    chunked.extend_from_slice(format!("{:x}\r\n", config.len() - half.len()).as_bytes());
    chunked.extend_from_slice(&config.as_bytes()[half.len()..]);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let status = raw(admin.endpoint(), &chunked, None);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(generation(&client), 2);
    let events = gateway.events();
    assert_eq!(events.admin_refusals.get("truncated-body"), Some(&2));
    assert_eq!(events.swaps.get("config"), Some(&1));
}

/// An empty configuration, or a length that is not one, is refused; so is SIGHUP on
/// an empty file. SIGHUP on unchanged files publishes nothing.
#[test]
fn an_empty_configuration_is_no_blackhole() {
    let config = config();
    let gateway = gateway(&config, 1);
    let (admin, client) = crate::admin_on_socket(&gateway);
    let answer = client.swap_config("", None).unwrap();
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert_eq!(answer.body["reason"], "config-refused");
    assert!(
        answer.body["error"]
            .as_str()
            .unwrap()
            .contains("defines no VPC"),
        "{}",
        answer.body
    );
    for length in ["abc", "-5", "1e3", ""] {
        let request = format!("PUT /config HTTP/1.1\r\nContent-Length: {length}\r\n\r\n");
        let status = raw(admin.endpoint(), request.as_bytes(), None);
        assert!(status.starts_with("HTTP/1.1 400"), "{length}: {status}");
    }
    assert!(matches!(
        gateway.reload(None, ""),
        Err(SwapError::Config(_))
    ));
    assert!(matches!(
        gateway.reload(None, "# only a comment\n"),
        Err(SwapError::Config(_))
    ));
    assert!(gateway.reload(None, &config).unwrap().is_none());
    assert!(
        gateway
            .reload(Some(DEFAULT_MODULE.into()), &config)
            .unwrap()
            .is_none()
    );
    assert_eq!(generation(&client), 1);
    assert_eq!(gateway.current().catalog.vpcs.len(), 10);
}

/// A module whose state (what its configured instance hands the workers' instances) is no
/// state, or is another configuration's, is refused through the admin API as `canary-failed`:
/// no worker adopts it, and the running release keeps serving.
#[test]
fn a_forged_state_never_goes_live() {
    let config = config();
    let gateway = gateway(&config, 2);
    let (_admin, client) = crate::admin_on_socket(&gateway);
    for (module, says) in [
        (guests::GARBLED, "the module refused the state"),
        (guests::DRIFTING, "judged canary packet"),
    ] {
        let answer = client.swap_module(module, None, None).unwrap();
        assert_eq!(answer.status, 422, "{}", answer.body);
        assert_eq!(answer.body["reason"], "canary-failed", "{}", answer.body);
        let error = answer.body["error"].as_str().unwrap();
        assert!(error.contains(says), "{error}");
    }
    assert_eq!(generation(&client), 1);
    let packets = synth::packets(&flowgate_policy::parse(&config, None).unwrap(), 512, 3);
    let expected: Vec<Verdict> = {
        let mut native = flowgate_host::NativePolicy::new(&config, None).unwrap();
        let mut out = vec![Verdict::default(); packets.len()];
        native.judge(&packets, &mut out).unwrap();
        out
    };
    let mut worker = gateway.worker(0);
    let mut out = vec![Verdict::default(); packets.len()];
    assert!(worker.judge(&packets, &mut out).verdicts.is_some());
    assert_eq!(out, expected);
}

/// On TCP every request needs the token; a missing or wrong one is 401 and changes
/// nothing. TCP without a token does not start. The Unix socket is 0600.
#[test]
fn the_admin_api_needs_its_token_on_tcp_and_its_socket_is_private() {
    let config = config();
    let gateway = gateway(&config, 1);
    let tcp = Endpoint::Tcp("127.0.0.1:0".into());
    let e = AdminServer::start(gateway.clone(), AdminOptions::new(tcp.clone(), None))
        .err()
        .unwrap();
    assert!(e.to_string().contains("needs a bearer token"), "{e}");

    let token = "s3cret-token-for-the-test";
    let server =
        AdminServer::start(gateway.clone(), AdminOptions::new(tcp, Some(token.into()))).unwrap();
    let endpoint = server.endpoint().clone();
    let other = synth::config_yaml(Scale::with_peerings(12, 9));
    for wrong in [None, Some("wrong"), Some("s3cret-token-for-the-tesT")] {
        let client = Client::new(endpoint.clone(), wrong.map(str::to_owned));
        let answer = client.swap_config(&other, None).unwrap();
        assert_eq!(answer.status, 401, "{wrong:?}: {}", answer.body);
        assert_eq!(client.status().unwrap().status, 401);
        assert_eq!(client.rollback().unwrap().status, 401);
    }
    assert_eq!(gateway.current().generation, 1);
    assert_eq!(
        gateway.events().admin_refusals.get("unauthorized"),
        Some(&9)
    );
    let client = Client::new(endpoint, Some(token.into()));
    assert_eq!(client.swap_config(&other, None).unwrap().status, 200);
    assert_eq!(generation(&client), 2);
    assert!(
        client
            .metrics()
            .unwrap()
            .contains("flowgate_admin_refusals_total{reason=\"unauthorized\"} 9")
    );

    let (unix, _) = crate::admin_on_socket(&gateway);
    let Endpoint::Unix(path) = unix.endpoint() else {
        panic!()
    };
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "{dir_mode:o}");
    // A second gateway on the same socket is refused while the first answers.
    let e = AdminServer::start(
        gateway.clone(),
        AdminOptions::new(unix.endpoint().clone(), None),
    )
    .err()
    .unwrap();
    assert!(format!("{e:#}").contains("already answers"), "{e:#}");
}

/// A client that stops sending holds only its own connection, until its deadline;
/// other requests are answered meanwhile, shutdown does not wait for it, and requests
/// beyond the cap are turned away.
#[test]
fn a_slow_client_blocks_nothing() {
    let config = config();
    let gateway = gateway(&config, 1);
    let endpoint = Endpoint::Unix(crate::socket_path("slow"));
    let mut options = AdminOptions::new(endpoint.clone(), None);
    options.limits.idle = Duration::from_millis(500);
    options.max_connections = 4;
    let server = AdminServer::start(gateway.clone(), options).unwrap();
    let client = Client::new(endpoint.clone(), None);

    // One stuck upload, holding its connection.
    let stuck = {
        let endpoint = endpoint.clone();
        std::thread::spawn(move || {
            raw(
                &endpoint,
                b"PUT /config HTTP/1.1\r\nContent-Length: 100000\r\n\r\nkind: VPC",
                Some(Duration::from_secs(3)),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    // The others are answered while it waits.
    assert_eq!(client.status().unwrap().status, 200);
    assert!(client.metrics().unwrap().contains("flowgate_generation 1"));
    // The stuck one times out (408), and nothing changed.
    let status = stuck.join().unwrap();
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert_eq!(generation(&client), 1);

    drop(server);

    // Requests beyond the cap get 503: four uploads that stopped after their head hold the
    // four places (well past this test's steps), so the fifth request finds none. (A
    // connection that has sent no head holds no place: see hostile_admin.rs.)
    let endpoint = Endpoint::Unix(crate::socket_path("cap"));
    let mut options = AdminOptions::new(endpoint.clone(), None);
    options.limits.idle = Duration::from_secs(60);
    options.max_connections = 4;
    let server = AdminServer::start(gateway.clone(), options).unwrap();
    let idle: Vec<Stream> = (0..4)
        .map(|_| {
            let mut s = Stream::connect(&endpoint, Duration::from_secs(1)).unwrap();
            s.write_all(b"PUT /config HTTP/1.1\r\nContent-Length: 100000\r\n\r\nkind: VPC")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let status = raw(&endpoint, b"GET /status HTTP/1.1\r\n\r\n", None);
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    // Shutting the server down does not wait for them (bounded, generously).
    let started = Instant::now();
    drop(server);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(idle);
    assert!(
        gateway
            .events()
            .admin_refusals
            .contains_key("too-many-connections")
    );
}

/// If-Match names the release (generation, module, configuration): two changes from
/// the same stale read cannot both win, and re-uploading the same module makes a new ETag.
#[test]
fn if_match_guards_the_whole_release() {
    let config = config();
    let gateway = gateway(&config, 1);
    let (_admin, client) = crate::admin_on_socket(&gateway);
    let etag = client.status().unwrap().etag.unwrap();
    let serving = client.serving().unwrap();
    assert_eq!(serving.etag, etag, "GET /config's ETag is the release's");
    let a = synth::config_yaml(Scale::with_peerings(12, 1));
    let b = synth::config_yaml(Scale::with_peerings(13, 2));
    assert_eq!(client.swap_config(&a, Some(&etag)).unwrap().status, 200);
    let lost = client.swap_config(&b, Some(&etag)).unwrap();
    assert_eq!(lost.status, 412, "{}", lost.body);
    assert_eq!(lost.body["reason"], "stale-digest");
    // ABA: the same module again is a new release with a new ETag.
    let now = client.status().unwrap().etag.unwrap();
    let again = client
        .swap_module(DEFAULT_MODULE, None, Some(&now))
        .unwrap();
    assert_eq!(again.status, 200, "{}", again.body);
    assert_ne!(again.etag.as_deref(), Some(now.as_str()));
    assert_eq!(
        client
            .swap_module(DEFAULT_MODULE, None, Some(&now))
            .unwrap()
            .status,
        412
    );
    // 20 racing PUTs from the same read: exactly one wins.
    let read = client.status().unwrap().etag.unwrap();
    let wins: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (client, read) = (&client, &read);
                scope.spawn(move || {
                    let module = if i % 2 == 0 {
                        DEFAULT_MODULE
                    } else {
                        guests::HONEST_V2
                    };
                    client.swap_module(module, None, Some(read)).unwrap().status
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap() == 200))
            .sum()
    });
    assert_eq!(wins, 1);
    // Rollback takes If-Match too.
    let stale = client.status().unwrap().etag.unwrap();
    assert_eq!(client.swap_config(&b, None).unwrap().status, 200);
    assert_eq!(
        gateway
            .rollback(Some(&stale))
            .err()
            .map(|e| e.reason().as_str()),
        Some("stale-digest")
    );
}

/// A gateway with 64 workers on this small machine starts, takes 10 swaps and a
/// rollback, and reverts by itself from a trapping module.
#[test]
fn sixty_four_workers_swap_roll_back_and_auto_revert() {
    let config = config();
    let workers = 64;
    let gateway = crate::gateway_with(
        &config,
        Limits {
            memory_bytes: 64 << 20,
            ..Limits::default()
        },
        Options {
            workers,
            fault_limit: 3,
            fault_window: Duration::from_secs(60),
            ..Options::default()
        },
    );
    let packets: Arc<[Packet]> = {
        let parsed = flowgate_policy::parse(&config, None).unwrap();
        let mut p = synth::packets(&parsed, 4096, 3);
        for (i, p) in p.iter_mut().enumerate() {
            if i % 64 == 5 {
                *p = Packet::tcp(p.src_vni, p.src, guests::trigger::TRAP, p.dst, 80);
            }
        }
        p.into()
    };
    let (stop, handles) = crate::run_workers(&gateway, &packets, 61, 2_000);
    for i in 0..10 {
        let module = if i % 2 == 0 {
            guests::HONEST_V2
        } else {
            DEFAULT_MODULE
        };
        gateway.swap(SwapRequest::module(module)).unwrap();
    }
    assert_eq!(gateway.current().generation, 11);
    let back = gateway.rollback(None).unwrap();
    assert_eq!((back.generation, back.cause.as_str()), (12, "rollback"));
    let faulty = gateway.swap(SwapRequest::module(guests::TRAP)).unwrap();
    assert_eq!(faulty.generation, 13);
    // Bounded wait for the revert.
    let deadline = Instant::now() + Duration::from_secs(60);
    while gateway.current().cause != "auto-revert" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(gateway.current().cause, "auto-revert");
    assert_ne!(gateway.current().info.name, "flowgate-test-trap");
    let counters = gateway.counters();
    let events = gateway.events();
    assert!(events.faults.get("trap").copied().unwrap_or(0) >= 3);
    assert_eq!(
        events.refusals.get("start-failed"),
        None,
        "{:?}",
        events.refusals
    );
    assert_eq!(events.revert_failures, 0);
    // Faults are counted in the counters /status shows, not only in events.
    assert!(counters.faults >= 3, "{counters:?}");
    assert_eq!(
        counters.faults * 256,
        counters.drops.get("policy-fault").copied().unwrap_or(0),
        "each faulted batch drops its 256 packets"
    );
    assert!(instances_needed(workers) >= 4 * 64);
}

/// A packet whose addresses are of different families gets the native verdict through
/// the module (the packed batch carries each address's family).
#[test]
fn mixed_family_packets_get_the_native_verdict_through_the_module() {
    let config = std::fs::read_to_string(crate::repo().join(SPEC_3_1)).unwrap();
    let runtime = crate::runtime();
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let mut wasm = flowgate_host::wasm::WasmPolicy::new(&runtime, &module, &config).unwrap();
    let mut native = flowgate_host::NativePolicy::new(&config, None).unwrap();
    let catalog = native.catalog().clone();
    let b = catalog.vpc(catalog.vpc_by_name("B").unwrap()).vni;
    let a = catalog.vpc(catalog.vpc_by_name("A").unwrap()).vni;
    let packets = [
        Packet::portless(
            b,
            "2.0.0.7".parse().unwrap(),
            "100:109::".parse().unwrap(),
            1,
        ),
        Packet::portless(
            b,
            "100:109::".parse().unwrap(),
            "1.0.1.9".parse().unwrap(),
            58,
        ),
        Packet::tcp(
            a,
            "1.0.0.9".parse().unwrap(),
            1,
            "::ffff:2.0.0.7".parse().unwrap(),
            2,
        ),
        Packet::portless(b, "2.0.0.7".parse().unwrap(), "1.0.1.9".parse().unwrap(), 1),
    ];
    let (mut w, mut n) = ([Verdict::default(); 4], [Verdict::default(); 4]);
    wasm.judge(&packets, &mut w).unwrap();
    native.judge(&packets, &mut n).unwrap();
    assert_eq!(w, n);
    assert!(matches!(n[0], Verdict::Drop(_)), "{:?}", n[0]);
}

/// A cache entry copied over another module's is refused by its checksum: the right
/// module is compiled again and judges. The cache folder is private.
#[test]
fn a_forged_cache_entry_is_not_loaded() {
    let dir = std::env::temp_dir().join(format!("flowgate-test-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = || Runtime::new(Limits::default(), Some(dir.clone())).unwrap();
    let config = config();
    {
        let r = runtime();
        r.load(DEFAULT_MODULE).unwrap();
        r.load(guests::WRONG).unwrap();
    }
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    let entry = |module: &[u8]| {
        let digest = flowgate_host::hex(&sha256(module));
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&digest)
            })
            .unwrap()
    };
    std::fs::copy(entry(guests::WRONG), entry(DEFAULT_MODULE)).unwrap();
    let r = runtime();
    let loaded = r.load(DEFAULT_MODULE).unwrap();
    let policy = flowgate_host::wasm::WasmPolicy::new(&r, &loaded, &config).unwrap();
    assert_eq!(policy.info().name, "flowgate-guest");
    // And the entry was written anew, whole.
    let r = runtime();
    let again = flowgate_host::wasm::WasmPolicy::new(&r, &r.load(DEFAULT_MODULE).unwrap(), &config)
        .unwrap();
    assert_eq!(again.info().name, "flowgate-guest");
    let _ = std::fs::remove_dir_all(&dir);
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// A configuration that runs the module out of memory or time is refused with a
/// sentence naming the limit (the library's error carries which; the command line names its
/// flag); nesting is refused before parsing; over-long configurations are refused before
/// they are read.
#[test]
fn configurations_that_exhaust_a_limit_are_refused_in_a_sentence() {
    let big = synth::config_yaml(Scale::with_peerings(2000, 3));
    let small_memory = Runtime::new(
        Limits {
            memory_bytes: 4 << 20,
            ..Limits::default()
        },
        None,
    )
    .unwrap();
    let module = small_memory.load(DEFAULT_MODULE).unwrap();
    let e = flowgate_host::wasm::WasmPolicy::new(&small_memory, &module, &big)
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            StartError::OverLimit(OverLimit::Memory {
                memory_bytes: 0x40_0000
            })
        ),
        "{e}"
    );
    assert_eq!(e.setting(), Some(Setting::ModuleMemory));
    let e = e.to_string();
    assert!(e.contains("4 MiB"), "{e}");
    assert!(!e.contains("backtrace") && !e.contains('\n'), "{e}");
    let big_file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-big.yaml");
    std::fs::write(&big_file, &big).unwrap();
    let big_file = big_file.to_str().unwrap();
    let out = flowgate(
        &["check", "--config", big_file, "--module-memory-mib", "4"],
        b"",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("4 MiB") && err.contains("(raise the cap with --module-memory-mib)"),
        "{err}"
    );

    let short_time = Runtime::new(
        Limits {
            configure_deadline: Duration::from_millis(1),
            ..Limits::default()
        },
        None,
    )
    .unwrap();
    let module = short_time.load(DEFAULT_MODULE).unwrap();
    let e = flowgate_host::wasm::WasmPolicy::new(&short_time, &module, &big)
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            StartError::OverLimit(OverLimit::ConfigureTime { deadline }) if deadline == Duration::from_millis(1)
        ),
        "{e}"
    );
    assert_eq!(e.setting(), Some(Setting::ConfigureTime));
    let out = flowgate(
        &[
            "check",
            "--config",
            big_file,
            "--configure-timeout",
            "0.001",
        ],
        b"",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("(raise the limit with --configure-timeout)"),
        "{err}"
    );

    // Through a gateway: refused as config-refused, generation unchanged.
    let config = config();
    let gateway = gateway(&config, 1);
    let nested = format!("{}1{}", "{a: ".repeat(50_000), "}".repeat(50_000));
    let e = gateway.swap(SwapRequest::config(&nested)).err().unwrap();
    assert_eq!(e.reason(), "config-refused");
    assert!(e.to_string().contains("nested deeper"), "{e}");
    let mut options = gateway.options().clone();
    options.max_config_bytes = 1000;
    let e = Gateway::new(crate::runtime(), DEFAULT_MODULE, &config, options)
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            SwapError::OverLimit(OverLimit::ConfigBytes { limit: 1000, size }) if size == config.len()
        ),
        "{e}"
    );
    assert_eq!(e.reason(), "config-refused");
    assert_eq!(e.setting(), Some(Setting::ConfigBytes));
    assert_eq!(gateway.current().generation, 1);

    // The CLI reads no more than the limit: /dev/zero is refused, not read to exhaustion.
    let out = flowgate(&["check", "--config", "/dev/zero", "--native"], b"");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-config-bytes"), "{err}");
}

/// A configuration well within the text limits whose verdict matrix would
/// be quadratic in its peerings (a hub peered with 8,200 VPCs, each side a prefix of its
/// own: 8,201 source classes times 8,201 destination classes, past the 2^26 cells a table
/// may have) is refused naming the VPC, natively, by the module and by a gateway, before
/// the matrix is allocated; the running release keeps serving.
#[test]
fn a_configuration_whose_table_would_be_too_large_is_refused() {
    let mut yaml = String::from("kind: VPCInfo\nmetadata: {name: hub}\nspec: {vni: 1}\n");
    for i in 0..8_200u32 {
        let (hi, lo) = (i / 256, i % 256);
        yaml += &format!(
            "---\nkind: VPCInfo\nmetadata: {{name: s{i}}}\nspec: {{vni: {}}}\n---\nkind: Peering\nmetadata: {{name: hub--s{i}}}\nspec: {{peering: {{hub: {{expose: [{{ips: [{{cidr: 10.0.{hi}.{lo}/32}}]}}]}}, s{i}: {{expose: [{{ips: [{{cidr: 20.{hi}.{lo}.0/24}}]}}]}}}}}}\n",
            i + 2
        );
    }
    assert!(yaml.len() < 4 << 20, "{} bytes", yaml.len());
    let refused = |e: &str| e.contains("VPCInfo `hub`") && e.contains("too large");

    let dir = std::env::temp_dir().join(format!("flowgate-test-hub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hub.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = flowgate(
        &["check", "--native", "--config", path.to_str().unwrap()],
        b"",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && refused(&err), "{err}");
    assert!(err.contains("hub.yaml"), "the file is named: {err}");
    std::fs::remove_dir_all(&dir).unwrap();

    let runtime = crate::runtime();
    let module = runtime.load(DEFAULT_MODULE).unwrap();
    let e = flowgate_host::wasm::WasmPolicy::new(&runtime, &module, &yaml)
        .err()
        .unwrap()
        .to_string();
    assert!(refused(&e), "{e}");

    let gateway = gateway(&config(), 1);
    let e = gateway.swap(SwapRequest::config(&yaml)).err().unwrap();
    assert_eq!(e.reason(), "config-refused");
    assert!(refused(&e.to_string()), "{e}");
    assert_eq!(gateway.current().generation, 1);
}

/// Items 6 and 11: `check` judges every readable line, answers a non-UTF-8 line with an error
/// line, and gives the native verdict on mixed-family packets.
#[test]
fn check_reads_every_line_and_judges_mixed_families_natively() {
    let good = r#"{"src_vpc":"B","src_ip":"2.0.0.7","dst_ip":"1.0.1.9","proto":"icmp"}"#;
    let mixed = r#"{"src_vpc":"B","src_ip":"2.0.0.7","dst_ip":"100:109::","proto":"icmp"}"#;
    let mut input = Vec::new();
    for _ in 0..300 {
        input.extend_from_slice(good.as_bytes());
        input.push(b'\n');
    }
    input.extend_from_slice(b"{\"src_vpc\": \"B\xff\xfe\"}\n");
    input.extend_from_slice(mixed.as_bytes());
    input.push(b'\n');
    for native in [false, true] {
        let mut args = vec!["check", "--config", SPEC_3_1];
        if native {
            args.push("--native");
        }
        let out = flowgate(&args, &input);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 302, "native: {native}");
        assert!(
            lines[..300]
                .iter()
                .all(|l| l["verdict"] == "allow" && l["dst_vpc"] == "A")
        );
        assert!(
            lines[300]["error"]
                .as_str()
                .unwrap()
                .contains("line 301: not UTF-8"),
            "{}",
            lines[300]
        );
        assert_eq!(
            (
                lines[301]["verdict"].as_str(),
                lines[301]["reason"].as_str()
            ),
            (Some("drop"), Some("destination-not-exposed")),
            "native: {native}"
        );
    }
}

/// Item 11: `replay` refuses to write over its input or to write two outputs to one file.
#[test]
fn replay_never_writes_over_its_input() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-replay");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.pcap");
    std::fs::copy(crate::repo().join("fixtures/pcap/gateway.pcap"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let config = crate::repo().join("fixtures/pcap/config.yaml");
    let out = dir.join("out.pcap");
    let same_input = dir.join("./in.pcap");
    for extra in [
        vec!["--out", same_input.to_str().unwrap()],
        vec![
            "--out",
            out.to_str().unwrap(),
            "--drops",
            out.to_str().unwrap(),
        ],
        vec!["--drops", input.to_str().unwrap()],
    ] {
        let mut args = vec![
            "replay",
            "--config",
            config.to_str().unwrap(),
            "--pcap",
            input.to_str().unwrap(),
        ];
        args.extend(extra.iter().copied());
        let out = flowgate(&args, b"");
        assert!(!out.status.success(), "{extra:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("is the same file as"));
        assert_eq!(std::fs::read(&input).unwrap(), before, "{extra:?}");
    }
}

/// Numbers that are not finite or not in range are refused by the parser.
#[test]
fn bad_numbers_are_refused_by_the_parser() {
    for args in [
        &["serve", "--fault-window", "inf"][..],
        &["serve", "--fault-window", "1e300"],
        &["serve", "--fault-window", "nan"],
        &["serve", "--duration", "nan"],
        &["serve", "--duration=-1"],
        &["serve", "--workers", "0"],
        &["bench", "--peerings", "0"],
        &["gen", "--peerings", "0", "--out", "/nonexistent"],
    ] {
        let out = flowgate(args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error: invalid value"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// On a pipe, `check` answers a line while its input stays open (it does not wait
/// for a whole batch or for the end of input).
#[test]
fn check_answers_promptly_on_a_pipe() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["check", "--native", "--config", SPEC_3_1])
        .current_dir(crate::repo())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..2 {
            let mut line = String::new();
            output.read_line(&mut line).unwrap();
            tx.send(line).unwrap();
        }
    });
    for packet in [
        r#"{"src_vpc":"B","src_ip":"2.0.0.7","dst_ip":"1.0.1.9","proto":"icmp"}"#,
        r#"{"src_vpc":"B","src_ip":"2.0.1.7","dst_ip":"1.0.1.9","proto":"icmp"}"#,
    ] {
        writeln!(input, "{packet}").unwrap();
        input.flush().unwrap();
        // Bounded: the answer comes while stdin stays open.
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("an answer");
        assert!(line.contains("\"verdict\""), "{line}");
    }
    drop(input);
    assert!(child.wait().unwrap().success());
}
