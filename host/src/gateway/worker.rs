//! A gateway's worker: batches from its port, each judged by exactly one release, picked up
//! at the batch boundary; faults counted toward an auto-revert.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowgate_policy::{Packet, Verdict};

use super::{BatchRecord, Gateway, OnFault, Release, lock};
use crate::dataplane::{self, Judged};
use crate::wasm::WasmPolicy;
use crate::{Policy, PolicyFault};

/// The least time between two attempts of a worker to start an instance after one failed.
const RESTART_INTERVAL: Duration = Duration::from_millis(100);

impl Gateway {
    /// Runs worker `id` until `stop` is set or `source` runs dry: each batch is judged by
    /// exactly one release, picked up at the batch boundary.
    pub fn run_worker(
        self: &Arc<Self>,
        id: usize,
        source: &mut dyn crate::io::Port,
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
}
