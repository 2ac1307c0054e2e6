//! Loading policy components and running them: wasmtime set up for a dataplane, the checks
//! that refuse what is not a flowgate module, the cache of precompiled artifacts, and a
//! configured module instance that judges batches.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use flowgate_policy::explain::{EntryMatch, Explanation, PeeringMatch};
use flowgate_policy::packed::{PACKET_BYTES, VERDICT_BYTES, decode_verdict, encode_packet};
use flowgate_policy::{CandidatesId, Catalog, DropReason, Packet, Verdict, VpcId, VpcInfo};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};

use crate::bindings::{self, Policy, PolicyPre};

/// The WIT package this host speaks, and the interface it calls.
pub const WIT_PACKAGE: &str = "flowgate:policy";
/// The version of `wit/policy.wit`.
pub const WIT_VERSION: &str = env!("FLOWGATE_WIT_VERSION");
const FILTER_INTERFACE: &str = "flowgate:policy/filter";

/// Why a file was refused as a policy module.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file (it does not start with the `\\0asm` magic)")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build the policy for wasm32-wasip2 (or componentize it)"
    )]
    CoreModule,
    /// A precompiled artifact: only flowgate's own cache is trusted to hold those.
    #[error(
        "a precompiled wasmtime artifact: give flowgate the component itself, it keeps its own cache"
    )]
    Precompiled,
    /// A binary wasmtime could not compile.
    #[error("not a valid component: {0}")]
    Invalid(String),
    /// A component that does not export the filter interface.
    #[error(
        "does not export `{FILTER_INTERFACE}`: is it a flowgate policy module? It exports: {0}"
    )]
    WrongWorld(String),
    /// The filter interface, at a version this host cannot call.
    #[error(
        "exports `{found}`, but this host speaks `{FILTER_INTERFACE}@{WIT_VERSION}` and compatible versions"
    )]
    IncompatibleVersion {
        /// The export found.
        found: String,
    },
    /// The interface has the right name but not the right functions or types.
    #[error(
        "exports `{FILTER_INTERFACE}` with other functions or types than this host expects: {0}"
    )]
    WrongShape(String),
    /// Instantiating or asking the module about itself failed.
    #[error("the module failed when started: {0}")]
    Start(String),
}

/// Why a module refused a configuration: its own error, as it gave it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigRefused {
    /// The object, when the problem is in one.
    pub object: Option<String>,
    /// The field path.
    pub field: Option<String>,
    /// The offending value.
    pub value: Option<String>,
    /// The full message.
    pub message: String,
}

/// A batch the module failed to judge. The batch's packets are dropped as `policy-fault`.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFault {
    /// The guest trapped.
    #[error("the module trapped: {0}")]
    Trap(String),
    /// The guest ran past the batch deadline (an endless loop, or far too slow).
    #[error("the module ran past its deadline")]
    Deadline,
    /// The guest tried to grow its memory past the cap.
    #[error("the module hit its memory cap")]
    Memory,
    /// The guest answered with the wrong number of verdicts.
    #[error("the module answered {got} verdicts for {expected} packets")]
    WrongLength {
        /// Packets sent.
        expected: usize,
        /// Verdicts received.
        got: usize,
    },
    /// The guest answered a verdict code that does not exist, or names a VPC or candidate set
    /// its configuration does not have.
    #[error("the module answered an unknown verdict for packet {index}")]
    UnknownVerdict {
        /// Position of the packet in the batch.
        index: usize,
    },
    /// A fresh instance could not be started (after a fault, or for a worker that had none).
    #[error("a fresh instance could not be started: {0}")]
    Start(String),
    /// The worker has no instance (its last start failed): the batch is not judged.
    #[error("no instance to judge with")]
    NoInstance,
}

