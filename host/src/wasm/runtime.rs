//! The wasmtime engine set up for a dataplane: the pooling allocator sized for the workers,
//! epoch interruption with its ticker thread (the deadlines of [`super::budget`] are checked
//! on its ticks), no component-model concurrency (a plain call costs less), and the limits
//! instances run under.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::budget::{ClockError, EPOCH_TICK, thread_cpu_time};
use crate::setting::Setting;

/// Limits a module instance runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most linear memory an instance may have.
    pub memory_bytes: usize,
    /// Most CPU time a batch may run before it is stopped. It is the CPU time of the thread
    /// running the module: time spent waiting for a core does not count.
    pub batch_deadline: Duration,
    /// Most CPU time `configure` may run (it parses the whole configuration), likewise.
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
    /// [`instances_needed`] for its workers: see [`EngineOptions::for_workers`].
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

/// Module instances a gateway with `workers` workers may hold at once, and so how many the
/// runtime's pool must have room for: per worker the instance of the release it serves, the
/// one it keeps of the previous release (for `--on-fault previous`), the one a swap, rollback
/// or shadow prepares for it, a fresh one while it restarts after a fault, the one a staged
/// shadow keeps for it, and its instance of a shadow that ended, which a quiet worker lets go
/// only at its next batch; plus a few for the admin side (canary, explain).
pub fn instances_needed(workers: usize) -> u32 {
    u32::try_from(workers.max(1).saturating_mul(6).saturating_add(4)).unwrap_or(u32::MAX)
}

impl EngineOptions {
    /// The defaults, with room for a gateway of `workers` workers.
    pub fn for_workers(workers: usize) -> Self {
        EngineOptions {
            instances: instances_needed(workers).max(16),
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

/// Why a [`Runtime`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The thread's CPU clock cannot be read, and the deadlines count CPU time.
    #[error("this host cannot measure a module's CPU time, which its deadlines count: {0}")]
    Clock(ClockError),
    /// wasmtime could not reserve the pool's address space.
    #[error(
        "setting up wasmtime with room for {instances} module instances of up to {} MiB: {error:#}; this machine cannot reserve that much address space",
        .memory_bytes >> 20
    )]
    Engine {
        /// Module instances the pool was to hold.
        instances: u32,
        /// The memory cap of each ([`Limits::memory_bytes`]).
        memory_bytes: usize,
        /// wasmtime's reason.
        error: wasmtime::Error,
    },
    /// The epoch ticker's thread could not be started.
    #[error("starting the epoch ticker thread: {0}")]
    Ticker(std::io::Error),
}

impl RuntimeError {
    /// The setting to change, when one would help: the memory cap, for an engine that could
    /// not reserve its pool (else fewer instances: fewer workers).
    pub fn setting(&self) -> Option<Setting> {
        matches!(self, RuntimeError::Engine { .. }).then_some(Setting::ModuleMemory)
    }
}

/// How the instances of a runtime got their configuration, counted as their calls succeed: a
/// `configure` parses, validates and builds (the costly start); an adoption (a run of
/// `adopt-state` calls) takes the state another instance built.
#[derive(Debug, Default)]
pub struct Starts {
    pub(super) configured: AtomicU64,
    pub(super) adopted: AtomicU64,
    pub(super) vouched: AtomicU64,
}

impl Starts {
    /// `configure` calls made so far.
    pub fn configured(&self) -> u64 {
        self.configured.load(Ordering::Relaxed)
    }

    /// States adopted so far (each a run of `adopt-state` calls).
    pub fn adopted(&self) -> u64 {
        self.adopted.load(Ordering::Relaxed)
    }

    /// Of the states adopted, those the host vouched for ([`Adoption::Vouched`]).
    ///
    /// [`Adoption::Vouched`]: super::Adoption::Vouched
    pub fn vouched(&self) -> u64 {
        self.vouched.load(Ordering::Relaxed)
    }
}

/// The wasmtime engine, set up for a dataplane, with its epoch ticker.
pub struct Runtime {
    pub(super) engine: Engine,
    pub(super) limits: Limits,
    pub(super) cache_dir: Option<PathBuf>,
    pub(super) starts: Arc<Starts>,
    capacity: Option<u32>,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Runtime {
    /// An engine with the pooling allocator, epoch interruption and no component-model
    /// concurrency (a plain call costs less), caching precompiled modules in `cache_dir`.
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> Result<Self, RuntimeError> {
        Self::with_engine(limits, cache_dir, EngineOptions::default())
    }

    /// As [`Runtime::new`], with engine features chosen (benchmarks turn them off to show
    /// what each costs).
    pub fn with_engine(
        limits: Limits,
        cache_dir: Option<PathBuf>,
        options: EngineOptions,
    ) -> Result<Self, RuntimeError> {
        thread_cpu_time().map_err(RuntimeError::Clock)?;
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
        let engine = Engine::new(&config).map_err(|error| RuntimeError::Engine {
            instances,
            memory_bytes: limits.memory_bytes,
            error,
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
                })
                .map_err(RuntimeError::Ticker)?
        };
        Ok(Runtime {
            engine,
            limits,
            cache_dir,
            starts: Arc::default(),
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

    /// How its instances got their configuration so far.
    pub fn starts(&self) -> &Starts {
        &self.starts
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
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
