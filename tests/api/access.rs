//! The permission matrix of docs/access.md, checked against the hub: the test
//! reads the doc's table and makes every call it lists, each route with every
//! caller, so the doc and the code cannot drift apart. A route the hub serves
//! without a row in the table (read from the `configure` functions in `src/`)
//! fails it too, so a new route cannot ship without its access written down.

use crate::billing::GPT_MOCK;
use crate::helpers::*;
use crate::mock_openai::MOCK_API_KEY;
use crate::on_both_stores;
use aigne_hub::config::WebhookSettings;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ACCESS_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/access.md");
const SOURCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// A column of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    NoKey,
    RevokedKey,
    /// An `admin` key whose `expires_at` has passed.
    ExpiredKey,
    Owner,
    Admin,
    Member,
    Billing,
    Auditor,
    /// Tenant B's `admin` key on tenant A's objects.
    OtherTenant,
    Operator,
}

const ALL_CALLERS: [Caller; 10] = [
    Caller::NoKey,
    Caller::RevokedKey,
    Caller::ExpiredKey,
    Caller::Owner,
    Caller::Admin,
    Caller::Member,
    Caller::Billing,
    Caller::Auditor,
    Caller::OtherTenant,
    Caller::Operator,
];

impl Caller {
    fn from_header(header: &str) -> Caller {
        match header {
            "no key" => Caller::NoKey,
            "revoked key" => Caller::RevokedKey,
            "expired key" => Caller::ExpiredKey,
            "owner" => Caller::Owner,
            "admin" => Caller::Admin,
            "member" => Caller::Member,
            "billing" => Caller::Billing,
            "auditor" => Caller::Auditor,
            "another tenant's key" => Caller::OtherTenant,
            "operator token" => Caller::Operator,
            other => panic!("docs/access.md: unknown caller column {other:?}"),
        }
    }
}

/// What a cell says: a status and, for a refusal, the error's code.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expected {
    status: u16,
    code: Option<String>,
}

/// A row of the matrix: `METHOD /path/{placeholder}` and its cells ("—" is `None`).
struct Row {
    route: String,
    cells: Vec<(Caller, Option<Expected>)>,
}

fn cells_of(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

fn parse_cell(route: &str, cell: &str) -> Option<Expected> {
    if cell == "—" {
        return None;
    }
    let bad =
        || format!("docs/access.md, {route}: cell {cell:?} is not `—`, `NNN` or `NNN \\`code\\``");
    let (status, code) = match cell.split_once(' ') {
        Some((status, code)) => {
            let code = code.strip_prefix('`').and_then(|c| c.strip_suffix('`'));
            (
                status,
                Some(code.unwrap_or_else(|| panic!("{}", bad())).to_string()),
            )
        }
        None => (cell, None),
    };
    let status: u16 = status.parse().unwrap_or_else(|_| panic!("{}", bad()));
    Some(Expected { status, code })
}

/// The matrix: the table of docs/access.md whose first header cell is `route`.
fn matrix() -> Vec<Row> {
    let doc = std::fs::read_to_string(ACCESS_DOC).unwrap();
    let mut lines = doc
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("| route |"));
    let header = cells_of(
        lines
            .next()
            .expect("docs/access.md has a `| route |` table"),
    );
    let callers: Vec<Caller> = header[1..].iter().map(|h| Caller::from_header(h)).collect();
    let distinct: BTreeSet<Caller> = callers.iter().copied().collect();
    assert!(
        distinct.len() == ALL_CALLERS.len() && callers.len() == ALL_CALLERS.len(),
        "docs/access.md: the matrix has a column for each of {ALL_CALLERS:?}, once"
    );
    let separator = lines.next().unwrap_or_default();
    assert!(separator.starts_with("|---"), "{separator}");
    lines
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|line| {
            let cells = cells_of(line);
            assert_eq!(cells.len(), callers.len() + 1, "docs/access.md: {line}");
            let route = cells[0].trim_matches('`').to_string();
            let cells = callers
                .iter()
                .zip(&cells[1..])
                .map(|(caller, cell)| (*caller, parse_cell(&route, cell)))
                .collect();
            Row { route, cells }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The routes the hub serves, from its source

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `line` without its `//` comment (a `//` inside a string literal stays).
fn without_comment(line: &str) -> &str {
    let mut quotes = 0;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quotes += 1,
            '/' if quotes % 2 == 0 && line[i..].starts_with("//") => return &line[..i],
            _ => {}
        }
    }
    line
}