impl PolicyFault {
    /// The fault's reason in counters and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PolicyFault::Trap(_) => "trap",
            PolicyFault::Deadline => "deadline",
            PolicyFault::Memory => "memory",
            PolicyFault::WrongLength { .. } => "wrong-length",
            PolicyFault::UnknownVerdict { .. } => "unknown-verdict",
            PolicyFault::Start(_) => "start-failed",
            PolicyFault::NoInstance => "no-instance",
        }
    }

    fn from_call(e: wasmtime::Error) -> Self {
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

/// The flag that raises [`Limits::memory_bytes`].
pub const MEMORY_FLAG: &str = "--module-memory-mib";
/// The flag that raises [`Limits::configure_deadline`].
pub const CONFIGURE_FLAG: &str = "--configure-timeout";

/// Limits a module instance runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most linear memory an instance may have.
    pub memory_bytes: usize,
    /// Longest a batch may run before it is stopped.
    pub batch_deadline: Duration,
    /// Longest `configure` may run (it parses the whole configuration).
    pub configure_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            batch_deadline: Duration::from_millis(500),
            configure_deadline: Duration::from_secs(30),
        }
    }
}

/// Engine features a dataplane may turn off (both are on by default), and how many module
/// instances the pooling allocator has room for.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Epoch interruption: without it, batch and configure deadlines are not enforced.
    pub epoch_interruption: bool,
    /// The pooling instance allocator (else wasmtime allocates on demand).
    pub pooling: bool,
    /// Module instances alive at once, with the pooling allocator. A gateway needs
    /// [`crate::gateway::instances_needed`] for its workers: see [`EngineOptions::for_workers`].
    pub instances: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            epoch_interruption: true,
            pooling: true,
            instances: 16,
        }
    }
}

impl EngineOptions {
    /// The defaults, with room for a gateway of `workers` workers.
    pub fn for_workers(workers: usize) -> Self {
        EngineOptions {
            instances: crate::gateway::instances_needed(workers).max(16),
            ..EngineOptions::default()
        }
    }
}

/// Core instances, memories and tables the pool gives one component instance. flowgate's
/// modules use 1 memory and a handful of core instances (Rust's std on wasm32-wasip2); a
/// module that needs more is refused when it starts, with wasmtime's reason.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;

/// How often the epoch advances: the resolution of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The wasmtime engine, set up for a dataplane, with its epoch ticker.
pub struct Runtime {
    engine: Engine,
    limits: Limits,
    cache_dir: Option<PathBuf>,
    capacity: Option<u32>,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Runtime {
    /// An engine with the pooling allocator, epoch interruption and no component-model
    /// concurrency (a plain call costs less), caching precompiled modules in `cache_dir`.
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::with_engine(limits, cache_dir, EngineOptions::default())
    }

    /// As [`Runtime::new`], with engine features chosen (benchmarks turn them off to show
    /// what each costs).
    pub fn with_engine(
        limits: Limits,
        cache_dir: Option<PathBuf>,
        options: EngineOptions,
    ) -> anyhow::Result<Self> {
        let instances = options.instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(instances)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
            .total_memories(instances.saturating_mul(MEMORIES_PER_COMPONENT))
            .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
            .max_memory_size(limits.memory_bytes);
        let mut config = Config::new();
        config
            .concurrency_support(false)
            .epoch_interruption(options.epoch_interruption);
        #[cfg(feature = "profiling")]
        match std::env::var("FLOWGATE_PROFILE").as_deref() {
            Ok("perfmap") => {
                config.profiler(wasmtime::ProfilingStrategy::PerfMap);
            }
            Ok("jitdump") => {
                config.profiler(wasmtime::ProfilingStrategy::JitDump);
            }
            _ => {}
        }
        if options.pooling {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config).map_err(|e| {
            anyhow::anyhow!(
                "setting up wasmtime with room for {instances} module instances of up to {} MiB: {e:#}; this machine cannot reserve that much address space: run fewer workers or lower {MEMORY_FLAG}",
                limits.memory_bytes >> 20
            )
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("flowgate-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })?
        };
        Ok(Runtime {
            engine,
            limits,
            cache_dir,
            capacity: options.pooling.then_some(instances),
            ticker: Some((stop, ticker)),
        })
    }

    /// How many module instances can be alive at once (`None`: as many as memory allows).
    pub fn instance_capacity(&self) -> Option<u32> {
        self.capacity
    }

    /// The default cache directory: `$FLOWGATE_CACHE_DIR`, else `$XDG_CACHE_HOME/flowgate`,
    /// else `~/.cache/flowgate`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        env("FLOWGATE_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("flowgate")))
            .or_else(|| env("HOME").map(|d| d.join(".cache/flowgate")))
    }

    /// The limits instances run under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Checks and compiles (or loads from the cache) a policy component.
    pub fn load(&self, bytes: &[u8]) -> Result<LoadedModule, ModuleError> {
        check_header(bytes)?;
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let component = self.compile_cached(bytes, &digest)?;
        check_exports(&self.engine, &component)?;
        let mut linker = Linker::new(&self.engine);
        grant_insecure_seed(&self.engine, &component, &mut linker)?;
        // Whatever else the module imports (Rust's std pulls in WASI) traps when called: the
        // guest gets no filesystem, network or clock.
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| ModuleError::Invalid(e.to_string()))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(PolicyPre::new)
            .map_err(|e| ModuleError::WrongShape(format!("{e:#}")))?;
        Ok(LoadedModule {
            pre,
            digest,
            bytes: bytes.into(),
        })
    }

