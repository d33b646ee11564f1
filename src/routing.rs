//! Which upstream to try for a request, and what to do when a try fails.
//!
//! A request has candidates: its model, then the model's fallbacks. Each try picks
//! one of the candidate's credentials by weight, skipping disabled ones and
//! preferring those not cooling down after a 429; a retry never goes to a
//! credential that is cooling down. A failed try is classified:
//! a bad request stops everything (another upstream would refuse it too), a
//! rejected credential is disabled and the next credential or candidate is tried,
//! rate limits and transient failures are retried with capped exponential backoff
//! while the process-wide retry budget allows, then the next candidate is tried.

use crate::catalog::{CredentialEntry, ProviderEntry};
use crate::providers::{Provider, UpstreamError};
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Retry budget, in thousandths of a retry: every request earns a tenth of a
/// retry, every retry costs one, and at most this many can be saved up. So retries
/// stay under ~10% of traffic, with a burst allowance for quiet periods.
const BUDGET_MAX_MILLI: i64 = 100_000;
const BUDGET_EARNED_PER_REQUEST_MILLI: i64 = 100;
const BUDGET_COST_PER_RETRY_MILLI: i64 = 1_000;
/// Upstream attempts one request may make at most, over all its candidates.
pub(crate) const ATTEMPTS_PER_REQUEST_MAX: u32 = 8;
/// Credentials remembered in the cool-down table at most.
const COOLDOWNS_MAX: usize = 10_000;

/// What a failed try means for the next one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The request itself is wrong (or the capability is not offered): stop.
    Fatal,
    /// The credential was rejected (401/403): disable it, try another.
    CredentialRejected,
    /// 429: cool the credential down, retry after backoff.
    RateLimited,
    /// 5xx, connection failure, timeout: retry after backoff.
    Transient,
}

pub(crate) fn classify(error: &UpstreamError) -> Failure {
    match error {
        UpstreamError::Status {
            status: 401 | 403, ..
        } => Failure::CredentialRejected,
        UpstreamError::Status { status: 429, .. } => Failure::RateLimited,
        UpstreamError::Status { status, .. } if *status >= 500 => Failure::Transient,
        UpstreamError::Timeout | UpstreamError::Connect(_) => Failure::Transient,
        UpstreamError::Protocol(_) => Failure::Transient,
        // Another candidate would likely send as much again (and be paid for it).
        UpstreamError::Status { .. }
        | UpstreamError::Refused(_)
        | UpstreamError::Unsupported { .. }
        | UpstreamError::AnswerTooLarge { .. } => Failure::Fatal,
    }
}

pub(crate) struct Router {
    cooldowns: Mutex<HashMap<String, Instant>>,
    budget_milli: AtomicI64,
}

impl Default for Router {
    fn default() -> Self {
        Self {
            cooldowns: Mutex::default(),
            budget_milli: AtomicI64::new(BUDGET_MAX_MILLI),
        }
    }
}

impl Router {
    /// Picks a credential of `provider` by weight among the enabled ones, those not
    /// cooling down first. When all of them are cooling down, a candidate's first
    /// try goes to the one ready soonest (its limit may have lifted; refusing
    /// without asking would fail every request for the whole cool-down), but a
    /// retry gets `None`: the upstream has just said to wait, so the request moves
    /// on to its next candidate instead. `None` also when every credential is
    /// disabled. `excluded`: credentials rejected earlier in the same request.
    pub(crate) fn pick(
        &self,
        provider: &ProviderEntry,
        excluded: &[String],
        retry: bool,
    ) -> Option<Provider> {
        let enabled: Vec<&CredentialEntry> = provider
            .credentials
            .iter()
            .filter(|c| c.disabled_reason.is_none() && !excluded.contains(&c.credential_id))
            .collect();
        if enabled.is_empty() {
            return None;
        }
        let now = Instant::now();
        let cooldowns = self.cooldowns.lock().expect("cooldown lock poisoned");
        let until = |c: &CredentialEntry| {
            cooldowns
                .get(&c.credential_id)
                .copied()
                .filter(|t| *t > now)
        };
        let ready: Vec<&CredentialEntry> = enabled
            .iter()
            .copied()
            .filter(|c| until(c).is_none())
            .collect();
        let chosen = if ready.is_empty() {
            if retry {
                return None;
            }
            *enabled.iter().min_by_key(|c| until(c))?
        } else {
            let total: u64 = ready.iter().map(|c| c.weight.max(1) as u64).sum();
            let mut ticket = rand::thread_rng().gen_range(0..total);
            let mut chosen = ready[0];
            for c in &ready {
                let w = c.weight.max(1) as u64;
                if ticket < w {
                    chosen = c;
                    break;
                }
                ticket -= w;
            }
            chosen
        };
        Some(provider.with_credential(chosen))
    }

