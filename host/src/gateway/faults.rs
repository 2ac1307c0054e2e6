//! The fault window and auto-revert. Every fault of a worker is counted and logged; the
//! module's own faults ([`PolicyFault::is_module_fault`]) of the release serving are kept in
//! a window, and after [`Options::fault_limit`](super::Options::fault_limit) of them within
//! [`Options::fault_window`](super::Options::fault_window) the gateway rolls back to the
//! previous good release on a thread of its own, naming the faults. A revert that fails is
//! logged, counted and tried again after a capped exponential backoff, as long as the faulty
//! release serves and its faults go on. A publication clears the window: a release answers
//! only for its own faults.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Gateway, Rollback, lock};
use crate::PolicyFault;

/// The first and the longest wait before an auto-revert that failed is tried again.
const REVERT_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// The serving release's recent faults, and the state of auto-revert.
#[derive(Debug)]
pub(super) struct FaultWindow {
    /// The serving release's own faults in the window, with their reasons.
    recent: Mutex<VecDeque<(Instant, &'static str)>>,
    /// An auto-revert is under way.
    reverting: AtomicBool,
    /// No auto-revert is tried before this instant, and the wait after the next failure:
    /// the backoff of failed auto-reverts.
    next_revert: Mutex<(Instant, Duration)>,
}

impl FaultWindow {
    pub(super) fn new() -> FaultWindow {
        FaultWindow {
            recent: Mutex::new(VecDeque::new()),
            reverting: AtomicBool::new(false),
            next_revert: Mutex::new((Instant::now(), REVERT_BACKOFF.0)),
        }
    }

    /// Forgets the faults in the window: another release serves.
    pub(super) fn clear(&self) {
        lock(&self.recent).clear();
    }
}

impl Gateway {
    /// Counts a fault of `generation`'s release, and starts an auto-revert when the module's
    /// own faults reach the limit within the window.
    pub(super) fn note_fault(self: &Arc<Self>, fault: &PolicyFault, generation: u64) {
        let own = fault.is_module_fault();
        self.events.fault(fault.reason(), own);
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
        let window = &self.faults;
        let now = Instant::now();
        if now < lock(&window.next_revert).0 {
            return;
        }
        let trip = {
            let mut recent = lock(&window.recent);
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
        if trip && !window.reverting.swap(true, Ordering::AcqRel) {
            let faults = faults_sentence(&lock(&window.recent));
            let gateway = self.clone();
            let why = format!(
                "{faults} in {:?} in generation {generation}",
                self.options.fault_window
            );
            let spawned = std::thread::Builder::new()
                .name("flowgate-revert".into())
                .spawn(move || gateway.auto_revert(generation, why));
            if spawned.is_err() {
                window.reverting.store(false, Ordering::Release);
            }
        }
    }

    /// Rolls back from `generation` (when it still serves) because of `why`, and sets the
    /// backoff by the outcome.
    fn auto_revert(&self, generation: u64, why: String) {
        let window = &self.faults;
        let failed = self
            .roll_back(Rollback::Auto {
                from: generation,
                why,
            })
            .err();
        let mut next = lock(&window.next_revert);
        match failed {
            Some(e) => {
                self.events.revert_failure();
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
                window.clear();
            }
        }
        drop(next);
        window.reverting.store(false, Ordering::Release);
    }
}

/// The recent faults behind an auto-revert, in a sentence: "5 faults of the module (3 trap,
/// 2 deadline)".
fn faults_sentence(faults: &VecDeque<(Instant, &'static str)>) -> String {
    let mut by_reason: Vec<(&str, usize)> = Vec::new();
    for (_, reason) in faults {
        match by_reason.iter_mut().find(|(r, _)| r == reason) {
            Some((_, n)) => *n += 1,
            None => by_reason.push((reason, 1)),
        }
    }
    let list: Vec<String> = by_reason.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!(
        "{} faults of the module ({})",
        faults.len(),
        list.join(", ")
    )
}
