#!/usr/bin/env bash
# Benchmarks R0–R12: each a ratio of two figures measured side by side in one run, so that the
# machine's mood (a build on the other core, a busy disk) weighs on both sides alike.
# Servers on core 0, the load generator (wrk, or the drill's open-model driver) on core 1.
# Every wrk workload runs RUNS times, interleaved (run 1 of all, then run 2 of all, …); medians.
#
#   R0  GET /healthz ÷ a bare axum handler with no middleware (crates/drill/src/bin/bare.rs)
#   R1  sold-out reserve ÷ the bare handler (and ÷ GET /healthz) (embedded server, wrk, CONNS)
#   R2  accepted reserve ÷ the bare handler (and ÷ GET /healthz)   (embedded, huge stock);
#       with R0–R2, the server CPU each request cost (µs of its one core: 1e6/µs bounds req/s)
#   R3  gate reserve in process vs a bare CAS loop            (cargo bench -p stampede-drill)
#   R4  accepted holds/s, Stampede cluster node ÷ textbook PostgreSQL row-lock server, 64 clients
#   R5  group commit ÷ one transaction per hold (STAMPEDE_MAX_BATCH=1), SQLite and PostgreSQL;
#       commits per 1,000 holds from the server's own stampede_group_commit_batch_size_count
#   R6  sold-out reserve at 4,096 connections ÷ at CONNS (64): a sale's crowd holds many sockets
#   R7  cluster reserve answered by the Redis gate (buyer at its limit: one EVALSHA, no
#       PostgreSQL) ÷ redis-benchmark EVALSHA of the same script; Redis calls per reserve
#   R8  sold-out reserve p99 ÷ /healthz p99, open model at 50% of the reserve's wrk peak
#       (the drill's driver: latency from the scheduled time)
#   R9  checkout flow (reserve + order + sandbox payment) ÷ reserve alone (drill, R9_BUYERS at
#       T-0, 64 connections)
#   R10 a R10_BUYERS-buyer drill's wall time ÷ the same number of bare /healthz by the same
#       driver (both against an embedded server the drill starts on core 0)
#   R11 GET …/queue/me (a buyer's place among Q_BUYERS queued) ÷ the bare handler
#   R12 POST …/queue (a new buyer joins the line) ÷ the bare handler
#       (R11/R12: buyers this node never saw, tokens minted with the server's session key by
#       bench/mint_tokens.py; the line is filled by joins before the runs)
#
# Usage: bench/ratios.sh      env: DURATION=8s RUNS=3 CONNS=64 BUYERS=200 R9_BUYERS=10000 R10_BUYERS=1000000
#                             Q_BUYERS=1000000 SKIP_CLUSTER=1 (no PostgreSQL/Redis/RabbitMQ) SKIP_R10=1
#                             SKIP_QUEUE=1 SKIP_R8R9=1 SKIP_R3=1 SKIP_BUILD=1 (use the binaries built)
#                             PG=… REDIS=… AMQP=… (as bench/cluster.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8s}; RUNS=${RUNS:-3}; CONNS=${CONNS:-64}; BUYERS=${BUYERS:-200}
R10_BUYERS=${R10_BUYERS:-1000000}; R9_BUYERS=${R9_BUYERS:-10000}; SKIP_CLUSTER=${SKIP_CLUSTER:-}; SKIP_R10=${SKIP_R10:-}
Q_BUYERS=${Q_BUYERS:-1000000}; SKIP_QUEUE=${SKIP_QUEUE:-}; SKIP_R8R9=${SKIP_R8R9:-}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
REDIS=${REDIS:-redis://127.0.0.1:6379/}
AMQP=${AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
for c in wrk python3 curl taskset; do command -v $c >/dev/null || { echo "needs $c"; exit 1; }; done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p stampede -p stampede-drill --bins --quiet
BIN=$CARGO_TARGET_DIR/release/stampede
TEXTBOOK=$CARGO_TARGET_DIR/release/textbook
BARE=$CARGO_TARGET_DIR/release/bare
# The embedded server's session key, so tokens of made-up buyers can be minted for R11/R12.
SESSION_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
NAME=drillbench_$(python3 -c 'import secrets; print(secrets.token_hex(5))')
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -z "$SKIP_CLUSTER" ]; then
    psql "$PG" -qAtc "DROP SCHEMA IF EXISTS $NAME CASCADE; DROP SCHEMA IF EXISTS ${NAME}_tb CASCADE" >/dev/null 2>&1 || true
    redis-cli -u "$REDIS" --scan --pattern "stampede:{$NAME:*" 2>/dev/null |
      xargs -r -n 100 redis-cli -u "$REDIS" del >/dev/null 2>&1 || true
    if command -v rabbitmqctl >/dev/null; then
      timeout 60 rabbitmqctl -q delete_queue "stampede.$NAME.events" >/dev/null 2>&1 || true
      timeout 60 rabbitmqctl -q eval "
        [rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, X), false, <<\"bench\">>)
         || X <- [<<\"stampede.$NAME.live\">>, <<\"stampede.$NAME.events\">>]]." >/dev/null 2>&1 || true
    fi
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }
post() { curl -sf -XPOST "$1$2" -H 'content-type: application/json' ${4:+-H "authorization: Bearer $4"} -d "$3"; }
ADMIN_EMAIL=bench@example.com; ADMIN_PASSWORD=bench-password

# start NAME [ENV=V …]: a stampede server on core 0; sets $B and appends its pid.
start() {
  local n=$1; shift
  env STAMPEDE_ADMIN_EMAIL=$ADMIN_EMAIL STAMPEDE_ADMIN_PASSWORD=$ADMIN_PASSWORD \
    STAMPEDE_RATE_LIMIT_PER_SEC=1000000 STAMPEDE_MAX_OPEN_HOLDS_PER_ACCOUNT=0 STAMPEDE_MAX_OPEN_HOLDS_PER_DEVICE=0 STAMPEDE_IP_RATE_LIMIT_PER_SEC=100000000 \
    STAMPEDE_ARGON2_MEMORY_KIB=256 STAMPEDE_ARGON2_ITERATIONS=1 STAMPEDE_LOG=warn "$@" \
    taskset -c 0 "$BIN" serve --listen 127.0.0.1:0 --data-dir "$work/data-$n" >"$work/out-$n" 2>"$work/err-$n" &
  pids+=($!)
  for _ in $(seq 300); do grep -q listening "$work/out-$n" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$work/out-$n" || { echo "$n did not start:"; cat "$work/err-$n"; exit 1; }
  B=$(sed -n 's/^listening on //p' "$work/out-$n")
}
admin_token() { post "$1" /api/v1/auth/login "{\"email\":\"$ADMIN_EMAIL\",\"password\":\"$ADMIN_PASSWORD\"}" | json '["token"]'; }
sale() { # base admin name stock limit
  post "$1" /api/v1/admin/sales "{\"name\":\"$3\",\"original_price\":\"10.00\",\"sale_price\":\"2.00\",\"currency\":\"EUR\",\"total_stock\":$4,\"starts_at\":\"2020-01-01T00:00:00Z\",\"ends_at\":\"2099-01-01T00:00:00Z\",\"per_user_limit\":$5,\"hold_seconds\":3600}" "$2" | json '["sale_id"]'
}
buyers() { # base file
  : >"$2"
  for i in $(seq "$BUYERS"); do
    post "$1" /api/v1/auth/register "{\"email\":\"b$i@example.com\",\"password\":\"bench-password\",\"name\":\"b$i\"}" >/dev/null || true
    post "$1" /api/v1/auth/login "{\"email\":\"b$i@example.com\",\"password\":\"bench-password\"}" | json '["token"]' >>"$2"
  done
}
# w NAME RUN CONNS URL [wrk args…]: one wrk run on core 1; appends "NAME rps" to $work/rps.
w() {
  local n=$1 r=$2 c=$3; shift 3
  taskset -c 1 wrk -t1 -c"$c" -d"$DURATION" --latency "$@" >"$work/$n.$r" 2>&1
  awk -v n="$n" '/Requests\/sec/ {print n, $2}' "$work/$n.$r" | tee -a "$work/rps"
}
# wcpu PID NAME RUN CONNS URL [wrk args…]: w, and the CPU the server PID spent on it (ticks of
# 10 ms, user + system) with the requests it answered, appended to $work/cpu: what a request
# costs the server's one core, the bound on its throughput there.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wcpu() {
  local pid=$1 t0; shift; t0=$(ticks "$pid")
  w "$@"
  echo "$1 $(($(ticks "$pid") - t0)) $(awk '/requests in/ {print $1}' "$work/$1.$2")" >>"$work/cpu"
}
metric() { curl -sf "$1/metrics" | awk -v m="$2" 'index($1, m) == 1 {s += $2} END {printf "%d\n", s}'; }
# The sale limits: at most 10,000,000 units and 1,000 per buyer, so every accepted-reserve run
# gets a fresh sale (BUYERS x 1,000 holds at most per sale).
fresh() { sale "$1" "$2" "big$RANDOM" 10000000 1000; }
commits() { # label base: commits (group-commit batches) and holds the server made
  echo "commits $1 $(metric "$2" stampede_group_commit_batch_size_count) holds $(metric "$2" 'stampede_reserve_total{outcome="reserved"')" | tee -a "$work/commits"
}
echo "conditions: $(nproc) cores, servers on core 0, load on core 1; wrk -t1 $DURATION x $RUNS; $(date -u +%FT%TZ)"

