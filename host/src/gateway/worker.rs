//! A gateway's worker: the pipeline stage a dataplane holds per core. Each burst is judged by
//! exactly one release, the one published when the burst starts (the reader side of the
//! publication: one atomic load per burst); faults are counted toward an auto-revert.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowgate_policy::packed::Columns;
use flowgate_policy::{Catalog, Packet, Verdict};

use super::shadow::{Shadow, shadow_deadline};
use super::{BatchRecord, Cause, Gateway, OnFault, Release, lock};
use crate::dataplane::{self, Counters, Judged, Step};
use crate::policy::Verdicts;
use crate::wasm::{Adoption, WasmPolicy};
use crate::{Policy, PolicyFault};

/// The least time between two attempts of a worker to start an instance after one failed.
const RESTART_INTERVAL: Duration = Duration::from_millis(100);

/// One worker of a gateway, with its own module instance: judges bursts, in place.
pub struct Worker {
    gateway: Arc<Gateway>,
    id: usize,
    release: Arc<Release>,
    policy: Option<WasmPolicy>,
    /// The release before, with this worker's instance of it only under
    /// `--on-fault previous` (otherwise the instance is let go at once).
    previous: Option<(Arc<Release>, Option<WasmPolicy>)>,
    last_start: Instant,
    /// Who judged the last burst.
    last_judged: Judged,
    /// The shadow this worker judges copies with, and its instance of it.
    seat: Option<Seat>,
    /// Batches owed to the shadow: grows by the shadow share a batch, and a batch is judged
    /// with the shadow each time it reaches one.
    shadow_credit: f64,
}

/// A worker's place in a shadow: the shadow, its instance, and room for its verdicts.
struct Seat {
    shadow: Arc<Shadow>,
    policy: WasmPolicy,
    verdicts: Vec<Verdict>,
}

/// What became of a burst of `Packet`s.
pub struct Burst<'a> {
    /// The verdicts, one per packet; `None`: the module failed on the burst, and every packet
    /// of it is dropped (counted as `policy-fault`).
    pub verdicts: Option<&'a [Verdict]>,
    /// The names behind the verdicts (VPC indices, candidate sets).
    pub catalog: &'a Catalog,
    /// The generation of the release that judged the burst.
    pub generation: u64,
}

/// What became of a burst laid out in columns.
pub struct ColumnBurst<'a> {
    /// The verdicts, one per packet, where the module's answer lies; `None`: the module
    /// failed on the burst, and every packet of it is dropped (counted as `policy-fault`).
    pub verdicts: Option<Verdicts<'a>>,
    /// The names behind the verdicts (VPC indices, candidate sets).
    pub catalog: &'a Catalog,
    /// The generation of the release that judged the burst.
    pub generation: u64,
}

impl Gateway {
    /// Worker `id`'s stage (`id` below [`super::Options::workers`]): takes the instance
    /// prepared for it by the release being served.
    pub fn worker(self: &Arc<Self>, id: usize) -> Worker {
        let release = self.current();
        let policy = self.take_instance(&release, id);
        Worker {
            gateway: self.clone(),
            id,
            release,
            policy,
            previous: None,
            last_start: Instant::now(),
            last_judged: Judged::Dropped,
            seat: None,
            shadow_credit: 0.0,
        }
    }

