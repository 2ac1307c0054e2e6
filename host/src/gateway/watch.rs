//! Watching a tag: the gateway polls the manifest digest a tag resolves to, and when it moves to
//! a digest the watch has not acted on, pulls the module by that digest, verifies it and swaps
//! it in as for an upload. The rule it follows (paused by the operator's changes, digests that
//! failed quarantined) is in `authority.rs`. A failed pull keeps the current release, is logged
//! and counted (`flowgate_pulls_total{result}`), and is tried again after a capped exponential
//! backoff. Every wait ends as soon as `stop` is set.
//!
//! With a rollout gate ([`ShadowGate`]) the watch stages the new module as a shadow release
//! instead, lets it judge live traffic for a while, logs its report, then promotes exactly
//! that shadow when it stayed within the budget, or discards it and quarantines the digest.
//! The operator still wins: a shadow the operator staged is never replaced (the watch waits
//! until it ends), and one the operator discarded or replaced in place of the watch's
//! quarantines its digest, so the watch does not stage it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::shadow::{Budget, End, Shadow, ShadowError};
use super::{
    Approval, Decision, Gateway, ModuleBytes, Origin, Pull, Refusal, SwapError, SwapRequest, lock,
};
use crate::oci::{Cache, Digest, PullError, Reference, Registry, Signer};

/// The longest wait between two tries after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How often a waiting watch looks at `stop`.
const STOP_CHECK: Duration = Duration::from_millis(20);

/// The tag watch's rollout gate: each new digest is staged as a shadow release first, judged
/// beside the live release for `judge_for`, and promoted only within `budget`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowGate {
    /// How long the shadow judges live traffic.
    pub judge_for: Duration,
    /// How much it may change.
    pub budget: Budget,
}

/// Polls `reference` (a tag) every `interval` until `stop`, swapping when the tag moves (through
/// `gate`, when given). The gateway follows the tag from the start ([`Gateway::watch_tag`],
/// unless the caller made it follow it before); while its watch is paused nothing is pulled.
pub fn watch(
    gateway: &Arc<Gateway>,
    registry: &Registry,
    cache: Option<&Cache>,
    reference: &Reference,
    interval: Duration,
    gate: Option<ShadowGate>,
    stop: &AtomicBool,
) {
    if gateway.watch_status().is_none()
        && let Err(e) = gateway.watch_tag(reference)
    {
        tracing::error!(event = "pull", reference = %reference, error = %e, "not watching {reference}: {e}");
        return;
    }
    let mut wait = interval;
    let mut next = Instant::now() + interval;
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(STOP_CHECK.min(interval));
        if Instant::now() < next {
            continue;
        }
        let failed = !poll(gateway, registry, cache, reference, gate, stop);
        wait = if failed {
            (wait * 2).min(MAX_BACKOFF.max(interval))
        } else {
            interval
        };
        next = Instant::now() + wait;
    }
}

/// One poll; false when it failed (the registry, or a refused module).
fn poll(
    gateway: &Gateway,
    registry: &Registry,
    cache: Option<&Cache>,
    r: &Reference,
    gate: Option<ShadowGate>,
    stop: &AtomicBool,
) -> bool {
    // A paused watch asks the registry nothing.
    if gateway
        .watch_status()
        .is_none_or(|status| status.paused.is_some())
    {
        return true;
    }
    // Nor does a gated one while a shadow is staged: it is not the watch's to replace.
    if gate.is_some()
        && let Some(staged) = gateway.shadow()
    {
        tracing::info!(event = "pull", result = "waiting", reference = %r, shadow = %staged.etag(), "watching {r}: the shadow {} is staged; the gated watch waits until it is promoted or discarded", staged.etag());
        return true;
    }
    let digest = match registry.manifest(r) {
        Ok((_, digest)) => digest,
        Err(e) => {
            gateway.note_pull(Pull::Failed);
            tracing::warn!(event = "pull", result = "failed", reference = %r, error = %e, "watching {r}: the registry failed; the running release keeps serving");
            return false;
        }
    };
    match gateway.watch_decision(&digest) {
        Decision::Take => swap_to(gateway, registry, cache, r, digest, gate, stop),
        Decision::Paused => true,
        Decision::Unchanged => {
            gateway.note_pull(Pull::Unchanged);
            true
        }
        Decision::Quarantined => {
            gateway.note_pull(Pull::Quarantined);
            true
        }
    }
}

