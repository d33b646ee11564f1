//! A tenant's projects (`/v1/projects`), managed with an `owner` or `admin`
//! key: keys grouped under scopes of their own (a budget, rates, models), which
//! bind every request of those keys together with each key's own scopes.

use super::key_scopes::{project_id, project_json, ScopeFields};
use crate::actors::{ProjectState, TenantOp};
use crate::auth::presented_key;
use crate::body::json_body;
use crate::error::HubError;
use crate::hub::Hub;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::tenant::{Scopes, TenantCommand};
use domain::{ChangedBy, Permission, ProjectId, TenantId};
use serde_json::{json, Value};

/// Project bodies are small.
const PROJECT_BODY_MAX_BYTES: usize = 64 * 1024;

fn object(body: Value) -> Result<serde_json::Map<String, Value>, HubError> {
    match body {
        Value::Object(object) => Ok(object),
        _ => Err(HubError::BadRequest(
            "the body must be a JSON object".into(),
        )),
    }
}

fn not_found(project_id: ProjectId) -> HubError {
    HubError::NotFound(format!("project {project_id} not found"))
}

/// Runs `op` as the caller's key and answers the tenant's live projects.
async fn projects_after(
    hub: &Hub,
    tenant_id: TenantId,
    op: TenantOp,
) -> Result<Vec<ProjectState>, HubError> {
    let reply = hub.call_tenant(tenant_id, op).await?;
    reply
        .projects
        .ok_or_else(|| HubError::Internal("the tenant answered without its projects".into()))
}

fn find(projects: Vec<ProjectState>, project_id: ProjectId) -> Result<ProjectState, HubError> {
    projects
        .into_iter()
        .find(|p| p.project_id == project_id)
        .ok_or_else(|| not_found(project_id))
}

/// `POST /v1/projects` `{"name", <scope fields>?}` → 201, the project.
pub(crate) async fn create(
    hub: web::Data<Hub>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let mut body = object(json_body(payload, PROJECT_BODY_MAX_BYTES).await?)?;
    let name = match body.remove("name") {
        Some(Value::String(name)) => name,
        _ => return Err(HubError::BadRequest("name: a string is required".into())),
    };
    let scopes = ScopeFields::from_object(body)?
        .into_patch()?
        .applied_to(&Scopes::default());
    let project_id = ProjectId::new_random();
    let op = TenantOp::Execute {
        auth: Some(hub.key_auth(&key, Permission::ManageKeys)),
        command: TenantCommand::CreateProject {
            project_id,
            name,
            scopes,
            at: hub.now(),
        },
        request_id: None,
        actor: ChangedBy::Key { key_id: key.key_id },
    };
    let project = find(projects_after(&hub, key.tenant_id, op).await?, project_id)?;
    Ok(HttpResponse::Created().json(project_json(&project, hub.now())))
}

/// `GET /v1/projects`: every live project (at most `PROJECTS_MAX`).
pub(crate) async fn list(hub: web::Data<Hub>, req: HttpRequest) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let op = TenantOp::ReadProjects {
        auth: Some(hub.key_auth(&key, Permission::ManageKeys)),
    };
    let now = hub.now();
    let data: Vec<Value> = projects_after(&hub, key.tenant_id, op)
        .await?
        .iter()
        .map(|p| project_json(p, now))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

/// `GET /v1/projects/{project_id}`.
pub(crate) async fn show(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let project_id = project_id(&path)?;
    let op = TenantOp::ReadProjects {
        auth: Some(hub.key_auth(&key, Permission::ManageKeys)),
    };
    let project = find(projects_after(&hub, key.tenant_id, op).await?, project_id)?;
    Ok(HttpResponse::Ok().json(project_json(&project, hub.now())))
}

/// `PATCH /v1/projects/{project_id}` `{<scope fields>}`.
pub(crate) async fn patch(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let project_id = project_id(&path)?;
    let patch = ScopeFields::patch_from_body(json_body(payload, PROJECT_BODY_MAX_BYTES).await?)?;
    let op = TenantOp::Execute {
        auth: Some(hub.key_auth(&key, Permission::ManageKeys)),
        command: TenantCommand::SetProjectScopes {
            project_id,
            patch,
            at: hub.now(),
        },
        request_id: None,
        actor: ChangedBy::Key { key_id: key.key_id },
    };
    let project = find(projects_after(&hub, key.tenant_id, op).await?, project_id)?;
    Ok(HttpResponse::Ok().json(project_json(&project, hub.now())))
}

/// `DELETE /v1/projects/{project_id}`: only once no live key is in it (409).
pub(crate) async fn delete(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let project_id = project_id(&path)?;
    let op = TenantOp::Execute {
        auth: Some(hub.key_auth(&key, Permission::ManageKeys)),
        command: TenantCommand::DeleteProject {
            project_id,
            at: hub.now(),
        },
        request_id: None,
        actor: ChangedBy::Key { key_id: key.key_id },
    };
    projects_after(&hub, key.tenant_id, op).await?;
    Ok(HttpResponse::Ok().json(json!({"project_id": project_id.to_string(), "deleted": true})))
}
