//! A long-running gateway: worker threads judging traffic through the published policy
//! release, and the swaps, rollbacks and fault handling that replace it while traffic flows.
//!
//! A **release** is a module with a configuration, a generation number, and one configured
//! instance prepared per worker. A swap builds the next release entirely off the packet path
//! (compile, instantiate, configure, canary batch), then publishes it with one atomic store.
//! Each worker checks the published generation at its batch boundary and moves to the new
//! release there, so no batch is judged by two releases; the old release is freed when the
//! last worker lets go of it. The last three good releases are kept for rollback.
//!
//! Every release records who made it ([`Origin`]): the operator, the tag watch or auto-revert.
//! `authority.rs` holds the rule between them: the operator's changes pin the gateway.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sha2::{Digest as _, Sha256};

use crate::PolicyFault;
use crate::dataplane::{Counters, Histogram};
use crate::oci::{Digest, Reference};
use crate::wasm::Runtime;
pub use crate::wasm::instances_needed;

mod authority;
mod release;
pub mod serve;
pub mod watch;
mod worker;

pub use worker::{Burst, Worker};

pub use authority::{Decision, Pause, Quarantined, WatchError, WatchStatus};
pub use release::{Cause, Origin, Refusal, Release, SwapError};
use release::{check_config_size, check_if_match, prepare};

/// How many good releases are kept for rollback (the current one included).
pub const KEEP_GOOD: usize = 3;

/// The first and the longest wait before an auto-revert that failed is tried again.
const REVERT_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

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

