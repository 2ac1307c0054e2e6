//! A release: a module with a configuration, its generation, the state its configured instance
//! built and one instance prepared per worker from it; how it is prepared (off the packet path,
//! configured once, checked by a canary batch) and why a swap is refused.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowgate_policy::{Catalog, Packet, Verdict};
use sha2::{Digest, Sha256};

use crate::oci::{SignatureCheck, SignatureError, Signer};
use crate::setting::{OverLimit, Setting};
use crate::wasm::{
    Adoption, Blueprint, ConfigError, LoadedModule, ModuleError, ModuleInfo, Runtime, StartError,
    StartStep, WasmPolicy, thread_cpu_time,
};
use crate::{Policy, PolicyFault, hex};

/// A module with a configuration, published under a generation number.
pub struct Release {
    /// Increases by one with every publication (swap or rollback).
    pub generation: u64,
    /// What the release changed: `start`, `module`, `config`, `module+config`,
    /// `reload` (a swap that changes neither), `rollback`, `auto-revert` or
    /// `shadow-promote`.
    pub cause: Cause,
    /// Who made it: the operator (an upload, a reference, a rollback, SIGHUP), the tag watch,
    /// auto-revert, or the gateway's start.
    pub origin: Origin,
    /// Why, in a sentence for logs and `/status`: the tag and digest the watch followed, the
    /// faults an auto-revert answered, the generation a rollback went back to.
    pub why: String,
    /// The module.
    pub module: LoadedModule,
    /// Where the module came from, when from a registry: its reference, pinned to the
    /// manifest's digest.
    pub source: Option<String>,
    /// Who signed the module, when it came with a signature a trusted key made.
    pub signer: Option<Signer>,
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
    /// How the release was prepared.
    pub prepared: Prepared,
    /// The canary batch for this configuration (reused by swaps that keep the configuration).
    pub(super) canary: Arc<[Packet]>,
    /// The configured instance's verdicts on the canary batch, which the first adopting
    /// instance of a release (and of a rollback to it) must give.
    pub(super) canary_verdicts: Arc<[Verdict]>,
    /// What the release's instances start from: the state its configured instance built.
    pub(super) plan: Blueprint,
    /// One instance per worker, taken by the worker when it moves to this release (or, for
    /// a shadow, when it first judges a copy with it).
    pub(super) spares: Mutex<Vec<Option<WasmPolicy>>>,
    /// For a promoted shadow: what its report said when it was promoted.
    pub shadow: Option<super::shadow::Totals>,
}

/// How a release was prepared: the instances started, and the CPU time it took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Instances that configured (parsed, validated and built): one, unless the module hands
    /// no state over, when every worker's instance configures.
    pub configured: u32,
    /// Instances that adopted the configured instance's state.
    pub adopted: u32,
    /// Bytes of that state (held once by the release, whatever the number of workers).
    pub state_bytes: usize,
    /// CPU time spent preparing, summed over the threads that did it.
    pub cpu: Duration,
    /// Time from the start of the preparation to the configured instance's state (its
    /// configure and canary): zero when nothing configured.
    pub configure: Duration,
    /// Time from the start of the preparation to every worker's instance ready.
    pub wall: Duration,
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