    /// The component compiled, from the cache when an entry for it is there and intact.
    ///
    /// An entry is `artifact ++ sha256(key ++ artifact)`, where the key is the component's
    /// sha256 and the engine's compatibility hash: an artifact copied over another module's
    /// entry, altered, or cut short fails the check, is counted as a miss and recompiled.
    fn compile_cached(&self, bytes: &[u8], digest: &[u8; 32]) -> Result<Component, ModuleError> {
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes)
                .map_err(|e| ModuleError::Invalid(format!("{e:#}")));
        };
        let mut hasher = DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let engine_hash = hasher.finish();
        let path = dir.join(format!("{}-{engine_hash:016x}.cwasm", hex(digest)));
        let seal = |artifact: &[u8]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(digest);
            h.update(engine_hash.to_le_bytes());
            h.update(artifact);
            h.finalize().into()
        };
        if path.is_file() {
            match std::fs::read(&path) {
                Ok(entry) if entry.len() > 32 => {
                    let (artifact, sum) = entry.split_at(entry.len() - 32);
                    if seal(artifact)[..] == *sum {
                        // SAFETY: the artifact is the one this engine wrote for exactly this
                        // component: its checksum, bound to the component's digest and the
                        // engine's compatibility hash, matches.
                        #[allow(unsafe_code)]
                        if let Ok(component) =
                            unsafe { Component::deserialize(&self.engine, artifact) }
                        {
                            return Ok(component);
                        }
                    }
                    eprintln!(
                        "flowgate: warning: cache entry {} does not match its checksum: ignored, the module is compiled again",
                        path.display()
                    );
                }
                _ => eprintln!(
                    "flowgate: warning: cache entry {} is unreadable or too short: ignored, the module is compiled again",
                    path.display()
                ),
            }
        }
        let artifact = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
        let mut entry = artifact.clone();
        entry.extend_from_slice(&seal(&artifact));
        // A cache that cannot be written is no reason to refuse the module.
        let _ = write_atomically(dir, &path, &entry);
        // SAFETY: `artifact` was produced just now by this engine.
        #[allow(unsafe_code)]
        unsafe { Component::deserialize(&self.engine, &artifact) }
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

/// Rust's `HashMap` (and so most YAML parsers) asks `wasi:random/insecure-seed` for a seed
/// when the module starts. The host answers with a constant: hashing stays deterministic and
/// the guest learns nothing about the host. Any 0.2 version of the interface is answered.
fn grant_insecure_seed(
    engine: &Engine,
    component: &Component,
    linker: &mut Linker<HostState>,
) -> Result<(), ModuleError> {
    const SEED: (u64, u64) = (0x666c_6f77_6761_7465, 0x7365_6564_2d30_3031);
    let wanted: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .filter(|name| name.starts_with("wasi:random/insecure-seed@0.2"))
        .collect();
    for name in wanted {
        let mut instance = linker
            .instance(&name)
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
        instance
            .func_wrap("insecure-seed", |_, (): ()| Ok((SEED,)))
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
    }
    Ok(())
}

/// Writes `path` whole or not at all: readers (other threads, other processes) never see a
/// partial artifact.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    create_private_dir(dir)?;
    let unique = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{unique}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Creates `dir` (and missing parents) readable by its owner only.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_header(bytes: &[u8]) -> Result<(), ModuleError> {
    if Engine::detect_precompiled(bytes).is_some() {
        return Err(ModuleError::Precompiled);
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(ModuleError::NotWasm);
    }
    // Bytes 4..6 are the version, 6..8 the layer: 1 for a component, 0 for a core module.
    match bytes[6..8] {
        [1, 0] => Ok(()),
        _ => Err(ModuleError::CoreModule),
    }
}

