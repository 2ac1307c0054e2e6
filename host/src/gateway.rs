//! A long-running gateway: worker threads judging traffic through the published policy
//! release, and the swaps, rollbacks and fault handling that replace it while traffic flows.
//!
//! A **release** is a module with a configuration, a generation number, and one configured
//! instance prepared per worker. A swap builds the next release entirely off the packet path
//! (compile, instantiate, configure, canary batch), then publishes it with one atomic store.
//! Each worker checks the published generation at its batch boundary and moves to the new
//! release there, so no batch is judged by two releases; the old release is freed when the
//! last worker lets go of it. The last three good releases are kept for rollback.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use flowgate_policy::{Catalog, Packet, Verdict};
use sha2::{Digest, Sha256};

use crate::Policy;
use crate::dataplane::{self, Counters, Histogram, Judged};
use crate::wasm::{
    ConfigRefused, LoadedModule, ModuleError, ModuleInfo, Runtime, StartError, WasmPolicy,
};
use crate::{PolicyFault, hex};

/// How many good releases are kept for rollback (the current one included).
pub const KEEP_GOOD: usize = 3;

/// The first and the longest wait before an auto-revert that failed is tried again.
const REVERT_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// The least time between two attempts of a worker to start an instance after one failed.
const RESTART_INTERVAL: Duration = Duration::from_millis(100);

/// What a worker does with a batch its module failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFault {
    /// Drop every packet of the batch as `policy-fault`.
    FailClosed,
    /// Judge the batch again with the previous good release, if the worker still has it.
    Previous,
}

/// How the gateway runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads, each with its own instance.
    pub workers: usize,
    /// Packets per policy call.
    pub batch: usize,
    /// What to do with a batch the module failed on.
    pub on_fault: OnFault,
    /// After this many faults within `fault_window`, revert to the previous good release.
    pub fault_limit: usize,
    /// See `fault_limit`.
    pub fault_window: Duration,
    /// Keep a record of every batch (which release judged it); for tests.
    pub record_batches: bool,
    /// The largest configuration text a swap accepts, in bytes.
    pub max_config_bytes: usize,
}

/// The largest configuration text accepted unless told otherwise (`--max-config-bytes`).
pub const DEFAULT_MAX_CONFIG_BYTES: usize = 16 << 20;

/// Module instances a gateway with `workers` workers may hold at once, and so how many the
/// runtime's pool must have room for: per worker the instance of the release it serves, the
/// one it keeps of the previous release (for `--on-fault previous`), the one a swap or
/// rollback prepares for it, and a fresh one while it restarts after a fault; plus a few for
/// the admin side (canary, explain).
pub fn instances_needed(workers: usize) -> u32 {
    u32::try_from(workers.max(1).saturating_mul(4).saturating_add(4)).unwrap_or(u32::MAX)
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            batch: crate::dataplane::DEFAULT_BATCH,
            on_fault: OnFault::FailClosed,
            fault_limit: 5,
            fault_window: Duration::from_secs(10),
            record_batches: false,
            max_config_bytes: DEFAULT_MAX_CONFIG_BYTES,
        }
    }
}

/// A module with a configuration, published under a generation number.
pub struct Release {
    /// Increases by one with every publication (swap or rollback).
    pub generation: u64,
    /// What the release was made by: `start`, `module`, `config`, `module+config`,
    /// `reload` (a swap that changes neither), `rollback` or `auto-revert`.
    pub cause: &'static str,
    /// The module.
    pub module: LoadedModule,
    /// What the module says about itself.
    pub info: ModuleInfo,
    /// The configuration text.
    pub config: Arc<str>,
    /// sha256 of the configuration text.
    pub config_digest: String,
    /// The names behind the module's verdicts for this configuration.
    pub catalog: Catalog,
    /// Peerings in the configuration, as the module counted them.
    pub peerings: u32,
    /// The canary batch for this configuration (reused by swaps that keep the configuration).
    canary: Arc<[Packet]>,
    /// One configured instance per worker, taken by the worker when it moves to this release.
    spares: Mutex<Vec<Option<WasmPolicy>>>,
}

impl Release {
    /// sha256 of the module.
    pub fn module_digest(&self) -> String {
        hex(&self.module.digest())
    }

    /// The release's entity tag: its generation with the module's and the configuration's
    /// digests. Every publication makes a new one, even of the same module and configuration.
    pub fn etag(&self) -> String {
        format!(
            "{}-{}-{}",
            self.generation,
            &self.module_digest()[..16],
            &self.config_digest[..16]
        )
    }
}

