//! The hostile-input suite, registries: logins that must stay with their registry, answers that fail their checks, what fail-static may mask, and signatures that must be refused within their bounds.
//!
//! A hostile registry is a small HTTP/1.1 server written here (one thread on a loopback port,
//! one connection at a time, bounded in connections, bytes and time, stopped when dropped) that
//! answers whatever a test tells it and records every request's method, path and headers.
//! Another host is another origin: two listeners on 127.0.0.1 with different ports are two
//! hosts, as they are to a browser and to Docker's `config.json` (`127.0.0.1:5000`).
//! Where the real registry suffices (a module to cache, a blob to alter), it is the real one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use flowgate_host::oci::{
    Cache, Digest, LayerRefusal, OciError, Reference, Refusal, Registry, RegistryOptions,
    SignatureCheck, SignatureLimits, Trust, signature_tag,
};
use flowgate_host::{DEFAULT_MODULE, Setting};

use crate::cli::{flowgate, stdout};
use crate::oci::{client, push, start, write_module};
use crate::signing::{payload, sign, signature_layer, signature_manifest, test_key};

const SPEC_3_1: &str = "fixtures/cases/spec-3.1-overlap/config.yaml";
const PACKETS_3_1: &str = "fixtures/cases/spec-3.1-overlap/packets.jsonl";

/// One request as a hostile registry saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a hostile registry answers to one request.
enum Reply {
    /// These bytes, a whole HTTP answer (or less of one); then the connection closes.
    Raw(Vec<u8>),
    /// A 200 whose chunked body never ends: until the client leaves, or 64 MiB.
    Endless,
    /// Nothing, for `hold`; then the connection closes.
    Silent(Duration),
}

/// An answer with `Content-Length` and `Connection: close`.
fn answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut head = format!("HTTP/1.1 {status} Hostile\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    Reply::Raw(bytes)
}

/// A 401 asking for `challenge` (`WWW-Authenticate`).
fn challenge(challenge: &str) -> Reply {
    answer(401, &[("WWW-Authenticate", challenge)], b"{}")
}

