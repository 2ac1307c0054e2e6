//! A long-running gateway: the policy release it serves, and the swaps and rollbacks that
//! replace that release while traffic flows.
//!
//! A **release** is a module with a configuration, a generation number, and one instance
//! prepared per worker. Every change is a [`SwapRequest`] (or a rollback): the next release is
//! built entirely off the packet path (compile; one instance configures and judges the canary
//! batch; every worker's instance adopts the state it built), then published with one atomic
//! store. Each worker checks the published generation at its batch boundary and moves to the
//! new release there, so no batch is judged by two releases; the old release's instances are
//! freed as the workers leave them. The last three good releases are kept for rollback, each
//! with its state and no instance: a rollback adopts that state, and configures nothing.
//!
//! Every release records who made it ([`Origin`]): the operator, the tag watch or auto-revert.
//! The gateway's other jobs live beside this file: `authority.rs` holds the rule between
//! those writers (the operator's changes pin the gateway), `worker.rs` the stage each core
//! runs, `faults.rs` the fault window and auto-revert, `events.rs` what the gateway counts of
//! its own events, `watch.rs` the tag watch, `shadow.rs` the shadow release (a change
//! prepared as a swap is, judging copies of live batches until it is promoted or discarded)
//! and `serve.rs` the worker threads of the binary.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sha2::{Digest as _, Sha256};

use crate::dataplane::{Counters, Histogram};
use crate::oci::{Digest, Reference, Signer, Trust};
use crate::wasm::Runtime;
pub use crate::wasm::instances_needed;

mod authority;
mod events;
mod faults;
mod release;
pub mod serve;
mod shadow;
pub mod watch;
mod worker;

pub use shadow::{
    Budget as ShadowBudget, DEFAULT_SHADOW_SHARE, Discarded, End as ShadowEnd, Outcome, Report,
    Sample, Shadow, ShadowError, Totals as ShadowTotals,
};
pub use worker::{Burst, ColumnBurst, Worker};

use crate::oci::SignatureCheck;
pub use authority::{Decision, Pause, Quarantined, WatchApproval, WatchError, WatchStatus};
use events::Recorder;
pub use events::{AdminRefusal, BatchRecord, Events, Pull, RollbackCause};
use faults::FaultWindow;
pub use release::{AdoptionError, Cause, Origin, Prepared, Refusal, Release, SwapError};
use release::{check_config_size, check_if_match, prepare, prepare_again};

/// How many good releases are kept for rollback (the current one included).
pub const KEEP_GOOD: usize = 3;

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
    /// The keys one of which must have signed every module the gateway runs
    /// ([`ModuleBytes::signer`]); `None` runs unsigned modules.
    pub trust: Option<Arc<Trust>>,
    /// With `trust`: run modules that are not from a registry (files, uploads) without a
    /// signature, warning at each. For development only.
    pub allow_unsigned_local: bool,
    /// How many nice levels [`Gateway::run_worker`] lowers its thread's priority by (to nice
    /// 19 at most; 0 leaves it): below the gateway's other threads, so that a swap, a rollback
    /// and the admin API get a core's share when the workers keep every core busy.
    pub worker_nice: u8,
    /// The share of its batches each worker also judges with a staged shadow release, after
    /// their live verdicts are applied (0 to 1; [`DEFAULT_SHADOW_SHARE`]).
    pub shadow_share: f64,
}

/// The workers' nice value unless told otherwise ([`Options::worker_nice`]). With 16 workers
/// flat out on 2 cores, a thread at nice 0 beside them gets a seventeenth of the CPU (a
/// configure call of 200 ms then takes 1.8 s on the clock); at 5 it gets about a sixth.
pub const DEFAULT_WORKER_NICE: u8 = 5;

/// The largest configuration text accepted unless told otherwise ([`Options::max_config_bytes`]).
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
            worker_nice: DEFAULT_WORKER_NICE,
            trust: None,
            allow_unsigned_local: false,
            shadow_share: DEFAULT_SHADOW_SHARE,
        }
    }
}

