//! When a worker must be awake next, whatever its poll interval: the next tick of a schedule,
//! the next start a rate-limited queue allows. Set during a pass, used by the wait after it.

use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    static ALARM: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Wake this process (a worker) no later than `at` from its next wait.
pub fn wake_by(at: Instant) {
    ALARM.with(|alarm| alarm.set(Some(alarm.get().map_or(at, |set| set.min(at)))));
}

/// `timeout`, shortened to the alarm set since the last wait (which it clears).
pub fn bounded(timeout: Duration) -> Duration {
    match ALARM.with(Cell::take) {
        Some(at) => timeout.min(at.saturating_duration_since(Instant::now())),
        None => timeout,
    }
}
