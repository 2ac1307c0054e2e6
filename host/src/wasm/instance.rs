//! A module instance with a configuration in force: what judges a worker's batches.

use flowgate_policy::explain::Explanation;
use flowgate_policy::packed::{VERDICT_BYTES, WordDecoder, encode_packets};
use flowgate_policy::{Catalog, ConfigError, Packet, Verdict};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};

use super::bindings::{self, Policy};
use super::runtime::{CONFIGURE_FLAG, Limits, MEMORY_FLAG, ticks};
use super::{FILTER_INTERFACE, LoadedModule, ModuleError, Runtime, compatible, convert};
use crate::PolicyFault;

/// What a store holds for its instance.
pub struct HostState {
    limits: StoreLimits,
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
        let (mut store, instance) = instantiate(runtime.engine(), module, runtime.limits)?;
        store.set_epoch_deadline(ticks(runtime.limits.configure_deadline));
        let info = instance
            .flowgate_policy_filter()
            .call_info(&mut store)
            .map_err(|e| ModuleError::Start(format!("{e:#}")))?;
        if !compatible(&info.wit_version) {
            return Err(ModuleError::IncompatibleVersion {
                found: format!("{FILTER_INTERFACE}@{}", info.wit_version),
            }
            .into());
        }
        let info = ModuleInfo {
            name: info.name,
            version: info.version,
            wit_version: info.wit_version,
        };
        let summary = configure(&mut store, &instance, config, runtime.limits)?;
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
        let (mut store, instance) = instantiate(self.store.engine(), &self.module, self.limits)?;
        store.set_epoch_deadline(ticks(self.limits.configure_deadline));
        let summary = configure(&mut store, &instance, &self.config, self.limits)?;
        (self.store, self.instance) = (store, instance);
        self.set_summary(summary);
        Ok(())
    }

    /// Asks the module why `packet` gets its verdict (`explain`).
    pub fn explain(&mut self, packet: &Packet) -> Result<Explanation, PolicyFault> {
        self.store
            .set_epoch_deadline(ticks(self.limits.batch_deadline));
        let e = self
            .instance
            .flowgate_policy_filter()
            .call_explain(&mut self.store, convert::to_wit_packet(packet))
            .map_err(fault_from_call)?;
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
        self.store
            .set_epoch_deadline(ticks(self.limits.batch_deadline));
        let verdicts = self
            .instance
            .flowgate_policy_filter()
            .call_judge(&mut self.store, &wit)
            .map_err(fault_from_call)?;
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

pub(super) fn instantiate(
    engine: &Engine,
    module: &LoadedModule,
    limits: Limits,
) -> Result<(Store<HostState>, Policy), ModuleError> {
    let state = HostState {
        limits: StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(ticks(limits.configure_deadline));
    let instance = module
        .pre
        .instantiate(&mut store)
        .map_err(|e| ModuleError::Start(format!("{e:#}")))?;
    Ok((store, instance))
}

fn configure(
    store: &mut Store<HostState>,
    instance: &Policy,
    config: &str,
    limits: Limits,
) -> Result<bindings::ConfigSummary, StartError> {
    match instance
        .flowgate_policy_filter()
        .call_configure(&mut *store, config)
    {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(e)) => Err(convert::config_error(e).into()),
        Err(trap) => Err(configure_failed(trap, limits)),
    }
}

/// A configure call that did not return: running out of memory or time on a configuration is
/// a refusal of that configuration, which names the limit and the flag that raises it.
fn configure_failed(trap: wasmtime::Error, limits: Limits) -> StartError {
    let refused = |message: String| StartError::Config(ConfigError::whole(message));
    match fault_from_call(trap) {
        PolicyFault::Memory => refused(format!(
            "the module ran out of its {} MiB of memory reading this configuration (raise the cap with {MEMORY_FLAG})",
            limits.memory_bytes >> 20
        )),
        PolicyFault::Deadline => refused(format!(
            "the module took longer than its {:?} to read this configuration (raise the limit with {CONFIGURE_FLAG})",
            limits.configure_deadline
        )),
        other => ModuleError::Start(format!("configure: {other}")).into(),
    }
}

impl crate::Policy for WasmPolicy {
    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Judges a batch through the packed `judge-packed` call: the dataplane's path.
    fn judge(&mut self, packets: &[Packet], out: &mut [Verdict]) -> Result<(), PolicyFault> {
        encode_packets(packets, &mut self.packed);
        self.store
            .set_epoch_deadline(ticks(self.limits.batch_deadline));
        let answer = self
            .instance
            .flowgate_policy_filter()
            .call_judge_packed(&mut self.store, &self.packed)
            .map_err(fault_from_call)?;
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

    fn restart(&mut self) -> anyhow::Result<()> {
        WasmPolicy::restart(self).map_err(Into::into)
    }
}

/// The fault a call that did not return stands for.
pub(crate) fn fault_from_call(e: wasmtime::Error) -> PolicyFault {
    if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        PolicyFault::Deadline
    } else if e
        .chain()
        .any(|c| c.to_string().contains("forcing trap when growing memory"))
    {
        PolicyFault::Memory
    } else {
        PolicyFault::Trap(one_line(&e))
    }
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