/// A module handed to the gateway: its bytes, and where they were pulled from when they came
/// from a registry.
#[derive(Debug, Clone, Copy)]
pub struct ModuleBytes<'a> {
    /// The module (a Wasm component).
    pub bytes: &'a [u8],
    /// The reference it was pulled by, as given, and the manifest's digest that reference
    /// resolved to. A reference by the watched tag (no digest) resumes the watch.
    pub pulled: Option<(&'a Reference, Digest)>,
    /// Who signed it, as a verification found: of the manifest digest for a pulled module
    /// ([`Trust::pull`], [`Trust::verify`]), of the bytes themselves for a local one
    /// ([`Trust::verify_detached`]).
    pub signer: Option<&'a Signer>,
}

impl<'a> ModuleBytes<'a> {
    /// A module pulled by `asked`, which resolved to the manifest `digest`.
    pub fn pulled(bytes: &'a [u8], asked: &'a Reference, digest: Digest) -> ModuleBytes<'a> {
        ModuleBytes {
            bytes,
            pulled: Some((asked, digest)),
            signer: None,
        }
    }

    /// The same module, signed as `signer` says.
    pub fn signed(self, signer: Option<&'a Signer>) -> ModuleBytes<'a> {
        ModuleBytes { signer, ..self }
    }

    /// The module's signer, when the gateway's keys let it run: a signer the gateway trusts,
    /// whose signature is over what the module is (the pulled manifest's digest, or the
    /// bytes' own SHA-256 for a local module) and who vouches for these very bytes; or no
    /// signature where none is required (or a local module where `allow_unsigned_local` lets
    /// one in, with a warning, counted as `unsigned-allowed`).
    fn checked_signer(&self, options: &Options) -> Result<Option<Signer>, SwapError> {
        let Some(trust) = &options.trust else {
            return Ok(self.signer.cloned());
        };
        let bytes = Digest::of(self.bytes);
        let refuse = |check: SignatureCheck, why: String| {
            Err(SwapError::Unsigned {
                module: self
                    .source()
                    .unwrap_or_else(|| format!("an uploaded or local module (sha256 {bytes})")),
                check,
                why,
            })
        };
        let Some(signer) = self.signer else {
            if self.pulled.is_none() && options.allow_unsigned_local {
                tracing::warn!(
                    event = "unsigned-local",
                    module_sha256 = %bytes,
                    "an unsigned local module is let in by --allow-unsigned-local: for development only, never on a gateway that enforces signatures"
                );
                return Ok(None);
            }
            return refuse(
                SignatureCheck::Unsigned,
                "unsigned: no signature by a trusted key came with it".into(),
            );
        };
        if !trust
            .keys()
            .iter()
            .any(|k| k.fingerprint() == signer.fingerprint())
        {
            return refuse(
                SignatureCheck::Untrusted,
                format!(
                    "signed by {}, not a key this gateway trusts",
                    signer.fingerprint()
                ),
            );
        }
        let signed = match self.pulled {
            Some((_, digest)) if !signer.detached() => digest,
            None if signer.detached() => bytes,
            _ => {
                return refuse(
                    SignatureCheck::Malformed,
                    "its signature is not of the kind its source needs (a registry's for a pulled module, a detached one for a local one)".into(),
                );
            }
        };
        if signer.digest() != signed {
            return refuse(
                SignatureCheck::OtherDigest,
                format!("the signature is over {}, not {signed}", signer.digest()),
            );
        }
        if signer.module_sha256() != Some(bytes) {
            return refuse(
                SignatureCheck::OtherDigest,
                format!(
                    "its signer vouches for other bytes than these (sha256 {bytes}): a pulled module's signer must come from the pull that brought it"
                ),
            );
        }
        Ok(Some(signer.clone()))
    }

    /// Where the module came from: the reference it was pulled by, pinned to the digest.
    fn source(&self) -> Option<String> {
        self.pulled
            .map(|(asked, digest)| asked.pinned(digest).to_string())
    }
}

