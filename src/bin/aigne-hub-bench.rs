//! Load benchmark for the hub's added latency and throughput on non-streaming
//! chat completions with billing on (see docs/benchmarks.md; `bench/run.sh`
//! starts a hub on a fresh PostgreSQL database and runs this against it).
//!
//! It starts a fast mock OpenAI-compatible upstream on 127.0.0.1, registers it
//! in an already running hub through the operator API (a provider, a price,
//! several tenants with one `member` key each), then measures the same request
//! twice: straight at the mock ("direct") and through the hub ("hub"). Each side
//! runs, after a short warm-up:
//!
//! - fixed offered loads (open loop): requests are scheduled at a constant rate
//!   and each latency is measured from its *scheduled* send time, so a stalled
//!   server is charged for the requests it delayed (no coordinated omission).
//!   In-flight requests are capped; a request that would exceed the cap is
//!   dropped and counted;
//! - saturation (closed loop): N connections each send their next request as
//!   soon as the previous one is answered, for D seconds.
//!
//! Every loop ends by itself (fixed duration, per-request timeout, bounded drain).
//! All traffic goes to 127.0.0.1: the hub URL must be a loopback address.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::Parser;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tokens the mock reports for every answer (the hub bills exactly these).
const PROMPT_TOKENS: u64 = 12;
const COMPLETION_TOKENS: u64 = 30;
/// The model the mock serves; the hub routes `<provider>/bench-model` to it.
const MODEL: &str = "bench-model";
/// Prices set for the model, in credits per million tokens.
const INPUT_PER_MTOK: &str = "1";
const OUTPUT_PER_MTOK: &str = "2";
/// CPU (percent of one core) used by other work during a step above which the
/// step is reported as disturbed.
const DISTURBED_OTHER_CPU_PCT: f64 = 30.0;
/// Pause between two measured steps, so one step's tail does not overlap the next.
/// Slowest requests listed per step in the JSON summary.
const SLOWEST_REPORTED: usize = 60;
const PAUSE_BETWEEN_STEPS: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(
    name = "aigne-hub-bench",
    about = "Measures the latency and throughput the hub adds in front of a fast mock upstream"
)]
struct Args {
    /// URL of the running hub; must be a loopback address.
    #[arg(
        long,
        env = "AIGNE_HUB_BENCH_HUB",
        default_value = "http://127.0.0.1:8080"
    )]
    hub: String,
    /// The hub's operator token.
    #[arg(long, env = "AIGNE_HUB_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: String,
    /// Seconds each measured step lasts (each fixed rate, and saturation).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up traffic (discarded) before each side is measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Offered loads for the open-loop steps, requests per second.
    #[arg(long, value_delimiter = ',', default_value = "200,500,1000")]
    rates: Vec<u32>,
    /// Connections of the closed-loop saturation step (0 skips it).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Tenants (one key each) the hub traffic is spread over, round-robin.
    #[arg(long, default_value_t = 8)]
    tenants: usize,
    /// Most requests in flight in an open-loop step; beyond it requests are dropped.
    #[arg(long, default_value_t = 2000)]
    max_in_flight: usize,
    /// Per-request timeout, milliseconds (a timed-out request counts as an error).
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Worker threads of the mock upstream.
    #[arg(long, default_value_t = 1)]
    mock_workers: usize,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// The offered load the target applies to.
    #[arg(long, default_value_t = 500)]
    target_rate: u32,
    /// Target: most p99 latency the hub may add at `--target-rate`, milliseconds.
    #[arg(long, default_value_t = 5.0)]
    target_added_p99_ms: f64,
    /// PID of the hub process, to report its CPU use per step (Linux /proc).
    #[arg(long)]
    hub_pid: Option<u32>,
    /// The hub's PostgreSQL database: its backends' CPU use is reported as
    /// PostgreSQL's (other databases' backends count as other work). Unset: every
    /// PostgreSQL process counts.
    #[arg(long)]
    pg_database: Option<String>,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Scopes every tenant's key is issued with, as the admin API's JSON (e.g.
    /// '{"models":["bench/*"],"budget":{"amount":"1000000","period":"month"},"rpm":1000000}'),
    /// to measure what the scope checks add. Default: unscoped keys.
    #[arg(long)]
    key_scopes: Option<String>,
}

// ---------------------------------------------------------------------------
// Mock upstream

struct MockState {
    /// `Bearer <mock key>`: anything else is refused with 401.
    expected_auth: String,
    response: web::Bytes,
    served: AtomicU64,
    refused: AtomicU64,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn mock_chat(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<MockState>,
) -> HttpResponse {
    let authorized = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == state.expected_auth.as_bytes());
    if !authorized {
        state.refused.fetch_add(1, Ordering::Relaxed);
        return HttpResponse::Unauthorized().content_type("application/json").body(
            r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        );
    }
    if !contains(&body, b"\"messages\"") || !contains(&body, MODEL.as_bytes()) {
        state.refused.fetch_add(1, Ordering::Relaxed);
        return HttpResponse::BadRequest().content_type("application/json").body(
            r#"{"error":{"message":"expected a chat request for bench-model","type":"invalid_request_error","param":null,"code":null}}"#,
        );
    }
    state.served.fetch_add(1, Ordering::Relaxed);
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.response.clone())
}