# ---------------------------------------------------------------- the bare baseline
taskset -c 0 "$BARE" --listen 127.0.0.1:0 >"$work/out-bare" 2>"$work/err-bare" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/out-bare" 2>/dev/null && break; sleep 0.1; done
BR=$(sed -n 's/^listening on //p' "$work/out-bare")

# ---------------------------------------------------------------- embedded: R0 R1 R2 R5 R6
start embedded STAMPEDE_SESSION_KEY="$SESSION_KEY"; E=$B; EA=$(admin_token "$E"); EP=${pids[-1]}
gone=$(sale "$E" "$EA" gone 0 1)
buyers "$E" "$work/tokens"
start embedded1 STAMPEDE_MAX_BATCH=1; E1=$B; E1A=$(admin_token "$E1")
buyers "$E1" "$work/tokens1"
for r in $(seq "$RUNS"); do
  wcpu "${pids[0]}" bare "$r" "$CONNS" "$BR/healthz"
  wcpu "$EP" healthz "$r" "$CONNS" "$E/healthz"
  TOKENS_FILE=$work/tokens SALE_ID=$gone wcpu "$EP" sold_out "$r" "$CONNS" -s bench/reserve.lua "$E"
  big=$(fresh "$E" "$EA"); TOKENS_FILE=$work/tokens SALE_ID=$big wcpu "$EP" reserve "$r" "$CONNS" -s bench/reserve.lua "$E"
  big1=$(fresh "$E1" "$E1A"); TOKENS_FILE=$work/tokens1 SALE_ID=$big1 w reserve_tx1 "$r" "$CONNS" -s bench/reserve.lua "$E1"
  TOKENS_FILE=$work/tokens SALE_ID=$gone w sold_out_c4096 "$r" 4096 -s bench/reserve.lua "$E"
