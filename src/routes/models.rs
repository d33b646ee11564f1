//! `GET /v1/models`: the models this hub can route, with their prices, and the
//! aliases (bare names such as `gpt-4o-mini`) the operator set for them;
//! `GET /v1/models/{id}`: one of them, as OpenAI's `models.retrieve` reads it.

use crate::actors::TenantOp;
use crate::auth::presented_key;
use crate::catalog::{CatalogData, PriceFor, PricedModel};
use crate::error::{HubError, UnknownModel};
use crate::hub::Hub;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::Permission;
use serde_json::json;

/// Checks the key: any valid key may read models; a role without model access
/// is still a valid key.
async fn check_reader(hub: &Hub, req: &HttpRequest) -> Result<PriceFor<'static>, HubError> {
    let key = presented_key(req)?;
    // Any valid key may list models; a role without model access is still a valid key.
    match hub
        .call_tenant(
            key.tenant_id,
            TenantOp::Read {
                auth: Some(hub.key_auth(&key, Permission::CallModels)),
            },
        )
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_permission_denied() => {}
        Err(e) => return Err(e.into()),
    }
    // Each tenant sees what it pays: its margin or its plan's applies.
    Ok(PriceFor {
        tenant_id: key.tenant_id,
        image_size: None,
        image_quality: None,
        at_cost: hub.mode().charges_at_cost(),
    })
}

/// A model (or an alias, `id` being the alias) as `/v1/models` lists it.
fn model_json(id: &str, m: &PricedModel) -> serde_json::Value {
    let mut entry = json!({
        "id": id,
        "object": "model",
        "created": 0,
        "owned_by": m.model.provider(),
        "pricing": price_json(m),
    });
    if id != m.model.as_str() {
        entry["alias_for"] = json!(m.model.as_str());
    }
    entry
}

/// The model `id` names (itself or through its alias), if it can be served.
fn servable(catalog: &CatalogData, id: &str, who: PriceFor<'_>) -> Option<PricedModel> {
    let model = catalog.models.get(catalog.book.resolve(id))?;
    if !catalog.providers.contains_key(model.model.provider()) {
        return None;
    }
    catalog.priced_for(&model.model, who)
}

pub(crate) async fn list_models(
    hub: web::Data<Hub>,
    req: HttpRequest,
) -> Result<HttpResponse, HubError> {
    let who = check_reader(&hub, &req).await?;
    let catalog = hub.catalog().snapshot();
    let ids = catalog.models.keys().chain(catalog.book.aliases.keys());
    let data: Vec<_> = ids
        .filter_map(|id| Some(model_json(id, &servable(&catalog, id, who)?)))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

/// `GET /v1/models/{id}`: one model or alias; 404 (`model_not_found`, with the
/// closest ids) otherwise.
pub(crate) async fn retrieve_model(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    let who = check_reader(&hub, &req).await?;
    let id = path.into_inner();
    let catalog = hub.catalog().snapshot();
    match servable(&catalog, &id, who) {
        Some(model) => Ok(HttpResponse::Ok().json(model_json(&id, &model))),
        None => Err(HubError::ModelNotFound(unknown_model(&catalog, &id))),
    }
}

/// An unknown model with the closest ids the catalog serves.
pub(crate) fn unknown_model(catalog: &CatalogData, asked: &str) -> UnknownModel {
    UnknownModel {
        model: asked.to_string(),
        suggestions: catalog.closest_ids(asked),
    }
}

/// A model's price as the API shows it: credits per million tokens.
pub(crate) fn price_json(m: &PricedModel) -> serde_json::Value {
    let rates = &m.price.rates;
    json!({
        "model": m.model.as_str(),
        "input_per_mtok": rates.input.to_per_million_string(),
        "output_per_mtok": rates.output.to_per_million_string(),
        "cache_read_per_mtok": rates.cache_read.to_per_million_string(),
        "cache_write_per_mtok": rates.cache_write.to_per_million_string(),
        "per_image": domain::Credits::from_pico(rates.image.pico_per_token()).to_decimal_string(),
        "max_output_tokens": m.price.max_output_tokens,
        "version": m.price_version,
        "unit": "credits per million tokens",
    })
}
