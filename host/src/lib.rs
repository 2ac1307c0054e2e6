//! flowgate's dataplane host: it loads policy modules (Wasm components implementing
//! `wit/policy.wit`) with wasmtime, feeds them batches of packets and applies the verdicts.
//!
//! - [`module`]: wasmtime set up for a dataplane; loading, checking and caching modules; a
//!   configured instance that judges batches ([`module::WasmPolicy`]).
//! - [`dataplane`]: the batch loop in phases (read a batch, one guest call, apply verdicts)
//!   and its counters.
//! - [`gateway`]: a long-running gateway with worker threads, hot swaps, rollbacks and fault
//!   containment; [`admin`] is its HTTP API, [`metrics`] its Prometheus metrics, [`source`]
//!   where its packets come from.
//! - [`replay`]: captures (pcap, pcapng) replayed through a policy and written back out;
//!   [`vxlan`]: a live gateway's UDP socket.
//! - [`kit`]: the policy author's tools: conformance cases against a module, verdict diffs
//!   between modules.
//! - [`NativePolicy`]: the same policy without Wasm, for comparison and as a baseline.

pub mod admin;
pub mod dataplane;
pub mod gateway;
pub mod io;
pub mod kit;
pub mod policy;
pub mod wasm;

pub use policy::{NativePolicy, Policy, PolicyFault};
pub use wasm::{ConfigRefused, ModuleError, StartError};

/// The default policy module, built from `guest/component` when the host is built.
pub static DEFAULT_MODULE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flowgate_guest.wasm"));

/// The bundled demo configuration (`fixtures/default/config.yaml`).
pub static DEFAULT_CONFIG: &str = include_str!("../../fixtures/default/config.yaml");
/// The bundled demo trace (`fixtures/default/packets.jsonl`).
pub static DEFAULT_PACKETS: &str = include_str!("../../fixtures/default/packets.jsonl");

/// The conformance cases of `fixtures/cases`, embedded: `(case name, [(file name, contents)])`.
/// [`bundled_cases`] reads them.
pub static BUNDLED_CASES: &[(&str, &[(&str, &str)])] =
    include!(concat!(env!("OUT_DIR"), "/bundled_cases.rs"));

/// The bundled conformance cases, read (what `flowgate test` runs with no directory).
pub fn bundled_cases() -> Result<Vec<flowgate_policy::cases::Case>, String> {
    BUNDLED_CASES
        .iter()
        .map(|(name, files)| {
            let dir = std::path::Path::new("fixtures/cases").join(name);
            flowgate_policy::cases::Case::parse(name, &dir, |file| {
                Ok(files
                    .iter()
                    .find(|(f, _)| *f == file)
                    .map(|(_, text)| (*text).to_owned()))
            })
        })
        .collect()
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
