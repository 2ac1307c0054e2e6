//! `flowgate replay` on the bundled captures (`fixtures/pcap`, made by `gen.py`): every frame
//! lands where `expected.jsonl` says, in order, with the VNI of its destination VPC and
//! otherwise the same bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flowgate_host::io::pcap::CaptureReader;
use serde_json::Value;

use crate::cli::{flowgate, stdout};

const CONFIG: &str = "fixtures/pcap/config.yaml";
const VNI: [(&str, u32); 3] = [("A", 1), ("B", 2), ("C", 3)];

fn frames(path: &Path) -> Vec<Vec<u8>> {
    let mut reader = CaptureReader::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(r) = reader.next_frame() {
        out.push(r.unwrap().data);
    }
    out
}

fn manifest(name: &str) -> Vec<String> {
    std::fs::read_to_string(crate::repo().join("fixtures/pcap").join(name))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["expect"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// Where the VXLAN header of a generated frame starts: after Ethernet, the outer IPv4 (20
/// bytes, no options) or IPv6 (40) header, and UDP. The generator builds them so.
fn vxlan_at(frame: &[u8]) -> usize {
    match [frame[12], frame[13]] {
        [0x08, 0x00] => 14 + 20 + 8,
        [0x86, 0xdd] => 14 + 40 + 8,
        other => panic!("outer EtherType {other:02x?}"),
    }
}

fn replay(pcap: &str, extra: &[&str], tag: &str) -> (Value, [Vec<Vec<u8>>; 3]) {
    let (out, amb, drops) = (
        tmp(&format!("{tag}-out.pcap")),
        tmp(&format!("{tag}-ambiguous.pcap")),
        tmp(&format!("{tag}-drops.pcap")),
    );
    let mut args = vec![
        "replay",
        "--config",
        CONFIG,
        "--pcap",
        pcap,
        "--out",
        out.to_str().unwrap(),
        "--ambiguous",
        amb.to_str().unwrap(),
        "--drops",
        drops.to_str().unwrap(),
        "--json",
        "--batch",
        "4",
    ];
    args.extend_from_slice(extra);
    let run = flowgate(&args, "");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary = serde_json::from_str(&stdout(&run)).unwrap();
    (summary, [frames(&out), frames(&amb), frames(&drops)])
}

#[test]
fn replay_puts_every_frame_where_the_manifest_says_in_order() {
    for pcap in ["fixtures/pcap/gateway.pcap", "fixtures/pcap/gateway.pcapng"] {
        let input = frames(&crate::repo().join(pcap));
        let expect = manifest("expected.jsonl");
        assert_eq!(input.len(), expect.len());
        let (summary, [out, amb, drops]) = replay(pcap, &[], "gateway");

        let (mut want_out, mut want_amb, mut want_drops) = (Vec::new(), Vec::new(), Vec::new());
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        for (frame, expect) in input.iter().zip(&expect) {
            match expect.split_once(' ').unwrap() {
                ("allow", vpc) => {
                    let vni = VNI.iter().find(|(n, _)| *n == vpc).unwrap().1;
                    want_out.push((frame.clone(), vni));
                }
                ("ambiguous", _) => want_amb.push(frame.clone()),
                ("drop", reason) => {
                    want_drops.push(frame.clone());
                    *reasons.entry(reason.to_owned()).or_default() += 1;
                }
                other => panic!("manifest says {other:?}"),
            }
        }
        // Dropped and ambiguous frames leave unchanged, in order.
        assert_eq!(drops, want_drops, "{pcap}");
        assert_eq!(amb, want_amb, "{pcap}");
        // Allowed frames: the destination VPC's VNI; every other byte the same, except the
        // outer UDP checksum where the frame had one (it must change with the VNI).
        assert_eq!(out.len(), want_out.len(), "{pcap}");
        for (i, (got, (sent, vni))) in out.iter().zip(&want_out).enumerate() {
            assert_eq!(got.len(), sent.len(), "{pcap} allowed frame {i}");
            let at = vxlan_at(sent);
            assert_eq!(
                u32::from_be_bytes([0, got[at + 4], got[at + 5], got[at + 6]]),
                *vni,
                "{pcap} allowed frame {i}"
            );
            let checksum = at - 2..at;
            for (j, (a, b)) in sent.iter().zip(got).enumerate() {
                if !(at + 4..at + 7).contains(&j) && !checksum.contains(&j) {
                    assert_eq!(a, b, "{pcap} allowed frame {i}, byte {j}");
                }
            }
            let had_checksum = sent[checksum.clone()] != [0, 0];
            let same_vni = sent[at + 4..at + 7] == got[at + 4..at + 7];
            assert_eq!(
                sent[checksum.clone()] != got[checksum.clone()],
                had_checksum && !same_vni,
                "{pcap} allowed frame {i}: checksum"
            );
        }
        // The summary counts every frame under its verdict or reason.
        let counted: BTreeMap<String, u64> =
            serde_json::from_value(summary["drops"].clone()).unwrap();
        assert_eq!(counted, reasons, "{pcap}");
        assert_eq!(summary["frames"], input.len());
        assert_eq!(summary["verdicts"]["allow"], want_out.len());
        assert_eq!(summary["verdicts"]["allow-ambiguous"], want_amb.len());
    }
}

#[test]
fn frames_without_vxlan_take_the_vpc_given() {
    let pcap = "fixtures/pcap/plain.pcap";
    let input = frames(&crate::repo().join(pcap));
    let expect = manifest("plain-expected.jsonl");
    assert_eq!(
        expect,
        ["allow A", "ambiguous A,C", "drop source-not-exposed"]
    );
    let (_, [out, amb, drops]) = replay(pcap, &["--src-vpc", "B"], "plain");
    // Nothing to rewrite: the frames leave as they came.
    assert_eq!(
        [out, amb, drops],
        [
            vec![input[0].clone()],
            vec![input[1].clone()],
            vec![input[2].clone()]
        ]
    );
    let (summary, [out, _, drops]) = replay(pcap, &[], "plain-no-vni");
    assert!(out.is_empty());
    assert_eq!(drops, input);
    assert_eq!(summary["drops"]["no-vni"], 3);
}

#[test]
fn a_broken_capture_is_refused_or_replayed_up_to_the_break() {
    // Not a capture at all: a clear error naming the file, nothing written.
    let run = flowgate(&["replay", "--config", CONFIG, "--pcap", CONFIG], "");
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("fixtures/pcap/config.yaml: neither pcap nor pcapng"),
        "{err}"
    );
    // Cut inside its eighth record: the seven before it are replayed and written.
    let whole = std::fs::read(crate::repo().join("fixtures/pcap/gateway.pcap")).unwrap();
    let cut = tmp("cut.pcap");
    std::fs::write(&cut, &whole[..1000]).unwrap();
    let out = tmp("cut-out.pcap");
    let run = flowgate(
        &[
            "replay",
            "--config",
            CONFIG,
            "--pcap",
            cut.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
        "",
    );
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("cut.pcap: frame 8"), "{err}");
    let summary: Value = serde_json::from_str(&stdout(&run)).unwrap();
    assert_eq!(summary["frames"], 7);
    let allowed_before = manifest("expected.jsonl")[..7]
        .iter()
        .filter(|e| e.starts_with("allow"))
        .count();
    assert_eq!(frames(&out).len(), allowed_before);
}