impl<'a> From<&'a [u8]> for ModuleBytes<'a> {
    fn from(bytes: &'a [u8]) -> ModuleBytes<'a> {
        ModuleBytes {
            bytes,
            pulled: None,
            signer: None,
        }
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for ModuleBytes<'a> {
    fn from(bytes: &'a [u8; N]) -> ModuleBytes<'a> {
        ModuleBytes::from(&bytes[..])
    }
}

/// A swap asked of the gateway: a new module, a new configuration or both; what is left out
/// is kept from the running release.
#[derive(Debug, Clone, Copy, Default)]
pub struct SwapRequest<'a> {
    /// What must hold before the prepared release goes live ([`Approval`]).
    pub approval: Option<Approval<'a>>,
    /// The new module (`None` keeps the running one).
    pub module: Option<ModuleBytes<'a>>,
    /// The new configuration text (`None` keeps the running one).
    pub config: Option<&'a str>,
    /// An `If-Match` value: `*`, or one or more of the releases' ETags ([`Release::etag`]).
    /// The swap goes through only while a release it names serves.
    pub if_match: Option<&'a str>,
}

impl<'a> SwapRequest<'a> {
    /// A new module, with the running configuration.
    pub fn module(module: impl Into<ModuleBytes<'a>>) -> SwapRequest<'a> {
        SwapRequest {
            module: Some(module.into()),
            ..SwapRequest::default()
        }
    }

    /// A new configuration, for the running module.
    pub fn config(config: &'a str) -> SwapRequest<'a> {
        SwapRequest {
            config: Some(config),
            ..SwapRequest::default()
        }
    }
}

/// Who asked for an operator's change, and why in words: a module pulled from a registry
/// makes an [`Origin::OperatorReference`] release, anything else an
/// [`Origin::OperatorUpload`].
fn operator_origin(request: &SwapRequest<'_>) -> (Origin, String) {
    match request.module.and_then(|m| m.pulled) {
        Some((asked, digest)) => (
            Origin::OperatorReference,
            format!("an operator named {asked} ({digest})"),
        ),
        None => (Origin::OperatorUpload, "an operator's upload".to_owned()),
    }
}

/// The last word on a prepared release, under the swap lock, before it goes live: called with
/// the serving release and the one prepared to replace it, it refuses the change with why
/// (the change is then refused as [`SwapError::NotRecorded`]). The admin API writes each
/// change's audit record here, so that a change it cannot record is not made.
#[derive(Clone, Copy)]
pub struct Approval<'a>(pub &'a (dyn Fn(&Release, &Release) -> Result<(), String> + 'a));

impl std::fmt::Debug for Approval<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Approval")
    }
}

/// The record of a change the gateway makes on its own account (the tag watch's swaps and
/// shadows, SIGHUP's reloads, auto-reverts): what the change is (such as `"auto-revert"`),
/// the serving release, and what became of the change. A change about to be made is recorded
/// under the swap lock before it is made, as an [`Approval`] is, and an `Err` refuses it
/// ([`SwapError::NotRecorded`]); a refusal's record that cannot be written is only logged. The
/// admin API sets it to write audit records.
pub type OwnRecord = dyn Fn(&str, &Release, OwnChange<'_>) -> Result<(), String> + Send + Sync;

/// What became of a change the gateway makes on its own account, as its [`OwnRecord`] says.
#[derive(Clone, Copy)]
pub enum OwnChange<'a> {
    /// About to be made: this release replaces the serving one (or is staged beside it).
    Made(&'a Release),
    /// Refused: `reason` names why (as answers and metrics name refusals), `error` says it.
    Refused {
        /// The refusal's name.
        reason: &'a str,
        /// What went wrong.
        error: &'a str,
    },
}

/// A rollback to the previous good release, and who asked for it.
enum Rollback<'a> {
    /// An operator's, while the release named by `if_match` (an `If-Match` value) serves,
    /// published if `approval` lets it.
    Operator {
        if_match: Option<&'a str>,
        approval: Option<Approval<'a>>,
    },
    /// The gateway's own after repeated faults of generation `from`, while it serves.
    Auto { from: u64, why: String },
}

impl Rollback<'_> {
    fn cause(&self) -> RollbackCause {
        match self {
            Rollback::Operator { .. } => RollbackCause::Operator,
            Rollback::Auto { .. } => RollbackCause::Auto,
        }
    }
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
    /// What the gateway counts of its own events, and its batch records.
    events: Recorder,
    /// The serving release's recent faults, and auto-revert.
    faults: FaultWindow,
    /// The tag the gateway follows, when it follows one.
    watch: Mutex<Option<authority::TagWatch>>,
    /// The highest generation that has judged a batch.
    judged: AtomicU64,
    /// The shadow release staged, if any, and how the last one ended.
    shadow: shadow::Slot,
    /// The record of the gateway's own changes, when something keeps one.
    own_record: Mutex<Option<Arc<OwnRecord>>>,
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
    /// Starts a gateway on `module` with `config`. Nothing is running yet: give each core a
    /// [`Gateway::worker`], or call [`Gateway::run_worker`] from each worker thread.
    pub fn new<'a>(
        runtime: Runtime,
        module: impl Into<ModuleBytes<'a>>,
        config: &str,
        options: Options,
    ) -> Result<Arc<Gateway>, SwapError> {
        let module = module.into();
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
        let signer = module.checked_signer(&options)?;
        let loaded = runtime.load(module.bytes)?;
        let mut release = prepare(
            &runtime,
            loaded,
            config,
            None,
            workers,
            1,
            (Cause::Start, Origin::Start),
        )?;
        release.why = "the gateway started".into();
        release.source = module.source();
        release.signer = signer;
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
            events: Recorder::default(),
            faults: FaultWindow::new(),
            watch: Mutex::new(None),
            judged: AtomicU64::new(0),
            shadow: shadow::Slot::default(),
            own_record: Mutex::new(None),
            batch_latency: Histogram::default(),
            started: Instant::now(),
        };
        Ok(Arc::new(gateway))
    }

    /// The release being served.
    pub fn current(&self) -> Arc<Release> {
        self.current.load_full()
    }

    /// How many of its module instances configured, and how many adopted a state.
    pub fn starts(&self) -> &crate::wasm::Starts {
        self.runtime.starts()
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Time since the gateway started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// An operator's swap. A module pulled from a registry ([`ModuleBytes::pulled`]) makes
    /// an [`Origin::OperatorReference`] release, anything else an [`Origin::OperatorUpload`].
    /// A published swap pins the gateway: a tag watch pauses (unless the module was pulled by
    /// the watched tag itself, which resumes it).
    pub fn swap(&self, request: SwapRequest<'_>) -> Result<Arc<Release>, SwapError> {
        let (origin, why) = operator_origin(&request);
        let _one_at_a_time = lock(&self.swap_lock);
        self.swap_locked(request, origin, why)
    }

    /// The tag watch's swap to `digest`, which `tag` resolves to: taken only if the watch
    /// still decides to take it once the swap lock is held (an operator may have changed the
    /// release, or paused the watch, while the module was pulled) and `stop` is not set. A
    /// module refused for what it is is quarantined (see `quarantine_refusal`); the refusal
    /// is recorded as the gateway's own ([`OwnRecord`]). `Ok(None)`: nothing was done.
    pub fn swap_by_watch(
        &self,
        module: &[u8],
        tag: &Reference,
        digest: Digest,
        signer: Option<&Signer>,
        stop: &AtomicBool,
    ) -> Result<Option<Arc<Release>>, SwapError> {
        let _one_at_a_time = lock(&self.swap_lock);
        if stop.load(Ordering::Acquire) || self.watch_decision(&digest) != Decision::Take {
            return Ok(None);
        }
        let record = self.own_approval("tag watch: swap");
        let request = SwapRequest {
            approval: Some(Approval(&record)),
            ..SwapRequest::module(ModuleBytes::pulled(module, tag, digest).signed(signer))
        };
        let why = format!("the tag {tag} moved to {digest}");
        self.swap_locked(request, Origin::TagWatch, why)
            .map(Some)
            .inspect_err(|e| {
                self.own_refused("tag watch: swap", e.reason().as_str(), &e.to_string());
                self.quarantine_refusal(digest, e);
            })
    }

    /// SIGHUP: swaps in `module` (when given) and `config` read again from their files, unless
    /// both are what the running release already has: then nothing is published and `None`
    /// is returned. A published reload pins the gateway as an operator's swap does.
    pub fn reload(
        &self,
        module: Option<ModuleBytes<'_>>,
        config: &str,
    ) -> Result<Option<Arc<Release>>, SwapError> {
        let _one_at_a_time = lock(&self.swap_lock);
        let running = self.current();
        let same_module =
            module.is_none_or(|m| Sha256::digest(m.bytes)[..] == running.module.digest());
        if same_module && *running.config == *config {
            return Ok(None);
        }
        let record = self.own_approval("SIGHUP: reload");
        let request = SwapRequest {
            module: module.filter(|_| !same_module),
            config: Some(config),
            approval: Some(Approval(&record)),
            ..SwapRequest::default()
        };
        let why = "SIGHUP: the module and configuration files read again".to_owned();
        self.swap_locked(request, Origin::Sighup, why)
            .map(Some)
            .inspect_err(|e| {
                self.own_refused("SIGHUP: reload", e.reason().as_str(), &e.to_string());
            })
    }

    /// Publishes `request` as made by `origin` for `why` (the swap lock held), logging it or
    /// its refusal.
    fn swap_locked(
        &self,
        request: SwapRequest<'_>,
        origin: Origin,
        why: String,
    ) -> Result<Arc<Release>, SwapError> {
        let result = self.try_swap(request, origin, why);
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
                configured = release.prepared.configured,
                adopted = release.prepared.adopted,
                state_bytes = release.prepared.state_bytes,
                prepare_cpu_ms = release.prepared.cpu.as_millis() as u64,
                configure_ms = release.prepared.configure.as_millis() as u64,
                prepare_ms = release.prepared.wall.as_millis() as u64,
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
        request: SwapRequest<'_>,
        origin: Origin,
        why: String,
    ) -> Result<Arc<Release>, SwapError> {
        let follows = request.module.and_then(|m| m.pulled);
        let release = self.prepare_swap(request, origin, why)?;
        Ok(self.publish(release, 0, follows))
    }

    /// Everything of a swap but its publication (the swap lock held): the checks of the
    /// request, the module's signature, the preparation of the release and its approval. A
    /// swap publishes what it returns; a shadow is staged with it
    /// ([`Gateway::stage_shadow`]).
    fn prepare_swap(
        &self,
        request: SwapRequest<'_>,
        origin: Origin,
        why: String,
    ) -> Result<Release, SwapError> {
        let SwapRequest {
            approval,
            module,
            config,
            if_match,
        } = request;
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
        let (loaded, signer) = match &module {
            Some(module) => {
                let signer = module.checked_signer(&self.options).inspect_err(|e| {
                    if let SwapError::Unsigned { check, .. } = e {
                        self.events.signature(*check);
                    }
                })?;
                if signer.is_none() && self.options.trust.is_some() {
                    self.events.signature(SignatureCheck::UnsignedAllowed);
                }
                if let Some(signer) = &signer {
                    self.events.signature(SignatureCheck::Signed);
                    tracing::info!(
                        event = "signature",
                        result = "signed",
                        key = %signer.key(),
                        fingerprint = %signer.fingerprint(),
                        identity = %signer.identity(),
                        "the module is signed by {} ({})",
                        signer.key(),
                        signer.fingerprint()
                    );
                }
                (self.runtime.load(module.bytes)?, signer)
            }
            None => (running.module.clone(), running.signer.clone()),
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
        release.source = match module {
            Some(module) => module.source(),
            None => running.source.clone(),
        };
        release.signer = signer;
        if let Some(approval) = approval {
            (approval.0)(&running, &release).map_err(SwapError::NotRecorded)?;
        }
        Ok(release)
    }

    /// A module refused for its signatures before it got to the gateway (where it was pulled
    /// or uploaded, or by the tag watch): counted by the check's result and as a refused
    /// swap, and logged; the running release keeps serving. Returns it as a swap's refusal.
    /// `what` names the change in the log ("swap", "SIGHUP's swap").
    pub fn refuse_signature(&self, what: &str, e: crate::oci::SignatureError) -> SwapError {
        self.events.signature(e.check());
        let e = SwapError::Signature(e);
        self.note_refusal(what, &e);
        e
    }

    /// [`Gateway::refuse_signature`] of a module the gateway fetched or read on its own
    /// account (the tag watch's pull, SIGHUP's re-read), whose refusal is also recorded as
    /// that of its own change `change` ([`OwnRecord`]).
    pub fn refuse_own_signature(
        &self,
        what: &str,
        change: &str,
        e: crate::oci::SignatureError,
    ) -> SwapError {
        let e = self.refuse_signature(what, e);
        self.own_refused(change, e.reason().as_str(), &e.to_string());
        e
    }

    /// Counts and logs a refused swap or rollback (`what`); the running release keeps serving.
    fn note_refusal(&self, what: &str, e: &SwapError) {
        self.events.refusal(e.reason());
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

    /// Publishes a prepared release (the swap lock held) in place of the last `replaces` good
    /// releases: none for a swap, which adds one; for a rollback, the release rolled back
    /// from and the one it goes back to, which the new release stands for. `follows`: the
    /// reference the module was pulled by, for the watch's rule.
    fn publish(
        &self,
        release: Release,
        replaces: usize,
        follows: Option<(&Reference, Digest)>,
    ) -> Arc<Release> {
        self.next_generation.fetch_add(1, Ordering::Relaxed);
        let release = Arc::new(release);
        // Workers that have not moved to the outgoing release yet will skip it: its unused
        // instances go back to the pool now.
        lock(&self.current.load().spares).clear();
        {
            let mut good = lock(&self.good);
            for _ in 0..replaces {
                good.pop_back();
            }
            good.push_back(release.clone());
            while good.len() > KEEP_GOOD {
                good.pop_front();
            }
        }
        self.events.swap(release.cause);
        self.current.store(release.clone());
        self.faults.clear();
        // The shadow was measured against the release that served until now.
        self.end_shadow(None, shadow::End::LiveChanged, &release);
        self.after_publish(&release, follows);
        release
    }

    /// An operator's rollback to the previous good release, only while the release named by
    /// `if_match` (an `If-Match` value, as for a swap) serves.
    pub fn rollback(&self, if_match: Option<&str>) -> Result<Arc<Release>, SwapError> {
        self.rollback_approved(if_match, None)
    }

    /// [`Gateway::rollback`], published only if `approval` lets it.
    pub fn rollback_approved(
        &self,
        if_match: Option<&str>,
        approval: Option<Approval<'_>>,
    ) -> Result<Arc<Release>, SwapError> {
        self.roll_back(Rollback::Operator { if_match, approval })
    }

    /// Rolls back to the previous good release; an auto-revert only while the generation it
    /// answers serves.
    fn roll_back(&self, rollback: Rollback<'_>) -> Result<Arc<Release>, SwapError> {
        let _one_at_a_time = lock(&self.swap_lock);
        let from = self.current();
        let cause = rollback.cause();
        if let Rollback::Auto { from: faulty, .. } = rollback
            && faulty != from.generation
        {
            // Someone else published meanwhile: the faulty release is already gone.
            return Ok(from);
        }
        let result = self.try_rollback(rollback);
        match &result {
            Ok(_) if cause == RollbackCause::Auto => self.quarantine_reverted(&from),
            Ok(_) => {}
            Err(e) => {
                self.note_refusal(&format!("rollback ({cause})"), e);
                if cause == RollbackCause::Auto {
                    self.own_refused("auto-revert", e.reason().as_str(), &e.to_string());
                }
            }
        }
        result
    }

    fn try_rollback(&self, rollback: Rollback<'_>) -> Result<Arc<Release>, SwapError> {
        let cause = rollback.cause();
        let own = self.own_approval("auto-revert");
        let (if_match, approval, why, release_cause, origin) = match rollback {
            Rollback::Operator { if_match, approval } => (
                if_match,
                approval,
                "an operator's rollback".to_owned(),
                Cause::Rollback,
                Origin::Rollback,
            ),
            Rollback::Auto { why, .. } => (
                None,
                Some(Approval(&own)),
                why,
                Cause::AutoRevert,
                Origin::AutoRevert,
            ),
        };
        check_if_match(&self.current(), if_match)?;
        let target = {
            let good = lock(&self.good);
            if good.len() < 2 {
                return Err(SwapError::NothingToRollBack);
            }
            good[good.len() - 2].clone()
        };
        let generation = self.next_generation.load(Ordering::Relaxed);
        let mut release = prepare_again(
            &self.runtime,
            &target,
            self.options.workers,
            generation,
            (release_cause, origin),
        )?;
        release.source = target.source.clone();
        release.signer = target.signer.clone();
        release.why = format!(
            "{why}: back to the release of generation {}",
            target.generation
        );
        if let Some(approval) = approval {
            (approval.0)(&self.current(), &release).map_err(SwapError::NotRecorded)?;
        }
        // The release rolled back from is no longer good; the new one takes the target's place.
        let release = self.publish(release, 2, None);
        self.events.rollback(cause);
        tracing::info!(
            event = match cause {
                RollbackCause::Auto => "auto-revert",
                RollbackCause::Operator => "rollback",
            },
            generation = release.generation,
            cause = %cause,
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

    /// Generations of the good releases, oldest first.
    pub fn good_generations(&self) -> Vec<u64> {
        lock(&self.good).iter().map(|r| r.generation).collect()
    }

    /// Keeps a record of the changes the gateway makes on its own account from now on
    /// ([`OwnRecord`]), in place of any before.
    pub fn record_own_changes(&self, record: Arc<OwnRecord>) {
        *lock(&self.own_record) = Some(record);
    }

    /// The approval of a change the gateway makes on its own account, `what`: its record
    /// written, when one is kept.
    fn own_approval(
        &self,
        what: &'static str,
    ) -> impl Fn(&Release, &Release) -> Result<(), String> {
        let record = lock(&self.own_record).clone();
        move |before: &Release, after: &Release| match &record {
            Some(record) => record(what, before, OwnChange::Made(after)),
            None => Ok(()),
        }
    }

    /// Records that a change the gateway tried on its own account, `what`, was refused for
    /// `reason` (`error`), while the current release serves; a record that cannot be written
    /// is logged.
    fn own_refused(&self, what: &str, reason: &str, error: &str) {
        let Some(record) = lock(&self.own_record).clone() else {
            return;
        };
        if let Err(e) = record(what, &self.current(), OwnChange::Refused { reason, error }) {
            tracing::error!(error = %e, "the record of the refusal of {what} could not be written");
        }
    }
}
