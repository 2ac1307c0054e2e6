//! A module instance with a configuration in force: what judges a worker's batches.

use std::time::Duration;

use flowgate_policy::explain::Explanation;
use flowgate_policy::packed::{VERDICT_BYTES, WordDecoder, encode_packets};
use flowgate_policy::{Catalog, ConfigError, Packet, Verdict};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};

use super::bindings::{self, Policy};
use super::budget::{ClockError, CpuBudget, thread_cpu_time};
use super::runtime::{CONFIGURE_FLAG, Limits, MEMORY_FLAG};
use super::{FILTER_INTERFACE, LoadedModule, ModuleError, Runtime, compatible, convert};
use crate::PolicyFault;

/// What a store holds for its instance.
pub struct HostState {
    limits: StoreLimits,
    /// The CPU time the call under way may run.
    budget: CpuBudget,
}

/// What a module says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The module's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The WIT package version it implements.
    pub wit_version: String,
}

/// A module instance with a configuration in force, judging batches.
pub struct WasmPolicy {
    module: LoadedModule,
    limits: Limits,
    store: Store<HostState>,
    instance: Policy,
    info: ModuleInfo,
    catalog: Catalog,
    /// The verdicts of the words the catalog knows.
    decoder: WordDecoder,
    config: String,
    peerings: u32,
    notices: Vec<String>,
    packed: Vec<u8>,
}

impl WasmPolicy {
    /// Instantiates `module` and hands it `config`.
    pub fn new(runtime: &Runtime, module: &LoadedModule, config: &str) -> Result<Self, StartError> {
        Self::start_checked(runtime, module, config).map_err(|failed| failed.error)
    }

    /// [`WasmPolicy::new`] for a worker of a release whose module has already accepted
    /// `config`: a failure is the fault it stands for, the module's
    /// ([`PolicyFault::Start`]) or the host's ([`PolicyFault::Host`]).
    pub fn start(
        runtime: &Runtime,
        module: &LoadedModule,
        config: &str,
    ) -> Result<Self, PolicyFault> {
        Self::start_checked(runtime, module, config).map_err(StartFailure::fault)
    }

    fn start_checked(
        runtime: &Runtime,
        module: &LoadedModule,
        config: &str,
    ) -> Result<Self, StartFailure> {
        let limits = runtime.limits;
        let (mut store, instance) = new_store(runtime.engine(), module, limits)?;
        arm_configure(&mut store, limits.configure_deadline);
        let info = instance
            .flowgate_policy_filter()
            .call_info(&mut store)
            .map_err(|e| StartFailure::from_call(e, ModuleError::Start))?;
        if !compatible(&info.wit_version) {
            return Err(StartFailure::module(ModuleError::IncompatibleVersion {
                found: format!("{FILTER_INTERFACE}@{}", info.wit_version),
            }));
        }
        let info = ModuleInfo {
            name: info.name,
            version: info.version,
            wit_version: info.wit_version,
        };
        let summary = configure(&mut store, &instance, config, limits)?;
        let mut policy = WasmPolicy {
            module: module.clone(),
            limits: runtime.limits,
            store,
            instance,
            info,
            catalog: Catalog::default(),
            decoder: WordDecoder::default(),
            config: config.to_owned(),
            peerings: 0,
            notices: Vec::new(),
            packed: Vec::new(),
        };
        policy.set_summary(summary);
        Ok(policy)
    }

    fn set_summary(&mut self, summary: bindings::ConfigSummary) {
        self.peerings = summary.peerings;
        self.catalog = convert::catalog(&summary);
        self.decoder = WordDecoder::new(&self.catalog);
        self.notices = summary.notices;
    }

    /// The module's name and versions.
    pub fn info(&self) -> &ModuleInfo {
        &self.info
    }

    /// How many peerings the configuration has, and the module's notices about it.
    pub fn config_summary(&self) -> (u32, &[String]) {
        (self.peerings, &self.notices)
    }

    /// Starts over from a fresh instance with the same configuration: after a fault, the old
    /// instance may be poisoned.
    pub fn restart(&mut self) -> Result<(), StartError> {
        self.restart_checked().map_err(|failed| failed.error)
    }

    fn restart_checked(&mut self) -> Result<(), StartFailure> {
        let (mut store, instance) = new_store(self.store.engine(), &self.module, self.limits)?;
        let summary = configure(&mut store, &instance, &self.config, self.limits)?;
        (self.store, self.instance) = (store, instance);
        self.set_summary(summary);
        Ok(())
    }

