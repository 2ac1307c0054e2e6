//! One authority over the running release. Three writers can publish one: the operator
//! (uploads, references, rollbacks, SIGHUP), the tag watch and auto-revert. The rule between
//! them:
//!
//! - **The operator wins.** A release an operator made pins the gateway: the tag watch pauses
//!   (logged, in `/status` and the metrics) and resumes only when an operator asks for it
//!   ([`Gateway::resume_watch`]), or swaps to the watched tag itself (a reference by tag, no
//!   digest), which is asking to follow the tag again.
//! - **The watch follows moves, never restores.** It acts only when the tag resolves to a
//!   digest it has not acted on: an unmoved tag is never pulled again, whatever serves.
//! - **A digest that failed is not taken again.** One the gateway refused for what the module
//!   is (not a component, the wrong world, its configuration or its canary refused) or
//!   auto-reverted is quarantined: the watch never takes it again (the last
//!   [`MAX_QUARANTINED`] such digests), whatever the tag does; an operator still can. So is
//!   one a gated watch staged as a shadow ([`super::watch::ShadowGate`]) when its report was
//!   beyond the budget, or the operator discarded or replaced that shadow.
//!
//! Every change of the state is made under the gateway's swap lock, so an operator's change
//! and a watch's swap cannot interleave: the watch asks before it pulls (so that a paused watch
//! asks the registry nothing) and again, under the lock, before it publishes.
//!
//! The state lives in the process: a gateway restarted follows its tag afresh (its
//! `--module` is what an operator chose for it at start).

use super::{Gateway, Origin, Refusal, Release, ShadowEnd, SwapError, lock};
use crate::oci::{Digest, Reference};

/// The most digests kept in quarantine; the oldest leaves first.
const MAX_QUARANTINED: usize = 64;

/// A tag the gateway follows, and the state of following it.
#[derive(Debug, Clone)]
pub(super) struct TagWatch {
    tag: Reference,
    status: WatchStatus,
}

/// What `/status` shows of a tag watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchStatus {
    /// The tag, as `oci://HOST/REPO:TAG`.
    pub reference: String,
    /// Why the watch is paused, when it is.
    pub paused: Option<Pause>,
    /// The digest the tag resolved to when the watch last acted on it (or when the gateway
    /// started from it): the watch acts again only when the tag moves away from it.
    pub acted: Option<Digest>,
    /// Digests the watch will not take, oldest first.
    pub quarantined: Vec<Quarantined>,
}

/// Why a watch is paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    /// The generation serving when it paused: the operator's release, when one paused it.
    pub since_generation: u64,
    /// What paused it, in a sentence.
    pub reason: String,
}

/// A digest the watch will not take until its tag moves to another one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The manifest's digest.
    pub digest: Digest,
    /// Why: `refused: ` and a refusal's reason (for the gated watch also `over-budget`, and
    /// `shadow-fault` for a fault of its shadow's module), `auto-revert`, or
    /// `shadow-discarded by an operator` (or `shadow-replaced`).
    pub reason: String,
    /// The generation it served as, when it was published before it failed.
    pub generation: Option<u64>,
}

flowgate_policy::labels! {
    /// What the watch does with the digest its tag resolves to now.
    pub enum Decision {
        /// The watch is paused: nothing is pulled.
        Paused => "paused",
        /// The tag has not moved since the watch last acted.
        Unchanged => "unchanged",
        /// The digest failed before: it is not taken again.
        Quarantined => "quarantined",
        /// A digest the watch has not acted on: pull it and swap.
        Take => "take",
    }
}

/// Why the watch could not be paused or resumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The gateway follows no tag.
    #[error("this gateway watches no tag: it was started without a registry tag to follow")]
    NotWatching,
    /// A watch is given a reference pinned to a digest, which never moves.
    #[error("{0} is pinned to a digest and never moves: a watch follows a tag")]
    Pinned(String),
    /// The gateway follows a tag already.
    #[error("this gateway follows {0} already")]
    AlreadyWatching(String),
    /// The action could not be recorded, so it was not taken.
    #[error("the watch action could not be recorded, so it was not taken: {0}")]
    NotRecorded(String),
}

/// The last word on an operator's watch action, under the swap lock: called with the watch's
/// state before and after, it refuses the action with why ([`WatchError::NotRecorded`]).
pub type WatchApproval<'a> = &'a dyn Fn(&WatchStatus, &WatchStatus) -> Result<(), String>;

