//! Shared by the integration tests: the reference oracle and the generators.
#![allow(dead_code)]

pub mod arb;
pub use flowgate_policy::oracle;
