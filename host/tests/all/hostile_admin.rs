//! The hostile-input suite, the admin API: slow and anonymous clients, framing, the socket and the token.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flowgate_host::admin::{AdminOptions, AdminServer, Client, Endpoint, Stream};

use crate::cli::flowgate;
use crate::hostile::{config, gateway};

const TOKEN: &str = "a-token-of-32-bytes-for-the-test";
const SPEC_3_1: &str = "fixtures/cases/spec-3.1-overlap/config.yaml";

/// The admin API on TCP (loopback, a port the system picks) with [`TOKEN`].
fn on_tcp(
    gateway: &Arc<flowgate_host::gateway::Gateway>,
    options: impl FnOnce(&mut AdminOptions),
) -> AdminServer {
    let mut o = AdminOptions::new(Endpoint::Tcp("127.0.0.1:0".into()), Some(TOKEN.into()));
    options(&mut o);
    AdminServer::start(gateway.clone(), o).unwrap()
}

/// Sends `request` and reads the whole answer (bounded by the timeout), without half-closing.
fn ask(endpoint: &Endpoint, request: &[u8], timeout: Duration) -> String {
    let mut s = Stream::connect(endpoint, Duration::from_secs(5)).unwrap();
    s.set_timeouts(timeout, timeout).unwrap();
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Anonymous clients that send their head one byte every 8 s, 40 of them from the operator's
/// own address, reconnecting whenever the gateway lets them go: the operator with the token is
/// answered every time, and what was refused is counted.
#[test]
fn slow_anonymous_clients_do_not_lock_the_operator_out() {
    let config = config();
    let gateway = gateway(&config, 1);
    let server = on_tcp(&gateway, |_| {});
    let endpoint = server.endpoint().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..40)
        .map(|_| {
            let (endpoint, stop, held) = (endpoint.clone(), stop.clone(), held.clone());
            std::thread::spawn(move || {
                let head = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n";
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok(mut s) = Stream::connect(&endpoint, Duration::from_secs(1)) else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    held.fetch_add(1, Ordering::Relaxed);
                    let _ = s.set_timeouts(Duration::from_millis(200), Duration::from_secs(1));
                    let mut sent = 0;
                    let mut last = Instant::now() - Duration::from_secs(8);
                    'conn: while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        if last.elapsed() >= Duration::from_secs(8) {
                            if s.write_all(&head[sent % head.len()..][..1]).is_err() {
                                break 'conn;
                            }
                            sent += 1;
                            last = Instant::now();
                        }
                        // Waits 200 ms, and notices when the gateway lets the connection go.
                        let mut byte = [0u8; 64];
                        match s.read(&mut byte) {
                            Ok(_) => break 'conn,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break 'conn,
                        }
                    }
                }
            })
        })
        .collect();
    // Let them take every slot there is, then ask as the operator, repeatedly.
    std::thread::sleep(Duration::from_secs(1));
    let operator = Client::new(endpoint.clone(), Some(TOKEN.into()));
    let mut answers = Vec::new();
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        answers.push(
            operator
                .status()
                .map(|a| a.status)
                .map_err(|e| e.to_string()),
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    let failed: Vec<_> = answers.iter().filter(|a| **a != Ok(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} status requests with the token failed: {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
    assert!(held.load(Ordering::Relaxed) >= 40);
    let refused: u64 = gateway.events().admin_refusals.values().sum();
    assert!(
        refused > 0,
        "the anonymous connections refused were not counted"
    );
}

/// A chunk size of 2^64-1 after a first chunk: the body limit holds (the sum of the sizes
/// cannot wrap), the request is refused, and the gateway takes in no more than about its limit.
#[test]
fn a_chunk_size_that_wraps_is_refused_with_bounded_memory() {
    let config = config();
    let gateway = gateway(&config, 1);
    let endpoint = Endpoint::Unix(crate::socket_path("wrap"));
    let mut options = AdminOptions::new(endpoint.clone(), None);
    options.limits.max_body = 1 << 20;
    let _server = AdminServer::start(gateway.clone(), options).unwrap();
    let mut s = Stream::connect(&endpoint, Duration::from_secs(5)).unwrap();
    s.set_timeouts(Duration::from_secs(5), Duration::from_secs(5))
        .unwrap();
    s.write_all(
        b"PUT /config HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\nffffffffffffffff\r\n",
    )
    .unwrap();
    let block = vec![b'A'; 64 << 10];
    let mut sent = 0usize;
    // At most 16 MiB, 16 times the limit.
    while sent < 16 << 20 {
        match s.write(&block) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let Stream::Unix(u) = &s else { panic!() };
    let _ = u.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        sent < 4 << 20,
        "the gateway took {sent} bytes of a body limited to 1 MiB before refusing it ({})",
        answer.lines().next().unwrap_or_default()
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(gateway.current().generation, 1);
    assert_eq!(
        gateway.events().admin_refusals.get("body-too-large"),
        Some(&1)
    );
}

/// The scheme of `Authorization` is case-insensitive (RFC 9110, 11.1).
#[test]
fn bearer_in_lower_case_is_accepted() {
    let config = config();
    let gateway = gateway(&config, 1);
    let server = on_tcp(&gateway, |_| {});
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let request =
            format!("GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: {scheme} {TOKEN}\r\n\r\n");
        let answer = ask(
            server.endpoint(),
            request.as_bytes(),
            Duration::from_secs(5),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{scheme}: {answer}");
    }
    let answer = ask(
        server.endpoint(),
        b"GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

/// `Expect: 100-continue` gets its interim answer at once when the request is authorised, and
/// a final 401, without the interim one, when it is not.
#[test]
fn expect_100_continue_is_answered_promptly() {
    let config = config();
    let other =
        flowgate_policy::synth::config_yaml(flowgate_policy::synth::Scale::with_peerings(12, 9));
    let gateway = gateway(&config, 1);
    let server = on_tcp(&gateway, |_| {});
    let mut s = Stream::connect(server.endpoint(), Duration::from_secs(5)).unwrap();
    s.set_timeouts(Duration::from_millis(500), Duration::from_secs(5))
        .unwrap();
    let head = format!(
        "PUT /config HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        other.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut interim = [0u8; 25];
    let got = s.read(&mut interim);
    let interim = String::from_utf8_lossy(&interim[..*got.as_ref().unwrap_or(&0)]).into_owned();
    assert!(
        interim.starts_with("HTTP/1.1 100"),
        "no interim answer within {:?}: {got:?} {interim:?}",
        started.elapsed()
    );
    s.set_timeouts(Duration::from_secs(10), Duration::from_secs(5))
        .unwrap();
    s.write_all(other.as_bytes()).unwrap();
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    assert!(rest.contains("HTTP/1.1 200"), "{interim}{rest}");
    assert_eq!(gateway.current().generation, 2);

    let answer = ask(
        server.endpoint(),
        b"PUT /config HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-the-token-of-this-gateway\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(gateway.current().generation, 2);
}

/// Chunk data longer than its size is named as what it is.
#[test]
fn chunk_data_longer_than_its_size_is_named() {
    let config = config();
    let gateway = gateway(&config, 1);
    let (admin, _) = crate::admin_on_socket(&gateway);
    let answer = ask(
        admin.endpoint(),
        b"PUT /config HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nABCDEF\r\n0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("longer than its size"), "{answer}");
    assert_eq!(gateway.current().generation, 1);
}

/// Whether this test can act as a second user; says why not when it cannot.
fn second_user(test: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    // The owner of /proc/self is the process's effective user.
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root under CI"
    );
    eprintln!("skipped: {test} runs as root, to act as a second user (nobody)");
    false
}

const PYTHON: &str = "/usr/bin/python3";

/// A program run as `nobody` (uid and gid 65534), its output piped.
fn as_nobody(script: &str, args: &[&str]) -> std::process::Child {
    Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .args(args)
        .uid(65534)
        .gid(65534)
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

use std::os::unix::process::CommandExt;

/// A fresh folder under the system's temporary folder with `mode`.
fn folder(what: &str, mode: u32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fg-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// Tries to connect to a socket path, as fast as it can, until a file named `stop` appears
/// beside it (or 60 s); prints each connection it made and what the gateway answered.
const CONNECT_LOOP: &str = r#"
import os, socket, sys, time
path = sys.argv[1]
stop = os.path.join(os.path.dirname(path), "stop")
end = time.time() + 60
while time.time() < end and not os.path.exists(stop):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        s.close()
        continue
    s.settimeout(2)
    try:
        s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = s.recv(64)
    except OSError as e:
        answer = str(e).encode()
    print("connected:", answer.split(b"\r\n")[0].decode(errors="replace"), flush=True)
    s.close()
"#;

/// Under `umask 000` the gateway's socket is never connectable by another user, not even for
/// an instant: two `nobody` processes that connect in a loop while the gateway starts, thirty
/// times, never get in. (The folder the socket is in lets others through, as /run does. A
/// socket bound with the umask and made 0600 after let them in 9 to 16 times in thirty starts.)
#[test]
fn the_socket_is_private_from_its_first_instant() {
    if !second_user("the_socket_is_private_from_its_first_instant") {
        return;
    }
    let dir = folder("umask", 0o755);
    let socket = dir.join("admin.sock");
    let admin = format!("unix:{}", socket.display());
    let mut connected = Vec::new();
    for _ in 0..30 {
        let _ = std::fs::remove_file(dir.join("stop"));
        let loopers: Vec<_> = (0..2)
            .map(|_| as_nobody(CONNECT_LOOP, &[socket.to_str().unwrap()]))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let mut server = Command::new("sh")
            .arg("-c")
            .arg("umask 000 && exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_flowgate"))
            .args([
                "serve",
                "--workers",
                "1",
                "--duration",
                "20",
                "--admin",
                &admin,
            ])
            .args(["--config", SPEC_3_1])
            .current_dir(crate::repo())
            .env(
                "FLOWGATE_CACHE_DIR",
                concat!(env!("CARGO_TARGET_TMPDIR"), "/cli-cache"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let up = (0..400).any(|_| {
            let ok = Client::new(Endpoint::Unix(socket.clone()), None)
                .status()
                .is_ok_and(|a| a.status == 200);
            if !ok {
                std::thread::sleep(Duration::from_millis(25));
            }
            ok
        });
        std::fs::write(dir.join("stop"), "").unwrap();
        crate::signal(server.id(), "TERM");
        let _ = server.wait();
        for looper in loopers {
            let out = looper.wait_with_output().unwrap();
            connected.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_owned),
            );
        }
        assert!(up, "the gateway did not come up");
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        connected.is_empty(),
        "another user connected to the socket {} times: {:?}",
        connected.len(),
        connected.first()
    );
}

/// Binds a socket at a path as its owner would, records every byte it receives into a file,
/// and answers each request as a gateway that swapped would.
const SQUATTER: &str = r#"
import os, socket, sys
path, record = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o777)
s.listen(16)
s.settimeout(20)
print("listening", flush=True)
body = b'{"swapped": true, "generation": 2, "etag": "x"}'
try:
    while True:
        c, _ = s.accept()
        c.settimeout(2)
        got = b""
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                got += b
                if b"\r\n\r\n" in got:
                    head, rest = got.split(b"\r\n\r\n", 1)
                    n = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            n = int(line.split(b":")[1])
                    if len(rest) >= n:
                        break
        except OSError:
            pass
        with open(record, "ab") as f:
            f.write(got)
        try:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: \"x\"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except OSError:
            pass
        c.close()
except socket.timeout:
    pass
"#;

/// A socket path in a folder others can write, taken by another user first: `flowgate swap`
/// and `status` with the token refuse to talk to it, and it receives nothing at all.
#[test]
fn a_squatted_socket_gets_neither_token_nor_module() {
    if !second_user("a_squatted_socket_gets_neither_token_nor_module") {
        return;
    }
    let dir = folder("squat", 0o1777);
    let socket = dir.join("admin.sock");
    let record = dir.join("record");
    std::fs::write(&record, "").unwrap();
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o666)).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut squatter = as_nobody(
        SQUATTER,
        &[socket.to_str().unwrap(), record.to_str().unwrap()],
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(squatter.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "listening");
    let admin = format!("unix:{}", socket.display());
    let module = crate::repo().join("target/squat-module.wasm");
    std::fs::write(&module, flowgate_test_guests::HONEST_V2).unwrap();
    let token = token_file.to_str().unwrap();
    let swap = flowgate(
        &[
            "swap",
            module.to_str().unwrap(),
            "--admin",
            &admin,
            "--token-file",
            token,
        ],
        "",
    );
    let status = flowgate(&["status", "--admin", &admin, "--token-file", token], "");
    let _ = squatter.kill();
    let _ = squatter.wait();
    let got = std::fs::read(&record).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&module);
    for (what, out) in [("swap", &swap), ("status", &status)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{what} succeeded against a squatter: {}",
            crate::cli::stdout(out)
        );
        assert!(stderr.contains("owned by uid 65534"), "{what}: {stderr}");
        assert!(
            stderr.contains("can be written by others"),
            "{what}: {stderr}"
        );
    }
    assert!(
        got.is_empty(),
        "the squatter received {} bytes; token sent: {}",
        got.len(),
        got.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes())
    );
}

fn token_file(dir: &Path, name: &str, token: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, token).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A token of 15 bytes, and a token file others can read, are refused by `serve` and by the
/// clients, with a message that says what to do; so is a short token given to the library.
#[test]
fn short_tokens_and_readable_token_files_are_refused() {
    let dir = folder("tokens", 0o700);
    let short = token_file(&dir, "short", "fifteen-bytes!!", 0o600);
    let readable = token_file(&dir, "readable", TOKEN, 0o644);
    let group = token_file(&dir, "group", TOKEN, 0o640);
    let cases = [
        (&short, "at least 16 bytes"),
        (&readable, "open to its group or others"),
        (&group, "open to its group or others"),
    ];
    let socket = dir.join("admin.sock");
    let unix = format!("unix:{}", socket.display());
    for (file, message) in cases {
        let file = file.to_str().unwrap();
        let serve = flowgate(
            &[
                "serve",
                "--workers",
                "1",
                "--duration",
                "1",
                "--config",
                SPEC_3_1,
                "--admin",
                "127.0.0.1:0",
                "--admin-token-file",
                file,
            ],
            "",
        );
        let stderr = String::from_utf8_lossy(&serve.stderr);
        assert!(!serve.status.success(), "serve started with {file}");
        assert!(stderr.contains(message), "serve, {file}: {stderr}");
        let status = flowgate(&["status", "--admin", &unix, "--token-file", file], "");
        let stderr = String::from_utf8_lossy(&status.stderr);
        assert!(stderr.contains(message), "status, {file}: {stderr}");
    }
    let config = config();
    let gateway = gateway(&config, 1);
    let e = AdminServer::start(
        gateway,
        AdminOptions::new(
            Endpoint::Tcp("127.0.0.1:0".into()),
            Some("fifteen-bytes!!".into()),
        ),
    )
    .err()
    .expect("a 15-byte token was accepted");
    assert!(format!("{e:#}").contains("at least 16 bytes"), "{e:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every endpoint is listed once: a known path with another method is 405 with `Allow`, and
/// an unknown path is 404 naming the endpoints there are.
#[test]
fn unknown_paths_and_methods_are_named() {
    let config = config();
    let gateway = gateway(&config, 1);
    let (admin, _) = crate::admin_on_socket(&gateway);
    let answer = ask(
        admin.endpoint(),
        b"DELETE /module HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: get, put"),
        "{answer}"
    );
    let answer = ask(
        admin.endpoint(),
        b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(
        answer.contains("/status, /metrics, /module, /config, /rollback"),
        "{answer}"
    );
    assert_eq!(gateway.current().generation, 1);
}

/// A refusal that comes before the body (a wrong token, a length over the limit) reaches the
/// client as an answer, though it was still sending.
#[test]
fn refusals_before_the_body_reach_the_client() {
    let config = config();
    let gateway = gateway(&config, 1);
    let server = on_tcp(&gateway, |o| o.limits.max_body = 1 << 20);
    let big = vec![b'#'; 8 << 20];
    let wrong = Client::new(
        server.endpoint().clone(),
        Some("not-the-token-of-this-gateway".into()),
    );
    let answer = wrong
        .swap_module(&big, None, None)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(answer.status, 401, "{}", answer.body);
    let right = Client::new(server.endpoint().clone(), Some(TOKEN.into()));
    let answer = right.swap_module(&big, None, None).unwrap();
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert_eq!(gateway.current().generation, 1);
}

// The audit trail's files: the audit log and the token file of named tokens.

#[test]
fn an_audit_log_is_opened_only_as_a_private_file_and_never_through_a_link() {
    let dir = crate::audit::folder("audit-open");
    let open = dir.join("open.jsonl");
    std::fs::write(&open, "").unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let e = flowgate_host::admin::AuditLog::open(&open)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mode 644"), "{e}");
    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(dir.join("elsewhere.jsonl"), &link).unwrap();
    assert!(flowgate_host::admin::AuditLog::open(&link).is_err());
    assert!(
        !dir.join("elsewhere.jsonl").exists(),
        "nothing made through the link"
    );
    let new = dir.join("new.jsonl");
    flowgate_host::admin::AuditLog::open(&new).unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&new).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_token_file_of_named_tokens_is_read_strictly() {
    let dir = crate::audit::folder("audit-tokens");
    let read = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        flowgate_host::admin::read_server_tokens(&path).map_err(|e| e.to_string())
    };
    assert_eq!(
        read("one", "  just-one-token-0123456789\n"),
        Ok(flowgate_host::admin::ServerTokens::One(
            "just-one-token-0123456789".into()
        ))
    );
    assert_eq!(
        read(
            "one-commented",
            "# the gateway's\njust-one-token-0123456789\n"
        ),
        Ok(flowgate_host::admin::ServerTokens::One(
            "just-one-token-0123456789".into()
        ))
    );
    for (name, text, problem) in [
        (
            "three-words",
            "a aaaaaaaaaaaaaaaaaaaa extra\n",
            "line 1: not `NAME TOKEN`",
        ),
        (
            "short",
            "a 0123456789abcdef\nb short\n",
            "line 2: the token of `b`",
        ),
        (
            "twice",
            "a 0123456789abcdef\na fedcba9876543210\n",
            "line 2: `a` or its token is named twice",
        ),
        (
            "same-token",
            "a 0123456789abcdef\nb 0123456789abcdef\n",
            "line 2",
        ),
        (
            "bad-name",
            "a/b 0123456789abcdef\n",
            "line 1: `a/b` is not a token's name",
        ),
    ] {
        let e = read(name, text).unwrap_err();
        assert!(e.contains(problem), "{name}: {e}");
    }
    let many: String = (0..300).map(|i| format!("n{i} token-{i:016}\n")).collect();
    assert!(
        read("many", &many)
            .unwrap_err()
            .contains("more than 256 tokens")
    );
    let huge = "x".repeat(70 << 10);
    assert!(read("huge", &huge).is_err());
}

// The shadow release's routes.

/// A request to `path` with `headers` and `body`, on a connection of its own: the status line
/// and the answer's body.
fn shadow_request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> String {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    ask(endpoint, &request, Duration::from_secs(30))
}

/// A request to a shadow route and what its answer must say: method, path, headers, body,
/// status line, a word of the answer.
type ShadowCase<'a> = (&'a str, &'a str, &'a str, &'a [u8], &'a str, &'a str);

/// Bodies that are no module, no configuration or no reference, lengths outside the body,
/// promotion and discard with nothing staged, a missing `If-Match`: each is refused with its
/// status and reason, and nothing is staged or published.
#[test]
fn shadow_routes_refuse_what_they_cannot_stage() {
    let config = config();
    let gateway = gateway(&config, 1);
    let (admin, client) = crate::admin_on_socket(&gateway);
    let at = admin.endpoint();
    let cases: [ShadowCase<'_>; 9] = [
        (
            "PUT",
            "/shadow/config",
            "",
            b"\xff\xfe not text",
            "HTTP/1.1 400",
            "not UTF-8",
        ),
        (
            "PUT",
            "/shadow/config",
            "",
            b"kind: nothing\n",
            "HTTP/1.1 422",
            "config-refused",
        ),
        (
            "PUT",
            "/shadow/config",
            "",
            b"",
            "HTTP/1.1 422",
            "config-refused",
        ),
        (
            "PUT",
            "/shadow/module",
            "",
            b"\0asm but not really",
            "HTTP/1.1 422",
            "not-a-component",
        ),
        (
            "PUT",
            "/shadow/module",
            "Content-Type: application/vnd.flowgate.module-reference\r\n",
            b"not a reference at all",
            "HTTP/1.1 422",
            "pull-failed",
        ),
        (
            "PUT",
            "/shadow/module",
            "X-Config-Length: 99\r\n",
            b"short",
            "HTTP/1.1 400",
            "X-Config-Length",
        ),
        (
            "PUT",
            "/shadow/module",
            "Content-Type: application/yaml\r\n",
            config.as_bytes(),
            "HTTP/1.1 422",
            "not-a-component",
        ),
        (
            "POST",
            "/shadow/promote",
            "If-Match: *\r\n",
            b"",
            "HTTP/1.1 409",
            "no-shadow",
        ),
        ("DELETE", "/shadow", "", b"", "HTTP/1.1 409", "no-shadow"),
    ];
    for (method, path, headers, body, status, says) in cases {
        let answer = shadow_request(at, method, path, headers, body);
        assert!(answer.starts_with(status), "{method} {path}: {answer}");
        assert!(answer.contains(says), "{method} {path}: {answer}");
    }
    let answer = shadow_request(at, "PUT", "/shadow", "", b"x");
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: get, delete"),
        "{answer}"
    );
    assert_eq!(client.shadow().unwrap().status, 404);

    // With a shadow staged, promotion must name it.
    let staged = client
        .stage_config(&crate::hostile::config(), None)
        .unwrap();
    assert_eq!(staged.status, 200, "{}", staged.body);
    let answer = shadow_request(at, "POST", "/shadow/promote", "", b"");
    assert!(answer.starts_with("HTTP/1.1 412"), "{answer}");
    let answer = shadow_request(at, "POST", "/shadow/promote", "If-Match: W/\"x\"\r\n", b"");
    assert!(answer.starts_with("HTTP/1.1 412"), "{answer}");
    // A discard must name the staged shadow when it names one: weak, unquoted, empty,
    // another's and a long list of others' ETags discard nothing.
    let etag = staged.body["shadow"]["etag"].as_str().unwrap().to_owned();
    let others = vec!["\"0-sha256:ab-sha256:cd\""; 500].join(", ");
    for if_match in [
        format!("W/\"{etag}\""),
        "\"\"".to_owned(),
        ",,,".to_owned(),
        "\"gen-1\"".to_owned(),
        others,
    ] {
        let header = format!("If-Match: {if_match}\r\n");
        let answer = shadow_request(at, "DELETE", "/shadow", &header, b"");
        assert!(answer.starts_with("HTTP/1.1 412"), "{if_match}: {answer}");
        assert!(answer.contains("stale-shadow"), "{answer}");
    }
    assert_eq!(gateway.current().generation, 1, "nothing was published");
    assert_eq!(
        client.shadow().unwrap().status,
        200,
        "the shadow stays staged"
    );
}

/// Shadows staged at once, from several clients, are staged one after the other: each is
/// answered, one stays staged (one of those answered), the others were replaced.
#[test]
fn concurrent_stages_leave_one_shadow() {
    let config = config();
    let gateway = gateway(&config, 1);
    let (admin, _) = crate::admin_on_socket(&gateway);
    let configs: Vec<String> = (0..4)
        .map(|seed| {
            flowgate_policy::synth::config_yaml(flowgate_policy::synth::Scale::with_peerings(
                30,
                100 + seed,
            ))
        })
        .collect();
    let handles: Vec<_> = configs
        .into_iter()
        .map(|config| {
            let client = Client::new(admin.endpoint().clone(), None);
            std::thread::spawn(move || client.stage_config(&config, None).unwrap())
        })
        .collect();
    let etags: Vec<String> = handles
        .into_iter()
        .map(|h| {
            let reply = h.join().unwrap();
            assert_eq!(reply.status, 200, "{}", reply.body);
            reply.body["shadow"]["etag"].as_str().unwrap().to_owned()
        })
        .collect();
    let client = Client::new(admin.endpoint().clone(), None);
    let staged = client.shadow().unwrap();
    let staged = staged.body["shadow"]["etag"].as_str().unwrap().to_owned();
    assert!(etags.contains(&staged), "{staged} among {etags:?}");
    assert_eq!(gateway.events().shadow_ends.get("replaced"), Some(&3));
    assert_eq!(gateway.current().generation, 1);
}