done
commits E "$E"; commits E1 "$E1"
for s in "E $E $EA $big" "E1 $E1 $E1A $big1"; do
  set -- $s
  curl -sf "$2/api/v1/admin/sales/$4/metrics" -H "authorization: Bearer $3" | json '["invariant_ok"]' | sed "s/^/invariant_ok $1 /" | tee -a "$work/invariants"
done
kill "${pids[2]}" 2>/dev/null || true

# ---------------------------------------------------------------- R11 R12: the waiting room
if [ -z "$SKIP_QUEUE" ]; then
  # Buyers in the line (before the sale starts they wait in the pre-queue).
  queued() {
    curl -sf "$E/api/v1/admin/sales/$1/queue" -H "authorization: Bearer $EA" |
      python3 -c "import sys, json; d = json.load(sys.stdin); print(d['queue_length'] + d.get('pre_queue_length', 0))"
  }
  qsale=$(post "$E" /api/v1/admin/sales "{\"name\":\"queue\",\"original_price\":\"10.00\",\"sale_price\":\"2.00\",\"currency\":\"EUR\",\"total_stock\":1000,\"starts_at\":\"2098-01-01T00:00:00Z\",\"ends_at\":\"2099-01-01T00:00:00Z\",\"per_user_limit\":1,\"queue_required\":true,\"hold_seconds\":300}" "$EA" | json '["sale_id"]')
  python3 bench/mint_tokens.py "$SESSION_KEY" "$((Q_BUYERS + 2000000))" >"$work/qtokens"
  # Fill the line (not measured), then each R12 run joins fresh buyers further down the file.
  TOKENS_FILE=$work/qtokens SALE_ID=$qsale QUEUE_MODE=join START=0 \
    taskset -c 1 wrk -t1 -c"$CONNS" -d600s -s bench/queue.lua "$E" >"$work/qfill" 2>&1 &
  fill=$!
  for _ in $(seq 600); do
    n=$(queued "$qsale" || echo 0)
    [ "${n:-0}" -ge "$Q_BUYERS" ] && break; sleep 1
  done
  kill "$fill" 2>/dev/null || true; wait "$fill" 2>/dev/null || true
  for r in $(seq "$RUNS"); do
    w bare "$r" "$CONNS" "$BR/healthz"
    TOKENS_FILE=$work/qtokens SALE_ID=$qsale QUEUE_MODE=poll POLLERS=100000 w q_poll "$r" "$CONNS" -s bench/queue.lua "$E"
    TOKENS_FILE=$work/qtokens SALE_ID=$qsale QUEUE_MODE=join START=$((Q_BUYERS + 600000 * r)) w q_join "$r" "$CONNS" -s bench/queue.lua "$E"
  done
  queued "$qsale" | sed 's/^/queued /' | tee -a "$work/queued"
  awk '/Non-2xx/ {print "  non-2xx in a queue run: " $0}' "$work"/q_*.*
