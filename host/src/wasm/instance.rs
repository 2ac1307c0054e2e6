//! A module instance with a configuration in force: what judges a worker's batches.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flowgate_policy::explain::Explanation;
use flowgate_policy::packed::{Columns, ColumnsError, WordDecoder};
use flowgate_policy::{Catalog, ConfigError, Packet, Verdict};
use wasmtime::{Engine, ResourceLimiter, Store};

use super::bindings::{self, Guest};
use super::budget::{ClockError, CpuBudget, thread_cpu_time};
use super::columns::Packed;
use super::runtime::{Limits, Starts};
use super::{FILTER_INTERFACE, LoadedModule, ModuleError, Runtime, StartStep, compatible, convert};
use crate::policy::{PolicyFault, Verdicts};
use crate::setting::{OverLimit, Setting};

/// What a store holds for its instance.
pub struct HostState {
    /// The store's limiter: it holds the memory cap and records a guest that hit it.
    memory: MemoryCap,
    /// The CPU time the call under way may run.
    budget: CpuBudget,
}

/// The store's [`ResourceLimiter`]: an instance's memory may grow up to the cap and no
/// further. A growth past the cap (or past the memory's own maximum) traps at the
/// `memory.grow` itself, as a guest cannot be trusted to handle a failed one, and is recorded:
/// a call that fails after it is [`PolicyFault::Memory`], whatever its error says.
struct MemoryCap {
    /// The cap in bytes.
    bytes: usize,
    /// A growth past the cap was refused since the store's last call began.
    hit: bool,
}

/// A memory growth the limiter refused (the trap's cause).
#[derive(Debug, thiserror::Error)]
#[error("forcing trap when growing memory to {desired} bytes")]
struct MemoryRefused {
    desired: usize,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.bytes || maximum.is_some_and(|max| desired > max) {
            self.hit = true;
            return Err(wasmtime::Error::new(MemoryRefused { desired }));
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error.context("forcing a memory growth failure to be a trap"))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match maximum {
            Some(max) if desired > max => Err(wasmtime::Error::msg(format!(
                "forcing trap when growing table to {desired} elements"
            ))),
            _ => Ok(true),
        }
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error.context("forcing a table growth failure to be a trap"))
    }
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

/// Most words a part of `export-state` may hold (`wit/policy.wit`).
const STATE_PART_WORDS: usize = 1 << 16;

/// What the instances of one module with one configuration start from: the module, what it
/// says of itself and of the configuration, and the state that its configured instance built
/// (`export-state`), which the others adopt (`adopt-state`) instead of configuring. Cheap to
/// clone: its parts are shared.
#[derive(Clone)]
pub struct Blueprint {
    module: LoadedModule,
    config: Arc<str>,
    info: ModuleInfo,
    catalog: Arc<Catalog>,
    peerings: u32,
    notices: Arc<[String]>,
    /// `None` from a module that does not hand its state over: each instance configures.
    state: Option<Arc<[u32]>>,
}

impl Blueprint {
    /// The module.
    pub fn module(&self) -> &LoadedModule {
        &self.module
    }

    /// The configuration text.
    pub fn config(&self) -> &Arc<str> {
        &self.config
    }

    /// Words of the state that instances adopt, or `None` when each configures on its own.
    pub fn state_words(&self) -> Option<usize> {
        self.state.as_ref().map(|s| s.len())
    }
}

/// How an instance adopting a blueprint's state takes it (`adopt-state`'s `vouched`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// The instance checks every index a lookup follows, as a state from anywhere needs.
    Checked,
    /// The host vouches for the state: the instance is put to work only once another
    /// instance adopted the same words [`Adoption::Checked`], so it skips those checks (about
    /// half of an adoption's time; they answer alike for the same words).
    Vouched,
}

