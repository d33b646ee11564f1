//! Command line: `serve` (the default) and the operator's operations, each
//! printing JSON. Operations run in-process against the same store as the server.

use crate::config::{CommandEnv, Settings};
use crate::error::HubError;
use crate::startup::{build_hub, operator_token, require_existing_store, Application, TokenSource};
use clap::{Parser, Subcommand};
use domain::{ChangedBy, Credits, KeyId, Role, TenantId};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// Every environment variable the hub reads, with its default: shown by `--help`
/// (a test keeps it in step with the code and docs/api.md).
const ENV_HELP: &str = "\
Environment (a flag given on the command line wins over its variable; a value
that does not parse or is out of range stops the hub with an error naming it):
  AIGNE_HUB_LISTEN                    address to serve on (--listen); default 127.0.0.1:8080
  AIGNE_HUB_DATA_DIR                  embedded store and generated secrets (--data-dir); default ./data
  DATABASE_URL                        postgres://… (--database-url); default unset: SQLite in the data dir
  AIGNE_HUB_OPERATOR_TOKEN            operator token for /admin; default generated into <data dir>/operator_token
  AIGNE_HUB_MASTER_KEY                key encrypting provider secrets (hex or base64); default generated into <data dir>/master.key
  AIGNE_HUB_MODE                      service_provider or enterprise; default service_provider
  AIGNE_HUB_INITIAL_CREDITS           credits of a tenant created without any; default 0
  AIGNE_HUB_STREAM_CREDIT_CUTOFF      on/off: end a stream the tenant cannot pay; default on
  AIGNE_HUB_EXPIRING_SOON_DAYS        window of `expiring_soon` in balances, at most 3650; default 7
  AIGNE_HUB_CREDIT_PREFIX             $, €, ¥ or empty, for AIGNE apps; default $
  AIGNE_HUB_PUBLIC_URL                origin of generated image URLs; default the request's scheme and host
  AIGNE_HUB_WEBHOOK_SECRET            payment webhook secrets, comma-separated; default unset (503)
  AIGNE_HUB_WEBHOOK_TOLERANCE_SECS    accepted age of a webhook signature; default 300
  AIGNE_HUB_LOW_BALANCE_WEBHOOK_URL   receiver of balance.low notifications; default unset (none sent)
  AIGNE_HUB_LOW_BALANCE_WEBHOOK_SECRET  signs them (required with the URL); default unset
  AIGNE_HUB_HTTP_WORKERS              HTTP threads, 1-64; default 2
  AIGNE_HUB_ACTOR_THREADS             tenant actor threads, 1-64; default 2
  AIGNE_HUB_PROJECTOR_BATCH_DELAY_MS  how long projections may lag local commits (at most 5000); default 100
  AIGNE_HUB_INVOICE_ANCHOR_DAY        day of the month billing periods start, 1-28; default 1
  AIGNE_HUB_INVOICE_GRACE_HOURS       hours an invoice stays a draft after its period (at most 648); default 72
  AIGNE_HUB_EMBEDDINGS_ANSWER_MAX_BYTES  most bytes of one request's embeddings answers (>= 1024); default 50331648
  AIGNE_HUB_IMAGES_ANSWER_MAX_BYTES   most bytes of an image answer (>= 1024); default 50331648
  AIGNE_HUB_PROVIDER_API_KEY          `provider add`: the provider's key; default unset: read from stdin
  RUST_LOG                            log filter; default info,sqlx=warn

