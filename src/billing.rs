//! A tenant's balance as the API, the CLI and an export check show it.
//!
//! One function, so the three agree to the field; it sits below the routes
//! because the offline export check (`crate::audit`) recomputes it too.

use chrono::{DateTime, TimeDelta, Utc};
use domain::tenant::Balance;
use domain::{Credits, TenantId};
use serde_json::{json, Value};

/// The figures every balance view shows, in credits:
/// `{"tenant_id","granted","spent","held","available"}`.
pub(crate) fn balance_json(tenant_id: TenantId, balance: &Balance) -> Value {
    json!({
        "tenant_id": tenant_id.to_string(),
        "granted": balance.granted.to_decimal_string(),
        "spent": balance.spent.to_decimal_string(),
        "held": balance.held.to_decimal_string(),
        "available": balance.available.to_decimal_string(),
    })
}

/// A balance as the API and the CLI show it, in credits:
/// `{"tenant_id","granted","spent","expired","revoked","held","available","expiring_soon"}`,
/// where `available = granted − spent − expired − revoked − closed_out − held`;
/// `closed_out` (the credit forfeited or refunded when the tenant closed) is
/// shown only when it is not zero.
///
/// `expiring_soon` is the credit of lots that expire within `window_secs` of
/// `now` (lots past their expiry that the expiry pass has not reached yet
/// included). It depends on when it is read, so it is computed here, from the
/// lots, and never stored.
pub(crate) fn balance_body(
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
    // Only a closed tenant has any: other balances keep their shape.
    if balance.closed_out != Credits::ZERO {
        body["closed_out"] = json!(balance.closed_out.to_decimal_string());
    }
    body
}