/// Whether a module built against WIT version `found` can be called by this host: same
/// major version, or for 0.x the same minor version.
pub fn compatible(found: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(found), parse(WIT_VERSION)) {
        (Some((0, minor)), Some((0, ours))) => minor == ours,
        (Some((major, _)), Some((ours, _))) => major == ours,
        _ => false,
    }
}

fn check_exports(engine: &Engine, component: &Component) -> Result<(), ModuleError> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let filter = ty.exports(engine).find_map(|(name, item)| {
        let version = name.strip_prefix(FILTER_INTERFACE)?.strip_prefix('@')?;
        matches!(item.ty, ComponentItem::ComponentInstance(_))
            .then(|| (name.to_owned(), version.to_owned()))
    });
    match filter {
        None if names.is_empty() => Err(ModuleError::WrongWorld("nothing".into())),
        None => Err(ModuleError::WrongWorld(names.join(", "))),
        Some((found, version)) if !compatible(&version) => {
            Err(ModuleError::IncompatibleVersion { found })
        }
        Some(_) => Ok(()),
    }
}

/// A checked, compiled module, ready to instantiate cheaply.
#[derive(Clone)]
pub struct LoadedModule {
    pre: PolicyPre<HostState>,
    digest: [u8; 32],
    /// The component as uploaded: what `GET /module` hands back.
    bytes: Arc<[u8]>,
}

impl LoadedModule {
    /// Instantiates the module in a fresh store and drops it: what starting an instance costs,
    /// without `configure` (for benchmarks).
    pub fn instantiate_only(&self, runtime: &Runtime) -> Result<(), ModuleError> {
        instantiate(runtime.engine(), self, runtime.limits).map(|_| ())
    }