/// A hostile registry, stopped when dropped.
struct Hostile {
    /// `HOST:PORT` as a reference names it.
    host: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hostile {
    /// On a free port of 127.0.0.1.
    fn start(respond: impl Fn(&Seen) -> Reply + Send + 'static) -> Hostile {
        Hostile::on(TcpListener::bind("127.0.0.1:0").unwrap(), respond)
    }

    /// On `listener`, for at most two minutes and 500 connections.
    fn on(listener: TcpListener, respond: impl Fn(&Seen) -> Reply + Send + 'static) -> Hostile {
        let addr = listener.local_addr().unwrap();
        let host = match addr {
            std::net::SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
            std::net::SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut connections = 0;
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && connections < 500
                {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            connections += 1;
                            serve_one(stream, &respond, &seen);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        Hostile {
            host,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn reference(&self, repo_and_tag: &str) -> String {
        format!("oci://{}/{repo_and_tag}", self.host)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests that carried `Authorization`, as `METHOD PATH: VALUE`.
    fn authorized(&self) -> Vec<String> {
        self.seen()
            .iter()
            .filter_map(|s| {
                s.header("authorization")
                    .map(|a| format!("{} {}: {a}", s.method, s.path))
            })
            .collect()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request (head at most 64 KiB, body at most 16 MiB), records it, answers it.
fn serve_one(mut stream: TcpStream, respond: &impl Fn(&Seen) -> Reply, seen: &Mutex<Vec<Seen>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 << 10 {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut start = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (
        start.next().unwrap_or_default().to_owned(),
        start.next().unwrap_or_default().to_owned(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let request = Seen {
        method,
        path,
        headers,
    };
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(16 << 20);
    let mut body = buf.len() - head_end;
    while body < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body += n,
        }
    }
    seen.lock().unwrap().push(request.clone());
    match respond(&request) {
        Reply::Raw(bytes) => {
            let _ = stream.write_all(&bytes);
        }
        Reply::Endless => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            let _ = stream.write_all(head.as_bytes());
            let piece = [b' '; 65536];
            let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
            frame.extend_from_slice(&piece);
            frame.extend_from_slice(b"\r\n");
            for _ in 0..1024 {
                if stream.write_all(&frame).is_err() {
                    break;
                }
            }
        }
        Reply::Silent(hold) => std::thread::sleep(hold),
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// A module in the CNCF layout: the manifest's bytes, and its config's.
struct Artifact {
    manifest: Vec<u8>,
    config: Vec<u8>,
}

impl Artifact {
    fn of(module: &[u8]) -> Artifact {
        let config = br#"{"architecture":"wasm","os":"wasip2"}"#.to_vec();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": Digest::of(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/wasm", "digest": Digest::of(module).to_string(), "size": module.len()}],
        });
        Artifact {
            manifest: serde_json::to_vec(&manifest).unwrap(),
            config,
        }
    }

    /// The honest answer to a pull of `repo` (any tag), or `None` for another path.
    fn serve(&self, repo: &str, module: &[u8], request: &Seen) -> Option<Reply> {
        let path = request.path.strip_prefix(&format!("/v2/{repo}/"))?;
        if path.starts_with("manifests/") {
            return Some(answer(
                200,
                &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
                &self.manifest,
            ));
        }
        let blob = path.strip_prefix("blobs/")?;
        if blob == Digest::of(module).to_string() {
            Some(answer(200, &[], module))
        } else if blob == Digest::of(&self.config).to_string() {
            Some(answer(200, &[], &self.config))
        } else {
            None
        }
    }
}

fn not_found() -> Reply {
    answer(404, &[], br#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#)
}

/// A folder of its own under the test's temporary folder, empty.
fn scratch(what: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hostile-registry-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Basic `Authorization` for `user:password`, written by the base64 crate.
fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[test]
fn a_cached_module_starts_serve_when_the_registry_answers_5xx() {
    let Some(registry) = start() else { return };
    let tagged = registry.reference("fleet/static:v1");
    let reference = Reference::parse(&tagged).unwrap();
    let digest = push(&reference, DEFAULT_MODULE);
    let pinned_only = registry.reference(&format!("fleet/static@{digest}"));
    let dir = scratch("5xx");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(args)
            .current_dir(crate::repo())
            .env("FLOWGATE_CACHE_DIR", dir.join("cache"))
            .output()
            .unwrap()
    };
    // Pulled once while the registry is up: by tag and by digest, into the cache.
    for r in [&tagged, &pinned_only] {
        let out = run(&["pull", r, "-o", dir.join("pulled.wasm").to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The registry goes down and its port answers 503 to everything.
    let port = registry.port;
    drop(registry);
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => break l,
            Err(e) => {
                assert!(Instant::now() < deadline, "port {port} stays taken: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let failing = Hostile::on(listener, |_| {
        answer(
            503,
            &[("Content-Type", "text/plain")],
            b"upstream storage unavailable",
        )
    });
    for r in [&pinned_only, &tagged] {
        let socket = crate::socket_path("fail-static");
        let out = run(&[
            "serve",
            "--module",
            r,
            "--config",
            SPEC_3_1,
            "--packets",
            PACKETS_3_1,
            "--workers",
            "1",
            "--duration",
            "0.3",
            "--admin",
            &format!("unix:{}", socket.display()),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "serve --module {r}: {stderr}");
        assert!(
            stderr.contains("503") && stderr.contains("cache"),
            "the log says the cache stood in for a failing registry: {stderr}"
        );
        assert!(stderr.contains(&digest.to_string()), "{stderr}");
    }
    assert!(
        failing.seen().iter().all(|s| s.path.starts_with("/v2/")),
        "{:?}",
        failing.seen()
    );
    assert!(
        !failing.seen().is_empty(),
        "serve asked the failing registry"
    );
}

#[test]
fn answers_that_fail_a_check_are_errors_never_served_from_the_cache() {
    let module = DEFAULT_MODULE;
    let artifact = Artifact::of(module);
    let layer = Digest::of(module).to_string();
    let hostile = Hostile::start(move |request| {
        let repo = request
            .path
            .strip_prefix("/v2/")
            .and_then(|p| p.split('/').next())
            .unwrap_or_default();
        let manifest_type = [("Content-Type", "application/vnd.oci.image.manifest.v1+json")];
        let is_manifest = request.path.contains("/manifests/");
        match repo {
            // Down, not wrong: the cache may stand in.
            "busy" => answer(503, &[], b"try later"),
            "slow" => Reply::Silent(Duration::from_secs(3)),
            // Wrong: errors.
            "oversized" if is_manifest => {
                answer(200, &manifest_type, &vec![b' '; (1 << 20) + 4096])
            }
            "endless" if is_manifest => Reply::Endless,
            // To itself, with what a storage service's presigned URL carries: a signature
            // that errors and logs must not show.
            "loop" => {
                let path = request.path.split('?').next().unwrap_or_default();
                let location = format!("{path}?X-Amz-Signature=s3cr3t");
                answer(307, &[("Location", location.as_str())], b"")
            }
            // To plain HTTP on a host neither loopback nor named insecure (a reserved name
            // that never resolves): refused before anything is sent there.
            "downgrade" => answer(
                307,
                &[("Location", "http://registry.invalid/v2/downgrade/manifests/t")],
                b"",
            ),
            "short" if is_manifest => {
                let mut raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n".to_vec();
                raw.extend_from_slice(&artifact.manifest[..40]);
                Reply::Raw(raw)
            }
            "long" if request.path.ends_with(&layer) => {
                let mut longer = module.to_vec();
                longer.extend_from_slice(&[0u8; 100]);
                answer(200, &[], &longer)
            }
            "long" => artifact.serve("long", module, request).unwrap_or_else(not_found),
            "index" if is_manifest => answer(
                200,
                &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
            ),
            _ => not_found(),
        }
    });
    let dir = scratch("masked");
    let cache = Cache::new(dir.join("oci"));
    let cached_manifest = Digest::of(b"the manifest pulled last time");
    let registry = Registry::new(RegistryOptions {
        timeout: Duration::from_secs(1),
        ..RegistryOptions::default()
    });
    let closed = {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("oci://127.0.0.1:{port}/closed:t")
    };
    let mut wrong = Vec::new();
    // Each case, and for an error what it must say.
    let longer = format!("more than {} bytes", module.len());
    for (text, from_cache, says) in [
        (closed, true, ""),
        (hostile.reference("busy:t"), true, ""),
        (
            hostile.reference("oversized:t"),
            false,
            "more than 1048576 bytes",
        ),
        (
            hostile.reference("endless:t"),
            false,
            "more than 1048576 bytes",
        ),
        (hostile.reference("loop:t"), false, "redirect loop"),
        (hostile.reference("downgrade:t"), false, "plain HTTP"),
        (hostile.reference("short:t"), false, "does not read whole"),
        (hostile.reference("long:t"), false, longer.as_str()),
        (hostile.reference("index:t"), false, "image.index"),
        // Last: the hostile registry answers one connection at a time, and holds this one.
        (hostile.reference("slow:t"), true, ""),
    ] {
        let r = Reference::parse(&text).unwrap();
        cache.store(&r, &cached_manifest, module).unwrap();
        let started = Instant::now();
        let got = registry.pull_or_cached(&r, Some(&cache));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{text}: bounded"
        );
        match (&got, from_cache) {
            (Ok((pulled, true)), true) if pulled.manifest == cached_manifest => {}
            (Err(e), false)
                if !e.unreachable()
                    && e.to_string().contains(says)
                    && !e.to_string().contains("s3cr3t") => {}
            _ => wrong.push(format!(
                "{text}: {}",
                match got {
                    Ok((_, cached)) => format!("Ok (from the cache: {cached})"),
                    Err(e) => format!("Err (unreachable: {}) {e}", e.unreachable()),
                }
            )),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_tampered_blob_says_what_was_served_and_what_was_expected() {
    let Some(registry) = start() else { return };
    let reference = Reference::parse(&registry.reference("policies/tampered:v1")).unwrap();
    push(&reference, DEFAULT_MODULE);
    let expected = Digest::of(DEFAULT_MODULE);
    let file = registry.blob_file(&expected);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    // What was served hashes, by an independent tool, to:
    let out = Command::new("sha256sum").arg(&file).output().unwrap();
    let served = String::from_utf8(out.stdout).unwrap();
    let served = served.split_whitespace().next().unwrap();
    let e = client().pull(&reference).unwrap_err().to_string();
    assert!(
        e.contains(&format!("sha256:{served}")) && e.contains(&expected.to_string()),
        "the error names both digests: {e}"
    );
    let size = format!("({} bytes)", DEFAULT_MODULE.len());
    assert!(
        e.matches(&size).count() < 2,
        "sizes that agree are not a mismatch: {e}"
    );
}

#[test]
fn a_login_on_the_command_line_names_its_registry_and_goes_nowhere_else() {
    let hostile = Hostile::start(|_| challenge(r#"Basic realm="hostile""#));
    let dir = scratch("cli-login");
    let creds = dir.join("credentials");
    std::fs::write(&creds, "fleet:s3cret\n").unwrap();
    let target = hostile.reference("fleet/policy:v1");
    // The old host-less form once meant "every registry": a hostile one got the login.
    let out = flowgate(
        &[
            "--registry-credentials",
            creds.to_str().unwrap(),
            "info",
            "--module",
            &target,
        ],
        "",
    );
    assert!(
        hostile.authorized().is_empty(),
        "a host-less login reached {}: {:?}",
        hostile.host,
        hostile.authorized()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("HOST[:PORT]=FILE"),
        "{stderr}"
    );
    // A login for another registry is not sent to this one.
    let other = format!("127.0.0.1:1={}", creds.display());
    let out = flowgate(
        &[
            "--registry-credentials",
            &other,
            "info",
            "--module",
            &target,
        ],
        "",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "(Docker's config.json, or --registry-credentials {}=FILE)",
            hostile.host
        )),
        "{stderr}"
    );
    assert!(!hostile.seen().is_empty(), "it was asked");
    assert!(
        hostile.authorized().is_empty(),
        "{:?}",
        hostile.authorized()
    );
    // The login named for this registry is (what the recorder sees when one is sent).
    let own = format!("{}={}", hostile.host, creds.display());
    let out = flowgate(
        &["--registry-credentials", &own, "info", "--module", &target],
        "",
    );
    assert!(!out.status.success());
    assert!(
        hostile
            .authorized()
            .iter()
            .all(|a| a.ends_with(&basic("fleet", "s3cret")))
            && !hostile.authorized().is_empty(),
        "{:?}",
        hostile.authorized()
    );
}

#[test]
fn a_plain_http_token_realm_on_another_host_never_gets_the_login() {
    let tokens = Hostile::start(|_| {
        answer(
            200,
            &[("Content-Type", "application/json")],
            br#"{"token":"granted"}"#,
        )
    });
    let realm = format!(
        r#"Bearer realm="http://{}/token",service="hostile",scope="repository:fleet/policy:pull""#,
        tokens.host
    );
    let hostile = Hostile::start(move |_| challenge(&realm));
    let reference = Reference::parse(&hostile.reference("fleet/policy:v1")).unwrap();
    let login = [(
        hostile.host.clone(),
        ("fleet".to_owned(), "s3cret".to_owned()),
    )];
    let e = Registry::new(RegistryOptions {
        credentials: login.clone().into(),
        ..RegistryOptions::default()
    })
    .pull(&reference)
    .unwrap_err();
    assert!(
        tokens.authorized().is_empty(),
        "the login went to a plain HTTP realm on another host: {:?}",
        tokens.authorized()
    );
    assert!(
        matches!(&e, OciError::PlainTokenService { host, port, .. } if format!("{host}:{port}") == tokens.host),
        "the refusal names the realm's host: {e}"
    );
    assert_eq!(e.setting(), Some(Setting::InsecureRegistry));
    // The command line names the flag that allows it.
    let creds = scratch("token-realm").join("credentials");
    std::fs::write(&creds, "fleet:s3cret\n").unwrap();
    let login_arg = format!("{}={}", hostile.host, creds.display());
    let out = flowgate(
        &[
            "--registry-credentials",
            &login_arg,
            "info",
            "--module",
            &hostile.reference("fleet/policy:v1"),
        ],
        "",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!(
                "--insecure-registry {} if it is meant",
                tokens.host
            )),
        "the refusal names the realm and the way to allow it: {stderr}"
    );
    assert!(tokens.authorized().is_empty(), "{:?}", tokens.authorized());
    // Named insecure, that exact host gets it.
    let _ = Registry::new(RegistryOptions {
        credentials: login.into(),
        insecure: vec![tokens.host.clone()],
        ..RegistryOptions::default()
    })
    .pull(&reference);
    assert_eq!(
        tokens.authorized(),
        [format!(
            "GET /token?service=hostile&scope=repository%3Afleet%2Fpolicy%3Apull: {}",
            basic("fleet", "s3cret")
        )]
    );
}

#[test]
fn push_sends_no_login_to_an_upload_location_on_another_host() {
    let uploads = Hostile::start(|request| {
        if request.method == "PUT" {
            answer(201, &[], b"")
        } else {
            not_found()
        }
    });
    let location = format!("http://{}/uploads/1?state=x", uploads.host);
    let login = basic("fleet", "s3cret");
    let hostile = Hostile::start(move |request| {
        if request.header("authorization") != Some(login.as_str()) {
            return challenge(r#"Basic realm="hostile""#);
        }
        match request.method.as_str() {
            "POST" => answer(202, &[("Location", &location)], b""),
            "PUT" if request.path.contains("/manifests/") => answer(201, &[], b""),
            _ => not_found(),
        }
    });
    // A login in Docker's config.json, scoped to the first host.
    let docker = scratch("push-docker");
    std::fs::write(
        docker.join("config.json"),
        serde_json::json!({"auths": {&hostile.host: {"auth": base64::engine::general_purpose::STANDARD.encode("fleet:s3cret")}}})
            .to_string(),
    )
    .unwrap();
    let module = write_module("hostile-push.wasm", DEFAULT_MODULE);
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["push", module.to_str().unwrap()])
        .arg(hostile.reference("fleet/policy:v1"))
        .env("DOCKER_CONFIG", &docker)
        .env("FLOWGATE_CACHE_DIR", docker.join("cache"))
        .output()
        .unwrap();
    assert!(
        uploads.authorized().is_empty(),
        "the login followed the upload to {}: {:?}",
        uploads.host,
        uploads.authorized()
    );
    assert!(
        uploads.seen().iter().any(|s| s.method == "PUT"),
        "{:?} / {}",
        uploads.seen(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        hostile.authorized().iter().any(|a| a.starts_with("PUT ")),
        "the manifest went to the first host with its login: {:?}",
        hostile.authorized()
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_redirect_to_another_host_carries_no_login() {
    let module = DEFAULT_MODULE;
    let artifact = Arc::new(Artifact::of(module));
    let elsewhere = {
        let artifact = artifact.clone();
        Hostile::start(move |request| {
            artifact
                .serve("fleet/policy", module, request)
                .unwrap_or_else(not_found)
        })
    };
    let target = format!("http://{}", elsewhere.host);
    let login = basic("fleet", "s3cret");
    let hostile = Hostile::start(move |request| {
        if request.header("authorization") != Some(login.as_str()) {
            return challenge(r#"Basic realm="hostile""#);
        }
        answer(
            307,
            &[("Location", &format!("{target}{}", request.path))],
            b"",
        )
    });
    let reference = Reference::parse(&hostile.reference("fleet/policy:v1")).unwrap();
    let pulled = Registry::new(RegistryOptions {
        credentials: [(
            hostile.host.clone(),
            ("fleet".to_owned(), "s3cret".to_owned()),
        )]
        .into(),
        ..RegistryOptions::default()
    })
    .pull(&reference)
    .unwrap();
    assert_eq!(pulled.module, module);
    assert!(!hostile.authorized().is_empty());
    assert!(
        elsewhere.authorized().is_empty(),
        "{:?}",
        elsewhere.authorized()
    );
}

#[test]
fn an_admin_swap_to_another_registry_never_carries_the_gateways_login() {
    use flowgate_host::admin::{AdminOptions, AdminServer, Client, Endpoint};
    let own = Hostile::start(|_| challenge(r#"Basic realm="own""#));
    let attacker = Hostile::start(|_| challenge(r#"Basic realm="attacker""#));
    let (gateway, stop, worker) = crate::oci::gateway_with_traffic(None);
    let endpoint = Endpoint::Unix(crate::socket_path("swap-login"));
    // The gateway's logins: its own registry's, and an entry keyed `*` (what a host-less
    // login on the command line once became) that matches no host.
    let server = AdminServer::start(
        gateway.clone(),
        AdminOptions {
            registry: RegistryOptions {
                credentials: [
                    (own.host.clone(), ("fleet".to_owned(), "s3cret".to_owned())),
                    ("*".to_owned(), ("any".to_owned(), "where".to_owned())),
                ]
                .into(),
                ..RegistryOptions::default()
            },
            ..AdminOptions::new(endpoint.clone(), None)
        },
    )
    .unwrap();
    let admin = Client::new(endpoint, None);
    let swap = admin
        .swap_reference(&attacker.reference("fleet/policy:v1"), None, None, None)
        .unwrap();
    assert_eq!(swap.status, 422, "{}", swap.body);
    assert!(!attacker.seen().is_empty());
    assert!(
        attacker.authorized().is_empty(),
        "the gateway's login went to {}: {:?}",
        attacker.host,
        attacker.authorized()
    );
    // Its own registry gets its own login (the recorder sees one when it is sent).
    let swap = admin
        .swap_reference(&own.reference("fleet/policy:v1"), None, None, None)
        .unwrap();
    assert_eq!(swap.status, 422, "{}", swap.body);
    assert!(
        own.authorized()
            .iter()
            .any(|a| a.ends_with(&basic("fleet", "s3cret"))),
        "{:?}",
        own.authorized()
    );
    assert_eq!(gateway.current().generation, 1);
    drop(server);
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
}

#[test]
fn a_loopback_registry_by_any_of_its_names_is_spoken_to_in_plain_http() {
    let module = DEFAULT_MODULE;
    if let Some(registry) = start() {
        let reference = Reference::parse(&registry.reference("fleet/policy:v1")).unwrap();
        let digest = push(&reference, module);
        let mut wrong = Vec::new();
        for host in ["localhost", "LocalHost", "127.1", "127.0.0.1"] {
            let text = format!("oci://{host}:{}/fleet/policy:v1", registry.port);
            match Reference::parse(&text).map(|r| client().pull(&r).map(|p| p.manifest)) {
                Ok(Ok(got)) if got == digest => {}
                other => wrong.push(format!("{text}: {other:?}")),
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
    // [::1]: the hostile registry, honest this once, on IPv6 loopback.
    let artifact = Artifact::of(module);
    match TcpListener::bind("[::1]:0") {
        Ok(listener) => {
            let v6 = Hostile::on(listener, move |request| {
                artifact
                    .serve("fleet/policy", module, request)
                    .unwrap_or_else(not_found)
            });
            let r = Reference::parse(&v6.reference("fleet/policy:v1")).unwrap();
            let pulled = client().pull(&r);
            assert_eq!(
                pulled.map(|p| p.module).map_err(|e| e.to_string()),
                Ok(module.to_vec()),
                "{r}"
            );
        }
        Err(e) => eprintln!("skipped: [::1]: this machine has no IPv6 loopback ({e})"),
    }
    // Brackets hold an IPv6 address: `[127.0.0.1]` is refused, saying how to write it.
    let e = Reference::parse("oci://[127.0.0.1]:5000/fleet/policy:v1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("IPv6") && e.contains("127.0.0.1:5000"), "{e}");
}

/// What a signing registry answers for one manifest name.
#[derive(Clone)]
enum Sig {
    /// These bytes, 200.
    Bytes(Vec<u8>),
    /// A 200 whose body never ends.
    Endless,
    /// This status, with an empty JSON body.
    Status(u16),
}

/// A hostile registry serving repository `p/m`: the module manifest `module` under the tag
/// `v1`, `sigs` by manifest name (`sha256-<hex>.sig`), and `blobs` by digest; 404 for the rest.
fn signing_registry(module: Vec<u8>, sigs: Vec<(String, Sig)>, blobs: Vec<Vec<u8>>) -> Hostile {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    signing_registry_on(listener, module, sigs, blobs)
}

/// [`signing_registry`] on `listener` (bound first, so that payloads can name its address).
fn signing_registry_on(
    listener: TcpListener,
    module: Vec<u8>,
    sigs: Vec<(String, Sig)>,
    blobs: Vec<Vec<u8>>,
) -> Hostile {
    let blobs: Vec<(String, Vec<u8>)> = blobs
        .into_iter()
        .map(|b| (Digest::of(&b).to_string(), b))
        .collect();
    Hostile::on(listener, move |request| {
        let Some(path) = request.path.strip_prefix("/v2/p/m/") else {
            return not_found();
        };
        let oci = [("Content-Type", "application/vnd.oci.image.manifest.v1+json")];
        if path == "manifests/v1" {
            return answer(200, &oci, &module);
        }
        if let Some(name) = path.strip_prefix("manifests/") {
            return match sigs.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone()) {
                Some(Sig::Bytes(bytes)) => answer(200, &oci, &bytes),
                Some(Sig::Endless) => Reply::Endless,
                Some(Sig::Status(status)) => answer(status, &[], b"{}"),
                None => not_found(),
            };
        }
        let blob = path.strip_prefix("blobs/").unwrap_or_default();
        match blobs.iter().find(|(d, _)| d == blob) {
            Some((_, bytes)) => answer(200, &[], bytes),
            None => not_found(),
        }
    })
}

/// A module manifest of its own for `what` (its digest differs from every other's).
fn module_manifest(what: &str) -> Vec<u8> {
    let mut manifest = Artifact::of(DEFAULT_MODULE).manifest;
    manifest.truncate(manifest.len() - 1);
    manifest.extend_from_slice(format!(r#","annotations":{{"case":"{what}"}}}}"#).as_bytes());
    manifest
}

#[test]
fn signature_manifests_over_their_limit_are_refused_and_read_no_further() {
    let module = module_manifest("over-limit");
    let digest = Digest::of(&module);
    let endless = Digest::of(b"endless");
    let oversized = Digest::of(b"oversized");
    let big =
        signature_manifest(&[serde_json::json!({"mediaType": "x", "pad": "x".repeat(2 << 20)})]);
    let registry = signing_registry(
        module,
        vec![
            (signature_tag(&endless), Sig::Endless),
            (signature_tag(&oversized), Sig::Bytes(big)),
        ],
        Vec::new(),
    );
    let r = Reference::parse(&registry.reference("p/m:v1")).unwrap();
    let trust = Trust::new(vec![test_key().1]);
    for d in [endless, oversized] {
        let e = trust.verify(&client(), &r, d).unwrap_err();
        assert_eq!(e.check(), SignatureCheck::OverLimit, "{e}");
        assert!(e.to_string().contains("more than 1048576 bytes"), "{e}");
    }
    // A smaller limit is the one applied.
    let small = SignatureLimits {
        manifest_bytes: 100,
        ..SignatureLimits::default()
    };
    let sig = signature_manifest(&[]);
    let registry = signing_registry(
        b"{}".to_vec(),
        vec![(signature_tag(&digest), Sig::Bytes(sig))],
        Vec::new(),
    );
    let r = Reference::parse(&registry.reference("p/m:v1")).unwrap();
    let e = trust
        .limits(small)
        .verify(&client(), &r, digest)
        .unwrap_err();
    assert!(e.to_string().contains("more than 100 bytes"), "{e}");
}

#[test]
fn thousands_of_signature_layers_are_refused_before_any_payload_is_fetched() {
    let (key, trusted) = test_key();
    let module = module_manifest("layers");
    let digest = Digest::of(&module);
    let good = payload(&digest.to_string(), "127.0.0.1:1/p/m:v1");
    let layer = signature_layer(&good, Some(&sign(&key, &good)));
    let layers = vec![layer; 2500];
    let sig = signature_manifest(&layers);
    assert!(
        sig.len() < 1 << 20,
        "under the manifest limit: {}",
        sig.len()
    );
    let registry = signing_registry(
        module,
        vec![(signature_tag(&digest), Sig::Bytes(sig))],
        vec![good],
    );
    let r = Reference::parse(&registry.reference("p/m:v1")).unwrap();
    let e = Trust::new(vec![trusted])
        .verify(&client(), &r, digest)
        .unwrap_err();
    assert!(
        matches!(
            e.reason,
            Refusal::TooManyLayers {
                count: 2500,
                limit: 32,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.check(), SignatureCheck::OverLimit);
    // The CLI says the same, and nothing but the two manifests was asked for.
    let out = verify_with(&key, "layers", &r);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("2500 signature layers, over the limit of 32")
            && stderr.contains(&digest.to_string()),
        "{stderr}"
    );
    let blobs: Vec<String> = registry
        .seen()
        .iter()
        .filter(|s| s.path.contains("/blobs/"))
        .map(|s| s.path.clone())
        .collect();
    assert!(blobs.is_empty(), "{blobs:?}");
}

/// `flowgate verify REFERENCE` trusting `key`'s public half, written in a scratch folder of
/// `what`'s.
fn verify_with(
    key: &p256::ecdsa::SigningKey,
    what: &str,
    reference: &impl std::fmt::Display,
) -> std::process::Output {
    let key_file = scratch(what).join("test.pub");
    std::fs::write(&key_file, public_pem(key)).unwrap();
    let reference = reference.to_string();
    flowgate(
        &["verify", &reference, "--key", key_file.to_str().unwrap()],
        "",
    )
}

/// The PEM of `key`'s public half.
fn public_pem(key: &p256::ecdsa::SigningKey) -> String {
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap()
}

#[test]
fn an_oversized_payload_is_refused_before_it_is_read() {
    let (key, trusted) = test_key();
    let module = module_manifest("payload");
    let digest = Digest::of(&module);
    let good = payload(&digest.to_string(), "127.0.0.1:1/p/m:v1");
    let signature = sign(&key, &good);
    // A descriptor of a GiB, and one that understates what is served.
    let mut huge = signature_layer(&good, Some(&signature));
    huge["size"] = serde_json::json!(1u64 << 30);
    let longer = [good.clone(), vec![b' '; 4096]].concat();
    let mut understated = signature_layer(&longer, Some(&sign(&key, &longer)));
    understated["size"] = serde_json::json!(good.len());
    let sig = signature_manifest(&[huge, understated]);
    let registry = signing_registry(
        module,
        vec![(signature_tag(&digest), Sig::Bytes(sig))],
        vec![longer.clone()],
    );
    let r = Reference::parse(&registry.reference("p/m:v1")).unwrap();
    let e = Trust::new(vec![trusted])
        .verify(&client(), &r, digest)
        .unwrap_err();
    assert_eq!(e.check(), SignatureCheck::OverLimit, "{e}");
    let Refusal::Layers { layers, .. } = &e.reason else {
        panic!("{e}")
    };
    assert!(
        matches!(&layers[0], (0, LayerRefusal::Payload(OciError::TooLarge { size, limit: 65536, .. })) if *size == 1 << 30),
        "{e}"
    );
    assert!(matches!(&layers[1], (1, LayerRefusal::Payload(_))), "{e}");
    // The GiB was never asked for; the understated one was read no further than it said.
    let asked: Vec<String> = registry
        .seen()
        .iter()
        .filter(|s| s.path.contains("/blobs/"))
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(asked, [format!("/v2/p/m/blobs/{}", Digest::of(&longer))]);
}

#[test]
fn a_trusted_signature_for_a_sibling_digest_or_another_repository_is_refused() {
    let (key, trusted) = test_key();
    let (good, sibling, elsewhere) = (
        module_manifest("good"),
        module_manifest("sibling"),
        module_manifest("elsewhere"),
    );
    let (good_digest, sibling_digest, elsewhere_digest) = (
        Digest::of(&good),
        Digest::of(&sibling),
        Digest::of(&elsewhere),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let here = listener.local_addr().unwrap().to_string();
    // Each signed by the trusted key: the right one; the good digest's payload under the
    // sibling's tag; the right digest for another repository.
    let right = payload(&good_digest.to_string(), &format!("{here}/p/m:v1"));
    let other_repo = payload(&elsewhere_digest.to_string(), &format!("{here}/p/other:v1"));
    let sig = |p: &[u8]| {
        Sig::Bytes(signature_manifest(&[signature_layer(
            p,
            Some(&sign(&key, p)),
        )]))
    };
    let sigs = vec![
        (signature_tag(&good_digest), sig(&right)),
        (signature_tag(&sibling_digest), sig(&right)),
        (signature_tag(&elsewhere_digest), sig(&other_repo)),
    ];
    let registry = signing_registry_on(listener, good, sigs, vec![right.clone(), other_repo]);
    let r = Reference::parse(&registry.reference("p/m:v1")).unwrap();
    let trust = Trust::new(vec![trusted]);
    // The control: the harness signs what the verifier accepts.
    let signer = trust.verify(&client(), &r, good_digest).unwrap();
    assert_eq!(signer.key(), "test.pub");
    let e = trust.verify(&client(), &r, sibling_digest).unwrap_err();
    assert_eq!(e.check(), SignatureCheck::OtherDigest, "{e}");
    assert!(e.to_string().contains(&good_digest.to_string()), "{e}");
    let e = trust.verify(&client(), &r, elsewhere_digest).unwrap_err();
    assert_eq!(e.check(), SignatureCheck::OtherRepository, "{e}");
    assert!(e.to_string().contains(&format!("{here}/p/other")), "{e}");

    // `flowgate verify` accepts the good one without pulling the module: of the blobs, only
    // the signature's payload is asked for.
    let before = registry.seen().len();
    let out = verify_with(&key, "sibling", &r);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout(&out).starts_with(&format!("{}: signed by", r.pinned(good_digest))),
        "{}",
        stdout(&out)
    );
    let asked: Vec<String> = registry.seen()[before..]
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(
        asked,
        [
            "GET /v2/p/m/manifests/v1".to_owned(),
            format!("GET /v2/p/m/manifests/{}", signature_tag(&good_digest)),
            format!("GET /v2/p/m/blobs/{}", Digest::of(&right)),
        ]
    );
}

#[test]
fn malformed_signatures_and_payloads_are_refused_layer_by_layer() {
    let (key, trusted) = test_key();
    let module = module_manifest("malformed");
    let digest = Digest::of(&module);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let here = listener.local_addr().unwrap().to_string();
    let good = payload(&digest.to_string(), &format!("{here}/p/m:v1"));
    let text = String::from_utf8(good.clone()).unwrap();
    let signature = sign(&key, &good);
    let der = base64::engine::general_purpose::STANDARD
        .decode(&signature)
        .unwrap();
    let raw = p256::ecdsa::Signature::from_der(&der).unwrap().to_bytes();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    // Payloads a trusted key signed that are no cosign container-image signature.
    let signed_badly: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        text.replace(r#""type""#, r#""extra":1,"type""#)
            .into_bytes(),
        text.replace(
            r#","optional":{"creator":"flowgate tests","timestamp":1796507401}"#,
            "",
        )
        .into_bytes(),
        text.replace("cosign container image signature", "something else")
            .into_bytes(),
        text.replace("1796507401", "\"1796507401\"").into_bytes(),
        text.replace(&format!("{here}/p/m:v1"), "Not A Reference")
            .into_bytes(),
    ];
    let mut layers = vec![
        signature_layer(&good, None),
        signature_layer(&good, Some("!!!")),
        signature_layer(&good, Some(&b64(&raw))),
        signature_layer(&good, Some(&b64(&der[..der.len() - 2]))),
        serde_json::json!({"mediaType": "application/octet-stream", "digest": Digest::of(b"x").to_string(), "size": 1}),
    ];
    for p in &signed_badly {
        layers.push(signature_layer(p, Some(&sign(&key, p))));
    }
    // A payload served with other bytes than its digest names.
    let mut swapped = signature_layer(&good, Some(&signature));
    swapped["digest"] = serde_json::json!(Digest::of(b"other bytes").to_string());
    layers.push(swapped);
    let mut blobs = signed_badly.clone();
    blobs.push(good.clone());
    let sig = signature_manifest(&layers);
    let tag = signature_tag(&digest);
    let blobs: Vec<(String, Vec<u8>)> = blobs
        .into_iter()
        .map(|b| (Digest::of(&b).to_string(), b))
        .collect();
    let good_bytes = good.clone();
    let registry = Hostile::on(listener, move |request| {
        let path = request.path.strip_prefix("/v2/p/m/").unwrap_or_default();
        if path == format!("manifests/{tag}") {
            let oci = [("Content-Type", "application/vnd.oci.image.manifest.v1+json")];
            return answer(200, &oci, &sig);
        }
        let blob = path.strip_prefix("blobs/").unwrap_or_default();
        if blob == Digest::of(b"other bytes").to_string() {
            return answer(200, &[], &good_bytes);
        }
        match blobs.iter().find(|(d, _)| d == blob) {
            Some((_, bytes)) => answer(200, &[], bytes),
            None => not_found(),
        }
    });
    let r = Reference::parse(&registry.reference("p/m:v1")).unwrap();
    let e = Trust::new(vec![trusted])
        .verify(&client(), &r, digest)
        .unwrap_err();
    assert_eq!(e.check(), SignatureCheck::Malformed, "{e}");
    let Refusal::Layers { layers, .. } = &e.reason else {
        panic!("{e}")
    };
    let places: Vec<usize> = layers.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        places,
        [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11],
        "layer 4 is skipped: {e}"
    );
    assert!(matches!(layers[0].1, LayerRefusal::NoSignature), "{e}");
    for (_, why) in &layers[1..4] {
        assert!(matches!(why, LayerRefusal::Encoding(_)), "{why}");
    }
    for (_, why) in &layers[4..10] {
        assert!(matches!(why, LayerRefusal::Malformed { .. }), "{why}");
    }
    assert!(
        matches!(&layers[10].1, LayerRefusal::Payload(e) if e.to_string().contains("does not match its digest")),
        "{e}"
    );
}

#[test]
fn signature_manifests_that_are_not_oci_image_manifests_are_refused() {
    let names: Vec<Digest> = (0..7u8).map(|i| Digest::of(&[i])).collect();
    let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","layers":[]}"#;
    let no_layers =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let answers = [
        Sig::Bytes(index.to_vec()),
        Sig::Bytes(docker.to_vec()),
        Sig::Bytes(no_layers.to_vec()),
        Sig::Bytes(b"\xff not json".to_vec()),
        Sig::Bytes(signature_manifest(&[
            serde_json::json!({"mediaType": "application/octet-stream"}),
        ])),
        Sig::Status(500),
        Sig::Status(401),
    ];
    let sigs = names.iter().map(signature_tag).zip(answers).collect();
    let registry = signing_registry(b"{}".to_vec(), sigs, Vec::new());
    let r = Reference::parse(&registry.reference("p/m:v1")).unwrap();
    let trust = Trust::new(vec![test_key().1]);
    let checks: Vec<SignatureCheck> = names
        .iter()
        .map(|d| trust.verify(&client(), &r, *d).unwrap_err().check())
        .collect();
    use SignatureCheck::*;
    assert_eq!(
        checks,
        [
            Malformed, Malformed, Malformed, Malformed, Unsigned, Registry, Registry
        ]
    );
    // No signature manifest at all is unsigned, and says which tag was looked for.
    let missing = Digest::of(b"missing");
    let e = trust.verify(&client(), &r, missing).unwrap_err();
    assert!(matches!(e.reason, Refusal::Unsigned { .. }), "{e}");
    assert!(e.to_string().contains(&signature_tag(&missing)), "{e}");
}
