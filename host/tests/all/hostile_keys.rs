//! Hostile private key files and signature manifests: a key file that demands a huge key
//! derivation is refused before any derivation runs, and every other alteration of the cosign
//! format is refused with an error naming the file and what is wrong; a signature tag that
//! holds what flowgate cannot add to is left as it is.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use flowgate_host::DEFAULT_MODULE;
use flowgate_host::oci::{Digest, PrivateKeyError, Reference, SigningKey, signature_tag};
use serde_json::{Value, json};

use crate::cli::flowgate;
use crate::oci::{client, push, start};
use crate::sign::{fixture_key, fixture_passphrase, path_str, scratch, stored_manifest};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The JSON body of the fixture key `trusted.key`.
fn trusted_body() -> Value {
    let text = std::fs::read_to_string(fixture_key("trusted").0).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap(),
    )
    .unwrap()
}

/// A PEM block of `body` under `label`.
fn pem(label: &str, body: &[u8]) -> String {
    let text = b64(body);
    let lines: Vec<String> = text
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// `trusted.key` with its JSON body changed by `edit`, written to `dir/name`.
fn altered(dir: &Path, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let mut body = trusted_body();
    edit(&mut body);
    let path = dir.join(name);
    std::fs::write(
        &path,
        pem("ENCRYPTED COSIGN PRIVATE KEY", body.to_string().as_bytes()),
    )
    .unwrap();
    path
}

/// Reads `path` with the trusted key's passphrase.
fn read(path: &Path) -> PrivateKeyError {
    let e = SigningKey::read(path, fixture_passphrase("trusted").as_bytes()).unwrap_err();
    assert!(
        e.to_string().contains(&path.display().to_string()),
        "the error names the file: {e}"
    );
    e
}

#[test]
fn a_key_file_demanding_a_huge_or_other_kdf_is_refused_before_deriving() {
    let dir = scratch("hostile-kdf");
    let huge = altered(&dir, "huge-n.key", |b| {
        b["kdf"]["params"]["N"] = json!(1u64 << 30)
    });
    let started = Instant::now();
    let e = read(&huge);
    assert!(matches!(e, PrivateKeyError::Kdf { .. }), "{e}");
    assert!(e.to_string().contains("N = 1073741824"), "{e}");
    // Not a timing assertion on the refusal itself: N = 2^30 would take 128 GiB and minutes.
    assert!(started.elapsed() < Duration::from_secs(60));

    for (name, edit, words) in [
        (
            "r16.key",
            Box::new(|b: &mut Value| b["kdf"]["params"]["r"] = json!(16))
                as Box<dyn FnOnce(&mut Value)>,
            "r = 16",
        ),
        (
            "p2.key",
            Box::new(|b: &mut Value| b["kdf"]["params"]["p"] = json!(2)),
            "p = 2",
        ),
        (
            "small-n.key",
            Box::new(|b: &mut Value| b["kdf"]["params"]["N"] = json!(1024)),
            "N = 1024",
        ),
        (
            "odd-n.key",
            Box::new(|b: &mut Value| b["kdf"]["params"]["N"] = json!(40000)),
            "N = 40000",
        ),
        (
            "float-n.key",
            Box::new(|b: &mut Value| b["kdf"]["params"]["N"] = json!(3.2768e4)),
            "N = 32768.0",
        ),
        (
            "big-n.key",
            Box::new(|b: &mut Value| b["kdf"]["params"]["N"] = json!(1e300)),
            "N = 1e+300",
        ),
        (
            "text-n.key",
            Box::new(|b: &mut Value| b["kdf"]["params"]["N"] = json!("32768")),
            "N = \"32768\"",
        ),
        (
            "pbkdf2.key",
            Box::new(|b: &mut Value| b["kdf"]["name"] = json!("pbkdf2")),
            "name `pbkdf2`",
        ),
    ] {
        let path = altered(&dir, name, edit);
        let e = read(&path);
        assert!(matches!(e, PrivateKeyError::Kdf { .. }), "{name}: {e}");
        assert!(e.to_string().contains(words), "{name}: {words} in {e}");
    }

    // The CLI says the same, before it signs or contacts anything.
    let module = dir.join("m.wasm");
    std::fs::write(&module, DEFAULT_MODULE).unwrap();
    let out = flowgate(
        &[
            "sign",
            "--detached",
            path_str(&module),
            "--key",
            path_str(&huge),
            "--passphrase-file",
            path_str(&fixture_key("trusted").1),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("N = 1073741824") && stderr.contains(path_str(&huge)),
        "{stderr}"
    );
    assert!(!dir.join("m.wasm.sig").exists());
}

#[test]
fn altered_or_foreign_key_files_are_refused_with_what_is_wrong() {
    let dir = scratch("hostile-keys");
    let good = std::fs::read_to_string(fixture_key("trusted").0).unwrap();
    let body = trusted_body();
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(body["ciphertext"].as_str().unwrap())
        .unwrap();

    // Oversized, and a device that never ends: refused at the bound.
    let big = dir.join("big.key");
    std::fs::write(&big, format!("{good}{}", " ".repeat(20 << 10))).unwrap();
    assert!(matches!(read(&big), PrivateKeyError::TooLarge { .. }));
    let e = SigningKey::read(Path::new("/dev/zero"), b"x").unwrap_err();
    assert!(matches!(e, PrivateKeyError::TooLarge { .. }), "{e}");
    let e = SigningKey::read(&dir.join("missing.key"), b"x").unwrap_err();
    assert!(matches!(e, PrivateKeyError::Read { .. }), "{e}");

    // Labels: an unencrypted key, or another kind of PEM.
    for label in ["PRIVATE KEY", "EC PRIVATE KEY", "PUBLIC KEY"] {
        let path = dir.join("label.key");
        std::fs::write(&path, good.replace("ENCRYPTED COSIGN PRIVATE KEY", label)).unwrap();
        let e = read(&path);
        assert!(matches!(e, PrivateKeyError::Label { .. }), "{label}: {e}");
        assert!(e.to_string().contains(label), "{e}");
    }

    // The ciphertext cut short or altered: the secretbox does not open.
    let cut = altered(&dir, "cut.key", |b| {
        b["ciphertext"] = json!(b64(&sealed[..sealed.len() - 10]))
    });
    let e = read(&cut);
    assert!(matches!(e, PrivateKeyError::Decryption { .. }), "{e}");
    assert!(e.to_string().contains("decryption failed"), "{e}");
    let mut flipped = sealed.clone();
    flipped[20] ^= 1;
    let flipped = altered(&dir, "flipped.key", |b| {
        b["ciphertext"] = json!(b64(&flipped))
    });
    assert!(matches!(read(&flipped), PrivateKeyError::Decryption { .. }));

    // The wrong passphrase.
    let e = SigningKey::read(&fixture_key("trusted").0, b"wrong").unwrap_err();
    assert!(matches!(e, PrivateKeyError::Decryption { .. }), "{e}");

    // The format's members: each refused by name, before any derivation.
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "tiny",
            Box::new(|b| b["ciphertext"] = json!(b64(&[0; 16]))),
            "ciphertext is 16 bytes",
        ),
        (
            "long",
            Box::new(|b| b["ciphertext"] = json!(b64(&[0; 4096]))),
            "ciphertext is",
        ),
        (
            "nonce",
            Box::new(|b| b["cipher"]["nonce"] = json!(b64(&[0; 23]))),
            "cipher.nonce is 23 bytes",
        ),
        (
            "salt",
            Box::new(|b| b["kdf"]["salt"] = json!(b64(&[0; 1000]))),
            "kdf.salt is",
        ),
        (
            "b64",
            Box::new(|b| b["kdf"]["salt"] = json!("not base64!")),
            "kdf.salt is not base64",
        ),
        (
            "cipher",
            Box::new(|b| b["cipher"]["name"] = json!("aes-gcm")),
            "cipher.name `aes-gcm`",
        ),
        (
            "extra",
            Box::new(|b| b["extra"] = json!(1)),
            "unknown field",
        ),
        (
            "missing",
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("cipher");
            }),
            "missing field",
        ),
    ];
    for (name, edit, words) in cases {
        let path = altered(&dir, &format!("{name}.key"), edit);
        let e = read(&path);
        assert!(matches!(e, PrivateKeyError::Format { .. }), "{name}: {e}");
        assert!(e.to_string().contains(words), "{name}: {words} in {e}");
    }
    for (name, text) in [
        ("empty", String::new()),
        ("json", trusted_body().to_string()),
        (
            "no-end",
            good.replace("-----END ENCRYPTED COSIGN PRIVATE KEY-----", ""),
        ),
        ("not-base64", good.replacen("eyJ", "e!J", 1)),
        (
            "headers",
            good.replacen('\n', "\nProc-Type: 4,ENCRYPTED\n", 1),
        ),
    ] {
        let path = dir.join(format!("{name}.key"));
        std::fs::write(&path, text).unwrap();
        let e = read(&path);
        assert!(matches!(e, PrivateKeyError::Format { .. }), "{name}: {e}");
    }

    // A box that opens with the right passphrase but holds a P-384 key (PKCS#8, as openssl
    // writes it); the same sealing of a P-256 key reads, so the refusal is the curve's.
    let path = dir.join("foreign.key");
    for (curve, accepted) in [("P-384", false), ("P-256", true)] {
        let der = pkcs8_der(&dir, curve);
        std::fs::write(&path, seal(b"pass", &der)).unwrap();
        match SigningKey::read(&path, b"pass") {
            Ok(_) => assert!(accepted, "{curve}"),
            Err(e) => {
                assert!(!accepted, "{curve}: {e}");
                assert!(matches!(e, PrivateKeyError::NotP256 { .. }), "{e}");
            }
        }
    }
}