/// A change an operator asks of the gateway: a new module, a new configuration or both.
#[derive(Debug, Clone, Copy, Default)]
pub struct Change<'a> {
    /// The new module (`None` keeps the running one).
    pub module: Option<&'a [u8]>,
    /// The new configuration (`None` keeps the running one).
    pub config: Option<&'a str>,
    /// An `If-Match` value: the change goes through only while that release serves.
    pub if_match: Option<&'a str>,
    /// Where the module was pulled from: the reference as the operator gave it, and the
    /// manifest's digest it resolved to. A reference by the watched tag resumes the watch.
    pub pulled: Option<(&'a Reference, Digest)>,
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
    /// Registry pulls by result: `swapped`, `unchanged`, `failed` (the registry), `refused`
    /// (the module or its configuration), `quarantined` (the tag names a digest that failed
    /// before: not pulled).
    pub pulls: BTreeMap<&'static str, u64>,
    /// Faults that did not count toward an auto-revert (not the module's own), by reason.
    pub host_faults: BTreeMap<&'static str, u64>,
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
    /// The serving release's own faults in the fault window, with their reasons (cleared at
    /// every publication: a release answers only for its own faults).
    recent_faults: Mutex<VecDeque<(Instant, &'static str)>>,
    /// The tag the gateway follows, when it follows one.
    watch: Mutex<Option<authority::TagWatch>>,
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

impl Gateway {
    /// Starts a gateway on `module` with `config`. Nothing is running yet: call
    /// [`Gateway::run_worker`] from each worker thread.
    pub fn new(
        runtime: Runtime,
        module: &[u8],
        config: &str,
        options: Options,
    ) -> Result<Arc<Gateway>, SwapError> {
        Self::new_from(runtime, module, config, options, None)
    }

    /// [`Gateway::new`] with a module pulled from `source` (its pinned reference).
    pub fn new_from(
        runtime: Runtime,
        module: &[u8],
        config: &str,
        options: Options,
        source: Option<String>,
    ) -> Result<Arc<Gateway>, SwapError> {
        let workers = options.workers.max(1);
        let needed = instances_needed(workers);
        if let Some(capacity) = runtime.instance_capacity()
            && capacity < needed
        {
            return Err(SwapError::Capacity {
                capacity,
                workers,
                needed,
            });
        }
        check_config_size(config, options.max_config_bytes)?;
        let module = runtime.load(module)?;
        let mut release = prepare(
            &runtime,
            module,
            config,
            None,
            workers,
            1,
            (Cause::Start, Origin::Start),
        )?;
        release.why = "the gateway started".into();
        release.source = source;
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
            watch: Mutex::new(None),
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

    /// An operator's swap: a new module, a new configuration, or both (`None` keeps the running
    /// one). `if_match` makes it a compare-and-swap against the running release's ETag.
    pub fn swap(
        &self,
        module: Option<&[u8]>,
        config: Option<&str>,
        if_match: Option<&str>,
    ) -> Result<Arc<Release>, SwapError> {
        self.change(Change {
            module,
            config,
            if_match,
            pulled: None,
        })
    }

    /// An operator's change. A published one pins the gateway: a tag watch pauses (unless the
    /// module is the watched tag itself, by tag, which resumes it).
    pub fn change(&self, change: Change<'_>) -> Result<Arc<Release>, SwapError> {
        let origin = match change.pulled {
            Some(_) => Origin::OperatorReference,
            None => Origin::OperatorUpload,
        };
        let why = match change.pulled {
            Some((asked, digest)) => format!("an operator named {asked} ({digest})"),
            None => "an operator's upload".to_owned(),
        };
        let _one_at_a_time = lock(&self.swap_lock);
        self.swap_locked(change, origin, why)
    }

    /// Publishes `change` (the swap lock held), logging it or its refusal.
    fn swap_locked(
        &self,
        change: Change<'_>,
        origin: Origin,
        why: String,
    ) -> Result<Arc<Release>, SwapError> {
        let result = self.try_swap(change, origin, why);
        match &result {
            Ok(release) => tracing::info!(
                event = "swap",
                generation = release.generation,
                cause = %release.cause,
                origin = %release.origin,
                why = %release.why,
                module = %format_args!("{} {}", release.info.name, release.info.version),
                module_sha256 = %release.module_digest(),
                config_sha256 = %release.config_digest,
                "swap: generation {} is live ({}) by {}: {}",
                release.generation,
                release.cause,
                release.origin,
                release.why,
            ),
            Err(e) => {
                let what = match origin {
                    Origin::TagWatch => "the tag watch's swap",
                    Origin::Sighup => "SIGHUP's swap",
                    _ => "swap",
                };
                self.note_refusal(what, e)
            }
        }
        result
    }

    fn try_swap(
        &self,
        change: Change<'_>,
        origin: Origin,
        why: String,
    ) -> Result<Arc<Release>, SwapError> {
        let Change {
            module,
            config,
            if_match,
            pulled,
        } = change;
        let running = self.current();
        check_if_match(&running, if_match)?;
        if let Some(config) = config {
            check_config_size(config, self.options.max_config_bytes)?;
        }
        let cause = match (module.is_some(), config.is_some()) {
            (true, true) => Cause::ModuleAndConfig,
            (true, false) => Cause::Module,
            (false, true) => Cause::Config,
            (false, false) => Cause::Reload,
        };
        let loaded = match module {
            Some(bytes) => self.runtime.load(bytes)?,
            None => running.module.clone(),
        };
        let canary = config.is_none().then(|| running.canary.clone());
        let config = config.unwrap_or(&running.config);
        let generation = self.next_generation.load(Ordering::Relaxed);
        let mut release = prepare(
            &self.runtime,
            loaded,
            config,
            canary,
            self.options.workers,
            generation,
            (cause, origin),
        )?;
        release.why = why;
        release.source = match (module, pulled) {
            (Some(_), Some((asked, digest))) => Some(asked.pinned(digest).to_string()),
            (Some(_), None) => None,
            (None, _) => running.source.clone(),
        };
        Ok(self.publish(release, false, pulled))
    }

    /// The tag watch's swap to `digest`, which `tag` resolves to: taken only if the watch
    /// still decides to take it once the swap lock is held (an operator may have changed the
    /// release, or paused the watch, while the module was pulled) and `stop` is not set. A
    /// refused module is quarantined. `Ok(None)`: nothing was done.
    pub fn swap_by_watch(
        &self,
        module: &[u8],
        tag: &Reference,
        digest: Digest,
        stop: &AtomicBool,
    ) -> Result<Option<Arc<Release>>, SwapError> {
        let _one_at_a_time = lock(&self.swap_lock);
        if stop.load(Ordering::Acquire) || self.watch_decision(&digest) != Decision::Take {
            return Ok(None);
        }
        let change = Change {
            module: Some(module),
            pulled: Some((tag, digest)),
            ..Change::default()
        };
        let why = format!("the tag {tag} moved to {digest}");
        match self.swap_locked(change, Origin::TagWatch, why) {
            Ok(release) => Ok(Some(release)),
            Err(e) => {
                // What the module is, not what the machine had to spare: a capacity or start
                // failure is tried again after the backoff.
                if !matches!(e.reason(), Refusal::Capacity | Refusal::StartFailed) {
                    self.quarantine_refused(digest, e.reason().as_str());
                }
                Err(e)
            }
        }
    }

    /// SIGHUP: swaps in `module` (when given) and `config` read again from their files, unless
    /// both are what the running release already has: then nothing is published and `None`
    /// is returned. A published reload pins the gateway as an operator's swap does.
    pub fn reload(
        &self,
        module: Option<&[u8]>,
        config: &str,
    ) -> Result<Option<Arc<Release>>, SwapError> {
        let _one_at_a_time = lock(&self.swap_lock);
        let running = self.current();
        let same_module = module.is_none_or(|m| Sha256::digest(m)[..] == running.module.digest());
        if same_module && *running.config == *config {
            return Ok(None);
        }
        let change = Change {
            module: module.filter(|_| !same_module),
            config: Some(config),
            ..Change::default()
        };
        let why = "SIGHUP: the module and configuration files read again".to_owned();
        self.swap_locked(change, Origin::Sighup, why).map(Some)
    }

    /// Counts and logs a refused swap or rollback (`what`); the running release keeps serving.
    fn note_refusal(&self, what: &str, e: &SwapError) {
        *lock(&self.events)
            .refusals
            .entry(e.reason().as_str())
            .or_default() += 1;
        let serving = self.current();
        tracing::warn!(
            event = "refusal",
            reason = %e.reason(),
            error = %e,
            generation = serving.generation,
            module_sha256 = %serving.module_digest(),
            config_sha256 = %serving.config_digest,
            "{what} refused ({}); generation {} keeps serving",
            e.reason(),
            serving.generation
        );
    }

    /// Counts a registry pull by its result.
    pub fn note_pull(&self, result: &'static str) {
        *lock(&self.events).pulls.entry(result).or_default() += 1;
    }

    /// Counts a request the admin API refused before it reached the gateway.
    pub fn note_admin_refusal(&self, reason: &'static str) {
        *lock(&self.events).admin_refusals.entry(reason).or_default() += 1;
    }

    /// Publishes a prepared release; `rollback` leaves the good list as the caller set it.
    /// `follows`: the reference the module was pulled by, for the watch's rule.
    fn publish(
        &self,
        release: Release,
        rollback: bool,
        follows: Option<(&Reference, Digest)>,
    ) -> Arc<Release> {
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
        *lock(&self.events)
            .swaps
            .entry(release.cause.as_str())
            .or_default() += 1;
        self.current.store(release.clone());
        lock(&self.recent_faults).clear();
        self.after_publish(&release, follows);
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
        let why = match auto {
            true => "asked for as an auto-revert".to_owned(),
            false => "an operator's rollback".to_owned(),
        };
        self.roll_back(auto, if_match, why, None)
    }

    /// Rolls back; an auto-revert only while `only_from` (when given) is the generation serving.
    fn roll_back(
        &self,
        auto: bool,
        if_match: Option<&str>,
        why: String,
        only_from: Option<u64>,
    ) -> Result<Arc<Release>, SwapError> {
        let _one_at_a_time = lock(&self.swap_lock);
        let cause = if auto { "auto" } else { "operator" };
        let from = self.current();
        if only_from.is_some_and(|g| g != from.generation) {
            // Someone else published meanwhile: the faulty release is already gone.
            return Ok(from);
        }
        let result = self.try_rollback(auto, if_match, why);
        match &result {
            Ok(_) if auto => self.quarantine_reverted(&from),
            Ok(_) => {}
            Err(e) => self.note_refusal(&format!("rollback ({cause})"), e),
        }
        result
    }

    fn try_rollback(
        &self,
        auto: bool,
        if_match: Option<&str>,
        why: String,
    ) -> Result<Arc<Release>, SwapError> {
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
        let (release_cause, origin) = match auto {
            true => (Cause::AutoRevert, Origin::AutoRevert),
            false => (Cause::Rollback, Origin::Rollback),
        };
        let mut release = prepare(
            &self.runtime,
            target.module.clone(),
            &target.config,
            Some(target.canary.clone()),
            self.options.workers,
            generation,
            (release_cause, origin),
        )?;
        release.source = target.source.clone();
        release.why = format!(
            "{why}: back to the release of generation {}",
            target.generation
        );
        {
            // The release rolled back from is no longer good; the target takes its place.
            let mut good = lock(&self.good);
            good.pop_back();
        }
        let release = self.publish(release, true, None);
        {
            let mut good = lock(&self.good);
            good.pop_back();
            good.push_back(release.clone());
        }
        *lock(&self.events).rollbacks.entry(cause).or_default() += 1;
        tracing::info!(
            event = if auto { "auto-revert" } else { "rollback" },
            generation = release.generation,
            cause,
            origin = %release.origin,
            why = %release.why,
            from_generation = target.generation,
            module = %format_args!("{} {}", release.info.name, release.info.version),
            module_sha256 = %release.module_digest(),
            config_sha256 = %release.config_digest,
            "rollback ({cause}): generation {} is live: {}",
            release.generation,
            release.why
        );
        Ok(release)
    }

    /// Counts a fault. The module's own faults ([`PolicyFault::is_module_fault`]) count toward an
    /// auto-revert: after `fault_limit` of them within `fault_window`, the gateway reverts in
    /// the background, naming the faults. A revert that fails is logged, counted and tried
    /// again after a backoff, as long as the faulty release serves and its faults go on.
    fn note_fault(self: &Arc<Self>, fault: &PolicyFault, generation: u64) {
        let own = fault.is_module_fault();
        {
            let mut events = lock(&self.events);
            *events.faults.entry(fault.reason()).or_default() += 1;
            if !own {
                *events.host_faults.entry(fault.reason()).or_default() += 1;
            }
        }
        tracing::warn!(
            event = "fault",
            generation,
            reason = fault.reason(),
            module_made = own,
            error = %fault,
            "fault in generation {generation}{}",
            if own { "" } else { " (not the module's own: it does not count toward an auto-revert)" }
        );
        if !own {
            return;
        }
        let now = Instant::now();
        if now < lock(&self.next_revert).0 {
            return;
        }
        let trip = {
            let mut recent = lock(&self.recent_faults);
            // A batch of a release no longer serving (workers move at their next batch) says
            // nothing about the one that serves now.
            if self.current().generation != generation {
                return;
            }
            recent.push_back((now, fault.reason()));
            while recent.len() > self.options.fault_limit.max(1) {
                recent.pop_front();
            }
            while recent
                .front()
                .is_some_and(|&(t, _)| now.duration_since(t) > self.options.fault_window)
            {
                recent.pop_front();
            }
            recent.len() >= self.options.fault_limit
        };
        if trip && !self.reverting.swap(true, Ordering::AcqRel) {
            let faults = authority::faults_sentence(&lock(&self.recent_faults));
            let gateway = self.clone();
            let why = format!(
                "{faults} in {:?} in generation {generation}",
                self.options.fault_window
            );
            let spawned = std::thread::Builder::new()
                .name("flowgate-revert".into())
                .spawn(move || {
                    let failed = gateway
                        .roll_back(true, None, why, Some(generation))
                        .err();
                    let mut next = lock(&gateway.next_revert);
                    match failed {
                        Some(e) => {
                            lock(&gateway.events).revert_failures += 1;
                            let wait = next.1;
                            tracing::error!(
                                event = "auto-revert-failed",
                                generation,
                                reason = %e.reason(),
                                error = %e,
                                retry_in = ?wait,
                                "auto-revert from generation {generation} failed; trying again while faults go on"
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
