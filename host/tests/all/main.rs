//! The host's integration tests, one binary with a module per topic (as wasmtime does it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose
#![allow(missing_docs)]

mod cli;
mod fixtures;
mod kit;
mod live;
mod paths;
mod refusals;
mod replay;
mod swap;

use std::path::PathBuf;

use flowgate_host::module::{Limits, Runtime};

/// A runtime that does not touch the user's cache.
pub fn runtime() -> Runtime {
    Runtime::new(Limits::default(), None).unwrap()
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
