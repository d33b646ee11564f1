//! Payment webhooks: `POST /webhooks/payments` (docs/billing.md, "Payment webhooks").
//!
//! The payment system tells the hub that a payment succeeded (credits are granted)
//! or was refunded (credits are revoked). There is no bearer token: the request is
//! authenticated by a signature over its raw body,
//!
//! ```text
//! AIGNE-Hub-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]
//! v1 = hex(HMAC-SHA256(secret, t + "." + raw body))
//! ```
//!
//! accepted when any `v1` matches any configured secret (rotation) and `t` is
//! within the tolerance of the hub's clock (a captured delivery cannot be replayed
//! later). The event `id` is a permanent idempotency key, kept by the tenant's
//! aggregate: a redelivery is answered 200 and changes nothing.

use super::tenant_path;
use crate::actors::TenantOp;
use crate::body::{parse_json, read_limited};
use crate::config::WebhookSettings;
use crate::error::{HubError, WebhookError};
use crate::hub::Hub;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use domain::tenant::TenantCommand;
use domain::{ChangedBy, Credits};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

/// The signature header.
pub(crate) const SIGNATURE_HEADER: &str = "AIGNE-Hub-Signature";
/// Webhook bodies are a few hundred bytes; this bounds them well above that.
pub(crate) const WEBHOOK_BODY_MAX_BYTES: usize = 64 * 1024;
/// `v1` values looked at in one header at most (two while a secret rotates).
pub(crate) const SIGNATURES_MAX: usize = 8;

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhooks/payments")
            .route(web::post().to(payments))
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(WebhookError::Hub(HubError::MethodNotAllowed))
            })),
    );
}

/// The body. Fields other than these are ignored (they are signed all the same).
#[derive(Deserialize)]
struct PaymentEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    tenant_id: String,
    /// Credits, as a decimal string.
    amount: String,
    /// `payment.succeeded`: the payment's id (defaults to `id`);
    /// `payment.refunded`: the payment refunded (required).
    #[serde(default)]
    payment_id: Option<String>,
}

const MALFORMED: &str = "malformed AIGNE-Hub-Signature header: expected t=<unix seconds>,v1=<hex>";

/// Checks an `AIGNE-Hub-Signature` header against the raw body at `now_unix`.
pub(crate) fn verify_signature(
    header: Option<&str>,
    body: &[u8],
    settings: &WebhookSettings,
    now_unix: i64,
) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::InvalidSignature(
        "the AIGNE-Hub-Signature header is missing",
    ))?;
    let mut timestamp: Option<&str> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let (name, value) = part
            .trim()
            .split_once('=')
            .ok_or(WebhookError::InvalidSignature(MALFORMED))?;
        let value = value.trim();
        match name.trim() {
            "t" if timestamp.is_none() => timestamp = Some(value),
            "t" => return Err(WebhookError::InvalidSignature(MALFORMED)),
            // A value that is not hex cannot match; others may.
            "v1" if signatures.len() < SIGNATURES_MAX => {
                if let Ok(signature) = hex::decode(value) {
                    signatures.push(signature);
                }
            }
            // Other schemes, and v1 values past the limit, are ignored.
            _ => {}
        }
    }
    let timestamp = timestamp
        .filter(|t| !t.is_empty() && t.len() <= 18 && t.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(WebhookError::InvalidSignature(MALFORMED))?;
    let seconds: i64 = timestamp
        .parse()
        .map_err(|_| WebhookError::InvalidSignature(MALFORMED))?;
    if signatures.is_empty() {
        return Err(WebhookError::InvalidSignature(
            "no v1 signature in the header",
        ));
    }
    if now_unix.abs_diff(seconds) > settings.tolerance_secs {
        return Err(WebhookError::InvalidSignature(
            "the signed timestamp is too far from the hub's clock (a replayed or delayed delivery)",
        ));
    }
    for secret in &settings.secrets {
        let mac = signature_mac(secret, timestamp, body);
        // `verify_slice` compares in constant time.
        if signatures
            .iter()
            .any(|signature| mac.clone().verify_slice(signature).is_ok())
        {
            return Ok(());
        }
    }
    Err(WebhookError::InvalidSignature(
        "no v1 signature matches a configured secret",
    ))
}

/// `HMAC-SHA256(secret, t + "." + body)`, the `v1` scheme of `AIGNE-Hub-Signature`,
/// before finalization.
fn signature_mac(secret: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// An `AIGNE-Hub-Signature` header value, `t=<timestamp>,v1=<hex>`, for `body`
/// signed with `secret` at `timestamp` (unix seconds). The hub signs its outbound
/// webhooks (low-balance notifications) with it.
pub(crate) fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    let v1 = hex::encode(signature_mac(secret, &t, body).finalize().into_bytes());
    format!("t={t},v1={v1}")
}

