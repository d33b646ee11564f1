//! The operator API (`/admin/v1/...`), behind the operator token.

use super::key_scopes::{issue_key_body, key_json, ScopeFields};
use super::tenant_path;
use crate::actors::TenantOp;
use crate::auth::check_operator;
use crate::billing::balance_body;
use crate::body::json_body;
use crate::error::HubError;
use crate::hub::{CredentialSpec, Hub, ProviderSpec};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use domain::tenant::TenantCommand;
use domain::{ChangedBy, Credits, KeyId, TenantId};
use serde::Deserialize;
use serde_json::json;

/// Operator bodies are small; this bounds them well below the model-request limit.
const ADMIN_BODY_MAX_BYTES: usize = 64 * 1024;

pub(super) fn operator(hub: &Hub, req: &HttpRequest) -> Result<(), HubError> {
    Ok(check_operator(req, hub.operator_token())?)
}

fn credits(field: &str, raw: &str) -> Result<Credits, HubError> {
    Credits::parse_positive(raw).map_err(|e| HubError::BadRequest(format!("{field}: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTenant {
    name: String,
    initial_credits: Option<String>,
}

pub(crate) async fn create_tenant(
    hub: web::Data<Hub>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let body: CreateTenant = json_body(payload, ADMIN_BODY_MAX_BYTES).await?;
    let initial = match body.initial_credits.as_deref() {
        None => hub.limits().initial_credits,
        Some("0") => Credits::ZERO,
        Some(raw) => credits("initial_credits", raw)?,
    };
    let tenant_id = hub
        .create_tenant(body.name, initial, ChangedBy::OperatorApi)
        .await?;
    Ok(HttpResponse::Created().json(json!({"tenant_id": tenant_id.to_string()})))
}

pub(crate) async fn issue_key(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let tenant_id = tenant_path(&path)?;
    let spec = issue_key_body(json_body(payload, ADMIN_BODY_MAX_BYTES).await?)?;
    let (_, key, state) = hub
        .issue_key(tenant_id, spec, None, ChangedBy::OperatorApi)
        .await?;
    let mut body = key_json(&state, hub.now());
    body["key"] = json!(key);
    Ok(HttpResponse::Created().json(body))
}

fn key_path(tenant: &str, key: &str) -> Result<(TenantId, KeyId), HubError> {
    let tenant_id = tenant_path(tenant)?;
    let key_id: KeyId = key
        .parse()
        .map_err(|_| HubError::NotFound("API key not found".into()))?;
    Ok((tenant_id, key_id))
}

/// `GET /admin/v1/tenants/{tenant_id}/keys/{key_id}`: the key, its scopes and
/// what it has used of them.
pub(crate) async fn show_key(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let (tenant, key) = path.into_inner();
    let (tenant_id, key_id) = key_path(&tenant, &key)?;
    let state = hub.key_state(tenant_id, key_id, None).await?;
    Ok(HttpResponse::Ok().json(key_json(&state, hub.now())))
}

/// `PATCH /admin/v1/tenants/{tenant_id}/keys/{key_id}`: changes the scope
/// fields present in the body.
pub(crate) async fn patch_key(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let (tenant, key) = path.into_inner();
    let (tenant_id, key_id) = key_path(&tenant, &key)?;
    let patch = ScopeFields::patch_from_body(json_body(payload, ADMIN_BODY_MAX_BYTES).await?)?;
    let state = hub
        .set_key_scopes(tenant_id, key_id, patch, None, ChangedBy::OperatorApi)
        .await?;
    Ok(HttpResponse::Ok().json(key_json(&state, hub.now())))
}

pub(crate) async fn revoke_key(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let (tenant, key) = path.into_inner();
    let (tenant_id, key_id) = key_path(&tenant, &key)?;
    hub.revoke_key(tenant_id, key_id, None, ChangedBy::OperatorApi)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"key_id": key_id.to_string(), "revoked": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantCredits {
    amount: String,
    idempotency_key: String,
    reason: String,
    /// RFC 3339; what is left of the grant then expires. Absent or null: never.
    expires_at: Option<String>,
}

/// Parses an RFC 3339 time (`2026-07-01T00:00:00Z`, any offset).
pub(crate) fn parse_time(field: &str, raw: &str) -> Result<DateTime<Utc>, HubError> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            HubError::BadRequest(format!(
                "{field}: {raw:?} is not an RFC 3339 time such as \"2026-07-01T00:00:00Z\" ({e})"
            ))
        })
}

pub(crate) async fn grant_credits(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let tenant_id = tenant_path(&path)?;
    let body: GrantCredits = json_body(payload, ADMIN_BODY_MAX_BYTES).await?;
    let amount = credits("amount", &body.amount)?;
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|raw| parse_time("expires_at", raw))
        .transpose()?;
    let (grant, _) = hub
        .grant(
            tenant_id,
            amount,
            body.idempotency_key.clone(),
            body.reason,
            expires_at,
            ChangedBy::OperatorApi,
        )
        .await?;
    // The same body for a repeated idempotency key: the original grant, unchanged.
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": tenant_id.to_string(),
        "idempotency_key": body.idempotency_key,
        "amount": grant.amount.to_decimal_string(),
        "reason": grant.reason,
        "expires_at": grant.expires_at.map(|t| t.to_rfc3339()),
        "granted_at": grant.at.to_rfc3339(),
    })))
}