const METHODS: [(&str, &str); 5] = [
    ("web::get()", "GET"),
    ("web::post()", "POST"),
    ("web::put()", "PUT"),
    ("web::patch()", "PATCH"),
    ("web::delete()", "DELETE"),
];

/// The routes registered in one `configure` body: each method route
/// (`web::get()`, …) belongs to the last path literal before it, as in
/// `web::resource("/p").route(web::get()…)` and `("/p", web::get()…)`.
fn routes_in(body: &str, routes: &mut BTreeSet<String>) {
    let mut path: Option<String> = None;
    let mut rest = body;
    while let Some(c) = rest.chars().next() {
        if let Some(literal) = rest.strip_prefix("\"/") {
            let end = literal.find('"').unwrap();
            path = Some(format!("/{}", &literal[..end]));
            rest = &literal[end + 1..];
            continue;
        }
        if let Some((token, method)) = METHODS.iter().find(|(t, _)| rest.starts_with(t)) {
            let path = path.as_deref().expect("a method route after its path");
            routes.insert(format!("{method} {}", without_pattern(path)));
            rest = &rest[token.len()..];
            continue;
        }
        rest = &rest[c.len_utf8()..];
    }
}

/// `/v1/models/{model:.+}` as the doc writes it: `/v1/models/{model}`.
fn without_pattern(path: &str) -> String {
    let mut out = String::new();
    let mut in_pattern = false;
    for c in path.chars() {
        match c {
            ':' if out.rfind('{') > out.rfind('}') => in_pattern = true,
            '}' => {
                in_pattern = false;
                out.push(c);
            }
            _ if in_pattern => {}
            _ => out.push(c),
        }
    }
    out
}

/// Every `METHOD /path` the `configure` functions of `src/` register (the
/// binaries' own mock servers aside).
fn served_routes() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(Path::new(SOURCE_DIR), &mut files);
    let bin = Path::new(SOURCE_DIR).join("bin");
    let mut routes = BTreeSet::new();
    for file in files.iter().filter(|f| !f.starts_with(&bin)) {
        let text: String = std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .map(|l| format!("{}\n", without_comment(l)))
            .collect();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("fn configure(") {
            let body = &rest[start..];
            let end = body.find("\n}\n").unwrap_or(body.len());
            routes_in(&body[..end], &mut routes);
            rest = &body[end..];
        }
    }
    routes
}

#[test]
fn every_served_route_has_a_row_in_the_matrix() {
    let served = served_routes();
    // Guards the parser itself: a few routes it must find.
    for known in [
        "POST /v1/chat/completions",
        "GET /v1/models/{model}",
        "POST /v1/messages",
        "POST /api/v2/chat",
        "POST /webhooks/payments",
        "DELETE /admin/v1/aliases/{alias}",
    ] {
        assert!(served.contains(known), "{known} not found in {served:?}");
    }
    let rows = matrix();
    let documented: BTreeSet<String> = rows.iter().map(|r| r.route.clone()).collect();
    assert_eq!(
        documented.len(),
        rows.len(),
        "docs/access.md: a route has two rows"
    );
    let missing: Vec<_> = served.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/access.md's matrix and the hub's routes differ: served without a row: {missing:?}; rows the hub does not serve: {stale:?}"
    );
}

// ---------------------------------------------------------------------------
// The calls

/// Tenant A with a key of each role, tenant B, and one object of A of each kind
/// a route names.
struct Fixture {
    tenant: String,
    other_tenant: String,
    /// A tenant with no keys for the operator to suspend, resume and close
    /// (closing A would change every later answer).
    spare_tenant: String,
    bearers: BTreeMap<Caller, String>,
    request_id: String,
    invoice_id: String,
    image_id: String,
    /// A key of A for the operator to revoke through the matrix.
    spare_key_id: String,
    /// A credential of provider `spare` for the operator to re-enable.
    credential_id: String,
}

const EMBEDDING_MOCK: (&str, &str, &str, Option<u32>) = ("text-embedding-3-small", "1", "0", None);
/// Bound to `mock/gpt-mock` before the matrix runs, so that removing it answers 200.
const ALIAS: &str = "matrix-alias";
/// The plan whose margin the matrix sets.
const PLAN: &str = "matrix-plan";
/// Where the hub serves generated images.
const IMAGES_PATH: &str = "/api/v2/images/";

