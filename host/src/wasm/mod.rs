//! Policy modules in wasmtime: the engine set up for a dataplane ([`Runtime`]), loading and
//! checking modules with a cache of precompiled artifacts ([`LoadedModule`]), and configured
//! instances that judge batches ([`WasmPolicy`]) under deadlines of their own CPU time
//! (`budget`). The generated bindings stay in this module; `convert` turns them into the
//! policy library's types.

mod bindings;
mod budget;
mod columns;
mod convert;
mod instance;
mod load;
mod runtime;

pub use crate::policy::Verdicts;
pub use crate::store::create_private_dir;
pub use budget::{ClockError, thread_cpu_time};
pub use flowgate_policy::ConfigError;
pub use instance::{Adoption, Blueprint, HostFault, ModuleInfo, StartError, WasmPolicy};
pub use load::{LoadedModule, ModuleError, StartStep, compatible};
pub use runtime::{EngineOptions, Limits, Runtime, RuntimeError, Starts, instances_needed};

/// The WIT package this host speaks.
pub const WIT_PACKAGE: &str = "flowgate:policy";
/// The version of `wit/policy.wit`, read from it when the host is built.
pub const WIT_VERSION: &str = env!("FLOWGATE_WIT_VERSION");
/// The interface the host calls.
const FILTER_INTERFACE: &str = "flowgate:policy/filter";