fn swap_to(
    gateway: &Gateway,
    registry: &Registry,
    cache: Option<&Cache>,
    r: &Reference,
    digest: Digest,
    gate: Option<ShadowGate>,
    stop: &AtomicBool,
) -> bool {
    let pinned = r.pinned(digest);
    // With keys to trust, the digest's signatures are checked before its module is pulled.
    let pulled = match &gateway.options().trust {
        Some(trust) => trust
            .pull(registry, &pinned, cache)
            .map(|(pulled, signer, _)| (pulled, Some(signer))),
        None => registry
            .pull_or_cached(&pinned, cache)
            .map(|(pulled, _)| (pulled, None))
            .map_err(PullError::Registry),
    };
    let (pulled, signer) = match pulled {
        Ok(pulled) => pulled,
        Err(PullError::Signature(e)) if !e.is_registry() => {
            // What the digest is, not how the registry did: quarantined until the tag moves.
            gateway.note_pull(Pull::Refused);
            gateway.quarantine_refused(digest, Refusal::Signature.as_str());
            let change = match gate {
                Some(_) => "tag watch: shadow staged",
                None => "tag watch: swap",
            };
            gateway.refuse_own_signature("the tag watch's swap", change, e);
            return false;
        }
        Err(e) => {
            gateway.note_pull(Pull::Failed);
            tracing::warn!(event = "pull", result = "failed", reference = %pinned, error = %e, "watching {r}: the pull failed; the running release keeps serving");
            return false;
        }
    };
    if let Some(gate) = gate {
        let pulled = (&pulled.module[..], signer.as_ref());
        return through_gate(gateway, registry, pulled, r, digest, gate, stop);
    }
    match gateway.swap_by_watch(&pulled.module, r, digest, signer.as_ref(), stop) {
        Ok(Some(_)) => {
            gateway.note_pull(Pull::Swapped);
            true
        }
        // The operator changed the release or paused the watch while it pulled, or serving
        // stops: nothing was published.
        Ok(None) => true,
        Err(_) => {
            // The gateway logged and counted the refusal, and quarantined the digest.
            gateway.note_pull(Pull::Refused);
            false
        }
    }
}

/// The gated path of a swap: stage the module pulled (with its signer) as a shadow, let it
/// judge for the gate's time, then promote or refuse it. False when it failed or was refused.
fn through_gate(
    gateway: &Gateway,
    registry: &Registry,
    (module, signer): (&[u8], Option<&Signer>),
    r: &Reference,
    digest: Digest,
    gate: ShadowGate,
    stop: &AtomicBool,
) -> bool {
    let shadow = match gateway.stage_by_watch(module, r, digest, signer, stop) {
        Ok(Some(shadow)) => shadow,
        Ok(None) => return true,
        Err(_) => {
            // Logged, counted and (for what the module is) quarantined by the gateway.
            gateway.note_pull(Pull::Refused);
            return false;
        }
    };
    let until = Instant::now() + gate.judge_for;
    // The wait ends early when serving stops, the shadow ends, or the watch is paused.
    while Instant::now() < until
        && !stop.load(Ordering::Acquire)
        && gateway
            .shadow()
            .is_some_and(|staged| Arc::ptr_eq(&staged, &shadow))
        && gateway.watch_decision(&digest) == Decision::Take
    {
        std::thread::sleep(STOP_CHECK.min(until.saturating_duration_since(Instant::now())));
    }
    // What is promoted is what the tag names now: a tag moved meanwhile (a release pulled
    // back) is followed at the next poll instead.
    let still_staged = gateway
        .shadow()
        .is_some_and(|staged| Arc::ptr_eq(&staged, &shadow))
        && !stop.load(Ordering::Acquire)
        && gateway.watch_decision(&digest) == Decision::Take;
    let named = match still_staged.then(|| registry.manifest(r)) {
        Some(Ok((_, now))) => Some(now),
        Some(Err(e)) => {
            gateway.note_pull(Pull::Failed);
            tracing::warn!(event = "pull", result = "failed", reference = %r, error = %e, "watching {r}: the registry failed as the shadow's time ended; nothing is promoted");
            None
        }
        None => None,
    };
    match gateway.settle_watch_shadow(&shadow, digest, named, gate.budget, stop) {
        Settled::Promoted => {
            gateway.note_pull(Pull::Swapped);
            true
        }
        Settled::Refused => {
            gateway.note_pull(Pull::Refused);
            false
        }
        // Nothing to judge by, or the registry could not confirm the tag: tried again after
        // the backoff.
        Settled::Unjudged => false,
        Settled::Ended(End::TagMoved) => named.is_some(),
        Settled::Ended(End::Fault) => {
            gateway.note_pull(Pull::Refused);
            false
        }
        // Tried again after the backoff, not quarantined.
        Settled::Ended(End::Unrecorded) => false,
        Settled::Ended(_) | Settled::Left => true,
    }
}

/// How the watch's shadow ended, as the watch settled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Promoted by the watch: it serves.
    Promoted,
    /// Beyond the budget: discarded, its digest quarantined.
    Refused,
    /// It judged no packet: discarded, to be staged again.
    Unjudged,
    /// It ended before the watch settled it (an operator, a fault, another release).
    Ended(End),
    /// Serving stops: left as it is.
    Left,
}