/// `(key id, key)` of a new key of `role` for `tenant`.
async fn issue(app: &TestApp, tenant: &str, role: &str) -> (String, String) {
    let body = app
        .admin_json(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/keys"),
            Some(json!({"name": "matrix", "role": role})),
        )
        .await;
    let text = |field: &str| body[field].as_str().unwrap().to_string();
    (text("key_id"), text("key"))
}

async fn fixture(app: &TestApp) -> Fixture {
    app.setup_provider(&[GPT_MOCK, EMBEDDING_MOCK]).await;
    app.set_price(
        "mock/gpt-image-1",
        json!({"input_per_mtok": "0", "output_per_mtok": "0", "per_image": "0.04"}),
    )
    .await;
    app.add_provider(json!({"name": "spare", "kind": "openai", "base_url": app.mock.base_url, "api_key": MOCK_API_KEY}))
        .await;
    let providers = app
        .admin_json(Method::GET, "/admin/v1/providers", None)
        .await;
    let spare = providers["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "spare")
        .unwrap();
    let credential_id = spare["credentials"][0]["credential_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.admin_json(
        Method::PUT,
        &format!("/admin/v1/aliases/{ALIAS}"),
        Some(json!({"model": "mock/gpt-mock"})),
    )
    .await;

    let tenant = app.create_tenant("100").await;
    let mut bearers = BTreeMap::new();
    for (caller, role) in [
        (Caller::Owner, "owner"),
        (Caller::Admin, "admin"),
        (Caller::Member, "member"),
        (Caller::Billing, "billing"),
        (Caller::Auditor, "auditor"),
    ] {
        bearers.insert(caller, app.issue_key(&tenant, role).await);
    }
    let (revoked_id, revoked) = issue(app, &tenant, "admin").await;
    app.admin_json(
        Method::DELETE,
        &format!("/admin/v1/tenants/{tenant}/keys/{revoked_id}"),
        None,
    )
    .await;
    bearers.insert(Caller::RevokedKey, revoked);
    // Expired a moment ago on the hub's clock.
    let (expired_id, expired) = issue(app, &tenant, "admin").await;
    let past = (app.hub.now() - chrono::TimeDelta::seconds(1)).to_rfc3339();
    app.admin_json(
        Method::PATCH,
        &format!("/admin/v1/tenants/{tenant}/keys/{expired_id}"),
        Some(json!({ "expires_at": past })),
    )
    .await;
    bearers.insert(Caller::ExpiredKey, expired);
    let (spare_key_id, _) = issue(app, &tenant, "member").await;
    let (other_tenant, other_admin) = app.tenant_with_key("1", "admin").await;
    let spare_tenant = app.create_tenant("0").await;
    bearers.insert(Caller::OtherTenant, other_admin);
    bearers.insert(Caller::Operator, app.operator_token.clone());

    let member = &bearers[&Caller::Member];
    let chat = app.chat(member, &chat_body("gpt-mock", false)).await;
    assert_eq!(chat.status(), 200);
    let request_id = request_id(&chat);
    let image = app
        .post(
            member,
            "/api/v2/image",
            &json!({"input": {"prompt": "a cat", "modelOptions": {"model": "mock/gpt-image-1", "responseFormat": "b64_json"}}}),
        )
        .await;
    assert_eq!(image.status(), 200);
    let image: Value = image.json().await.unwrap();
    let url = image["images"][0]["url"].as_str().unwrap();
    let image_id = url.split(IMAGES_PATH).nth(1).unwrap().to_string();
    let billing = &bearers[&Caller::Billing];
    let invoice_id = wait_for(WAIT_DEADLINE, "the chat's draft invoice", || async {
        app.projections_caught_up().await;
        let body = app.get_json(billing, "/v1/billing/invoices").await;
        body["data"][0]["id"].as_str().map(str::to_string)
    })
    .await;
    Fixture {
        tenant,
        other_tenant,
        spare_tenant,
        bearers,
        request_id,
        invoice_id,
        image_id,
        spare_key_id,
        credential_id,
    }
}

/// A call of the matrix: the path with the fixture's ids, and a body with which
/// an allowed caller succeeds.
struct Call {
    path: String,
    body: Option<Value>,
}

fn call(path: impl Into<String>, body: Option<Value>) -> Call {
    Call {
        path: path.into(),
        body,
    }
}

/// The request of each row, by the row's route; `None` for a route that has none
/// yet, which fails the test.
fn call_for(route: &str, fx: &Fixture) -> Option<Call> {
    let a = &fx.tenant;
    let no_margin = || Some(json!({"margin_bps": null}));
    let aigne_input = |input: Value| Some(json!({"input": input}));
    Some(match route {
        "GET /healthz" => call("/healthz", None),
        "GET /__blocklet__.js" => call("/__blocklet__.js", None),
        "GET /api/ai/models" => call("/api/ai/models", None),
        "GET /api/v2/images/{id}" => call(format!("{IMAGES_PATH}{}", fx.image_id), None),
        "POST /webhooks/payments" => call(
            "/webhooks/payments",
            Some(
                json!({"id": "evt_matrix", "type": "payment.succeeded", "tenant_id": a, "amount": "1"}),
            ),
        ),
        "GET /api/v2/status" => call("/api/v2/status", None),
        "GET /api/user/info" => call("/api/user/info", None),
        "GET /v1/models" => call("/v1/models", None),
        "GET /v1/models/{model}" => call("/v1/models/mock/gpt-mock", None),
        "POST /v1/chat/completions" => {
            call("/v1/chat/completions", Some(chat_body("gpt-mock", false)))
        }
        "POST /v1/embeddings" => call(
            "/v1/embeddings",
            Some(json!({"model": "mock/text-embedding-3-small", "input": ["a"]})),
        ),
        "POST /v1/images/generations" => call(
            "/v1/images/generations",
            Some(
                json!({"model": "mock/gpt-image-1", "prompt": "a cat", "n": 1, "response_format": "b64_json"}),
            ),
        ),
        "POST /v1/messages" => call(
            "/v1/messages",
            Some(
                json!({"model": "mock/gpt-mock", "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello"}]}),
            ),
        ),
        "POST /api/v2/chat" => call(
            "/api/v2/chat",
            aigne_input(
                json!({"messages": [{"role": "user", "content": "Say hello"}], "modelOptions": {"model": "mock/gpt-mock"}}),
            ),
        ),
        "POST /api/v2/image" => call(
            "/api/v2/image",
            aigne_input(json!({"prompt": "a cat", "modelOptions": {"model": "mock/gpt-image-1"}})),
        ),
        "POST /api/v2/embeddings" => call(
            "/api/v2/embeddings",
            aigne_input(
                json!({"input": ["a"], "modelOptions": {"model": "mock/text-embedding-3-small"}}),
            ),
        ),
        "GET /v1/audit/events" => call("/v1/audit/events", None),
        "GET /v1/billing/balance" => call("/v1/billing/balance", None),
        "GET /v1/billing/usage" => call("/v1/billing/usage", None),
        "GET /v1/billing/invoices" => call("/v1/billing/invoices", None),
        "GET /v1/billing/invoices/{invoice_id}" => {
            call(format!("/v1/billing/invoices/{}", fx.invoice_id), None)
        }
        "GET /v1/billing/requests/{request_id}" => {
            call(format!("/v1/billing/requests/{}", fx.request_id), None)
        }
        "POST /admin/v1/tenants" => call("/admin/v1/tenants", Some(json!({"name": "matrix"}))),
        "POST /admin/v1/tenants/{tenant_id}/keys" => call(
            format!("/admin/v1/tenants/{a}/keys"),
            Some(json!({"name": "matrix", "role": "member"})),
        ),
        "GET /admin/v1/tenants/{tenant_id}/keys/{key_id}" => call(
            format!("/admin/v1/tenants/{a}/keys/{}", fx.spare_key_id),
            None,
        ),
        "PATCH /admin/v1/tenants/{tenant_id}/keys/{key_id}" => call(
            format!("/admin/v1/tenants/{a}/keys/{}", fx.spare_key_id),
            Some(json!({"rpm": 1000})),
        ),
        "DELETE /admin/v1/tenants/{tenant_id}/keys/{key_id}" => call(
            format!("/admin/v1/tenants/{a}/keys/{}", fx.spare_key_id),
            None,
        ),
        "POST /admin/v1/tenants/{tenant_id}/credits" => call(
            format!("/admin/v1/tenants/{a}/credits"),
            Some(json!({"amount": "1", "idempotency_key": "matrix", "reason": "matrix"})),
        ),
        "PUT /admin/v1/tenants/{tenant_id}/low_balance" => call(
            format!("/admin/v1/tenants/{a}/low_balance"),
            Some(json!({"threshold": null})),
        ),
        "POST /v1/projects" => call("/v1/projects", Some(json!({"name": "matrix"}))),
        "GET /v1/projects" => call("/v1/projects", None),
        "GET /v1/projects/{project_id}" => {
            call(format!("/v1/projects/{}", uuid::Uuid::nil()), None)
        }
        "PATCH /v1/projects/{project_id}" => call(
            format!("/v1/projects/{}", uuid::Uuid::nil()),
            Some(json!({"rpm": 1000})),
        ),
        "DELETE /v1/projects/{project_id}" => {
            call(format!("/v1/projects/{}", uuid::Uuid::nil()), None)
        }
        "POST /v1/keys" => call(
            "/v1/keys",
            Some(json!({"name": "matrix", "role": "member"})),
        ),
        "GET /v1/keys" => call("/v1/keys", None),
        "GET /v1/keys/{key_id}" => call(format!("/v1/keys/{}", fx.spare_key_id), None),
        "PATCH /v1/keys/{key_id}" => call(
            format!("/v1/keys/{}", fx.spare_key_id),
            Some(json!({"rpm": 1000})),
        ),
        "DELETE /v1/keys/{key_id}" => call(format!("/v1/keys/{}", fx.spare_key_id), None),
        "GET /admin/v1/tenants" => call("/admin/v1/tenants", None),
        "POST /admin/v1/tenants/{tenant_id}/suspend" => call(
            format!("/admin/v1/tenants/{}/suspend", fx.spare_tenant),
            Some(json!({"reason": "the access matrix"})),
        ),
        "POST /admin/v1/tenants/{tenant_id}/resume" => call(
            format!("/admin/v1/tenants/{}/resume", fx.spare_tenant),
            Some(json!({})),
        ),
        "POST /admin/v1/tenants/{tenant_id}/close" => call(
            format!("/admin/v1/tenants/{}/close", fx.spare_tenant),
            Some(json!({"reason": "the access matrix", "remaining": "forfeit"})),
        ),
        "GET /admin/v1/tenants/{tenant_id}" => call(format!("/admin/v1/tenants/{a}"), None),
        "GET /admin/v1/tenants/{tenant_id}/keys" => {
            call(format!("/admin/v1/tenants/{a}/keys"), None)
        }
        "GET /admin/v1/tenants/{tenant_id}/balance" => {
            call(format!("/admin/v1/tenants/{a}/balance"), None)
        }
        "GET /admin/v1/tenants/{tenant_id}/audit/events" => {
            call(format!("/admin/v1/tenants/{a}/audit/events"), None)
        }
        "GET /admin/v1/tenants/{tenant_id}/usage" => {
            call(format!("/admin/v1/tenants/{a}/usage"), None)
        }
        "GET /admin/v1/tenants/{tenant_id}/invoices" => {
            call(format!("/admin/v1/tenants/{a}/invoices"), None)
        }
        "GET /admin/v1/tenants/{tenant_id}/invoices/{invoice_id}" => call(
            format!("/admin/v1/tenants/{a}/invoices/{}", fx.invoice_id),
            None,
        ),
        "GET /admin/v1/tenants/{tenant_id}/requests/{request_id}" => call(
            format!("/admin/v1/tenants/{a}/requests/{}", fx.request_id),
            None,
        ),
        "PUT /admin/v1/tenants/{tenant_id}/margin" => {
            call(format!("/admin/v1/tenants/{a}/margin"), no_margin())
        }
        "PUT /admin/v1/tenants/{tenant_id}/plan" => call(
            format!("/admin/v1/tenants/{a}/plan"),
            Some(json!({"plan": null})),
        ),
        "POST /admin/v1/providers" => call(
            "/admin/v1/providers",
            Some(
                json!({"name": "matrix", "kind": "openai", "base_url": "http://127.0.0.1:9", "api_key": "sk-matrix"}),
            ),
        ),
        "GET /admin/v1/providers" => call("/admin/v1/providers", None),
        "POST /admin/v1/providers/{name}/credentials" => call(
            "/admin/v1/providers/spare/credentials",
            Some(json!({"api_key": MOCK_API_KEY})),
        ),
        "PUT /admin/v1/credentials/{credential_id}" => call(
            format!("/admin/v1/credentials/{}", fx.credential_id),
            Some(json!({"enabled": true})),
        ),
        "GET /admin/v1/prices" => call("/admin/v1/prices", None),
        "PUT /admin/v1/prices/{model}" => call(
            "/admin/v1/prices/spare/matrix-model",
            Some(json!({"input_per_mtok": "1", "output_per_mtok": "2"})),
        ),
        "GET /admin/v1/prices/{model}" => call("/admin/v1/prices/mock/gpt-mock", None),
        "GET /admin/v1/price-book/events" => call("/admin/v1/price-book/events", None),
        "GET /admin/v1/aliases" => call("/admin/v1/aliases", None),
        "PUT /admin/v1/aliases/{alias}" => call(
            format!("/admin/v1/aliases/{ALIAS}"),
            Some(json!({"model": "mock/gpt-mock"})),
        ),
        "DELETE /admin/v1/aliases/{alias}" => call(format!("/admin/v1/aliases/{ALIAS}"), None),
        "GET /admin/v1/margins" => call("/admin/v1/margins", None),
        "PUT /admin/v1/margins/default" => call("/admin/v1/margins/default", no_margin()),
        "PUT /admin/v1/plans/{plan}/margin" => {
            call(format!("/admin/v1/plans/{PLAN}/margin"), no_margin())
        }
        _ => return None,
    })
}