pub(crate) async fn balance(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let tenant_id = tenant_path(&path)?;
    let balance = hub.balance(tenant_id, None).await?;
    Ok(HttpResponse::Ok().json(balance_body(
        tenant_id,
        &balance,
        hub.now(),
        hub.limits().expiring_soon_window_secs,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LowBalanceThreshold {
    /// Credits, a decimal string, zero or more; `null` (or absent): no notification.
    threshold: Option<String>,
}

/// `PUT /admin/v1/tenants/{id}/low_balance` `{"threshold": "5"}`: a low-balance
/// notification is sent when the tenant's available credit falls below it
/// (docs/billing.md, "Low-balance notifications"); `null` turns it off.
pub(crate) async fn set_low_balance(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let tenant_id = tenant_path(&path)?;
    let body: LowBalanceThreshold = json_body(payload, ADMIN_BODY_MAX_BYTES).await?;
    let threshold = body
        .threshold
        .as_deref()
        .map(|raw| {
            Credits::parse(raw)
                .ok()
                .filter(|t| *t >= Credits::ZERO)
                .ok_or_else(|| {
                    HubError::BadRequest(format!(
                        "threshold: {raw:?} is not a number of credits, zero or more, such as \"5\""
                    ))
                })
        })
        .transpose()?;
    let command = TenantCommand::SetLowBalanceThreshold {
        threshold,
        at: hub.now(),
    };
    let reply = hub
        .call_tenant(
            tenant_id,
            TenantOp::Execute {
                auth: None,
                command,
                request_id: None,
                actor: ChangedBy::OperatorApi,
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": tenant_id.to_string(),
        "threshold": threshold.map(Credits::to_decimal_string),
        "available": reply.balance.available.to_decimal_string(),
    })))
}

pub(crate) async fn add_provider(
    hub: web::Data<Hub>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let spec: ProviderSpec = json_body(payload, ADMIN_BODY_MAX_BYTES).await?;
    let row = hub.add_provider(spec).await?;
    Ok(HttpResponse::Created().json(json!({
        "provider_id": row.provider_id, "name": row.name, "kind": row.kind, "base_url": row.base_url, "region": row.region,
    })))
}

pub(crate) async fn list_providers(
    hub: web::Data<Hub>,
    req: HttpRequest,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let data: Vec<_> = hub
        .catalog()
        .snapshot()
        .providers
        .values()
        .map(|p| {
            let credentials: Vec<_> = p
                .credentials
                .iter()
                .map(|c| json!({"credential_id": c.credential_id, "weight": c.weight, "disabled_reason": c.disabled_reason}))
                .collect();
            json!({"provider_id": p.provider_id, "name": p.name, "kind": p.kind.as_str(), "base_url": p.base_url, "region": p.region, "credentials": credentials})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"data": data})))
}

/// `POST /admin/v1/providers/{name}/credentials`: another credential for rotation.
pub(crate) async fn add_credential(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let spec: CredentialSpec = json_body(payload, ADMIN_BODY_MAX_BYTES).await?;
    let credential_id = hub.add_credential(&path, spec).await?;
    Ok(HttpResponse::Created()
        .json(json!({"credential_id": credential_id, "provider": path.into_inner()})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CredentialState {
    enabled: bool,
}

/// `PUT /admin/v1/credentials/{id}` `{"enabled": true}`: re-enables a credential the
/// upstream had rejected (after the operator fixed it), or disables one.
pub(crate) async fn set_credential_state(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let state: CredentialState = json_body(payload, ADMIN_BODY_MAX_BYTES).await?;
    let reason = (!state.enabled).then_some("disabled by the operator");
    hub.set_credential_disabled(&path, reason).await?;
    Ok(HttpResponse::Ok()
        .json(json!({"credential_id": path.into_inner(), "enabled": state.enabled})))
}
