//! Cosign signatures made by an independent signer (upstream skopeo 1.9.3 with sigstore
//! support), in `fixtures/signing/`: every case uploaded byte for byte into a real registry
//! (`docker-registry` on loopback), then verified by the library and by `flowgate verify`,
//! each getting the verdict its `case.json` expects (skopeo's `sigstoreSigned` with
//! `signedIdentity: matchRepository`, trusting only `trusted.pub`).
//!
//! The fixtures were signed as `127.0.0.1:29810/policies/filter:v1`; the test registry runs on
//! another port, so each verification remaps the identity as skopeo's `remapIdentity` does.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use flowgate_host::oci::{
    Digest, IdentityRemap, KeyError, Reference, Refusal, SIGNATURE_ANNOTATION, SIMPLE_SIGNING,
    SignatureCheck, Trust, TrustedKey, signature_tag,
};

use crate::cli::{flowgate, stdout};
use crate::oci::{TestRegistry, client, start};

/// Where the signed identities say the fixtures were pushed.
pub(crate) const SIGNED_REGISTRY: &str = "127.0.0.1:29810";

pub(crate) fn fixtures() -> PathBuf {
    crate::repo().join("fixtures/signing")
}

pub(crate) fn key_path(name: &str) -> PathBuf {
    fixtures().join(format!("{name}.pub"))
}

fn key(name: &str) -> TrustedKey {
    TrustedKey::read(&key_path(name)).unwrap()
}

/// The SHA-256 of a PEM public key's DER, computed here from the file's base64 body.
pub(crate) fn fingerprint(name: &str) -> Digest {
    let pem = std::fs::read_to_string(key_path(name)).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Digest::of(
        &base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap(),
    )
}

/// A case as its files describe it.
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) json: serde_json::Value,
    pub(crate) digest: Digest,
}

pub(crate) fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = std::fs::read_dir(fixtures().join("cases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|dir| {
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
            let digest =
                Digest::parse(&std::fs::read_to_string(dir.join("manifest.digest")).unwrap())
                    .unwrap();
            Case {
                name: json["case"].as_str().unwrap().to_owned(),
                dir,
                json,
                digest,
            }
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(cases.len(), 7, "the fixtures' cases");
    cases
}

/// Uploads every blob the manifest `name` in `dir` names, then the manifest itself, byte for
/// byte, under `tag`. Returns its digest.
pub(crate) fn upload_manifest(r: &Reference, dir: &Path, name: &str, tag: &str) -> Digest {
    let bytes = std::fs::read(dir.join(name)).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let registry = client();
    let descriptors = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().unwrap())
        .collect::<Vec<_>>();
    for descriptor in descriptors {
        let digest = Digest::parse(descriptor["digest"].as_str().unwrap()).unwrap();
        let hex = &digest.to_string()["sha256:".len()..];
        let blob = std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(registry.upload(r, &blob).unwrap(), digest);
    }
    let media = manifest["mediaType"].as_str().unwrap();
    let digest = registry.put_manifest(r, tag, &bytes, media).unwrap();
    assert_eq!(digest, Digest::of(&bytes));
    digest
}

/// Loads `case` into `repository` of `registry` as load.py does: the artifact under its tag,
/// the signature manifest (if any) under `sha256-<hex>.sig`. Returns the reference by tag.
pub(crate) fn load(registry: &TestRegistry, repository: &str, case: &Case) -> Reference {
    let tag = case.json["tag"].as_str().unwrap();
    let r = Reference::parse(&registry.reference(&format!("{repository}:{tag}"))).unwrap();
    let digest = upload_manifest(&r, &case.dir, "manifest.json", tag);
    assert_eq!(digest, case.digest, "{}: the manifest as served", case.name);
    if case.dir.join("sig-manifest.json").is_file() {
        upload_manifest(&r, &case.dir, "sig-manifest.json", &signature_tag(&digest));
    }
    r
}

/// The kind of refusal the fixtures' README gives each refused case.
pub(crate) fn expected_check(case: &str) -> SignatureCheck {
    match case {
        "good" | "two-signatures" => SignatureCheck::Signed,
        "other-key" | "tampered-payload" => SignatureCheck::Untrusted,
        "other-repo" => SignatureCheck::OtherRepository,
        "replayed" => SignatureCheck::OtherDigest,
        "unsigned" => SignatureCheck::Unsigned,
        other => panic!("a case the test does not know: {other}"),
    }
}