fn mock_response() -> web::Bytes {
    let body = json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there", "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
    });
    web::Bytes::from(body.to_string())
}

/// Starts the mock on its own thread (its own actix system); returns its port.
fn start_mock(workers: usize, api_key: &str) -> anyhow::Result<(u16, web::Data<MockState>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let state = web::Data::new(MockState {
        expected_auth: format!("Bearer {api_key}"),
        response: mock_response(),
        served: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let data = state.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("mock-upstream".into())
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .route("/v1/chat/completions", web::post().to(mock_chat))
                })
                .workers(workers.max(1))
                .disable_signals()
                // Longer than the hub's idle pool timeout (60 s), as real providers'
                // keep-alive is: the hub never reuses a connection the mock closed.
                .keep_alive(Duration::from_secs(90))
                .backlog(4096)
                .listen(listener);
                match server {
                    Ok(server) => {
                        let _ = ready_tx.send(Ok(()));
                        let _ = server.run().await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            })
        })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow::anyhow!("mock upstream did not start"))?
        .map_err(|e| anyhow::anyhow!("mock upstream: {e}"))?;
    Ok((port, state))
}

// ---------------------------------------------------------------------------
// Load generation

/// One side's request: where to send it, its body, and the keys to rotate through.
#[derive(Clone)]
struct Target {
    url: String,
    body: web::Bytes,
    auths: Arc<Vec<HeaderValue>>,
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect error".into()
    } else if e.is_body() || e.is_decode() {
        "body error".into()
    } else {
        "transport error".into()
    }
}

async fn send_one(
    client: &reqwest::Client,
    target: &Target,
    i: u64,
    timeout: Duration,
) -> Result<(), String> {
    let auth = target.auths[(i % target.auths.len() as u64) as usize].clone();
    let response = client
        .post(&target.url)
        .header(AUTHORIZATION, auth)
        .header(CONTENT_TYPE, "application/json")
        .body(target.body.clone())
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| error_kind(&e))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| error_kind(&e))?;
    if !status.is_success() {
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/code")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default();
        return Err(format!("HTTP {} {code}", status.as_u16())
            .trim_end()
            .to_string());
    }
    if !contains(&body, b"\"usage\"") {
        return Err("success without usage".into());
    }
    Ok(())
}