    pub(crate) fn cool_down(&self, credential_id: &str, for_ms: u64) {
        let mut cooldowns = self.cooldowns.lock().expect("cooldown lock poisoned");
        let now = Instant::now();
        if cooldowns.len() >= COOLDOWNS_MAX {
            cooldowns.retain(|_, until| *until > now);
        }
        cooldowns.insert(
            credential_id.to_string(),
            now + Duration::from_millis(for_ms),
        );
    }

    /// Every request earns a little retry budget.
    pub(crate) fn earn(&self) {
        let _ = self
            .budget_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((b + BUDGET_EARNED_PER_REQUEST_MILLI).min(BUDGET_MAX_MILLI))
            });
    }

    /// Takes one retry from the budget; false when it is spent.
    pub(crate) fn take_retry(&self) -> bool {
        self.budget_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= BUDGET_COST_PER_RETRY_MILLI).then_some(b - BUDGET_COST_PER_RETRY_MILLI)
            })
            .is_ok()
    }
}

/// Capped exponential backoff before retry number `retry` (0-based).
pub(crate) fn backoff(retry: u32, base_ms: u64, max_ms: u64) -> Duration {
    Duration::from_millis(base_ms.saturating_mul(1u64 << retry.min(16)).min(max_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Secret;
    use crate::providers::{Credential, ProviderKind};

    fn entry(weights: &[(u32, bool)]) -> ProviderEntry {
        ProviderEntry {
            provider_id: "p".into(),
            name: "p".into(),
            kind: ProviderKind::OpenAi,
            base_url: "http://127.0.0.1:1".into(),
            region: None,
            credentials: weights
                .iter()
                .enumerate()
                .map(|(i, (w, disabled))| CredentialEntry {
                    credential_id: format!("c{i}"),
                    weight: *w,
                    credential: Credential::ApiKey {
                        api_key: Secret::new(format!("k{i}")),
                    },
                    disabled_reason: disabled.then(|| "401".to_string()),
                })
                .collect(),
        }
    }

    #[test]
    fn rotation_follows_weights_and_skips_disabled_and_cooling_credentials() {
        let router = Router::default();
        let p = entry(&[(3, false), (1, false), (5, true)]);
        let mut counts = HashMap::new();
        for _ in 0..4_000 {
            *counts
                .entry(router.pick(&p, &[], false).unwrap().credential_id)
                .or_insert(0) += 1;
        }
        assert!(
            !counts.contains_key("c2"),
            "disabled credentials are never used"
        );
        let ratio = counts["c0"] as f64 / counts["c1"] as f64;
        assert!((2.4..3.8).contains(&ratio), "3:1 weights, got {counts:?}");
        router.cool_down("c0", 60_000);
        assert!((0..50).all(|_| router.pick(&p, &[], false).unwrap().credential_id == "c1"));
        assert!(router.pick(&entry(&[(1, true)]), &[], false).is_none());
        assert!((0..50).all(|_| router
            .pick(&p, &["c1".to_string()], false)
            .unwrap()
            .credential_id
            == "c0"));
    }

    #[test]
    fn a_retry_never_goes_to_a_credential_cooling_down() {
        let router = Router::default();
        let p = entry(&[(1, false), (1, false)]);
        router.cool_down("c0", 60_000);
        assert!((0..50).all(|_| router.pick(&p, &[], true).unwrap().credential_id == "c1"));
        router.cool_down("c1", 30_000);
        assert!(
            router.pick(&p, &[], true).is_none(),
            "every credential cooling down: no retry"
        );
        assert_eq!(
            router.pick(&p, &[], false).unwrap().credential_id,
            "c1",
            "a first try goes to the one ready soonest"
        );
    }

    #[test]
    fn failures_are_classified_and_backoff_is_capped() {
        assert_eq!(
            classify(&UpstreamError::Status {
                status: 400,
                code: None,
                message: String::new()
            }),
            Failure::Fatal
        );
        assert_eq!(
            classify(&UpstreamError::Status {
                status: 403,
                code: None,
                message: String::new()
            }),
            Failure::CredentialRejected
        );
        assert_eq!(
            classify(&UpstreamError::Status {
                status: 429,
                code: None,
                message: String::new()
            }),
            Failure::RateLimited
        );
        assert_eq!(
            classify(&UpstreamError::Status {
                status: 529,
                code: None,
                message: String::new()
            }),
            Failure::Transient
        );
        assert_eq!(classify(&UpstreamError::Timeout), Failure::Transient);
        assert_eq!(backoff(0, 100, 1_000), Duration::from_millis(100));
        assert_eq!(backoff(3, 100, 1_000), Duration::from_millis(800));
        assert_eq!(backoff(30, 100, 1_000), Duration::from_millis(1_000));
    }

    #[test]
    fn retry_budget_runs_out_and_refills_from_traffic() {
        let router = Router::default();
        let mut retries = 0;
        while router.take_retry() {
            retries += 1;
        }
        assert_eq!(retries, 100);
        for _ in 0..10 {
            router.earn();
        }
        assert!(router.take_retry(), "ten requests earn one retry");
        assert!(!router.take_retry());
    }
}