impl Gateway {
    /// The gated watch's [`Gateway::swap_by_watch`]: stages the module pulled as `digest` as
    /// the shadow, unless the watch no longer takes that digest, serving stops, or a shadow is
    /// staged already (`None`). A refusal is quarantined as a swap's would be.
    fn stage_by_watch(
        &self,
        module: &[u8],
        tag: &Reference,
        digest: Digest,
        signer: Option<&Signer>,
        stop: &AtomicBool,
    ) -> Result<Option<Arc<Shadow>>, SwapError> {
        let _one_at_a_time = lock(&self.swap_lock);
        if stop.load(Ordering::Acquire)
            || self.watch_decision(&digest) != Decision::Take
            || self.shadow().is_some()
        {
            return Ok(None);
        }
        let record = self.own_approval("tag watch: shadow staged");
        let request = SwapRequest {
            approval: Some(Approval(&record)),
            ..SwapRequest::module(ModuleBytes::pulled(module, tag, digest).signed(signer))
        };
        let why = format!("the tag {tag} moved to {digest}");
        self.stage_locked(request, Origin::TagWatch, why)
            .map(Some)
            .inspect_err(|e| {
                let what = "tag watch: shadow staged";
                self.own_refused(what, e.reason().as_str(), &e.to_string());
                self.quarantine_refusal(digest, e);
            })
    }

    /// After the gate's time: promotes the watch's `shadow` of `digest` when it is still
    /// staged, the watch still takes `digest`, the tag still names it (`named`: what the tag
    /// names now, `None` when the registry could not say) and the report is within `budget`;
    /// otherwise discards it (a paused watch, a moved tag, a report beyond the budget or with
    /// no packet) or records how it ended meanwhile. Logs the report.
    fn settle_watch_shadow(
        &self,
        shadow: &Arc<Shadow>,
        digest: Digest,
        named: Option<Digest>,
        budget: Budget,
        stop: &AtomicBool,
    ) -> Settled {
        let _one_at_a_time = lock(&self.swap_lock);
        let etag = shadow.etag();
        if shadow.ended().is_some() || shadow.module_faulted() {
            return self.ended_meanwhile(shadow, digest);
        }
        if stop.load(Ordering::Acquire) {
            return Settled::Left;
        }
        let live = self.current();
        // Each end below may lose to a fault on a worker: then that is how it ended.
        let end = |how, settled| {
            if self.end_shadow(Some(shadow), how, &live) {
                settled
            } else {
                self.ended_meanwhile(shadow, digest)
            }
        };
        if self.watch_decision(&digest) != Decision::Take {
            return end(End::WatchPaused, Settled::Ended(End::WatchPaused));
        }
        if named != Some(digest) {
            return end(End::TagMoved, Settled::Ended(End::TagMoved));
        }
        let report = shadow.report();
        let totals = &report.totals;
        let pairs = (report.top_pairs.iter())
            .map(|(src, dst, n)| format!("{src}->{dst} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let admitted = budget.admits(totals);
        tracing::info!(
            event = "shadow-report",
            etag = %etag,
            digest = %digest,
            packets = totals.packets,
            batches = totals.batches,
            changed = totals.changed,
            dst_changed = totals.dst_changed,
            top_pairs = %pairs,
            budget = %budget,
            admitted,
            "the tag watch's shadow {etag} ({digest}): {} packets compared in {} batches, {} changed, {} to another destination VPC; top pairs: {}; budget: {budget}",
            totals.packets,
            totals.batches,
            totals.changed,
            totals.dst_changed,
            if pairs.is_empty() { "none" } else { &pairs },
        );
        if totals.packets == 0 {
            return end(End::Unjudged, Settled::Unjudged);
        }
        if !admitted {
            let settled = end(End::Refused, Settled::Refused);
            if settled == Settled::Refused {
                self.quarantine_refused(digest, "over-budget");
            }
            return settled;
        }
        let what = "tag watch: shadow promoted";
        let record = self.own_approval(what);
        let promoted = self.promote_locked(shadow, Some(Approval(&record)));
        if let Err(e) = &promoted {
            self.own_refused(what, e.reason(), &e.to_string());
        }
        match promoted {
            Ok(_) => Settled::Promoted,
            // Not the module's doing: staged again at a later poll.
            Err(ShadowError::NotRecorded(e)) => {
                self.note_refusal(what, &SwapError::NotRecorded(e));
                end(End::Unrecorded, Settled::Ended(End::Unrecorded))
            }
            // Its module failed meanwhile, or what it was compared against no longer serves.
            Err(_) => {
                self.end_shadow(Some(shadow), End::LiveChanged, &live);
                self.ended_meanwhile(shadow, digest)
            }
        }
    }

    /// The watch's `shadow` of `digest` ended before the watch settled it: a module that
    /// faulted, or a shadow an operator set aside, quarantines the digest; any other end (an
    /// operator's promotion, which the watch follows, another release gone live, a host
    /// fault) leaves the next poll to decide.
    fn ended_meanwhile(&self, shadow: &Shadow, digest: Digest) -> Settled {
        let how = shadow.ended().unwrap_or(End::Fault);
        if shadow.module_faulted() {
            self.quarantine_refused(digest, "shadow-fault");
            return Settled::Ended(End::Fault);
        }
        if matches!(how, End::Discarded | End::Replaced) {
            // A person set it aside: the watch does not stage it again.
            self.quarantine_set_aside(digest, how);
        }
        Settled::Ended(how)
    }
}
