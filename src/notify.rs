//! Low-balance notifications: an outbound webhook for every `LowBalanceCrossed`
//! event (docs/billing.md, "Low-balance notifications").
//!
//! The tenant aggregate decides the crossing and appends the event in the same
//! commit as the events that caused it, so the event log is the outbox. This loop
//! reads the log after its own checkpoint (`low_balance_webhook` in the projection
//! checkpoints, with no rows), POSTs each crossing, signed like the payment
//! webhooks (`AIGNE-Hub-Signature: t=<unix>,v1=<hex>`), and moves the checkpoint past
//! a page only once every crossing in it was answered 2xx:
//!
//! - at least once: a crash between a delivery and the checkpoint's move delivers
//!   again; receivers deduplicate by the notification's `id`
//!   (`<tenant_id>:<sequence>`, stable across redeliveries);
//! - a receiver that fails is retried with capped exponential backoff, forever:
//!   later notifications wait behind it (they stay in order);
//! - several hub processes may run the loop at once: each may deliver the same
//!   crossing (duplicates are allowed), and the checkpoint's compare-and-set lets
//!   only one of them move it past a page.
//!
//! Without `AIGNE_HUB_LOW_BALANCE_WEBHOOK_URL` the loop does not run (and its
//! checkpoint does not move: configured later, it delivers the crossings recorded
//! meanwhile).

// Kept reachable here too: the settings moved to `config`, the bottom layer.
pub use crate::config::NotifySettings;
use crate::routes::webhooks::{signature_header, SIGNATURE_HEADER};
use crate::store::{Store, StoreError, StoredEvent, LOG_PAGE_MAX_EVENTS};
use chrono::{DateTime, Utc};
use domain::tenant::TenantEvent;
use domain::{Credits, TenantId};
use std::sync::Arc;
use std::time::Duration;

/// The loop's checkpoint, among the projections' (it has no rows).
pub const CHECKPOINT_NAME: &str = "low_balance_webhook";
/// The notification's `type`.
pub(crate) const EVENT_TYPE: &str = "balance.low";
/// Connecting to the receiver.
pub(crate) const DELIVERY_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// One whole delivery (request and answer); past it, the delivery failed.
pub(crate) const DELIVERY_TIMEOUT_MS: u64 = 10_000;

/// One notification, as the receiver gets it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct LowBalance {
    /// `<tenant_id>:<sequence>`: the crossing's event; the same on every delivery.
    pub(crate) id: String,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) tenant_id: TenantId,
    /// Credits, decimal strings.
    pub(crate) threshold: String,
    pub(crate) available: String,
    pub(crate) at: DateTime<Utc>,
}

impl LowBalance {
    /// The notification for a logged event, if it is a crossing.
    pub(crate) fn from_event(e: &StoredEvent) -> Option<Self> {
        let TenantEvent::LowBalanceCrossed {
            threshold_pico,
            available_pico,
            at,
        } = &e.event
        else {
            return None;
        };
        Some(Self {
            id: format!("{}:{}", e.tenant_id, e.sequence),
            kind: EVENT_TYPE,
            tenant_id: e.tenant_id,
            threshold: credits(*threshold_pico),
            available: credits(*available_pico),
            at: *at,
        })
    }
}

fn credits(c: Credits) -> String {
    c.to_decimal_string()
}

/// Delivers low-balance notifications from the log (see the module's doc).
pub(crate) struct Notifier {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    url: reqwest::Url,
    secret: String,
    settings: NotifySettings,
}

impl Notifier {
    /// `None` when no URL is configured; an error when the settings are wrong.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        settings: &NotifySettings,
    ) -> anyhow::Result<Option<Self>> {
        let Some((url, secret)) = settings.target()? else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(DELIVERY_CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(DELIVERY_TIMEOUT_MS))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Some(Self {
            store,
            client,
            url,
            secret,
            settings: settings.clone(),
        }))
    }

    /// Runs until its task is aborted (when the hub stops).
    pub(crate) async fn run(self) {
        loop {
            if let Err(e) = self.deliver_pending().await {
                tracing::warn!(error = %e, "low-balance notifications: reading the log failed; retrying");
            }
            tokio::time::sleep(Duration::from_millis(self.settings.poll_ms)).await;
        }
    }

    /// Delivers every crossing after the checkpoint, page by page, moving the
    /// checkpoint past each page once all its crossings were delivered. Returns how
    /// many notifications were delivered.
    pub(crate) async fn deliver_pending(&self) -> Result<u64, StoreError> {
        let mut delivered = 0;
        loop {
            let from = self.store.projection_checkpoint(CHECKPOINT_NAME).await?;
            let page = self.store.read_log(from, None, LOG_PAGE_MAX_EVENTS).await?;
            let Some(last) = page.last() else {
                return Ok(delivered);
            };
            for notification in page.iter().filter_map(LowBalance::from_event) {
                self.deliver(&notification).await;
                delivered += 1;
            }
            // False: another process moved it first (and delivered the same page,
            // or will); the next round starts from where it is now.
            self.store
                .commit_projection(CHECKPOINT_NAME, from, last.log_position, &[])
                .await?;
        }
    }

    /// Delivers one notification, retrying until the receiver answers 2xx.
    async fn deliver(&self, notification: &LowBalance) {
        let body = serde_json::to_vec(notification).expect("a notification serializes");
        let mut delay = self.settings.retry_base_delay_ms;
        let mut failures: u32 = 0;
        loop {
            match self.post(&body).await {
                Ok(()) => return,
                Err(why) => {
                    failures += 1;
                    tracing::warn!(
                        id = %notification.id,
                        failures,
                        retry_in_ms = delay,
                        "low-balance notification not delivered: {why}"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(delay)).await;
            delay = delay
                .saturating_mul(2)
                .min(self.settings.retry_max_delay_ms);
        }
    }

    /// One POST, signed now.
    async fn post(&self, body: &[u8]) -> Result<(), String> {
        let header = signature_header(&self.secret, Utc::now().timestamp(), body);
        let answer = self
            .client
            .post(self.url.clone())
            .header(SIGNATURE_HEADER, header)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            // Without the URL: it may carry credentials.
            .map_err(|e| e.without_url().to_string())?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_needs_a_secret_and_http() {
        let mut s = NotifySettings::default();
        assert!(s.target().unwrap().is_none());
        s.url = Some("http://127.0.0.1:9/hook".into());
        assert!(s.target().is_err());
        s.secret = Some("k".into());
        assert!(s.target().unwrap().is_some());
        s.url = Some("ftp://x/".into());
        assert!(s.target().is_err());
        assert!(!format!("{s:?}").contains("\"k\""));
    }
}
