//! Tenant-facing billing reads.

use crate::auth::presented_key;
use crate::billing::balance_body;
use crate::error::HubError;
use crate::hub::Hub;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::Permission;

/// `GET /v1/billing/balance`, for `admin`, `billing` and `auditor` keys.
pub(crate) async fn balance(
    hub: web::Data<Hub>,
    req: HttpRequest,
) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let balance = hub
        .balance(
            key.tenant_id,
            Some(hub.key_auth(&key, Permission::ReadBilling)),
        )
        .await?;
    Ok(HttpResponse::Ok().json(balance_body(
        key.tenant_id,
        &balance,
        hub.now(),
        hub.limits().expiring_soon_window_secs,
    )))
}
