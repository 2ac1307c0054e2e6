//! Deadlines in the guest's own CPU time. A call into a module may run for a budget of its
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), so time the thread spends waiting for a
//! core never counts: with more workers than cores, an honest module is never stopped for
//! the machine being busy, and a module that loops is stopped once it has run its budget,
//! however long that takes on the clock.
//!
//! The clock is a system call (it is not in the vDSO), so it is read only in wasmtime's
//! epoch-deadline callback, never per batch. Each call starts with its epoch deadline at the
//! next tick; a batch takes microseconds and rarely crosses one. A call that crosses it gets
//! the callback, which takes the thread's CPU time there as its baseline; later callbacks stop
//! the call once it has run its budget since the baseline, or extend the deadline by the ticks
//! left (a call cannot run more CPU time than passes on the clock, so it is not late to check
//! again then). A call is never stopped before it has run its budget; it may run up to about
//! two ticks more (the time before the baseline, and the last tick).
//!
//! A configure call also has a backstop on the clock ([`configure_backstop`]): it runs while
//! a swap holds the gateway's one swap lock, so an operator's rollback waits behind it, and on
//! a machine starved enough that its CPU time crawls, that wait must still end. The backstop
//! is generous, four times the budget and at least ten seconds over it, because a gateway
//! whose workers keep every core busy gives a configure call a small share of one: an honest
//! module under a short budget must not be refused for the machine's load.

use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

/// How often the epoch advances: the resolution of deadlines.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The thread's CPU clock could not be read: the host's failure, not the module's.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("reading the thread's CPU clock (CLOCK_THREAD_CPUTIME_ID): {0}")]
pub struct ClockError(#[from] nix::Error);

/// The CPU time the calling thread has run.
pub fn thread_cpu_time() -> Result<Duration, ClockError> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)?;
    Ok(now.into())
}

/// How many times its CPU budget a configure call may take on the clock...
const CONFIGURE_WALL_FACTOR: u32 = 4;
/// ...and the least time over its budget it may take on the clock.
const CONFIGURE_WALL_GRACE: Duration = Duration::from_secs(10);

/// How long a configure call with a budget of `limit` of CPU time may take on the clock.
pub(super) fn configure_backstop(limit: Duration) -> Duration {
    limit
        .saturating_mul(CONFIGURE_WALL_FACTOR)
        .max(limit.saturating_add(CONFIGURE_WALL_GRACE))
}

/// The CPU time the call under way may run.
#[derive(Debug, Clone, Copy)]
pub(super) struct CpuBudget {
    limit: Duration,
    /// The thread's CPU time when the call first crossed its epoch deadline (`None`: it has
    /// not yet).
    since: Option<Duration>,
    /// When the call started, and how long it may take on the clock, for a call with a
    /// backstop.
    backstop: Option<(Instant, Duration)>,
    /// Whether the backstop, not the budget, stopped the call.
    stopped_by_clock: bool,
}

impl CpuBudget {
    /// A budget of `limit` for a call about to start.
    pub(super) fn new(limit: Duration) -> Self {
        CpuBudget {
            limit,
            since: None,
            backstop: None,
            stopped_by_clock: false,
        }
    }

    /// A budget of `limit` for a configure call about to start, with its backstop on the clock.
    pub(super) fn configure(limit: Duration) -> Self {
        Self::with_backstop(limit, configure_backstop(limit))
    }

    fn with_backstop(limit: Duration, wall: Duration) -> Self {
        CpuBudget {
            backstop: Some((Instant::now(), wall)),
            ..Self::new(limit)
        }
    }

    /// Whether the call was stopped by its backstop on the clock rather than its CPU time.
    pub(super) fn stopped_by_clock(&self) -> bool {
        self.stopped_by_clock
    }

    /// What the epoch-deadline callback answers when the call crosses its deadline with the
    /// thread at CPU time `now`: the first crossing takes the baseline; a later one stops the
    /// call once it has run its budget since (or, with a backstop, once the clock passed it),
    /// or extends the deadline by the ticks left.
    pub(super) fn on_deadline(&mut self, now: Duration) -> UpdateDeadline {
        if let Some((started, wall)) = self.backstop
            && started.elapsed() >= wall
        {
            self.stopped_by_clock = true;
            return UpdateDeadline::Interrupt;
        }
        let since = *self.since.get_or_insert(now);
        match self.limit.checked_sub(now.saturating_sub(since)) {
            Some(left) if !left.is_zero() => UpdateDeadline::Continue(ticks(left)),
            _ => UpdateDeadline::Interrupt,
        }
    }
}

