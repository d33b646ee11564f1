//! The hub's business clock: the time that goes into commands (`at` of grants,
//! holds, settlements, expiries) and that decides periods, expiry and invoice
//! states.
//!
//! It is wall time plus an offset that is zero in every real deployment. Tests
//! move it forward to live through a month boundary, an expiry or an invoice's
//! grace window in seconds. Event metadata (`recorded_at`) and signatures of
//! webhooks stay on wall time: they describe transport, not business time.
//! Nothing a replay computes reads this clock: every figure comes from the `at`
//! carried in events.

use chrono::{DateTime, TimeDelta, Utc};
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub(crate) fn now(&self) -> DateTime<Utc> {
        Utc::now() + TimeDelta::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves the clock forward (only ever forward: events of one tenant must not
    /// go back in time).
    pub fn advance(&self, by: TimeDelta) {
        assert!(by >= TimeDelta::zero(), "the clock only moves forward");
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }
}