/// Why a release's state could not be handed over or adopted ([`SwapError::Adoption`]).
#[derive(Debug, thiserror::Error)]
pub enum AdoptionError {
    /// The configured instance failed to hand its state over (`export-state`).
    #[error("the configured instance could not hand its state over: {0}")]
    Export(PolicyFault),
    /// A worker's instance failed as it started (the module refused or trapped on its own
    /// state, or the host had no room for it).
    #[error("{0}")]
    Start(PolicyFault),
    /// The first adopting instance failed the canary batch.
    #[error("it failed the canary batch: {0}")]
    Canary(PolicyFault),
    /// The first adopting instance handed over another state than the one it adopted.
    #[error("it hands over another state than the one it adopted")]
    Mismatch,
    /// It judged a packet of the canary batch otherwise than the configured instance.
    #[error(
        "it judged canary packet {index} {adopted}, where the configured instance judged {configured}"
    )]
    Diverged {
        /// The packet's position in the canary batch.
        index: usize,
        /// The configured instance's verdict.
        configured: String,
        /// The adopting instance's verdict.
        adopted: String,
    },
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
    Config(ConfigError),
    /// The configuration was refused for a limit of the host's: its size, or the memory or
    /// CPU time the module ran out of reading it.
    #[error("configuration refused: {0}")]
    OverLimit(OverLimit),
    /// The canary batch failed.
    #[error("canary batch failed: {0}")]
    Canary(PolicyFault),
    /// A worker's instance could not start from the state the configured instance built, or
    /// judged the canary batch otherwise than it.
    #[error("an instance could not start from the configured instance's state: {0}")]
    Adoption(AdoptionError),
    /// The module's signatures were refused where they were checked, before the module got
    /// to the gateway (a pull, an upload's detached signature).
    #[error("{0}")]
    Signature(SignatureError),
    /// The gateway requires signed modules, and this one came without a signature it trusts
    /// for its bytes.
    #[error("{module}: refused: {why}")]
    Unsigned {
        /// The module: its pinned reference, or its SHA-256.
        module: String,
        /// The kind of refusal, for the counters.
        check: SignatureCheck,
        /// Why.
        why: String,
    },
    /// There is no earlier good release.
    #[error("no earlier good release to roll back to")]
    NothingToRollBack,
    /// The change was prepared, but what had to hold before it went live did not: its audit
    /// record could not be written.
    #[error("the change could not be recorded, so it was not made: {0}")]
    NotRecorded(String),
    /// The runtime's instance pool is too small for the gateway's workers.
    #[error(
        "the runtime's instance pool holds {capacity} module instances, and a gateway with {workers} workers may need {needed}: size it with EngineOptions::for_workers({workers})"
    )]
    Capacity {
        /// Module instances the pool holds.
        capacity: u32,
        /// The gateway's workers.
        workers: usize,
        /// Module instances they may need ([`crate::wasm::instances_needed`]).
        needed: u32,
    },
}

impl SwapError {
    /// The refusal's reason in logs, counters and metrics.
    pub fn reason(&self) -> Refusal {
        match self {
            SwapError::Stale { .. } => Refusal::StaleRelease,
            SwapError::Module(
                ModuleError::NotWasm
                | ModuleError::CoreModule
                | ModuleError::Precompiled
                | ModuleError::Invalid(_),
            ) => Refusal::NotAComponent,
            SwapError::Module(ModuleError::WrongWorld(_) | ModuleError::WrongShape(_)) => {
                Refusal::WrongWorld
            }
            SwapError::Module(ModuleError::IncompatibleVersion { .. }) => {
                Refusal::IncompatibleVersion
            }
            // The machine, not the configuration: tried again, never quarantined.
            SwapError::Module(ModuleError::Start { .. })
            | SwapError::OverLimit(OverLimit::ConfigureClock { .. }) => Refusal::StartFailed,
            SwapError::Config(_) | SwapError::OverLimit(_) => Refusal::ConfigRefused,
            SwapError::Canary(_) => Refusal::CanaryFailed,
            // The module's own state refused, judged otherwise or handed over wrong by it: what
            // the module is. The host's failures (no room, the clock) are tried again.
            SwapError::Adoption(
                AdoptionError::Export(f) | AdoptionError::Start(f) | AdoptionError::Canary(f),
            ) if !f.is_module_fault() => Refusal::StartFailed,
            SwapError::Adoption(_) => Refusal::CanaryFailed,
            SwapError::Signature(_) | SwapError::Unsigned { .. } => Refusal::Signature,
            SwapError::NothingToRollBack => Refusal::NothingToRollBack,
            SwapError::NotRecorded(_) => Refusal::NotRecorded,
            SwapError::Capacity { .. } => Refusal::Capacity,
        }
    }

    /// The setting that would have let the change in, when a limit refused it.
    pub fn setting(&self) -> Option<Setting> {
        match self {
            SwapError::OverLimit(e) => Some(e.setting()),
            SwapError::Adoption(
                AdoptionError::Export(f) | AdoptionError::Start(f) | AdoptionError::Canary(f),
            ) => match f {
                PolicyFault::Start(e) => e.downcast_ref::<StartError>()?.setting(),
                _ => None,
            },
            _ => None,
        }
    }
}

