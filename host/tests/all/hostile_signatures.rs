//! Hostile detached signatures: what a file beside a local module (`MODULE.wasm.sig`) or an
//! upload's `X-Module-Signature` header may hold. Each is refused with the kind of refusal
//! and a message naming the file; none is parsed past a bound, none panics, none is let in,
//! and nothing reads a FIFO left where the signature should be.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use base64::Engine as _;
use flowgate_host::oci::{Digest, SignatureCheck, Trust, read_detached};
use flowgate_host::{DEFAULT_MODULE, admin::Client};
use serde_json::json;

use crate::signing::{detached, payload, sign, test_key};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A detached file of `payload` with `signature` (base64 text), as JSON.
fn file(payload: &[u8], signature: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"payload": b64(payload), "signature": signature})).unwrap()
}

#[test]
fn hostile_detached_signatures_are_refused_by_kind() {
    let (key, trusted) = test_key();
    let trust = Trust::new(vec![trusted]);
    let module = DEFAULT_MODULE;
    let digest = Digest::of(module).to_string();
    let good = payload(&digest, "m.wasm");
    let signature = sign(&key, &good);
    let signed = |p: &[u8]| file(p, &sign(&key, p));
    let raw = p256::ecdsa::Signature::from_der(
        &base64::engine::general_purpose::STANDARD
            .decode(&signature)
            .unwrap(),
    )
    .unwrap()
    .to_bytes();
    let deep = {
        let mut p = "[".repeat(20_000);
        p.push_str(&"]".repeat(20_000));
        p.into_bytes()
    };
    let cases: Vec<(&str, Option<Vec<u8>>, SignatureCheck)> = vec![
        ("none", None, SignatureCheck::Unsigned),
        (
            "over 64 KiB",
            Some(vec![b' '; (64 << 10) + 1]),
            SignatureCheck::OverLimit,
        ),
        ("empty", Some(Vec::new()), SignatureCheck::Malformed),
        (
            "not JSON",
            Some(b"\xff\xfe garbage".to_vec()),
            SignatureCheck::Malformed,
        ),
        (
            "an array",
            Some(b"[1,2]".to_vec()),
            SignatureCheck::Malformed,
        ),
        (
            "an unknown member",
            Some(
                serde_json::to_vec(
                    &json!({"payload": b64(&good), "signature": signature, "cert": "x"}),
                )
                .unwrap(),
            ),
            SignatureCheck::Malformed,
        ),
        (
            "a repeated member",
            Some(
                format!(
                    r#"{{"payload":"{}","payload":"{}","signature":"{signature}"}}"#,
                    b64(&good),
                    b64(b"{}")
                )
                .into_bytes(),
            ),
            SignatureCheck::Malformed,
        ),
        (
            "no signature",
            Some(serde_json::to_vec(&json!({"payload": b64(&good)})).unwrap()),
            SignatureCheck::Malformed,
        ),
        (
            "a payload over the limit, in base64",
            Some(file(&vec![b'x'; 100 << 10], &signature)),
            SignatureCheck::OverLimit,
        ),
        (
            "a payload not in base64",
            Some(serde_json::to_vec(&json!({"payload": "!!!", "signature": signature})).unwrap()),
            SignatureCheck::Malformed,
        ),
        (
            "raw r||s",
            Some(file(&good, &b64(&raw))),
            SignatureCheck::Malformed,
        ),
        (
            "a signature 10,000 characters long",
            Some(file(&good, &"A".repeat(10_000))),
            SignatureCheck::Malformed,
        ),
        (
            "another key",
            Some(detached(
                &p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap(),
                module,
                "m.wasm",
            )),
            SignatureCheck::Untrusted,
        ),
        (
            "the payload altered after signing",
            Some(file(&payload(&digest, "n.wasm"), &signature)),
            SignatureCheck::Untrusted,
        ),
        (
            "a sibling's digest",
            Some(detached(&key, b"\0asm other bytes", "m.wasm")),
            SignatureCheck::OtherDigest,
        ),
        (
            "a trusted key's signature over a payload that is not JSON",
            Some(signed(b"not json")),
            SignatureCheck::Malformed,
        ),
        (
            "over JSON nested 20,000 deep",
            Some(signed(&deep)),
            SignatureCheck::Malformed,
        ),
        (
            "another type",
            Some(signed(
                &String::from_utf8(good.clone())
                    .unwrap()
                    .replace(
                        "cosign container image signature",
                        "atomic container signature",
                    )
                    .into_bytes(),
            )),
            SignatureCheck::Malformed,
        ),
        (
            "a timestamp that is not an integer",
            Some(signed(
                &String::from_utf8(good.clone())
                    .unwrap()
                    .replace("1796507401", "\"soon\"")
                    .into_bytes(),
            )),
            SignatureCheck::Malformed,
        ),
    ];
    for (what, bytes, want) in cases {
        let e = trust
            .verify_detached("m.wasm", module, "m.wasm.sig", bytes.as_deref())
            .unwrap_err();
        assert_eq!(e.check(), want, "{what}: {e}");
        let text = e.to_string();
        assert!(
            text.contains("m.wasm.sig") && text.contains(&digest),
            "{what}: the refusal names the file and the module's digest: {text}"
        );
    }
    // And the good one, to show the cases are refused for what they hold.
    let signer = trust
        .verify_detached(
            "m.wasm",
            module,
            "m.wasm.sig",
            Some(&file(&good, &signature)),
        )
        .unwrap();
    assert_eq!((signer.identity(), signer.detached()), ("m.wasm", true));
}

