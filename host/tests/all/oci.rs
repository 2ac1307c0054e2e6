//! Modules in a real OCI registry (Debian's `docker-registry`, the CNCF distribution registry),
//! started on a free loopback port with its own storage; `skopeo` as the independent client.
//! `.ci/run` installs both; where they are missing outside CI, these tests say so and pass.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowgate_host::oci::{Digest, OciError, Reference, Registry, RegistryOptions};
use flowgate_host::{DEFAULT_MODULE, Setting};
use flowgate_test_guests as guests;

use crate::cli::{flowgate, stdout};

const SPEC_3_1: &str = "fixtures/cases/spec-3.1-overlap/config.yaml";

/// A registry process on loopback, stopped when dropped.
pub(crate) struct TestRegistry {
    child: Child,
    pub(crate) port: u16,
    pub(crate) storage: PathBuf,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.storage);
    }
}

/// A helper process (file server, token service), stopped when dropped, even on a panic.
pub(crate) struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn installed(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing: .ci/run installs it (apt-get install docker-registry skopeo)"
        );
        eprintln!("skipped: {tool} is not installed (apt-get install docker-registry skopeo)");
    }
    found
}

/// Starts a registry, or `None` when it is not installed (outside CI).
pub(crate) fn start() -> Option<TestRegistry> {
    start_with("")
}