flowgate_policy::labels! {
    /// What a release was made by.
    pub enum Cause {
        /// The gateway started with it.
        Start => "start",
        /// A new module.
        Module => "module",
        /// A new configuration.
        Config => "config",
        /// A new module with a new configuration.
        ModuleAndConfig => "module+config",
        /// A swap that changed neither (the same module and configuration published again).
        Reload => "reload",
        /// An operator's rollback.
        Rollback => "rollback",
        /// The gateway's own rollback after repeated faults.
        AutoRevert => "auto-revert",
        /// A shadow release promoted, exactly as it was staged and measured.
        ShadowPromote => "shadow-promote",
    }
}

flowgate_policy::labels! {
    /// Who made a release. The operator's changes pin the gateway: a tag watch pauses until the
    /// operator resumes it (see `authority.rs`).
    pub enum Origin {
        /// The gateway started with it.
        Start => "start",
        /// An operator uploaded a module, a configuration or both (`PUT /module`, `PUT /config`,
        /// [`crate::gateway::Gateway::swap`]).
        OperatorUpload => "operator-upload",
        /// An operator named a module in a registry (`PUT /module` with a reference); the
        /// gateway pulled it.
        OperatorReference => "operator-reference",
        /// An operator's rollback.
        Rollback => "rollback",
        /// SIGHUP: the module and configuration files read again.
        Sighup => "sighup",
        /// The tag watch, when the tag moved to a digest it had not acted on.
        TagWatch => "tag-watch",
        /// The gateway's own rollback after repeated faults of the module.
        AutoRevert => "auto-revert",
    }
}

impl Origin {
    /// Who, in words: "an operator's upload", "the tag watch".
    pub fn who(self) -> &'static str {
        match self {
            Origin::Start => "the gateway's start",
            Origin::OperatorUpload => "an operator's upload",
            Origin::OperatorReference => "an operator's reference",
            Origin::Rollback => "an operator's rollback",
            Origin::Sighup => "SIGHUP (the files read again)",
            Origin::TagWatch => "the tag watch",
            Origin::AutoRevert => "auto-revert",
        }
    }

    /// Whether a person asked for it: such a release pins the gateway.
    pub fn is_operator(self) -> bool {
        matches!(
            self,
            Origin::OperatorUpload | Origin::OperatorReference | Origin::Rollback | Origin::Sighup
        )
    }
}

flowgate_policy::labels! {
    /// Why a swap or rollback was refused.
    pub enum Refusal {
        /// `If-Match` named another release (by its ETag) than the one serving. Its label,
        /// `stale-digest`, is published (`flowgate_swap_refusals_total{reason}`) and kept.
        StaleRelease => "stale-digest",
        /// Not a Wasm component.
        NotAComponent => "not-a-component",
        /// A component that is no flowgate policy module.
        WrongWorld => "wrong-world",
        /// A flowgate module built for a WIT version this host cannot call.
        IncompatibleVersion => "incompatible-version",
        /// The module failed when started, or its configure call was stopped on the clock within
        /// its CPU time (the machine too busy): not what the module is, so a tag watch tries
        /// it again.
        StartFailed => "start-failed",
        /// The module refused the configuration (or it defines no VPC, or is too large).
        ConfigRefused => "config-refused",
        /// The canary batch failed, or a worker's instance could not start from the configured
        /// instance's state or judged it otherwise.
        CanaryFailed => "canary-failed",
        /// The module is not signed by a trusted key for where it came from (with
        /// `--trusted-key`).
        Signature => "signature-refused",
        /// No earlier good release.
        NothingToRollBack => "nothing-to-roll-back",
        /// The change's audit record could not be written.
        NotRecorded => "audit-failed",
        /// The runtime cannot hold the gateway's instances.
        Capacity => "capacity",
    }
}

impl From<StartError> for SwapError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Module(e) => SwapError::Module(e),
            StartError::Config(e) => SwapError::Config(e),
            StartError::OverLimit(e) => SwapError::OverLimit(e),
        }
    }
}

