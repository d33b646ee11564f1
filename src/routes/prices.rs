//! The price book through the operator API: prices with their history, margins
//! per tenant, plan or by default, and tenants' plans (docs/billing.md, "Price
//! book"). Tenants see only what they pay (`GET /v1/models`), never the cost.

use super::admin::operator;
use super::tenant_path;
use crate::body::json_body;
use crate::catalog::PricedModel;
use crate::error::HubError;
use crate::hub::{Hub, PriceSpec};
use actix_web::{web, HttpRequest, HttpResponse};
use domain::price_book::{ImagePrice, MarginScope, PriceBookEvent, PriceVersion};
use domain::{ChangedBy, Credits, ModelId, Rate, Rates};
use serde::Deserialize;
use serde_json::{json, Value};

/// Price bodies are small; this bounds them well below the model-request limit.
const PRICE_BODY_MAX_BYTES: usize = 64 * 1024;

fn per_image(rate: Rate) -> String {
    Credits::from_pico(rate.pico_per_token()).to_decimal_string()
}

fn rates_json(rates: &Rates) -> Value {
    json!({
        "input_per_mtok": rates.input.to_per_million_string(),
        "output_per_mtok": rates.output.to_per_million_string(),
        "cache_read_per_mtok": rates.cache_read.to_per_million_string(),
        "cache_write_per_mtok": rates.cache_write.to_per_million_string(),
        "per_image": per_image(rates.image),
    })
}

fn image_json(price: &ImagePrice) -> Value {
    json!({
        "size": price.size,
        "quality": price.quality,
        "per_image": per_image(price.cost),
        "sell_per_image": price.sell.map(per_image),
    })
}

fn version_json(model: &ModelId, v: &PriceVersion) -> Value {
    json!({
        "model": model.as_str(),
        "version": v.version,
        "cost": rates_json(&v.spec.cost),
        "sell": v.spec.sell.as_ref().map(rates_json),
        "images": v.spec.images.iter().map(image_json).collect::<Vec<_>>(),
        "max_output_tokens": v.spec.max_output_tokens,
        "fallbacks": v.spec.fallbacks,
        "at": v.at.to_rfc3339(),
    })
}

/// A model's price as the operator sees it: the current version as set, and what
/// a tenant with no margin or plan of its own pays.
fn operator_price_json(hub: &Hub, priced: &PricedModel) -> Value {
    let snapshot = hub.catalog().snapshot();
    let mut body = snapshot
        .book
        .current(&priced.model)
        .map(|v| version_json(&priced.model, v))
        .unwrap_or_else(|| json!({}));
    body["default_sell"] = super::models::price_json(priced);
    body["default_margin_bps"] = json!(priced.terms.margin_bps);
    body
}

/// `PUT /admin/v1/prices/{provider}/{model}`: a new version of a model's price.
pub(crate) async fn set_price(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let model = path.into_inner();
    let spec: PriceSpec = json_body(payload, PRICE_BODY_MAX_BYTES).await?;
    hub.price_book(ChangedBy::OperatorApi)
        .set_price(&model, &spec)
        .await?;
    let priced = hub
        .catalog()
        .snapshot()
        .models
        .get(&model)
        .cloned()
        .ok_or_else(|| HubError::Internal("price not visible after write".into()))?;
    Ok(HttpResponse::Ok().json(operator_price_json(&hub, &priced)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    /// The `provider/model` the alias stands for.
    model: String,
}

/// The book's aliases, by name.
pub(crate) fn aliases_json(book: &domain::price_book::PriceBook) -> Vec<Value> {
    book.aliases
        .iter()
        .map(|(alias, model)| json!({"alias": alias, "model": model.as_str()}))
        .collect()
}

/// `PUT /admin/v1/aliases/{alias}` `{"model": "provider/model"}`: requests for
/// the bare name `alias` go to that model.
pub(crate) async fn set_alias(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let alias = path.into_inner();
    let body: AliasBody = json_body(payload, PRICE_BODY_MAX_BYTES).await?;
    hub.price_book(ChangedBy::OperatorApi)
        .set_alias(&alias, &body.model)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"alias": alias, "model": body.model})))
}

/// `DELETE /admin/v1/aliases/{alias}`.
pub(crate) async fn remove_alias(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let alias = path.into_inner();
    hub.price_book(ChangedBy::OperatorApi)
        .remove_alias(&alias)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"alias": alias, "removed": true})))
}

/// `GET /admin/v1/aliases`: every alias and the model it stands for.
pub(crate) async fn list_aliases(
    hub: web::Data<Hub>,
    req: HttpRequest,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let snapshot = hub.catalog().snapshot();
    Ok(HttpResponse::Ok().json(json!({ "data": aliases_json(&snapshot.book) })))
}