/// What `flowgate verify`'s refusal says for each kind.
pub(crate) fn refusal_words(check: SignatureCheck) -> &'static str {
    match check {
        SignatureCheck::Untrusted => "unknown key or bad signature",
        SignatureCheck::OtherRepository => "signed for another repository",
        SignatureCheck::OtherDigest => "signed for another manifest digest",
        SignatureCheck::Unsigned => "unsigned",
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_fixture_case_gets_its_expected_verdict_from_the_library_and_the_cli() {
    let Some(registry) = start() else { return };
    let trusted = fingerprint("trusted");
    for case in cases() {
        // A repository per case (good and tampered-payload share a digest, so a .sig tag),
        // mapped to the signed one: 127.0.0.1:PORT/CASE/policies/filter was signed as
        // 127.0.0.1:29810/policies/filter.
        let repository = format!(
            "{}/{}",
            case.name,
            case.json["repository"].as_str().unwrap()
        );
        let by_tag = load(&registry, &repository, &case);
        let prefix = format!("127.0.0.1:{}/{}", registry.port, case.name);
        let remap = format!("{prefix}={SIGNED_REGISTRY}");
        let trust = Trust::new(vec![key("trusted")]).remap(IdentityRemap::parse(&remap).unwrap());
        let want = expected_check(&case.name);
        assert_eq!(
            case.json["expected"].as_str().unwrap(),
            if want == SignatureCheck::Signed {
                "accept"
            } else {
                "refuse"
            },
            "{}: case.json and the README agree",
            case.name
        );
        let pinned = by_tag.pinned(case.digest);
        for r in [&by_tag, &pinned] {
            let result = trust.verify(&client(), r, case.digest);
            match (&result, want) {
                (Ok(signer), SignatureCheck::Signed) => {
                    assert_eq!(signer.fingerprint(), trusted, "{}", case.name);
                    assert_eq!(signer.key(), key_path("trusted").display().to_string());
                    assert_eq!(signer.identity(), case.json["identity"].as_str().unwrap());
                    let layer = case.json["signatures"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|s| s["key"] == "trusted")
                        .unwrap()["layer"]
                        .as_u64()
                        .unwrap();
                    assert_eq!(signer.layer(), Some(layer as usize), "{}", case.name);
                }
                (Err(e), want) if want != SignatureCheck::Signed => {
                    assert_eq!(e.check(), want, "{}: {e}", case.name);
                    assert_eq!(e.digest, case.digest);
                    let text = e.to_string();
                    assert!(
                        text.contains(&r.to_string()) && text.contains(&case.digest.to_string()),
                        "{}: the refusal names the reference and the digest: {text}",
                        case.name
                    );
                }
                _ => panic!("{}: expected {want:?}, got {result:?}", case.name),
            }
        }

        // The CLI, by tag: it fetches the manifest itself.
        let key = key_path("trusted");
        let out = flowgate(
            &[
                "verify",
                &by_tag.to_string(),
                "--key",
                key.to_str().unwrap(),
                "--remap-identity",
                &remap,
            ],
            "",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        if want == SignatureCheck::Signed {
            assert!(out.status.success(), "{}: {stderr}", case.name);
            assert_eq!(
                stdout(&out).trim(),
                format!(
                    "{pinned}: signed by {} ({trusted}) as {}",
                    key.display(),
                    case.json["identity"].as_str().unwrap()
                )
            );
        } else {
            assert_eq!(out.status.code(), Some(1), "{}: {stderr}", case.name);
            assert!(stdout(&out).is_empty());
            for part in [
                &by_tag.to_string(),
                &case.digest.to_string(),
                refusal_words(want),
            ] {
                assert!(stderr.contains(part), "{}: {part} in {stderr}", case.name);
            }
            // A trusted signature for another repository: the hint names the remap.
            assert_eq!(
                stderr
                    .contains("(a mirror of the repository signed is named with --remap-identity"),
                want == SignatureCheck::OtherRepository,
                "{stderr}"
            );
        }
    }
}

#[test]
fn the_identity_is_checked_remapped_by_port_and_not_at_all_without_a_remap() {
    let Some(registry) = start() else { return };
    let good = cases().into_iter().find(|c| c.name == "good").unwrap();
    let r = load(&registry, "policies/filter", &good);
    let trusted = || Trust::new(vec![key("trusted")]);
    // Served on another port than the one signed: refused as another repository...
    let e = trusted().verify(&client(), &r, good.digest).unwrap_err();
    assert_eq!(e.check(), SignatureCheck::OtherRepository, "{e}");
    assert!(
        e.to_string()
            .contains(&format!("{SIGNED_REGISTRY}/policies/filter")),
        "{e}"
    );
    // ... accepted with the port remapped, as skopeo's remapIdentity does ...
    let by_port =
        IdentityRemap::parse(&format!("127.0.0.1:{}={SIGNED_REGISTRY}", registry.port)).unwrap();
    let signer = trusted()
        .remap(by_port.clone())
        .verify(&client(), &r, good.digest)
        .unwrap();
    assert_eq!(signer.identity(), "127.0.0.1:29810/policies/filter:v1");
    // ... and a remap to another repository does not make it match.
    let elsewhere = IdentityRemap::parse(&format!(
        "127.0.0.1:{}={SIGNED_REGISTRY}/mirror",
        registry.port
    ))
    .unwrap();
    let e = trusted()
        .remap(elsewhere)
        .verify(&client(), &r, good.digest)
        .unwrap_err();
    assert_eq!(e.check(), SignatureCheck::OtherRepository, "{e}");
    // A digest the signature manifest was not made for: its tag does not exist.
    let other = Digest::of(b"another manifest");
    let e = trusted()
        .remap(by_port)
        .verify(&client(), &r, other)
        .unwrap_err();
    assert!(matches!(e.reason, Refusal::Unsigned { .. }), "{e}");
}

#[test]
fn any_trusted_key_may_sign_and_the_signer_is_named_by_its_file_and_fingerprint() {
    let Some(registry) = start() else { return };
    let two = cases()
        .into_iter()
        .find(|c| c.name == "two-signatures")
        .unwrap();
    let r = load(&registry, "policies/filter", &two);
    let remap =
        IdentityRemap::parse(&format!("127.0.0.1:{}={SIGNED_REGISTRY}", registry.port)).unwrap();
    // Layer 0 is other.key's: with both keys trusted, the first good layer names it.
    let signer = Trust::new(vec![key("trusted"), key("other")])
        .remap(remap.clone())
        .verify(&client(), &r, two.digest)
        .unwrap();
    assert_eq!(
        (signer.layer(), signer.fingerprint()),
        (Some(0), fingerprint("other"))
    );
    // No keys: nothing verifies.
    let e = Trust::new(Vec::new())
        .remap(remap)
        .verify(&client(), &r, two.digest)
        .unwrap_err();
    assert_eq!(e.check(), SignatureCheck::Untrusted, "{e}");

    // The CLI with two keys, and its JSON.
    let (trusted, other) = (key_path("trusted"), key_path("other"));
    let remap = format!("127.0.0.1:{}={SIGNED_REGISTRY}", registry.port);
    let out = flowgate(
        &[
            "verify",
            &r.to_string(),
            "--key",
            other.to_str().unwrap(),
            "--key",
            trusted.to_str().unwrap(),
            "--remap-identity",
            &remap,
            "--json",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "reference": r.pinned(two.digest).to_string(),
            "manifest": two.digest.to_string(),
            "key": other.display().to_string(),
            "fingerprint": fingerprint("other").to_string(),
            "identity": "127.0.0.1:29810/policies/filter:v1",
            "layer": 0,
        })
    );
}

#[test]
fn key_files_are_p256_public_keys_within_a_bound() {
    // The sigstore-labelled key pair's public half is an ordinary PUBLIC KEY.
    assert_eq!(
        key("sigstore-label").fingerprint(),
        fingerprint("sigstore-label")
    );
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("signing-keys");
    std::fs::create_dir_all(&dir).unwrap();
    let p384 = "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEuDe9u/MMTTGRvn23zZq2jPMi+T9kg377\nTbaa1rPo5BIZRxOlQaPCTZPQIe40dFB67PQCVm7nRKdySl9a/4FaAYxURA67cMU1\ndF0gafxUKNfGg7mxzfZdH8RuSyR6CJCz\n-----END PUBLIC KEY-----\n";
    let private = std::fs::read_to_string(fixtures().join("trusted.key")).unwrap();
    let huge = "A".repeat(1 << 20);
    for (name, text) in [
        ("p384.pub", p384),
        ("encrypted.key", private.as_str()),
        ("empty.pub", ""),
        ("huge.pub", huge.as_str()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let e = TrustedKey::read(&path).unwrap_err();
        match name {
            "huge.pub" => assert!(matches!(e, KeyError::TooLarge { .. }), "{e}"),
            _ => assert!(matches!(e, KeyError::NotP256 { .. }), "{e}"),
        }
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
    // A device that never ends is not read at all: a key file is a regular file.
    let e = TrustedKey::read(Path::new("/dev/zero")).unwrap_err();
    assert!(
        matches!(e, KeyError::Read { .. }) && e.to_string().contains("not a regular file"),
        "{e}"
    );
    let e = TrustedKey::read(&dir.join("missing.pub")).unwrap_err();
    assert!(matches!(e, KeyError::Read { .. }), "{e}");

    // The CLI refuses a bad key before it asks any registry anything.
    let out = flowgate(
        &[
            "verify",
            "oci://127.0.0.1:9/policies/filter:v1",
            "--key",
            dir.join("p384.pub").to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ECDSA P-256"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = flowgate(&["verify", "oci://127.0.0.1:9/policies/filter:v1"], "");
    assert_eq!(out.status.code(), Some(2), "--key is required");
}

// The tests' own signer, for cases the fixtures do not hold: independent of the signing code
// of flowgate's own (it signs with p256 directly and lays the manifest out by hand).

/// A key of the tests' own for signing cases (fixed bytes: a test key, trusted
/// nowhere else), and its public half as the verifier reads it.
pub(crate) fn test_key() -> (p256::ecdsa::SigningKey, TrustedKey) {
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};
    let signing = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    (signing, TrustedKey::from_pem("test.pub", &pem).unwrap())
}

/// `payload` signed by `key`: base64 of the ASN.1 DER signature, as the annotation holds it.
pub(crate) fn sign(key: &p256::ecdsa::SigningKey, payload: &[u8]) -> String {
    use p256::ecdsa::signature::Signer as _;
    let signature: p256::ecdsa::Signature = key.sign(payload);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

/// A payload as skopeo writes it.
pub(crate) fn payload(digest: &str, identity: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{identity}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":{{"creator":"flowgate tests","timestamp":1796507401}}}}"#
    )
    .into_bytes()
}

/// A signature layer's descriptor for `payload`, with `signature` as its annotation (none
/// when `None`).
pub(crate) fn signature_layer(payload: &[u8], signature: Option<&str>) -> serde_json::Value {
    let mut layer = serde_json::json!({
        "mediaType": SIMPLE_SIGNING,
        "digest": Digest::of(payload).to_string(),
        "size": payload.len(),
    });
    if let Some(signature) = signature {
        layer["annotations"] = serde_json::json!({ SIGNATURE_ANNOTATION: signature });
    }
    layer
}

/// A signature manifest of `layers`, in skopeo's layout.
pub(crate) fn signature_manifest(layers: &[serde_json::Value]) -> Vec<u8> {
    let config = br#"{"architecture":"","os":"","config":{}}"#;
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(config).to_string(), "size": config.len()},
        "layers": layers,
    }))
    .unwrap()
}

