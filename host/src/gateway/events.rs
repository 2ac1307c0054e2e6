//! The gateway's event registry: what it counts of its own life (publications, refusals,
//! rollbacks, faults, registry pulls, admin requests refused before they reached it), read
//! by `/status` and `/metrics`, and the record of every judged batch when
//! [`Options::record_batches`](super::Options::record_batches) is on.
//!
//! Each count is kept under the name its label set gives it (a [`Cause`], a [`Refusal`], a
//! [`Pull`]...): those names are the published metric labels.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::shadow::End as ShadowEnd;
use super::{Cause, Gateway, Refusal, lock};
use crate::oci::SignatureCheck;

/// Counters of the gateway's own events.
#[derive(Debug, Default)]
pub struct Events {
    /// Publications by cause.
    pub swaps: BTreeMap<&'static str, u64>,
    /// Refused swaps by reason.
    pub refusals: BTreeMap<&'static str, u64>,
    /// Rollbacks by cause ([`RollbackCause`]: `operator` or `auto`).
    pub rollbacks: BTreeMap<&'static str, u64>,
    /// Faults by reason.
    pub faults: BTreeMap<&'static str, u64>,
    /// Auto-reverts that failed (each is retried).
    pub revert_failures: u64,
    /// Admin requests refused before they reached the gateway, by reason ([`AdminRefusal`]).
    pub admin_refusals: BTreeMap<&'static str, u64>,
    /// Registry pulls by result ([`Pull`]).
    pub pulls: BTreeMap<&'static str, u64>,
    /// Faults that did not count toward an auto-revert (not the module's own), by reason.
    pub host_faults: BTreeMap<&'static str, u64>,
    /// Module signature checks by result ([`SignatureCheck`]).
    pub signatures: BTreeMap<&'static str, u64>,
    /// Shadows ended, by how ([`ShadowEnd`]).
    pub shadow_ends: BTreeMap<&'static str, u64>,
    /// Faults of shadow modules, by reason (none counts toward an auto-revert).
    pub shadow_faults: BTreeMap<&'static str, u64>,
}

flowgate_policy::labels! {
    /// What became of a registry pull (`flowgate_pulls_total{result}`).
    pub enum Pull {
        /// The pulled module was published.
        Swapped => "swapped",
        /// The tag names the digest the watch last acted on: nothing was pulled.
        Unchanged => "unchanged",
        /// The registry failed.
        Failed => "failed",
        /// The gateway refused the module or its configuration.
        Refused => "refused",
        /// The tag names a digest that failed before: not pulled.
        Quarantined => "quarantined",
    }
}

flowgate_policy::labels! {
    /// Why the admin API refused a request before it reached the gateway
    /// (`flowgate_admin_refusals_total{reason}`).
    pub enum AdminRefusal {
        /// A connection on the socket from another user than the gateway's (root aside).
        ForeignUser => "foreign-user",
        /// An anonymous connection let go to make room for a new one.
        Evicted => "evicted",
        /// The request's head did not arrive within the head deadline.
        HeadTimeout => "head-timeout",
        /// The request's head was over the size limit.
        HeadTooLarge => "head-too-large",
        /// A request that is not HTTP/1.1 as the admin API reads it, or a malformed body.
        BadRequest => "bad-request",
        /// No bearer token, or not the gateway's.
        Unauthorized => "unauthorized",
        /// As many requests under way as the admin API takes at once.
        TooManyConnections => "too-many-connections",
        /// A body over the size limit.
        BodyTooLarge => "body-too-large",
        /// A body that ended before its length or its last chunk.
        TruncatedBody => "truncated-body",
        /// A body sent too slowly, or an answer not read in time.
        Timeout => "timeout",
    }
}

flowgate_policy::labels! {
    /// Who rolled a release back (`flowgate_rollbacks_total{cause}`).
    pub enum RollbackCause {
        /// An operator asked for it.
        Operator => "operator",
        /// The gateway, after repeated faults of the module.
        Auto => "auto",
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

/// Where the gateway's events are counted, and its batches recorded.
#[derive(Debug, Default)]
pub(super) struct Recorder {
    counts: Mutex<Events>,
    batches: Mutex<Vec<BatchRecord>>,
}

impl Recorder {
    /// The counts so far, held until the guard is dropped.
    pub(super) fn counts(&self) -> MutexGuard<'_, Events> {
        lock(&self.counts)
    }

    pub(super) fn shadow_end(&self, how: ShadowEnd) {
        *self.counts().shadow_ends.entry(how.as_str()).or_default() += 1;
    }

    pub(super) fn shadow_fault(&self, reason: &'static str) {
        *self.counts().shadow_faults.entry(reason).or_default() += 1;
    }

    pub(super) fn swap(&self, cause: Cause) {
        *self.counts().swaps.entry(cause.as_str()).or_default() += 1;
    }

    pub(super) fn refusal(&self, reason: Refusal) {
        *self.counts().refusals.entry(reason.as_str()).or_default() += 1;
    }

    pub(super) fn rollback(&self, cause: RollbackCause) {
        *self.counts().rollbacks.entry(cause.as_str()).or_default() += 1;
    }

    /// A fault with its reason; `own`: the module's own (the others are counted apart too).
    pub(super) fn fault(&self, reason: &'static str, own: bool) {
        let mut counts = self.counts();
        *counts.faults.entry(reason).or_default() += 1;
        if !own {
            *counts.host_faults.entry(reason).or_default() += 1;
        }
    }

    pub(super) fn revert_failure(&self) {
        self.counts().revert_failures += 1;
    }

    pub(super) fn pull(&self, result: Pull) {
        *self.counts().pulls.entry(result.as_str()).or_default() += 1;
    }

    pub(super) fn signature(&self, result: SignatureCheck) {
        *self.counts().signatures.entry(result.as_str()).or_default() += 1;
    }

    pub(super) fn admin_refusal(&self, reason: AdminRefusal) {
        *self
            .counts()
            .admin_refusals
            .entry(reason.as_str())
            .or_default() += 1;
    }

    pub(super) fn batch(&self, record: BatchRecord) {
        lock(&self.batches).push(record);
    }

    pub(super) fn batches(&self) -> Vec<BatchRecord> {
        lock(&self.batches).clone()
    }
}

impl Gateway {
    /// The gateway's own event counters.
    pub fn events(&self) -> MutexGuard<'_, Events> {
        self.events.counts()
    }

    /// The batch records so far (empty unless `record_batches`).
    pub fn records(&self) -> Vec<BatchRecord> {
        self.events.batches()
    }

    /// Counts a registry pull by its result.
    pub fn note_pull(&self, result: Pull) {
        self.events.pull(result);
    }

    /// Counts a request the admin API refused before it reached the gateway.
    pub fn note_admin_refusal(&self, reason: AdminRefusal) {
        self.events.admin_refusal(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counts are kept under the published metric labels, whatever the variants are
    /// called in the code.
    #[test]
    fn counts_are_kept_under_their_published_labels() {
        let recorder = Recorder::default();
        recorder.refusal(Refusal::StaleRelease);
        recorder.pull(Pull::Quarantined);
        recorder.pull(Pull::Quarantined);
        recorder.rollback(RollbackCause::Auto);
        recorder.swap(Cause::ModuleAndConfig);
        let counts = recorder.counts();
        assert_eq!(counts.refusals.get("stale-digest"), Some(&1));
        assert_eq!(counts.pulls.get("quarantined"), Some(&2));
        assert_eq!(counts.rollbacks.get("auto"), Some(&1));
        assert_eq!(counts.swaps.get("module+config"), Some(&1));
    }
}
