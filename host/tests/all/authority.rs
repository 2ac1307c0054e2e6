//! One authority over the running release: the operator, the tag watch and auto-revert, and the
//! rule between them. Gateways here are `flowgate serve` processes following a tag in a real
//! registry (Debian's `docker-registry`), driven by the `flowgate` client as an operator would.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flowgate_host::DEFAULT_MODULE;
use flowgate_host::oci::{Digest, Reference};
use flowgate_test_guests as guests;
use serde_json::Value;

use crate::cli::flowgate;
use crate::oci::{TestRegistry, push, start};

const SPEC_3_1: &str = "fixtures/cases/spec-3.1-overlap";

/// A `flowgate serve` process, killed when dropped (even on a failed assertion).
pub(crate) struct Served {
    child: Option<Child>,
    pub(crate) admin: String,
    pub(crate) dir: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Served {
    /// `flowgate serve` on the SPEC 3.1 configuration with `packets` (JSON lines), the module
    /// `module` (a reference), polling every 0.2 s, one worker, `extra` arguments.
    fn start(module: &str, packets: &str, extra: &[&str]) -> Served {
        let mut args = vec!["--module", module, "--pull-interval", "0.2"];
        args.extend(extra);
        Served::spawn(packets, &args)
    }

    /// `flowgate serve` on the SPEC 3.1 configuration with `packets` (JSON lines), one
    /// worker, its admin API on a socket of its own, and `args`.
    pub(crate) fn spawn(packets: &str, args: &[&str]) -> Served {
        let socket = crate::socket_path("authority");
        let dir = socket.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let packets_file = dir.join("packets.jsonl");
        std::fs::write(&packets_file, packets).unwrap();
        let admin = format!("unix:{}", socket.display());
        let child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args([
                "serve",
                "--workers",
                "1",
                "--rate",
                "20000",
                "--duration",
                "120",
            ])
            .args(["--admin", &admin])
            .args(["--config", &format!("{SPEC_3_1}/config.yaml")])
            .arg("--packets")
            .arg(&packets_file)
            .args(args)
            .current_dir(crate::repo())
            .env("FLOWGATE_CACHE_DIR", dir.join("cache"))
            .stdout(Stdio::piped())
            // A file, not a pipe: read on failure, and never full while no one reads it.
            .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
            .spawn()
            .unwrap();
        let served = Served {
            child: Some(child),
            admin,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while served.status().is_none() {
            assert!(Instant::now() < deadline, "the gateway's admin API came up");
            std::thread::sleep(Duration::from_millis(50));
        }
        served
    }

    /// `GET /status`, when the gateway answers.
    pub(crate) fn status(&self) -> Option<Value> {
        let out = flowgate(&["status", "--admin", &self.admin], "");
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Runs the `flowgate` client subcommand `args` against this gateway; its JSON answer.
    pub(crate) fn client(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--admin", &self.admin]);
        let out = flowgate(&all, "");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "flowgate {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&text).unwrap()
    }

    /// Waits until `done` holds for `/status`.
    pub(crate) fn wait_for(&self, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.status()
                && done(&status)
            {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the gateway's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the gateway with SIGTERM; its log, and whether its socket was left behind.
    pub(crate) fn stop(mut self) -> (String, bool) {
        let child = self.child.take().unwrap();
        assert!(crate::signal(child.id(), "TERM"));
        child.wait_with_output().unwrap();
        let socket = self.admin.strip_prefix("unix:").unwrap();
        let left = std::path::Path::new(socket).exists();
        (self.log(), left)
    }

    /// The gateway's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// What the gateway logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }
}

fn module_file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

fn sha256(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()["sha256:".len()..].to_owned()
}

fn spec_packets() -> String {
    std::fs::read_to_string(crate::repo().join(SPEC_3_1).join("packets.jsonl")).unwrap()
}

/// The tag `fleet/policy:prod` of `registry`, pointing at `module`.
fn tag(registry: &TestRegistry, module: &[u8]) -> (String, Digest) {
    let text = registry.reference("fleet/policy:prod");
    let digest = push(&Reference::parse(&text).unwrap(), module);
    (text, digest)
}

/// The time a gateway gets to poll an unmoved tag: ten polls at 0.2 s.
const POLLS: Duration = Duration::from_secs(2);

#[test]
fn an_operators_swap_and_rollback_survive_polls_of_an_unmoved_tag() {
    let Some(registry) = start() else { return };
    let (tagged, _) = tag(&registry, DEFAULT_MODULE);
    let served = Served::start(&tagged, &spec_packets(), &[]);
    let deny = module_file(&served.dir, "deny.wasm", guests::DENY_LIST);
    let v2 = module_file(&served.dir, "v2.wasm", guests::HONEST_V2);

    // An emergency block: the operator's module stays, however often the tag is polled.
    assert_eq!(served.client(&["swap", &deny])["release"]["generation"], 2);
    std::thread::sleep(POLLS);
    let status = served.status().unwrap();
    assert_eq!(
        (&status["generation"], &status["module"]["sha256"]),
        (&Value::from(2), &Value::from(sha256(guests::DENY_LIST))),
        "the watch undid the operator's swap: {status:#}"
    );
    assert_eq!(status["origin"], "operator-upload");

    // A rollback by the operator stays too: back to the deny list, uploaded (no reference).
    assert_eq!(served.client(&["swap", &v2])["release"]["generation"], 3);
    assert_eq!(served.client(&["rollback"])["release"]["generation"], 4);
    std::thread::sleep(POLLS);
    let status = served.status().unwrap();
    assert_eq!(
        (&status["generation"], &status["module"]["sha256"]),
        (&Value::from(4), &Value::from(sha256(guests::DENY_LIST))),
        "the watch undid the operator's rollback: {status:#}"
    );
    assert_eq!(status["watch"]["state"], "paused", "{status:#}");
    assert_eq!(status["watch"]["since_generation"], 4);
    assert_eq!(status["events"]["pulls"]["swapped"], Value::Null);

    // Resumed by the operator, the watch still does not restore the tag's module: it acts
    // when the tag moves.
    let watch = served.client(&["watch", "resume"]);
    assert_eq!(watch["watch"]["state"], "active", "{watch:#}");
    std::thread::sleep(POLLS);
    assert_eq!(served.status().unwrap()["generation"], 4);
    push(&Reference::parse(&tagged).unwrap(), guests::HONEST_V2);
    let moved = served.wait_for("the watch to take the moved tag", |s| s["generation"] == 5);
    assert_eq!(moved["origin"], "tag-watch");
    assert_eq!(moved["module"]["sha256"], sha256(guests::HONEST_V2));

    let (log, _) = served.stop();
    assert!(log.contains("paused, an operator"), "{log}");
    assert!(log.contains("resumed by the operator"), "{log}");
}

#[test]
fn a_swap_to_the_watched_tag_resumes_the_watch() {
    let Some(registry) = start() else { return };
    let (tagged, digest) = tag(&registry, DEFAULT_MODULE);
    let served = Served::start(&tagged, &spec_packets(), &[]);
    let deny = module_file(&served.dir, "deny.wasm", guests::DENY_LIST);
    served.client(&["swap", &deny]);
    assert_eq!(served.status().unwrap()["watch"]["state"], "paused");

    // Naming the tag itself is asking to follow it again: its module now, and its moves.
    let back = served.client(&["swap", &tagged]);
    assert_eq!(back["release"]["generation"], 3);
    assert_eq!(back["release"]["origin"], "operator-reference");
    let status = served.status().unwrap();
    assert_eq!(status["watch"]["state"], "active", "{status:#}");
    assert_eq!(status["watch"]["digest"], digest.to_string());
    push(&Reference::parse(&tagged).unwrap(), guests::HONEST_V2);
    served.wait_for("the watch to take the moved tag", |s| {
        s["generation"] == 4 && s["origin"] == "tag-watch"
    });

    // A pinned reference of the same repository is a choice of one digest: it pins.
    let pinned = Reference::parse(&tagged)
        .unwrap()
        .pinned(digest)
        .to_string();
    served.client(&["swap", &pinned]);
    assert_eq!(served.status().unwrap()["watch"]["state"], "paused");
}

/// Packets of the SPEC 3.1 trace, and the same packets from source port 6666, which makes the
/// `trap` guest trap.
fn packets_with_traps() -> String {
    let mut out = spec_packets();
    for line in spec_packets().lines().filter(|l| !l.trim().is_empty()) {
        let mut packet: Value = serde_json::from_str(line).unwrap();
        if packet.get("src_port").is_some() {
            packet["src_port"] = guests::trigger::TRAP.into();
            out.push_str(&format!("{packet}\n"));
        }
    }
    out
}

#[test]
fn a_tag_pointing_at_a_trapping_module_is_taken_once() {
    let Some(registry) = start() else { return };
    let (tagged, _) = tag(&registry, DEFAULT_MODULE);
    let served = Served::start(&tagged, &packets_with_traps(), &[]);

    // The trapping module passes its canary (it traps on port 6666 only), serves, faults on
    // traffic and is auto-reverted; its digest is never taken again while the tag stays.
    let trap = push(&Reference::parse(&tagged).unwrap(), guests::TRAP);
    served.wait_for("the auto-revert", |s| s["events"]["rollbacks"]["auto"] == 1);
    std::thread::sleep(POLLS);
    let status = served.status().unwrap();
    assert_eq!(
        (
            &status["events"]["pulls"]["swapped"],
            &status["events"]["rollbacks"]["auto"]
        ),
        (&Value::from(1), &Value::from(1)),
        "the trapping module was taken again: {status:#}"
    );
    assert_eq!(status["generation"], 3, "{status:#}");
    assert_eq!(status["origin"], "auto-revert");
    assert!(
        status["why"].as_str().unwrap().contains("trap"),
        "an auto-revert names its faults: {status:#}"
    );
    assert!(status["events"]["pulls"]["quarantined"].as_u64().unwrap() >= 5);
    let quarantined = &status["watch"]["quarantined"][0];
    assert_eq!(quarantined["digest"], trap.to_string());
    assert_eq!(quarantined["reason"], "auto-revert");
    assert_eq!(quarantined["generation"], 2);

    // The tag moving on is followed again.
    push(&Reference::parse(&tagged).unwrap(), guests::HONEST_V2);
    served.wait_for("the watch to take the moved tag", |s| s["generation"] == 4);
}

#[test]
fn a_refused_module_under_the_tag_is_quarantined_not_pulled_again() {
    let Some(registry) = start() else { return };
    let (tagged, _) = tag(&registry, DEFAULT_MODULE);
    let served = Served::start(&tagged, &spec_packets(), &[]);
    // Answers short on every batch: the canary refuses it, once.
    let short = push(&Reference::parse(&tagged).unwrap(), guests::SHORT);
    served.wait_for("the refusal", |s| {
        s["events"]["refusals"]["canary-failed"] == 1
    });
    std::thread::sleep(POLLS);
    let status = served.status().unwrap();
    assert_eq!(
        status["events"]["refusals"]["canary-failed"], 1,
        "the refused module was pulled again: {status:#}"
    );
    assert_eq!(status["events"]["pulls"]["refused"], 1, "{status:#}");
    assert_eq!(status["generation"], 1);
    assert_eq!(
        status["watch"]["quarantined"][0]["digest"],
        short.to_string()
    );
}

/// A listener that accepts connections and never answers, for at most `limit`: a registry
/// that hangs. Counts the connections it took.
fn tarpit(port: u16, limit: Duration) -> (Arc<AtomicUsize>, Arc<AtomicBool>) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (taken, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (count, done) = (taken.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        let end = Instant::now() + limit;
        while Instant::now() < end && !done.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    count.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nonblocking(true);
                    let _ = stream.read(&mut [0; 1024]);
                    held.push(stream);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (taken, stop)
}

#[test]
fn sigterm_does_not_wait_for_a_slow_registry() {
    let Some(registry) = start() else { return };
    let (tagged, _) = tag(&registry, DEFAULT_MODULE);
    let served = Served::start(&tagged, &spec_packets(), &[]);
    // The registry hangs: every poll from now on waits on it.
    let port = registry.port;
    drop(registry);
    let (taken, stop) = tarpit(port, Duration::from_secs(90));
    let deadline = Instant::now() + Duration::from_secs(10);
    while taken.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the watch polled the registry");
        std::thread::sleep(Duration::from_millis(20));
    }
    let asked = Instant::now();
    let (log, socket_left) = served.stop();
    let took = asked.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM took {took:?} with the registry hanging:\n{log}"
    );
    assert!(!socket_left, "the admin socket is left behind");
}

/// A one-worker gateway on the SPEC 3.1 configuration, following `oci://127.0.0.1:1/t/p:prod`
/// (no registry needed: the rule is the gateway's).
fn following() -> (Arc<flowgate_host::gateway::Gateway>, Reference) {
    use flowgate_host::gateway::{Gateway, ModuleBytes, Options};
    let options = Options {
        workers: 1,
        ..Options::default()
    };
    let config = std::fs::read_to_string(crate::repo().join(SPEC_3_1).join("config.yaml")).unwrap();
    let tag = Reference::parse("oci://127.0.0.1:1/t/p:prod").unwrap();
    let start = ModuleBytes::pulled(DEFAULT_MODULE, &tag, Digest::of(b"v1"));
    let gateway = Gateway::new(crate::runtime(), start, &config, options).unwrap();
    gateway.watch_tag(&tag).unwrap();
    (gateway, tag)
}

#[test]
fn the_watch_acts_only_on_digests_it_has_not_acted_on() {
    use flowgate_host::gateway::Decision;
    let (gateway, tag) = following();
    let (v1, v2) = (Digest::of(b"v1"), Digest::of(b"v2"));
    assert_eq!(gateway.watch_decision(&v1), Decision::Unchanged);
    assert_eq!(gateway.watch_decision(&v2), Decision::Take);
    let never = AtomicBool::new(false);
    let taken = gateway
        .swap_by_watch(guests::HONEST_V2, &tag, v2, None, &never)
        .unwrap()
        .unwrap();
    assert_eq!(taken.origin, flowgate_host::gateway::Origin::TagWatch);
    assert_eq!(taken.source, Some(tag.pinned(v2).to_string()));
    assert_eq!(gateway.watch_decision(&v2), Decision::Unchanged);
    // Back at v1, which the watch acted on before the tag moved: a move, so taken.
    assert_eq!(gateway.watch_decision(&v1), Decision::Take);

    // A module the gateway refuses is quarantined, and never retried while the tag stays.
    let v3 = Digest::of(b"v3");
    assert!(
        gateway
            .swap_by_watch(guests::SHORT, &tag, v3, None, &never)
            .is_err()
    );
    assert_eq!(gateway.watch_decision(&v3), Decision::Quarantined);
    let watch = gateway.watch_status().unwrap();
    assert_eq!(watch.quarantined[0].digest, v3);
    assert!(
        watch.quarantined[0].reason.contains("canary-failed"),
        "{watch:?}"
    );

    // Serving stops: nothing is published, whatever the watch pulled.
    let v4 = Digest::of(b"v4");
    let stopping = AtomicBool::new(true);
    let before = gateway.current().generation;
    assert!(
        gateway
            .swap_by_watch(DEFAULT_MODULE, &tag, v4, None, &stopping)
            .unwrap()
            .is_none()
    );
    assert_eq!(gateway.current().generation, before);
}

#[test]
fn every_operator_change_pins_the_gateway_and_only_the_operator_unpins_it() {
    use flowgate_host::gateway::{Decision, Origin, SwapRequest};
    let (gateway, tag) = following();
    let config = gateway.current().config.to_string();
    let never = AtomicBool::new(false);
    let moved = Digest::of(b"moved");

    // SIGHUP with a changed file is an operator's change.
    let reloaded = gateway
        .reload(None, &format!("{config}\n# edited\n"))
        .unwrap()
        .unwrap();
    assert_eq!(reloaded.origin, Origin::Sighup);
    let paused = gateway.watch_status().unwrap().paused.unwrap();
    assert_eq!(paused.since_generation, reloaded.generation);
    assert!(paused.reason.contains("SIGHUP"), "{paused:?}");
    // Paused, the watch takes nothing, even a digest it has never seen.
    assert_eq!(gateway.watch_decision(&moved), Decision::Paused);
    assert!(
        gateway
            .swap_by_watch(guests::HONEST_V2, &tag, moved, None, &never)
            .unwrap()
            .is_none()
    );
    assert_eq!(gateway.current().generation, reloaded.generation);

    // An upload and a rollback keep it pinned, to the latest change.
    let uploaded = gateway
        .swap(SwapRequest::module(guests::DENY_LIST))
        .unwrap();
    let back = gateway.rollback(None).unwrap();
    assert_eq!(back.origin, Origin::Rollback);
    let paused = gateway.watch_status().unwrap().paused.unwrap();
    assert!(paused.since_generation > uploaded.generation);

    // Only the operator resumes it.
    assert!(gateway.resume_watch().unwrap().paused.is_none());
    assert_eq!(gateway.watch_decision(&moved), Decision::Take);
    gateway.pause_watch("maintenance").unwrap();
    assert_eq!(gateway.watch_decision(&moved), Decision::Paused);
}

#[test]
fn an_if_match_list_holding_the_running_etag_is_a_match() {
    let (gateway, _) = following();
    let (server, client) = crate::admin_on_socket(&gateway);
    let etag = client.status().unwrap().etag.unwrap();
    let config = gateway.current().config.to_string();
    let put = |if_match: &str| {
        let head = format!(
            "PUT /config HTTP/1.1\r\nHost: x\r\nIf-Match: {if_match}\r\nContent-Length: {}\r\n\r\n",
            config.len()
        );
        crate::hostile::raw(
            server.endpoint(),
            &[head.as_bytes(), config.as_bytes()].concat(),
            None,
        )
    };
    assert!(put("\"1-0000\", W/\"x\"").contains(" 412 "));
    // A weak tag never matches, even with the running release's value.
    assert!(put(&format!("W/\"{etag}\"")).contains(" 412 "));
    let status = put(&format!("\"1-0000\", \"{etag}\""));
    assert!(status.contains(" 200 "), "{status}");
}

/// A gateway that follows no tag refuses to pause or resume a watch (409, nothing changes);
/// the command line says how a gateway comes to watch a tag, which the library does not.
#[test]
fn a_gateway_without_a_watch_refuses_to_resume_one() {
    let config = flowgate_host::DEFAULT_CONFIG;
    let gateway = flowgate_host::gateway::Gateway::new(
        crate::runtime(),
        DEFAULT_MODULE,
        config,
        flowgate_host::gateway::Options {
            workers: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let (admin, client) = crate::admin_on_socket(&gateway);
    let refused = client.watch("resume").unwrap();
    assert_eq!(refused.status, 409, "{}", refused.body);
    let error = refused.body["error"].as_str().unwrap();
    assert!(
        error.contains("watches no tag") && !error.contains("--"),
        "the library names no flag: {error}"
    );
    let endpoint = admin.endpoint().to_string();
    let out = flowgate(&["watch", "pause", "--admin", &endpoint], "");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("serve --module oci://") && stderr.contains("--pull-interval"),
        "{stderr}"
    );
    assert_eq!(gateway.current().generation, 1);
}

/// The SPEC 3.1 trace, and its TCP packets again to destination port 445, which the deny-list
/// module drops (`drop(denied)`) whatever the peerings say: a module that changes verdicts.
fn packets_to_445() -> String {
    let mut out = spec_packets();
    for line in spec_packets().lines().filter(|l| !l.trim().is_empty()) {
        let mut packet: Value = serde_json::from_str(line).unwrap();
        if packet["proto"] == "tcp" && packet.get("src_vpc").is_some() {
            packet["dst_port"] = 445.into();
            out.push_str(&format!("{packet}\n"));
        }
    }
    out
}

/// A gated watch (`--pull-shadow`): a digest whose shadow changes verdicts beyond the budget is
/// discarded, quarantined and never staged again, while the live release serves on; one within
/// it is promoted, exactly as measured, with its report's totals.
#[test]
fn the_gated_watch_promotes_within_the_budget_and_quarantines_beyond_it() {
    let Some(registry) = start() else { return };
    let (tagged, _) = tag(&registry, DEFAULT_MODULE);
    let audit = crate::audit::folder("audit-gated").join("audit.jsonl");
    let gate = [
        "--pull-shadow",
        "1",
        "--max-changed",
        "0",
        "--shadow-share",
        "1",
        "--audit-log",
        audit.to_str().unwrap(),
    ];
    let served = Served::start(&tagged, &packets_to_445(), &gate);
    let r = Reference::parse(&tagged).unwrap();

    let deny = push(&r, guests::DENY_LIST);
    let status = served.wait_for("the deny-list's refusal", |s| {
        s["watch"]["quarantined"][0]["digest"] == deny.to_string()
    });
    assert_eq!(
        status["watch"]["quarantined"][0]["reason"], "refused: over-budget",
        "{status:#}"
    );
    assert_eq!(status["generation"], 1, "nothing was published: {status:#}");
    let ended = &status["shadow_ended"];
    assert_eq!(ended["how"], "refused", "{status:#}");
    assert!(ended["changed"].as_u64().unwrap() > 0, "{status:#}");
    assert!(ended["packets"].as_u64() > ended["changed"].as_u64());
    assert_eq!(status["events"]["pulls"]["refused"], 1);
    // Quarantined: not staged again while the tag stays.
    std::thread::sleep(POLLS);
    let status = served.status().unwrap();
    assert_eq!(status["events"]["pulls"]["refused"], 1, "{status:#}");
    assert!(status["staged_shadow"].is_null(), "{status:#}");

    let v2 = push(&r, guests::HONEST_V2);
    let status = served.wait_for("the promotion", |s| s["generation"] == 2);
    assert_eq!(
        (&status["cause"], &status["origin"]),
        (&Value::from("shadow-promote"), &Value::from("tag-watch")),
        "{status:#}"
    );
    assert_eq!(status["module"]["sha256"], sha256(guests::HONEST_V2));
    assert_eq!(status["shadow"]["changed"], 0, "{status:#}");
    assert!(status["shadow"]["packets"].as_u64().unwrap() > 0);
    assert_eq!(status["watch"]["digest"], v2.to_string(), "{status:#}");
    assert_eq!(status["watch"]["state"], "active");
    assert_eq!(status["events"]["pulls"]["swapped"], 1);

    let (log, _) = served.stop();
    assert!(
        log.contains("packets compared") && log.contains("top pairs"),
        "the watch logs each report: {log}"
    );

    // The watch's shadows and its promotion are on the audit trail, as the gateway's.
    let records = crate::audit::records(&audit);
    let gateway = serde_json::json!({"transport": "gateway"});
    assert!(
        records.iter().all(|r| r["caller"] == gateway),
        "{records:#?}"
    );
    let staged = |module: &[u8]| {
        records.iter().any(|r| {
            r["request"] == "tag watch: shadow staged"
                && r["after"]["module_sha256"] == sha256(module)
        })
    };
    assert!(
        staged(guests::DENY_LIST) && staged(guests::HONEST_V2),
        "{records:#?}"
    );
    let promoted = records.last().unwrap();
    assert_eq!(promoted["request"], "tag watch: shadow promoted");
    assert_eq!(
        promoted["after"]["module_sha256"],
        sha256(guests::HONEST_V2)
    );
    assert_eq!(promoted["after"]["origin"], "tag-watch");
    assert_eq!(promoted["after"]["generation"], 2);
}

/// A gated watch never overrides the operator: the shadow it staged and the operator
/// discarded is not staged again; a pause while it is judged discards it unpromoted (and does
/// not quarantine it); the operator may promote the watch's shadow.
#[test]
fn the_gated_watch_leaves_its_shadow_to_the_operator() {
    let Some(registry) = start() else { return };
    let (tagged, _) = tag(&registry, DEFAULT_MODULE);
    let gate = ["--pull-shadow", "60", "--max-changed-share", "1"];
    let served = Served::start(&tagged, &packets_to_445(), &gate);
    let r = Reference::parse(&tagged).unwrap();
    let staged = |s: &Value| !s["staged_shadow"].is_null();

    let deny = push(&r, guests::DENY_LIST);
    served.wait_for("the watch's shadow", staged);
    served.client(&["shadow", "discard"]);
    let status = served.wait_for("the quarantine", |s| {
        s["watch"]["quarantined"][0]["digest"] == deny.to_string()
    });
    assert_eq!(
        status["watch"]["quarantined"][0]["reason"], "shadow-discarded by an operator",
        "{status:#}"
    );
    std::thread::sleep(POLLS);
    let status = served.status().unwrap();
    assert!(!staged(&status), "staged again: {status:#}");
    assert_eq!(status["generation"], 1);

    // The operator's own shadow replaces the watch's: the watch's digest is quarantined, and
    // the operator's shadow is never replaced by the watch.
    let v2 = push(&r, guests::HONEST_V2);
    served.wait_for("the watch's shadow of v2", staged);
    let config = format!("{SPEC_3_1}/config.yaml");
    let mine = served.client(&["shadow", "stage", "--config", &config]);
    let mine = mine["shadow"]["etag"].as_str().unwrap().to_owned();
    let status = served.wait_for("the quarantine of v2", |s| {
        s["watch"]["quarantined"][1]["digest"] == v2.to_string()
    });
    assert_eq!(
        status["watch"]["quarantined"][1]["reason"], "shadow-replaced by an operator",
        "{status:#}"
    );
    std::thread::sleep(POLLS);
    let status = served.status().unwrap();
    assert_eq!(status["staged_shadow"]["etag"], mine.as_str(), "{status:#}");
    // A discard naming another shadow discards nothing.
    let out = flowgate(
        &[
            "shadow",
            "discard",
            "--if-match",
            "\"nope\"",
            "--admin",
            &served.admin,
        ],
        "",
    );
    assert!(!out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["reason"], "stale-shadow", "{answer:#}");
    assert_eq!(
        served.status().unwrap()["staged_shadow"]["etag"],
        mine.as_str()
    );
    served.client(&["shadow", "discard", "--if-match", &mine]);

    // The tag moves back to the module serving, under a digest the watch has not acted on
    // (v1's): staged, then discarded unpromoted when the operator pauses the watch.
    let v1 = push(&r, DEFAULT_MODULE);
    served.wait_for("the watch's shadow of v1", staged);
    served.client(&["watch", "pause"]);
    let status = served.wait_for("the paused watch to discard it", |s| !staged(s));
    assert_eq!(status["shadow_ended"]["how"], "watch-paused", "{status:#}");
    assert_eq!(status["generation"], 1, "{status:#}");
    assert_eq!(status["watch"]["quarantined"].as_array().unwrap().len(), 2);

    served.client(&["watch", "resume"]);
    let status = served.wait_for("v1 staged again", staged);
    let etag = status["staged_shadow"]["etag"].as_str().unwrap().to_owned();
    let promoted = served.client(&["shadow", "promote", "--if-match", &etag]);
    assert_eq!(promoted["release"]["generation"], 2, "{promoted:#}");
    let status = served.status().unwrap();
    assert_eq!(status["cause"], "shadow-promote", "{status:#}");
    assert_eq!(status["watch"]["digest"], v1.to_string(), "{status:#}");
    assert_eq!(status["watch"]["state"], "active", "{status:#}");
}

/// A gated watch promotes only what the tag still names when the shadow's time is up: a
/// digest the tag left meanwhile (a release pulled back) is discarded, not quarantined, and
/// the tag's new digest goes through the gate in its turn. `--shadow-share 0` gives the gate
/// nothing to judge, and is refused.
#[test]
fn the_gated_watch_promotes_only_what_the_tag_still_names() {
    let Some(registry) = start() else { return };
    let (tagged, _) = tag(&registry, DEFAULT_MODULE);
    let config = format!("{SPEC_3_1}/config.yaml");
    let out = flowgate(
        &[
            "serve",
            "--config",
            &config,
            "--module",
            &tagged,
            "--pull-interval",
            "0.2",
            "--pull-shadow",
            "1",
            "--shadow-share",
            "0",
            "--duration",
            "5",
        ],
        "",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--shadow-share 0"), "{stderr}");

    let gate = ["--pull-shadow", "4", "--max-changed-share", "1"];
    let served = Served::start(&tagged, &packets_to_445(), &gate);
    let r = Reference::parse(&tagged).unwrap();
    push(&r, guests::DENY_LIST);
    served.wait_for("the watch's shadow of the deny-list", |s| {
        !s["staged_shadow"].is_null()
    });
    // Pulled back while it is judged; within the budget, it would have been promoted.
    let v2 = push(&r, guests::HONEST_V2);
    let status = served.wait_for("v2 promoted", |s| s["generation"] == 2);
    assert_eq!(
        status["module"]["sha256"],
        sha256(guests::HONEST_V2),
        "{status:#}"
    );
    assert_eq!(status["cause"], "shadow-promote");
    assert_eq!(status["watch"]["digest"], v2.to_string());
    assert_eq!(
        status["watch"]["quarantined"],
        Value::Array(vec![]),
        "{status:#}"
    );
    let (log, _) = served.stop();
    assert!(log.contains("ended (tag-moved)"), "{log}");
}
