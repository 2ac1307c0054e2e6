//! Watching a tag: the gateway polls the manifest digest a tag resolves to, and when it moves to
//! a digest the watch has not acted on, pulls the module by that digest, verifies it and swaps
//! it in as for an upload. The rule it follows (paused by the operator's changes, digests that
//! failed quarantined) is in `authority.rs`. A failed pull keeps the current release, is logged
//! and counted (`flowgate_pulls_total{result}`), and is tried again after a capped exponential
//! backoff. Every wait ends as soon as `stop` is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Decision, Gateway, Pull, Refusal};
use crate::oci::{Cache, Digest, PullError, Reference, Registry};

/// The longest wait between two tries after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How often a waiting watch looks at `stop`.
const STOP_CHECK: Duration = Duration::from_millis(20);

/// Polls `reference` (a tag) every `interval` until `stop`, swapping when the tag moves. The
/// gateway follows the tag from the start ([`Gateway::watch_tag`], unless the caller made it
/// follow it before); while its watch is paused nothing is pulled.
pub fn watch(
    gateway: &Arc<Gateway>,
    registry: &Registry,
    cache: Option<&Cache>,
    reference: &Reference,
    interval: Duration,
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
        let failed = !poll(gateway, registry, cache, reference, stop);
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
    stop: &AtomicBool,
) -> bool {
    // A paused watch asks the registry nothing.
    if gateway
        .watch_status()
        .is_none_or(|status| status.paused.is_some())
    {
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
        Decision::Take => swap_to(gateway, registry, cache, r, digest, stop),
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
            gateway.refuse_signature("the tag watch's swap", e);
            return false;
        }
        Err(e) => {
            gateway.note_pull(Pull::Failed);
            tracing::warn!(event = "pull", result = "failed", reference = %pinned, error = %e, "watching {r}: the pull failed; the running release keeps serving");
            return false;
        }
    };
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
