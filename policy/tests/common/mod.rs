//! Shared by the integration tests: the reference oracle and the generators.
#![allow(dead_code)]

pub mod arb;
pub use flowgate_policy::oracle;

use proptest::prelude::ProptestConfig;

/// `FLOWGATE_PROPTEST_CASES` configs a property draws, or `default`.
pub fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("FLOWGATE_PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}