/// `GET /admin/v1/prices`: every model's current price.
pub(crate) async fn list_prices(
    hub: web::Data<Hub>,
    req: HttpRequest,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let snapshot = hub.catalog().snapshot();
    let data: Vec<_> = snapshot
        .models
        .values()
        .map(|m| operator_price_json(&hub, m))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

/// `GET /admin/v1/prices/{provider}/{model}`: every version of a model's price,
/// newest first.
pub(crate) async fn price_history(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let not_found = || HubError::NotFound("no price for this model".into());
    let model = ModelId::parse(&path.into_inner()).map_err(|_| not_found())?;
    let snapshot = hub.catalog().snapshot();
    let versions = snapshot.book.models.get(&model).ok_or_else(not_found)?;
    let data: Vec<_> = versions
        .iter()
        .rev()
        .map(|v| version_json(&model, v))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

/// `GET /admin/v1/price-book/events`: the price book's whole history (prices,
/// margins, plans) in order, for auditors.
pub(crate) async fn price_book_events(
    hub: web::Data<Hub>,
    req: HttpRequest,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let data: Vec<_> = hub
        .event_log()
        .price_book_events()
        .await?
        .into_iter()
        .map(|stored| {
            json!({
                "sequence": stored.sequence,
                "type": cqrs_es::DomainEvent::event_type(&stored.event),
                "at": stored.event.at().to_rfc3339(),
                "actor": stored.actor,
                "event": event_body(&stored.event),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

fn event_body(event: &PriceBookEvent) -> Value {
    match event {
        PriceBookEvent::ModelPriced {
            model,
            version,
            spec,
            at,
        } => version_json(
            model,
            &PriceVersion {
                version: *version,
                spec: spec.clone(),
                at: *at,
            },
        ),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.as_object().and_then(|o| o.values().next().cloned()))
            .unwrap_or(Value::Null),
    }
}

/// `GET /admin/v1/margins`: the default margin, plans' margins, and each tenant's
/// plan and margin.
pub(crate) async fn margins(
    hub: web::Data<Hub>,
    req: HttpRequest,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let snapshot = hub.catalog().snapshot();
    let book = &snapshot.book;
    let mut tenants: Vec<_> = book
        .tenant_plans
        .keys()
        .chain(book.tenant_margins_bps.keys())
        .collect();
    tenants.sort();
    tenants.dedup();
    let tenants: Vec<_> = tenants
        .into_iter()
        .map(|t| {
            json!({
                "tenant_id": t.to_string(),
                "plan": book.tenant_plans.get(t),
                "margin_bps": book.tenant_margins_bps.get(t),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "default_margin_bps": book.default_margin_bps,
        "plans": book.plan_margins_bps,
        "tenants": tenants,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MarginBody {
    /// Basis points (2500 = 25%); `null` clears the margin.
    margin_bps: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanBody {
    /// `null`: the tenant is on no plan.
    plan: Option<String>,
}

async fn margin_answer(
    hub: &Hub,
    scope: MarginScope,
    margin_bps: Option<u32>,
) -> Result<HttpResponse, HubError> {
    hub.price_book(ChangedBy::OperatorApi)
        .set_margin(scope.clone(), margin_bps)
        .await?;
    let mut body = serde_json::to_value(&scope).unwrap_or_else(|_| json!({}));
    body["margin_bps"] = json!(margin_bps);
    Ok(HttpResponse::Ok().json(body))
}

/// `PUT /admin/v1/margins/default` `{"margin_bps"}`.
pub(crate) async fn set_default_margin(
    hub: web::Data<Hub>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let body: MarginBody = json_body(payload, PRICE_BODY_MAX_BYTES).await?;
    margin_answer(&hub, MarginScope::Default, body.margin_bps).await
}

/// `PUT /admin/v1/plans/{plan}/margin` `{"margin_bps"}`.
pub(crate) async fn set_plan_margin(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let body: MarginBody = json_body(payload, PRICE_BODY_MAX_BYTES).await?;
    let plan = path.into_inner();
    margin_answer(&hub, MarginScope::Plan { plan }, body.margin_bps).await
}

/// `PUT /admin/v1/tenants/{tenant_id}/margin` `{"margin_bps"}`.
pub(crate) async fn set_tenant_margin(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let tenant_id = tenant_path(&path)?;
    let body: MarginBody = json_body(payload, PRICE_BODY_MAX_BYTES).await?;
    // Only a tenant that exists gets a margin (404 otherwise).
    hub.balance(tenant_id, None).await?;
    margin_answer(&hub, MarginScope::Tenant { tenant_id }, body.margin_bps).await
}

/// `PUT /admin/v1/tenants/{tenant_id}/plan` `{"plan"}`.
pub(crate) async fn set_tenant_plan(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HubError> {
    operator(&hub, &req)?;
    let tenant_id = tenant_path(&path)?;
    let body: PlanBody = json_body(payload, PRICE_BODY_MAX_BYTES).await?;
    hub.balance(tenant_id, None).await?;
    hub.price_book(ChangedBy::OperatorApi)
        .set_tenant_plan(tenant_id, body.plan.clone())
        .await?;
    Ok(HttpResponse::Ok().json(json!({"tenant_id": tenant_id.to_string(), "plan": body.plan})))
}