fi

# ---------------------------------------------------------------- R8, R9: the drill's driver
peak=$(python3 -c "import statistics; print(int(statistics.median(float(l.split()[1]) for l in open('$work/rps') if l.startswith('sold_out '))))")
rate=$((peak / 2)); secs=10
drill() { # name, then drill args
  local n=$1; shift
  taskset -c 1 "$BIN" drill --target "$E" --admin-email $ADMIN_EMAIL --admin-password $ADMIN_PASSWORD \
    --accounts "$BUYERS" --quiet --no-settle --report-dir "$work/report-$n" "$@" >"$work/drill-$n" 2>&1 || true
  grep -E 'wall_secs|endpoint|audit' "$work/drill-$n" | sed "s/^/$n: /"
}
for r in $(seq "$RUNS"); do
  [ -n "$SKIP_R8R9" ] && break
  drill "r8_reserve_$r" --mix reserve=100 --stock 0 --arrival steady --duration-secs $secs --buyers $((rate * secs)) --connections 256
  drill "r8_healthz_$r" --mix healthz=100 --arrival steady --duration-secs $secs --buyers $((rate * secs)) --connections 256
  drill "r9_pay_$r" --mix pay=100 --stock 10000000 --per-user-limit 1000 --arrival t0 --buyers "$R9_BUYERS" --connections 64
  drill "r9_reserve_$r" --mix reserve=100 --stock 10000000 --per-user-limit 1000 --arrival t0 --buyers "$R9_BUYERS" --connections 64
done

