//! flowgate's dataplane host: it loads policy modules (Wasm components implementing
//! `wit/policy.wit`) with wasmtime, feeds them batches of packets and applies the verdicts.
//!
//! By layer, each leaning only on the ones above it:
//! - [`store`]: private folders for what flowgate made itself (its caches): checked, sealed
//!   with a key of their own, written whole.
//! - [`setting`]: the settings an error can name as its cause ([`Setting`]), and the limits a
//!   configuration can be refused for ([`OverLimit`]).
//! - [`policy`]: what judges a batch ([`Policy`]): the library natively ([`NativePolicy`]) or
//!   a module; the [`PolicyFault`] a batch ends with, which keeps the error a fresh instance
//!   failed with boxed ([`FaultSource`]: a [`wasm::StartError`] or [`wasm::HostFault`]).
//! - [`wasm`]: wasmtime set up for a dataplane ([`wasm::Runtime`]); loading, checking and
//!   caching modules; a configured instance ([`wasm::WasmPolicy`]).
//! - [`dataplane`]: the one batch step ([`dataplane::step`]: judge, handle a fault, count),
//!   its counters and latency histogram.
//! - [`io`]: packet ports: a looping trace, pcap/pcapng replay, a VXLAN socket.
//! - [`oci`]: modules in an OCI registry: references, a client that pulls by tag or digest
//!   and verifies every byte, the cache of pulled modules.
//! - [`gateway`]: releases published for workers, hot swaps, rollbacks and fault containment;
//!   [`gateway::Worker`] is the stage a dataplane holds per core; [`gateway::serve`] runs
//!   workers on their ports.
//! - [`admin`]: the gateway's admin API (server, client, Prometheus metrics).
//! - [`kit`]: the policy author's tools: conformance cases against a module, verdict diffs.
//!
//! Errors are typed. Those a setting of the embedder's can cause (a size limit, the memory
//! cap, a registry allowed plain HTTP) carry the [`Setting`], for the program that chose it to
//! say how to change it.
//!
//! # Embedding
//!
//! A dataplane with its own packet I/O (a DPDK or AF_XDP pipeline) loads a module once,
//! gives each of its cores a [`gateway::Worker`], and judges each burst in place; the control
//! plane publishes releases from any thread (the writer), and every worker picks the new one
//! up at its next burst with one atomic load (the reader), so no burst is judged by two.
//!
//! ```
//! use flowgate_host::gateway::{Gateway, Options, SwapRequest};
//! use flowgate_host::wasm::{EngineOptions, Limits, Runtime};
//! use flowgate_policy::{Packet, Verdict};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = flowgate_host::DEFAULT_CONFIG;
//! // Once: an engine with room for the workers, the module checked, compiled, configured.
//! let runtime = Runtime::with_engine(Limits::default(), None, EngineOptions::for_workers(2))?;
//! let options = Options { workers: 2, ..Options::default() };
//! let gateway = Gateway::new(runtime, flowgate_host::DEFAULT_MODULE, config, options)?;
//!
//! // Per core: a stage that judges bursts in place.
//! let mut stage = gateway.worker(0);
//! let vni = gateway.current().catalog.vpcs[0].vni;
//! let burst: Vec<Packet> = (0..32)
//!     .map(|i| Packet::tcp(vni, [10, 0, 0, i].into(), 40000, [10, 1, 0, 1].into(), 443))
//!     .collect();
//! let mut verdicts = vec![Verdict::default(); burst.len()];
//! let judged = stage.judge(&burst, &mut verdicts);
//! match judged.verdicts {
//!     // Forward each allowed packet to its VPC (`judged.catalog` names it); drop the rest.
//!     Some(verdicts) => assert_eq!(verdicts.len(), burst.len()),
//!     // The module failed on this burst: drop all of it, fail-closed.
//!     None => unreachable!("the default module does not fail"),
//! }
//! assert_eq!(judged.generation, 1);
//!
//! // The control plane, from any thread: a new release; the stage takes it at its next burst.
//! gateway.swap(SwapRequest::config(config))?;
//! assert_eq!(stage.judge(&burst, &mut verdicts).generation, 2);
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod dataplane;
pub mod gateway;
pub mod io;
pub mod kit;
pub mod oci;
pub mod policy;
pub mod setting;
pub mod store;
pub mod wasm;

pub use policy::{FaultKind, FaultSource, NativePolicy, Policy, PolicyFault};
pub use setting::{OverLimit, Setting};
pub use wasm::{ConfigError, ModuleError, StartError};

/// The default policy module, built from `guest/default` when the host is built.
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
pub fn bundled_cases()
-> Result<Vec<flowgate_policy::cases::Case>, flowgate_policy::cases::CaseError> {
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