#[derive(Default)]
struct Recorder {
    /// Latency of each successful request, microseconds (sorted by `Step::finish`).
    latencies_us: Vec<u64>,
    /// (due or send time since the step's start, latency), microseconds, for the
    /// per-second timeline.
    samples: Vec<(u64, u64)>,
    /// Open loop only: how late the load generator itself started each request
    /// after its due time (its own scheduling delay, included in the latency).
    lag_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    fn record(
        &mut self,
        at: Duration,
        lag: Option<Duration>,
        latency: Duration,
        outcome: Result<(), String>,
    ) {
        if let Some(lag) = lag {
            self.lag_us.push(lag.as_micros() as u64);
        }
        match outcome {
            Ok(()) => {
                self.latencies_us.push(latency.as_micros() as u64);
                self.samples
                    .push((at.as_micros() as u64, latency.as_micros() as u64));
            }
            Err(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Recorder) {
        self.latencies_us.extend(other.latencies_us);
        self.samples.extend(other.samples);
        self.lag_us.extend(other.lag_us);
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }

    /// The `n` slowest requests: when each was due (ms into the step) and its
    /// latency, to find what else happened at that moment.
    fn slowest(&self, n: usize) -> Vec<Value> {
        let mut samples = self.samples.clone();
        samples.sort_unstable_by_key(|&(_, latency)| std::cmp::Reverse(latency));
        samples.truncate(n);
        samples.sort_unstable();
        samples
            .into_iter()
            .map(|(at, latency)| json!({"at_ms": round3(at as f64 / 1000.0), "latency_ms": round3(latency as f64 / 1000.0)}))
            .collect()
    }

    /// p99 and max latency of the requests due in each second of the step.
    fn timeline(&self) -> Vec<Value> {
        let mut seconds: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &(at, latency) in &self.samples {
            seconds.entry(at / 1_000_000).or_default().push(latency);
        }
        seconds
            .into_iter()
            .map(|(s, mut v)| {
                v.sort_unstable();
                json!({"s": s, "ok": v.len(), "p50_ms": round3(percentile(&v, 0.5)), "p99_ms": round3(percentile(&v, 0.99)), "max_ms": round3(percentile(&v, 1.0))})
            })
            .collect()
    }
}

/// CPU time counters from /proc (Linux), to report who used the cores in a step.
#[derive(Clone, Copy, Default)]
struct CpuSample {
    machine_busy: u64,
    machine_iowait: u64,
    machine_irq: u64,
    machine_steal: u64,
    machine_total: u64,
    hub: Option<u64>,
    postgres: u64,
    bench: u64,
}

/// Clock ticks per second of /proc's CPU counters (USER_HZ; 100 on Linux).
const USER_HZ: f64 = 100.0;

fn proc_ticks(stat: &str) -> Option<u64> {
    // Fields after the parenthesised command name; utime and stime are the 14th
    // and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Whether a PostgreSQL process counts as the hub's: a backend of the hub's
/// database, or a background process (WAL writer, checkpointer...) shared by all.
/// Backends of other databases count as other work.
fn hub_postgres_process(cmdline: &str, database: Option<&str>) -> bool {
    let Some(database) = database else {
        return true;
    };
    if cmdline.split_whitespace().any(|word| word == database) {
        return true;
    }
    let client_backend =
        cmdline.contains("127.0.0.1(") || cmdline.contains("[local]") || cmdline.contains("::1(");
    !client_backend
}

fn cpu_sample(hub_pid: Option<u32>, pg_database: Option<&str>) -> CpuSample {
    let mut sample = CpuSample::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        if let Some(line) = stat.lines().next() {
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            if v.len() >= 8 {
                sample.machine_total = v.iter().take(8).sum();
                sample.machine_busy = v[0] + v[1] + v[2] + v[5] + v[6];
                sample.machine_iowait = v[4];
                sample.machine_irq = v[5] + v[6];
                sample.machine_steal = v[7];
            }
        }
    }
    sample.hub = hub_pid
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .and_then(|s| proc_ticks(&s));
    sample.bench = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| proc_ticks(&s))
        .unwrap_or(0);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if stat.contains("(postgres)") {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if hub_postgres_process(&cmdline, pg_database) {
                    sample.postgres += proc_ticks(&stat).unwrap_or(0);
                }
            }
        }
    }
    sample
}

/// CPU use over a step, in percent of one core (200 = both cores of a 2-core box).
fn cpu_usage(before: CpuSample, after: CpuSample, wall: Duration, cores: usize) -> Value {
    let secs = wall.as_secs_f64().max(1e-9);
    let pct = |ticks: u64| (ticks as f64 / USER_HZ / secs * 1000.0).round() / 10.0;
    let total = after.machine_total.saturating_sub(before.machine_total);
    let share = |a: u64, b: u64| {
        if total > 0 {
            (a.saturating_sub(b) as f64 / total as f64 * cores as f64 * 1000.0).round() / 10.0
        } else {
            0.0
        }
    };
    let machine = share(after.machine_busy, before.machine_busy);
    let hub = match (before.hub, after.hub) {
        (Some(b), Some(a)) => Some(pct(a.saturating_sub(b))),
        _ => None,
    };
    let postgres = pct(after.postgres.saturating_sub(before.postgres));
    let bench = pct(after.bench.saturating_sub(before.bench));
    // Everything else that ran meanwhile (any other process on the machine): a
    // large figure means the run was disturbed. Interrupt and softirq time (the
    // kernel's loopback network work) is reported apart, as `irq_pct`.
    let irq = share(after.machine_irq, before.machine_irq);
    let other = ((machine - irq - hub.unwrap_or(0.0) - postgres - bench) * 10.0).round() / 10.0;
    json!({
        "machine_pct": machine,
        "other_pct": other,
        "iowait_pct": share(after.machine_iowait, before.machine_iowait),
        "irq_pct": irq,
        "steal_pct": share(after.machine_steal, before.machine_steal),
        "hub_pct": hub,
        "postgres_pct": postgres,
        "bench_and_mock_pct": bench,
    })
}

