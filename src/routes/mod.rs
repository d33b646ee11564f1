//! HTTP routes. Handlers are thin: they parse, call [`crate::hub::Hub`] or
//! [`crate::ingress`], and shape JSON. Errors become HTTP in `crate::error`.

pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod billing;
mod csv;
pub(crate) mod explain;
pub(crate) mod invoices;
pub(crate) mod key_scopes;
pub(crate) mod keys;
pub(crate) mod models;
pub(crate) mod prices;
pub(crate) mod projects;
pub(crate) mod tenant_lifecycle;
pub(crate) mod tenants;
pub(crate) mod usage;
pub(crate) mod webhooks;

use crate::error::HubError;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse};
use domain::{RequestId, TenantId};
use serde_json::json;

/// Adds `x-request-id` to every answer of an admitted request that lacks it (its
/// error answers: a 400, 429 or 502 from the upstream, a 503), whatever its
/// protocol: `ingress::admit` leaves the id in the request's extensions once the
/// hold is placed, so the id always names a request `GET /v1/billing/requests/{id}`
/// explains.
pub(crate) async fn request_id_header(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut response = next.call(req).await?;
    let request_id = response.request().extensions().get::<RequestId>().copied();
    let name = HeaderName::from_static("x-request-id");
    if let Some(request_id) = request_id.filter(|_| !response.headers().contains_key(&name)) {
        if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    // The AIGNE Hub v2 protocol (`/api/v2/...`, `/__blocklet__.js`).
    crate::ingress::aigne::configure(cfg);
    webhooks::configure(cfg);
    crate::ingress::messages::configure(cfg); // Anthropic Messages `/v1/messages`.
    let not_allowed = || web::to(|| async { Err::<HttpResponse, _>(HubError::MethodNotAllowed) });
    cfg.service(
        web::resource("/healthz")
            .route(web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) })),
    )
    .service(
        web::resource("/v1/chat/completions")
            .route(web::post().to(crate::ingress::openai::chat_completions))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/embeddings")
            .route(web::post().to(crate::ingress::openai::embeddings))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/images/generations")
            .route(web::post().to(crate::ingress::openai::images))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/providers/{name}/credentials")
            .route(web::post().to(admin::add_credential))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/credentials/{credential_id}")
            .route(web::put().to(admin::set_credential_state))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/models")
            .route(web::get().to(models::list_models))
            .default_service(not_allowed()),
    )
    .service(
        // Model ids hold a `/` (`openai/gpt-4o-mini`).
        web::resource("/v1/models/{model:.+}")
            .route(web::get().to(models::retrieve_model))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/audit/events")
            .route(web::get().to(audit::events))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/audit/events")
            .route(web::get().to(audit::admin_events))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/keys")
            .route(web::post().to(keys::issue))
            .route(web::get().to(keys::list))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/keys/{key_id}")
            .route(web::get().to(keys::show))
            .route(web::patch().to(keys::patch))
            .route(web::delete().to(keys::revoke))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/projects")
            .route(web::post().to(projects::create))
            .route(web::get().to(projects::list))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/projects/{project_id}")
            .route(web::get().to(projects::show))
            .route(web::patch().to(projects::patch))
            .route(web::delete().to(projects::delete))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/billing/balance")
            .route(web::get().to(billing::balance))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/billing/usage")
            .route(web::get().to(usage::usage))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/usage")
            .route(web::get().to(usage::admin_usage))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/billing/invoices")
            .route(web::get().to(invoices::list))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/billing/invoices/{invoice_id}")
            .route(web::get().to(invoices::get))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/invoices")
            .route(web::get().to(invoices::admin_list))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/invoices/{invoice_id}")
            .route(web::get().to(invoices::admin_get))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/billing/requests/{request_id}")
            .route(web::get().to(explain::request))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/requests/{request_id}")
            .route(web::get().to(explain::admin_request))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants")
            .route(web::post().to(admin::create_tenant))
            .route(web::get().to(tenants::list))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}")
            .route(web::get().to(tenants::show))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/keys")
            .route(web::post().to(admin::issue_key))
            .route(web::get().to(tenants::keys))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/keys/{key_id}")
            .route(web::delete().to(admin::revoke_key))
            .route(web::get().to(admin::show_key))
            .route(web::patch().to(admin::patch_key))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/credits")
            .route(web::post().to(admin::grant_credits))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/low_balance")
            .route(web::put().to(admin::set_low_balance))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/suspend")
            .route(web::post().to(tenant_lifecycle::suspend))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/resume")
            .route(web::post().to(tenant_lifecycle::resume))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/close")
            .route(web::post().to(tenant_lifecycle::close))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/balance")
            .route(web::get().to(admin::balance))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/providers")
            .route(web::post().to(admin::add_provider))
            .route(web::get().to(admin::list_providers))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/prices")
            .route(web::get().to(prices::list_prices))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/prices/{model:.+}")
            .route(web::put().to(prices::set_price))
            .route(web::get().to(prices::price_history))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/aliases")
            .route(web::get().to(prices::list_aliases))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/aliases/{alias}")
            .route(web::put().to(prices::set_alias))
            .route(web::delete().to(prices::remove_alias))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/price-book/events")
            .route(web::get().to(prices::price_book_events))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/margins")
            .route(web::get().to(prices::margins))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/margins/default")
            .route(web::put().to(prices::set_default_margin))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/plans/{plan}/margin")
            .route(web::put().to(prices::set_plan_margin))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/margin")
            .route(web::put().to(prices::set_tenant_margin))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/admin/v1/tenants/{tenant_id}/plan")
            .route(web::put().to(prices::set_tenant_plan))
            .default_service(not_allowed()),
    );
}

/// Unknown paths answer JSON too, naming what was asked; a model path sent
/// without its `/v1` (a base URL set without it) is told so.
pub(crate) async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, HubError> {
    Err(HubError::NotFound(unknown_path_message(
        req.method().as_str(),
        req.path(),
    )))
}

/// Paths that exist under `/v1`: a client that left `/v1` out of its base URL asks
/// for them without it.
const V1_PATHS: [&str; 6] = [
    "/chat/completions",
    "/embeddings",
    "/images/generations",
    "/models",
    "/messages",
    "/billing/",
];

fn unknown_path_message(method: &str, path: &str) -> String {
    let missing_v1 = !path.starts_with("/v1/")
        && V1_PATHS
            .iter()
            .any(|p| path == p.trim_end_matches('/') || path.starts_with(p));
    if missing_v1 {
        format!(
            "no endpoint {method} {path}; did you mean /v1{path}? (the API's base URL ends in /v1)"
        )
    } else {
        format!("no endpoint {method} {path}")
    }
}

/// A tenant id from a path; anything malformed is simply a tenant that does not exist.
pub(crate) fn tenant_path(raw: &str) -> Result<TenantId, HubError> {
    raw.parse()
        .map_err(|_| HubError::NotFound("tenant not found".into()))
}
