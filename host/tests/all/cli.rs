//! The `flowgate` binary as users call it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

pub(crate) fn flowgate(args: &[&str], stdin: &(impl AsRef<[u8]> + ?Sized)) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(args)
        .current_dir(crate::repo())
        .env(
            "FLOWGATE_CACHE_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/cli-cache"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_ref())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "flowgate panicked: {stderr}");
    out
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const SPEC_3_1: &str = "fixtures/cases/spec-3.1-overlap/config.yaml";

#[test]
fn check_gives_the_spec_3_1_verdicts_through_the_component() {
    let packets = [
        r#"{"src_vpc": "B", "src_ip": "2.0.0.7", "dst_ip": "1.0.1.9", "proto": "tcp", "src_port": 1234, "dst_port": 80}"#,
        r#"{"src_vpc": "B", "src_ip": "2.0.0.7", "dst_ip": "1.0.0.9", "proto": "tcp", "src_port": 1234, "dst_port": 80}"#,
        r#"{"src_vpc": "A", "src_ip": "1.0.0.9", "dst_ip": "2.0.0.7", "proto": "udp", "src_port": 53, "dst_port": 53}"#,
        r#"{"src_vni": 3, "src_ip": "1.0.0.9", "dst_ip": "2.0.0.7", "proto": "icmp"}"#,
        r#"{"src_vpc": "B", "src_ip": "2.0.1.7", "dst_ip": "1.0.1.9", "proto": 6, "src_port": 1234, "dst_port": 80}"#,
        r#"{"src_vpc": "B", "src_ip": "2.0.0.7", "dst_ip": "1.0.2.9", "proto": "tcp", "src_port": 1234, "dst_port": 80}"#,
    ];
    let out = flowgate(&["check", "--config", SPEC_3_1], &packets.join("\n"));
    assert!(out.status.success());
    let expected = [
        serde_json::json!({"verdict": "allow", "dst_vpc": "A", "dst_vni": 1}),
        serde_json::json!({"verdict": "allow-ambiguous", "candidates": ["A", "C"]}),
        serde_json::json!({"verdict": "allow", "dst_vpc": "B", "dst_vni": 2}),
        serde_json::json!({"verdict": "allow", "dst_vpc": "B", "dst_vni": 2}),
        serde_json::json!({"verdict": "drop", "reason": "source-not-exposed"}),
        serde_json::json!({"verdict": "drop", "reason": "destination-not-exposed"}),
    ];
    assert_eq!(json_lines(&out), expected);
    // The documented key order, too.
    assert!(
        stdout(&out).starts_with(r#"{"verdict":"allow","dst_vpc":"A","dst_vni":1}"#),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_reports_malformed_lines_and_judges_the_rest() {
    let input = "not json\n\n{\"src_vpc\": \"B\", \"src_ip\": \"2.0.0.7\", \"dst_ip\": \"1.0.1.9\", \"proto\": \"icmp\"}\n{\"src_vpc\": \"B\", \"src_ip\": \"2.0.0.7\", \"dst_ip\": \"1.0.1.9\", \"proto\": \"tcp\"}\n";
    let out = flowgate(&["check", "--config", SPEC_3_1, "--batch", "1"], input);
    assert!(out.status.success());
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    assert!(
        lines[0]["error"].as_str().unwrap().starts_with("line 1: "),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1],
        serde_json::json!({"verdict": "allow", "dst_vpc": "A", "dst_vni": 1})
    );
    let e = lines[2]["error"].as_str().unwrap();
    assert!(e.starts_with("line 4: ") && e.contains("src_port"), "{e}");
}

#[test]
fn check_refuses_a_bad_config_with_its_field_and_value() {
    let out = flowgate(
        &[
            "check",
            "--config",
            "fixtures/cases/error-host-bits/config.yaml",
        ],
        "",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in [
        "error-host-bits/config.yaml",
        "spec.peering.a.expose[0].ips[0].cidr",
        "10.0.0.1/24",
        "did you mean 10.0.0.0/24?",
    ] {
        assert!(stderr.contains(part), "stderr should name {part}: {stderr}");
    }
    assert!(stdout(&out).is_empty());
}

#[test]
fn a_file_that_is_not_a_component_is_refused() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let not_wasm = dir.join("not-a-module.wasm");
    std::fs::write(&not_wasm, "hello").unwrap();
    let core = dir.join("core-module.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    for (file, words) in [
        (&not_wasm, "not a WebAssembly file"),
        (&core, "not a component"),
    ] {
        let out = flowgate(&["run", "--module", file.to_str().unwrap()], "");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(file.to_str().unwrap()) && stderr.contains(words),
            "{stderr}"
        );
    }
    let out = flowgate(&["run", "--module", "no/such/file.wasm"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/file.wasm"));
}

#[test]
fn run_summarises_the_default_fixture_like_the_native_library() {
    let out = flowgate(&["run"], "");
    assert!(out.status.success());
    let text = stdout(&out);
    for part in [
        "packets",
        "batches",
        "allow-ambiguous",
        "forwarded per destination VPC",
        "packets per second",
    ] {
        assert!(text.contains(part), "summary lacks {part}:\n{text}");
    }
    let wasm: serde_json::Value =
        serde_json::from_str(&stdout(&flowgate(&["run", "--json"], ""))).unwrap();
    let native: serde_json::Value =
        serde_json::from_str(&stdout(&flowgate(&["run", "--json", "--native"], ""))).unwrap();
    assert_eq!(wasm["packets"], 5000);
    assert_eq!(wasm["batches"], 20);
    for key in ["verdicts", "drops", "forwarded", "packets"] {
        assert_eq!(wasm[key], native[key], "{key}");
    }
    let verdicts = &wasm["verdicts"];
    let total = verdicts["allow"].as_u64().unwrap()
        + verdicts["allow-ambiguous"].as_u64().unwrap()
        + verdicts["drop"].as_u64().unwrap();
    assert_eq!(total, 5000);
}

/// `flowgate run | head` and the like: a reader that stops early closes the pipe, and the
/// command's next write fails. That ends the command quietly, not with a panic or an error.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    for args in [&["run", "--native"][..], &["run", "--native", "--json"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(args)
            .current_dir(crate::repo())
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(
            out.status.success(),
            "{args:?} ended with {}: {stderr}",
            out.status
        );
        assert!(
            !stderr.contains("flowgate:"),
            "{args:?} complained: {stderr}"
        );
    }
}

