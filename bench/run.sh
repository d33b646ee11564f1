#!/usr/bin/env bash
# Benchmark: added latency and throughput of the hub, non-streaming chat
# completions with billing on, PostgreSQL store. See docs/benchmarks.md.
#
# Builds release, creates a fresh PostgreSQL database, starts `aigne-hub serve`
# on it (durability untouched: PostgreSQL's own fsync/synchronous_commit apply),
# runs `aigne-hub-bench` against it, then stops the hub and drops the database.
#
# Overrides (environment):
#   AIGNE_BENCH_DURATION     seconds per measured step          (default 10)
#   AIGNE_BENCH_WARMUP       warm-up seconds per side            (default 2)
#   AIGNE_BENCH_RATES        open-loop rates, req/s, comma list  (default 200,500,1000)
#   AIGNE_BENCH_CONCURRENCY  closed-loop connections, 0 = skip   (default 64)
#   AIGNE_BENCH_TENANTS      tenants (one key each)              (default 8)
#   AIGNE_BENCH_JSON_OUT     also write the JSON summary here    (default: not written)
#   AIGNE_BENCH_SKIP_BUILD=1 do not run cargo build
#   AIGNE_BENCH_HUB_RUST_LOG the hub's RUST_LOG (default warn; e.g.
#                            warn,aigne_hub::projector=debug prints the projector's
#                            per-pass figures every 5 s)
#   AIGNE_BENCH_HUB_LOG_OUT  also copy the hub's log to this file
#   AIGNE_BENCH_PG_HOST / AIGNE_BENCH_PG_PORT / AIGNE_BENCH_PG_USER
#                            PostgreSQL server (default 127.0.0.1 / 5432 / postgres)
#   AIGNE_BENCH_PG_SSLMODE   sslmode of the hub's database connection (default
#                            disable: the database is on loopback, where TLS only
#                            costs CPU; set "prefer" to measure with it)
# Extra arguments are passed to aigne-hub-bench (see `aigne-hub-bench --help`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${AIGNE_BENCH_DURATION:-10}
WARMUP=${AIGNE_BENCH_WARMUP:-2}
RATES=${AIGNE_BENCH_RATES:-200,500,1000}
CONCURRENCY=${AIGNE_BENCH_CONCURRENCY:-64}
TENANTS=${AIGNE_BENCH_TENANTS:-8}
JSON_OUT=${AIGNE_BENCH_JSON_OUT:-}
PG_HOST=${AIGNE_BENCH_PG_HOST:-127.0.0.1}
PG_PORT=${AIGNE_BENCH_PG_PORT:-5432}
PG_USER=${AIGNE_BENCH_PG_USER:-postgres}
PG_SSLMODE=${AIGNE_BENCH_PG_SSLMODE:-disable}

case "$PG_HOST" in
  127.0.0.1|localhost|::1) ;;
  *) echo "AIGNE_BENCH_PG_HOST must be a loopback address (all benchmark traffic stays local)" >&2; exit 2 ;;
esac