/// A new private key on `curve` as openssl writes it in PKCS#8 DER.
fn pkcs8_der(dir: &Path, curve: &str) -> Vec<u8> {
    let pem = dir.join(format!("{curve}.pem"));
    let der = dir.join(format!("{curve}.der"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let curve_option = format!("ec_paramgen_curve:{curve}");
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        &curve_option,
        "-out",
        path_str(&pem),
    ]);
    run(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        path_str(&pem),
        "-outform",
        "DER",
        "-out",
        path_str(&der),
    ]);
    let bytes = std::fs::read(&der).unwrap();
    // PKCS#8: a SEQUENCE whose first member is the version INTEGER 0.
    assert_eq!(bytes[0], 0x30);
    bytes
}

/// `der` sealed as the cosign format documents it (scrypt N = 2^15, r = 8, p = 1; the NaCl
/// secretbox), done here with the crates directly.
fn seal(passphrase: &[u8], der: &[u8]) -> String {
    use crypto_secretbox::aead::{Aead as _, KeyInit as _};
    let (salt, nonce) = ([7u8; 32], [9u8; 24]);
    let params = scrypt::Params::new(15, 8, 1, 32).unwrap();
    let mut key = [0u8; 32];
    scrypt::scrypt(passphrase, &salt, &params, &mut key).unwrap();
    let sealed = crypto_secretbox::XSalsa20Poly1305::new(&key.into())
        .encrypt(&nonce.into(), der)
        .unwrap();
    let body = json!({
        "kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": b64(&salt)},
        "cipher": {"name": "nacl/secretbox", "nonce": b64(&nonce)},
        "ciphertext": b64(&sealed),
    });
    pem(
        "ENCRYPTED SIGSTORE PRIVATE KEY",
        body.to_string().as_bytes(),
    )
}

