//! Who the admin API holds a connection for. A connection is anonymous until its request head
//! has arrived and carries the token (on a Unix socket without a token, until its head has
//! arrived); anonymous connections are capped per peer and overall, and one arriving at a cap
//! makes room by letting the oldest anonymous connection go. So clients that never finish
//! their head cannot keep the operator out: the operator's connection is the newest when it
//! arrives, and it authenticates as soon as its head is read. A connection younger than
//! [`GateLimits::grace`] is not let go for the per-peer cap (a peer may then hold more, up to
//! the overall cap), so that a storm of reconnections from one address cannot push out the
//! operator's connection before its head is read; at the overall cap the oldest goes, whatever
//! its age. Authenticated connections are capped apart ([`Ticket::authenticate`] says no past
//! the cap, and the request is answered 503).
//!
//! A cap per address alone would not do: on loopback an attacker on the same host shares
//! 127.0.0.1 with the operator.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;

/// Who is at the other end of a connection: an address on TCP, a user on a Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client's address.
    Ip(IpAddr),
    /// A Unix socket client's user id.
    Uid(u32),
    /// A Unix socket client whose credentials could not be read.
    Unknown,
}

/// The caps.
#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    /// Anonymous connections from one peer.
    pub anonymous_per_peer: usize,
    /// Anonymous connections in all.
    pub anonymous: usize,
    /// Authenticated connections (requests being served) in all.
    pub authenticated: usize,
    /// How long a new anonymous connection is safe from the per-peer cap.
    pub grace: Duration,
}

struct Anonymous {
    peer: Peer,
    since: Instant,
    task: AbortHandle,
}

#[derive(Default)]
struct State {
    /// By arrival: the first entry is the oldest.
    anonymous: BTreeMap<u64, Anonymous>,
    authenticated: usize,
}

/// The connections held, and the caps on them.
pub struct Gate {
    limits: GateLimits,
    next: AtomicU64,
    state: Mutex<State>,
}

/// One connection's place at the gate; it leaves when this is dropped.
pub struct Ticket {
    gate: Arc<Gate>,
    id: u64,
    authenticated: AtomicBool,
}

impl Gate {
    /// A gate with `limits` (each at least 1).
    pub fn new(limits: GateLimits) -> Gate {
        Gate {
            limits: GateLimits {
                anonymous_per_peer: limits.anonymous_per_peer.max(1),
                anonymous: limits.anonymous.max(1),
                authenticated: limits.authenticated.max(1),
                grace: limits.grace,
            },
            next: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts that are still counts.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A ticket for a connection about to be served; [`Gate::admit`] it with its task.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        Ticket {
            gate: self.clone(),
            id: self.next.fetch_add(1, Ordering::Relaxed),
            authenticated: AtomicBool::new(false),
        }
    }

    /// Holds the anonymous connection `id` from `peer`, served by `task`. Returns how many
    /// older anonymous connections were let go (their tasks aborted) to make room.
    pub fn admit(&self, id: u64, peer: Peer, task: AbortHandle) -> usize {
        let now = Instant::now();
        let mut state = self.state();
        let mut evicted = 0;
        let from_peer = state.anonymous.values().filter(|a| a.peer == peer).count();
        if from_peer >= self.limits.anonymous_per_peer {
            let oldest = state
                .anonymous
                .iter()
                .find(|(_, a)| a.peer == peer && now.duration_since(a.since) >= self.limits.grace)
                .map(|(id, _)| *id);
            if let Some(old) = oldest.and_then(|id| state.anonymous.remove(&id)) {
                old.task.abort();
                evicted += 1;
            }
        }
        while state.anonymous.len() >= self.limits.anonymous {
            let Some((_, old)) = state.anonymous.pop_first() else {
                break;
            };
            old.task.abort();
            evicted += 1;
        }
        state.anonymous.insert(
            id,
            Anonymous {
                peer,
                since: now,
                task,
            },
        );
        evicted
    }

    /// Connections held now: anonymous, authenticated.
    #[cfg(test)]
    pub fn held(&self) -> (usize, usize) {
        let state = self.state();
        (state.anonymous.len(), state.authenticated)
    }
}

impl Ticket {
    /// The connection's number, in order of arrival.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The connection proved itself: it is no longer anonymous and cannot be let go for
    /// another. False when the authenticated connections are at their cap: it is then
    /// answered 503 and counts toward neither cap while that answer is written.
    pub fn authenticate(&self) -> bool {
        let mut state = self.gate.state();
        state.anonymous.remove(&self.id);
        if self.authenticated.load(Ordering::Acquire) {
            return true;
        }
        if state.authenticated >= self.gate.limits.authenticated {
            return false;
        }
        state.authenticated += 1;
        self.authenticated.store(true, Ordering::Release);
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.gate.state();
        state.anonymous.remove(&self.id);
        if self.authenticated.load(Ordering::Acquire) {
            state.authenticated = state.authenticated.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> GateLimits {
        GateLimits {
            anonymous_per_peer: 2,
            anonymous: 3,
            authenticated: 1,
            grace: Duration::ZERO,
        }
    }

    #[test]
    fn the_oldest_anonymous_connection_of_a_peer_makes_room() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let gate = Arc::new(Gate::new(limits()));
            let a = Peer::Uid(1);
            let b = Peer::Uid(2);
            let tasks: Vec<_> = (0..5)
                .map(|_| tokio::spawn(std::future::pending::<()>()))
                .collect();
            let tickets: Vec<_> = (0..5).map(|_| gate.ticket()).collect();
            assert_eq!(gate.admit(tickets[0].id(), a, tasks[0].abort_handle()), 0);
            assert_eq!(gate.admit(tickets[1].id(), a, tasks[1].abort_handle()), 0);
            // A third from `a`: its oldest goes.
            assert_eq!(gate.admit(tickets[2].id(), a, tasks[2].abort_handle()), 1);
            tokio::task::yield_now().await;
            assert!(tasks[0].is_finished());
            assert!(!tasks[1].is_finished());
            // `b` fills the overall cap; the next makes room from the oldest of all.
            assert_eq!(gate.admit(tickets[3].id(), b, tasks[3].abort_handle()), 0);
            assert!(tickets[2].authenticate());
            assert_eq!(gate.held(), (2, 1));
            // One authenticated connection at most.
            assert!(!tickets[1].authenticate());
            assert_eq!(gate.admit(tickets[4].id(), b, tasks[4].abort_handle()), 0);
            drop(tickets);
            assert_eq!(gate.held(), (0, 0));
        });
    }

    #[test]
    fn a_young_connection_is_safe_from_the_per_peer_cap_but_not_the_overall_one() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let gate = Arc::new(Gate::new(GateLimits {
                grace: Duration::from_secs(60),
                ..limits()
            }));
            let a = Peer::Uid(1);
            let tasks: Vec<_> = (0..4)
                .map(|_| tokio::spawn(std::future::pending::<()>()))
                .collect();
            let tickets: Vec<_> = (0..4).map(|_| gate.ticket()).collect();
            for i in 0..3 {
                assert_eq!(gate.admit(tickets[i].id(), a, tasks[i].abort_handle()), 0);
            }
            assert_eq!(gate.held(), (3, 0));
            assert_eq!(gate.admit(tickets[3].id(), a, tasks[3].abort_handle()), 1);
            tokio::task::yield_now().await;
            assert!(tasks[0].is_finished());
            assert_eq!(gate.held(), (3, 0));
        });
    }
}