Only `serve` creates a store; every other command works on an existing one
(run it with the server's --data-dir or DATABASE_URL).";

#[derive(Parser)]
#[command(
    name = "aigne-hub",
    version,
    about = "A multi-tenant AI gateway with a replayable credit ledger",
    long_about = "A multi-tenant AI gateway with a replayable credit ledger.\n\n\
        Without a command it serves HTTP (same as `serve`). The other commands are\n\
        the operator's operations; each prints JSON.",
    after_help = ENV_HELP
)]
struct Cli {
    /// Directory of the embedded store and generated secrets
    /// [env: AIGNE_HUB_DATA_DIR] [default: ./data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// postgres://… for PostgreSQL; unset = embedded SQLite in the data dir
    /// [env: DATABASE_URL].
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Address the HTTP server listens on (`serve`, the default command)
    /// [env: AIGNE_HUB_LISTEN] [default: 127.0.0.1:8080].
    #[arg(long, global = true)]
    listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (the default); creates the store on first start.
    Serve,
    /// Create, list, show, suspend, resume and close tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Issue, revoke and list a tenant's API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Grant credits to a tenant.
    #[command(subcommand)]
    Credits(CreditsCmd),
    /// Show a tenant's balance.
    Balance {
        /// The tenant's id.
        #[arg(long)]
        tenant: TenantId,
    },
    /// Add upstream AI providers.
    #[command(subcommand)]
    Provider(ProviderCmd),
    /// Set model prices and model aliases in the price book.
    #[command(subcommand)]
    Price(PriceCmd),
    /// Rebuild every projection from the event log and compare it with the live one.
    Replay,
    /// Check the tamper-evident hash chains of the event log.
    #[command(subcommand)]
    Audit(AuditCmd),
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Recompute the hash chain of every tenant's events (or one tenant's) and
    /// report the first broken sequence; exits non-zero if any chain is broken.
    /// With --export, checks a file from `GET /v1/audit/events` offline (no
    /// database) and recomputes that tenant's balance from it.
    Verify {
        /// Only this tenant.
        #[arg(long, conflicts_with = "export")]
        tenant: Option<TenantId>,
        /// A file saved from `GET /v1/audit/events`.
        #[arg(long)]
        export: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant; prints its id.
    Create {
        /// A label for people (1 to 200 characters).
        #[arg(long)]
        name: String,
        /// Credits granted at creation, as a decimal string (default:
        /// AIGNE_HUB_INITIAL_CREDITS).
        #[arg(long)]
        initial_credits: Option<String>,
    },
    /// List tenants, newest first (as GET /admin/v1/tenants); `next_cursor`
    /// gives the next page to --cursor.
    List {
        /// Part of a name (any case), or the start of a tenant id.
        #[arg(long)]
        query: Option<String>,
        /// Only tenants in this status: active.
        #[arg(long)]
        status: Option<String>,
        /// Tenants per page, 1 to 200 (default 50).
        #[arg(long)]
        limit: Option<String>,
        /// The `next_cursor` of the page before.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show a tenant: status, plan, margin, balance and key counts (as GET
    /// /admin/v1/tenants/{id}).
    Show {
        /// The tenant's id.
        tenant: TenantId,
    },
    /// Suspend a tenant: its model requests are refused (403) until it is
    /// resumed; open holds settle as usual, and reads still work.
    Suspend {
        /// The tenant's id.
        tenant: TenantId,
        /// Why (1 to 500 characters); its keys' refusals quote it.
        #[arg(long)]
        reason: String,
    },
    /// Resume a suspended tenant.
    Resume {
        /// The tenant's id.
        tenant: TenantId,
    },
    /// Close a tenant for good (suspend it first, and close it once its open
    /// holds have settled or expired); its credit left is forfeited or refunded.
    Close {
        /// The tenant's id.
        tenant: TenantId,
        /// Why (1 to 500 characters).
        #[arg(long)]
        reason: String,
        /// forfeit (the operator keeps it) or refund (paid back outside the hub).
        #[arg(long)]
        remaining: String,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Issue a key (printed once).
    Issue {
        /// The tenant's id.
        #[arg(long)]
        tenant: TenantId,
        /// A label for people.
        #[arg(long)]
        name: String,
        /// admin, member, billing or auditor.
        #[arg(long)]
        role: Role,
        /// The key's scopes as JSON, as the admin API takes them, e.g.
        /// '{"models":["openai/*"],"budget":{"amount":"50","period":"month"},"rpm":60}'.
        #[arg(long)]
        scopes: Option<String>,
    },
    /// Show a key with its scopes and what it has used of them.
    Show {
        /// The tenant's id.
        #[arg(long)]
        tenant: TenantId,
        /// The key's id.
        #[arg(long)]
        key_id: KeyId,
    },
    /// Change some of a key's scopes: fields named in the JSON change (`null`
    /// removes a limit), the others stay.
    Set {
        /// The tenant's id.
        #[arg(long)]
        tenant: TenantId,
        /// The key's id.
        #[arg(long)]
        key_id: KeyId,
        /// The scope fields to change as JSON, e.g. '{"rpm":120,"expires_at":null}'.
        #[arg(long)]
        scopes: String,
    },
    /// Revoke a key: it is refused from then on.
    Revoke {
        /// The tenant's id.
        #[arg(long)]
        tenant: TenantId,
        /// The key's id (`key_id` printed by `key issue`).
        #[arg(long)]
        key_id: KeyId,
    },
    /// List a tenant's keys, newest first, without their secrets (as GET
    /// /admin/v1/tenants/{id}/keys).
    List {
        /// The tenant's id.
        tenant: TenantId,
        /// Keys per page, 1 to 200 (default 50).
        #[arg(long)]
        limit: Option<String>,
        /// The `next_cursor` of the page before.
        #[arg(long)]
        cursor: Option<String>,
    },
}

#[derive(Subcommand)]
enum CreditsCmd {
    /// Grant credits; repeating a grant with the same idempotency key is a no-op.
    Grant {
        /// The tenant's id.
        #[arg(long)]
        tenant: TenantId,
        /// Credits, as a decimal string.
        #[arg(long)]
        amount: String,
        /// Names this grant, so that a retry does not grant twice.
        #[arg(long)]
        idempotency_key: String,
        /// Why (kept in the ledger).
        #[arg(long)]
        reason: String,
        /// RFC 3339 time (e.g. 2026-07-01T00:00:00Z) when what is left of the
        /// grant expires; unset: never.
        #[arg(long)]
        expires_at: Option<String>,
    },
}

#[derive(Subcommand)]
enum ProviderCmd {
    /// Add a provider. The API key (Bedrock: the secret access key) is read from
    /// AIGNE_HUB_PROVIDER_API_KEY or, if unset, from standard input (never from the
    /// command line, where `ps` shows it).
    Add {
        /// The provider's name: the first part of model ids (`openai/gpt-4o-mini`).
        #[arg(long)]
        name: String,
        /// openai, anthropic, bedrock, gemini, deepseek, ollama, openrouter, xai, doubao or poe.
        #[arg(long)]
        kind: String,
        /// Defaults to the kind's public endpoint.
        #[arg(long)]
        base_url: Option<String>,
        /// Bedrock only.
        #[arg(long)]
        region: Option<String>,
        /// Bedrock only.
        #[arg(long)]
        access_key_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum PriceCmd {
    /// Set a model's price in credits per million tokens.
    Set {
        /// `provider/model`, e.g. openai/gpt-4o-mini.
        model: String,
        /// Credits per million input tokens (the provider's cost).
        #[arg(long)]
        input: String,
        /// Credits per million output tokens.
        #[arg(long)]
        output: String,
        /// Credits per million cached input tokens read.
        #[arg(long)]
        cache_read: Option<String>,
        /// Credits per million input tokens written to the cache.
        #[arg(long)]
        cache_write: Option<String>,
        /// Credits per generated image.
        #[arg(long)]
        per_image: Option<String>,
        /// The model's largest answer, in tokens.
        #[arg(long)]
        max_output_tokens: Option<u32>,
    },
    /// Make a bare model name (as apps send it, e.g. gpt-4o-mini) stand for a
    /// priced `provider/model`.
    Alias {
        /// The bare name, without `/`.
        alias: String,
        /// `provider/model`, e.g. openai/gpt-4o-mini.
        model: String,
    },
    /// Remove an alias.
    Unalias {
        /// The bare name.
        alias: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let command_env = CommandEnv::from_env();
    init_tracing(command_env.log_filter.as_deref());
    let mut settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{}", serde_json::json!({"error": format!("{e:#}")}));
            return ExitCode::FAILURE;
        }
    };
    // A flag given on the command line wins over its variable.
    if let Some(data_dir) = cli.data_dir {
        settings.data_dir = data_dir;
    }
    if let Some(url) = cli.database_url {
        settings.database_url = Some(url).filter(|s| !s.is_empty());
    }
    if let Some(listen) = cli.listen {
        settings.listen = listen;
    }
    let command = cli.command.unwrap_or(Command::Serve);
    let system = actix_web::rt::System::new();
    match system.block_on(run(settings, command_env, command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", serde_json::json!({"error": format!("{e:#}")}));
            ExitCode::FAILURE
        }
    }
}

/// The log filter of `RUST_LOG`, else (unset or invalid) `info,sqlx=warn`.
fn init_tracing(log_filter: Option<&str>) {
    let filter = log_filter
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| "info,sqlx=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn print(value: serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(&value).expect("JSON values always serialize")
    );
}

async fn run(
    mut settings: Settings,
    command_env: CommandEnv,
    command: Command,
) -> anyhow::Result<ExitCode> {
    if let Command::Serve = command {
        return serve(settings).await;
    }
    if let Command::Audit(AuditCmd::Verify {
        export: Some(path), ..
    }) = &command
    {
        // Offline: no store is opened, nothing but the file is read.
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let check = crate::audit::verify_export(&text, &settings.limits)?;
        let ok = check.chain.first_break.is_none();
        print(serde_json::to_value(&check)?);
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    // Only `serve` creates a store: a command run from the wrong directory must
    // not make an empty one with new secrets and then report "tenant not found".
    require_existing_store(&mut settings)?;
    let hub = build_hub(&settings).await?;
    let result = match command {
        Command::Serve => unreachable!("handled above"),
        Command::Tenant(TenantCmd::Create {
            name,
            initial_credits,
        }) => {
            let initial = match initial_credits {
                Some(raw) => {
                    Credits::parse(&raw).map_err(|e| anyhow::anyhow!("--initial-credits: {e}"))?
                }
                None => hub.limits().initial_credits,
            };
            // Errors read as the HTTP API words them (`HubError`).
            let tenant_id = hub
                .create_tenant(name, initial, cli_actor())
                .await
                .map_err(HubError::from)?;
            serde_json::json!({"tenant_id": tenant_id.to_string()})
        }
        Command::Tenant(TenantCmd::List {
            query,
            status,
            limit,
            cursor,
        }) => {
            let listing = crate::routes::tenants::ListQuery {
                query,
                status,
                cursor,
                limit,
            }
            .parse()?;
            // No server may be running to keep the directory current.
            hub.projector().catch_up().await?;
            crate::routes::tenants::list_json(&hub, listing).await?
        }
        Command::Tenant(TenantCmd::Show { tenant }) => {
            hub.projector().catch_up().await?;
            crate::routes::tenants::show_json(&hub, tenant).await?
        }
        Command::Key(KeyCmd::List {
            tenant,
            limit,
            cursor,
        }) => {
            hub.projector().catch_up().await?;
            let page = crate::routes::tenants::PageQuery { cursor, limit };
            crate::routes::tenants::keys_json(&hub, tenant, page).await?
        }
        Command::Tenant(TenantCmd::Suspend { tenant, reason }) => {
            let reply = hub
                .suspend_tenant(tenant, reason, cli_actor())
                .await
                .map_err(HubError::from)?;
            crate::routes::tenant_lifecycle::lifecycle_json(tenant, &reply, None)
        }
        Command::Tenant(TenantCmd::Resume { tenant }) => {
            let reply = hub
                .resume_tenant(tenant, cli_actor())
                .await
                .map_err(HubError::from)?;
            crate::routes::tenant_lifecycle::lifecycle_json(tenant, &reply, None)
        }
        Command::Tenant(TenantCmd::Close {
            tenant,
            reason,
            remaining,
        }) => {
            let remaining = crate::routes::tenant_lifecycle::parse_remaining(&remaining)?;
            let reply = hub
                .close_tenant(tenant, reason, remaining, cli_actor())
                .await
                .map_err(HubError::from)?;
            crate::routes::tenant_lifecycle::lifecycle_json(tenant, &reply, Some(remaining))
        }
        Command::Key(KeyCmd::Issue {
            tenant,
            name,
            role,
            scopes,
        }) => {
            let scopes = match scopes {
                Some(raw) => scope_patch(&raw)?.applied_to(&Default::default()),
                None => Default::default(),
            };
            let (_, key, state) = hub
                .issue_key(
                    tenant,
                    crate::hub::KeySpec {
                        name,
                        role,
                        scopes,
                        project: None,
                    },
                    None,
                    cli_actor(),
                )
                .await
                .map_err(HubError::from)?;
            let mut body = crate::routes::key_scopes::key_json(&state, hub.now());
            body["key"] = serde_json::json!(key);
            body
        }
        Command::Key(KeyCmd::Show { tenant, key_id }) => {
            let state = hub
                .key_state(tenant, key_id, None)
                .await
                .map_err(HubError::from)?;
            crate::routes::key_scopes::key_json(&state, hub.now())
        }
        Command::Key(KeyCmd::Set {
            tenant,
            key_id,
            scopes,
        }) => {
            let state = hub
                .set_key_scopes(tenant, key_id, scope_patch(&scopes)?, None, cli_actor())
                .await
                .map_err(HubError::from)?;
            crate::routes::key_scopes::key_json(&state, hub.now())
        }
        Command::Key(KeyCmd::Revoke { tenant, key_id }) => {
            hub.revoke_key(tenant, key_id, None, cli_actor())
                .await
                .map_err(HubError::from)?;
            serde_json::json!({"key_id": key_id.to_string(), "revoked": true})
        }
        Command::Credits(CreditsCmd::Grant {
            tenant,
            amount,
            idempotency_key,
            reason,
            expires_at,
        }) => {
            let amount =
                Credits::parse_positive(&amount).map_err(|e| anyhow::anyhow!("--amount: {e}"))?;
            let expires_at = expires_at
                .as_deref()
                .map(|raw| crate::routes::admin::parse_time("--expires-at", raw))
                .transpose()?;
            let (grant, _) = hub
                .grant(
                    tenant,
                    amount,
                    idempotency_key.clone(),
                    reason,
                    expires_at,
                    cli_actor(),
                )
                .await
                .map_err(HubError::from)?;
            serde_json::json!({
                "tenant_id": tenant.to_string(), "idempotency_key": idempotency_key,
                "amount": grant.amount.to_decimal_string(), "reason": grant.reason,
                "expires_at": grant.expires_at.map(|t| t.to_rfc3339()), "granted_at": grant.at.to_rfc3339()
            })
        }
        Command::Balance { tenant } => crate::billing::balance_body(
            tenant,
            &hub.balance(tenant, None).await.map_err(HubError::from)?,
            hub.now(),
            hub.limits().expiring_soon_window_secs,
        ),
        Command::Provider(ProviderCmd::Add {
            name,
            kind,
            base_url,
            region,
            access_key_id,
        }) => {
            let secret = match command_env.provider_api_key {
                Some(key) => key,
                None => {
                    let mut key = String::new();
                    std::io::stdin()
                        .take(crate::crypto::SECRET_MAX_BYTES as u64 + 1)
                        .read_to_string(&mut key)?;
                    key.trim().to_string()
                }
            };
            let aws = kind == "bedrock";
            let spec = crate::hub::ProviderSpec {
                name,
                kind,
                base_url,
                api_key: (!aws).then(|| secret.clone()),
                region,
                access_key_id,
                secret_access_key: aws.then_some(secret),
                weight: None,
            };
            let row = hub.add_provider(spec).await.map_err(HubError::from)?;
            serde_json::json!({"provider_id": row.provider_id, "name": row.name, "kind": row.kind, "base_url": row.base_url, "region": row.region})
        }
        Command::Price(PriceCmd::Set {
            model,
            input,
            output,
            cache_read,
            cache_write,
            per_image,
            max_output_tokens,
        }) => {
            let spec = crate::hub::PriceSpec {
                input_per_mtok: input,
                output_per_mtok: output,
                cache_read_per_mtok: cache_read,
                cache_write_per_mtok: cache_write,
                per_image,
                max_output_tokens,
                ..Default::default()
            };
            hub.price_book(cli_actor())
                .set_price(&model, &spec)
                .await
                .map_err(HubError::from)?;
            let priced = hub.catalog().snapshot().models.get(&model).cloned();
            priced
                .map(|p| crate::routes::models::price_json(&p))
                .unwrap_or_default()
        }
        Command::Price(PriceCmd::Alias { alias, model }) => {
            hub.price_book(cli_actor())
                .set_alias(&alias, &model)
                .await
                .map_err(HubError::from)?;
            serde_json::json!({"alias": alias, "model": model})
        }
        Command::Price(PriceCmd::Unalias { alias }) => {
            hub.price_book(cli_actor())
                .remove_alias(&alias)
                .await
                .map_err(HubError::from)?;
            serde_json::json!({"alias": alias, "removed": true})
        }
        Command::Audit(AuditCmd::Verify { tenant, .. }) => {
            let reports = crate::audit::verify_store(hub.store().as_ref(), tenant).await?;
            let ok = reports.iter().all(|r| r.first_break.is_none());
            print(serde_json::json!({"ok": ok, "tenants": reports}));
            hub.shutdown_tenants();
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Replay => {
            let report =
                crate::replay::replay(hub.store().as_ref(), hub.projector().projections()).await?;
            let ok = report.all_identical && report.chains_intact;
            print(serde_json::to_value(&report)?);
            hub.shutdown_tenants();
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    };
    hub.shutdown_tenants();
    print(result);
    Ok(ExitCode::SUCCESS)
}

async fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    let (_, token_source) = operator_token(&settings)?;
    let app = Application::build(settings.clone()).await?;
    let address = format!("http://{}", settings.listen.replace("0.0.0.0", "127.0.0.1"));
    let store = match &settings.database_url {
        Some(_) => "PostgreSQL (DATABASE_URL)".to_string(),
        None => format!("embedded SQLite in {}", settings.data_dir.display()),
    };
    let token_hint = match token_source {
        TokenSource::Env => "from AIGNE_HUB_OPERATOR_TOKEN".to_string(),
        TokenSource::File { path, created } => format!(
            "{} {}",
            if created {
                "generated into"
            } else {
                "read from"
            },
            path.display()
        ),
    };
    let token_cmd = match &settings.operator_token {
        Some(_) => "$AIGNE_HUB_OPERATOR_TOKEN".to_string(),
        None => format!(
            "$(cat {})",
            settings.data_dir.join("operator_token").display()
        ),
    };
    eprintln!(
        "aigne-hub listening on {address} (store: {store})\noperator token: {token_hint}\n\nquickstart:\n  TOKEN={token_cmd}\n  curl -s -X POST {address}/admin/v1/providers -H \"Authorization: Bearer $TOKEN\" -d '{{\"name\":\"openai\",\"kind\":\"openai\",\"base_url\":\"https://api.openai.com/v1\",\"api_key\":\"'$OPENAI_API_KEY'\"}}'\n  curl -s -X PUT {address}/admin/v1/prices/openai/gpt-4o-mini -H \"Authorization: Bearer $TOKEN\" -d '{{\"input_per_mtok\":\"0.15\",\"output_per_mtok\":\"0.6\"}}'\n  curl -s -X POST {address}/admin/v1/tenants -H \"Authorization: Bearer $TOKEN\" -d '{{\"name\":\"acme\",\"initial_credits\":\"10\"}}'\n  curl -s -X POST {address}/admin/v1/tenants/<tenant_id>/keys -H \"Authorization: Bearer $TOKEN\" -d '{{\"name\":\"app\",\"role\":\"admin\"}}'\n  curl -s {address}/v1/chat/completions -H \"Authorization: Bearer <key>\" -d '{{\"model\":\"openai/gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'\n"
    );
    app.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

/// `--scopes`: the admin API's scope fields, as JSON.
fn scope_patch(raw: &str) -> anyhow::Result<domain::tenant::ScopesPatch> {
    let value: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| anyhow::anyhow!("--scopes: not JSON: {e}"))?;
    let serde_json::Value::Object(object) = value else {
        anyhow::bail!("--scopes: a JSON object is required");
    };
    let fields = crate::routes::key_scopes::ScopeFields::from_object(object)?;
    Ok(fields.into_patch()?)
}

/// Who a CLI change is recorded as: the operator, with the login name the OS
/// reports (`USER`, else `LOGNAME`), which identifies and does not authenticate.
fn cli_actor() -> ChangedBy {
    let os_user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok();
    ChangedBy::operator_cli(os_user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// `AIGNE_HUB_*` names quoted as string literals in the files under `dir`.
    fn env_names_read(dir: &Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // The benchmark client has settings of its own.
                if path.file_name().is_some_and(|n| n != "bin") {
                    env_names_read(&path, found);
                }
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for piece in text.split("\"AIGNE_HUB_").skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !name.is_empty() && piece[name.len()..].starts_with('"') {
                    found.insert(format!("AIGNE_HUB_{name}"));
                }
            }
        }
    }

    #[test]
    fn every_environment_variable_is_in_help_and_in_the_docs() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut read = BTreeSet::new();
        env_names_read(&root.join("src"), &mut read);
        assert!(read.contains("AIGNE_HUB_LISTEN"), "{read:?}");
        let help = Cli::command().render_long_help().to_string();
        let docs = std::fs::read_to_string(root.join("docs/api.md")).unwrap();
        let configuration = docs.split("## Configuration").nth(1).unwrap();
        for name in &read {
            assert!(help.contains(name.as_str()), "--help lacks {name}");
            assert!(
                configuration.contains(name.as_str()),
                "docs/api.md's configuration lacks {name}"
            );
        }
    }
}
