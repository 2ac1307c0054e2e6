//! The policy author's kit as authors call it: `flowgate test`, `diff`, `explain` and
//! `swap --dry-run`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use flowgate_host::gateway::{Gateway, Options};
use flowgate_host::wasm::{Limits, Runtime};
use flowgate_host::{BUNDLED_CASES, DEFAULT_MODULE};
use flowgate_policy::json::packet_json;
use flowgate_policy::packet::proto;
use flowgate_policy::synth;
use flowgate_policy::{DropReason, Packet, Ports, Table, Verdict, parse};
use flowgate_test_guests as guests;
use serde_json::{Value, json};

use crate::cli::{flowgate, stdout};

/// Writes a module where the CLI can read it.
fn module_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kit-{name}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn arg(path: &std::path::Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn test_passes_the_default_module_on_the_bundled_cases() {
    let module = module_file("default", DEFAULT_MODULE);
    let out = flowgate(&["test", arg(&module)], "");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{} passed, 0 failed", BUNDLED_CASES.len())),
        "{text}"
    );
    // The same cases through the library, without Wasm.
    let out = flowgate(&["test", "--native"], "");
    assert!(out.status.success(), "{}", stdout(&out));
}

#[test]
fn test_fails_a_module_that_gets_one_case_wrong_with_a_diff() {
    let module = module_file("wrong", guests::WRONG);
    let out = flowgate(&["test", arg(&module)], "");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let failures: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(
        failures,
        ["FAIL  ipv6-default-and-not (12 packets)"],
        "{text}"
    );
    // The diff names the packet line, what the case expects and what the module said.
    let at = text
        .find("line 3: ")
        .expect("the first wrong line is named");
    let diff: Vec<&str> = text[at..].lines().take(3).map(str::trim).collect();
    assert!(diff[0].contains(r#""src_ip": "fd00:a::5""#), "{text}");
    assert_eq!(
        diff[1],
        r#"expected {"verdict":"allow","dst_vpc":"b","dst_vni":2000}"#
    );
    assert_eq!(
        diff[2],
        r#"got      {"verdict":"drop","reason":"source-not-exposed"}"#
    );
    assert!(text.contains(&format!("{} passed, 1 failed", BUNDLED_CASES.len() - 1)));
}

#[test]
fn the_example_module_passes_its_own_cases_and_the_spec_cases() {
    let module = module_file("deny-list", guests::DENY_LIST);
    let out = flowgate(
        &[
            "test",
            arg(&module),
            "guest/examples/deny-list/cases",
            "fixtures/cases",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stdout(&out));
    // And the default module does not pass the example's cases: they test the deny-list.
    let default = module_file("default-2", DEFAULT_MODULE);
    let out = flowgate(
        &["test", arg(&default), "guest/examples/deny-list/cases"],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
}

/// Generated traffic with some destination ports moved onto the deny-list's ports, over TCP
/// and UDP, and some packets from an unknown VNI.
fn diff_traffic(config: &flowgate_policy::Config) -> Vec<Packet> {
    let mut packets = synth::packets(config, 3_000, 5);
    for (i, p) in packets.iter_mut().enumerate() {
        if let Some(ports) = p.ports.as_mut() {
            match i % 7 {
                0 => ports.dst = 23,
                1 => ports.dst = 445,
                2 => ports.src = 445,
                _ => {}
            }
        }
        if i % 50 == 0 {
            p.src_vni = 16_000_000;
        }
    }
    packets
}

#[test]
fn diff_reports_exactly_the_changes_the_example_readme_promises() {
    let config_path = "fixtures/default/config.yaml";
    let config = parse(
        &std::fs::read_to_string(crate::repo().join(config_path)).unwrap(),
        None,
    )
    .unwrap();
    let table = Table::build(&config).unwrap();
    let packets = diff_traffic(&config);
    let catalog = table.catalog();
    let trace: String = packets
        .iter()
        .map(|p| format!("{}\n", packet_json(catalog, p)))
        .collect();
    let trace_path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kit-diff.jsonl");
    std::fs::write(&trace_path, trace).unwrap();

    // The README's promise, computed from the native verdicts: a TCP packet to port 23 or
    // 445 from a known VPC becomes drop(denied); nothing else changes.
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut unchanged = 0u64;
    for p in &packets {
        let verdict = table.lookup(p);
        let denied = p.proto == proto::TCP
            && matches!(p.ports, Some(Ports { dst: 23 | 445, .. }))
            && verdict != Verdict::Drop(DropReason::UnknownVpc);
        if denied {
            *expected
                .entry((table.verdict_text(verdict), "drop(denied)".into()))
                .or_default() += 1;
        } else {
            unchanged += 1;
        }
    }
    assert!(
        expected.len() >= 3,
        "the traffic reaches several verdicts: {expected:?}"
    );

    let (old, new) = (
        module_file("diff-old", DEFAULT_MODULE),
        module_file("diff-new", guests::DENY_LIST),
    );
    let out = flowgate(
        &[
            "diff",
            arg(&old),
            arg(&new),
            "--config",
            config_path,
            "--packets",
            arg(&trace_path),
            "--json",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["packets"], packets.len());
    assert_eq!(report["unchanged"], unchanged);
    let got: BTreeMap<(String, String), u64> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                (
                    c["old"].as_str().unwrap().to_owned(),
                    c["new"].as_str().unwrap().to_owned(),
                ),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    // Samples are packets of their change: TCP to a denied port.
    for change in report["changes"].as_array().unwrap() {
        for sample in change["samples"].as_array().unwrap() {
            assert_eq!(sample["proto"], "tcp");
            assert!(
                sample["dst_port"] == 23 || sample["dst_port"] == 445,
                "{sample}"
            );
        }
    }
}

fn explain(packet: &str) -> Value {
    let out = flowgate(
        &[
            "explain",
            "--config",
            "fixtures/cases/spec-3.1-overlap/config.yaml",
            packet,
            "--json",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// (peering, admits, offering source entries, offering destination entries) per peering.
fn peerings(e: &Value) -> Vec<(String, bool, Vec<String>, Vec<String>)> {
    let offering = |side: &Value| -> Vec<String> {
        side.as_array()
            .unwrap()
            .iter()
            .filter(|m| m["miss"].is_null())
            .map(|m| {
                format!(
                    "{} {}",
                    m["block"].as_str().unwrap(),
                    m["entry"].as_str().unwrap()
                )
            })
            .collect()
    };
    e["peerings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["peering"].as_str().unwrap().to_owned(),
                p["admits"].as_bool().unwrap(),
                offering(&p["source"]),
                offering(&p["destination"]),
            )
        })
        .collect()
}

#[test]
fn explain_names_the_peerings_and_prefixes_of_spec_3_1_through_the_component() {
    let b = "spec.peering.B.expose[0] ips 2.0.0.0/24".to_owned();
    let a = "spec.peering.A.expose[0] ips 1.0.0.0/23".to_owned();
    let c = "spec.peering.C.expose[0] ips 1.0.0.0/24".to_owned();
    let s = |v: &[&String]| -> Vec<String> { v.iter().map(|s| (*s).clone()).collect() };

    let e = explain("B 2.0.0.7:40000 -> 1.0.1.9:80 tcp");
    assert_eq!(
        e["verdict"],
        json!({"verdict": "allow", "dst_vpc": "A", "dst_vni": 1})
    );
    assert_eq!(
        peerings(&e),
        [
            ("A--B".into(), true, s(&[&b]), s(&[&a])),
            ("B--C".into(), false, s(&[&b]), vec![]),
        ]
    );

    let e = explain("B 2.0.0.7:40000 -> 1.0.0.9:80 tcp");
    assert_eq!(
        e["verdict"],
        json!({"verdict": "allow-ambiguous", "candidates": ["A", "C"]})
    );
    assert_eq!(
        peerings(&e),
        [
            ("A--B".into(), true, s(&[&b]), s(&[&a])),
            ("B--C".into(), true, s(&[&b]), s(&[&c])),
        ]
    );

    for from in [
        "A 1.0.0.9:40000 -> 2.0.0.7:443 tcp",
        "C 1.0.0.9 -> 2.0.0.7 icmp",
    ] {
        let e = explain(from);
        assert_eq!(
            e["verdict"],
            json!({"verdict": "allow", "dst_vpc": "B", "dst_vni": 2})
        );
        let p = peerings(&e);
        assert_eq!(p.len(), 1, "{from}");
        assert!(p[0].1 && p[0].3 == [b.clone()], "{from}: {p:?}");
    }

    let e = explain("B 2.0.1.7:40000 -> 1.0.1.9:80 tcp");
    assert_eq!(
        e["verdict"],
        json!({"verdict": "drop", "reason": "source-not-exposed"})
    );
    assert!(peerings(&e).iter().all(|p| !p.1 && p.2.is_empty()));
    assert_eq!(
        e["notes"][0],
        "the source 2.0.1.7:40000 is in no source set of B's peerings"
    );

    let e = explain("B 2.0.0.7:40000 -> 1.0.2.9:80 tcp");
    assert_eq!(
        e["verdict"],
        json!({"verdict": "drop", "reason": "destination-not-exposed"})
    );
    assert_eq!(
        peerings(&e),
        [
            ("A--B".into(), false, s(&[&b]), vec![]),
            ("B--C".into(), false, s(&[&b]), vec![]),
        ]
    );
    assert!(
        e["notes"][0]
            .as_str()
            .unwrap()
            .ends_with("the destination 1.0.2.9:80 is in none of A's destination sets"),
        "{e}"
    );
}

#[test]
fn explain_refuses_a_packet_it_cannot_read_with_the_reason() {
    let out = flowgate(
        &[
            "explain",
            "--config",
            "fixtures/cases/spec-3.1-overlap/config.yaml",
            "B 2.0.0.7 -> 1.0.1.9:80 tcp",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcp needs ports on both ends"), "{err}");
}

#[test]
fn swap_dry_run_compares_against_the_module_in_force_and_swaps_nothing() {
    let config = std::fs::read_to_string(
        crate::repo().join("guest/examples/deny-list/cases/deny-list/config.yaml"),
    )
    .unwrap();
    let gateway: Arc<Gateway> = Gateway::new(
        Runtime::new(Limits::default(), None).unwrap(),
        DEFAULT_MODULE,
        &config,
        Options {
            workers: 1,
            ..Options::default()
        },
    )
    .unwrap();
    let (admin, client) = crate::admin_on_socket(&gateway);
    let addr = admin.endpoint().to_string();
    // What the gateway hands back is what it runs.
    let serving = client.serving().unwrap();
    assert_eq!(serving.module, DEFAULT_MODULE);
    assert_eq!(serving.config, config);
    assert_eq!(serving.etag, gateway.current().etag());

    let new = module_file("dry-run", guests::DENY_LIST);
    let out = flowgate(
        &[
            "swap",
            arg(&new),
            "--dry-run",
            "--packets",
            "guest/examples/deny-list/cases/deny-list/packets.jsonl",
            "--admin",
            &addr,
        ],
        "",
    );
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The case's five denied packets, each from another verdict (see its expected.jsonl).
    for line in [
        "allow(A) -> drop(denied)",
        "allow(B) -> drop(denied)",
        "allow-ambiguous([A, C]) -> drop(denied)",
        "drop(destination-not-exposed) -> drop(denied)",
        "drop(source-not-exposed) -> drop(denied)",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(line) && l.trim_end().ends_with(" 1")),
            "{line} missing in:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.contains("unchanged") && l.trim_end().ends_with(" 5")),
        "{text}"
    );
    assert_eq!(gateway.current().generation, 1, "a dry run swaps nothing");
}