/// The canary batch: for up to 64 of the configuration's VPCs and two unknown VNIs, packets of
/// both families, with and without ports. It is built from the module's own catalog: parsing
/// the configuration on the host as well, to draw packets from its prefixes, cost as much as
/// configuring an instance (174 ms at 5,000 peerings) on cores the workers were using.
fn canary_packets(catalog: &Catalog) -> Vec<Packet> {
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
        .take(64)
        .chain([0, 16_777_215])
    {
        packets.push(Packet::tcp(vni, v4("10.0.0.1"), 40000, v4("10.0.0.2"), 443));
        packets.push(Packet::udp(vni, v6("fd00::1"), 53, v6("fd00::2"), 53));
        packets.push(Packet::portless(vni, v4("192.168.0.1"), v4("8.8.8.8"), 1));
    }
    packets
}

/// Builds a release off the packet path. One instance configures (parses, validates and
/// builds) and judges the canary batch; every worker's instance then adopts the state it built
/// (prepared in parallel, vouched for), beside one more that adopts it with the checks and
/// must judge the canary batch as it did ([`adopt_checked`]). A
/// module that hands no state over has every worker's instance configure instead. `canary` is
/// reused when the configuration is the running one's.
pub(super) fn prepare(
    runtime: &Runtime,
    module: LoadedModule,
    config: &str,
    canary: Option<Arc<[Packet]>>,
    workers: usize,
    generation: u64,
    (cause, origin): (Cause, Origin),
) -> Result<Release, SwapError> {
    let (cpu_before, started) = (cpu_now()?, Instant::now());
    let mut first = WasmPolicy::new(runtime, &module, config)?;
    if first.catalog().vpcs.is_empty() {
        return Err(SwapError::Config(ConfigError::whole(
            "the configuration defines no VPC (an empty or cut-off file?): every packet would be dropped as unknown-vpc",
        )));
    }
    let canary = canary.unwrap_or_else(|| canary_packets(first.catalog()).into());
    let mut expected = vec![Verdict::default(); canary.len()];
    first
        .judge(&canary, &mut expected)
        .map_err(SwapError::Canary)?;
    let configure = started.elapsed();
    let plan = first
        .blueprint()
        .map_err(|f| SwapError::Adoption(AdoptionError::Export(f)))?;
    let info = first.info().clone();
    let catalog = first.catalog().clone();
    let (peerings, _) = first.config_summary();
    // The configured instance serves a worker only when the others configure too; otherwise
    // its parse heap goes now, and the state holds what the workers need.
    let mut spares = Vec::with_capacity(workers);
    let (more, more_cpu) = if plan.state_words().is_none() {
        spares.push(first);
        start_instances(runtime, &plan, workers - 1, Adoption::Checked)?
    } else {
        drop(first);
        adopt_checked(runtime, &plan, (&canary, &expected), &catalog, workers)?
    };
    spares.extend(more);
    let workers = u32::try_from(workers).unwrap_or(u32::MAX);
    let (configured, adopted) = match plan.state_words() {
        Some(_) => (1, workers),
        None => (workers, 0),
    };
    let prepared = Prepared {
        configured,
        adopted,
        state_bytes: plan.state_words().unwrap_or(0).saturating_mul(4),
        cpu: cpu_now()?.saturating_sub(cpu_before) + more_cpu,
        configure,
        wall: started.elapsed(),
    };
    Ok(Release {
        generation,
        cause,
        origin,
        why: String::new(),
        module,
        source: None,
        signer: None,
        info,
        config: plan.config().clone(),
        config_digest: hex(&Sha256::digest(config.as_bytes())),
        catalog,
        peerings,
        prepared,
        canary,
        canary_verdicts: expected.into(),
        plan,
        spares: Mutex::new(spares.into_iter().map(Some).collect()),
        shadow: None,
    })
}