/// Why a swap was refused. The running release keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// `If-Match` named another release than the running one.
    #[error(
        "the running release is {running}, not {expected}: read GET /status again and decide anew"
    )]
    Stale {
        /// The ETag the caller expected.
        expected: String,
        /// The running release's ETag.
        running: String,
    },
    /// The module was refused.
    #[error("module refused: {0}")]
    Module(#[from] ModuleError),
    /// The module refused the configuration.
    #[error("configuration refused: {0}")]
    Config(ConfigRefused),
    /// The canary batch failed.
    #[error("canary batch failed: {0}")]
    Canary(String),
    /// There is no earlier good release.
    #[error("no earlier good release to roll back to")]
    NothingToRollBack,
    /// The runtime cannot hold the instances the gateway needs.
    #[error("{0}")]
    Capacity(String),
}

impl SwapError {
    /// The refusal's reason in counters and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SwapError::Stale { .. } => "stale-digest",
            SwapError::Module(
                ModuleError::NotWasm
                | ModuleError::CoreModule
                | ModuleError::Precompiled
                | ModuleError::Invalid(_),
            ) => "not-a-component",
            SwapError::Module(ModuleError::WrongWorld(_) | ModuleError::WrongShape(_)) => {
                "wrong-world"
            }
            SwapError::Module(ModuleError::IncompatibleVersion { .. }) => "incompatible-version",
            SwapError::Module(ModuleError::Start(_)) => "start-failed",
            SwapError::Config(_) => "config-refused",
            SwapError::Canary(_) => "canary-failed",
            SwapError::NothingToRollBack => "nothing-to-roll-back",
            SwapError::Capacity(_) => "capacity",
        }
    }
}

impl From<StartError> for SwapError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Module(e) => SwapError::Module(e),
            StartError::Config(e) => SwapError::Config(e),
        }
    }
}

/// One judged batch, when `record_batches` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRecord {
    /// The worker.
    pub worker: usize,
    /// The generation of the release that judged it.
    pub generation: u64,
    /// Packets in the batch.
    pub packets: usize,
    /// Verdicts applied (every packet gets exactly one).
    pub verdicts: usize,
    /// Time the policy call (and any re-judging) took.
    pub latency: Duration,
}

/// Counters of the gateway's own events.
#[derive(Debug, Default)]
pub struct Events {
    /// Publications by cause.
    pub swaps: BTreeMap<&'static str, u64>,
    /// Refused swaps by reason.
    pub refusals: BTreeMap<&'static str, u64>,
    /// Rollbacks by cause (`operator` or `auto`).
    pub rollbacks: BTreeMap<&'static str, u64>,
    /// Faults by reason.
    pub faults: BTreeMap<&'static str, u64>,
    /// Auto-reverts that failed (each is retried).
    pub revert_failures: u64,
    /// Admin requests refused before they reached the gateway, by reason.
    pub admin_refusals: BTreeMap<&'static str, u64>,
}

/// The gateway.
pub struct Gateway {
    runtime: Runtime,
    options: Options,
    current: ArcSwap<Release>,
    /// Good releases, oldest first; the last one is the current one.
    good: Mutex<VecDeque<Arc<Release>>>,
    /// One swap (or rollback) at a time.
    swap_lock: Mutex<()>,
    next_generation: AtomicU64,
    counters: Vec<Mutex<Counters>>,
    events: Mutex<Events>,
    recent_faults: Mutex<VecDeque<Instant>>,
    reverting: AtomicBool,
    /// No auto-revert is tried before this instant, and the wait after the next failure:
    /// the backoff of failed auto-reverts.
    next_revert: Mutex<(Instant, Duration)>,
    records: Mutex<Vec<BatchRecord>>,
    /// The highest generation that has judged a batch.
    judged: AtomicU64,
    /// Time to judge one batch.
    pub batch_latency: Histogram,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker that panicked while holding a lock leaves data that is still consistent
    // (counters); carry on with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Packets every canary batch holds: both families, with and without ports, unknown VNIs.
fn canary_packets(catalog: &Catalog, config: &str) -> Vec<Packet> {
    let mut packets = Vec::new();
    let v4 = |s: &str| -> std::net::IpAddr {
        s.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into())
    };
    let v6 = |s: &str| -> std::net::IpAddr {
        s.parse().unwrap_or(std::net::Ipv6Addr::UNSPECIFIED.into())
    };
    for vni in catalog
        .vpcs
        .iter()
        .map(|v| v.vni)
        .take(16)
        .chain([0, 16_777_215])
    {
        packets.push(Packet::tcp(vni, v4("10.0.0.1"), 40000, v4("10.0.0.2"), 443));
        packets.push(Packet::udp(vni, v6("fd00::1"), 53, v6("fd00::2"), 53));
        packets.push(Packet::portless(vni, v4("192.168.0.1"), v4("8.8.8.8"), 1));
    }
    // And packets drawn from the configuration's own prefixes, when the library reads it.
    if let Ok(parsed) = flowgate_policy::parse(config, None) {
        packets.extend(flowgate_policy::synth::packets(&parsed, 64, 0xca9a));
    }
    packets
}