# ---------------------------------------------------------------- cluster: R4 R5(PG) R7
if [ -z "$SKIP_CLUSTER" ]; then
  for c in psql redis-cli redis-benchmark; do command -v $c >/dev/null || { echo "needs $c"; exit 1; }; done
  kill "${pids[1]}" 2>/dev/null || true
  psql "$PG" -qAtc "CREATE SCHEMA $NAME; CREATE SCHEMA ${NAME}_tb" >/dev/null
  URL="$PG?options[search_path]=$NAME"
  cluster_env=(STAMPEDE_POSTGRES_URL="$URL" STAMPEDE_REDIS_URL="$REDIS" STAMPEDE_AMQP_URL="$AMQP" STAMPEDE_CLUSTER_NAME="$NAME")
  start cluster "${cluster_env[@]}"; C=$B; CA=$(admin_token "$C")
  lim=$(sale "$C" "$CA" lim 10000000 1)
  buyers "$C" "$work/ctokens"
  while read -r t; do post "$C" /api/v1/cart/items "{\"sale_id\":\"$lim\",\"quantity\":1}" "$t" >/dev/null; done <"$work/ctokens"
  # The textbook server: same PostgreSQL, its own schema, on core 0 in turn.
  taskset -c 0 "$TEXTBOOK" --postgres "$PG?options[search_path]=${NAME}_tb" --pool 64 >"$work/out-tb" 2>"$work/err-tb" &
  pids+=($!)
  for _ in $(seq 100); do grep -q listening "$work/out-tb" 2>/dev/null && break; sleep 0.1; done
  T=$(sed -n 's/^listening on //p' "$work/out-tb")
  # The gate script, loaded for redis-benchmark on keys of this run's own namespace.
  take=$(python3 - <<'PY'
import re
src = open("crates/gate-redis/src/lib.rs").read()
print(re.search(r'const TAKE: &str = r#"(.*?)"#;', src, re.S).group(1))
PY
)
  sha=$(redis-cli -u "$REDIS" SCRIPT LOAD "$take")
  k="stampede:{$NAME:rb}"
  redis-cli -u "$REDIS" SET "$k:avail" 100000000 >/dev/null; redis-cli -u "$REDIS" HSET "$k:users" u1 1 >/dev/null
  rhost=$(python3 -c "from urllib.parse import urlparse; u=urlparse('$REDIS'); print(u.hostname or '127.0.0.1', u.port or 6379)")
  calls() { redis-cli -u "$REDIS" INFO commandstats | awk -F'[=,:]' '/^cmdstat_/ {s += $3} END {print s}'; }
  bycmd() { redis-cli -u "$REDIS" INFO commandstats | tr -d '\r' | awk -F'[=,:]' '/^cmdstat_/ {print $1, $3}' | sort; }
  for r in $(seq "$RUNS"); do
    cbig=$(fresh "$C" "$CA"); TOKENS_FILE=$work/ctokens SALE_ID=$cbig w c_reserve "$r" 64 -s bench/reserve.lua "$C"
    taskset -c 1 wrk -t1 -c64 -d"$DURATION" -s bench/textbook.lua "$T" >"$work/tb.$r" 2>&1
    awk '/Requests\/sec/ {print "textbook", $2}' "$work/tb.$r" | tee -a "$work/rps"
    before=$(calls); bycmd >"$work/cmd.before"
    TOKENS_FILE=$work/ctokens SALE_ID=$lim w c_gate "$r" 64 -s bench/reserve.lua "$C"
    after=$(calls); bycmd >"$work/cmd.after"; reqs=$(awk '/requests in/ {print $1}' "$work/c_gate.$r")
    join "$work/cmd.before" "$work/cmd.after" | awk -v n="$reqs" '$3 - $2 > n / 100 {printf "  %s %.2f per reserve\n", $1, ($3 - $2) / n}'
    echo "redis_calls $((after - before)) requests $reqs" | tee -a "$work/rcalls"
    set -- $rhost
    taskset -c 1 redis-benchmark -h "$1" -p "$2" -c 64 -n 400000 -q EVALSHA "$sha" 3 "$k:avail" "$k:users" "$k:ops" u1 1 1 \
      | tr '\r' '\n' | awk '/requests per second/ {for (i=2;i<=NF;i++) if ($i == "requests") {print "evalsha", $(i-1); exit}}' | tee -a "$work/rps"
  done
  curl -sf "$T/stats" | sed 's/^/textbook stats: /'
  commits C "$C"
  curl -sf "$C/api/v1/admin/sales/$cbig/metrics" -H "authorization: Bearer $CA" | json '["invariant_ok"]' | sed "s/^/invariant_ok C /" | tee -a "$work/invariants"
  kill "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
  start cluster1 "${cluster_env[@]}" STAMPEDE_MAX_BATCH=1; C1=$B; C1A=$(admin_token "$C1")
  for r in $(seq "$RUNS"); do
    cbig1=$(fresh "$C1" "$C1A"); TOKENS_FILE=$work/ctokens SALE_ID=$cbig1 w c_reserve_tx1 "$r" 64 -s bench/reserve.lua "$C1"
  done
  commits C1 "$C1"
  redis-cli -u "$REDIS" DEL "$k:avail" "$k:users" "$k:ops" >/dev/null