/// Builds a release of `target`'s module and configuration again (a rollback to it): every
/// worker's instance adopts the state `target` kept, and none configures; the first must judge
/// the canary batch as `target`'s configured instance did. When `target` kept no state (its
/// module hands none over), as [`prepare`] does.
pub(super) fn prepare_again(
    runtime: &Runtime,
    target: &Release,
    workers: usize,
    generation: u64,
    (cause, origin): (Cause, Origin),
) -> Result<Release, SwapError> {
    let Some(words) = target.plan.state_words() else {
        let canary = Some(target.canary.clone());
        let labels = (cause, origin);
        return prepare(
            runtime,
            target.module.clone(),
            &target.config,
            canary,
            workers,
            generation,
            labels,
        );
    };
    let (cpu_before, started) = (cpu_now()?, Instant::now());
    let (spares, more_cpu) = adopt_checked(
        runtime,
        &target.plan,
        (&target.canary, &target.canary_verdicts),
        &target.catalog,
        workers,
    )?;
    Ok(Release {
        generation,
        cause,
        origin,
        why: String::new(),
        module: target.module.clone(),
        source: None,
        signer: None,
        info: target.info.clone(),
        config: target.config.clone(),
        config_digest: target.config_digest.clone(),
        catalog: target.catalog.clone(),
        peerings: target.peerings,
        prepared: Prepared {
            configured: 0,
            adopted: u32::try_from(workers).unwrap_or(u32::MAX),
            state_bytes: words.saturating_mul(4),
            cpu: cpu_now()?.saturating_sub(cpu_before) + more_cpu,
            configure: Duration::ZERO,
            wall: started.elapsed(),
        },
        canary: target.canary.clone(),
        canary_verdicts: target.canary_verdicts.clone(),
        plan: target.plan.clone(),
        spares: Mutex::new(spares.into_iter().map(Some).collect()),
        shadow: None,
    })
}

/// Refuses a release whose state, adopted by an instance of its own, is not handed over again
/// word for word (every word of the table, where the canary batch reaches a few), or fails the
/// canary batch, or judges it otherwise than the configured instance did (`expected`). The
/// checking instance is let go after: handing the state over grows its memory by the state's
/// size, which a worker's instance should not keep.
fn check_adopted(
    runtime: &Runtime,
    plan: &Blueprint,
    canary: &[Packet],
    expected: &[Verdict],
    catalog: &Catalog,
) -> Result<(), SwapError> {
    let adoption = |e| SwapError::Adoption(e);
    let mut adopted = WasmPolicy::start_from(runtime, plan, Adoption::Checked)
        .map_err(|f| adoption(AdoptionError::Start(f)))?;
    if !adopted
        .holds(plan)
        .map_err(|f| adoption(AdoptionError::Start(f)))?
    {
        return Err(adoption(AdoptionError::Mismatch));
    }
    let mut got = vec![Verdict::default(); canary.len()];
    adopted
        .judge(canary, &mut got)
        .map_err(|f| adoption(AdoptionError::Canary(f)))?;
    match (0..got.len()).find(|&i| got.get(i) != expected.get(i)) {
        Some(index) => Err(SwapError::Adoption(AdoptionError::Diverged {
            index,
            configured: expected
                .get(index)
                .map_or("nothing".into(), |v| catalog.verdict_text(*v)),
            adopted: catalog.verdict_text(got[index]),
        })),
        None => Ok(()),
    }
}

/// `workers` instances adopting `plan`'s state, with the CPU time their threads took, while
/// [`check_adopted`] checks the state on a thread of its own: nothing of the release serves
/// before both are done, and a failed check refuses it whatever the workers did.
fn adopt_checked(
    runtime: &Runtime,
    plan: &Blueprint,
    (canary, expected): (&[Packet], &[Verdict]),
    catalog: &Catalog,
    workers: usize,
) -> Result<(Vec<WasmPolicy>, Duration), SwapError> {
    let (checked, started) = std::thread::scope(|scope| {
        let check = scope.spawn(|| {
            let checked = check_adopted(runtime, plan, canary, expected, catalog);
            (checked, thread_cpu_time())
        });
        // Vouched for: none of them serves unless the check passes.
        let started = start_instances(runtime, plan, workers, Adoption::Vouched);
        (check.join(), started)
    });
    let (checked, check_cpu) = checked.map_err(|_| {
        ModuleError::start(StartStep::Prepare, "checking the adopted state panicked")
    })?;
    checked?;
    let check_cpu = check_cpu.map_err(|e| ModuleError::start(StartStep::Prepare, e))?;
    let (instances, cpu) = started?;
    Ok((instances, cpu + check_cpu))
}