/// Signs the module manifest `digest` in `r`'s repository with `key` as `identity`: a
/// signature manifest of one layer under `sha256-<hex>.sig`, laid out as skopeo lays it out.
pub(crate) fn sign_in_registry(
    r: &Reference,
    digest: Digest,
    key: &p256::ecdsa::SigningKey,
    identity: &str,
) {
    let registry = crate::oci::client();
    let signed = payload(&digest.to_string(), identity);
    registry.upload(r, &signed).unwrap();
    let config = br#"{"architecture":"","os":"","config":{}}"#;
    registry.upload(r, config).unwrap();
    let layer = signature_layer(&signed, Some(&sign(key, &signed)));
    let manifest = signature_manifest(&[layer]);
    registry
        .put_manifest(
            r,
            &signature_tag(&digest),
            &manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .unwrap();
}

/// A detached signature file of `module` by `key`, in the detached format: one JSON object
/// holding the payload (naming the module's SHA-256) and its signature, each in base64.
pub(crate) fn detached(key: &p256::ecdsa::SigningKey, module: &[u8], name: &str) -> Vec<u8> {
    let signed = payload(&Digest::of(module).to_string(), name);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&signed);
    let mut file = serde_json::to_vec(&serde_json::json!({
        "payload": b64,
        "signature": sign(key, &signed),
    }))
    .unwrap();
    file.push(b'\n');
    file
}

/// The PEM public key of `key`, written to `path`.
pub(crate) fn write_public_key(key: &p256::ecdsa::SigningKey, path: &Path) {
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(path, pem).unwrap();
}