fi

# ---------------------------------------------------------------- R10
if [ -z "$SKIP_R10" ]; then
  taskset -c 1 "$BIN" drill --buyers "$R10_BUYERS" --server-cpus 0 --quiet --report-dir "$work/r10" >"$work/drill-r10" 2>&1 || true
  grep -E 'wall_secs|setup_secs|requests|audit|units_sold|VIOLATION' "$work/drill-r10" | sed 's/^/r10: /'
  taskset -c 1 "$BIN" drill --buyers "$R10_BUYERS" --mix healthz=100 --server-cpus 0 --quiet --no-settle --report-dir "$work/r10h" >"$work/drill-r10h" 2>&1 || true
  grep -E 'wall_secs|requests' "$work/drill-r10h" | sed 's/^/r10 healthz: /'
  mkdir -p bench/last-drill && cp "$work/r10"/* bench/last-drill/ 2>/dev/null || true
fi

[ -n "${SKIP_R3:-}" ] || cargo bench -q -p stampede-drill --bench gate | tee "$work/r3" || true

python3 - "$work" "$R9_BUYERS" "$CONNS" <<'PY'
import sys, statistics, collections, os, re
w = sys.argv[1]; r9_buyers = int(sys.argv[2]); conns = sys.argv[3]
runs = collections.defaultdict(list)
for line in open(f"{w}/rps"):
    name, v = line.split(); runs[name].append(float(v))
med = {k: statistics.median(v) for k, v in runs.items()}
def drill(name):
    out = {}
    p = f"{w}/drill-{name}"
    if not os.path.exists(p): return out
    for line in open(p):
        m = re.match(r"drill wall_secs ([\d.]+)", line)
        if m: out["wall"] = float(m.group(1))
        m = re.match(r"drill endpoint (\w+) count (\d+) p50_ms ([\d.]+) p99_ms ([\d.]+)", line)
        if m: out[m.group(1)] = (int(m.group(2)), float(m.group(3)), float(m.group(4)))
        if line.startswith("drill audit"): out["audit"] = line.split()[-1]
    return out
def mdn(xs): xs = [x for x in xs if x is not None]; return statistics.median(xs) if xs else float("nan")
print("\n== medians (req/s)")
for k, v in sorted(med.items()): print(f"  {k:14s} {v:10.0f}   runs: {' · '.join(f'{x:.0f}' for x in runs[k])}")
g = lambda k: med.get(k, float("nan"))
print("\n== ratios")
print(f"R0 healthz / bare axum            {g('healthz')/g('bare'):.2f}")
print(f"R1 sold-out reserve / bare axum    {g('sold_out')/g('bare'):.2f}   (/ healthz {g('sold_out')/g('healthz'):.2f})")
print(f"R2 accepted reserve / bare axum    {g('reserve')/g('bare'):.2f}   (/ healthz {g('reserve')/g('healthz'):.2f})")
if os.path.exists(f"{w}/cpu"):
    cpu = collections.defaultdict(list)
    for line in open(f"{w}/cpu"):
        name, ticks, reqs = line.split(); cpu[name].append(10_000 * int(ticks) / max(int(reqs), 1))
    print("   server CPU per request (µs, its one core; 1e6/µs bounds req/s there): "
          + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in sorted(cpu.items())))
print(f"R4 cluster holds/s / textbook      {g('c_reserve')/g('textbook'):.1f}x   ({g('c_reserve'):.0f} vs {g('textbook'):.0f})")
print(f"R5 SQLite group / 1 tx per hold    {g('reserve')/g('reserve_tx1'):.1f}x   ({g('reserve'):.0f} vs {g('reserve_tx1'):.0f})")
print(f"R5 PostgreSQL group / 1 tx per hold {g('c_reserve')/g('c_reserve_tx1'):.1f}x   ({g('c_reserve'):.0f} vs {g('c_reserve_tx1'):.0f})")
if os.path.exists(f"{w}/commits"):
    for line in open(f"{w}/commits"):
        _, who, commits, _, holds = line.split()
        print(f"   commits per 1,000 holds [{who}]: {1000*int(commits)/max(int(holds),1):.1f}  ({commits} commits, {holds} holds)")
print(f"R6 sold-out c4096 / c{conns:<3}        {g('sold_out_c4096')/g('sold_out'):.2f}   ({g('sold_out_c4096'):.0f} vs {g('sold_out'):.0f})")
print(f"R7 gate-bound reserve / EVALSHA    {g('c_gate')/g('evalsha'):.2f}   ({g('c_gate'):.0f} vs {g('evalsha'):.0f})")
if os.path.exists(f"{w}/rcalls"):
    per = [int(l.split()[1]) / max(int(l.split()[3]), 1) for l in open(f"{w}/rcalls")]
    print(f"   Redis commands per reserve, those run inside the script included (all clients of the shared Redis): {' · '.join(f'{x:.2f}' for x in per)}")
r8 = [(drill(f"r8_reserve_{r}").get("reserve"), drill(f"r8_healthz_{r}").get("healthz")) for r in range(1, 10)]
r8 = [(a, b) for a, b in r8 if a and b]
if r8:
    pr, ph = mdn([a[2] for a, _ in r8]), mdn([b[2] for _, b in r8])
    print(f"R8 p99 reserve / p99 healthz @50%  {pr/ph:.2f}   ({pr:.2f} ms vs {ph:.2f} ms; p50 {mdn([a[1] for a,_ in r8]):.2f} vs {mdn([b[1] for _,b in r8]):.2f} ms)")
r9 = [(drill(f"r9_pay_{r}").get("wall"), drill(f"r9_reserve_{r}").get("wall")) for r in range(1, 10)]
r9 = [(a, b) for a, b in r9 if a and b]
if r9:
    pay, res = mdn([a for a, _ in r9]), mdn([b for _, b in r9])
    print(f"R9 checkout / reserve throughput   {res/pay:.2f}   ({r9_buyers} buyers: {r9_buyers/pay:.0f} checkouts/s vs {r9_buyers/res:.0f} reserves/s)")
a, b = drill("r10"), drill("r10h")
if a.get("wall") and b.get("wall"):
    print(f"R10 drill wall / bare requests     {a['wall']/b['wall']:.2f}   ({a['wall']:.1f} s vs {b['wall']:.1f} s; audit {a.get('audit')})")
if "q_poll" in med:
    queued = open(f"{w}/queued").read().split()[-1] if os.path.exists(f"{w}/queued") else "?"
    print(f"R11 queue poll / bare axum         {g('q_poll')/g('bare'):.2f}   ({queued} queued)")
    print(f"R12 queue join / bare axum         {g('q_join')/g('bare'):.2f}")
if os.path.exists(f"{w}/invariants"):
    print("invariants: " + ", ".join(l.strip() for l in open(f"{w}/invariants")))
PY