/// A module instance with a configuration in force, judging batches.
pub struct WasmPolicy {
    plan: Blueprint,
    limits: Limits,
    store: Store<HostState>,
    instance: Guest,
    catalog: Catalog,
    /// The verdicts of the words the catalog knows.
    decoder: WordDecoder,
    /// Whether the instance adopted its state rather than configured it (and so must be
    /// configured before it explains).
    adopted: bool,
    /// Its runtime's count of starts.
    starts: Arc<Starts>,
    /// The packed call's batch and answer, kept across calls.
    packed: Packed,
}

impl WasmPolicy {
    /// Stops each of this instance's batches after `deadline` of CPU time from now on (the
    /// runtime's [`Limits::batch_deadline`] otherwise): a shadow's instance gets a shorter
    /// one, and the runtime's again when it is promoted.
    pub fn set_batch_deadline(&mut self, deadline: Duration) {
        self.limits.batch_deadline = deadline;
    }

    /// Instantiates `module` and hands it `config`.
    pub fn new(runtime: &Runtime, module: &LoadedModule, config: &str) -> Result<Self, StartError> {
        Self::start_checked(runtime, module, config).map_err(|failed| failed.error)
    }

    /// [`WasmPolicy::new`] for a worker of a release whose module has already accepted
    /// `config`: a failure is the fault it stands for, the module's
    /// ([`PolicyFault::Start`]) or the host's ([`PolicyFault::Host`] with
    /// [`HostFault::Start`]).
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
            .map_err(|e| StartFailure::from_call(e, &store, StartStep::Info))?;
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
        let summary = configure(&mut store, &instance, config, limits, &runtime.starts)?;
        let catalog = convert::catalog(&summary);
        Ok(WasmPolicy {
            plan: Blueprint {
                module: module.clone(),
                config: config.into(),
                info,
                catalog: Arc::new(catalog.clone()),
                peerings: summary.peerings,
                notices: summary.notices.into(),
                state: None,
            },
            limits,
            store,
            instance,
            decoder: WordDecoder::new(&catalog),
            catalog,
            adopted: false,
            starts: runtime.starts.clone(),
            packed: Packed::default(),
        })
    }

    /// The blueprint of this instance's module and configuration, with the state it built
    /// (`export-state`) for other instances to adopt: see [`WasmPolicy::adopt`].
    /// A failure is the fault it stands for, the module's or the host's (see
    /// [`WasmPolicy::start`]).
    pub fn blueprint(&mut self) -> Result<Blueprint, PolicyFault> {
        if self.plan.state.is_none() && !self.adopted {
            self.plan.state = self.export_state().map_err(StartFailure::fault)?;
        }
        Ok(self.plan.clone())
    }

    /// Whether the instance hands over exactly `plan`'s state (`export-state`): an instance
    /// that adopted it must.
    /// Compared part by part, as they come: nothing of the size of the state is allocated.
    pub fn holds(&mut self, plan: &Blueprint) -> Result<bool, PolicyFault> {
        let want = plan.state.as_deref().unwrap_or_default();
        let mut same = true;
        let got = self
            .export_parts(|at, part| {
                same &= want.get(at..at + part.len()) == Some(part);
            })
            .map_err(StartFailure::fault)?;
        Ok(same && got == want.len())
    }

    /// The module's state, part by part, within one configure budget; `None` when it hands
    /// none over.
    fn export_state(&mut self) -> Result<Option<Arc<[u32]>>, StartFailure> {
        let mut words: Vec<u32> = Vec::new();
        self.export_parts(|_, part| words.extend_from_slice(part))?;
        Ok((!words.is_empty()).then(|| words.into()))
    }

    /// Hands each part of the module's state to `take` with where it starts, within one
    /// configure budget; the state's length in words.
    fn export_parts(&mut self, mut take: impl FnMut(usize, &[u32])) -> Result<usize, StartFailure> {
        let export = |e: &dyn std::fmt::Display| {
            StartFailure::module(ModuleError::start(StartStep::Export, e))
        };
        // A state larger than the module's memory cap cannot be adopted by another instance.
        let most = self.limits.memory_bytes / 4;
        let mut len = 0usize;
        arm_configure(&mut self.store, self.limits.configure_deadline);
        loop {
            let at = u32::try_from(len).map_err(|_| export(&"the state passed 2^32 words"))?;
            let part = self
                .instance
                .flowgate_policy_filter()
                .call_export_state(&mut self.store, at)
                .map_err(|e| StartFailure::from_call(e, &self.store, StartStep::Export))?;
            if part.is_empty() {
                break;
            }
            if part.len() > STATE_PART_WORDS {
                return Err(export(&format_args!(
                    "a part of {} words, more than {STATE_PART_WORDS}",
                    part.len()
                )));
            }
            if len + part.len() > most {
                return Err(export(&format_args!(
                    "the state passed {most} words, the module's memory cap"
                )));
            }
            take(len, &part);
            len += part.len();
        }
        Ok(len)
    }

    /// An instance of `plan`'s module with its configuration in force, started from the
    /// blueprint's state (`adopt-state`, [`Adoption::Checked`]) when it has one, else
    /// configured.
    pub fn adopt(runtime: &Runtime, plan: &Blueprint) -> Result<Self, StartError> {
        Self::start_failing(runtime, plan, Adoption::Checked).map_err(|failed| failed.error)
    }

    /// [`WasmPolicy::adopt`] for a worker, adopting `how`: a failure is the fault it stands
    /// for (see [`WasmPolicy::start`]).
    pub fn start_from(
        runtime: &Runtime,
        plan: &Blueprint,
        how: Adoption,
    ) -> Result<Self, PolicyFault> {
        Self::start_failing(runtime, plan, how).map_err(StartFailure::fault)
    }

    fn start_failing(
        runtime: &Runtime,
        plan: &Blueprint,
        how: Adoption,
    ) -> Result<Self, StartFailure> {
        let Some(state) = &plan.state else {
            let mut policy = Self::start_checked(runtime, &plan.module, &plan.config)?;
            policy.plan = plan.clone();
            return Ok(policy);
        };
        let limits = runtime.limits;
        let (mut store, instance) = new_store(runtime.engine(), &plan.module, limits)?;
        adopt(&mut store, &instance, (state, how), limits, &runtime.starts)?;
        let catalog = Catalog::clone(&plan.catalog);
        Ok(WasmPolicy {
            plan: plan.clone(),
            limits,
            store,
            instance,
            decoder: WordDecoder::new(&catalog),
            catalog,
            adopted: true,
            starts: runtime.starts.clone(),
            packed: Packed::default(),
        })
    }

    /// Whether the instance adopted another's state rather than configured its own.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The module's name and versions.
    pub fn info(&self) -> &ModuleInfo {
        &self.plan.info
    }

    /// How many peerings the configuration has, and the module's notices about it.
    pub fn config_summary(&self) -> (u32, &[String]) {
        (self.plan.peerings, &self.plan.notices)
    }

    /// Starts over from a fresh instance with the same configuration (adopting the same state,
    /// when it has one: [`Adoption::Vouched`] when this instance is still the one that adopted
    /// it, whose own adoption was checked or vouched for; else with the checks): after a
    /// fault, the old instance may be poisoned.
    pub fn restart(&mut self) -> Result<(), StartError> {
        self.restart_checked().map_err(|failed| failed.error)
    }

    fn restart_checked(&mut self) -> Result<(), StartFailure> {
        let (mut store, instance) = new_store(self.store.engine(), &self.plan.module, self.limits)?;
        let how = if self.adopted {
            Adoption::Vouched
        } else {
            Adoption::Checked
        };
        match &self.plan.state {
            Some(state) => adopt(
                &mut store,
                &instance,
                (state, how),
                self.limits,
                &self.starts,
            )?,
            None => {
                configure(
                    &mut store,
                    &instance,
                    &self.plan.config,
                    self.limits,
                    &self.starts,
                )?;
            }
        }
        (self.store, self.instance) = (store, instance);
        self.adopted = self.plan.state.is_some();
        self.packed.checked = false;
        Ok(())
    }

    /// Asks the module why `packet` gets its verdict (`explain`).
    /// An instance that adopted its state is configured first (it has no configuration to
    /// explain by until then).
    pub fn explain(&mut self, packet: &Packet) -> Result<Explanation, PolicyFault> {
        if self.adopted {
            configure(
                &mut self.store,
                &self.instance,
                &self.plan.config,
                self.limits,
                &self.starts,
            )
            .map_err(StartFailure::fault)?;
            self.adopted = false;
        }
        arm(&mut self.store, self.limits.batch_deadline);
        let e = self
            .instance
            .flowgate_policy_filter()
            .call_explain(&mut self.store, convert::to_wit_packet(packet))
            .map_err(|e| fault_from_call(&e, &self.store))?;
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
            .map_err(|e| fault_from_call(&e, &self.store))?;
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

    /// Judges a burst laid out in columns by the dataplane's decoder, with one `judge-packed`
    /// call: the verdicts are read where the module's answer lies, checked once against the
    /// configuration's catalog.
    ///
    /// ```
    /// use flowgate_host::wasm::{Limits, Runtime, WasmPolicy};
    /// use flowgate_host::{DEFAULT_CONFIG, DEFAULT_MODULE, NativePolicy, Policy};
    /// use flowgate_policy::packed::Columns;
    /// use flowgate_policy::{Packet, Verdict};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let runtime = Runtime::new(Limits::default(), None)?;
    /// let module = runtime.load(DEFAULT_MODULE)?;
    /// let mut policy = WasmPolicy::new(&runtime, &module, DEFAULT_CONFIG)?;
    /// let vni = policy.catalog().vpcs[0].vni;
    ///
    /// // Once per core: a batch with room for a burst, reused burst after burst.
    /// let mut burst = Columns::with_capacity(256);
    ///
    /// // Per burst: the decoder sizes the batch, then writes each packet's slot as it reads
    /// // the frame (here TCP to port 443, from the first VPC and from a VNI no VPC has).
    /// burst.begin(3)?;
    /// let (src, dst) = ([10, 0, 0, 1].into(), [10, 1, 0, 1].into());
    /// let https = Some(flowgate_policy::Ports { src: 40000, dst: 443 });
    /// burst.set_v4(0, vni, 6, https, src, dst)?;
    /// burst.set_v4(1, 0xff_ffff, 6, https, src, dst)?;
    /// // Any packet, IPv6 included, through the general setter.
    /// let v6 = Packet::portless(vni, "fd00::1".parse()?, "fd00::2".parse()?, 58);
    /// burst.set(2, &v6)?;
    ///
    /// let verdicts = policy.judge_columns(&burst)?;
    /// assert_eq!(verdicts.len(), 3);
    /// for i in 0..verdicts.len() {
    ///     match verdicts.forward_vpc(i) {
    ///         Some(vpc) => { /* forward packet i to `vpc` */ }
    ///         None => { /* drop it, or pick among `verdicts.verdict(i)`'s candidates */ }
    ///     }
    /// }
    /// // The same verdicts the library gives natively.
    /// let native = NativePolicy::new(DEFAULT_CONFIG, None)?;
    /// let tcp = Packet::tcp(vni, src.into(), 40000, dst.into(), 443);
    /// assert_eq!(verdicts.verdict(0), Some(native.table().lookup(&tcp)));
    /// assert_eq!(verdicts.verdict(1), Some(Verdict::default()), "drop(unknown-vpc)");
    /// assert_eq!(verdicts.verdict(2), Some(native.table().lookup(&v6)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn judge_columns(&mut self, burst: &Columns) -> Result<Verdicts<'_>, PolicyFault> {
        self.packed.checked = false;
        self.packed.answer = call_packed(
            &mut self.store,
            &self.instance,
            self.limits.batch_deadline,
            burst.as_bytes(),
        )?;
        let verdicts = Verdicts::check(&self.packed.answer, burst.len(), &self.decoder)?;
        self.packed.checked = true;
        Ok(verdicts)
    }
}

