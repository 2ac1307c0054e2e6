//! Runs every conformance case under `fixtures/cases/` natively (the format is in
//! `fixtures/README.md`), and reports each mismatch with its case and line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::fs;
use std::path::{Path, PathBuf};

use flowgate_policy::json::{parse_packet, verdict_json};
use flowgate_policy::{Table, parse};
use serde_json::Value;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/cases")
}

/// Judges one case; returns a description of every mismatch.
fn run_case(dir: &Path) -> Vec<String> {
    let config_path = dir.join("config.yaml");
    let text = fs::read_to_string(&config_path).unwrap();
    let parsed = parse(&text, Some(&config_path.display().to_string()));
    let expected_error = dir.join("expected-error.json");
    if expected_error.exists() {
        let expected: Value =
            serde_json::from_str(&fs::read_to_string(&expected_error).unwrap()).unwrap();
        let Err(e) = parsed else {
            return vec!["the configuration was accepted, but must be refused".into()];
        };
        let mut problems = Vec::new();
        for (key, got) in [
            ("object", &e.object),
            ("field", &e.field),
            ("value", &e.value),
        ] {
            if expected[key].as_str() != got.as_deref() {
                problems.push(format!(
                    "{key}: expected {}, got {got:?} in `{e}`",
                    expected[key]
                ));
            }
        }
        if !e.message.contains(expected["message"].as_str().unwrap()) {
            problems.push(format!(
                "message: expected to contain {}, got `{e}`",
                expected["message"]
            ));
        }
        return problems;
    }
    let table = match parsed {
        Ok(config) => Table::build(&config),
        Err(e) => return vec![format!("the configuration was refused: {e}")],
    };
    let packets = fs::read_to_string(dir.join("packets.jsonl")).unwrap();
    let expected = fs::read_to_string(dir.join("expected.jsonl")).unwrap();
    let (packets, expected): (Vec<&str>, Vec<&str>) =
        (packets.lines().collect(), expected.lines().collect());
    let mut problems = Vec::new();
    if packets.len() != expected.len() {
        problems.push(format!(
            "{} packets but {} expected verdicts",
            packets.len(),
            expected.len()
        ));
    }
    for (n, (line, want)) in packets.iter().zip(&expected).enumerate() {
        let want: Value = serde_json::from_str(want).unwrap();
        let got = match parse_packet(line, table.catalog()) {
            Ok(packet) => verdict_json(table.catalog(), table.lookup(&packet)),
            Err(e) => serde_json::json!({"error": e}),
        };
        if got != want {
            problems.push(format!(
                "line {}: {line}\n    expected {want}\n    got      {got}",
                n + 1
            ));
        }
    }
    problems
}

#[test]
fn every_fixture_case_gets_its_expected_verdicts() {
    let mut dirs: Vec<PathBuf> = fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 8,
        "expected the bundled cases, found {dirs:?}"
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        for problem in run_case(dir) {
            failures.push(format!(
                "{}: {problem}",
                dir.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
