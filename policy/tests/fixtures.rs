//! Runs every conformance case under `fixtures/cases/` natively (the format is in
//! `fixtures/README.md`), and reports each mismatch with its case and line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::path::Path;

use flowgate_policy::cases::Case;
use flowgate_policy::{Table, parse};

#[test]
fn every_fixture_case_gets_its_expected_verdicts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/cases");
    let cases = Case::load_all(&dir).unwrap();
    assert!(
        cases.len() >= 11,
        "expected the bundled cases in {}, found {}",
        dir.display(),
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let problems = match parse(&case.config, Some("config.yaml")) {
            Err(e) => case.check_error(Some(&e)),
            Ok(config) => {
                let table = Table::build(&config).unwrap();
                case.check_verdicts(table.catalog(), |packets| {
                    packets.iter().map(|p| table.lookup(p)).collect()
                })
            }
        };
        failures.extend(problems.into_iter().map(|p| format!("{}: {p}", case.name)));
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