impl Gateway {
    /// Starts a gateway on `module` with `config`. Nothing is running yet: call
    /// [`Gateway::run_worker`] from each worker thread.
    pub fn new(
        runtime: Runtime,
        module: &[u8],
        config: &str,
        options: Options,
    ) -> Result<Arc<Gateway>, SwapError> {
        let workers = options.workers.max(1);
        let needed = instances_needed(workers);
        if let Some(capacity) = runtime.instance_capacity()
            && capacity < needed
        {
            return Err(SwapError::Capacity(format!(
                "the runtime's instance pool holds {capacity} module instances, and a gateway with {workers} workers may need {needed}: size it with EngineOptions::for_workers({workers})"
            )));
        }
        check_config_size(config, options.max_config_bytes)?;
        let module = runtime.load(module)?;
        let release = prepare(&runtime, module, config, None, workers, 1, "start")?;
        let release = Arc::new(release);
        let gateway = Gateway {
            runtime,
            options: Options { workers, ..options },
            current: ArcSwap::new(release.clone()),
            good: Mutex::new(VecDeque::from([release])),
            swap_lock: Mutex::new(()),
            next_generation: AtomicU64::new(2),
            counters: (0..workers)
                .map(|_| Mutex::new(Counters::default()))
                .collect(),
            events: Mutex::new(Events::default()),
            recent_faults: Mutex::new(VecDeque::new()),
            reverting: AtomicBool::new(false),
            next_revert: Mutex::new((Instant::now(), REVERT_BACKOFF.0)),
            records: Mutex::new(Vec::new()),
            judged: AtomicU64::new(0),
            batch_latency: Histogram::default(),
            started: Instant::now(),
        };
        Ok(Arc::new(gateway))
    }