/// One `judge-packed` call with `batch`, under a budget of `limit` of CPU time: the module's
/// answer.
fn call_packed(
    store: &mut Store<HostState>,
    instance: &Guest,
    limit: Duration,
    batch: &[u8],
) -> Result<Vec<u8>, PolicyFault> {
    arm(store, limit);
    instance
        .flowgate_policy_filter()
        .call_judge_packed(&mut *store, batch)
        .map_err(|e| fault_from_call(&e, store))
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
    /// Reading the configuration ran the module out of its memory or CPU time: a refusal of
    /// that configuration, for a limit of the host's.
    #[error("configuration refused: {0}")]
    OverLimit(OverLimit),
}

impl From<OverLimit> for StartError {
    fn from(e: OverLimit) -> Self {
        StartError::OverLimit(e)
    }
}

impl StartError {
    /// The setting that would have let the module start, when a limit stopped it.
    pub fn setting(&self) -> Option<Setting> {
        match self {
            StartError::OverLimit(e) => Some(e.setting()),
            StartError::Module(_) | StartError::Config(_) => None,
        }
    }
}

/// A failure of the host's, not the module's ([`PolicyFault::Host`]).
#[derive(Debug, thiserror::Error)]
pub enum HostFault {
    /// The thread's CPU clock could not be read.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// A fresh instance could not be started for want of room: the pool is full, or its
    /// memory could not be mapped.
    #[error(transparent)]
    Start(Box<StartError>),
    /// A batch larger than the packed layout holds.
    #[error(transparent)]
    Batch(#[from] ColumnsError),
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

    /// An instantiation that failed in `store`: the module's only if it trapped (in a start
    /// function) or hit its memory cap, since the same module was instantiated before.
    fn from_instantiate(e: wasmtime::Error, store: &Store<HostState>) -> Self {
        let host = !(e.is::<wasmtime::Trap>() || store.data().memory.hit);
        StartFailure {
            error: ModuleError::start(StartStep::Instantiate, format_args!("{e:#}")).into(),
            host,
        }
    }

    /// A call into `store` at `step` that did not return.
    fn from_call(e: wasmtime::Error, store: &Store<HostState>, step: StartStep) -> Self {
        let host = matches!(fault_from_call(&e, store), PolicyFault::Host(_));
        StartFailure {
            error: ModuleError::start(step, format_args!("{e:#}")).into(),
            host,
        }
    }

    fn fault(self) -> PolicyFault {
        match self.host {
            true => PolicyFault::Host(Box::new(HostFault::Start(Box::new(self.error)))),
            false => PolicyFault::Start(Box::new(self.error)),
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
) -> Result<(Store<HostState>, Guest), StartFailure> {
    let state = HostState {
        memory: MemoryCap {
            bytes: limits.memory_bytes,
            hit: false,
        },
        budget: CpuBudget::new(limits.configure_deadline),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.memory);
    store.epoch_deadline_callback(|mut cx| {
        let now = thread_cpu_time()?;
        Ok(cx.data_mut().budget.on_deadline(now))
    });
    arm_configure(&mut store, limits.configure_deadline);
    let instance = match module.pre.instantiate(&mut store) {
        Ok(instance) => instance,
        Err(e) => return Err(StartFailure::from_instantiate(e, &store)),
    };
    Ok((store, instance))
}

/// Instantiates `module` in a fresh store (what loading a module checks).
pub(super) fn instantiate(
    engine: &Engine,
    module: &LoadedModule,
    limits: Limits,
) -> Result<(Store<HostState>, Guest), ModuleError> {
    new_store(engine, module, limits).map_err(|failed| match failed.error {
        StartError::Module(e) => e,
        e @ (StartError::Config(_) | StartError::OverLimit(_)) => {
            ModuleError::start(StartStep::Instantiate, e)
        }
    })
}

/// Gives the next call into `store` a budget of `limit` of CPU time, and a clean record of
/// memory-cap hits. Its epoch deadline is the next tick, where the callback takes over: per
/// call, no clock is read.
fn arm(store: &mut Store<HostState>, limit: Duration) {
    let state = store.data_mut();
    state.budget = CpuBudget::new(limit);
    state.memory.hit = false;
    store.set_epoch_deadline(1);
}

/// [`arm`] for a configure call: a budget of `limit` of CPU time, with its backstop on the
/// clock.
fn arm_configure(store: &mut Store<HostState>, limit: Duration) {
    let state = store.data_mut();
    state.budget = CpuBudget::configure(limit);
    state.memory.hit = false;
    store.set_epoch_deadline(1);
}

fn configure(
    store: &mut Store<HostState>,
    instance: &Guest,
    config: &str,
    limits: Limits,
    starts: &Starts,
) -> Result<bindings::ConfigSummary, StartFailure> {
    arm_configure(store, limits.configure_deadline);
    match instance
        .flowgate_policy_filter()
        .call_configure(&mut *store, config)
    {
        Ok(Ok(summary)) => {
            starts.configured.fetch_add(1, Ordering::Relaxed);
            Ok(summary)
        }
        Ok(Err(e)) => Err(StartFailure::module(convert::config_error(e))),
        Err(trap) => {
            let by_clock = store.data().budget.stopped_by_clock();
            Err(configure_failed(
                fault_from_call(&trap, store),
                limits,
                by_clock,
            ))
        }
    }
}

/// Hands `instance` the `state` another instance of its module built, in parts, within one
/// configure budget of CPU time.
fn adopt(
    store: &mut Store<HostState>,
    instance: &Guest,
    (state, how): (&[u32], Adoption),
    limits: Limits,
    starts: &Starts,
) -> Result<(), StartFailure> {
    arm_configure(store, limits.configure_deadline);
    let mut parts = state.chunks(STATE_PART_WORDS).peekable();
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        match instance.flowgate_policy_filter().call_adopt_state(
            &mut *store,
            part,
            last,
            how == Adoption::Vouched,
        ) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                return Err(StartFailure::module(ModuleError::start(
                    StartStep::Adopt,
                    format_args!("the module refused the state: {why}"),
                )));
            }
            Err(trap) => {
                let by_clock = store.data().budget.stopped_by_clock();
                let failed = configure_failed(fault_from_call(&trap, store), limits, by_clock);
                return Err(match failed.error {
                    StartError::Module(ModuleError::Start { reason, .. }) => StartFailure {
                        error: ModuleError::start(StartStep::Adopt, reason).into(),
                        host: failed.host,
                    },
                    _ => failed,
                });
            }
        }
    }
    starts.adopted.fetch_add(1, Ordering::Relaxed);
    if how == Adoption::Vouched {
        starts.vouched.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// A configure call that did not return, with the fault it stands for: running out of memory
/// or CPU time on a configuration is a refusal of that configuration, which names the limit;
/// being stopped by the backstop on the clock (`by_clock`) is the host's failure.
fn configure_failed(fault: PolicyFault, limits: Limits, by_clock: bool) -> StartFailure {
    match fault {
        PolicyFault::Memory => StartFailure::module(OverLimit::Memory {
            memory_bytes: limits.memory_bytes,
        }),
        // Stopped on the clock within its CPU time: the machine gave it too little of a core.
        PolicyFault::Deadline if by_clock => StartFailure {
            error: OverLimit::ConfigureClock {
                deadline: limits.configure_deadline,
                backstop: super::budget::configure_backstop(limits.configure_deadline),
            }
            .into(),
            host: true,
        },
        PolicyFault::Deadline => StartFailure::module(OverLimit::ConfigureTime {
            deadline: limits.configure_deadline,
        }),
        PolicyFault::Host(e) => StartFailure {
            error: ModuleError::start(StartStep::Configure, e).into(),
            host: true,
        },
        other => StartFailure::module(ModuleError::start(StartStep::Configure, other)),
    }
}

impl crate::policy::Policy for WasmPolicy {
    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Judges a batch through the packed `judge-packed` call: the packets encoded into a
    /// [`Columns`] kept across calls, then judged as [`WasmPolicy::judge_columns`] judges it.
    fn judge(&mut self, packets: &[Packet], out: &mut [Verdict]) -> Result<(), PolicyFault> {
        self.packed.checked = false;
        self.packed
            .columns
            .encode(packets)
            .map_err(|e| PolicyFault::Host(Box::new(HostFault::Batch(e))))?;
        self.packed.answer = call_packed(
            &mut self.store,
            &self.instance,
            self.limits.batch_deadline,
            self.packed.columns.as_bytes(),
        )?;
        Verdicts::check(&self.packed.answer, packets.len(), &self.decoder)?.decode_into(out);
        Ok(())
    }

    fn judge_columns(&mut self, burst: &Columns) -> Result<Verdicts<'_>, PolicyFault> {
        WasmPolicy::judge_columns(self, burst)
    }

    fn last_verdicts(&self) -> Option<Verdicts<'_>> {
        self.packed
            .checked
            .then(|| Verdicts::checked_before(&self.packed.answer, &self.decoder))
    }

