//! Signing modules: `flowgate keygen`, `flowgate sign` (in a real registry, `docker-registry`
//! on loopback, and `--detached`) and `flowgate push --sign-key`. Every signature made is
//! checked with openssl, every key file against the cosign format as documented (decrypted
//! here with scrypt and the NaCl secretbox directly, and read by openssl), and what lands in
//! the registry is read from the registry's own storage.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use flowgate_host::DEFAULT_MODULE;
use flowgate_host::oci::{
    Digest, IdentityRemap, PrivateKeyError, Reference, SigningKey, Trust, TrustedKey, signature_tag,
};
use serde_json::Value;

use crate::cli::{flowgate, stdout};
use crate::oci::{TestRegistry, client, push, start, write_module};
use crate::signing::{cases, fixtures, key_path, load};

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// A fresh folder for one test.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("sign")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A fixture key's private file and passphrase file.
pub(crate) fn fixture_key(name: &str) -> (PathBuf, PathBuf) {
    (
        fixtures().join(format!("{name}.key")),
        fixtures().join(format!("{name}.pass")),
    )
}

/// A fixture key's passphrase: the first line of its `.pass` file.
pub(crate) fn fixture_passphrase(name: &str) -> String {
    let text = std::fs::read_to_string(fixture_key(name).1).unwrap();
    text.lines().next().unwrap().to_owned()
}

/// Runs openssl; its output.
fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl").args(args).output().unwrap()
}

/// Whether openssl verifies `signature_der` over `payload` with the PEM public key `public`.
fn openssl_verifies(dir: &Path, public: &Path, payload: &[u8], signature_der: &[u8]) -> bool {
    let (p, s) = (dir.join("payload"), dir.join("signature.der"));
    std::fs::write(&p, payload).unwrap();
    std::fs::write(&s, signature_der).unwrap();
    let out = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        path_str(public),
        "-signature",
        path_str(&s),
        path_str(&p),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.success(),
        said.contains("Verified OK"),
        "openssl: {said}"
    );
    out.status.success()
}

/// Whether openssl verifies a signature layer (its payload and DER signature) with the fixture
/// key `key`'s public half.
fn layer_verifies(dir: &Path, key: &str, layer: &Layer) -> bool {
    openssl_verifies(dir, &key_path(key), &layer.0, &layer.1)
}

/// The manifest a tag of `repository` points at, read from the registry's storage: its
/// digest and bytes; `None` when the tag does not exist.
pub(crate) fn stored_manifest(
    registry: &TestRegistry,
    repository: &str,
    tag: &str,
) -> Option<(Digest, Vec<u8>)> {
    let link = registry
        .storage
        .join("data/docker/registry/v2/repositories")
        .join(repository)
        .join("_manifests/tags")
        .join(tag)
        .join("current/link");
    let digest = Digest::parse(std::fs::read_to_string(link).ok()?.trim()).unwrap();
    let bytes = std::fs::read(registry.blob_file(&digest)).unwrap();
    assert_eq!(Digest::of(&bytes), digest);
    Some((digest, bytes))
}

/// A blob as the registry stores it.
fn stored_blob(registry: &TestRegistry, digest: &str) -> Vec<u8> {
    let bytes = std::fs::read(registry.blob_file(&Digest::parse(digest).unwrap())).unwrap();
    assert_eq!(Digest::of(&bytes).to_string(), digest);
    bytes
}

/// A signature layer: its payload and its DER signature.
type Layer = (Vec<u8>, Vec<u8>);