    /// The release being served.
    pub fn current(&self) -> Arc<Release> {
        self.current.load_full()
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Time since the gateway started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Swaps in a new module, a new configuration, or both (`None` keeps the running one).
    /// `if_match` makes it a compare-and-swap against the running module's sha256.
    pub fn swap(
        &self,
        module: Option<&[u8]>,
        config: Option<&str>,
        if_match: Option<&str>,
    ) -> Result<Arc<Release>, SwapError> {
        let _one_at_a_time = lock(&self.swap_lock);
        let result = self.try_swap(module, config, if_match);
        match &result {
            Ok(release) => eprintln!(
                "flowgate: swap: generation {} is live ({}): module {} {} sha256 {}, config sha256 {}",
                release.generation,
                release.cause,
                release.info.name,
                release.info.version,
                &release.module_digest()[..16],
                &release.config_digest[..16]
            ),
            Err(e) => {
                *lock(&self.events).refusals.entry(e.reason()).or_default() += 1;
                eprintln!(
                    "flowgate: swap refused ({}): {e}; generation {} keeps serving",
                    e.reason(),
                    self.current().generation
                );
            }
        }
        result
    }

    fn try_swap(
        &self,
        module: Option<&[u8]>,
        config: Option<&str>,
        if_match: Option<&str>,
    ) -> Result<Arc<Release>, SwapError> {
        let running = self.current();
        check_if_match(&running, if_match)?;
        if let Some(config) = config {
            check_config_size(config, self.options.max_config_bytes)?;
        }
        let cause = match (module.is_some(), config.is_some()) {
            (true, true) => "module+config",
            (true, false) => "module",
            (false, true) => "config",
            (false, false) => "reload",
        };
        let loaded = match module {
            Some(bytes) => self.runtime.load(bytes)?,
            None => running.module.clone(),
        };
        let canary = config.is_none().then(|| running.canary.clone());
        let config = config.unwrap_or(&running.config);
        let generation = self.next_generation.load(Ordering::Relaxed);
        let release = prepare(
            &self.runtime,
            loaded,
            config,
            canary,
            self.options.workers,
            generation,
            cause,
        )?;
        Ok(self.publish(release, false))
    }

    /// SIGHUP: swaps in `module` (when given) and `config` read again from their files, unless
    /// both are what the running release already has: then nothing is published and `None`
    /// is returned.
    pub fn reload(
        &self,
        module: Option<&[u8]>,
        config: &str,
    ) -> Result<Option<Arc<Release>>, SwapError> {
        let running = self.current();
        let same_module = module.is_none_or(|m| Sha256::digest(m)[..] == running.module.digest());
        if same_module && *running.config == *config {
            return Ok(None);
        }
        let module = module.filter(|_| !same_module);
        self.swap(module, Some(config), None).map(Some)
    }

    /// Counts a request the admin API refused before it reached the gateway.
    pub fn note_admin_refusal(&self, reason: &'static str) {
        *lock(&self.events).admin_refusals.entry(reason).or_default() += 1;
    }

    /// Publishes a prepared release; `rollback` leaves the good list as the caller set it.
    fn publish(&self, release: Release, rollback: bool) -> Arc<Release> {
        self.next_generation.fetch_add(1, Ordering::Relaxed);
        let release = Arc::new(release);
        // Workers that have not moved to the outgoing release yet will skip it: its unused
        // instances go back to the pool now.
        lock(&self.current.load().spares).clear();
        if !rollback {
            let mut good = lock(&self.good);
            good.push_back(release.clone());
            while good.len() > KEEP_GOOD {
                good.pop_front();
            }
        }
        *lock(&self.events).swaps.entry(release.cause).or_default() += 1;
        self.current.store(release.clone());
        release
    }

    /// Goes back to the previous good release (`auto` when the gateway decided it).
    pub fn rollback(&self, auto: bool) -> Result<Arc<Release>, SwapError> {
        self.rollback_if(auto, None)
    }

    /// [`Gateway::rollback`], only while the release named by `if_match` (an ETag) serves.
    pub fn rollback_if(
        &self,
        auto: bool,
        if_match: Option<&str>,
    ) -> Result<Arc<Release>, SwapError> {
        let _one_at_a_time = lock(&self.swap_lock);
        let cause = if auto { "auto" } else { "operator" };
        let result = self.try_rollback(auto, if_match);
        if let Err(e) = &result {
            *lock(&self.events).refusals.entry(e.reason()).or_default() += 1;
            eprintln!(
                "flowgate: rollback ({cause}) refused ({}): {e}; generation {} keeps serving",
                e.reason(),
                self.current().generation
            );
        }
        result
    }

    fn try_rollback(&self, auto: bool, if_match: Option<&str>) -> Result<Arc<Release>, SwapError> {
        check_if_match(&self.current(), if_match)?;
        let cause = if auto { "auto" } else { "operator" };
        let target = {
            let good = lock(&self.good);
            if good.len() < 2 {
                return Err(SwapError::NothingToRollBack);
            }
            good[good.len() - 2].clone()
        };
        let generation = self.next_generation.load(Ordering::Relaxed);
        let release = prepare(
            &self.runtime,
            target.module.clone(),
            &target.config,
            Some(target.canary.clone()),
            self.options.workers,
            generation,
            if auto { "auto-revert" } else { "rollback" },
        )?;
        {
            // The release rolled back from is no longer good; the target takes its place.
            let mut good = lock(&self.good);
            good.pop_back();
        }
        let release = self.publish(release, true);
        {
            let mut good = lock(&self.good);
            good.pop_back();
            good.push_back(release.clone());
        }
        *lock(&self.events).rollbacks.entry(cause).or_default() += 1;
        eprintln!(
            "flowgate: rollback ({cause}): generation {} is live: module {} {}, the release of generation {}",
            release.generation, release.info.name, release.info.version, target.generation
        );
        Ok(release)
    }

    /// Counts a fault; after `fault_limit` within `fault_window`, reverts in the background.
    /// A revert that fails is logged, counted and tried again after a backoff, as long as
    /// the faulty release serves and faults go on.
    fn note_fault(self: &Arc<Self>, fault: &PolicyFault, generation: u64) {
        *lock(&self.events).faults.entry(fault.reason()).or_default() += 1;
        eprintln!("flowgate: fault in generation {generation}: {fault}");
        let now = Instant::now();
        if now < lock(&self.next_revert).0 {
            return;
        }
        let trip = {
            let mut recent = lock(&self.recent_faults);
            recent.push_back(now);
            while recent
                .front()
                .is_some_and(|&t| now.duration_since(t) > self.options.fault_window)
            {
                recent.pop_front();
            }
            recent.len() >= self.options.fault_limit && self.current().generation == generation
        };
        if trip && !self.reverting.swap(true, Ordering::AcqRel) {
            let gateway = self.clone();
            let spawned = std::thread::Builder::new()
                .name("flowgate-revert".into())
                .spawn(move || {
                    let failed = match gateway.current().generation == generation {
                        true => gateway.rollback(true).err(),
                        false => None,
                    };
                    let mut next = lock(&gateway.next_revert);
                    match failed {
                        Some(e) => {
                            lock(&gateway.events).revert_failures += 1;
                            let wait = next.1;
                            eprintln!(
                                "flowgate: auto-revert from generation {generation} failed ({}): {e}; trying again in {wait:?} while faults go on",
                                e.reason()
                            );
                            *next = (Instant::now() + wait, (wait * 2).min(REVERT_BACKOFF.1));
                        }
                        None => {
                            *next = (Instant::now(), REVERT_BACKOFF.0);
                            lock(&gateway.recent_faults).clear();
                        }
                    }
                    drop(next);
                    gateway.reverting.store(false, Ordering::Release);
                });
            if spawned.is_err() {
                self.reverting.store(false, Ordering::Release);
            }
        }
    }

    /// Runs worker `id` until `stop` is set or `source` runs dry: each batch is judged by
    /// exactly one release, picked up at the batch boundary.
    pub fn run_worker(
        self: &Arc<Self>,
        id: usize,
        source: &mut dyn crate::source::Source,
        stop: &AtomicBool,
    ) {
        let mut release = self.current();
        let mut policy = self.take_instance(&release, id);
        let mut last_start = Instant::now();
        let mut previous: Option<(Arc<Release>, Option<WasmPolicy>)> = None;
        let mut batch: Vec<Packet> = Vec::with_capacity(self.options.batch);
        let mut verdicts = vec![Verdict::default(); self.options.batch];
        while !stop.load(Ordering::Relaxed) {
            batch.clear();
            if source.fill(&mut batch, self.options.batch) == 0 {
                if source.dry() {
                    break;
                }
                // Nothing judged, but what the source could not read is counted.
                source.deliver(Some(&[]), &release.catalog, &mut lock(&self.counters[id]));
                continue;
            }
            let now = self.current.load();
            if now.generation != release.generation {
                let next = now.clone();
                let next_policy = self.take_instance(&next, id);
                last_start = Instant::now();
                previous = Some((
                    std::mem::replace(&mut release, next),
                    std::mem::replace(&mut policy, next_policy),
                ));
            }
            if policy.is_none() && last_start.elapsed() >= RESTART_INTERVAL {
                policy = self.take_instance(&release, id);
                last_start = Instant::now();
            }
            let started = Instant::now();
            let fallback = match (self.options.on_fault, previous.as_mut()) {
                (OnFault::Previous, Some((_, Some(old)))) => Some(old as &mut dyn Policy),
                _ => None,
            };
            let done = dataplane::step(
                policy.as_mut().map(|p| p as &mut dyn Policy),
                fallback,
                &batch,
                &mut verdicts,
            );
            let latency = started.elapsed();
            self.batch_latency.observe(latency);
            if let Some(fault) = &done.fault
                && !matches!(fault, PolicyFault::NoInstance)
            {
                self.note_fault(fault, release.generation);
            }
            if let Some(e) = &done.restart_failed {
                self.note_fault(&PolicyFault::Start(format!("{e:#}")), release.generation);
                policy = None;
                last_start = Instant::now();
            }
            let catalog = match (done.judged, &previous) {
                (Judged::Fallback, Some((old, _))) => &old.catalog,
                _ => &release.catalog,
            };
            let mut counters = lock(&self.counters[id]);
            done.count(&batch, &verdicts, catalog, &mut counters);
            source.deliver(
                done.verdicts(&verdicts, batch.len()),
                catalog,
                &mut counters,
            );
            drop(counters);
            if self.options.record_batches {
                lock(&self.records).push(BatchRecord {
                    worker: id,
                    generation: release.generation,
                    packets: batch.len(),
                    verdicts: batch.len(),
                    latency,
                });
            }
            self.judged.fetch_max(release.generation, Ordering::Release);
        }
    }

    /// This worker's prepared instance of `release`, or a new one if it has none. A failure
    /// is a fault like any other: logged, counted, and toward an auto-revert; the worker
    /// drops its batches as `policy-fault` and tries again.
    fn take_instance(self: &Arc<Self>, release: &Release, id: usize) -> Option<WasmPolicy> {
        if let Some(spare) = lock(&release.spares).get_mut(id).and_then(Option::take) {
            return Some(spare);
        }
        match WasmPolicy::new(&self.runtime, &release.module, &release.config) {
            Ok(policy) => Some(policy),
            Err(e) => {
                self.note_fault(&PolicyFault::Start(e.to_string()), release.generation);
                None
            }
        }
    }

    /// The sum of every worker's counters.
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for c in &self.counters {
            total.merge(&lock(c));
        }
        total
    }