    /// Runs worker `id` on `port` until `stop` is set or the port runs dry: each batch is
    /// judged by exactly one release, picked up at the batch boundary.
    pub fn run_worker(
        self: &Arc<Self>,
        id: usize,
        port: &mut dyn crate::io::Port,
        stop: &AtomicBool,
    ) {
        lower_priority(self.options.worker_nice);
        let mut worker = self.worker(id);
        let mut batch: Vec<Packet> = Vec::with_capacity(self.options.batch);
        let mut verdicts = vec![Verdict::default(); self.options.batch];
        while !stop.load(Ordering::Relaxed) {
            batch.clear();
            if port.fill(&mut batch, self.options.batch) == 0 {
                if port.dry() {
                    break;
                }
                // Nothing judged, but what the port could not read is counted.
                let catalog = &worker.release.catalog;
                port.deliver(Some(&[]), catalog, &mut lock(&self.counters[id]));
                continue;
            }
            let burst = worker.judge(&batch, &mut verdicts);
            port.deliver(burst.verdicts, burst.catalog, &mut lock(&self.counters[id]));
            // The live verdicts are applied: the copy cannot delay them.
            worker.judge_shadow(&batch, &verdicts);
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

    /// The highest generation that has judged a batch so far.
    pub fn judged_generation(&self) -> u64 {
        self.judged.load(Ordering::Acquire)
    }

    /// This worker's prepared instance of `release`, or a new one if it has none. A failure
    /// is a fault like any other: logged, counted, and toward an auto-revert; the worker
    /// drops its batches as `policy-fault` and tries again.
    fn take_instance(self: &Arc<Self>, release: &Release, id: usize) -> Option<WasmPolicy> {
        if let Some(spare) = lock(&release.spares).get_mut(id).and_then(Option::take) {
            return Some(spare);
        }
        // A published release's state was adopted with its checks when it was prepared.
        match WasmPolicy::start_from(&self.runtime, &release.plan, Adoption::Vouched) {
            Ok(policy) => Some(policy),
            Err(fault) => {
                self.note_fault(&fault, release.generation);
                None
            }
        }
    }
}

/// Raises the calling thread's nice value by `by` (to 19 at most), below the priority of the
/// gateway's other threads (a thread may always lower its own priority); a failure is logged,
/// and the worker runs on at the priority it had.
fn lower_priority(by: u8) {
    if by == 0 {
        return;
    }
    let thread = Some(rustix::thread::gettid());
    let lowered = rustix::process::getpriority_process(thread).and_then(|now| {
        rustix::process::setpriority_process(thread, now.saturating_add(i32::from(by)).min(19))
    });
    if let Err(e) = lowered {
        tracing::warn!(
            event = "worker-nice",
            "could not lower a worker thread's priority by {by} nice levels: {e}; it runs at the priority it had"
        );
    }
}

impl Worker {
    /// Judges a burst into `out` (at least as long) with the release published now, and
    /// counts it in the gateway's counters: the one batch step ([`dataplane::step`]) with the
    /// gateway's fault handling (restart, `--on-fault previous`, auto-revert).
    pub fn judge<'a>(&'a mut self, packets: &[Packet], out: &'a mut [Verdict]) -> Burst<'a> {
        self.pick_up();
        let started = Instant::now();
        let (policy, fallback) = self.policies();
        let done = dataplane::step(policy, fallback, packets, out);
        self.settle(&done, packets.len(), started.elapsed());
        self.last_judged = done.judged;
        let catalog = self.catalog(done.judged);
        done.count(
            packets,
            out,
            catalog,
            &mut lock(&self.gateway.counters[self.id]),
        );
        Burst {
            verdicts: done.verdicts(out, packets.len()),
            catalog,
            generation: self.release.generation,
        }
    }

    /// [`Worker::judge`] for a burst the dataplane's decoder laid out in the guest's columns
    /// ([`Columns`]): no encode pass, and the verdicts read where the module's answer lies
    /// ([`Verdicts`]), valid until the worker's next burst.
    ///
    /// ```
    /// use flowgate_host::gateway::{Gateway, Options};
    /// use flowgate_host::wasm::{EngineOptions, Limits, Runtime};
    /// use flowgate_policy::packed::Columns;
    /// use flowgate_policy::{Ports, Verdict};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let runtime = Runtime::with_engine(Limits::default(), None, EngineOptions::for_workers(1))?;
    /// let options = Options { workers: 1, ..Options::default() };
    /// let config = flowgate_host::DEFAULT_CONFIG;
    /// let gateway = Gateway::new(runtime, flowgate_host::DEFAULT_MODULE, config, options)?;
    /// let mut stage = gateway.worker(0);
    /// let vni = gateway.current().catalog.vpcs[0].vni;
    ///
    /// // The decoder writes each packet of the burst straight into the columns.
    /// let mut burst = Columns::with_capacity(256);
    /// burst.begin(2)?;
    /// let (src, dst) = ([10, 0, 0, 5].into(), [10, 1, 0, 1].into());
    /// let https = Some(Ports { src: 40000, dst: 443 });
    /// burst.set_v4(0, vni, 6, https, src, dst)?;
    /// burst.set_v4(1, 0xff_ffff, 6, https, src, dst)?;
    /// let judged = stage.judge_columns(&burst);
    /// let verdicts = judged.verdicts.expect("the default module does not fail");
    /// assert_eq!(verdicts.len(), 2);
    /// assert_eq!(verdicts.verdict(1), Some(Verdict::default()), "drop(unknown-vpc)");
    /// assert_eq!(judged.generation, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn judge_columns<'a>(&'a mut self, burst: &Columns) -> ColumnBurst<'a> {
        self.pick_up();
        let started = Instant::now();
        let (policy, fallback) = self.policies();
        let done = dataplane::step_columns(policy, fallback, burst);
        self.settle(&done, burst.len(), started.elapsed());
        self.last_judged = done.judged;
        let catalog = self.catalog(done.judged);
        let verdicts = match done.judged {
            Judged::Policy => self.policy.as_ref().and_then(|p| p.last_verdicts()),
            Judged::Fallback => self
                .previous
                .as_ref()
                .and_then(|(_, old)| old.as_ref())
                .and_then(|p| p.last_verdicts()),
            Judged::Dropped => None,
        };
        done.count_verdicts(
            burst.len(),
            verdicts,
            catalog,
            &mut lock(&self.gateway.counters[self.id]),
        );
        ColumnBurst {
            verdicts,
            catalog,
            generation: self.release.generation,
        }
    }

    /// Takes up the release published now, at the burst's start, and tries again to start an
    /// instance when the last start failed long enough ago.
    fn pick_up(&mut self) {
        let gateway = &self.gateway;
        let now = gateway.current.load();
        if now.generation != self.release.generation {
            let next = now.clone();
            // A promoted shadow serves with the very instance that judged its copies.
            let next_policy = match self.seat.take() {
                Some(mut seat) if is_promotion_of(&next, &seat.shadow.release) => {
                    (seat.policy).set_batch_deadline(gateway.runtime.limits().batch_deadline);
                    Some(seat.policy)
                }
                seat => {
                    self.seat = seat;
                    gateway.take_instance(&next, self.id)
                }
            };
            self.last_start = Instant::now();
            let old_policy = std::mem::replace(&mut self.policy, next_policy);
            let keep = gateway.options.on_fault == OnFault::Previous;
            self.previous = Some((
                std::mem::replace(&mut self.release, next),
                old_policy.filter(|_| keep),
            ));
        }
        if self.policy.is_none() && self.last_start.elapsed() >= RESTART_INTERVAL {
            self.policy = gateway.take_instance(&self.release, self.id);
            self.last_start = Instant::now();
        }
    }

    /// Judges a copy of the burst just judged (`packets`, whose live verdicts are `live`)
    /// with the staged shadow, when there is one and this burst is of its share: only a
    /// burst the live release's own instance judged, and while the live release is the one
    /// the shadow is compared against. A fault of the shadow discards it.
    pub fn judge_shadow(&mut self, packets: &[Packet], live: &[Verdict]) {
        let gateway = &self.gateway;
        let staged = gateway.shadow.staged.load();
        let Some(shadow) = staged.as_ref() else {
            self.seat = None;
            return;
        };
        if self.last_judged != Judged::Policy
            || shadow.base_generation != self.release.generation
            || live.len() < packets.len()
        {
            return;
        }
        self.shadow_credit += gateway.options.shadow_share.clamp(0.0, 1.0);
        if self.shadow_credit < 1.0 {
            return;
        }
        self.shadow_credit -= 1.0;
        if !self
            .seat
            .as_ref()
            .is_some_and(|seat| Arc::ptr_eq(&seat.shadow, shadow))
        {
            self.seat = None;
            let spare = lock(&shadow.release.spares)
                .get_mut(self.id)
                .and_then(Option::take);
            let mut policy = match spare {
                Some(policy) => policy,
                None => match WasmPolicy::start_from(
                    &gateway.runtime,
                    &shadow.release.plan,
                    Adoption::Vouched,
                ) {
                    Ok(policy) => policy,
                    Err(fault) => {
                        gateway.shadow_fault(shadow, &fault);
                        return;
                    }
                },
            };
            policy.set_batch_deadline(shadow_deadline(gateway.runtime.limits().batch_deadline));
            self.seat = Some(Seat {
                shadow: shadow.clone(),
                policy,
                verdicts: Vec::new(),
            });
        }
        let Some(seat) = self.seat.as_mut() else {
            return;
        };
        seat.verdicts.resize(packets.len(), Verdict::default());
        let out = &mut seat.verdicts[..packets.len()];
        match seat.policy.judge(packets, out) {
            Ok(()) => seat.shadow.count(
                self.id,
                packets,
                (&self.release.catalog, &live[..packets.len()]),
                out,
            ),
            Err(fault) => {
                let shadow = seat.shadow.clone();
                self.seat = None;
                gateway.shadow_fault(&shadow, &fault);
            }
        }
    }

    /// The instance that judges a burst, and the previous release's, which judges a burst the
    /// current one failed on under `--on-fault previous`.
    fn policies(&mut self) -> (Option<&mut dyn Policy>, Option<&mut dyn Policy>) {
        let fallback = match (self.gateway.options.on_fault, self.previous.as_mut()) {
            (OnFault::Previous, Some((_, Some(old)))) => Some(old as &mut dyn Policy),
            _ => None,
        };
        (self.policy.as_mut().map(|p| p as &mut dyn Policy), fallback)
    }

    /// The catalog that names the verdicts of a burst `judged` judged.
    fn catalog(&self, judged: Judged) -> &Catalog {
        match (judged, &self.previous) {
            (Judged::Fallback, Some((old, _))) => &old.catalog,
            _ => &self.release.catalog,
        }
    }

    /// What follows a burst's step, whatever its layout: its latency observed, its faults
    /// noted toward an auto-revert, an instance that could not restart let go, the burst
    /// recorded.
    fn settle(&mut self, done: &Step, packets: usize, latency: Duration) {
        let gateway = &self.gateway;
        gateway.batch_latency.observe(latency);
        let generation = self.release.generation;
        if let Some(fault) = &done.fault
            && !matches!(fault, PolicyFault::NoInstance)
        {
            gateway.note_fault(fault, generation);
        }
        if let Some(fault) = &done.restart_failed {
            gateway.note_fault(fault, generation);
            self.policy = None;
            self.last_start = Instant::now();
        }
        if gateway.options.record_batches {
            gateway.events.batch(BatchRecord {
                worker: self.id,
                generation,
                packets,
                verdicts: packets,
                latency,
            });
        }
        gateway.judged.fetch_max(generation, Ordering::Release);
    }
}

/// Whether `next` is `shadow` promoted: the same generation, module and configuration, published
/// as a promotion.
fn is_promotion_of(next: &Release, shadow: &Release) -> bool {
    next.cause == Cause::ShadowPromote
        && next.generation == shadow.generation
        && next.config_digest == shadow.config_digest
        && next.module.digest() == shadow.module.digest()
}