    /// Asks the module why `packet` gets its verdict (`explain`).
    pub fn explain(&mut self, packet: &Packet) -> Result<Explanation, PolicyFault> {
        arm(&mut self.store, self.limits.batch_deadline);
        let e = self
            .instance
            .flowgate_policy_filter()
            .call_explain(&mut self.store, convert::to_wit_packet(packet))
            .map_err(|e| fault_from_call(&e))?;
        let e = convert::explanation(e);
        if !self.catalog.knows(e.verdict) {
            return Err(PolicyFault::UnknownVerdict { index: 0 });
        }
        Ok(e)
    }

    /// Judges a batch through the typed `judge` call.
    pub fn judge_typed(
        &mut self,
        packets: &[Packet],
        out: &mut [Verdict],
    ) -> Result<(), PolicyFault> {
        let wit: Vec<bindings::Packet> = packets.iter().map(convert::to_wit_packet).collect();
        arm(&mut self.store, self.limits.batch_deadline);
        let verdicts = self
            .instance
            .flowgate_policy_filter()
            .call_judge(&mut self.store, &wit)
            .map_err(|e| fault_from_call(&e))?;
        if verdicts.len() != packets.len() {
            return Err(PolicyFault::WrongLength {
                expected: packets.len(),
                got: verdicts.len(),
            });
        }
        for (index, (slot, v)) in out.iter_mut().zip(verdicts).enumerate() {
            let verdict = convert::from_wit_verdict(v);
            if !self.catalog.knows(verdict) {
                return Err(PolicyFault::UnknownVerdict { index });
            }
            *slot = verdict;
        }
        Ok(())
    }
}

/// Why a module could not be started with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The module misbehaved.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// The module refused the configuration.
    #[error("configuration refused: {0}")]
    Config(#[from] ConfigError),
}

/// A start that failed, and whether the host is to blame: the module is when it trapped, ran
/// out of its CPU time or memory, refused the configuration or is incompatible; the host is
/// when it had no room for the instance (its pool is full), could not map its memory, or
/// could not read the CPU clock.
struct StartFailure {
    error: StartError,
    host: bool,
}

impl StartFailure {
    fn module(error: impl Into<StartError>) -> Self {
        StartFailure {
            error: error.into(),
            host: false,
        }
    }

    /// An instantiation that failed: the module's only if it trapped (in a start function)
    /// or hit its memory cap, since the same module was instantiated before.
    fn from_instantiate(e: wasmtime::Error) -> Self {
        let host = !(e.is::<wasmtime::Trap>() || hit_memory_cap(&e));
        StartFailure {
            error: ModuleError::Start(format!("{e:#}")).into(),
            host,
        }
    }

    /// A call that did not return, as `error` says it.
    fn from_call(e: wasmtime::Error, error: impl FnOnce(String) -> ModuleError) -> Self {
        let host = matches!(fault_from_call(&e), PolicyFault::Host(_));
        StartFailure {
            error: error(format!("{e:#}")).into(),
            host,
        }
    }

    fn fault(self) -> PolicyFault {
        match self.host {
            true => PolicyFault::Host(self.error.to_string()),
            false => PolicyFault::Start(self.error.to_string()),
        }
    }
}

impl From<StartFailure> for StartError {
    fn from(failed: StartFailure) -> Self {
        failed.error
    }
}

/// A store with `module` instantiated in it, limited by `limits`, its calls stopped by their
/// budget of CPU time (see [`super::budget`]).
fn new_store(
    engine: &Engine,
    module: &LoadedModule,
    limits: Limits,
) -> Result<(Store<HostState>, Policy), StartFailure> {
    let state = HostState {
        limits: StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build(),
        budget: CpuBudget::new(limits.configure_deadline),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(|mut cx| {
        let now = thread_cpu_time()?;
        Ok(cx.data_mut().budget.on_deadline(now))
    });
    arm_configure(&mut store, limits.configure_deadline);
    let instance = module
        .pre
        .instantiate(&mut store)
        .map_err(StartFailure::from_instantiate)?;
    Ok((store, instance))
}

/// Instantiates `module` in a fresh store (what loading a module checks).
pub(super) fn instantiate(
    engine: &Engine,
    module: &LoadedModule,
    limits: Limits,
) -> Result<(Store<HostState>, Policy), ModuleError> {
    new_store(engine, module, limits).map_err(|failed| match failed.error {
        StartError::Module(e) => e,
        StartError::Config(e) => ModuleError::Start(e.to_string()),
    })
}

/// Gives the next call into `store` a budget of `limit` of CPU time. Its epoch deadline is
/// the next tick, where the callback takes over: per call, no clock is read.
fn arm(store: &mut Store<HostState>, limit: Duration) {
    store.data_mut().budget = CpuBudget::new(limit);
    store.set_epoch_deadline(1);
}

/// [`arm`] for a configure call: a budget of `limit` of CPU time, with its backstop on the
/// clock.
fn arm_configure(store: &mut Store<HostState>, limit: Duration) {
    store.data_mut().budget = CpuBudget::configure(limit);
    store.set_epoch_deadline(1);
}

fn configure(
    store: &mut Store<HostState>,
    instance: &Policy,
    config: &str,
    limits: Limits,
) -> Result<bindings::ConfigSummary, StartFailure> {
    arm_configure(store, limits.configure_deadline);
    match instance
        .flowgate_policy_filter()
        .call_configure(&mut *store, config)
    {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(e)) => Err(StartFailure::module(convert::config_error(e))),
        Err(trap) => Err(configure_failed(trap, limits)),
    }
}