struct Step {
    label: String,
    offered_rps: Option<u32>,
    concurrency: Option<usize>,
    wall: Duration,
    sent: u64,
    dropped: u64,
    unfinished: u64,
    recorder: Recorder,
    cpu: Value,
    /// Wall-clock time the step began, to line its timeline up with other logs.
    started_unix_ms: u64,
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn round3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

impl Step {
    fn ok(&self) -> u64 {
        self.recorder.latencies_us.len() as u64
    }
    fn errors(&self) -> u64 {
        self.recorder.errors.values().sum()
    }
    fn achieved_rps(&self) -> f64 {
        self.ok() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    fn p(&self, q: f64) -> f64 {
        percentile(&self.recorder.latencies_us, q)
    }
    fn finish(&mut self) {
        self.recorder.latencies_us.sort_unstable();
        self.recorder.lag_us.sort_unstable();
    }
    fn lag_p99(&self) -> f64 {
        percentile(&self.recorder.lag_us, 0.99)
    }
    fn to_json(&self) -> Value {
        let n = self.recorder.latencies_us.len();
        let mean = if n > 0 {
            self.recorder.latencies_us.iter().sum::<u64>() as f64 / n as f64 / 1000.0
        } else {
            f64::NAN
        };
        json!({
            "step": self.label,
            "offered_rps": self.offered_rps,
            "concurrency": self.concurrency,
            "wall_s": round3(self.wall.as_secs_f64()),
            "sent": self.sent,
            "ok": self.ok(),
            "errors": self.errors(),
            "error_kinds": self.recorder.errors,
            "dropped": self.dropped,
            "unfinished": self.unfinished,
            "achieved_rps": (self.achieved_rps() * 10.0).round() / 10.0,
            "latency_ms": {
                "p50": round3(self.p(0.50)), "p90": round3(self.p(0.90)), "p99": round3(self.p(0.99)),
                "p999": round3(self.p(0.999)), "max": round3(self.p(1.0)), "mean": round3(mean),
            },
            "dispatch_lag_ms": if self.recorder.lag_us.is_empty() { Value::Null } else { json!({
                "p50": round3(percentile(&self.recorder.lag_us, 0.5)), "p99": round3(self.lag_p99()),
                "max": round3(percentile(&self.recorder.lag_us, 1.0)),
            }) },
            "cpu": self.cpu,
            "started_unix_ms": self.started_unix_ms,
            "per_second": self.recorder.timeline(),
            "slowest": self.recorder.slowest(SLOWEST_REPORTED),
        })
    }
}

struct Runner {
    client: reqwest::Client,
    timeout: Duration,
    max_in_flight: usize,
    hub_pid: Option<u32>,
    pg_database: Option<String>,
    cores: usize,
}

impl Runner {
    /// Closed loop: `concurrency` senders, each sending again as soon as answered.
    async fn closed_loop(
        &self,
        label: &str,
        target: &Target,
        concurrency: usize,
        duration: Duration,
    ) -> Step {
        let cpu_before = cpu_sample(self.hub_pid, self.pg_database.as_deref());
        let start = Instant::now();
        let started_unix_ms = unix_ms_now();
        let end = start + duration;
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let (client, target, next, timeout) = (
                self.client.clone(),
                target.clone(),
                next.clone(),
                self.timeout,
            );
            tasks.push(tokio::spawn(async move {
                let mut recorder = Recorder::default();
                while Instant::now() < end {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let sent_at = Instant::now();
                    let outcome = send_one(&client, &target, i, timeout).await;
                    recorder.record(sent_at - start, None, sent_at.elapsed(), outcome);
                }
                recorder
            }));
        }
        let mut recorder = Recorder::default();
        for task in tasks {
            match task.await {
                Ok(r) => recorder.merge(r),
                Err(_) => {
                    *recorder
                        .errors
                        .entry("sender task failed".into())
                        .or_default() += 1
                }
            }
        }
        let wall = start.elapsed();
        let cpu = cpu_usage(
            cpu_before,
            cpu_sample(self.hub_pid, self.pg_database.as_deref()),
            wall,
            self.cores,
        );
        let mut step = Step {
            label: label.to_string(),
            offered_rps: None,
            concurrency: Some(concurrency),
            wall,
            sent: next.load(Ordering::Relaxed),
            dropped: 0,
            unfinished: 0,
            recorder,
            cpu,
            started_unix_ms,
        };
        step.finish();
        step
    }