/// `flowgate sign` with the trusted fixture key.
fn sign(reference: &str) -> std::process::Output {
    let (key, pass) = fixture_key("trusted");
    flowgate(
        &[
            "sign",
            reference,
            "--key",
            path_str(&key),
            "--passphrase-file",
            path_str(&pass),
        ],
        "",
    )
}

#[test]
fn a_signature_tag_holding_an_index_or_a_full_manifest_is_left_as_it_is() {
    let Some(registry) = start() else { return };
    let tagged = registry.reference("policies/filter:v1");
    let r = Reference::parse(&tagged).unwrap();
    let digest = push(&r, DEFAULT_MODULE);
    let tag = signature_tag(&digest);
    let (_, module_manifest) = stored_manifest(&registry, "policies/filter", "v1").unwrap();

    // An OCI index under the signature tag (a registry answers 404 for it to a client that
    // asks for image manifests only).
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest.to_string(), "size": module_manifest.len()}],
    })
    .to_string();
    let index_digest = client()
        .put_manifest(
            &r,
            &tag,
            index.as_bytes(),
            "application/vnd.oci.image.index.v1+json",
        )
        .unwrap();
    let out = sign(&tagged);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&tag) && stderr.contains("left as it is"),
        "{stderr}"
    );
    assert!(
        stderr.contains("application/vnd.oci.image.index.v1+json"),
        "{stderr}"
    );
    assert_eq!(
        stored_manifest(&registry, "policies/filter", &tag)
            .unwrap()
            .0,
        index_digest,
        "nothing overwritten"
    );

    // A signature manifest already holding as many signatures as a verifier reads.
    let payload = b"{}";
    let payload_digest = client().upload(&r, payload).unwrap();
    let layer = json!({
        "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
        "digest": payload_digest.to_string(),
        "size": payload.len(),
        "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="},
    });
    let config = br#"{"architecture":"","os":"","config":{}}"#;
    let config_digest = client().upload(&r, config).unwrap();
    let full = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": vec![layer; 32],
    })
    .to_string();
    let full_digest = client()
        .put_manifest(
            &r,
            &tag,
            full.as_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        )
        .unwrap();
    let out = sign(&tagged);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds 32 signature layers"), "{stderr}");
    assert_eq!(
        stored_manifest(&registry, "policies/filter", &tag)
            .unwrap()
            .0,
        full_digest
    );
    assert_eq!(Digest::of(full.as_bytes()), full_digest);
}