/// Asks `approval` (if any) whether the watch may change as `change` would change it; an
/// action that changes nothing is not asked about.
fn approve(
    approval: Option<WatchApproval<'_>>,
    watch: &TagWatch,
    change: impl FnOnce(&mut TagWatch),
) -> Result<(), WatchError> {
    let Some(approval) = approval else {
        return Ok(());
    };
    let mut after = watch.clone();
    change(&mut after);
    if after.status == watch.status {
        return Ok(()); // nothing to approve
    }
    approval(&watch.status, &after.status).map_err(WatchError::NotRecorded)
}

/// Whether `a` and `b` name one repository of one registry (host names compare without case).
fn same_repository(a: &Reference, b: &Reference) -> bool {
    a.registry.eq_ignore_ascii_case(&b.registry) && a.repository == b.repository
}

/// Whether `a` and `b` name one tag (digests aside).
fn same_tag(a: &Reference, b: &Reference) -> bool {
    a.tag.is_some() && same_repository(a, b) && a.tag == b.tag
}

impl TagWatch {
    fn decide(&self, digest: &Digest) -> Decision {
        if self.status.paused.is_some() {
            Decision::Paused
        } else if self.status.quarantined.iter().any(|q| q.digest == *digest) {
            Decision::Quarantined
        } else if self.status.acted.as_ref() == Some(digest) {
            Decision::Unchanged
        } else {
            Decision::Take
        }
    }

    fn quarantine(&mut self, digest: Digest, reason: String, generation: Option<u64>) {
        self.status.quarantined.retain(|q| q.digest != digest);
        if self.status.quarantined.len() >= MAX_QUARANTINED {
            self.status.quarantined.remove(0);
        }
        tracing::warn!(
            event = "quarantine",
            reference = %self.status.reference,
            digest = %digest,
            reason = %reason,
            "watching {}: {digest} is quarantined ({reason}); the watch will not take it again until the tag moves",
            self.status.reference
        );
        self.status.quarantined.push(Quarantined {
            digest,
            reason,
            generation,
        });
    }
}

/// The digest a release's module was pulled as, when it came from `tag`'s repository.
fn pulled_digest(release: &Release, tag: &Reference) -> Option<Digest> {
    let source = Reference::parse(release.source.as_deref()?).ok()?;
    same_repository(&source, tag)
        .then_some(source.digest)
        .flatten()
}

impl Gateway {
    /// Follows `tag` from now on: the gateway's tag watch ([`super::watch::watch`]) asks here
    /// before it pulls and swaps. The serving release counts as acted on when it was pulled
    /// from the tag's repository.
    pub fn watch_tag(&self, tag: &Reference) -> Result<(), WatchError> {
        if tag.digest.is_some() || tag.tag.is_none() {
            return Err(WatchError::Pinned(tag.to_string()));
        }
        let _one_at_a_time = lock(&self.swap_lock);
        let mut watch = lock(&self.watch);
        if let Some(watching) = watch.as_ref() {
            return Err(WatchError::AlreadyWatching(
                watching.status.reference.clone(),
            ));
        }
        let acted = pulled_digest(&self.current(), tag);
        *watch = Some(TagWatch {
            tag: tag.clone(),
            status: WatchStatus {
                reference: tag.to_string(),
                paused: None,
                acted,
                quarantined: Vec::new(),
            },
        });
        Ok(())
    }

    /// The tag watch's state, when the gateway follows a tag.
    pub fn watch_status(&self) -> Option<WatchStatus> {
        lock(&self.watch).as_ref().map(|w| w.status.clone())
    }

    /// What the watch does with `digest`, the one its tag resolves to now.
    pub fn watch_decision(&self, digest: &Digest) -> Decision {
        lock(&self.watch)
            .as_ref()
            .map_or(Decision::Paused, |w| w.decide(digest))
    }

    /// Pauses the watch at an operator's request (`POST /watch/pause`), without a new release.
    pub fn pause_watch(&self, reason: &str) -> Result<WatchStatus, WatchError> {
        self.pause_watch_approved(reason, None)
    }

    /// [`Gateway::pause_watch`], made only if `approval` lets the watch's new state in.
    pub fn pause_watch_approved(
        &self,
        reason: &str,
        approval: Option<WatchApproval<'_>>,
    ) -> Result<WatchStatus, WatchError> {
        let _one_at_a_time = lock(&self.swap_lock);
        let generation = self.current().generation;
        let mut watch = lock(&self.watch);
        let watch = watch.as_mut().ok_or(WatchError::NotWatching)?;
        let reason = format!("the operator paused it: {reason}");
        approve(approval, watch, |w| {
            w.status.paused.get_or_insert_with(|| Pause {
                since_generation: generation,
                reason: reason.clone(),
            });
        })?;
        if watch.status.paused.is_none() {
            pause(watch, generation, reason);
        }
        Ok(watch.status.clone())
    }

