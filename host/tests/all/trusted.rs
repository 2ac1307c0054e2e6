//! Gateways and commands given `--trusted-key`: no module is compiled unless a trusted key
//! signed it. Modules from a real registry (Debian's `docker-registry`) carry cosign
//! signatures made by skopeo (the fixtures) or by the tests' own signer (p256 directly, the
//! manifest laid out by hand); local files carry detached signatures made the same way.
//! A module refused for its signatures is refused before it is compiled: the fixtures'
//! modules are core Wasm modules, which the gateway would otherwise refuse as
//! `not-a-component`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flowgate_host::DEFAULT_MODULE;
use flowgate_host::oci::{Digest, Reference};
use flowgate_test_guests as guests;
use serde_json::Value;

use crate::authority::Served;
use crate::cli::flowgate;
use crate::oci::{TestRegistry, start};
use crate::signing::{
    SIGNED_REGISTRY, cases, detached, expected_check, key_path, load, refusal_words,
    sign_in_registry, write_public_key,
};
use flowgate_host::oci::SignatureCheck;

const SPEC_3_1: &str = "fixtures/cases/spec-3.1-overlap";

fn spec_packets() -> String {
    std::fs::read_to_string(crate::repo().join(SPEC_3_1).join("packets.jsonl")).unwrap()
}

/// A folder of the test's own.
fn scratch(what: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("trusted-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tests' signing key (see `signing::test_key`), its public half in `dir/test.pub`,
/// and the SHA-256 of that public key's DER as an independent reading of the PEM gives it.
fn test_signer(dir: &Path) -> (p256::ecdsa::SigningKey, String, Digest) {
    use base64::Engine as _;
    let (key, _) = crate::signing::test_key();
    let path = dir.join("test.pub");
    write_public_key(&key, &path);
    let pem = std::fs::read_to_string(&path).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    (key, path.display().to_string(), Digest::of(&der))
}

/// `flowgate ARGS` against `served`'s admin API: its exit status and JSON answer.
fn ask(served: &Served, args: &[&str]) -> (bool, Value, String) {
    let mut all = args.to_vec();
    all.extend(["--admin", &served.admin]);
    let out = flowgate(&all, "");
    let body = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), body, stderr)
}