    /// Open loop: request `i` is due at `start + i / rate`; its latency runs from
    /// then, however late it was actually sent.
    ///
    /// The schedule is kept by a dedicated OS thread sleeping with the kernel's
    /// high-resolution timer (tokio's timer wheel has 1 ms granularity, which
    /// would add up to ~2 ms of the generator's own lateness to every figure);
    /// it hands each request to the runtime when due.
    async fn open_loop(&self, label: &str, target: &Target, rate: u32, duration: Duration) -> Step {
        let total = (rate as u64 * duration.as_millis() as u64) / 1000;
        let interval_ns = 1_000_000_000u64 / rate.max(1) as u64;
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let cpu_before = cpu_sample(self.hub_pid, self.pg_database.as_deref());
        let start = Instant::now() + Duration::from_millis(5);
        let started_unix_ms = unix_ms_now() + 5;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u64>();
        {
            let runtime = tokio::runtime::Handle::current();
            let recorder_for_errors = recorder.clone();
            let (client, target, recorder, in_flight) = (
                self.client.clone(),
                target.clone(),
                recorder.clone(),
                in_flight.clone(),
            );
            let (timeout, max_in_flight) = (self.timeout, self.max_in_flight);
            let spawned = std::thread::Builder::new()
                .name("bench-dispatch".into())
                .spawn(move || {
                    let mut dropped = 0u64;
                    for i in 0..total {
                        let due = start + Duration::from_nanos(i * interval_ns);
                        loop {
                            let now = Instant::now();
                            if now >= due {
                                break;
                            }
                            std::thread::sleep(due - now);
                        }
                        if in_flight.load(Ordering::Relaxed) >= max_in_flight {
                            dropped += 1;
                            continue;
                        }
                        in_flight.fetch_add(1, Ordering::Relaxed);
                        let (client, target, recorder, in_flight) = (
                            client.clone(),
                            target.clone(),
                            recorder.clone(),
                            in_flight.clone(),
                        );
                        runtime.spawn(async move {
                            let lag = due.elapsed();
                            let outcome = send_one(&client, &target, i, timeout).await;
                            let latency = due.elapsed();
                            recorder.lock().expect("recorder lock").record(
                                due - start,
                                Some(lag),
                                latency,
                                outcome,
                            );
                            in_flight.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    let _ = done_tx.send(dropped);
                });
            if spawned.is_err() {
                *recorder_for_errors
                    .lock()
                    .expect("recorder lock")
                    .errors
                    .entry("cannot start the dispatcher thread".into())
                    .or_default() += 1;
            }
        }
        // The dispatcher ends by itself after `total` requests (about `duration`).
        let dropped = done_rx.await.unwrap_or(0);
        // Drain, bounded: every request has its own timeout.
        let drain_deadline = Instant::now() + self.timeout + Duration::from_secs(2);
        while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let wall = start.elapsed().max(duration);
        let cpu = cpu_usage(
            cpu_before,
            cpu_sample(self.hub_pid, self.pg_database.as_deref()),
            start.elapsed(),
            self.cores,
        );
        let unfinished = in_flight.load(Ordering::Relaxed) as u64;
        let recorder = std::mem::take(&mut *recorder.lock().expect("recorder lock"));
        let mut step = Step {
            label: label.to_string(),
            offered_rps: Some(rate),
            concurrency: None,
            wall,
            sent: total - dropped,
            dropped,
            unfinished,
            recorder,
            cpu,
            started_unix_ms,
        };
        step.finish();
        step
    }
}

fn print_header() {
    println!(
        "{:<7} {:<16} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>6} {:>6} {:>7}  \
         cpu % of one core: busy/iowait/steal | irq/hub/pg/bench+mock/other",
        "side",
        "step",
        "achieved",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "ok",
        "err",
        "drop",
        "lag p99",
    );
}

fn print_row(side: &str, step: &Step) {
    let cpu = &step.cpu;
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.0}"));
    let lag = if step.recorder.lag_us.is_empty() {
        "-".to_string()
    } else {
        format!("{:.3}", step.lag_p99())
    };
    println!(
        "{:<7} {:<16} {:>9.1} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>8} {:>6} {:>6} {:>7}  {}/{}/{} | {}/{}/{}/{}/{}",
        side,
        step.label,
        step.achieved_rps(),
        step.p(0.5),
        step.p(0.9),
        step.p(0.99),
        step.p(0.999),
        step.p(1.0),
        step.ok(),
        step.errors(),
        step.dropped,
        lag,
        f(&cpu["machine_pct"]),
        f(&cpu["iowait_pct"]),
        f(&cpu["steal_pct"]),
        f(&cpu["irq_pct"]),
        f(&cpu["hub_pct"]),
        f(&cpu["postgres_pct"]),
        f(&cpu["bench_and_mock_pct"]),
        f(&cpu["other_pct"]),
    );
    if !step.recorder.errors.is_empty() {
        println!("        errors: {:?}", step.recorder.errors);
    }
}

struct Side {
    rates: Vec<Step>,
    saturation: Option<Step>,
    warmup_ok: u64,
}

async fn run_side(
    runner: &Runner,
    args: &Args,
    side: &str,
    target: &Target,
) -> anyhow::Result<Side> {
    let warmup = runner
        .closed_loop(
            "warm-up",
            target,
            args.concurrency.clamp(1, 16),
            Duration::from_secs(args.warmup.max(1)),
        )
        .await;
    if warmup.ok() == 0 {
        anyhow::bail!(
            "{side}: no request succeeded during warm-up: {:?}",
            warmup.recorder.errors
        );
    }
    if warmup.errors() > 0 {
        eprintln!(
            "warning: {side} warm-up had errors: {:?}",
            warmup.recorder.errors
        );
    }
    tokio::time::sleep(PAUSE_BETWEEN_STEPS).await;
    let duration = Duration::from_secs(args.duration.max(1));
    let mut rates = Vec::new();
    for &rate in &args.rates {
        let step = runner
            .open_loop(&format!("open {rate}/s"), target, rate, duration)
            .await;
        print_row(side, &step);
        rates.push(step);
        tokio::time::sleep(PAUSE_BETWEEN_STEPS).await;
    }
    let saturation = if args.concurrency > 0 {
        let step = runner
            .closed_loop(
                &format!("closed c={}", args.concurrency),
                target,
                args.concurrency,
                duration,
            )
            .await;
        print_row(side, &step);
        tokio::time::sleep(PAUSE_BETWEEN_STEPS).await;
        Some(step)
    } else {
        None
    };
    Ok(Side {
        rates,
        saturation,
        warmup_ok: warmup.ok(),
    })
}

// ---------------------------------------------------------------------------
// Hub setup through the operator API

struct HubSetup {
    provider: String,
    tenants: Vec<(String, String)>,
}

async fn admin(
    client: &reqwest::Client,
    args: &Args,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = client
        .request(method, format!("{}{path}", args.hub.trim_end_matches('/')))
        .bearer_auth(&args.operator_token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{path}: {}", e.without_url()))?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

async fn admin_ok(
    client: &reqwest::Client,
    args: &Args,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let (status, answer) = admin(client, args, method, path, Some(body)).await?;
    if !(200..300).contains(&status) {
        anyhow::bail!("{path}: HTTP {status}: {answer}");
    }
    Ok(answer)
}

async fn setup_hub(
    client: &reqwest::Client,
    args: &Args,
    mock_port: u16,
    mock_key: &str,
) -> anyhow::Result<HubSetup> {
    let base_url = format!("http://127.0.0.1:{mock_port}/v1");
    let mut provider = "benchmock".to_string();
    for attempt in 0..3 {
        let body =
            json!({"name": provider, "kind": "openai", "base_url": base_url, "api_key": mock_key});
        let (status, answer) = admin(
            client,
            args,
            reqwest::Method::POST,
            "/admin/v1/providers",
            Some(body),
        )
        .await?;
        match status {
            200..=299 => break,
            409 if attempt < 2 => {
                provider = format!(
                    "benchmock-{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                )
            }
            _ => anyhow::bail!("adding the mock provider: HTTP {status}: {answer}"),
        }
    }
    let model = format!("{provider}/{MODEL}");
    admin_ok(
        client,
        args,
        reqwest::Method::PUT,
        &format!("/admin/v1/prices/{model}"),
        json!({"input_per_mtok": INPUT_PER_MTOK, "output_per_mtok": OUTPUT_PER_MTOK}),
    )
    .await?;
    let mut tenants = Vec::new();
    for i in 0..args.tenants.max(1) {
        let answer = admin_ok(
            client,
            args,
            reqwest::Method::POST,
            "/admin/v1/tenants",
            json!({"name": format!("bench-{i}"), "initial_credits": "1000000"}),
        )
        .await?;
        let tenant_id = answer["tenant_id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no tenant_id in {answer}"))?
            .to_string();
        let answer = admin_ok(
            client,
            args,
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{tenant_id}/keys"),
            key_body(args)?,
        )
        .await?;
        let key = answer["key"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no key in answer"))?
            .to_string();
        tenants.push((tenant_id, key));
    }
    Ok(HubSetup { provider, tenants })
}

/// The body each tenant's key is issued with: a member, with `--key-scopes`.
fn key_body(args: &Args) -> anyhow::Result<Value> {
    let mut body = json!({"name": "bench", "role": "member"});
    if let Some(raw) = &args.key_scopes {
        let scopes: Value = serde_json::from_str(raw)
            .map_err(|e| anyhow::anyhow!("--key-scopes is not JSON: {e}"))?;
        let Value::Object(scopes) = scopes else {
            anyhow::bail!("--key-scopes must be a JSON object");
        };
        body.as_object_mut().expect("an object").extend(scopes);
    }
    Ok(body)
}

/// Sums the tenants' balances: every answered hub request must have been billed.
async fn billing_check(
    client: &reqwest::Client,
    args: &Args,
    setup: &HubSetup,
    hub_ok: u64,
    mock_served_via_hub: u64,
) -> Value {
    let mut spent = 0f64;
    let mut held = 0f64;
    let mut failures = Vec::new();
    for (tenant_id, _) in &setup.tenants {
        match admin(
            client,
            args,
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{tenant_id}/balance"),
            None,
        )
        .await
        {
            Ok((200, b)) => {
                spent += b["spent"]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(f64::NAN);
                held += b["held"]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(f64::NAN);
            }
            Ok((status, b)) => failures.push(format!("{tenant_id}: HTTP {status} {b}")),
            Err(e) => failures.push(format!("{tenant_id}: {e}")),
        }
    }
    let per_request = (PROMPT_TOKENS as f64 * 1.0 + COMPLETION_TOKENS as f64 * 2.0) / 1e6;
    json!({
        "spent_total_credits": spent,
        "held_total_credits": held,
        "credits_per_request": per_request,
        "requests_billed": (spent / per_request).round(),
        "hub_requests_answered_ok_incl_warmup": hub_ok,
        "mock_requests_served_via_hub": mock_served_via_hub,
        "balance_read_failures": failures,
    })
}

// ---------------------------------------------------------------------------

fn check_loopback(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("--hub {url:?}: {e}"))?;
    let host = parsed.host_str().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback || parsed.scheme() != "http" {
        anyhow::bail!("--hub must be an http:// loopback address (all benchmark traffic stays on this machine), got {url:?}");
    }
    Ok(())
}

fn side_json(side: &Side) -> Value {
    json!({
        "rates": side.rates.iter().map(Step::to_json).collect::<Vec<_>>(),
        "saturation": side.saturation.as_ref().map(Step::to_json),
    })
}

async fn run(args: Args) -> anyhow::Result<Value> {
    check_loopback(&args.hub)?;
    if args.rates.contains(&0) {
        anyhow::bail!("--rates must all be positive");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mock_key = format!("sk-bench-{}", uuid::Uuid::new_v4().simple());
    let (mock_port, mock) = start_mock(args.mock_workers, &mock_key)?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        // Shorter than actix-web's 5 s keep-alive: never reuse a connection the
        // server is about to close.
        .pool_idle_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(args.max_in_flight)
        .build()?;
    let runner = Runner {
        client: client.clone(),
        timeout: Duration::from_millis(args.request_timeout_ms),
        max_in_flight: args.max_in_flight.max(1),
        hub_pid: args.hub_pid,
        pg_database: args.pg_database.clone(),
        cores,
    };

    let health = client
        .get(format!("{}/healthz", args.hub.trim_end_matches('/')))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    if !health.as_ref().is_ok_and(|r| r.status().is_success()) {
        anyhow::bail!(
            "the hub at {} is not healthy (GET /healthz failed)",
            args.hub
        );
    }
    let setup = setup_hub(&client, &args, mock_port, &mock_key).await?;
    eprintln!(
        "mock upstream on 127.0.0.1:{mock_port} ({} worker(s)); hub {} with provider {:?}, {} tenants; {}s per step, rates {:?}, saturation c={}",
        args.mock_workers, args.hub, setup.provider, setup.tenants.len(), args.duration, args.rates, args.concurrency
    );

    let body_for = |model: &str| {
        web::Bytes::from(
            json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}]})
                .to_string(),
        )
    };
    let direct = Target {
        url: format!("http://127.0.0.1:{mock_port}/v1/chat/completions"),
        body: body_for(MODEL),
        auths: Arc::new(vec![HeaderValue::from_str(&format!("Bearer {mock_key}"))?]),
    };
    let hub = Target {
        url: format!("{}/v1/chat/completions", args.hub.trim_end_matches('/')),
        body: body_for(&format!("{}/{MODEL}", setup.provider)),
        auths: Arc::new(
            setup
                .tenants
                .iter()
                .map(|(_, key)| HeaderValue::from_str(&format!("Bearer {key}")))
                .collect::<Result<_, _>>()?,
        ),
    };

    print_header();
    let direct_side = run_side(&runner, &args, "direct", &direct).await?;
    let served_before_hub = mock.served.load(Ordering::Relaxed);
    let hub_side = run_side(&runner, &args, "hub", &hub).await?;
    let mock_served_via_hub = mock.served.load(Ordering::Relaxed) - served_before_hub;
    let hub_ok = hub_side.warmup_ok
        + hub_side.rates.iter().map(Step::ok).sum::<u64>()
        + hub_side.saturation.as_ref().map_or(0, Step::ok);
    let billing = billing_check(&client, &args, &setup, hub_ok, mock_served_via_hub).await;

    // Comparison at each rate, and throughput ratio.
    let mut added = Vec::new();
    let mut target_result = Value::Null;
    for (d, h) in direct_side.rates.iter().zip(hub_side.rates.iter()) {
        let rate = d.offered_rps.unwrap_or(0);
        let (dp50, dp99, hp50, hp99) = (d.p(0.5), d.p(0.99), h.p(0.5), h.p(0.99));
        let row = json!({
            "offered_rps": rate,
            "direct_achieved_rps": (d.achieved_rps() * 10.0).round() / 10.0,
            "hub_achieved_rps": (h.achieved_rps() * 10.0).round() / 10.0,
            "direct_p50_ms": round3(dp50), "hub_p50_ms": round3(hp50), "added_p50_ms": round3(hp50 - dp50),
            "direct_p99_ms": round3(dp99), "hub_p99_ms": round3(hp99), "added_p99_ms": round3(hp99 - dp99),
            "hub_errors": h.errors(), "hub_dropped": h.dropped, "direct_errors": d.errors(), "direct_dropped": d.dropped,
        });
        if rate == args.target_rate {
            let clean = h.errors() == 0 && h.dropped == 0 && h.unfinished == 0;
            target_result = json!({
                "offered_rps": rate,
                "max_added_p99_ms": args.target_added_p99_ms,
                "added_p99_ms": round3(hp99 - dp99),
                "hub_errors_or_drops": h.errors() + h.dropped + h.unfinished,
                "met": clean && hp99 - dp99 <= args.target_added_p99_ms,
                "missed_by_ms": round3((hp99 - dp99 - args.target_added_p99_ms).max(0.0)),
            });
        }
        added.push(row);
    }
    let throughput = match (&direct_side.saturation, &hub_side.saturation) {
        (Some(d), Some(h)) => json!({
            "concurrency": args.concurrency,
            "direct_rps": (d.achieved_rps() * 10.0).round() / 10.0,
            "hub_rps": (h.achieved_rps() * 10.0).round() / 10.0,
            "hub_over_direct": (h.achieved_rps() / d.achieved_rps().max(1e-9) * 1000.0).round() / 1000.0,
            "direct_errors": d.errors(),
            "hub_errors": h.errors(),
        }),
        _ => Value::Null,
    };

    println!();
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "offered",
        "direct p50",
        "hub p50",
        "added p50",
        "direct p99",
        "hub p99",
        "added p99",
        "hub err"
    );
    for row in &added {
        let g = |k: &str| {
            row[k]
                .as_f64()
                .map_or("-".to_string(), |x| format!("{x:.3}"))
        };
        println!(
            "{:<10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            format!("{}/s", row["offered_rps"]),
            g("direct_p50_ms"),
            g("hub_p50_ms"),
            g("added_p50_ms"),
            g("direct_p99_ms"),
            g("hub_p99_ms"),
            g("added_p99_ms"),
            row["hub_errors"].as_u64().unwrap_or(0) + row["hub_dropped"].as_u64().unwrap_or(0),
        );
    }
    if !throughput.is_null() {
        println!(
            "saturation (closed loop, c={}): direct {} req/s, hub {} req/s, hub/direct = {}",
            args.concurrency,
            throughput["direct_rps"],
            throughput["hub_rps"],
            throughput["hub_over_direct"]
        );
    }
    if !target_result.is_null() {
        println!(
            "target: added p99 <= {} ms at {}/s: {} (added p99 {} ms)",
            args.target_added_p99_ms,
            args.target_rate,
            if target_result["met"].as_bool() == Some(true) {
                "MET"
            } else {
                "MISSED"
            },
            target_result["added_p99_ms"]
        );
    }
    println!(
        "billing: {} requests billed for {} answered through the hub (incl. warm-up); {} credits still held; mock refused {} requests",
        billing["requests_billed"],
        hub_ok,
        billing["held_total_credits"],
        mock.refused.load(Ordering::Relaxed)
    );

