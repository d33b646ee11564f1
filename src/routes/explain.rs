//! "Explain this charge": one model request as its tenant's events tell it — the
//! hold, every upstream attempt, the usage, the rates and the arithmetic from
//! usage to cost. Every figure comes from the events of that request alone, so
//! the explanation is exactly what was charged (and what a replay would charge).
//! A request id of another tenant, unknown or malformed is 404 alike.

use super::tenant_path;
use crate::actors::TenantOp;
use crate::auth::{check_operator, presented_key};
use crate::error::HubError;
use crate::hub::Hub;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::tenant::{AttemptOutcome, TenantEvent};
use domain::{Credits, Permission, Rate, Rates, RequestId, TenantId, Usage};
use serde_json::{json, Value};

/// `GET /v1/billing/requests/{request_id}`, for `admin`, `billing` and `auditor` keys.
pub(crate) async fn request(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    let key = presented_key(&req)?;
    let auth = Some(hub.key_auth(&key, Permission::ReadBilling));
    hub.call_tenant(key.tenant_id, TenantOp::Read { auth })
        .await?;
    answer(&hub, key.tenant_id, &path).await
}

/// `GET /admin/v1/tenants/{tenant_id}/requests/{request_id}`, for the operator.
pub(crate) async fn admin_request(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, HubError> {
    check_operator(&req, hub.operator_token())?;
    let (tenant, request_id) = path.into_inner();
    let tenant_id = tenant_path(&tenant)?;
    hub.call_tenant(tenant_id, TenantOp::Read { auth: None })
        .await?;
    answer(&hub, tenant_id, &request_id).await
}

/// Events read per page while looking for a request's events.
const EXPLAIN_PAGE_EVENTS: usize = 1_000;

fn request_not_found() -> HubError {
    HubError::NotFound("request not found".into())
}

async fn answer(hub: &Hub, tenant_id: TenantId, raw_id: &str) -> Result<HttpResponse, HubError> {
    // Malformed is simply a request that does not exist.
    let request_id: RequestId = raw_id.parse().map_err(|_| request_not_found())?;
    // A request's events start with its reservation, and the requests people ask
    // about are mostly recent: read the stream from its newest event back, a page
    // at a time, until the reservation (or the stream's start).
    let mut own = Vec::new();
    let mut before = None;
    loop {
        let page = hub
            .event_log()
            .tenant_events_backward(tenant_id, before, EXPLAIN_PAGE_EVENTS)
            .await?;
        let at_start = page.len() < EXPLAIN_PAGE_EVENTS;
        before = page.last().map(|e| e.sequence);
        let mut reserved = false;
        for stored in page {
            if stored.event.request_id() == Some(request_id) {
                reserved |= matches!(stored.event, TenantEvent::CreditsReserved { .. });
                own.push(stored.event);
            }
        }
        if reserved || at_start {
            break;
        }
    }
    own.reverse();
    let body = explain(request_id, &own).ok_or_else(request_not_found)?;
    Ok(HttpResponse::Ok().json(body))
}

/// Rates as the API shows prices (`GET /v1/models`): credits per million tokens,
/// and credits per image.
fn rates_json(rates: &Rates) -> Value {
    json!({
        "input_per_mtok": rates.input.to_per_million_string(),
        "cache_read_per_mtok": rates.cache_read.to_per_million_string(),
        "cache_write_per_mtok": rates.cache_write.to_per_million_string(),
        "output_per_mtok": rates.output.to_per_million_string(),
        "per_image": per_image(rates.image),
    })
}

fn per_image(rate: Rate) -> String {
    Credits::from_pico(rate.pico_per_token()).to_decimal_string()
}

/// One line per kind of token (and one for images, when there are any):
/// quantity × rate = amount. The amounts add up to `rates.cost_of(usage)`.
fn arithmetic(rates: &Rates, usage: &Usage) -> (Vec<Value>, Credits) {
    let mut lines = Vec::new();
    let mut total = Credits::ZERO;
    for (kind, quantity, rate) in [
        ("input", usage.input_tokens, rates.input),
        ("cache_read", usage.cache_read_tokens, rates.cache_read),
        ("cache_write", usage.cache_write_tokens, rates.cache_write),
        ("output", usage.output_tokens, rates.output),
    ] {
        let amount = rate.cost_of(quantity);
        total = total + amount;
        lines.push(json!({
            "kind": kind,
            "quantity": quantity,
            "rate_per_mtok": rate.to_per_million_string(),
            "amount": amount.to_decimal_string(),
        }));
    }
    if usage.images > 0 {
        let amount = rates.image.cost_of(usage.images);
        total = total + amount;
        lines.push(json!({
            "kind": "image",
            "quantity": usage.images,
            "rate_per_image": per_image(rates.image),
            "amount": amount.to_decimal_string(),
        }));
    }
    (lines, total)
}

fn attempt_json(event: &TenantEvent) -> Option<Value> {
    let TenantEvent::UpstreamAttempted {
        attempt,
        provider,
        credential_id,
        model,
        outcome,
        usage,
        cost_pico,
        latency_ms,
        at,
        ..
    } = event
    else {
        return None;
    };
    let mut line = json!({
        "number": attempt,
        "provider": provider,
        "credential_id": credential_id,
        "model": model.as_str(),
        "latency_ms": latency_ms,
        "usage": usage,
        "cost": cost_pico.to_decimal_string(),
        "at": at,
    });
    match outcome {
        AttemptOutcome::Succeeded => line["outcome"] = json!("succeeded"),
        AttemptOutcome::Failed { status, reason } => {
            line["outcome"] = json!("failed");
            if let Some(status) = status {
                line["status"] = json!(status);
            }
            line["reason"] = json!(reason);
        }
    }
    Some(line)
}

/// The explanation of one request from its events (in stream order), or `None`
/// when the tenant has no reservation under that id.
pub(crate) fn explain<'a>(
    request_id: RequestId,
    events: impl IntoIterator<Item = &'a TenantEvent>,
) -> Option<Value> {
    let events: Vec<&TenantEvent> = events
        .into_iter()
        .filter(|e| e.request_id() == Some(request_id))
        .collect();
    let Some(TenantEvent::CreditsReserved {
        key_id,
        model,
        capability,
        ingress,
        app,
        price_version,
        rates: hold_rates,
        hold_pico,
        prompt_bytes,
        max_output_tokens,
        images_requested,
        expires_at,
        project,
        end_user,
        scopes_checked,
        at: reserved_at,
        ..
    }) = events
        .iter()
        .copied()
        .find(|e| matches!(e, TenantEvent::CreditsReserved { .. }))
    else {
        return None;
    };
    let attempts: Vec<Value> = events.iter().filter_map(|e| attempt_json(e)).collect();
    let mut body = json!({
        "request_id": request_id.to_string(),
        "status": "open",
        "key_id": key_id.to_string(),
        "model": model.as_str(),
        "capability": capability,
        "ingress": ingress,
        "app": app,
        "project_id": project.map(|p| p.to_string()),
        "end_user": end_user,
        // Every limit the hold was checked against and passed (`<scope>.<limit>`).
        // A refused request places no hold and has no explanation: its error
        // named the scope that refused it.
        "scopes_checked": scopes_checked,
        "price_version": price_version,
        "reserved_at": reserved_at,
        "closed_at": null,
        "hold": {
            "amount": hold_pico.to_decimal_string(),
            "rates": rates_json(hold_rates),
            "prompt_bytes": prompt_bytes,
            "max_output_tokens": max_output_tokens,
            "images_requested": images_requested,
            "expires_at": expires_at,
        },
        "attempts": attempts,
        "provider": null,
        "charged_model": null,
        "usage": null,
        "rates": null,
        "margin": null,
        "arithmetic": [],
        "cost": Credits::ZERO.to_decimal_string(),
        "overshoot": Credits::ZERO.to_decimal_string(),
    });
    for event in &events {
        match event {
            TenantEvent::UsageSettled {
                provider,
                model,
                usage,
                price_version,
                rates,
                terms,
                cost_pico,
                provider_cost_pico,
                overshoot_pico,
                at,
                ..
            } => {
                let (lines, total) = arithmetic(rates, usage);
                debug_assert_eq!(
                    total, *cost_pico,
                    "the arithmetic of request {request_id} must add up to its recorded cost"
                );
                body["status"] = json!("settled");
                body["closed_at"] = json!(at);
                body["provider"] = json!(provider);
                body["charged_model"] = json!(model.as_str());
                body["price_version"] = json!(price_version);
                body["usage"] = json!(usage);
                body["rates"] = rates_json(rates);
                // How the sell rates came about: the provider's cost and the margin.
                body["margin"] = json!({
                    "margin_bps": terms.margin_bps,
                    "source": terms.margin_source,
                    "cost_rates": rates_json(&terms.cost_rates),
                    "provider_cost": provider_cost_pico.to_decimal_string(),
                });
                body["arithmetic"] = Value::Array(lines);
                body["cost"] = json!(cost_pico.to_decimal_string());
                body["overshoot"] = json!(overshoot_pico.to_decimal_string());
            }
            TenantEvent::HoldReleased { reason, at, .. } => {
                body["status"] = json!("released");
                body["closed_at"] = json!(at);
                body["released_reason"] = json!(reason);
            }
            _ => {}
        }
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_lines_add_up_to_the_cost() {
        let rates = Rates {
            input: Rate::from_pico_per_token(10),
            output: Rate::from_pico_per_token(100),
            cache_read: Rate::from_pico_per_token(1),
            cache_write: Rate::from_pico_per_token(20),
            image: Rate::from_pico_per_token(1_000),
        };
        let usage = Usage {
            input_tokens: 12,
            cache_read_tokens: 5,
            cache_write_tokens: 3,
            output_tokens: 7,
            reasoning_tokens: 2,
            estimated: false,
            images: 2,
        };
        let (lines, total) = arithmetic(&rates, &usage);
        assert_eq!(total, rates.cost_of(&usage));
        assert_eq!(lines.len(), 5);
        let sum = lines.iter().fold(Credits::ZERO, |sum, l| {
            sum + Credits::parse(l["amount"].as_str().unwrap()).unwrap()
        });
        assert_eq!(sum, total);
        assert_eq!(lines[3]["kind"], "output");
        assert_eq!(lines[3]["rate_per_mtok"], "0.0001");
        assert_eq!(lines[4]["rate_per_image"], "0.000000001");
    }

    fn reserved(request_id: RequestId) -> TenantEvent {
        TenantEvent::CreditsReserved {
            request_id,
            key_id: domain::KeyId::new_random(),
            model: domain::ModelId::parse("mock/gpt-mock").unwrap(),
            capability: domain::Capability::Chat,
            ingress: domain::Ingress::Openai,
            app: None,
            price_version: 1,
            rates: Rates::flat(Rate::from_pico_per_token(1), Rate::from_pico_per_token(2)),
            hold_pico: Credits::from_pico(1_000),
            prompt_bytes: 10,
            max_output_tokens: 100,
            images_requested: 0,
            instance_id: domain::InstanceId::new_random(),
            expires_at: chrono::Utc::now(),
            project: None,
            end_user: Some("user-7".into()),
            scopes_checked: vec!["key.budget".into(), "tenant.credit".into()],
            at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_request_without_settlement_or_release_is_open_and_others_are_ignored() {
        let id = RequestId::new_random();
        let other = RequestId::new_random();
        let events = [reserved(other), reserved(id)];
        let body = explain(id, &events).unwrap();
        assert_eq!(body["status"], "open");
        assert_eq!(body["request_id"], id.to_string());
        assert_eq!(body["hold"]["amount"], "0.000000001");
        assert_eq!(body["cost"], "0");
        assert_eq!(body["attempts"], json!([]));
        assert_eq!(body["end_user"], "user-7");
        assert_eq!(
            body["scopes_checked"],
            json!(["key.budget", "tenant.credit"])
        );
        assert!(explain(RequestId::new_random(), &events).is_none());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "must add up")]
    fn a_settlement_whose_cost_disagrees_with_its_arithmetic_is_caught() {
        let id = RequestId::new_random();
        let rates = Rates::flat(Rate::from_pico_per_token(1), Rate::from_pico_per_token(2));
        let usage = Usage {
            input_tokens: 3,
            output_tokens: 4,
            ..Usage::default()
        };
        let settled = TenantEvent::UsageSettled {
            request_id: id,
            key_id: domain::KeyId::new_random(),
            provider: "mock".into(),
            model: domain::ModelId::parse("mock/gpt-mock").unwrap(),
            usage,
            price_version: 1,
            rates,
            terms: domain::ChargeTerms::sold_directly(rates),
            cost_pico: Credits::from_pico(12),
            provider_cost_pico: Credits::from_pico(12),
            hold_pico: Credits::from_pico(1_000),
            overshoot_pico: Credits::ZERO,
            upstream_latency_ms: 1,
            at: chrono::Utc::now(),
        };
        explain(id, &[reserved(id), settled]);
    }
}