/// The status of the answer and its error code: `error.code` (OpenAI's shape,
/// AIGNE's), else `error.type` (Anthropic's shape).
async fn send(
    app: &TestApp,
    method: Method,
    call: &Call,
    bearer: Option<&str>,
) -> (u16, Option<String>) {
    let mut request = app
        .client
        .request(method, format!("{}{}", app.address, call.path));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = &call.body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null);
    let error = &body["error"];
    let code = error["code"].as_str().or(error["type"].as_str());
    (status, code.map(str::to_string))
}

async fn every_route_answers_every_caller_as_the_matrix_says(kind: StoreKind) {
    let app = spawn_app_with(kind, |settings| {
        // A hub that takes payment webhooks, so the row shows their signature
        // check rather than a 503 for a missing secret.
        settings.limits.webhooks = WebhookSettings {
            secrets: vec!["whsec-matrix".into()],
            ..WebhookSettings::default()
        };
    })
    .await;
    let fx = fixture(&app).await;
    let mut differences = Vec::new();
    for row in matrix() {
        let (method, _) = row.route.split_once(' ').expect("`METHOD /path`");
        let method: Method = method.parse().unwrap();
        let call = call_for(&row.route, &fx)
            .unwrap_or_else(|| panic!("tests/api/access.rs has no request for {}", row.route));
        for (caller, expected) in &row.cells {
            let Some(expected) = expected else { continue };
            let bearer = fx.bearers.get(caller).map(String::as_str);
            let (status, code) = send(&app, method.clone(), &call, bearer).await;
            let code_matches = expected.code.is_none() || expected.code == code;
            if status != expected.status || !code_matches {
                differences.push(format!(
                    "{} as {caller:?}: the doc says {} {}, the hub answered {status} {}",
                    row.route,
                    expected.status,
                    expected.code.as_deref().unwrap_or(""),
                    code.as_deref().unwrap_or("")
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "docs/access.md differs from the hub:\n{}",
        differences.join("\n")
    );
    // The other tenant's key did reach its own tenant: its 404s are about A's ids.
    assert_ne!(fx.tenant, fx.other_tenant);
    let own = app
        .get(&fx.bearers[&Caller::OtherTenant], "/v1/billing/balance")
        .await;
    assert_eq!(own.status(), 200);
    unknown_tenants_are_not_found(&app, fx).await;
}

/// What docs/access.md says of every operator route naming a tenant: one that
/// does not exist is 404 `not_found`.
async fn unknown_tenants_are_not_found(app: &TestApp, fx: Fixture) {
    let ghost = Fixture {
        tenant: uuid::Uuid::new_v4().to_string(),
        spare_tenant: uuid::Uuid::new_v4().to_string(),
        ..fx
    };
    let rows = matrix();
    let naming_a_tenant: Vec<&Row> = rows
        .iter()
        .filter(|r| r.route.contains("{tenant_id}"))
        .collect();
    assert!(!naming_a_tenant.is_empty());
    for row in naming_a_tenant {
        let (method, _) = row.route.split_once(' ').unwrap();
        let call = call_for(&row.route, &ghost).unwrap();
        let answer = send(
            app,
            method.parse().unwrap(),
            &call,
            Some(&app.operator_token),
        )
        .await;
        assert_eq!(
            answer,
            (404, Some("not_found".to_string())),
            "{}",
            row.route
        );
    }
}
on_both_stores!(
    every_route_answers_every_caller_as_the_matrix_says,
    every_route_answers_every_caller_as_the_matrix_says
);