    // CPU time used by neither the hub, PostgreSQL nor this process: another
    // workload competed with the step, and its figures are pessimistic.
    let mut disturbed = Vec::new();
    for (name, side) in [("direct", &direct_side), ("hub", &hub_side)] {
        for step in side.rates.iter().chain(side.saturation.iter()) {
            let other = step.cpu["other_pct"].as_f64().unwrap_or(0.0);
            if other > DISTURBED_OTHER_CPU_PCT {
                disturbed.push(json!({"side": name, "step": step.label, "other_cpu_pct": other}));
            }
        }
    }
    if !disturbed.is_empty() {
        println!(
            "warning: {} step(s) ran while other work used more than {DISTURBED_OTHER_CPU_PCT}% of a core (\"disturbed_steps\" below); rerun on an idle machine",
            disturbed.len()
        );
    }

    Ok(json!({
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": {"cores": cores, "disturbed_steps": disturbed},
        "config": {
            "hub": args.hub, "duration_s": args.duration, "warmup_s": args.warmup, "rates": args.rates,
            "concurrency": args.concurrency, "tenants": setup.tenants.len(), "max_in_flight": args.max_in_flight,
            "request_timeout_ms": args.request_timeout_ms, "mock_workers": args.mock_workers, "client_threads": args.client_threads,
            "provider": setup.provider,
        },
        "direct": side_json(&direct_side),
        "hub": side_json(&hub_side),
        "comparison": {"added_latency": added, "throughput": throughput, "target": target_result},
        "billing": billing,
    }))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json_out = args.json_out.clone();
    match runtime.block_on(run(args)) {
        Ok(summary) => {
            let text =
                serde_json::to_string_pretty(&summary).expect("JSON values always serialize");
            println!("\n=== JSON summary ===\n{text}");
            if let Some(path) = json_out {
                if let Err(e) = std::fs::write(&path, format!("{text}\n")) {
                    eprintln!("cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            runtime.shutdown_timeout(Duration::from_secs(1));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            runtime.shutdown_timeout(Duration::from_secs(1));
            ExitCode::FAILURE
        }
    }
}