/// The signature manifest of `digest` in `repository`, parsed, checked against the layout
/// cosign and skopeo write (an OCI image manifest; an OCI image config listing every layer
/// digest as a diff ID; signature layers with a payload blob and a signature annotation), and
/// its layers: each layer's payload and DER signature.
fn signature_layers(
    registry: &TestRegistry,
    repository: &str,
    digest: &Digest,
) -> (Value, Vec<Layer>) {
    let (_, bytes) = stored_manifest(registry, repository, &signature_tag(digest)).unwrap();
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config_blob = stored_blob(registry, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(
        manifest["config"]["size"].as_u64().unwrap(),
        config_blob.len() as u64
    );
    let config: Value = serde_json::from_slice(&config_blob).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let digests: Vec<Value> = layers.iter().map(|l| l["digest"].clone()).collect();
    assert_eq!(
        config,
        serde_json::json!({
            "architecture": "", "os": "", "config": {},
            "rootfs": {"type": "layers", "diff_ids": digests},
        })
    );
    let parts = layers
        .iter()
        .map(|layer| {
            assert_eq!(layer["mediaType"], SIMPLE_SIGNING);
            let payload = stored_blob(registry, layer["digest"].as_str().unwrap());
            assert_eq!(layer["size"].as_u64().unwrap(), payload.len() as u64);
            let signature = b64(layer["annotations"][ANNOTATION].as_str().unwrap());
            (payload, signature)
        })
        .collect();
    (manifest, parts)
}

/// Checks a payload as skopeo reads it: exactly `critical` and `optional`, the cosign type,
/// the digest and identity given, flowgate as creator and a timestamp of about now.
fn check_payload(payload: &[u8], digest: &Digest, identity: &str) {
    let json: Value = serde_json::from_slice(payload).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let timestamp = json["optional"]["timestamp"].as_u64().unwrap();
    assert!(timestamp.abs_diff(now) < 600, "{timestamp} against {now}");
    assert_eq!(
        json,
        serde_json::json!({
            "critical": {
                "identity": {"docker-reference": identity},
                "image": {"docker-manifest-digest": digest.to_string()},
                "type": "cosign container image signature",
            },
            "optional": {"creator": concat!("flowgate ", env!("CARGO_PKG_VERSION")), "timestamp": timestamp},
        })
    );
    // Members sorted, as skopeo writes them, in compact JSON.
    let text = String::from_utf8(payload.to_vec()).unwrap();
    assert!(
        text.starts_with(r#"{"critical":{"identity":{"docker-reference":"#),
        "{text}"
    );
    assert!(text.contains(r#""type":"cosign container image signature"},"optional":{"creator":"#));
}

/// `flowgate sign REF` with a fixture key; its output.
fn sign_with(reference: &str, key: &str) -> std::process::Output {
    let (private, pass) = fixture_key(key);
    flowgate(
        &[
            "sign",
            reference,
            "--key",
            path_str(&private),
            "--passphrase-file",
            path_str(&pass),
        ],
        "",
    )
}

fn fingerprint(public: &Path) -> Digest {
    TrustedKey::read(public).unwrap().fingerprint()
}

#[test]
fn keygen_writes_a_pair_that_openssl_reads_and_that_decrypts_as_documented() {
    let dir = scratch("keygen");
    let pass = dir.join("pass");
    std::fs::write(&pass, "correct horse battery\nsecond line ignored\n").unwrap();
    let prefix = dir.join("signer");
    let out = flowgate(
        &[
            "keygen",
            path_str(&prefix),
            "--passphrase-file",
            path_str(&pass),
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (key, public) = (dir.join("signer.key"), dir.join("signer.pub"));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the private key is its owner's only: {mode:o}"
    );

    // openssl reads the public key; its fingerprint is the one printed.
    let out_pub = openssl(&["pkey", "-pubin", "-in", path_str(&public), "-noout"]);
    assert!(
        out_pub.status.success(),
        "{}",
        String::from_utf8_lossy(&out_pub.stderr)
    );
    let der = openssl(&[
        "pkey",
        "-pubin",
        "-in",
        path_str(&public),
        "-outform",
        "DER",
    ]);
    assert!(der.status.success());
    let fp = Digest::of(&der.stdout);
    assert!(stdout(&out).contains(&fp.to_string()), "{}", stdout(&out));

    // The private key: the documented format, decrypted here with scrypt and the secretbox.
    let text = std::fs::read_to_string(&key).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----");
    assert_eq!(
        *lines.last().unwrap(),
        "-----END ENCRYPTED COSIGN PRIVATE KEY-----"
    );
    assert!(lines[1..lines.len() - 1].iter().all(|l| l.len() <= 64));
    let body: Value = serde_json::from_slice(&b64(&lines[1..lines.len() - 1].concat())).unwrap();
    let members: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(members, ["kdf", "cipher", "ciphertext"]);
    assert_eq!(body["kdf"]["name"], "scrypt");
    assert_eq!(
        body["kdf"]["params"],
        serde_json::json!({"N": 32768, "r": 8, "p": 1})
    );
    assert_eq!(body["cipher"]["name"], "nacl/secretbox");
    let salt = b64(body["kdf"]["salt"].as_str().unwrap());
    let nonce = b64(body["cipher"]["nonce"].as_str().unwrap());
    let sealed = b64(body["ciphertext"].as_str().unwrap());
    assert_eq!((salt.len(), nonce.len()), (32, 24));
    let der = open_sealed(b"correct horse battery", &salt, &nonce, &sealed, 15).unwrap();
    assert!(open_sealed(b"correct horse", &salt, &nonce, &sealed, 15).is_none());
    let der_file = dir.join("private.der");
    std::fs::write(&der_file, &der).unwrap();
    let from_der = openssl(&[
        "pkey",
        "-inform",
        "DER",
        "-in",
        path_str(&der_file),
        "-pubout",
    ]);
    assert!(
        from_der.status.success(),
        "{}",
        String::from_utf8_lossy(&from_der.stderr)
    );
    assert_eq!(
        String::from_utf8(from_der.stdout).unwrap(),
        std::fs::read_to_string(&public).unwrap(),
        "the private key's public half is the .pub"
    );
    // openssl says it is a P-256 key.
    let text_out = openssl(&[
        "pkey",
        "-inform",
        "DER",
        "-in",
        path_str(&der_file),
        "-noout",
        "-text",
    ]);
    assert!(String::from_utf8_lossy(&text_out.stdout).contains("prime256v1"));

    // flowgate reads both halves back.
    assert_eq!(fingerprint(&public), fp);
    let read = SigningKey::read(&key, b"correct horse battery").unwrap();
    assert_eq!(read.fingerprint(), fp);
    let e = SigningKey::read(&key, b"correct horse").unwrap_err();
    assert!(matches!(e, PrivateKeyError::Decryption { .. }), "{e}");

    // A second keygen to the same prefix is refused and changes nothing; so is one whose
    // .pub name is a symbolic link (which is not followed).
    let before = std::fs::read(&key).unwrap();
    let again = flowgate(
        &[
            "keygen",
            path_str(&prefix),
            "--passphrase-file",
            path_str(&pass),
        ],
        "",
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    let target = dir.join("elsewhere");
    std::os::unix::fs::symlink(&target, dir.join("linked.pub")).unwrap();
    let linked = flowgate(
        &[
            "keygen",
            path_str(&dir.join("linked")),
            "--passphrase-file",
            path_str(&pass),
        ],
        "",
    );
    assert_eq!(linked.status.code(), Some(1));
    assert!(!target.exists() && !dir.join("linked.key").exists());

    // The passphrase from the environment; none at all is an error that says where from.
    let run = |env: Option<&str>, prefix: &Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flowgate"));
        command
            .args(["keygen", path_str(prefix)])
            .env_remove("FLOWGATE_PASSPHRASE");
        if let Some(value) = env {
            command.env("FLOWGATE_PASSPHRASE", value);
        }
        command.output().unwrap()
    };
    let out = run(Some("from the environment"), &dir.join("env"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    SigningKey::read(&dir.join("env.key"), b"from the environment").unwrap();
    let out = run(None, &dir.join("none"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--passphrase-file") && stderr.contains("FLOWGATE_PASSPHRASE"),
        "{stderr}"
    );
    let out = run(Some(""), &dir.join("empty"));
    assert_eq!(out.status.code(), Some(1), "an empty passphrase is refused");
    assert!(!dir.join("empty.key").exists());
}

/// Opens a cosign secretbox as the format documents it: the box key is
/// scrypt(passphrase, salt, N = 2^log_n, r = 8, p = 1), 32 bytes; the box is the 16-byte
/// Poly1305 tag, then XSalsa20 of the key.
pub(crate) fn open_sealed(
    passphrase: &[u8],
    salt: &[u8],
    nonce: &[u8],
    sealed: &[u8],
    log_n: u8,
) -> Option<Vec<u8>> {
    use crypto_secretbox::aead::{Aead as _, KeyInit as _};
    let params = scrypt::Params::new(log_n, 8, 1, 32).unwrap();
    let mut key = [0u8; 32];
    scrypt::scrypt(passphrase, salt, &params, &mut key).unwrap();
    crypto_secretbox::XSalsa20Poly1305::new(&key.into())
        .decrypt(nonce.into(), sealed)
        .ok()
}

#[test]
fn the_fixture_keys_made_by_skopeo_and_sigstore_read_and_sign() {
    let dir = scratch("fixture-keys");
    for name in ["trusted", "other", "sigstore-label"] {
        let (private, _) = fixture_key(name);
        let key = SigningKey::read(&private, fixture_passphrase(name).as_bytes()).unwrap();
        let public = key_path(name);
        assert_eq!(key.fingerprint(), fingerprint(&public), "{name}");
        assert_eq!(key.name(), private.display().to_string());
        let message = format!("signed by {name}");
        let signature = key.sign(message.as_bytes());
        assert!(
            (70..=72).contains(&signature.len()),
            "ASN.1 DER: {}",
            signature.len()
        );
        assert!(
            openssl_verifies(&dir, &public, message.as_bytes(), &signature),
            "{name}"
        );
        // Another key's public half does not verify it.
        let stranger = key_path(if name == "trusted" {
            "other"
        } else {
            "trusted"
        });
        assert!(!openssl_verifies(
            &dir,
            &stranger,
            message.as_bytes(),
            &signature
        ));
    }
    // The passphrase file's first line, without its newline, is the passphrase.
    let (private, pass) = fixture_key("trusted");
    let passphrase = flowgate_host::oci::read_passphrase_file(&pass).unwrap();
    assert_eq!(&passphrase[..], fixture_passphrase("trusted").as_bytes());
    SigningKey::read(&private, &passphrase).unwrap();
    let e = SigningKey::read(&private, fixture_passphrase("other").as_bytes()).unwrap_err();
    assert!(e.to_string().contains("decryption failed"), "{e}");
    assert!(
        e.to_string().contains(&private.display().to_string()),
        "{e}"
    );
}

#[test]
fn a_pushed_module_signed_twice_holds_both_signatures_and_each_verifies() {
    let Some(registry) = start() else { return };
    let dir = scratch("registry");
    let tagged = registry.reference("policies/filter:v1");
    let r = Reference::parse(&tagged).unwrap();
    let digest = push(&r, DEFAULT_MODULE);
    let identity = format!("127.0.0.1:{}/policies/filter:v1", registry.port);

    let out = sign_with(&tagged, "trusted");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (trusted_key, _) = fixture_key("trusted");
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "{}: signed by {} ({}) as {identity}",
            r.pinned(digest),
            trusted_key.display(),
            fingerprint(&key_path("trusted"))
        )
    );
    let (first_manifest, layers) = signature_layers(&registry, "policies/filter", &digest);
    assert_eq!(layers.len(), 1);
    let (payload, signature) = &layers[0];
    check_payload(payload, &digest, &identity);
    assert!(openssl_verifies(
        &dir,
        &key_path("trusted"),
        payload,
        signature
    ));
    assert!(!openssl_verifies(
        &dir,
        &key_path("other"),
        payload,
        signature
    ));

    // `flowgate verify` accepts it, by tag and by digest.
    for reference in [tagged.clone(), r.pinned(digest).to_string()] {
        let out = flowgate(
            &[
                "verify",
                &reference,
                "--key",
                path_str(&key_path("trusted")),
            ],
            "",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A second key appends a layer; the first is kept as it was, and each key verifies.
    let out = sign_with(&tagged, "other");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (manifest, layers) = signature_layers(&registry, "policies/filter", &digest);
    assert_eq!(layers.len(), 2);
    assert_eq!(manifest["layers"][0], first_manifest["layers"][0]);
    check_payload(&layers[1].0, &digest, &identity);
    assert!(layer_verifies(&dir, "trusted", &layers[0]));
    assert!(layer_verifies(&dir, "other", &layers[1]));
    for (key, layer) in [("trusted", 0), ("other", 1)] {
        let signer = Trust::new(vec![TrustedKey::read(&key_path(key)).unwrap()])
            .verify(&client(), &r, digest)
            .unwrap();
        assert_eq!(
            (signer.layer(), signer.identity()),
            (Some(layer), identity.as_str())
        );
        let out = flowgate(&["verify", &tagged, "--key", path_str(&key_path(key))], "");
        assert!(
            out.status.success(),
            "{key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Signed by digest, the identity is the digest's.
    let pinned = registry.reference(&format!("policies/filter@{digest}"));
    let out = sign_with(&pinned, "trusted");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_digest = format!("127.0.0.1:{}/policies/filter@{digest}", registry.port);
    assert!(stdout(&out).trim().ends_with(&format!(" as {by_digest}")));
    let (_, layers) = signature_layers(&registry, "policies/filter", &digest);
    assert_eq!(layers.len(), 3);
    check_payload(&layers[2].0, &digest, &by_digest);
    assert!(layer_verifies(&dir, "trusted", &layers[2]));
}

#[test]
fn push_with_a_sign_key_pushes_then_signs_and_a_bad_passphrase_pushes_nothing() {
    let Some(registry) = start() else { return };
    let dir = scratch("push-sign");
    let module = write_module("push-sign.wasm", DEFAULT_MODULE);
    let (key, pass) = fixture_key("sigstore-label");
    let tagged = registry.reference("policies/signed:v2");
    let out = flowgate(
        &[
            "push",
            path_str(&module),
            &tagged,
            "--sign-key",
            path_str(&key),
            "--passphrase-file",
            path_str(&pass),
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let pinned = Reference::parse(lines[0]).unwrap();
    let digest = pinned.digest.unwrap();
    let identity = format!("127.0.0.1:{}/policies/signed:v2", registry.port);
    assert!(lines[1].ends_with(&format!(" as {identity}")), "{text}");
    let (_, layers) = signature_layers(&registry, "policies/signed", &digest);
    assert_eq!(layers.len(), 1);
    check_payload(&layers[0].0, &digest, &identity);
    assert!(layer_verifies(&dir, "sigstore-label", &layers[0]));
    let out = flowgate(
        &[
            "verify",
            &tagged,
            "--key",
            path_str(&key_path("sigstore-label")),
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A wrong passphrase is found before anything is pushed.
    let wrong = dir.join("wrong.pass");
    std::fs::write(&wrong, "not it\n").unwrap();
    let out = flowgate(
        &[
            "push",
            path_str(&module),
            &registry.reference("policies/signed:v3"),
            "--sign-key",
            path_str(&key),
            "--passphrase-file",
            path_str(&wrong),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("decryption failed"));
    assert!(stored_manifest(&registry, "policies/signed", "v3").is_none());
}

#[test]
fn a_signature_manifest_made_by_skopeo_gets_a_layer_appended_and_keeps_its_own() {
    let Some(registry) = start() else { return };
    let dir = scratch("skopeo-appended");
    let good = cases().into_iter().find(|c| c.name == "good").unwrap();
    let r = load(&registry, "policies/filter", &good);
    let tag = signature_tag(&good.digest);
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("cases/good/sig-manifest.json")).unwrap(),
    )
    .unwrap();

    let out = sign_with(&r.to_string(), "other");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (manifest, layers) = signature_layers(&registry, "policies/filter", &good.digest);
    assert_eq!(layers.len(), 2);
    assert_eq!(
        manifest["layers"][0], fixture["layers"][0],
        "skopeo's layer as it was"
    );
    assert!(layer_verifies(&dir, "trusted", &layers[0]));
    assert!(layer_verifies(&dir, "other", &layers[1]));
    check_payload(
        &layers[1].0,
        &good.digest,
        &format!("127.0.0.1:{}/policies/filter:v1", registry.port),
    );
    assert!(stored_manifest(&registry, "policies/filter", &tag).is_some());

    // skopeo's signature (for the registry it was signed at) still verifies, remapped.
    let remap =
        IdentityRemap::parse(&format!("127.0.0.1:{}=127.0.0.1:29810", registry.port)).unwrap();
    let signer = Trust::new(vec![TrustedKey::read(&key_path("trusted")).unwrap()])
        .remap(remap)
        .verify(&client(), &r, good.digest)
        .unwrap();
    assert_eq!(signer.layer(), Some(0));
    let out = flowgate(
        &[
            "verify",
            &r.to_string(),
            "--key",
            path_str(&key_path("other")),
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_detached_signature_names_the_module_sha256_and_openssl_verifies_it() {
    let dir = scratch("detached");
    let module = dir.join("filter.wasm");
    std::fs::write(&module, DEFAULT_MODULE).unwrap();
    let (key, pass) = fixture_key("trusted");
    let sign = |force: bool| {
        let mut args = vec![
            "sign",
            "--detached",
            path_str(&module),
            "--key",
            path_str(&key),
            "--passphrase-file",
            path_str(&pass),
        ];
        if force {
            args.push("--force");
        }
        flowgate(&args, "")
    };
    let out = sign(false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sig_path = dir.join("filter.wasm.sig");
    let text = std::fs::read_to_string(&sig_path).unwrap();
    assert!(
        text.ends_with("}\n") && text.lines().count() == 1,
        "{text:?}"
    );
    assert!(text.starts_with(r#"{"payload":""#), "{text}");
    let json: Value = serde_json::from_str(&text).unwrap();
    let members: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(members, ["payload", "signature"]);
    let payload = b64(json["payload"].as_str().unwrap());
    let signature = b64(json["signature"].as_str().unwrap());
    assert!(openssl_verifies(
        &dir,
        &key_path("trusted"),
        &payload,
        &signature
    ));
    assert!(!openssl_verifies(
        &dir,
        &key_path("other"),
        &payload,
        &signature
    ));
    // The module's SHA-256 as openssl computes it.
    let sha = openssl(&["dgst", "-sha256", "-r", path_str(&module)]);
    let hex = String::from_utf8(sha.stdout).unwrap();
    let hex = hex.split_whitespace().next().unwrap();
    check_payload(
        &payload,
        &Digest::parse(&format!("sha256:{hex}")).unwrap(),
        "filter.wasm",
    );

    // Not overwritten without --force; replaced whole with it.
    let again = sign(false);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&sig_path).unwrap(), text);
    let forced = sign(true);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let json: Value = serde_json::from_slice(&std::fs::read(&sig_path).unwrap()).unwrap();
    let payload = b64(json["payload"].as_str().unwrap());
    assert!(openssl_verifies(
        &dir,
        &key_path("trusted"),
        &payload,
        &b64(json["signature"].as_str().unwrap())
    ));
    // --force is for --detached only.
    let out = flowgate(
        &[
            "sign",
            "oci://127.0.0.1:9/p:v1",
            "--key",
            path_str(&key),
            "--force",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn skopeo_reads_a_flowgate_signature_and_mirrors_it_where_it_verifies_remapped() {
    let Some(registry) = start() else { return };
    if !crate::oci::installed("skopeo") {
        return;
    }
    let dir = scratch("skopeo-mirror");
    let tagged = registry.reference("policies/filter:v1");
    let r = Reference::parse(&tagged).unwrap();
    let digest = push(&r, DEFAULT_MODULE);
    let out = sign_with(&tagged, "trusted");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // skopeo copies the module with its sigstore attachments: it must parse the signature
    // manifest flowgate wrote to carry the signature over.
    let registries_d = dir.join("registries.d");
    std::fs::create_dir_all(&registries_d).unwrap();
    std::fs::write(
        registries_d.join("sigstore.yaml"),
        format!(
            "docker:\n  127.0.0.1:{}:\n    use-sigstore-attachments: true\n",
            registry.port
        ),
    )
    .unwrap();
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let mirror = registry.reference("mirror/filter:v1");
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
        .args([
            "--policy",
            path_str(&policy),
            "--registries.d",
            path_str(&registries_d),
        ])
        .arg(tagged.replacen("oci://", "docker://", 1))
        .arg(mirror.replacen("oci://", "docker://", 1))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, layers) = signature_layers(&registry, "mirror/filter", &digest);
    assert_eq!(layers.len(), 1);
    let identity = format!("127.0.0.1:{}/policies/filter:v1", registry.port);
    check_payload(&layers[0].0, &digest, &identity);
    assert!(layer_verifies(&dir, "trusted", &layers[0]));
    let remap = format!(
        "127.0.0.1:{port}/mirror=127.0.0.1:{port}/policies",
        port = registry.port
    );
    let out = flowgate(
        &[
            "verify",
            &mirror,
            "--key",
            path_str(&key_path("trusted")),
            "--remap-identity",
            &remap,
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