    /// The gateway's own event counters.
    pub fn events(&self) -> MutexGuard<'_, Events> {
        lock(&self.events)
    }

    /// The batch records so far (empty unless `record_batches`).
    pub fn records(&self) -> Vec<BatchRecord> {
        lock(&self.records).clone()
    }

    /// The highest generation that has judged a batch so far.
    pub fn judged_generation(&self) -> u64 {
        self.judged.load(Ordering::Acquire)
    }

    /// Generations of the good releases, oldest first.
    pub fn good_generations(&self) -> Vec<u64> {
        lock(&self.good).iter().map(|r| r.generation).collect()
    }
}

/// Builds a release off the packet path: one configured instance per worker (prepared in
/// parallel), the first of which judges the canary batch. `canary` is reused when the
/// configuration is the running one's.
fn prepare(
    runtime: &Runtime,
    module: LoadedModule,
    config: &str,
    canary: Option<Arc<[Packet]>>,
    workers: usize,
    generation: u64,
    cause: &'static str,
) -> Result<Release, SwapError> {
    // The instances for workers 1.. are prepared by as many threads as there are cores, while
    // this thread prepares and checks the first.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(workers.saturating_sub(1));
    let mut spares: Vec<WasmPolicy> = std::thread::scope(|scope| {
        let extra: Vec<_> = (0..threads)
            .map(|t| {
                let (module, count) = (&module, (workers - 1 - t).div_ceil(threads));
                scope.spawn(move || {
                    (0..count)
                        .map(|_| WasmPolicy::new(runtime, module, config))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut spares = vec![WasmPolicy::new(runtime, &module, config)?];
        if spares[0].catalog().vpcs.is_empty() {
            return Err(SwapError::Config(ConfigRefused {
                object: None,
                field: None,
                value: None,
                message: "the configuration defines no VPC (an empty or cut-off file?): every packet would be dropped as unknown-vpc".into(),
            }));
        }
        for handle in extra {
            let more = handle
                .join()
                .map_err(|_| ModuleError::Start("preparing an instance panicked".into()))?;
            spares.extend(more?);
        }
        Ok::<_, SwapError>(spares)
    })?;
    let first = &mut spares[0];
    let canary = canary.unwrap_or_else(|| canary_packets(first.catalog(), config).into());
    let mut out = vec![Verdict::default(); canary.len()];
    first
        .judge(&canary, &mut out)
        .map_err(|e| SwapError::Canary(e.to_string()))?;
    let info = first.info().clone();
    let catalog = first.catalog().clone();
    let (peerings, _) = first.config_summary();
    Ok(Release {
        generation,
        cause,
        module,
        info,
        config: config.into(),
        config_digest: hex(&Sha256::digest(config.as_bytes())),
        catalog,
        peerings,
        canary,
        spares: Mutex::new(spares.into_iter().map(Some).collect()),
    })
}

/// Refuses a configuration over `limit` bytes before any work is done on it.
fn check_config_size(config: &str, limit: usize) -> Result<(), SwapError> {
    if config.len() > limit {
        return Err(SwapError::Config(ConfigRefused {
            object: None,
            field: None,
            value: Some(format!("{} bytes", config.len())),
            message: format!(
                "the configuration is {} bytes, over the limit of {limit} bytes (raise it with --max-config-bytes)",
                config.len()
            ),
        }));
    }
    Ok(())
}

/// Refuses a change made against another release than the one serving: `if_match` is the
/// ETag the caller read (quotes allowed), or `*` for any.
fn check_if_match(running: &Release, if_match: Option<&str>) -> Result<(), SwapError> {
    let Some(expected) = if_match.map(|e| e.trim().trim_matches('"')) else {
        return Ok(());
    };
    if expected == "*" || expected == running.etag() {
        return Ok(());
    }
    Err(SwapError::Stale {
        expected: expected.to_owned(),
        running: running.etag(),
    })
}