/// Starts a registry whose config has `extra` appended (top-level YAML).
pub(crate) fn start_with(extra: &str) -> Option<TestRegistry> {
    if !installed("docker-registry") {
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let storage = std::env::temp_dir().join(format!("flowgate-registry-{port}"));
    std::fs::create_dir_all(storage.join("data")).unwrap();
    let config = storage.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{}",
            storage.join("data").display(),
            extra.replace("STORAGE", &storage.display().to_string())
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let registry = TestRegistry {
        child,
        port,
        storage,
    };
    // Bounded wait until /v2/ answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the registry did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(registry)
}

impl TestRegistry {
    pub(crate) fn reference(&self, repo_and_tag: &str) -> String {
        format!("oci://127.0.0.1:{}/{repo_and_tag}", self.port)
    }

    /// The file the registry keeps a blob in.
    pub(crate) fn blob_file(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_string()["sha256:".len()..].to_owned();
        self.storage
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

pub(crate) fn client() -> Registry {
    Registry::new(RegistryOptions::default())
}

/// Pushes `module` under `r` with the library's client and a minimal artifact config.
pub(crate) fn push(r: &Reference, module: &[u8]) -> Digest {
    client()
        .push(r, module, br#"{"architecture":"wasm","os":"wasip2"}"#)
        .unwrap()
}

pub(crate) fn write_module(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oci");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Pushes `module` with skopeo, an independent client, from a `dir:` layout with the given
/// config and layer media types.
pub(crate) fn skopeo_push(reference: &str, module: &[u8], config_type: &str, layer_type: &str) {
    let dir = std::env::temp_dir().join(format!(
        "flowgate-skopeo-{}-{}",
        std::process::id(),
        Digest::of(reference.as_bytes())
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = br#"{"architecture":"wasm","os":"wasip2"}"#;
    let hex = |d: Digest| d.to_string()["sha256:".len()..].to_owned();
    let (config_digest, layer_digest) = (Digest::of(config), Digest::of(module));
    std::fs::write(dir.join(hex(config_digest)), config).unwrap();
    std::fs::write(dir.join(hex(layer_digest)), module).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config_type, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": layer_type, "digest": layer_digest.to_string(), "size": module.len()}],
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").unwrap();
    let target = reference.replacen("oci://", "docker://", 1);
    let out = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("dir:{}", dir.display()))
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn push_then_pull_by_tag_and_by_digest_byte_identical_and_an_independent_client_agrees() {
    let Some(registry) = start() else { return };
    let tagged = registry.reference("policies/flowgate:v1");
    let module = write_module("push.wasm", DEFAULT_MODULE);
    let out = flowgate(&["push", module.to_str().unwrap(), &tagged], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pinned = stdout(&out).trim().to_owned();
    let pinned_ref = Reference::parse(&pinned).unwrap();
    let digest = pinned_ref.digest.expect("push prints the pinned reference");

    // By tag and by digest (without the tag), through the library and the CLI.
    let by_tag = client().pull(&Reference::parse(&tagged).unwrap()).unwrap();
    assert_eq!(
        (by_tag.module.as_slice(), by_tag.manifest, by_tag.layout),
        (DEFAULT_MODULE, digest, "cncf")
    );
    let by_digest = registry.reference(&format!("policies/flowgate@{digest}"));
    let out_file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oci/pulled.wasm");
    let out = flowgate(&["pull", &by_digest, "-o", out_file.to_str().unwrap()], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&out_file).unwrap(), DEFAULT_MODULE);

    // skopeo reads the layer back byte-identical, in the CNCF layout.
    if installed("skopeo") {
        let dir = std::env::temp_dir().join(format!("flowgate-skopeo-read-{}", registry.port));
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(tagged.replacen("oci://", "docker://", 1))
            .arg(format!("dir:{}", dir.display()))
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.wasm.config.v0+json"
        );
        assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
        let layer = manifest["layers"][0]["digest"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(&layer["sha256:".len()..])).unwrap();
        assert_eq!(bytes, DEFAULT_MODULE);
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join(&config_digest["sha256:".len()..])).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (config["architecture"].as_str(), config["os"].as_str()),
            (Some("wasm"), Some("wasip2"))
        );
        assert_eq!(config["layerDigests"][0], layer);
        assert!(
            config["component"]["exports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e.as_str().unwrap().starts_with("flowgate:policy/filter@")),
            "{config}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn modules_pushed_by_another_client_run_in_each_accepted_layout() {
    let Some(registry) = start() else { return };
    if !installed("skopeo") {
        return;
    }
    let cncf = registry.reference("third/party:cncf");
    skopeo_push(
        &cncf,
        DEFAULT_MODULE,
        "application/vnd.wasm.config.v0+json",
        "application/wasm",
    );
    let istio = registry.reference("third/party:istio");
    skopeo_push(
        &istio,
        guests::DENY_LIST,
        "application/vnd.module.wasm.config.v1+json",
        "application/vnd.module.wasm.content.layer.v1+wasm",
    );
    // Istio's compat variant: one tar+gzip layer holding plugin.wasm.
    let compat = registry.reference("third/party:compat");
    let archive = {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_size(DEFAULT_MODULE.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "plugin.wasm", DEFAULT_MODULE)
            .unwrap();
        tar.into_inner().unwrap().finish().unwrap()
    };
    skopeo_push(
        &compat,
        &archive,
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.image.layer.v1.tar+gzip",
    );
    let pulled = client().pull(&Reference::parse(&compat).unwrap()).unwrap();
    assert_eq!(
        (pulled.module.as_slice(), pulled.layout),
        (DEFAULT_MODULE, "istio-compat")
    );
    let line = r#"{"src_vpc":"B","src_ip":"2.0.0.7","dst_ip":"1.0.1.9","proto":"tcp","src_port":1,"dst_port":445}"#;
    for (reference, verdict) in [(&cncf, "allow"), (&istio, "drop")] {
        let out = flowgate(
            &["check", "--module", reference, "--config", SPEC_3_1],
            line,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(got["verdict"], verdict, "{reference}: {got}");
    }
    // Anything else is refused, with what is accepted.
    let other = registry.reference("third/party:image");
    skopeo_push(
        &other,
        DEFAULT_MODULE,
        "application/vnd.oci.image.config.v1+json",
        "application/octet-stream",
    );
    let e = client()
        .pull(&Reference::parse(&other).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("accepted: a CNCF Wasm artifact"), "{e}");
}

#[test]
fn an_altered_blob_or_manifest_is_refused() {
    let Some(registry) = start() else { return };
    let tagged = registry.reference("policies/tampered:v1");
    let reference = Reference::parse(&tagged).unwrap();
    let manifest = push(&reference, DEFAULT_MODULE);
    // The layer altered on disk, same length: the registry still serves it under its digest.
    let layer = registry.blob_file(&Digest::of(DEFAULT_MODULE));
    let mut bytes = std::fs::read(&layer).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&layer, &bytes).unwrap();
    let e = client().pull(&reference).unwrap_err().to_string();
    assert!(e.contains("does not match its digest"), "{e}");
    let out = flowgate(&["check", "--module", &tagged, "--config", SPEC_3_1], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match its digest"));

    // The manifest altered on disk: a pull pinned to its digest refuses what is served.
    let manifest_file = registry.blob_file(&manifest);
    let text = std::fs::read_to_string(&manifest_file).unwrap();
    std::fs::write(
        &manifest_file,
        text.replacen("\"schemaVersion\":2", "\"schemaVersion\": 2", 1),
    )
    .unwrap();
    let e = client()
        .pull(&reference.pinned(manifest))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not the pinned"), "{e}");
}

#[test]
fn a_module_over_the_size_limit_is_refused_before_it_is_read() {
    let Some(registry) = start() else { return };
    let tagged = registry.reference("policies/big:v1");
    let reference = Reference::parse(&tagged).unwrap();
    push(&reference, DEFAULT_MODULE);
    let small = Registry::new(RegistryOptions {
        max_module_bytes: 1000,
        ..RegistryOptions::default()
    });
    let e = small.pull(&reference).unwrap_err();
    assert!(
        matches!(e, OciError::TooLarge { limit: 1000, size, .. } if size > 1000),
        "{e}"
    );
    assert_eq!(e.setting(), Some(Setting::ModuleBytes));
    assert!(e.to_string().contains("over the limit of 1000"), "{e}");
    let out = flowgate(
        &["--max-module-bytes", "1000", "info", "--module", &tagged],
        "",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("over the limit of 1000 (raise it with --max-module-bytes)"),
        "{err}"
    );
    // A tag that does not exist, and a registry that is not there, are errors, not panics.
    let missing = client().pull(&Reference::parse(&registry.reference("policies/big:v2")).unwrap());
    assert!(missing.unwrap_err().to_string().contains("404"));
    let gone = Reference::parse("oci://127.0.0.1:1/policies/big:v1").unwrap();
    assert!(client().pull(&gone).is_err());
}

#[test]
fn a_registry_with_a_basic_login() {
    if !installed("htpasswd") {
        return;
    }
    let Some(registry) = start_with_login() else {
        return;
    };
    let tagged = registry.reference("private/flowgate:v1");
    let reference = Reference::parse(&tagged).unwrap();
    let config = br#"{"architecture":"wasm","os":"wasip2"}"#;
    // Without a login: refused, saying what is missing.
    let e = client()
        .push(&reference, DEFAULT_MODULE, config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("asks for a login"), "{e}");
    let login = |password: &str| {
        Registry::new(RegistryOptions {
            credentials: [(
                format!("127.0.0.1:{}", registry.port),
                ("fleet".to_owned(), password.to_owned()),
            )]
            .into(),
            ..RegistryOptions::default()
        })
    };
    assert!(
        login("wrong")
            .push(&reference, DEFAULT_MODULE, config)
            .is_err()
    );
    let digest = login("s3cret")
        .push(&reference, DEFAULT_MODULE, config)
        .unwrap();
    assert_eq!(login("s3cret").pull(&reference).unwrap().manifest, digest);
    // The CLI with --registry-credentials, and with Docker's config.json.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oci");
    std::fs::create_dir_all(&dir).unwrap();
    let creds = dir.join("credentials");
    std::fs::write(&creds, "fleet:s3cret\n").unwrap();
    let out = flowgate(
        &[
            "--registry-credentials",
            &format!("127.0.0.1:{}={}", registry.port, creds.display()),
            "info",
            "--module",
            &tagged,
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docker = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oci/docker");
    std::fs::create_dir_all(&docker).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("fleet:s3cret");
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths": {{"127.0.0.1:{}": {{"auth": "{auth}"}}}}}}"#,
            registry.port
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["info", "--module", &tagged])
        .env("DOCKER_CONFIG", &docker)
        .env(
            "FLOWGATE_CACHE_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/cli-cache"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A registry behind htpasswd Basic auth: user `fleet`, password `s3cret`.
pub(crate) fn start_with_login() -> Option<TestRegistry> {
    let dir = std::env::temp_dir().join(format!("flowgate-htpasswd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", "fleet", "s3cret"])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&file, out.stdout).unwrap();
    start_with(&format!(
        "auth:\n  htpasswd:\n    realm: flowgate-test\n    path: {}\n",
        file.display()
    ))
}

/// A gateway on a 60-peering configuration, one worker, with traffic until `stop`.
pub(crate) fn gateway_with_traffic(
    pulled: Option<(&Reference, Digest)>,
) -> (
    std::sync::Arc<flowgate_host::gateway::Gateway>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<u64>,
) {
    use flowgate_host::gateway::{Gateway, ModuleBytes, Options};
    use flowgate_policy::synth::{self, Scale};
    let config = synth::config_yaml(Scale::with_peerings(20, 3));
    let packets: std::sync::Arc<[flowgate_policy::Packet]> =
        synth::packets(&flowgate_policy::parse(&config, None).unwrap(), 4096, 5).into();
    let module = ModuleBytes {
        bytes: DEFAULT_MODULE,
        pulled,
        signer: None,
    };
    let gateway = Gateway::new(
        crate::runtime(),
        module,
        &config,
        Options {
            workers: 1,
            ..Options::default()
        },
    )
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (gateway, stop) = (gateway.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut port = Counted {
                inner: flowgate_host::io::Trace::new(packets, 0, 50_000, None),
                sent: 0,
            };
            gateway.run_worker(0, &mut port, &stop);
            port.sent
        })
    };
    (gateway, stop, worker)
}

/// A port that counts the packets it hands out.
pub(crate) struct Counted {
    inner: flowgate_host::io::Trace,
    sent: u64,
}

impl flowgate_host::io::Port for Counted {
    fn fill(&mut self, batch: &mut Vec<flowgate_policy::Packet>, max: usize) -> usize {
        let n = self.inner.fill(batch, max);
        self.sent += n as u64;
        n
    }
}

pub(crate) fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_gateway_pulls_references_itself_and_a_watched_tag_swaps_once_when_it_moves() {
    use std::sync::atomic::Ordering;
    let Some(registry) = start() else { return };
    let tagged = registry.reference("fleet/policy:prod");
    let reference = Reference::parse(&tagged).unwrap();
    let config = br#"{"architecture":"wasm","os":"wasip2"}"#;
    let v1 = client().push(&reference, DEFAULT_MODULE, config).unwrap();
    let (gateway, stop, worker) = gateway_with_traffic(Some((&reference, v1)));

    // The admin API takes a reference, not bytes; /status and the metrics show it.
    let (_admin, admin) = crate::admin_on_socket(&gateway);
    let pinned_v2 = {
        let r = Reference::parse(&registry.reference("fleet/policy:canary")).unwrap();
        r.pinned(client().push(&r, guests::HONEST_V2, config).unwrap())
    };
    let answer = admin
        .swap_reference(&pinned_v2.to_string(), None, None, None)
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let status = admin.status().unwrap().body;
    assert_eq!(status["module"]["reference"], pinned_v2.to_string());
    assert_eq!(status["module"]["version"], "0.2.0");
    assert!(
        admin
            .metrics()
            .unwrap()
            .contains(&format!("reference=\"{pinned_v2}\""))
    );
    let bad = admin
        .swap_reference(
            &registry.reference("fleet/policy:missing"),
            None,
            None,
            None,
        )
        .unwrap();
    assert_eq!(
        (bad.status, bad.body["reason"].as_str()),
        (422, Some("pull-failed"))
    );
    // Back to v1 by rollback, then watch the tag.
    assert_eq!(admin.rollback().unwrap().status, 200);
    assert_eq!(
        gateway.current().source,
        Some(reference.pinned(v1).to_string())
    );

    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (gateway, watching, reference) = (gateway.clone(), watching.clone(), reference.clone());
        std::thread::spawn(move || {
            flowgate_host::gateway::watch::watch(
                &gateway,
                &client(),
                None,
                &reference,
                Duration::from_millis(100),
                None,
                &watching,
            )
        })
    };
    wait_for("an unchanged poll", || {
        gateway.events().pulls.contains_key("unchanged")
    });
    let generation = gateway.current().generation;
    // The tag moves: the gateway swaps once, to exactly the pushed module.
    let v2 = client()
        .push(&reference, guests::HONEST_V2, config)
        .unwrap();
    wait_for("the swap to the moved tag", || {
        gateway.current().generation > generation
    });
    let unchanged = gateway
        .events()
        .pulls
        .get("unchanged")
        .copied()
        .unwrap_or(0);
    wait_for("two more polls", || {
        gateway
            .events()
            .pulls
            .get("unchanged")
            .copied()
            .unwrap_or(0)
            >= unchanged + 2
    });
    let now = gateway.current();
    assert_eq!(now.generation, generation + 1, "one swap for one move");
    assert_eq!(now.source, Some(reference.pinned(v2).to_string()));
    assert_eq!(now.info.version, "0.2.0");
    // A module the gateway refuses under the tag: it keeps serving, and counts it.
    client()
        .push(&reference, b"not a component", config)
        .unwrap();
    wait_for("the refusal", || {
        gateway.events().pulls.contains_key("refused")
    });
    assert_eq!(gateway.current().generation, generation + 1);
    assert_eq!(gateway.events().refusals.get("not-a-component"), Some(&1));
    watching.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let sent = worker.join().unwrap();
    // Not a packet lost across the swaps: every one sent got a verdict, none a fault.
    let counters = gateway.counters();
    assert_eq!(
        (counters.packets, counters.faults),
        (sent, 0),
        "{counters:?}"
    );
    assert!(sent > 0);
}

#[test]
fn with_the_registry_down_a_cached_module_is_used_and_said_so() {
    let Some(registry) = start() else { return };
    let tagged = registry.reference("fleet/static:v1");
    let reference = Reference::parse(&tagged).unwrap();
    let digest = push(&reference, DEFAULT_MODULE);
    let cache = flowgate_host::oci::Cache::new(
        std::env::temp_dir().join(format!("flowgate-oci-cache-{}", registry.port)),
    );
    let (pulled, cached) = client().pull_or_cached(&reference, Some(&cache)).unwrap();
    assert!(!cached);
    assert_eq!(pulled.manifest, digest);
    drop(registry); // the registry is down now
    for r in [reference.clone(), reference.pinned(digest)] {
        let (pulled, cached) = client().pull_or_cached(&r, Some(&cache)).unwrap();
        assert!(cached, "{r}");
        assert_eq!(
            (pulled.module.as_slice(), pulled.manifest),
            (DEFAULT_MODULE, digest)
        );
    }
    // Without the cache, or for a reference never pulled, it is an error.
    assert!(client().pull(&reference).is_err());
    let other = Reference::parse(&tagged.replace("static:v1", "static:v9")).unwrap();
    assert!(client().pull_or_cached(&other, Some(&cache)).is_err());
}

#[test]
fn blobs_redirected_to_another_host_are_followed_and_still_verified() {
    // The registry answers blob requests with 307 to a plain file server over its storage
    // (its `redirect` middleware); that answer carries no digest header.
    let files_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(registry) = start_with(&format!(
        "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: http://127.0.0.1:{files_port}/\n"
    )) else {
        return;
    };
    let _files = Helper(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &files_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(registry.storage.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", files_port)).is_err() {
        assert!(Instant::now() < deadline, "the file server did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let reference = Reference::parse(&registry.reference("redirected/policy:v1")).unwrap();
    let digest = push(&reference, DEFAULT_MODULE);
    let pulled = client().pull(&reference).unwrap();
    assert_eq!(
        (pulled.module.as_slice(), pulled.manifest),
        (DEFAULT_MODULE, digest)
    );
    // Altered where the redirect points: refused all the same.
    let layer = registry.blob_file(&Digest::of(DEFAULT_MODULE));
    let mut bytes = std::fs::read(&layer).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&layer, bytes).unwrap();
    let e = client().pull(&reference).unwrap_err().to_string();
    assert!(e.contains("does not match its digest"), "{e}");
}

/// A token service for the registry's `token` auth: hands a signed JWT (RS256, the signing
/// certificate in `x5c`) granting what the scope asks to whoever logs in as fleet:s3cret.
/// Python's standard library and the openssl command, nothing else.
const TOKEN_SERVER: &str = r#"
import base64, http.server, json, subprocess, sys, time, urllib.parse
port, key, cert_der = int(sys.argv[1]), sys.argv[2], open(sys.argv[3], "rb").read()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
class Token(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        want = "Basic " + base64.b64encode(b"fleet:s3cret").decode()
        if self.headers.get("Authorization") != want:
            self.send_response(401); self.end_headers(); return
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        access = []
        for scope in q.get("scope", []):
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(cert_der).decode()]}
        claims = {"iss": "flowgate-test-issuer", "sub": "fleet", "aud": q.get("service", [""])[0],
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": str(now), "access": access}
        signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing.encode(),
                             capture_output=True, check=True).stdout
        body = json.dumps({"token": signing + "." + b64(sig)}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", port), Token).serve_forever()
"#;

#[test]
fn a_registry_with_bearer_tokens() {
    if !installed("openssl") || !installed("python3") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("flowgate-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, cert, der) = (
        dir.join("key.pem"),
        dir.join("cert.pem"),
        dir.join("cert.der"),
    );
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=flowgate-test-issuer", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ok = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .arg("-out")
        .arg(&der)
        .output()
        .unwrap();
    assert!(ok.status.success());
    std::fs::write(dir.join("token.py"), TOKEN_SERVER).unwrap();
    let token_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _tokens = Helper(
        Command::new("python3")
            .arg(dir.join("token.py"))
            .arg(token_port.to_string())
            .arg(&key)
            .arg(&der)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let Some(registry) = start_with(&format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: flowgate-test\n    issuer: flowgate-test-issuer\n    rootcertbundle: {}\n",
        cert.display()
    )) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", token_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the token service did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let reference = Reference::parse(&registry.reference("fleet/secure:v1")).unwrap();
    let config = br#"{"architecture":"wasm","os":"wasip2"}"#;
    // No login: the token service refuses, and so the push.
    assert!(client().push(&reference, DEFAULT_MODULE, config).is_err());
    // The token service is plain HTTP on another port: the login goes there only when that
    // host is named insecure.
    let login = Registry::new(RegistryOptions {
        credentials: [(
            format!("127.0.0.1:{}", registry.port),
            ("fleet".to_owned(), "s3cret".to_owned()),
        )]
        .into(),
        insecure: vec![format!("127.0.0.1:{token_port}")],
        ..RegistryOptions::default()
    });
    let digest = login.push(&reference, DEFAULT_MODULE, config).unwrap();
    let pulled = login.pull(&reference).unwrap();
    assert_eq!(
        (pulled.module.as_slice(), pulled.manifest),
        (DEFAULT_MODULE, digest)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reference the admin API refuses to pull for one of its limits names the setting (the
/// words no longer carry the serve flag); one it cannot find names none.
#[test]
fn an_admin_pull_refused_by_a_limit_names_its_setting() {
    let Some(registry) = start() else { return };
    let tagged = registry.reference("fleet/policy:big");
    let reference = Reference::parse(&tagged).unwrap();
    let config = br#"{"architecture":"wasm","os":"wasip2"}"#;
    client().push(&reference, DEFAULT_MODULE, config).unwrap();
    let gateway = flowgate_host::gateway::Gateway::new(
        crate::runtime(),
        DEFAULT_MODULE,
        flowgate_host::DEFAULT_CONFIG,
        flowgate_host::gateway::Options {
            workers: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let endpoint = flowgate_host::admin::Endpoint::Unix(crate::socket_path("admin-pull"));
    let mut options = flowgate_host::admin::AdminOptions::new(endpoint.clone(), None);
    options.registry = RegistryOptions {
        max_module_bytes: 1000,
        ..RegistryOptions::default()
    };
    let _server = flowgate_host::admin::AdminServer::start(gateway.clone(), options).unwrap();
    let admin = flowgate_host::admin::Client::new(endpoint, None);
    let big = admin.swap_reference(&tagged, None, None, None).unwrap();
    assert_eq!(
        (
            big.status,
            big.body["reason"].as_str(),
            big.body["setting"].as_str()
        ),
        (422, Some("pull-failed"), Some("module-bytes")),
        "{}",
        big.body
    );
    let missing = admin
        .swap_reference(
            &registry.reference("fleet/policy:missing"),
            None,
            None,
            None,
        )
        .unwrap();
    assert_eq!(missing.status, 422, "{}", missing.body);
    assert!(missing.body.get("setting").is_none(), "{}", missing.body);
    assert_eq!(gateway.current().generation, 1);
}
