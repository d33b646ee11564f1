//! `GET /v1/models`: the models this hub can route, with their prices.

use crate::actors::TenantOp;
use crate::auth::presented_key;
use crate::catalog::{PriceFor, PricedModel};
use crate::error::HubError;
use crate::hub::Hub;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::Permission;
use serde_json::json;

pub async fn list_models(hub: web::Data<Hub>, req: HttpRequest) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    // Any valid key may list models; a role without model access is still a valid key.
    match hub
        .tenants
        .call(
            key.tenant_id,
            TenantOp::Read {
                auth: Some(Hub::key_auth(&key, Permission::CallModels)),
            },
        )
        .await
    {
        Ok(_) | Err(HubError::PermissionDenied(_)) => {}
        Err(e) => return Err(e),
    }
    let catalog = hub.catalog.snapshot();
    // Each tenant sees what it pays: its margin or its plan's applies.
    let who = PriceFor {
        tenant_id: key.tenant_id,
        image_size: None,
        image_quality: None,
        at_cost: hub.mode.charges_at_cost(),
    };
    let data: Vec<_> = catalog
        .models
        .values()
        .filter(|m| catalog.providers.contains_key(m.model.provider()))
        .filter_map(|m| catalog.priced_for(&m.model, who))
        .map(|m| {
            json!({
                "id": m.model.as_str(),
                "object": "model",
                "created": 0,
                "owned_by": m.model.provider(),
                "pricing": price_json(&m),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

/// A model's price as the API shows it: credits per million tokens.
pub fn price_json(m: &PricedModel) -> serde_json::Value {
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