    /// sha256 of the component's bytes.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The component's bytes, as loaded.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

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
        self.notices = summary.notices;
        self.catalog = Catalog {
            vpcs: summary
                .vpcs
                .into_iter()
                .map(|v| VpcInfo {
                    name: v.name,
                    vni: v.vni,
                })
                .collect(),
            candidate_sets: summary
                .candidate_sets
                .into_iter()
                .map(|set| set.into_iter().map(VpcId).collect())
                .collect(),
        };
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
            .call_explain(&mut self.store, to_wit_packet(packet))
            .map_err(PolicyFault::from_call)?;
        let verdict = from_wit_verdict(e.verdict);
        if !self.catalog.knows(verdict) {
            return Err(PolicyFault::UnknownVerdict { index: 0 });
        }
        let matches = |ms: Vec<bindings::EntryMatch>| -> Vec<EntryMatch> {
            ms.into_iter()
                .map(|m| EntryMatch {
                    block: m.block,
                    entry: m.entry,
                    miss: m.miss,
                })
                .collect()
        };
        Ok(Explanation {
            verdict,
            src_vpc: e.src_vpc,
            peerings: e
                .peerings
                .into_iter()
                .map(|p| PeeringMatch {
                    peering: p.peering,
                    remote: p.remote,
                    source: matches(p.source),
                    destination: matches(p.destination),
                    admits: p.admits,
                })
                .collect(),
            notes: e.notes,
        })
    }

    /// Judges a batch through the typed `judge` call.
    pub fn judge_typed(
        &mut self,
        packets: &[Packet],
        out: &mut [Verdict],
    ) -> Result<(), PolicyFault> {
        let wit: Vec<bindings::Packet> = packets.iter().map(to_wit_packet).collect();
        self.store
            .set_epoch_deadline(ticks(self.limits.batch_deadline));
        let verdicts = self
            .instance
            .flowgate_policy_filter()
            .call_judge(&mut self.store, &wit)
            .map_err(PolicyFault::from_call)?;
        if verdicts.len() != packets.len() {
            return Err(PolicyFault::WrongLength {
                expected: packets.len(),
                got: verdicts.len(),
            });
        }
        for (index, (slot, v)) in out.iter_mut().zip(verdicts).enumerate() {
            let verdict = from_wit_verdict(v);
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
    Config(#[from] ConfigRefused),
}

fn instantiate(
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
        Ok(Err(e)) => Err(ConfigRefused {
            object: e.object,
            field: e.field,
            value: e.value,
            message: e.message,
        }
        .into()),
        Err(trap) => Err(configure_failed(trap, limits)),
    }
}

/// A configure call that did not return: running out of memory or time on a configuration is
/// a refusal of that configuration, which names the limit and the flag that raises it.
fn configure_failed(trap: wasmtime::Error, limits: Limits) -> StartError {
    let refused = |message: String| {
        StartError::Config(ConfigRefused {
            object: None,
            field: None,
            value: None,
            message,
        })
    };
    match PolicyFault::from_call(trap) {
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

fn ticks(d: Duration) -> u64 {
    (d.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

fn to_wit_packet(p: &Packet) -> bindings::Packet {
    let address = |a: std::net::IpAddr| match a {
        std::net::IpAddr::V4(a) => {
            let [b0, b1, b2, b3] = a.octets();
            bindings::IpAddress::V4((b0, b1, b2, b3))
        }
        std::net::IpAddr::V6(a) => {
            let [s0, s1, s2, s3, s4, s5, s6, s7] = a.segments();
            bindings::IpAddress::V6((s0, s1, s2, s3, s4, s5, s6, s7))
        }
    };
    bindings::Packet {
        src_vni: p.src_vni,
        src: address(p.src),
        dst: address(p.dst),
        proto: p.proto,
        ports: p.ports.map(|ports| bindings::Ports {
            src: ports.src,
            dst: ports.dst,
        }),
    }
}

fn from_wit_verdict(v: bindings::Verdict) -> Verdict {
    match v {
        bindings::Verdict::Allow(vpc) => Verdict::Allow(VpcId(vpc)),
        bindings::Verdict::AllowAmbiguous(set) => Verdict::AllowAmbiguous(CandidatesId(set)),
        bindings::Verdict::Drop(reason) => Verdict::Drop(match reason {
            bindings::DropReason::UnknownVpc => DropReason::UnknownVpc,
            bindings::DropReason::SourceNotExposed => DropReason::SourceNotExposed,
            bindings::DropReason::DestinationNotExposed => DropReason::DestinationNotExposed,
            bindings::DropReason::Denied => DropReason::Denied,
        }),
    }
}

impl crate::Policy for WasmPolicy {
    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Judges a batch through the packed `judge-packed` call: the dataplane's path.
    fn judge(&mut self, packets: &[Packet], out: &mut [Verdict]) -> Result<(), PolicyFault> {
        self.packed.clear();
        self.packed.reserve(packets.len() * PACKET_BYTES);
        for p in packets {
            encode_packet(p, &mut self.packed);
        }
        self.store
            .set_epoch_deadline(ticks(self.limits.batch_deadline));
        let answer = self
            .instance
            .flowgate_policy_filter()
            .call_judge_packed(&mut self.store, &self.packed)
            .map_err(PolicyFault::from_call)?;
        if answer.len() != packets.len() * VERDICT_BYTES {
            return Err(PolicyFault::WrongLength {
                expected: packets.len(),
                got: answer.len() / VERDICT_BYTES,
            });
        }
        for (index, (slot, rec)) in out
            .iter_mut()
            .zip(answer.chunks_exact(VERDICT_BYTES))
            .enumerate()
        {
            let verdict = rec
                .try_into()
                .ok()
                .and_then(decode_verdict)
                .filter(|&v| self.catalog.knows(v))
                .ok_or(PolicyFault::UnknownVerdict { index })?;
            *slot = verdict;
        }
        Ok(())
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        WasmPolicy::restart(self).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_versions_compatible_with_this_host() {
        assert!(compatible("0.3.0") && compatible("0.3.7") && compatible("0.3.0-rc1"));
        assert!(
            !compatible("0.2.0")
                && !compatible("0.4.0")
                && !compatible("1.0.0")
                && !compatible("")
                && !compatible("x.y")
        );
    }

    #[test]
    fn deadlines_in_epoch_ticks() {
        assert_eq!(ticks(Duration::ZERO), 2);
        assert_eq!(ticks(Duration::from_millis(500)), 101);
    }
}