    /// Resumes a paused watch at an operator's request (`POST /watch/resume`). It acts again
    /// when the tag moves to a digest it has not acted on; it never swaps back to the module
    /// the tag already named.
    pub fn resume_watch(&self) -> Result<WatchStatus, WatchError> {
        self.resume_watch_approved(None)
    }

    /// [`Gateway::resume_watch`], made only if `approval` lets the watch's new state in.
    pub fn resume_watch_approved(
        &self,
        approval: Option<WatchApproval<'_>>,
    ) -> Result<WatchStatus, WatchError> {
        let _one_at_a_time = lock(&self.swap_lock);
        let mut watch = lock(&self.watch);
        let watch = watch.as_mut().ok_or(WatchError::NotWatching)?;
        approve(approval, watch, |w| w.status.paused = None)?;
        if let Some(pause) = watch.status.paused.take() {
            tracing::info!(
                event = "watch-resumed",
                reference = %watch.status.reference,
                paused_since = pause.since_generation,
                "watching {}: resumed by the operator (paused since generation {}); the watch acts when the tag moves",
                watch.status.reference,
                pause.since_generation
            );
        }
        Ok(watch.status.clone())
    }

    /// After a publication (under the swap lock): an operator's release pauses the watch, or
    /// resumes it when it follows the watched tag itself (`follows`: the reference the operator
    /// named, by tag).
    pub(super) fn after_publish(&self, release: &Release, follows: Option<(&Reference, Digest)>) {
        let mut watch = lock(&self.watch);
        let Some(watch) = watch.as_mut() else { return };
        if let Some((asked, digest)) = follows
            && asked.digest.is_none()
            && same_tag(asked, &watch.tag)
        {
            watch.status.acted = Some(digest);
            if let Some(pause) = watch.status.paused.take() {
                tracing::info!(
                    event = "watch-resumed",
                    reference = %watch.status.reference,
                    generation = release.generation,
                    paused_since = pause.since_generation,
                    "watching {}: resumed, the operator swapped to the tag itself (generation {})",
                    watch.status.reference,
                    release.generation
                );
            }
            return;
        }
        if release.origin.is_operator() {
            let reason = format!(
                "{} made generation {} ({})",
                release.origin.who(),
                release.generation,
                release.cause
            );
            match &mut watch.status.paused {
                None => pause(watch, release.generation, reason),
                // Still paused; the latest operator change is the one to report.
                Some(pause) => {
                    pause.since_generation = release.generation;
                    pause.reason = reason;
                }
            }
        }
    }

    /// A digest the watch pulled was refused: quarantined until the tag moves.
    pub(super) fn quarantine_refused(&self, digest: Digest, reason: &str) {
        if let Some(watch) = lock(&self.watch).as_mut() {
            watch.status.acted = Some(digest);
            watch.quarantine(digest, format!("refused: {reason}"), None);
        }
    }

    /// The watch's swap or shadow of `digest` was refused with `e`: quarantined when the
    /// refusal is about what the module is, not about what the machine had to spare or
    /// whether its audit record could be written (a capacity or start failure, or an audit
    /// failure, is tried again after the backoff).
    pub(super) fn quarantine_refusal(&self, digest: Digest, e: &SwapError) {
        if !matches!(
            e.reason(),
            Refusal::Capacity | Refusal::StartFailed | Refusal::NotRecorded
        ) {
            self.quarantine_refused(digest, e.reason().as_str());
        }
    }

    /// The watch's shadow of `digest` was set aside by an operator (`how`: discarded, or
    /// replaced by theirs): quarantined, so that the watch does not stage it again until the
    /// tag moves. The operator still can.
    pub(super) fn quarantine_set_aside(&self, digest: Digest, how: ShadowEnd) {
        if let Some(watch) = lock(&self.watch).as_mut() {
            watch.status.acted = Some(digest);
            watch.quarantine(digest, format!("shadow-{how} by an operator"), None);
        }
    }

    /// `from` was auto-reverted: when the watch brought it, its digest is quarantined.
    pub(super) fn quarantine_reverted(&self, from: &Release) {
        let mut watch = lock(&self.watch);
        let Some(watch) = watch.as_mut() else { return };
        if from.origin == Origin::TagWatch
            && let Some(digest) = pulled_digest(from, &watch.tag)
        {
            watch.quarantine(digest, "auto-revert".into(), Some(from.generation));
        }
    }
}

fn pause(watch: &mut TagWatch, generation: u64, reason: String) {
    tracing::warn!(
        event = "watch-paused",
        reference = %watch.status.reference,
        generation,
        reason = %reason,
        "watching {}: paused, {reason}; the watch will not override it (resume the watch, POST /watch/resume, or swap to the tag itself)",
        watch.status.reference
    );
    watch.status.paused = Some(Pause {
        since_generation: generation,
        reason,
    });
}
