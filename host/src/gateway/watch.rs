//! Watching a tag: the gateway polls the manifest digest a tag resolves to, and when it moves,
//! pulls the module by that digest, verifies it and swaps it in as for an upload. A failed
//! pull or a refused module keeps the current release, is logged and counted
//! (`flowgate_pulls_total{result}`), and is tried again after a capped exponential backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::Gateway;
use crate::oci::{Cache, Digest, Reference, Registry};

/// The longest wait between two tries after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Polls `reference` (a tag) every `interval` until `stop`, swapping when the tag moves.
pub fn watch(
    gateway: &Arc<Gateway>,
    registry: &Registry,
    cache: Option<&Cache>,
    reference: &Reference,
    interval: Duration,
    stop: &AtomicBool,
) {
    let mut wait = interval;
    let mut next = Instant::now() + interval;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20).min(interval));
        if Instant::now() < next {
            continue;
        }
        let failed = !poll(gateway, registry, cache, reference);
        wait = if failed {
            (wait * 2).min(MAX_BACKOFF.max(interval))
        } else {
            interval
        };
        next = Instant::now() + wait;
    }
}

/// One poll; false when it failed (the registry, or a refused module).
fn poll(gateway: &Gateway, registry: &Registry, cache: Option<&Cache>, r: &Reference) -> bool {
    let serving = gateway
        .current()
        .source
        .as_deref()
        .and_then(|s| Reference::parse(s).ok())
        .and_then(|s| s.digest);
    let digest = match registry.manifest(r) {
        Ok((_, digest)) => digest,
        Err(e) => {
            gateway.note_pull("failed");
            tracing::warn!(event = "pull", result = "failed", reference = %r, error = %e, "watching {r}: the registry failed; the running release keeps serving");
            return false;
        }
    };
    if serving == Some(digest) {
        gateway.note_pull("unchanged");
        return true;
    }
    swap_to(gateway, registry, cache, r, digest)
}

fn swap_to(
    gateway: &Gateway,
    registry: &Registry,
    cache: Option<&Cache>,
    r: &Reference,
    digest: Digest,
) -> bool {
    let pinned = r.pinned(digest);
    let pulled = match registry.pull_or_cached(&pinned, cache) {
        Ok((pulled, _)) => pulled,
        Err(e) => {
            gateway.note_pull("failed");
            tracing::warn!(event = "pull", result = "failed", reference = %pinned, error = %e, "watching {r}: the pull failed; the running release keeps serving");
            return false;
        }
    };
    match gateway.swap_from(Some(&pulled.module), None, None, Some(pinned.to_string())) {
        Ok(_) => {
            gateway.note_pull("swapped");
            true
        }
        Err(_) => {
            // The gateway logged and counted the refusal.
            gateway.note_pull("refused");
            false
        }
    }
}
