//! The one retry backoff of weftd: exponential with jitter. Every retry
//! loop (etcd connect, config read, lease acquire, list/watch, subnet
//! setup, notification resubscribes) uses it, so that after an etcd
//! restart the nodes do not all retry at the same instants.
//!
//! Each delay is drawn uniformly from [d/2, d], where d doubles from
//! `base` to `cap` ("equal jitter": never zero, so a failing loop cannot
//! spin, and spread over half the window). The etcd loops cap at
//! [`ETCD_CAP`]: with the 1 s connect timeout (lease.rs) a node is back at
//! most ~1.8 s after etcd is.

use crate::store::etcd::Rng;
use std::time::Duration;

/// First delay of the etcd loops.
pub const ETCD_BASE: Duration = Duration::from_millis(100);
/// Longest delay of the etcd loops: bounds how long a node stays behind
/// once etcd is back (plus one connect timeout).
pub const ETCD_CAP: Duration = Duration::from_millis(800);

pub struct Backoff {
    base: Duration,
    cap: Duration,
    ceiling: Duration,
    rng: Rng,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        let base = base.max(Duration::from_millis(1));
        Backoff {
            base,
            cap: cap.max(base),
            ceiling: base,
            rng: Rng::new(),
        }
    }

    /// The etcd loops' backoff: [`ETCD_BASE`] doubling to [`ETCD_CAP`].
    pub fn etcd() -> Self {
        Backoff::new(ETCD_BASE, ETCD_CAP)
    }

    /// The delay before the next attempt; the window doubles after each.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.ceiling;
        self.ceiling = (d * 2).min(self.cap);
        let half = d / 2;
        let spread = (d - half).as_micros().max(1) as usize;
        half + Duration::from_micros(self.rng.below(spread + 1) as u64)
    }

    /// Sleep for [`next_delay`](Backoff::next_delay) (async loops).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Sleep for [`next_delay`](Backoff::next_delay) (dedicated threads).
    pub fn wait_blocking(&mut self) {
        std::thread::sleep(self.next_delay());
    }

    /// After a success: the next failure starts again from `base`.
    pub fn reset(&mut self) {
        self.ceiling = self.base;
    }

    /// The current window (for logs).
    pub fn window(&self) -> Duration {
        self.ceiling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_up_to_the_cap_and_reset() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(800));
        for window in [100, 200, 400, 800, 800, 800] {
            let d = b.next_delay();
            assert!(d >= ms(window / 2) && d <= ms(window), "{d:?} for {window}");
        }
        b.reset();
        assert_eq!(b.window(), ms(100));
        assert!(b.next_delay() <= ms(100));
        // Never zero, whatever the base.
        let mut tiny = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(tiny.next_delay() > Duration::ZERO);
    }

    #[test]
    fn delays_are_spread_not_in_lockstep() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(800), ms(800));
        let delays: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        let lo = delays.iter().filter(|d| **d < ms(600)).count();
        let hi = delays.iter().filter(|d| **d >= ms(600)).count();
        // Uniform over [400, 800]: both halves well populated.
        assert!(lo > 50 && hi > 50, "{lo} below 600 ms, {hi} above");
        // Two nodes started apart do not share a sequence.
        std::thread::sleep(Duration::from_micros(10));
        let mut other = Backoff::new(ms(800), ms(800));
        let theirs: Vec<Duration> = (0..20).map(|_| other.next_delay()).collect();
        assert_ne!(theirs, delays[..20]);
    }

    #[test]
    fn the_etcd_bound_is_under_two_seconds() {
        // One connect timeout plus the longest delay: the catch-up bound.
        assert!(crate::store::etcd::CONNECT_TIMEOUT + ETCD_CAP < Duration::from_secs(2));
    }
}
