//! A tenant's own keys (`/v1/keys`), managed with an `owner` or `admin` key:
//! never beyond the caller's own power (a role it may manage, scopes within
//! its own; `Tenant::may_manage_key`). The same bodies as the operator's
//! `/admin/v1/tenants/{id}/keys` routes.

use super::key_scopes::{issue_key_body, key_json, ScopeFields};
use super::tenants::{keys_json, PageQuery};
use crate::auth::{presented_key, PresentedKey};
use crate::body::json_body;
use crate::error::HubError;
use crate::hub::Hub;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::{ChangedBy, KeyId, Permission};
use serde_json::json;

/// Key bodies are small.
const KEY_BODY_MAX_BYTES: usize = 64 * 1024;

fn key_id_path(raw: &str) -> Result<KeyId, HubError> {
    raw.parse()
        .map_err(|_| HubError::NotFound("API key not found".into()))
}

fn caller(key: &PresentedKey) -> ChangedBy {
    ChangedBy::Key { key_id: key.key_id }
}

/// `POST /v1/keys` `{"name","role", <scope fields>?}` → 201, the key shown once.
pub(crate) async fn issue(
    hub: web::Data<Hub>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let auth = Some(hub.key_auth(&key, Permission::ManageKeys));
    let spec = issue_key_body(json_body(payload, KEY_BODY_MAX_BYTES).await?)?;
    let (_, secret, state) = hub
        .issue_key(key.tenant_id, spec, auth, caller(&key))
        .await?;
    let mut body = key_json(&state, hub.now());
    body["key"] = json!(secret);
    Ok(HttpResponse::Created().json(body))
}

/// `GET /v1/keys?cursor=&limit=`: the tenant's keys, newest first, without
/// secrets (from the directory, which trails the log by a moment).
pub(crate) async fn list(
    hub: web::Data<Hub>,
    req: HttpRequest,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    // Checks the key and its role against the tenant's current state.
    hub.balance(
        key.tenant_id,
        Some(hub.key_auth(&key, Permission::ManageKeys)),
    )
    .await?;
    let page = keys_json(&hub, key.tenant_id, query.into_inner()).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// `GET /v1/keys/{key_id}`: the key with its scopes and usage.
pub(crate) async fn show(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let key_id = key_id_path(&path)?;
    let auth = Some(hub.key_auth(&key, Permission::ManageKeys));
    let state = hub.key_state(key.tenant_id, key_id, auth).await?;
    Ok(HttpResponse::Ok().json(key_json(&state, hub.now())))
}

/// `PATCH /v1/keys/{key_id}` `{<scope fields>}`.
pub(crate) async fn patch(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let key_id = key_id_path(&path)?;
    let patch = ScopeFields::patch_from_body(json_body(payload, KEY_BODY_MAX_BYTES).await?)?;
    let auth = Some(hub.key_auth(&key, Permission::ManageKeys));
    let state = hub
        .set_key_scopes(key.tenant_id, key_id, patch, auth, caller(&key))
        .await?;
    Ok(HttpResponse::Ok().json(key_json(&state, hub.now())))
}

/// `DELETE /v1/keys/{key_id}`: revokes the key.
pub(crate) async fn revoke(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let key_id = key_id_path(&path)?;
    let auth = Some(hub.key_auth(&key, Permission::ManageKeys));
    hub.revoke_key(key.tenant_id, key_id, auth, caller(&key))
        .await?;
    Ok(HttpResponse::Ok().json(json!({"key_id": key_id.to_string(), "revoked": true})))
}