/// The most ticks a deadline is extended by at once (248 days): wasmtime adds them to the
/// current epoch, which must not overflow.
const MAX_TICKS: u64 = u32::MAX as u64;

/// Epoch ticks in `d`, rounded up, at least one, at most [`MAX_TICKS`].
fn ticks(d: Duration) -> u64 {
    let ticks = d.as_nanos().div_ceil(EPOCH_TICK.as_nanos()).max(1);
    u64::try_from(ticks).map_or(MAX_TICKS, |t| t.min(MAX_TICKS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn extended(update: UpdateDeadline) -> Option<u64> {
        match update {
            UpdateDeadline::Continue(ticks) => Some(ticks),
            _ => None,
        }
    }

    #[test]
    fn the_budget_counts_cpu_time_from_the_first_tick_crossed() {
        let mut budget = CpuBudget::new(500 * MS);
        // The baseline: however much CPU time the thread ran before this call.
        assert_eq!(extended(budget.on_deadline(7_000 * MS)), Some(100));
        // Descheduled: the clock moved on, the thread's CPU time did not.
        assert_eq!(extended(budget.on_deadline(7_000 * MS)), Some(100));
        assert_eq!(extended(budget.on_deadline(7_300 * MS)), Some(40));
        assert_eq!(extended(budget.on_deadline(7_499 * MS)), Some(1));
        assert!(extended(budget.on_deadline(7_500 * MS)).is_none());
        assert!(extended(budget.on_deadline(9_000 * MS)).is_none());
    }

    #[test]
    fn a_configure_call_ends_at_its_backstop_whatever_its_cpu_time() {
        let mut budget = CpuBudget::with_backstop(MS, 4 * MS);
        // Starved: no CPU time at all, but the clock passes the backstop.
        assert_eq!(extended(budget.on_deadline(7_000 * MS)), Some(1));
        assert!(!budget.stopped_by_clock());
        std::thread::sleep(5 * MS);
        assert!(extended(budget.on_deadline(7_000 * MS)).is_none());
        assert!(budget.stopped_by_clock());
        // A batch has no backstop.
        let mut batch = CpuBudget::new(MS);
        assert_eq!(extended(batch.on_deadline(7_000 * MS)), Some(1));
        std::thread::sleep(5 * MS);
        assert_eq!(extended(batch.on_deadline(7_000 * MS)), Some(1));
        // Its CPU time, not the clock, stops a call that runs.
        let mut running = CpuBudget::configure(MS);
        assert_eq!(extended(running.on_deadline(7_000 * MS)), Some(1));
        assert!(extended(running.on_deadline(7_001 * MS)).is_none());
        assert!(!running.stopped_by_clock());
    }

    #[test]
    fn the_backstop_is_four_budgets_and_at_least_ten_seconds_over_one() {
        assert_eq!(configure_backstop(30 * 1000 * MS), 120 * 1000 * MS);
        assert_eq!(configure_backstop(200 * MS), 10_200 * MS);
        assert_eq!(configure_backstop(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn a_budget_shorter_than_a_tick_waits_one_tick() {
        let mut budget = CpuBudget::new(MS);
        assert_eq!(extended(budget.on_deadline(MS)), Some(1));
        assert!(extended(budget.on_deadline(2 * MS)).is_none());
        assert!(extended(CpuBudget::new(Duration::ZERO).on_deadline(MS)).is_none());
    }

    #[test]
    fn the_clock_reads_and_moves_with_work() {
        let before = thread_cpu_time().unwrap();
        let mut x = 0u64;
        while thread_cpu_time().unwrap() < before + MS {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(x > 0);
    }

    #[test]
    fn deadlines_in_epoch_ticks() {
        assert_eq!(ticks(Duration::ZERO), 1);
        assert_eq!(ticks(MS), 1);
        assert_eq!(ticks(5 * MS), 1);
        assert_eq!(ticks(6 * MS), 2);
        assert_eq!(ticks(500 * MS), 100);
        assert_eq!(ticks(Duration::MAX), MAX_TICKS);
    }
}
