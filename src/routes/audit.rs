//! The audit export: a tenant's events exactly as stored, with their chain hashes,
//! so an auditor can verify and replay them offline (`aigne-hub audit verify
//! --export FILE`). Read-only; a key only ever reads its own tenant.

use super::tenant_path;
use crate::actors::TenantOp;
use crate::audit::EXPORT_PAGE_EVENTS_MAX;
use crate::auth::{check_operator, presented_key};
use crate::error::HubError;
use crate::hub::Hub;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::{Permission, TenantId};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    /// Events after this sequence number (0: from the first).
    #[serde(default)]
    after: usize,
    limit: Option<usize>,
}

/// `GET /v1/audit/events?after=&limit=`, for `admin` and `auditor` keys.
pub(crate) async fn events(
    hub: web::Data<Hub>,
    req: HttpRequest,
) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let query = page_query(&req)?;
    let auth = Some(hub.key_auth(&key, Permission::ReadAudit));
    hub.call_tenant(key.tenant_id, TenantOp::Read { auth })
        .await?;
    page(&hub, key.tenant_id, query).await
}

/// `GET /admin/v1/tenants/{id}/audit/events?after=&limit=`, for the operator.
pub(crate) async fn admin_events(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    check_operator(&req, hub.operator_token())?;
    let tenant_id = tenant_path(&path)?;
    let query = page_query(&req)?;
    hub.call_tenant(tenant_id, TenantOp::Read { auth: None })
        .await?;
    page(&hub, tenant_id, query).await
}

fn page_query(req: &HttpRequest) -> Result<PageQuery, HubError> {
    let query = web::Query::<PageQuery>::from_query(req.query_string())
        .map_err(|e| HubError::BadRequest(format!("query: {e}")))?
        .into_inner();
    if query.limit == Some(0) || query.limit.is_some_and(|l| l > EXPORT_PAGE_EVENTS_MAX) {
        return Err(HubError::BadRequest(format!(
            "`limit` must be from 1 to {EXPORT_PAGE_EVENTS_MAX}"
        )));
    }
    Ok(query)
}

async fn page(hub: &Hub, tenant_id: TenantId, query: PageQuery) -> Result<HttpResponse, HubError> {
    let limit = query.limit.unwrap_or(EXPORT_PAGE_EVENTS_MAX);
    let events = hub
        .event_log()
        .raw_tenant_events(tenant_id, query.after, limit)
        .await?;
    // A full page may have more behind it; a short one is the end of the stream.
    let next_after = (events.len() == limit).then(|| events.last().map(|e| e.sequence));
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": tenant_id.to_string(),
        "data": events,
        "next_after": next_after.flatten(),
    })))
}