#[test]
fn a_detached_signature_is_read_from_a_regular_file_only_within_its_bound() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hostile-detached-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("m.wasm");
    assert!(read_detached(&module).unwrap().is_none(), "none there");
    // A FIFO where the signature should be: refused at once, never waited on.
    assert!(
        std::process::Command::new("mkfifo")
            .arg(dir.join("m.wasm.sig"))
            .status()
            .unwrap()
            .success()
    );
    let e = read_detached(&module).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    std::fs::remove_file(dir.join("m.wasm.sig")).unwrap();
    // A folder.
    std::fs::create_dir(dir.join("m.wasm.sig")).unwrap();
    assert!(read_detached(&module).is_err());
    std::fs::remove_dir(dir.join("m.wasm.sig")).unwrap();
    // A huge file: read up to one byte past the bound, no more.
    let f = std::fs::File::create(dir.join("m.wasm.sig")).unwrap();
    f.set_len(1 << 30).unwrap();
    let read = read_detached(&module).unwrap().unwrap();
    assert_eq!(read.len(), (64 << 10) + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_uploads_hostile_signature_header_is_refused_and_nothing_changes() {
    use flowgate_host::admin::{AdminOptions, AdminServer, Endpoint};
    use flowgate_host::gateway::{Gateway, Options};
    let (key, trusted) = test_key();
    let options = Options {
        workers: 1,
        trust: Some(std::sync::Arc::new(Trust::new(vec![trusted]))),
        allow_unsigned_local: true,
        ..Options::default()
    };
    let config =
        std::fs::read_to_string(crate::repo().join("fixtures/cases/spec-3.1-overlap/config.yaml"))
            .unwrap();
    let gateway = Gateway::new(crate::runtime(), DEFAULT_MODULE, &config, options).unwrap();
    let endpoint = Endpoint::Unix(crate::socket_path("hostile-signature"));
    let _server =
        AdminServer::start(gateway.clone(), AdminOptions::new(endpoint.clone(), None)).unwrap();
    let client = Client::new(endpoint.clone(), None);
    let module = flowgate_test_guests::HONEST_V2;
    let good = detached(&key, module, "v2.wasm");
    for (what, header, status) in [
        ("not base64, not JSON", b"!!! \x01".to_vec(), 422),
        ("base64 of garbage", b"garbage".to_vec(), 422),
        (
            "a signature of other bytes",
            detached(&key, DEFAULT_MODULE, "v2.wasm"),
            422,
        ),
        ("4 KiB of blanks", vec![b' '; 4 << 10], 422),
        ("over the head's limit", vec![b'x'; 20 << 10], 431),
    ] {
        let answer = client.swap_signed_module(module, &header, None, None);
        // A head over the limit is answered 431 at once, maybe before the body is sent.
        let answer = match answer {
            Err(e) if status == 431 => {
                assert!(e.to_string().contains("writing a body"), "{what}: {e}");
                assert_eq!(gateway.current().generation, 1, "{what}");
                continue;
            }
            answer => answer.unwrap(),
        };
        assert_eq!(answer.status, status, "{what}: {:?}", answer.body);
        if status == 422 {
            assert_eq!(answer.body["reason"], "signature-refused", "{what}");
        }
        assert_eq!(gateway.current().generation, 1, "{what}");
    }
    // A header that is not base64 at all, sent as it is: read as a file, malformed.
    let mut request = format!(
        "PUT /module HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\nX-Module-Signature: !!! {{\"payload\": [\r\n\r\n",
        module.len()
    )
    .into_bytes();
    request.extend_from_slice(module);
    let mut stream =
        flowgate_host::admin::Stream::connect(&endpoint, Duration::from_secs(5)).unwrap();
    stream
        .set_timeouts(Duration::from_secs(30), Duration::from_secs(30))
        .unwrap();
    stream.write_all(&request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");
    assert!(answer.contains("\"signature\":\"malformed\""), "{answer}");
    assert_eq!(gateway.current().generation, 1);

    // Unsigned uploads are let in here (allow_unsigned_local); a bad signature never is.
    // The good one goes live, signed.
    let answer = client
        .swap_signed_module(module, &good, None, None)
        .unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let signer = gateway.current().signer.clone().unwrap();
    assert!(signer.detached());
    assert_eq!(signer.digest(), Digest::of(module));
}