# Everything talks to 127.0.0.1: make sure no proxy setting reroutes it.
unset http_proxy https_proxy all_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# The source the binaries are built from (taken before the build).
REV="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- 2>/dev/null || echo ' (+ local changes)')"
if [[ "${AIGNE_BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release --bins
fi
BIN="${CARGO_TARGET_DIR:-target}/release"
[[ -x "$BIN/aigne-hub" && -x "$BIN/aigne-hub-bench" ]] || { echo "missing $BIN/aigne-hub or $BIN/aigne-hub-bench" >&2; exit 1; }

psql_admin() { psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

DB="aigne_bench_$(random_hex 6)"
TOKEN="op-bench-$(random_hex 16)"
DATA_DIR=$(mktemp -d -t aigne-bench.XXXXXX)
HUB_PID=""
DB_CREATED=0

stop_hub() {
  if [[ -n "$HUB_PID" ]] && kill -0 "$HUB_PID" 2>/dev/null; then
    kill -TERM "$HUB_PID" 2>/dev/null || true
    # The hub drains in-flight requests for up to 30 s; it has none by now.
    for _ in $(seq 1 350); do kill -0 "$HUB_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$HUB_PID" 2>/dev/null; then
      echo "hub did not stop in time; killing it" >&2
      kill -KILL "$HUB_PID" 2>/dev/null || true
    fi
  fi
  [[ -n "$HUB_PID" ]] && { wait "$HUB_PID" 2>/dev/null || true; }
  HUB_PID=""
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_hub
  if [[ "$DB_CREATED" == 1 ]]; then
    psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || echo "could not drop database $DB" >&2
  fi
  rm -rf "$DATA_DIR"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pg_version=$(psql_admin -c "SHOW server_version")
echo "== aigne-hub benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "   commit $REV$([[ "${AIGNE_BENCH_SKIP_BUILD:-0}" == 1 ]] && echo ' (build skipped: binaries may be older)'), $(nproc) cores, PostgreSQL $pg_version (hub connection sslmode=$PG_SSLMODE)" \
     "(fsync=$(psql_admin -c 'SHOW fsync'), synchronous_commit=$(psql_admin -c 'SHOW synchronous_commit')," \
     "autovacuum=$(psql_admin -c 'SHOW autovacuum'))"

psql_admin -c "CREATE DATABASE $DB"
DB_CREATED=1

# How long one durable single-row commit takes on this server right now (the
# hub's latency floor depends on it; virtual disks vary a lot over time).
commit_latency() {
  command -v pgbench >/dev/null || { echo "n/a (no pgbench)"; return; }
  local probe="$DATA_DIR/commit_probe.sql"
  echo 'INSERT INTO bench_commit_probe VALUES (1);' >"$probe"
  psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$DB" -qAt -c "CREATE TABLE IF NOT EXISTS bench_commit_probe (x int)" >/dev/null
  pgbench -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -n -f "$probe" -c 1 -T 3 "$DB" 2>/dev/null \
    | awk -F' = ' '/latency average/ { printf "%s (pgbench, 1 client, 3 s)", $2; found = 1 } END { if (!found) printf "n/a" }'
  psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$DB" -qAt -c "DROP TABLE IF EXISTS bench_commit_probe" >/dev/null
}
echo "   PostgreSQL single-row commit latency before the run: $(commit_latency)"
db_stats_sql="SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = '$DB'"
sleep 0.5  # the probe's backend publishes its statistics as it exits
db_before=$(psql_admin -F' ' -c "$db_stats_sql")

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Pick a free port and start the hub on it; retry if another process took it.
for attempt in 1 2 3 4 5; do
  PORT=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 40000 ))
  port_in_use "$PORT" && continue
  DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$DB?sslmode=$PG_SSLMODE" \
  AIGNE_HUB_LISTEN="127.0.0.1:$PORT" \
  AIGNE_HUB_OPERATOR_TOKEN="$TOKEN" \
  AIGNE_HUB_DATA_DIR="$DATA_DIR/data" \
  RUST_LOG="${AIGNE_BENCH_HUB_RUST_LOG:-warn}" \
    "$BIN/aigne-hub" serve >"$DATA_DIR/hub.log" 2>&1 &
  HUB_PID=$!
  healthy=0
  for _ in $(seq 1 300); do
    if ! kill -0 "$HUB_PID" 2>/dev/null; then break; fi
    if curl -fsS --noproxy '*' -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then healthy=1; break; fi
    sleep 0.1
  done
  [[ "$healthy" == 1 ]] && break
  echo "hub did not become healthy on port $PORT (attempt $attempt):" >&2
  tail -n 20 "$DATA_DIR/hub.log" >&2 || true
  kill -TERM "$HUB_PID" 2>/dev/null || true
  wait "$HUB_PID" 2>/dev/null || true
  HUB_PID=""
done
[[ -n "$HUB_PID" ]] || { echo "could not start the hub" >&2; exit 1; }
echo "   hub pid $HUB_PID on 127.0.0.1:$PORT, database $DB"
echo "   bench: duration ${DURATION}s/step, warm-up ${WARMUP}s, rates $RATES req/s, saturation c=$CONCURRENCY, $TENANTS tenants"
echo

SUMMARY="$DATA_DIR/summary.json"
bench_args=(--hub "http://127.0.0.1:$PORT" --duration "$DURATION" --warmup "$WARMUP" --rates "$RATES"
            --concurrency "$CONCURRENCY" --tenants "$TENANTS" --hub-pid "$HUB_PID" --pg-database "$DB"
            --json-out "$SUMMARY")

# PostgreSQL's WAL counters are cluster-wide: other activity on the server
# (e.g. a test suite) during the run inflates them.
wal_before=$(psql_admin -F' ' -c "SELECT wal_bytes, wal_sync FROM pg_stat_wal")

set +e
AIGNE_HUB_OPERATOR_TOKEN="$TOKEN" "$BIN/aigne-hub-bench" "${bench_args[@]}" "$@"
bench_status=$?
set -e

# Backends publish their statistics when they exit: stop the hub first.
stop_hub
sleep 1
wal_after=$(psql_admin -F' ' -c "SELECT wal_bytes, wal_sync FROM pg_stat_wal")
db_after=$(psql_admin -F' ' -c "$db_stats_sql")
commit_after=$(commit_latency)
billed=0
if [[ -s "$SUMMARY" ]] && command -v jq >/dev/null; then
  billed=$(jq -r '.billing.requests_billed // 0 | floor' "$SUMMARY")
fi
read -r wal_bytes0 wal_sync0 <<<"$wal_before"
read -r wal_bytes1 wal_sync1 <<<"$wal_after"
read -r commits0 inserted0 updated0 deleted0 <<<"$db_before"
read -r commits1 inserted1 updated1 deleted1 <<<"$db_after"
commits=$(( commits1 - commits0 )) inserted=$(( inserted1 - inserted0 ))
updated=$(( updated1 - updated0 )) deleted=$(( deleted1 - deleted0 ))
echo
echo "PostgreSQL during the run (database $DB, whole run incl. setup and warm-up):"
echo "  commits $commits, rows inserted $inserted, updated $updated, deleted $deleted;" \
     "WAL (cluster-wide) $(( wal_bytes1 - wal_bytes0 )) bytes, $(( wal_sync1 - wal_sync0 )) syncs"
echo "  single-row commit latency after the run: $commit_after"
if [[ "$billed" -gt 0 ]]; then
  awk -v n="$billed" -v c="$commits" -v i="$inserted" -v u="$updated" -v wb="$(( wal_bytes1 - wal_bytes0 ))" -v ws="$(( wal_sync1 - wal_sync0 ))" \
    'BEGIN { printf "  per billed hub request (%d): %.2f commits, %.2f rows inserted, %.2f updated, %.0f WAL bytes, %.3f WAL syncs\n", n, c/n, i/n, u/n, wb/n, ws/n }'
fi
[[ -n "$JSON_OUT" && -s "$SUMMARY" ]] && cp "$SUMMARY" "$JSON_OUT"
[[ -n "${AIGNE_BENCH_HUB_LOG_OUT:-}" ]] && cp "$DATA_DIR/hub.log" "$AIGNE_BENCH_HUB_LOG_OUT"

warnings=$(grep -cE 'WARN|ERROR' "$DATA_DIR/hub.log" || true)
echo
echo "hub log: $warnings warning/error line(s)"
if [[ "$warnings" != 0 ]]; then
  grep -E 'WARN|ERROR' "$DATA_DIR/hub.log" | tail -n 10
fi
exit "$bench_status"