#[test]
fn serve_with_client_subcommands_and_sighup() {
    let socket = crate::socket_path("serve");
    let admin = format!("unix:{}", socket.display());
    let dir = socket.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::copy(crate::repo().join(SPEC_3_1), &config).unwrap();
    let server = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args([
            "serve",
            "--workers",
            "1",
            "--rate",
            "20000",
            "--duration",
            "60",
            "--admin",
            &admin,
        ])
        .arg("--config")
        .arg(&config)
        .args(["--packets", "fixtures/cases/spec-3.1-overlap/packets.jsonl"])
        .current_dir(crate::repo())
        .env(
            "FLOWGATE_CACHE_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/cli-cache"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded wait for the admin API.
    let status = (0..600)
        .find_map(|_| {
            let out = flowgate(&["status", "--admin", &admin], "");
            if out.status.success() {
                return Some(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            None
        })
        .expect("the gateway's admin API came up");
    assert_eq!(
        (status["generation"].as_u64(), status["cause"].as_str()),
        (Some(1), Some("start"))
    );

    // A config swap through the client, a refused one, a rollback.
    std::fs::write(
        &config,
        std::fs::read_to_string(crate::repo().join("fixtures/cases/spec-3.3-default/config.yaml"))
            .unwrap(),
    )
    .unwrap();
    let out = flowgate(
        &[
            "swap",
            "--config",
            config.to_str().unwrap(),
            "--admin",
            &admin,
        ],
        "",
    );
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(json_lines_pretty(&out)["release"]["generation"], 2);
    let out = flowgate(&["swap", "fixtures/README.md", "--admin", &admin], "");
    assert!(!out.status.success());
    assert_eq!(json_lines_pretty(&out)["reason"], "not-a-component");
    let out = flowgate(&["rollback", "--admin", &admin], "");
    assert!(out.status.success());
    assert_eq!(json_lines_pretty(&out)["release"]["cause"], "rollback");

    // SIGHUP re-reads the configuration file.
    let pid = server.id();
    assert!(crate::signal(pid, "HUP"));
    let reloaded = (0..600).find_map(|_| {
        let out = flowgate(&["status", "--admin", &admin], "");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        if status["generation"] == 4 {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        None
    });
    let reloaded = reloaded.expect("SIGHUP made generation 4");
    assert_eq!(reloaded["cause"], "config");
    assert!(reloaded["counters"]["packets"].as_u64().unwrap() > 0);

    assert!(crate::signal(pid, "TERM"));
    let out = server.wait_with_output().unwrap();
    assert!(out.status.success());
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(last["generation"], 4);
    let log = String::from_utf8_lossy(&out.stderr);
    for line in [
        "generation 2 is live (config)",
        "swap refused (not-a-component)",
        "rollback (operator)",
        "SIGHUP",
    ] {
        assert!(log.contains(line), "the log lacks `{line}`:\n{log}");
    }
}

fn json_lines_pretty(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn logs_as_json_lines_carry_each_event_with_its_fields() {
    let socket = crate::socket_path("json-logs");
    let admin = format!("unix:{}", socket.display());
    let mut server = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--workers",
            "1",
            "--rate",
            "1000",
        ])
        .args(["--duration", "30", "--admin", &admin, "--config", SPEC_3_1])
        .current_dir(crate::repo())
        .env(
            "FLOWGATE_CACHE_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/cli-cache"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let up = (0..600).any(|_| {
        let ok = flowgate(&["status", "--admin", &admin], "")
            .status
            .success();
        if !ok {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        ok
    });
    assert!(up, "the gateway's admin API came up");
    assert!(
        !flowgate(&["swap", "fixtures/README.md", "--admin", &admin], "")
            .status
            .success()
    );
    let config = crate::repo().join("fixtures/cases/spec-3.3-default/config.yaml");
    let out = flowgate(
        &[
            "swap",
            "--config",
            config.to_str().unwrap(),
            "--admin",
            &admin,
        ],
        "",
    );
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(crate::signal(server.id(), "TERM"));
    let mut log = String::new();
    std::io::Read::read_to_string(server.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(server.wait().unwrap().success());
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |event: &str| {
        events
            .iter()
            .find(|e| e["event"] == event)
            .unwrap_or_else(|| panic!("no {event} event in {log}"))
    };
    let refusal = find("refusal");
    assert_eq!(refusal["reason"], "not-a-component");
    assert_eq!(refusal["generation"], 1);
    assert_eq!(refusal["level"], "WARN");
    let swap = find("swap");
    assert_eq!(
        (swap["generation"].as_u64(), swap["cause"].as_str()),
        (Some(2), Some("config"))
    );
    for key in ["module_sha256", "config_sha256"] {
        assert_eq!(swap[key].as_str().map(str::len), Some(64), "{swap}");
    }
}

/// `gen --shape gateway --family dual` writes a dual-stack configuration the checker accepts
/// and packets of both families; `--family ipv4` is what `gen` writes without it; `--family
/// dual` with the mixed shape is refused.
#[test]
fn gen_writes_the_dual_stack_gateway_shape() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gen-dual");
    let _ = std::fs::remove_dir_all(&dir);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let out_arg = out.to_str().unwrap().to_owned();
        let mut args = vec!["gen", "--peerings", "60", "--packets", "400", "--seed", "5"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", &out_arg]);
        let status = flowgate(&args, "");
        (status, out)
    };
    let (status, dual) = run("dual", &["--shape", "gateway", "--family", "dual"]);
    assert!(status.status.success(), "{status:?}");
    let config = std::fs::read_to_string(dual.join("config.yaml")).unwrap();
    assert!(config.starts_with(
        "# Generated by `flowgate gen --peerings 60 --packets 400 --seed 5 --shape gateway --family dual --out"
    ));
    let packets = std::fs::read_to_string(dual.join("packets.jsonl")).unwrap();
    let v6 = packets
        .lines()
        .filter(|l| l.contains("\"src_ip\":\"fd12:"))
        .count();
    let v4 = packets
        .lines()
        .filter(|l| l.contains("\"src_ip\":\"10."))
        .count();
    assert_eq!(packets.lines().count(), 400);
    assert!(v6 > 120 && v4 > 120, "{v4} IPv4 and {v6} IPv6 sources");
    let checked = flowgate(
        &[
            "check",
            "--native",
            "--config",
            dual.join("config.yaml").to_str().unwrap(),
        ],
        &packets,
    );
    assert!(checked.status.success(), "{checked:?}");
    assert_eq!(stdout(&checked).lines().count(), 400);

    let (_, plain) = run("plain", &["--shape", "gateway"]);
    let (_, ipv4) = run("ipv4", &["--shape", "gateway", "--family", "ipv4"]);
    for file in ["config.yaml", "packets.jsonl"] {
        let read = |dir: &std::path::Path| std::fs::read_to_string(dir.join(file)).unwrap();
        let (a, b) = (read(&plain), read(&ipv4));
        let body = |s: &str| {
            s.lines()
                .skip_while(|l| l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(body(&a), body(&b), "{file}");
        assert!(!a.contains("fd12:"), "{file}");
    }
    let (refused, _) = run("refused", &["--family", "dual"]);
    assert!(!refused.status.success());
}
