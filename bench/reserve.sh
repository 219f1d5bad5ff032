#!/usr/bin/env bash
# Reserve throughput on this machine, three workloads measured side by side against one server:
#   healthz   bare GET /healthz (the HTTP floor)
#   sold_out  POST /api/v1/cart/items on a sold-out sale (the 99% case: the gate answers)
#   reserve   POST /api/v1/cart/items that succeed (gate + group commit + SQLite fsync)
# The server is pinned to core 0 and wrk to core 1. Each workload runs RUNS times; medians.
# Usage: bench/reserve.sh            (env: DURATION=10s CONNS=64 RUNS=3 BUYERS=200)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}; CONNS=${CONNS:-64}; RUNS=${RUNS:-3}; BUYERS=${BUYERS:-200}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
cargo build --release -p stampede --quiet
work=$(mktemp -d); trap 'kill $pid 2>/dev/null; rm -rf "$work"' EXIT
STAMPEDE_ADMIN_EMAIL=bench@example.com STAMPEDE_ADMIN_PASSWORD=bench-password \
STAMPEDE_RATE_LIMIT_PER_SEC=1000000 STAMPEDE_MAX_OPEN_HOLDS_PER_ACCOUNT=0 STAMPEDE_MAX_OPEN_HOLDS_PER_DEVICE=0 STAMPEDE_ARGON2_MEMORY_KIB=256 STAMPEDE_ARGON2_ITERATIONS=1 \
STAMPEDE_LOG=warn taskset -c 0 target/release/stampede serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
B=$(sed -n 's/^listening on //p' "$work/out")
json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }
post() { curl -sf -XPOST "$B$1" -H 'content-type: application/json' ${3:+-H "authorization: Bearer $3"} -d "$2"; }
admin=$(post /api/v1/auth/login '{"email":"bench@example.com","password":"bench-password"}' | json '["token"]')
sale() { post /api/v1/admin/sales "{\"name\":\"$1\",\"original_price\":\"10.00\",\"sale_price\":\"2.00\",\"currency\":\"EUR\",\"total_stock\":$2,\"starts_at\":\"2020-01-01T00:00:00Z\",\"ends_at\":\"2099-01-01T00:00:00Z\",\"per_user_limit\":1000,\"hold_seconds\":3600}" "$admin" | json '["sale_id"]'; }
big=$(sale big 10000000); gone=$(sale gone 0)
: >"$work/tokens"
for i in $(seq "$BUYERS"); do
  post /api/v1/auth/register "{\"email\":\"b$i@example.com\",\"password\":\"bench-password\",\"name\":\"b$i\"}" >/dev/null
  post /api/v1/auth/login "{\"email\":\"b$i@example.com\",\"password\":\"bench-password\"}" | json '["token"]' >>"$work/tokens"
done
run() { # name, then wrk args
  local name=$1; shift
  for r in $(seq "$RUNS"); do
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$@" >"$work/$name.$r" 2>&1
    awk -v n="$name" '/Requests\/sec/ {print n, $2}' "$work/$name.$r"
  done
}
echo "server pid $pid on core 0, wrk on core 1, $CONNS connections, $DURATION x $RUNS"
run healthz "$B/healthz" | tee -a "$work/rps"
TOKENS_FILE="$work/tokens" SALE_ID=$gone run sold_out -s bench/reserve.lua "$B" | tee -a "$work/rps"
TOKENS_FILE="$work/tokens" SALE_ID=$big run reserve -s bench/reserve.lua "$B" | tee -a "$work/rps"
for n in healthz sold_out reserve; do
  for r in $(seq "$RUNS"); do awk -v n="$n" '/^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF} END {printf "%s run: p50 %s p99 %s non-2xx %s\n", n, p50, p99, bad+0}' "$work/$n.$r"; done
done
# What the server itself says happened: every successful reserve is a committed hold.
curl -sf "$B/api/v1/admin/sales/$big/metrics" -H "authorization: Bearer $admin" | json '' | sed 's/^/big sale metrics: /'
curl -sf "$B/api/v1/admin/sales/$gone/metrics" -H "authorization: Bearer $admin" | json '' | sed 's/^/sold-out sale metrics: /'
curl -sf "$B/metrics" | grep -E '^stampede_reserve_total' | sed 's/^/server: /'
python3 - "$work/rps" <<'PY'
import sys, statistics, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, rps = line.split(); runs[name].append(float(rps))
med = {k: statistics.median(v) for k, v in runs.items()}
for k, v in med.items(): print(f"median {k:9s} {v:10.0f} req/s")
print(f"R1 sold_out / healthz = {med['sold_out']/med['healthz']:.2f}")
print(f"reserve / healthz     = {med['reserve']/med['healthz']:.2f}")
PY