/// `POST /webhooks/payments`.
pub(crate) async fn payments(
    hub: web::Data<Hub>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, WebhookError> {
    let settings = &hub.limits().webhooks;
    if settings.secrets.is_empty() {
        return Err(WebhookError::NotConfigured);
    }
    let body = read_limited(payload, WEBHOOK_BODY_MAX_BYTES).await?;
    let header = req
        .headers()
        .get(SIGNATURE_HEADER)
        .map(|value| {
            value
                .to_str()
                .map_err(|_| WebhookError::InvalidSignature(MALFORMED))
        })
        .transpose()?;
    verify_signature(header, &body, settings, Utc::now().timestamp())?;

    // Authenticated: now the body is worth reading.
    let event: PaymentEvent = parse_json(&body)?;
    let amount = Credits::parse_positive(&event.amount)
        .map_err(|e| HubError::BadRequest(format!("amount: {e}")))?;
    let tenant_id = tenant_path(&event.tenant_id)?;
    let at = hub.now();
    let command = match event.kind.as_str() {
        "payment.succeeded" => TenantCommand::RecordPayment {
            payment_event_id: event.id.clone(),
            payment_id: event.payment_id,
            amount,
            at,
        },
        "payment.refunded" => TenantCommand::RefundPayment {
            payment_event_id: event.id.clone(),
            payment_id: event.payment_id.ok_or_else(|| {
                HubError::BadRequest(
                    "payment_id is required for payment.refunded: it names the payment refunded"
                        .into(),
                )
            })?,
            amount,
            at,
        },
        other => {
            let handled = "\"payment.succeeded\" or \"payment.refunded\"";
            let message = format!("type {other:?} is not handled; expected {handled}");
            return Err(HubError::BadRequest(message).into());
        }
    };
    let reply = hub
        .call_tenant(
            tenant_id,
            TenantOp::Execute {
                auth: None,
                command,
                request_id: None,
                actor: ChangedBy::PaymentWebhook,
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "received": true,
        // Nothing was written: this event (or this payment) was already applied.
        "duplicate": reply.events_written == 0,
        "id": event.id,
        "type": event.kind,
        "tenant_id": tenant_id.to_string(),
        "available": reply.balance.available.to_decimal_string(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, t: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn settings(secrets: &[&str]) -> WebhookSettings {
        WebhookSettings {
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            ..WebhookSettings::default()
        }
    }

    fn kind(result: Result<(), WebhookError>) -> Result<(), &'static str> {
        result.map_err(|e| match e {
            WebhookError::InvalidSignature(why) => why,
            other => panic!("unexpected {other:?}"),
        })
    }

    #[test]
    fn a_signature_by_any_configured_secret_in_any_v1_is_accepted() {
        let body = br#"{"id":"evt_1"}"#;
        let now = 1_767_225_600;
        let good = sign("new", "1767225600", body);
        let other = sign("unknown", "1767225600", body);
        let s = settings(&["old", "new"]);
        let header = format!("t=1767225600,v1={good}");
        assert_eq!(kind(verify_signature(Some(&header), body, &s, now)), Ok(()));
        let header = format!("t=1767225600, v1={other}, v0=zz, v1={good}");
        assert_eq!(kind(verify_signature(Some(&header), body, &s, now)), Ok(()));
        let header = format!("t=1767225600,v1={other}");
        assert!(kind(verify_signature(Some(&header), body, &s, now)).is_err());
        // Another body, or the same signature under another timestamp, fails.
        let header = format!("t=1767225600,v1={good}");
        assert!(kind(verify_signature(Some(&header), b"{}", &s, now)).is_err());
        let header = format!("t=1767225601,v1={good}");
        assert!(kind(verify_signature(Some(&header), body, &s, now)).is_err());
    }

    #[test]
    fn signature_header_is_accepted_by_verify_signature() {
        let body = br#"{"id":"x"}"#;
        let header = signature_header("k", 1_767_225_600, body);
        assert_eq!(
            header,
            format!("t=1767225600,v1={}", sign("k", "1767225600", body))
        );
        let s = settings(&["k"]);
        assert_eq!(
            kind(verify_signature(Some(&header), body, &s, 1_767_225_600)),
            Ok(())
        );
    }

    #[test]
    fn stale_missing_or_malformed_headers_are_refused() {
        let body = b"{}";
        let s = settings(&["k"]);
        let now = 1_767_225_600;
        let at = |t: i64| format!("t={t},v1={}", sign("k", &t.to_string(), body));
        assert!(kind(verify_signature(Some(&at(now - 300)), body, &s, now)).is_ok());
        assert!(kind(verify_signature(Some(&at(now + 300)), body, &s, now)).is_ok());
        assert!(kind(verify_signature(Some(&at(now - 301)), body, &s, now)).is_err());
        assert!(kind(verify_signature(Some(&at(now + 301)), body, &s, now)).is_err());
        for bad in ["", "t=", "v1=00", "t=abc,v1=00", "t=1,t=1,v1=00", "garbage"] {
            assert!(
                kind(verify_signature(Some(bad), body, &s, now)).is_err(),
                "{bad}"
            );
        }
        assert!(kind(verify_signature(None, body, &s, now)).is_err());
        assert!(kind(verify_signature(Some(&format!("t={now}")), body, &s, now)).is_err());
    }
}