    fn restart(&mut self) -> Result<(), PolicyFault> {
        self.restart_checked().map_err(StartFailure::fault)
    }
}

/// The fault a call into `store` that did not return stands for. Only the CPU clock failing
/// is the host's; anything else that stops a call is the module's doing (an interrupt is its
/// budget of CPU time run out; a memory growth the store's limiter refused is its cap).
fn fault_from_call(e: &wasmtime::Error, store: &Store<HostState>) -> PolicyFault {
    fault_of(e, store.data().memory.hit)
}

/// [`fault_from_call`], given whether the limiter refused a memory growth during the call.
fn fault_of(e: &wasmtime::Error, memory_cap_hit: bool) -> PolicyFault {
    if let Some(clock) = e.downcast_ref::<ClockError>() {
        PolicyFault::Host(Box::new(HostFault::Clock(*clock)))
    } else if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        PolicyFault::Deadline
    } else if memory_cap_hit {
        PolicyFault::Memory
    } else {
        PolicyFault::Trap(one_line(e))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A configure call stopped by its backstop on the clock, within its CPU time, is the
    /// machine's doing: the host's failure (never counted toward an auto-revert), while one
    /// that ran past its CPU time is the module's.
    #[test]
    fn a_configure_stopped_by_the_clock_is_the_host_s_failure() {
        let limits = Limits::default();
        let clock = configure_failed(PolicyFault::Deadline, limits, true);
        assert!(clock.host);
        assert!(matches!(
            clock.error,
            StartError::OverLimit(OverLimit::ConfigureClock { .. })
        ));
        let cpu = configure_failed(PolicyFault::Deadline, limits, false);
        assert!(!cpu.host);
        assert!(matches!(
            cpu.error,
            StartError::OverLimit(OverLimit::ConfigureTime { .. })
        ));
    }

    /// The store's limiter decides what a memory-cap hit is, not an error's text: a failed call
    /// whose error reads like the limiter's is a trap when the limiter refused nothing, and
    /// any failed call after a refusal is the cap.
    #[test]
    fn the_limiter_not_the_message_decides_a_memory_cap_hit() {
        let lookalike = wasmtime::Error::msg("forcing trap when growing memory to 65536 bytes");
        assert!(matches!(fault_of(&lookalike, false), PolicyFault::Trap(_)));
        let other = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached);
        assert!(matches!(fault_of(&other, true), PolicyFault::Memory));
        assert!(matches!(fault_of(&other, false), PolicyFault::Trap(_)));
    }

    #[test]
    fn the_limiter_refuses_growth_past_the_cap_and_records_it() {
        let mut cap = MemoryCap {
            bytes: 1 << 20,
            hit: false,
        };
        assert!(cap.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!cap.hit);
        assert!(cap.memory_growing(0, 1 << 20, Some(1 << 19)).is_err());
        assert!(cap.hit);
        cap.hit = false;
        let e = cap.memory_growing(1 << 20, 2 << 20, None).unwrap_err();
        assert!(e.is::<MemoryRefused>() && cap.hit);
    }
}