/// The calling thread's CPU time, for [`Prepared::cpu`].
fn cpu_now() -> Result<Duration, SwapError> {
    thread_cpu_time().map_err(|e| SwapError::Module(ModuleError::start(StartStep::Prepare, e)))
}

/// `count` instances started from `plan` (adopting its state `how`, when it has one), by as
/// many threads as there are cores (at most one a instance), with the CPU time those threads
/// took.
fn start_instances(
    runtime: &Runtime,
    plan: &Blueprint,
    count: usize,
    how: Adoption,
) -> Result<(Vec<WasmPolicy>, Duration), SwapError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(count);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share = (count - t).div_ceil(threads);
                scope.spawn(move || {
                    let started = (0..share)
                        .map(|_| WasmPolicy::start_from(runtime, plan, how))
                        .collect::<Result<Vec<_>, _>>();
                    (started, thread_cpu_time())
                })
            })
            .collect();
        let (mut all, mut cpu) = (Vec::with_capacity(count), Duration::ZERO);
        for handle in handles {
            let (started, spent) = handle.join().map_err(|_| {
                ModuleError::start(StartStep::Prepare, "preparing an instance panicked")
            })?;
            cpu += spent.map_err(|e| ModuleError::start(StartStep::Prepare, e))?;
            all.extend(started.map_err(|f| match plan.state_words() {
                Some(_) => SwapError::Adoption(AdoptionError::Start(f)),
                None => start_fault(f),
            })?);
        }
        Ok((all, cpu))
    })
}

/// A worker's instance that failed to configure, as a refusal: what [`WasmPolicy::new`]
/// would have said.
fn start_fault(fault: PolicyFault) -> SwapError {
    match fault {
        PolicyFault::Start(e) | PolicyFault::Host(e) => match e.downcast::<StartError>() {
            Ok(e) => SwapError::from(*e),
            Err(e) => SwapError::Module(ModuleError::start(StartStep::Prepare, e)),
        },
        other => SwapError::Module(ModuleError::start(StartStep::Prepare, other)),
    }
}

/// Refuses a configuration over `limit` bytes before any work is done on it.
pub(super) fn check_config_size(config: &str, limit: usize) -> Result<(), SwapError> {
    if config.len() > limit {
        return Err(SwapError::OverLimit(OverLimit::ConfigBytes {
            size: config.len(),
            limit,
        }));
    }
    Ok(())
}

/// Refuses a change made against another release than the one serving: `if_match` is an
/// `If-Match` value, `*` for any release or a list of ETags (RFC 9110: quoted, separated by
/// commas; quotes may be left out), one of which must be the running release's. Weak tags
/// (`W/"..."`) never match: `If-Match` compares strongly.
pub(super) fn check_if_match(running: &Release, if_match: Option<&str>) -> Result<(), SwapError> {
    let Some(expected) = if_match.map(str::trim) else {
        return Ok(());
    };
    let etag = running.etag();
    let matches = expected == "*"
        || expected
            .split(',')
            .map(str::trim)
            .filter(|tag| !tag.starts_with("W/"))
            .any(|tag| tag.trim_matches('"') == etag);
    if matches {
        return Ok(());
    }
    Err(SwapError::Stale {
        expected: expected.to_owned(),
        running: etag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OverLimit;

    /// A configuration refused for what it asks (its size, the module's memory or CPU time)
    /// is refused as such, and a tag watch quarantines it; one stopped because the machine
    /// gave its configure call too little of a core is a start failure, tried again.
    #[test]
    fn a_configure_stopped_by_the_clock_is_not_refused_for_its_configuration() {
        let (deadline, backstop) = (Duration::from_secs(1), Duration::from_secs(11));
        let clock = SwapError::OverLimit(OverLimit::ConfigureClock { deadline, backstop });
        assert_eq!(clock.reason(), Refusal::StartFailed);
        let cpu = SwapError::OverLimit(OverLimit::ConfigureTime { deadline });
        assert_eq!(cpu.reason(), Refusal::ConfigRefused);
        let bytes = SwapError::OverLimit(OverLimit::ConfigBytes { size: 2, limit: 1 });
        assert_eq!(bytes.reason(), Refusal::ConfigRefused);
    }
}
