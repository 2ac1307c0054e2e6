//! The dataplane's batch step, in phases: one policy call for the batch; on a fault, the
//! policy is restarted and the batch judged again by a fallback policy or dropped as
//! `policy-fault`; then every verdict is counted (the apply phase). `run`, `check`, `replay`,
//! `serve` and the benchmarks all go through [`step`], so counting and fault handling are
//! written once.

mod counters;
mod histogram;

use flowgate_policy::packed::Columns;
use flowgate_policy::{Catalog, Packet, Verdict};

pub use counters::{Counters, DataplaneDrop, apply};
pub use histogram::Histogram;

use crate::policy::Verdicts;
use crate::{Policy, PolicyFault};

/// Packets per policy call unless told otherwise.
pub const DEFAULT_BATCH: usize = 256;

/// Which policy's verdicts a batch got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// The policy's.
    Policy,
    /// The fallback's, after the policy failed.
    Fallback,
    /// None: the batch is dropped as `policy-fault`.
    Dropped,
}

/// What became of one batch.
#[derive(Debug)]
pub struct Step {
    /// Whose verdicts are in `out`, if anyone's.
    pub judged: Judged,
    /// The policy's fault, when it failed.
    pub fault: Option<PolicyFault>,
    /// The policy could not be restarted after its fault: the caller must not call it again.
    /// The fault the restart ended with.
    pub restart_failed: Option<PolicyFault>,
}

/// Judges one batch: phases one and two of the step.
///
/// `policy` judges `packets` into `out` (`None`: there is no policy, a fault). On a fault the
/// policy is restarted and `fallback`, if any, judges the batch instead. [`Step::count`] is
/// phase three.
pub fn step(
    policy: Option<&mut dyn Policy>,
    fallback: Option<&mut dyn Policy>,
    packets: &[Packet],
    out: &mut [Verdict],
) -> Step {
    let out = &mut out[..packets.len()];
    step_with(policy, fallback, |p| p.judge(packets, out))
}

/// [`step`] for a burst a dataplane's decoder laid out in columns: the verdicts are then
/// those of the policy [`Step::judged`] names, read where they lie
/// ([`Policy::last_verdicts`]); [`Step::count_verdicts`] is phase three.
pub fn step_columns(
    policy: Option<&mut dyn Policy>,
    fallback: Option<&mut dyn Policy>,
    burst: &Columns,
) -> Step {
    step_with(policy, fallback, |p| p.judge_columns(burst).map(|_| ()))
}

/// The step of either layout: `judge` asks a policy for the batch's verdicts.
fn step_with(
    policy: Option<&mut dyn Policy>,
    fallback: Option<&mut dyn Policy>,
    mut judge: impl FnMut(&mut dyn Policy) -> Result<(), PolicyFault>,
) -> Step {
    let (fault, restart_failed) = match policy {
        Some(policy) => match judge(&mut *policy) {
            Ok(()) => {
                return Step {
                    judged: Judged::Policy,
                    fault: None,
                    restart_failed: None,
                };
            }
            Err(fault) => (fault, policy.restart().err()),
        },
        None => (PolicyFault::NoInstance, None),
    };
    let judged = match fallback.map(judge) {
        Some(Ok(())) => Judged::Fallback,
        _ => Judged::Dropped,
    };
    Step {
        judged,
        fault: Some(fault),
        restart_failed,
    }
}

impl Step {
    /// The verdicts of the batch, unless it was dropped.
    pub fn verdicts<'a>(&self, out: &'a [Verdict], packets: usize) -> Option<&'a [Verdict]> {
        (self.judged != Judged::Dropped).then(|| &out[..packets])
    }

    /// Phase three: counts the batch into `counters`: its verdicts, named by `catalog` (that
    /// of the policy [`Step::judged`] names), or every packet as `policy-fault`. The one place
    /// that counts batches, faults and `policy-fault` drops.
    pub fn count(
        &self,
        packets: &[Packet],
        out: &[Verdict],
        catalog: &Catalog,
        counters: &mut Counters,
    ) {
        let verdicts = self.verdicts(out, packets.len());
        count(
            packets.len(),
            verdicts.map(|v| v.iter().copied()),
            catalog,
            counters,
        );
    }

    /// [`Step::count`] for a burst of `packets` judged in columns: `verdicts` are those of the
    /// policy [`Step::judged`] names (`None` when the burst was dropped).
    pub fn count_verdicts(
        &self,
        packets: usize,
        verdicts: Option<Verdicts<'_>>,
        catalog: &Catalog,
        counters: &mut Counters,
    ) {
        let verdicts = verdicts.filter(|_| self.judged != Judged::Dropped);
        count(packets, verdicts.map(|v| v.iter()), catalog, counters);
    }
}

/// Phase three of either layout: a judged batch's verdicts, or every packet of a dropped one
/// as `policy-fault`.
fn count(
    packets: usize,
    verdicts: Option<impl Iterator<Item = Verdict>>,
    catalog: &Catalog,
    counters: &mut Counters,
) {
    counters.batches += 1;
    match verdicts {
        Some(verdicts) => apply(verdicts, catalog, counters),
        None => {
            counters.faults += 1;
            counters.count_drop(DataplaneDrop::PolicyFault.as_str(), packets as u64);
        }
    }
}

/// A policy that failed on a batch and could not be restarted after it: nothing more can be
/// judged with it.
#[derive(Debug, thiserror::Error)]
#[error("the policy failed ({fault}) and could not be restarted: {restart}")]
pub struct RestartFailed {
    /// The fault on the batch.
    pub fault: PolicyFault,
    /// The fault the restart ended with.
    pub restart: PolicyFault,
}

impl Step {
    /// The policy's fault with its restart's, when it failed and could not be restarted.
    pub fn restart_error(self) -> Result<(), RestartFailed> {
        match (self.fault, self.restart_failed) {
            (Some(fault), Some(restart)) => Err(RestartFailed { fault, restart }),
            _ => Ok(()),
        }
    }
}

/// Judges `packets` in batches of `batch` through [`step`], calling `sink` with each packet
/// and its verdict (`None`: the policy failed on its batch, dropped as `policy-fault`).
/// Returns an error only when the policy cannot be restarted.
pub fn judge_all(
    policy: &mut dyn Policy,
    packets: &[Packet],
    batch: usize,
    counters: &mut Counters,
    mut sink: impl FnMut(&Packet, Option<Verdict>),
) -> Result<(), RestartFailed> {
    let mut verdicts = vec![Verdict::default(); batch.max(1)];
    for chunk in packets.chunks(batch.max(1)) {
        let done = step(Some(&mut *policy), None, chunk, &mut verdicts);
        done.count(chunk, &verdicts, policy.catalog(), counters);
        let judged = done.judged != Judged::Dropped;
        for (packet, &verdict) in chunk.iter().zip(verdicts.iter()) {
            sink(packet, judged.then_some(verdict));
        }
        done.restart_error()?;
    }
    Ok(())
}
