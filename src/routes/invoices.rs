//! Invoice reads: `GET /v1/billing/invoices[/{id}]` (keys with `ReadBilling`) and
//! `GET /admin/v1/tenants/{id}/invoices[/{invoice_id}]` (the operator), from the
//! `invoices` projection (`projections::invoices`).
//!
//! The content comes from the projection's rows; the status (`draft` or
//! `finalized`) is decided at read time from the clock. The list holds the
//! tenant's invoices of the last [`INVOICES_LISTED_PERIODS`] periods (the current
//! one included), newest first; an older invoice is read by its id. An invoice
//! with `Accept: text/csv` is its lines as CSV.

use super::csv::{number_cell, text_cell};
use super::tenant_path;
use crate::actors::TenantOp;
use crate::auth::{check_operator, presented_key};
use crate::error::HubError;
use crate::hub::Hub;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Months, Utc};
use domain::{Permission, TenantId};
use projections::invoices::{self, InvoiceRow, InvoiceView};
use serde_json::json;

/// Periods the list looks back over, the current one included.
pub(crate) const INVOICES_LISTED_PERIODS: u32 = 24;

/// `GET /v1/billing/invoices`, for `admin`, `billing` and `auditor` keys.
pub(crate) async fn list(hub: web::Data<Hub>, req: HttpRequest) -> Result<HttpResponse, HubError> {
    let tenant_id = authorize_key(&hub, &req).await?;
    list_answer(&hub, tenant_id).await
}

/// `GET /v1/billing/invoices/{id}`. Another tenant's invoice is 404.
pub(crate) async fn get(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    let tenant_id = authorize_key(&hub, &req).await?;
    one_answer(&hub, &req, tenant_id, &path).await
}

/// `GET /admin/v1/tenants/{id}/invoices`, for the operator.
pub(crate) async fn admin_list(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, HubError> {
    let tenant_id = authorize_operator(&hub, &req, &path).await?;
    list_answer(&hub, tenant_id).await
}

/// `GET /admin/v1/tenants/{id}/invoices/{invoice_id}`, for the operator.
pub(crate) async fn admin_get(
    hub: web::Data<Hub>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, HubError> {
    let (tenant, invoice_id) = path.into_inner();
    let tenant_id = authorize_operator(&hub, &req, &tenant).await?;
    one_answer(&hub, &req, tenant_id, &invoice_id).await
}

async fn authorize_key(hub: &Hub, req: &HttpRequest) -> Result<TenantId, HubError> {
    let key = presented_key(req)?;
    let auth = Some(hub.key_auth(&key, Permission::ReadBilling));
    hub.call_tenant(key.tenant_id, TenantOp::Read { auth })
        .await?;
    Ok(key.tenant_id)
}

async fn authorize_operator(
    hub: &Hub,
    req: &HttpRequest,
    tenant: &str,
) -> Result<TenantId, HubError> {
    check_operator(req, hub.operator_token())?;
    let tenant_id = tenant_path(tenant)?;
    hub.call_tenant(tenant_id, TenantOp::Read { auth: None })
        .await?;
    Ok(tenant_id)
}

async fn rows(hub: &Hub, keys: &[String]) -> Result<Vec<(String, InvoiceRow)>, HubError> {
    let name = hub.limits().invoice_settings().projection_name();
    let mut out = Vec::new();
    for (key, payload) in hub
        .read_models()
        .projection_rows_by_keys(&name, keys)
        .await?
    {
        let row: InvoiceRow = serde_json::from_str(&payload)
            .map_err(|e| HubError::Internal(format!("invoice row {key}: {e}")))?;
        out.push((key, row));
    }
    Ok(out)
}

async fn list_answer(hub: &Hub, tenant_id: TenantId) -> Result<HttpResponse, HubError> {
    let now = hub.now();
    let current = hub.limits().invoice_settings().period_start(now);
    let keys: Vec<String> = (0..INVOICES_LISTED_PERIODS)
        .filter_map(|back| current.checked_sub_months(Months::new(back)))
        .map(|start| invoices::period_key(tenant_id, start))
        .collect();
    let mut views: Vec<InvoiceView> = rows(hub, &keys)
        .await?
        .iter()
        .filter_map(|(_, row)| invoices::view(tenant_id, row, now))
        .collect();
    views.sort_by(|a, b| b.period_start.cmp(&a.period_start));
    Ok(HttpResponse::Ok().json(json!({ "data": views })))
}

async fn one_answer(
    hub: &Hub,
    req: &HttpRequest,
    tenant_id: TenantId,
    invoice_id: &str,
) -> Result<HttpResponse, HubError> {
    let not_found = || HubError::NotFound("invoice not found".into());
    let (owner, start) = invoices::parse_invoice_id(invoice_id).ok_or_else(not_found)?;
    if owner != tenant_id {
        return Err(not_found());
    }
    let now: DateTime<Utc> = hub.now();
    let view = rows(hub, &[invoices::period_key(tenant_id, start)])
        .await?
        .iter()
        .find_map(|(_, row)| invoices::view(tenant_id, row, now))
        .ok_or_else(not_found)?;
    let wants_csv = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("text/csv"));
    if wants_csv {
        return Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((
                "content-disposition",
                format!("attachment; filename=\"{}.csv\"", view.id),
            ))
            .body(csv(&view)));
    }
    Ok(HttpResponse::Ok().json(view))
}

/// The invoice's lines, then a `total` row whose amount is the invoice's total.
fn csv(view: &InvoiceView) -> String {
    let mut out = String::from(
        "description,model,capability,kind,quantity,unit_price,amount,adjustment_for\r\n",
    );
    for line in &view.lines {
        let kind = serde_json::to_value(line.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let fields = [
            text_cell(&line.description),
            text_cell(&line.model),
            text_cell(&line.capability),
            kind,
            line.quantity.to_string(),
            number_cell(&line.unit_price),
            number_cell(&line.amount),
            text_cell(line.adjustment_for.as_deref().unwrap_or("")),
        ];
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out.push_str(&format!("total,,,,,,{},\r\n", number_cell(&view.total)));
    out
}