/// The count of signature checks of `result`, as `/status` gives it (0 when absent).
fn checks(served: &Served, result: SignatureCheck) -> u64 {
    let out = flowgate(&["status", "--admin", &served.admin], "");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    status["events"]["signatures"][result.as_str()]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn every_fixture_case_gets_its_expected_verdict_from_serve_and_swap() {
    let Some(registry) = start() else { return };
    let trusted = key_path("trusted");
    let trusted = trusted.to_str().unwrap();
    // Each case in a repository of its own, remapped to the one it was signed for.
    let mut loaded = Vec::new();
    let mut remaps = Vec::new();
    for case in cases() {
        let repository = format!(
            "{}/{}",
            case.name,
            case.json["repository"].as_str().unwrap()
        );
        let r = load(&registry, &repository, &case);
        remaps.push(format!(
            "127.0.0.1:{}/{}={SIGNED_REGISTRY}",
            registry.port, case.name
        ));
        loaded.push((case, r));
    }
    let mut keys = vec!["--trusted-key", trusted];
    for remap in &remaps {
        keys.extend(["--remap-identity", remap.as_str()]);
    }
    // The gateway starts on the bundled module, let in by --allow-unsigned-local; every
    // module from the registry must still be signed.
    let mut args = keys.clone();
    args.push("--allow-unsigned-local");
    let served = Served::spawn(&spec_packets(), &args);

    for (case, r) in &loaded {
        let want = expected_check(&case.name);
        let pinned = r.pinned(case.digest);
        for asked in [r.to_string(), pinned.to_string()] {
            // The gateway checks the reference it is given.
            let (ok, answer, stderr) = ask(&served, &["swap", &asked]);
            assert!(!ok, "{}: {answer:#} {stderr}", case.name);
            let error = answer["error"].as_str().unwrap_or_default();
            if want == SignatureCheck::Signed {
                // Signed: on to the module itself, which is not a component.
                assert_eq!(
                    answer["reason"], "not-a-component",
                    "{}: {answer:#}",
                    case.name
                );
            } else {
                assert_eq!(
                    answer["reason"], "signature-refused",
                    "{}: {answer:#}",
                    case.name
                );
                assert_eq!(answer["signature"], want.as_str(), "{}", case.name);
                for part in [
                    asked.as_str(),
                    &case.digest.to_string(),
                    refusal_words(want),
                ] {
                    assert!(error.contains(part), "{}: {part} in {error}", case.name);
                }
            }

            // `flowgate swap --trusted-key` checks before it asks the gateway.
            let mut client = vec!["swap", asked.as_str()];
            client.extend(&keys);
            let (ok, answer, stderr) = ask(&served, &client);
            assert!(!ok, "{}", case.name);
            if want == SignatureCheck::Signed {
                assert_eq!(
                    answer["reason"], "not-a-component",
                    "{}: {stderr}",
                    case.name
                );
            } else {
                assert_eq!(
                    answer,
                    Value::Null,
                    "{}: the gateway was not asked",
                    case.name
                );
                assert!(
                    stderr.contains(refusal_words(want)),
                    "{}: {stderr}",
                    case.name
                );
            }
        }
    }
    let status = served.status().unwrap();
    assert_eq!(status["generation"], 1, "nothing went live: {status:#}");
    // Each refused case twice (by tag, by digest), counted by the check's result.
    for (check, cases) in [
        (SignatureCheck::Untrusted, 2),
        (SignatureCheck::OtherRepository, 1),
        (SignatureCheck::OtherDigest, 1),
        (SignatureCheck::Unsigned, 1),
    ] {
        assert_eq!(checks(&served, check), 2 * cases, "{check:?}: {status:#}");
    }
    let socket = served.admin.strip_prefix("unix:").unwrap();
    let metrics = flowgate_host::admin::Client::new(
        flowgate_host::admin::Endpoint::Unix(socket.into()),
        None,
    )
    .metrics()
    .unwrap();
    assert!(
        metrics.contains("flowgate_signature_checks_total{result=\"untrusted\"} 4"),
        "{metrics}"
    );
    // Each signed case four times: by the gateway for both clients, by tag and by digest.
    assert_eq!(checks(&served, SignatureCheck::Signed), 2 * 4, "{status:#}");
    // The five refused cases, by tag and by digest, from the client without keys only.
    assert_eq!(
        status["events"]["refusals"]["signature-refused"],
        2 * 5,
        "{status:#}"
    );
    drop(served);

    // `serve --trusted-key` starting on each case: refused before anything is compiled.
    for (case, r) in &loaded {
        let want = expected_check(&case.name);
        let mut args = vec![
            "serve",
            "--module",
            &r.to_string(),
            "--config",
            "fixtures/cases/spec-3.1-overlap/config.yaml",
            "--duration",
            "0.1",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.extend(keys.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = flowgate(&args, "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", case.name);
        if want == SignatureCheck::Signed {
            assert!(
                stderr.contains("not a component"),
                "{}: {stderr}",
                case.name
            );
            assert!(
                !stderr.contains("signature refused"),
                "{}: {stderr}",
                case.name
            );
        } else {
            for part in [
                &r.to_string(),
                &case.digest.to_string(),
                refusal_words(want),
            ] {
                assert!(stderr.contains(part), "{}: {part} in {stderr}", case.name);
            }
        }
    }
}

/// `module` pushed as `repo:tag` and signed there by `key` as `HOST:PORT/REPO:TAG`.
fn push_signed(
    registry: &TestRegistry,
    repo_tag: &str,
    module: &[u8],
    key: Option<&p256::ecdsa::SigningKey>,
) -> (String, Digest) {
    let text = registry.reference(repo_tag);
    let r = Reference::parse(&text).unwrap();
    // Signed before the tag names it, as `push --sign-key` does: a watching gateway never
    // sees it unsigned.
    let (digest, manifest) = crate::oci::client()
        .push_untagged(&r, module, b"{}")
        .unwrap();
    if let Some(key) = key {
        let identity = text.strip_prefix("oci://").unwrap();
        sign_in_registry(&r, digest, key, identity);
    }
    let tag = r.tag.as_deref().unwrap();
    let tagged = crate::oci::client()
        .put_manifest(&r, tag, &manifest, flowgate_host::oci::OCI_MANIFEST)
        .unwrap();
    assert_eq!(tagged, digest);
    (text, digest)
}

#[test]
fn a_gateway_with_a_trusted_key_runs_only_signed_modules_by_reference_watch_and_upload() {
    let Some(registry) = start() else { return };
    let dir = scratch("gateway");
    let (key, public, fingerprint) = test_signer(&dir);
    let (tag, first) = push_signed(&registry, "fleet/policy:prod", DEFAULT_MODULE, Some(&key));
    let audit = dir.join("audit.jsonl");
    let served = Served::spawn(
        &spec_packets(),
        &[
            "--module",
            &tag,
            "--pull-interval",
            "0.2",
            "--trusted-key",
            &public,
            "--audit-log",
            audit.to_str().unwrap(),
        ],
    );
    let status = served.status().unwrap();
    let signer = &status["module"]["signer"];
    assert_eq!(signer["fingerprint"], fingerprint.to_string(), "{status:#}");
    assert_eq!(signer["key"], public.as_str());
    assert_eq!(signer["signed_digest"], first.to_string());
    assert_eq!(signer["detached"], false);
    let socket = served.admin.strip_prefix("unix:").unwrap();
    let metrics = flowgate_host::admin::Client::new(
        flowgate_host::admin::Endpoint::Unix(socket.into()),
        None,
    )
    .metrics()
    .unwrap();
    assert!(
        metrics.contains(&format!("fingerprint=\"{fingerprint}\"")),
        "{metrics}"
    );

    // The tag moves to an unsigned module: the watch refuses and quarantines it.
    let (_, unsigned) = push_signed(&registry, "fleet/policy:prod", guests::HONEST_V2, None);
    let status = served.wait_for("the unsigned digest quarantined", |s| {
        s["watch"]["quarantined"]
            .as_array()
            .is_some_and(|q| q.iter().any(|d| d["digest"] == unsigned.to_string()))
    });
    assert_eq!(status["generation"], 1, "{status:#}");
    assert!(checks(&served, SignatureCheck::Unsigned) >= 1);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(served.status().unwrap()["generation"], 1);

    // The tag moves to a signed module: taken, its signer shown.
    let (_, signed) = push_signed(
        &registry,
        "fleet/policy:prod",
        guests::DENY_LIST,
        Some(&key),
    );
    let status = served.wait_for("the signed digest taken", |s| s["generation"] == 2);
    assert_eq!(status["module"]["reference"], format!("{tag}@{signed}"));
    assert_eq!(
        status["module"]["signer"]["signed_digest"],
        signed.to_string()
    );

    // An operator's reference to an unsigned module: refused, nothing changes.
    let (other, _) = push_signed(&registry, "fleet/other:v1", guests::HONEST_V2, None);
    let (ok, answer, _) = ask(&served, &["swap", &other]);
    assert!(!ok);
    assert_eq!(
        (&answer["reason"], &answer["signature"]),
        (&Value::from("signature-refused"), &Value::from("unsigned")),
        "{answer:#}"
    );

    // Uploads: without a detached signature, with one by another key, with one of other
    // bytes, all refused; with a good one, taken.
    let file = dir.join("v2.wasm");
    std::fs::write(&file, guests::HONEST_V2).unwrap();
    let file = file.to_str().unwrap();
    let sig = format!("{file}.sig");
    let (ok, answer, _) = ask(&served, &["swap", file]);
    assert!(!ok);
    assert_eq!(answer["reason"], "signature-refused", "{answer:#}");
    let stranger = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
    for (signature, check) in [
        (
            detached(&stranger, guests::HONEST_V2, "v2.wasm"),
            "untrusted",
        ),
        (detached(&key, guests::DENY_LIST, "v2.wasm"), "other-digest"),
    ] {
        std::fs::write(&sig, signature).unwrap();
        let (ok, answer, _) = ask(&served, &["swap", file]);
        assert!(!ok);
        assert_eq!(
            (&answer["reason"], &answer["signature"]),
            (&Value::from("signature-refused"), &Value::from(check)),
            "{answer:#}"
        );
    }
    assert_eq!(served.status().unwrap()["generation"], 2);
    std::fs::write(&sig, detached(&key, guests::HONEST_V2, "v2.wasm")).unwrap();
    let (ok, answer, stderr) = ask(&served, &["swap", file]);
    assert!(ok, "{answer:#} {stderr}");
    let release = &answer["release"];
    assert_eq!(release["generation"], 3, "{answer:#}");
    assert_eq!(release["module"]["signer"]["detached"], true, "{answer:#}");
    assert_eq!(
        release["module"]["signer"]["signed_digest"],
        Digest::of(guests::HONEST_V2).to_string()
    );

    // A rollback goes back to the release the watch took, signer and all.
    let (ok, answer, _) = ask(&served, &["rollback"]);
    assert!(ok, "{answer:#}");
    assert_eq!(
        answer["release"]["module"]["signer"]["signed_digest"],
        signed.to_string()
    );
    assert_eq!(answer["release"]["module"]["signer"]["detached"], false);

    // A reference whose tag no longer names the digest a client checked: refused, 412.
    let socket = served.admin.strip_prefix("unix:").unwrap();
    let client = flowgate_host::admin::Client::new(
        flowgate_host::admin::Endpoint::Unix(socket.into()),
        None,
    );
    let moved = client
        .swap_reference(&tag, Some(&first.to_string()), None, None)
        .unwrap();
    assert_eq!(moved.status, 412, "{:?}", moved.body);
    assert_eq!(moved.body["reason"], "reference-moved");
    assert_eq!(served.status().unwrap()["generation"], 4);

    // The audit trail: every upload and reference asked for, on the socket by this user,
    // the refusals with their reason, the change with the key that signed it; and the
    // watch's, as the gateway's own: the unsigned digest refused, the signed one taken.
    use crate::audit::requests_and_results;
    let (own, records): (Vec<Value>, Vec<Value>) = crate::audit::records(&audit)
        .into_iter()
        .partition(|r| r["caller"]["transport"] == "gateway");
    assert_eq!(
        requests_and_results(&own),
        [
            ("tag watch: swap", "signature-refused"),
            ("tag watch: swap", "changed"),
        ]
    );
    assert_eq!(
        requests_and_results(&records),
        [
            ("PUT /module", "signature-refused"),
            ("PUT /module", "signature-refused"),
            ("PUT /module", "signature-refused"),
            ("PUT /module", "signature-refused"),
            ("PUT /module", "changed"),
            ("POST /rollback", "changed"),
            ("PUT /module", "reference-moved"),
        ],
        "{records:#?}"
    );
    let uid = nix::unistd::getuid().as_raw();
    for record in &records[..6] {
        assert_eq!(record["caller"]["uid"], uid, "{record:#}");
    }
    assert_eq!(
        records[5]["signing_key"]["signed_digest"],
        signed.to_string(),
        "the rollback's record names the key of the module it brings back"
    );
    assert_eq!(records[0]["signing_key"], Value::Null);
    let last = &records[4];
    assert_eq!(
        last["signing_key"]["fingerprint"],
        fingerprint.to_string(),
        "{last:#}"
    );
    assert_eq!(last["after"]["generation"], 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn commands_with_a_trusted_key_need_signed_modules() {
    let Some(registry) = start() else { return };
    let dir = scratch("commands");
    let (key, public, _) = test_signer(&dir);
    let module = dir.join("m.wasm");
    std::fs::write(&module, DEFAULT_MODULE).unwrap();
    let module = module.to_str().unwrap();
    let config = format!("{SPEC_3_1}/config.yaml");
    let packets = format!("{SPEC_3_1}/packets.jsonl");
    let explain_packet = "B 2.0.0.7:40000 -> 1.0.1.9:80 tcp";
    let runs = |module: &str| -> Vec<Vec<String>> {
        [
            vec![
                "check",
                "--module",
                module,
                "--config",
                &config,
                "--packets",
                &packets,
            ],
            vec![
                "run",
                "--module",
                module,
                "--config",
                &config,
                "--packets",
                &packets,
            ],
            vec!["test", module, SPEC_3_1],
            vec![
                "explain",
                "--module",
                module,
                "--config",
                &config,
                explain_packet,
            ],
            vec!["diff", module, module, "--config", &config],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(str::to_owned).collect())
        .collect()
    };
    let with = |args: &[String], extra: &[&str]| {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(extra);
        flowgate(&all, "")
    };
    for args in runs(module) {
        // Without keys, as before.
        let out = with(&args, &[]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // With a key, no signature beside the file: refused.
        let out = with(&args, &["--trusted-key", &public]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("unsigned: no detached signature") && stderr.contains("m.wasm.sig"),
            "{args:?}: {stderr}"
        );
        // Let in for development, loudly.
        let out = with(&args, &["--trusted-key", &public, "--allow-unsigned-local"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("development only"), "{args:?}: {stderr}");
    }
    // The bundled module carries no signature either.
    let out = flowgate(
        &["check", "--config", &config, "--trusted-key", &public],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the bundled module is not signed"));

    // Signed beside it: every command runs it.
    std::fs::write(
        format!("{module}.sig"),
        detached(&key, DEFAULT_MODULE, "m.wasm"),
    )
    .unwrap();
    for args in runs(module) {
        let out = with(&args, &["--trusted-key", &public]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // From the registry: unsigned refused, signed pulled (and kept in the cache with its
    // signer, which stands in for the registry once it is gone, for the key that signed it
    // only).
    // (Another module: a signature is over a manifest digest, whatever tag names it.)
    let (unsigned, _) = push_signed(&registry, "cmd/policy:unsigned", guests::HONEST_V2, None);
    let (signed, digest) = push_signed(&registry, "cmd/policy:v1", DEFAULT_MODULE, Some(&key));
    let cache = dir.join("cache");
    let pull = |reference: &str, key: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args([
                "check",
                "--module",
                reference,
                "--config",
                &config,
                "--packets",
                &packets,
            ])
            .args(["--trusted-key", key])
            .current_dir(crate::repo())
            .env("FLOWGATE_CACHE_DIR", &cache)
            .output()
            .unwrap()
    };
    let out = pull(&unsigned, &public);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unsigned") && stderr.contains(&unsigned),
        "{stderr}"
    );
    let out = pull(&signed, &public);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pinned = format!("{signed}@{digest}").replace(":v1@", "@");
    // The unsigned module, cached by a pull that checked no signatures.
    let unsigned_pinned = {
        let (_, d) = crate::oci::client()
            .manifest(&Reference::parse(&unsigned).unwrap())
            .unwrap();
        format!("{unsigned}@{d}").replace(":unsigned@", "@")
    };
    let keyless = std::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["pull", &unsigned_pinned, "-o"])
        .arg(dir.join("pulled.wasm"))
        .env("FLOWGATE_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert!(keyless.status.success());
    drop(registry);
    let out = pull(&pinned, &public);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("using the module cached"), "{stderr}");
    let other = key_path("other");
    for (reference, key, why) in [
        (&pinned, other.to_str().unwrap(), "not a key trusted now"),
        (&unsigned_pinned, &public, "no signer is recorded"),
    ] {
        let out = pull(reference, key);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(why), "{why}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_reloads_a_module_file_only_with_its_signature() {
    let dir = scratch("sighup");
    let (key, public, _) = test_signer(&dir);
    let module = dir.join("m.wasm");
    std::fs::write(&module, DEFAULT_MODULE).unwrap();
    let sig = dir.join("m.wasm.sig");
    std::fs::write(&sig, detached(&key, DEFAULT_MODULE, "m.wasm")).unwrap();
    let module = module.to_str().unwrap();
    let served = Served::spawn(
        &spec_packets(),
        &["--module", module, "--trusted-key", &public],
    );
    let status = served.status().unwrap();
    assert_eq!(status["module"]["signer"]["detached"], true, "{status:#}");

    // A new module beside the old signature: SIGHUP refuses it, the release serves on.
    std::fs::write(module, guests::HONEST_V2).unwrap();
    assert!(crate::signal(served.pid(), "HUP"));
    let status = served.wait_for("the refusal counted", |s| {
        s["events"]["refusals"]["signature-refused"] == 1
    });
    assert_eq!(status["generation"], 1);
    assert_eq!(
        status["events"]["signatures"]["other-digest"], 1,
        "{status:#}"
    );
    assert!(
        served.log().contains("SIGHUP's swap refused"),
        "{}",
        served.log()
    );

    // Signed: SIGHUP takes it.
    std::fs::write(&sig, detached(&key, guests::HONEST_V2, "m.wasm")).unwrap();
    assert!(crate::signal(served.pid(), "HUP"));
    let status = served.wait_for("the signed module live", |s| s["generation"] == 2);
    assert_eq!(
        status["module"]["signer"]["signed_digest"],
        Digest::of(guests::HONEST_V2).to_string()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_signer_vouches_only_for_the_bytes_its_pull_brought() {
    use flowgate_host::gateway::{Gateway, ModuleBytes, Options, SwapError};
    use flowgate_host::oci::Trust;
    let Some(registry) = start() else { return };
    let (key, trusted) = crate::signing::test_key();
    let (text, digest) = push_signed(&registry, "bytes/policy:v1", DEFAULT_MODULE, Some(&key));
    let r = Reference::parse(&text).unwrap();
    let trust = std::sync::Arc::new(Trust::new(vec![trusted]));
    let verified = trust.verify(&crate::oci::client(), &r, digest).unwrap();
    let (pulled, signer, _) = trust.pull(&crate::oci::client(), &r, None).unwrap();
    let local = trust
        .verify_detached(
            "m.wasm",
            DEFAULT_MODULE,
            "m.wasm.sig",
            Some(&detached(&key, DEFAULT_MODULE, "m.wasm")),
        )
        .unwrap();
    let config = std::fs::read_to_string(crate::repo().join(SPEC_3_1).join("config.yaml")).unwrap();
    let start = |module: ModuleBytes<'_>| {
        let options = Options {
            workers: 1,
            trust: Some(trust.clone()),
            ..Options::default()
        };
        Gateway::new(crate::runtime(), module, &config, options)
    };
    for (what, module, check) in [
        (
            "a signer from a check that saw no bytes",
            ModuleBytes::pulled(DEFAULT_MODULE, &r, digest).signed(Some(&verified)),
            SignatureCheck::OtherDigest,
        ),
        (
            "a pull's signer with other bytes",
            ModuleBytes::pulled(guests::HONEST_V2, &r, digest).signed(Some(&signer)),
            SignatureCheck::OtherDigest,
        ),
        (
            "a detached signer for a pulled module",
            ModuleBytes::pulled(DEFAULT_MODULE, &r, digest).signed(Some(&local)),
            SignatureCheck::Malformed,
        ),
        (
            "a pull's signer for an upload",
            ModuleBytes::from(DEFAULT_MODULE).signed(Some(&signer)),
            SignatureCheck::Malformed,
        ),
        (
            "no signer",
            ModuleBytes::from(DEFAULT_MODULE),
            SignatureCheck::Unsigned,
        ),
    ] {
        match start(module) {
            Err(SwapError::Unsigned { check: got, .. }) => assert_eq!(got, check, "{what}"),
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("{what}: started"),
        }
    }
    // The pull's own signer with the bytes it brought, and a detached signer with its file.
    let gateway =
        start(ModuleBytes::pulled(&pulled.module, &r, digest).signed(Some(&signer))).unwrap();
    assert_eq!(gateway.current().signer.as_ref(), Some(&signer));
    let gateway = start(ModuleBytes::from(DEFAULT_MODULE).signed(Some(&local))).unwrap();
    assert_eq!(gateway.current().signer.as_ref(), Some(&local));
}

/// The gated watch checks signatures before it stages anything: an unsigned digest is
/// quarantined and never judged as a shadow; a signed one is staged, judged, and promoted
/// with its signer.
#[test]
fn the_gated_watch_stages_only_signed_modules() {
    let Some(registry) = start() else { return };
    let dir = scratch("gated");
    let (key, public, _) = test_signer(&dir);
    let (tag, _) = push_signed(&registry, "fleet/policy:prod", DEFAULT_MODULE, Some(&key));
    let served = Served::spawn(
        &spec_packets(),
        &[
            "--module",
            &tag,
            "--pull-interval",
            "0.2",
            "--pull-shadow",
            "0.5",
            "--max-changed-share",
            "1",
            "--trusted-key",
            &public,
        ],
    );
    let (_, unsigned) = push_signed(&registry, "fleet/policy:prod", guests::HONEST_V2, None);
    let status = served.wait_for("the unsigned digest quarantined", |s| {
        s["watch"]["quarantined"][0]["digest"] == unsigned.to_string()
    });
    assert_eq!(
        status["watch"]["quarantined"][0]["reason"], "refused: signature-refused",
        "{status:#}"
    );
    assert!(status["shadow_ended"].is_null(), "never staged: {status:#}");
    assert!(status["staged_shadow"].is_null(), "{status:#}");

    let (_, signed) = push_signed(
        &registry,
        "fleet/policy:prod",
        guests::DENY_LIST,
        Some(&key),
    );
    let status = served.wait_for("the signed digest promoted", |s| s["generation"] == 2);
    assert_eq!(status["cause"], "shadow-promote", "{status:#}");
    assert_eq!(
        status["module"]["signer"]["signed_digest"],
        signed.to_string()
    );
    assert!(
        status["shadow"]["packets"].as_u64().unwrap() > 0,
        "{status:#}"
    );
}
