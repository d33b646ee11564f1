//! Suspending, resuming and closing a tenant (`/admin/v1/tenants/{id}/…`),
//! behind the operator token. Each is a tenant event decided by its actor, so
//! every hub process refuses the tenant's next request the same way.

use super::admin::operator;
use super::tenant_path;
use crate::actors::TenantReply;
use crate::body::{json_body, parse_json, read_limited};
use crate::error::HubError;
use crate::hub::Hub;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::tenant::{RemainingCredit, TenantStatus};
use domain::{ChangedBy, TenantId};
use serde::Deserialize;
use serde_json::{json, Value};

/// Lifecycle bodies hold a reason of at most `STATUS_REASON_MAX_CHARS`
/// characters: a few KiB bounds them with room for escapes.
const LIFECYCLE_BODY_MAX_BYTES: usize = 8 * 1024;

/// `forfeit` (the operator keeps the credit) or `refund` (paid back outside the
/// hub), as the API and the CLI spell it.
pub(crate) fn parse_remaining(raw: &str) -> Result<RemainingCredit, HubError> {
    match raw {
        "forfeit" => Ok(RemainingCredit::Forfeited),
        "refund" => Ok(RemainingCredit::Refunded),
        other => Err(HubError::BadRequest(format!(
            "remaining: {other:?} is neither \"forfeit\" nor \"refund\""
        ))),
    }
}

/// What the routes and the CLI print: `{"tenant_id","status","reason"?,"changed"}`
/// and, for a closed tenant, what became of its credit
/// (`"remaining": "forfeited"|"refunded"`, `"amount"`).
pub(crate) fn lifecycle_json(
    tenant_id: TenantId,
    reply: &TenantReply,
    remaining: Option<RemainingCredit>,
) -> Value {
    let mut body = json!({
        "tenant_id": tenant_id.to_string(),
        "status": reply.status.as_str(),
        // A repeated suspension or resumption records nothing.
        "changed": reply.events_written > 0,
    });
    if let Some(reason) = reply.status.reason() {
        body["reason"] = json!(reason);
    }
    if let (Some(remaining), TenantStatus::Closed { .. }) = (remaining, &reply.status) {
        body["remaining"] = json!(remaining.as_str());
        body["amount"] = json!(reply.balance.closed_out.to_decimal_string());
    }
    body
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Suspend {
    reason: String,
}

/// `POST /admin/v1/tenants/{id}/suspend` `{"reason"}`.
pub(crate) async fn suspend(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let tenant_id = tenant_path(&path)?;
    let body: Suspend = json_body(payload, LIFECYCLE_BODY_MAX_BYTES).await?;
    let reply = hub
        .suspend_tenant(tenant_id, body.reason, ChangedBy::OperatorApi)
        .await?;
    Ok(HttpResponse::Ok().json(lifecycle_json(tenant_id, &reply, None)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Resume {}

/// `POST /admin/v1/tenants/{id}/resume` `{}` (or no body).
pub(crate) async fn resume(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let tenant_id = tenant_path(&path)?;
    let body = read_limited(payload, LIFECYCLE_BODY_MAX_BYTES).await?;
    if !body.is_empty() {
        let Resume {} = parse_json(&body)?;
    }
    let reply = hub.resume_tenant(tenant_id, ChangedBy::OperatorApi).await?;
    Ok(HttpResponse::Ok().json(lifecycle_json(tenant_id, &reply, None)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Close {
    reason: String,
    /// `forfeit` or `refund`.
    remaining: String,
}

/// `POST /admin/v1/tenants/{id}/close` `{"reason", "remaining": "forfeit"|"refund"}`:
/// refused (409) while holds are open.
pub(crate) async fn close(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let tenant_id = tenant_path(&path)?;
    let body: Close = json_body(payload, LIFECYCLE_BODY_MAX_BYTES).await?;
    let remaining = parse_remaining(&body.remaining)?;
    let reply = hub
        .close_tenant(tenant_id, body.reason, remaining, ChangedBy::OperatorApi)
        .await?;
    Ok(HttpResponse::Ok().json(lifecycle_json(tenant_id, &reply, Some(remaining))))
}
