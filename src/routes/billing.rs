//! Tenant-facing billing reads.

use super::balance_json;
use crate::auth::presented_key;
use crate::error::HubError;
use crate::hub::Hub;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, TimeDelta, Utc};
use domain::tenant::Balance;
use domain::{Permission, TenantId};
use serde_json::{json, Value};

/// `GET /v1/billing/balance`, for `admin`, `billing` and `auditor` keys.
pub async fn balance(hub: web::Data<Hub>, req: HttpRequest) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let balance = hub
        .balance(
            key.tenant_id,
            Some(Hub::key_auth(&key, Permission::ReadBilling)),
        )
        .await?;
    Ok(HttpResponse::Ok().json(balance_body(
        key.tenant_id,
        &balance,
        hub.clock.now(),
        hub.limits.expiring_soon_window_secs,
    )))
}

/// A balance as the API and the CLI show it, in credits:
/// `{"tenant_id","granted","spent","expired","revoked","held","available","expiring_soon"}`,
/// where `available = granted − spent − expired − revoked − held`.
///
/// `expiring_soon` is the credit of lots that expire within `window_secs` of
/// `now` (lots past their expiry that the expiry pass has not reached yet
/// included). It depends on when it is read, so it is computed here, from the
/// lots, and never stored.
pub fn balance_body(
    tenant_id: TenantId,
    balance: &Balance,
    now: DateTime<Utc>,
    window_secs: u64,
) -> Value {
    let window = i64::try_from(window_secs)
        .ok()
        .and_then(TimeDelta::try_seconds)
        .unwrap_or(TimeDelta::MAX);
    let until = now
        .checked_add_signed(window)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let mut body = balance_json(tenant_id, balance);
    body["expired"] = json!(balance.expired.to_decimal_string());
    body["revoked"] = json!(balance.revoked.to_decimal_string());
    body["expiring_soon"] = json!(balance.expiring_by(until).to_decimal_string());
    body
}