/// A configure call that did not return: running out of memory or CPU time on a
/// configuration is a refusal of that configuration, which names the limit and the flag that
/// raises it.
fn configure_failed(trap: wasmtime::Error, limits: Limits) -> StartFailure {
    let refused = |message: String| StartFailure::module(ConfigError::whole(message));
    match fault_from_call(&trap) {
        PolicyFault::Memory => refused(format!(
            "the module ran out of its {} MiB of memory reading this configuration (raise the cap with {MEMORY_FLAG})",
            limits.memory_bytes >> 20
        )),
        PolicyFault::Deadline => refused(format!(
            "the module ran longer than its {:?} of CPU time reading this configuration (raise the limit with {CONFIGURE_FLAG})",
            limits.configure_deadline
        )),
        PolicyFault::Host(e) => StartFailure {
            error: ModuleError::Start(format!("configure: {e}")).into(),
            host: true,
        },
        other => StartFailure::module(ModuleError::Start(format!("configure: {other}"))),
    }
}

impl crate::Policy for WasmPolicy {
    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Judges a batch through the packed `judge-packed` call: the dataplane's path.
    fn judge(&mut self, packets: &[Packet], out: &mut [Verdict]) -> Result<(), PolicyFault> {
        encode_packets(packets, &mut self.packed);
        arm(&mut self.store, self.limits.batch_deadline);
        let answer = self
            .instance
            .flowgate_policy_filter()
            .call_judge_packed(&mut self.store, &self.packed)
            .map_err(|e| fault_from_call(&e))?;
        if answer.len() != packets.len() * VERDICT_BYTES {
            return Err(PolicyFault::WrongLength {
                expected: packets.len(),
                got: answer.len() / VERDICT_BYTES,
            });
        }
        for (index, (slot, rec)) in out
            .iter_mut()
            .zip(answer.as_chunks::<VERDICT_BYTES>().0)
            .enumerate()
        {
            let verdict = self
                .decoder
                .verdict(u32::from_le_bytes(*rec))
                .ok_or(PolicyFault::UnknownVerdict { index })?;
            *slot = verdict;
        }
        Ok(())
    }

    fn restart(&mut self) -> Result<(), PolicyFault> {
        self.restart_checked().map_err(StartFailure::fault)
    }
}

/// The fault a call that did not return stands for. Only the CPU clock failing is the
/// host's; anything else that stops a call is the module's doing (an interrupt is its budget
/// of CPU time run out).
pub(crate) fn fault_from_call(e: &wasmtime::Error) -> PolicyFault {
    if let Some(clock) = e.downcast_ref::<ClockError>() {
        PolicyFault::Host(clock.to_string())
    } else if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        PolicyFault::Deadline
    } else if hit_memory_cap(e) {
        PolicyFault::Memory
    } else {
        PolicyFault::Trap(one_line(e))
    }
}

/// The store's limiter refused to grow a memory past its cap (`trap_on_grow_failure`).
fn hit_memory_cap(e: &wasmtime::Error) -> bool {
    e.chain()
        .any(|c| c.to_string().contains("forcing trap when growing memory"))
}

/// An error's message without wasmtime's multi-line backtrace: the trap, then the causes.
fn one_line(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let first = text.lines().next().unwrap_or_default().trim();
        if !first.is_empty() && !first.starts_with("error while executing at wasm backtrace") {
            parts.push(first.to_owned());
        }
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        let trap = trap.to_string();
        if !parts.contains(&trap) {
            parts.push(trap);
        }
    }
    parts.dedup();
    parts.join(": ")
}
