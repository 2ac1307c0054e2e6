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
mod bindings;
pub mod dataplane;
pub mod gateway;
pub mod http;
pub mod kit;
pub mod metrics;
pub mod module;
pub mod replay;
pub mod source;
pub mod vxlan;

use flowgate_policy::{Catalog, Packet, Table, Verdict};

pub use module::{ConfigRefused, ModuleError, PolicyFault, StartError};

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

/// Something that judges batches of packets: a Wasm module or the native library.
pub trait Policy {
    /// The names behind the verdicts.
    fn catalog(&self) -> &Catalog;
    /// Judges `packets` into `out` (same length). On error `out` is unspecified.
    fn judge(&mut self, packets: &[Packet], out: &mut [Verdict]) -> Result<(), PolicyFault>;
    /// Starts over after a fault, with the same configuration.
    fn restart(&mut self) -> anyhow::Result<()>;
}

/// The policy library called directly: no sandbox, no crossing.
pub struct NativePolicy {
    table: Table,
}

impl NativePolicy {
    /// Parses, validates and builds `config`; `file` names it in errors.
    pub fn new(config: &str, file: Option<&str>) -> Result<Self, flowgate_policy::ConfigError> {
        Ok(NativePolicy {
            table: Table::build(&flowgate_policy::parse(config, file)?),
        })
    }

    /// The table.
    pub fn table(&self) -> &Table {
        &self.table
    }
}

impl Policy for NativePolicy {
    fn catalog(&self) -> &Catalog {
        self.table.catalog()
    }

    fn judge(&mut self, packets: &[Packet], out: &mut [Verdict]) -> Result<(), PolicyFault> {
        self.table.lookup_batch(packets, out);
        Ok(())
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}
