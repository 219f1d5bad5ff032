#!/usr/bin/env bash
# Cluster mode on this machine (PostgreSQL judge, Redis gate, RabbitMQ events), in two parts:
#
# 1. Reserve throughput of one node, then of three nodes of the same cluster, with the workloads
#    of bench/reserve.sh:
#      healthz   bare GET /healthz of one node (the HTTP floor)
#      sold_out  POST /api/v1/cart/items on a sold-out sale (the gate answers)
#      reserve   POST /api/v1/cart/items that succeed (gate + PostgreSQL group commit)
#    Every node is pinned to core 0 and wrk to core 1 (wrk -t3, one thread per node in the
#    three-node runs). PostgreSQL, Redis and RabbitMQ run on this machine too and are NOT pinned:
#    they take CPU from both cores. Each workload runs RUNS times; medians.
# 2. PostgreSQL writes for one sale: a sale of STOCK units (per_user_limit LIMIT), PG_BUYERS
#    buyers registered and logged in first, then REQUESTS reservations of one unit fired over the
#    three nodes; pg_stat_user_tables (the scratch schema's tables) and pg_stat_database
#    (database test) are read before and after.
#
# After each phase the admin metrics of the sales are read from every node; the script fails if
# any says invariant_ok=false.
#
# Each run uses a scratch schema bench_<random> in database test (cluster name = schema name),
# dropped at exit along with the cluster's Redis keys and RabbitMQ queue/exchanges.
#
# Usage: bench/cluster.sh
#   env: DURATION=10s RUNS=3 CONNS=63 BUYERS=200
#        STOCK=1000 REQUESTS=20000 PG_BUYERS=1000 LIMIT=5 PG_CONCURRENCY=32 SETTLE=3
#        PG=postgres://postgres@127.0.0.1:5432/test REDIS=redis://127.0.0.1:6379/
#        AMQP=amqp://guest:guest@127.0.0.1:5672/%2f
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}; RUNS=${RUNS:-3}; CONNS=${CONNS:-63}; BUYERS=${BUYERS:-200}
STOCK=${STOCK:-1000}; REQUESTS=${REQUESTS:-20000}; PG_BUYERS=${PG_BUYERS:-1000}; LIMIT=${LIMIT:-5}
PG_CONCURRENCY=${PG_CONCURRENCY:-32}; SETTLE=${SETTLE:-3}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
REDIS=${REDIS:-redis://127.0.0.1:6379/}
AMQP=${AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
export THREADS=3
for c in wrk psql python3 curl taskset; do
  command -v $c >/dev/null || { echo "needs $c"; exit 1; }
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -p stampede --quiet
BIN=$CARGO_TARGET_DIR/release/stampede

NAME=bench_$(python3 -c 'import secrets; print(secrets.token_hex(6))')
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  psql "$PG" -qAtc "DROP SCHEMA IF EXISTS $NAME CASCADE" >/dev/null 2>&1 || true
  if command -v redis-cli >/dev/null; then
    redis-cli -u "$REDIS" --scan --pattern "stampede:{$NAME:*" 2>/dev/null |
      xargs -r -n 100 redis-cli -u "$REDIS" del >/dev/null 2>&1 || true
  fi
  if command -v rabbitmqctl >/dev/null; then
    timeout 60 rabbitmqctl -q delete_queue "stampede.$NAME.events" >/dev/null 2>&1 || true
    timeout 60 rabbitmqctl -q eval "
      [rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, X), false, <<\"bench\">>)
       || X <- [<<\"stampede.$NAME.live\">>, <<\"stampede.$NAME.events\">>]]." >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
psql "$PG" -qAtc "CREATE SCHEMA $NAME" >/dev/null
URL="$PG?options[search_path]=$NAME"
sql() { psql "$PG" -qAtX -F ' ' -c "$1"; }

start_node() { # index; prints nothing, appends to pids and nodes
  local i=$1
  STAMPEDE_ADMIN_EMAIL=bench@example.com STAMPEDE_ADMIN_PASSWORD=bench-password \
  STAMPEDE_RATE_LIMIT_PER_SEC=1000000 STAMPEDE_MAX_OPEN_HOLDS_PER_ACCOUNT=0 STAMPEDE_MAX_OPEN_HOLDS_PER_DEVICE=0 STAMPEDE_ARGON2_MEMORY_KIB=256 STAMPEDE_ARGON2_ITERATIONS=1 \
  STAMPEDE_LOG=warn STAMPEDE_POSTGRES_URL="$URL" STAMPEDE_REDIS_URL="$REDIS" \
  STAMPEDE_AMQP_URL="$AMQP" STAMPEDE_CLUSTER_NAME="$NAME" \
  taskset -c 0 "$BIN" serve --listen 127.0.0.1:0 --data-dir "$work/data$i" >"$work/out$i" 2>"$work/err$i" &
  pids+=($!)
  for _ in $(seq 300); do grep -q listening "$work/out$i" 2>/dev/null && break; sleep 0.1; done
  if ! grep -q listening "$work/out$i"; then
    echo "node $i did not start:"; cat "$work/err$i"; exit 1
  fi
  N[$i]=$(sed -n 's/^listening on //p' "$work/out$i")
}
declare -a N
start_node 1
B=${N[1]}
json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }
post() {
  local out
  out=$(curl -sS --fail-with-body -XPOST "$B$1" -H 'content-type: application/json' ${3:+-H "authorization: Bearer $3"} -d "$2") ||
    { echo "POST $1 failed: $out" >&2; return 1; }
  printf '%s\n' "$out"
}
admin=$(post /api/v1/auth/login '{"email":"bench@example.com","password":"bench-password"}' | json '["token"]')
sale() { # name stock per_user_limit
  post /api/v1/admin/sales "{\"name\":\"$1\",\"original_price\":\"10.00\",\"sale_price\":\"2.00\",\"currency\":\"EUR\",\"total_stock\":$2,\"starts_at\":\"2020-01-01T00:00:00Z\",\"ends_at\":\"2099-01-01T00:00:00Z\",\"per_user_limit\":$3,\"hold_seconds\":3600}" "$admin" | json '["sale_id"]'
}
# Registers and logs in buyers prefix1..prefixN on node B, a few at a time; tokens to a file.
buyers() { # prefix count file
  python3 - "$B" "$1" "$2" "$3" <<'PY'
import sys, json, urllib.request, concurrent.futures as cf
base, prefix, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)
def one(i):
    email = f"{prefix}{i}@example.com"
    post("/api/v1/auth/register", {"email": email, "password": "bench-password", "name": f"{prefix}{i}"})
    return post("/api/v1/auth/login", {"email": email, "password": "bench-password"})["token"]
with cf.ThreadPoolExecutor(8) as ex:
    tokens = list(ex.map(one, range(1, n + 1)))
open(out, "w").write("\n".join(tokens) + "\n")
PY
}
fail=0
# Prints the admin metrics of the given sales from every running node; checks invariant_ok.
metrics() { # phase, then "label=sale_id" pairs
  local phase=$1; shift
  echo "--- admin metrics after $phase"
  for i in "${!N[@]}"; do
    for ls in "$@"; do
      local m
      m=$(curl -sf "${N[$i]}/api/v1/admin/sales/${ls#*=}/metrics" -H "authorization: Bearer $admin") || {
        echo "node $i ${ls%%=*}: metrics request failed"; fail=1; continue; }
      echo "node $i ${ls%%=*}: $m"
      [ "$(echo "$m" | json '["invariant_ok"]')" = True ] || { echo "!!! invariant_ok is not true on node $i for ${ls%%=*}"; fail=1; }
    done
  done
}

# per_user_limit is at most 1000, so each reserve run gets a fresh big sale: BUYERS x 1000 units
# per run before buyers hit their limit.
gone=$(sale gone 0 1000)
buyers b "$BUYERS" "$work/tokens"

run() { # name, then wrk args
  local name=$1; shift
  for r in $(seq "$RUNS"); do
    if [[ $name == reserve* ]]; then
      SALE_ID=$(sale "$name.$r" 10000000 1000); export SALE_ID
      echo "$name.$r=$SALE_ID" >>"$work/bigsales"
    fi
    taskset -c 1 wrk -t$THREADS -c"$CONNS" -d"$DURATION" --latency "$@" >"$work/$name.$r" 2>&1
    awk -v n="$name" '/Requests\/sec/ {print n, $2}' "$work/$name.$r"
  done
}
echo "cluster $NAME: PostgreSQL $PG (schema $NAME), Redis $REDIS, RabbitMQ on 127.0.0.1:5672"
echo "nodes on core 0, wrk -t$THREADS -c$CONNS on core 1, $DURATION x $RUNS runs; $BUYERS buyers"
echo "NOTE: PostgreSQL, Redis and RabbitMQ also run on this machine, unpinned (both cores)"
echo "=== 1 node: ${N[1]}"
run healthz_1 "$B/healthz" | tee -a "$work/rps"
TOKENS_FILE="$work/tokens" SALE_ID=$gone NODES="${N[1]#http://}" run sold_out_1 -s bench/cluster.lua "$B" | tee -a "$work/rps"
TOKENS_FILE="$work/tokens" NODES="${N[1]#http://}" run reserve_1 -s bench/cluster.lua "$B" | tee -a "$work/rps"
metrics "1 node" $(cat "$work/bigsales") gone="$gone"

start_node 2; start_node 3
sleep 2 # let the new nodes' buses and gates settle
NODES="${N[1]#http://} ${N[2]#http://} ${N[3]#http://}"
echo "=== 3 nodes: ${N[*]}"
run healthz_3 "$B/healthz" | tee -a "$work/rps"
TOKENS_FILE="$work/tokens" SALE_ID=$gone NODES="$NODES" run sold_out_3 -s bench/cluster.lua "$B" | tee -a "$work/rps"
TOKENS_FILE="$work/tokens" NODES="$NODES" run reserve_3 -s bench/cluster.lua "$B" | tee -a "$work/rps"
metrics "3 nodes" $(cat "$work/bigsales") gone="$gone"

echo "=== PostgreSQL writes: sale of $STOCK units, per_user_limit $LIMIT, $PG_BUYERS buyers, $REQUESTS reserve requests over 3 nodes"
buyers p "$PG_BUYERS" "$work/pg_tokens"
pgsale=$(sale pg "$STOCK" "$LIMIT")
snap() { # file: per-table ins upd del hot_upd scans, then xact_commit
  sql "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd, coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE schemaname = '$NAME' ORDER BY relname" >"$1"
  echo "xact_commit $(sql "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")" >>"$1"
}
sleep "$SETTLE"; snap "$work/s0"
sleep "$SETTLE"; snap "$work/s1"
taskset -c 1 python3 - "$work/pg_tokens" "$pgsale" "$REQUESTS" "$PG_CONCURRENCY" ${N[1]} ${N[2]} ${N[3]} >"$work/burst" <<'PY'
import sys, json, time, threading, http.client, collections, urllib.parse
tokens = open(sys.argv[1]).read().split()
sale, total, conc, nodes = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
body = json.dumps({"sale_id": sale, "quantity": 1})
lock = threading.Lock(); counter = [0]; codes = collections.Counter(); errors = collections.Counter()
def worker(w):
    conns = {}
    while True:
        with lock:
            i = counter[0]
            if i >= total: return
            counter[0] += 1
        node = nodes[i % len(nodes)]
        u = urllib.parse.urlsplit(node)
        for attempt in range(2):
            c = conns.get(node) or http.client.HTTPConnection(u.hostname, u.port, timeout=30)
            conns[node] = c
            try:
                c.request("POST", "/api/v1/cart/items", body,
                          {"content-type": "application/json", "authorization": "Bearer " + tokens[i % len(tokens)]})
                r = c.getresponse(); data = r.read()
                code = r.status
                if code >= 400:
                    try: code = f"{code} {json.loads(data).get('code') or json.loads(data).get('title')}"
                    except Exception: pass
                with lock: codes[code] += 1
                break
            except (http.client.HTTPException, OSError) as e:
                c.close(); conns.pop(node, None)
                if attempt: 
                    with lock: errors[type(e).__name__] += 1
t0 = time.time()
ts = [threading.Thread(target=worker, args=(w,)) for w in range(conc)]
for t in ts: t.start()
for t in ts: t.join()
dt = time.time() - t0
print(f"elapsed {dt:.2f}")
for k, v in sorted(codes.items(), key=lambda kv: str(kv[0])): print(f"status {str(k).replace(' ', '_')} {v}")
for k, v in errors.items(): print(f"error {k} {v}")
PY
sleep "$SETTLE"; snap "$work/s2"
holds=$(sql "SELECT count(*), coalesce(sum(quantity), 0), count(DISTINCT user_id) FROM $NAME.holds WHERE sale_id = '$pgsale'")
stockrow=$(sql "SELECT available, held, sold FROM $NAME.sales WHERE id = '$pgsale'")
metrics "the PostgreSQL-writes sale" pg="$pgsale"

echo "=== summary"
python3 - "$work" "$RUNS" "$STOCK" "$REQUESTS" "$SETTLE" "$holds" "$stockrow" <<'PY'
import sys, os, re, statistics, collections
work, runs, stock, requests, settle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
holds, stockrow = sys.argv[6].split(), sys.argv[7].split()
rps = collections.defaultdict(list)
for line in open(os.path.join(work, "rps")):
    name, v = line.split(); rps[name].append(float(v))
med = {k: statistics.median(v) for k, v in rps.items()}
def lat(name):
    out = []
    for r in range(1, runs + 1):
        t = open(os.path.join(work, f"{name}.{r}")).read()
        p50 = re.search(r"^\s+50%\s+(\S+)", t, re.M); p99 = re.search(r"^\s+99%\s+(\S+)", t, re.M)
        bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t); err = re.search(r"Socket errors:.*", t)
        reqs = re.search(r"(\d+) requests in", t)
        out.append((p50 and p50.group(1), p99 and p99.group(1), int(bad.group(1)) if bad else 0,
                    int(reqs.group(1)) if reqs else 0, err.group(0) if err else ""))
    return out
print(f"{'workload':10s} {'1 node req/s':>13s} {'3 nodes req/s':>14s} {'3/1':>6s}")
for w in ["healthz", "sold_out", "reserve"]:
    a, b = med.get(w + "_1"), med.get(w + "_3")
    print(f"{w:10s} {a:13.0f} {b:14.0f} {b / a:6.2f}")
print("  (healthz is one node in both columns: in the 3-node column the two other nodes idle beside it)")
print(f"sold_out / healthz: 1 node {med['sold_out_1']/med['healthz_1']:.2f}, 3 nodes {med['sold_out_3']/med['healthz_3']:.2f}")
print(f"reserve  / healthz: 1 node {med['reserve_1']/med['healthz_1']:.2f}, 3 nodes {med['reserve_3']/med['healthz_3']:.2f}")
print("per run (req/s, p50, p99, requests, non-2xx, socket errors):")
for w in ["healthz_1", "sold_out_1", "reserve_1", "healthz_3", "sold_out_3", "reserve_3"]:
    for v, (p50, p99, bad, reqs, err) in zip(rps[w], lat(w)):
        print(f"  {w:11s} {v:9.0f}  p50 {p50:>8s}  p99 {p99:>8s}  {reqs:8d} req  non-2xx {bad:8d}  {err}")

def snap(f):
    t, x = {}, 0
    for line in open(os.path.join(work, f)):
        p = line.split()
        if p[0] == "xact_commit": x = int(p[1])
        else: t[p[0]] = [int(v) for v in p[1:]]
    return t, x
(t0, x0), (t1, x1), (t2, x2) = snap("s0"), snap("s1"), snap("s2")
def delta(a, b):
    d = {k: [vb - va for va, vb in zip(a.get(k, [0, 0, 0, 0, 0]), v)] for k, v in b.items()}
    return {k: v for k, v in d.items() if any(v)}
burst, idle = delta(t1, t2), delta(t0, t1)
burst_lines = [l.split(None, 1) for l in open(os.path.join(work, "burst"))]
burst_info = dict(burst_lines)
print()
print(f"PostgreSQL writes for a sale of {stock} units, {requests} reserve requests (quantity 1):")
elapsed = float(burst_info["elapsed"])
print(f"  burst: {elapsed:.2f} s, {requests/elapsed:.0f} req/s (one Python client on core 1)")
for k, v in burst_lines:
    if k in ("status", "error"): print(f"    {k} {v.strip()}")
ins = sum(v[0] for v in burst.values()); upd = sum(v[1] for v in burst.values())
dele = sum(v[2] for v in burst.values()); hot = sum(v[3] for v in burst.values())
print(f"  {'table':18s} {'ins':>7s} {'upd':>7s} {'del':>7s} {'hot_upd':>7s} {'scans':>7s}  (scans = seq_scan + idx_scan, reads)")
for k, v in sorted(burst.items()):
    print(f"  {k:18s} {v[0]:7d} {v[1]:7d} {v[2]:7d} {v[3]:7d} {v[4]:7d}")
rows = ins + upd + dele
print(f"  rows written (scratch schema tables): inserted {ins}, updated {upd} ({hot} HOT), deleted {dele}; total {rows}")
print(f"  committed transactions (xact_commit, database test, all sessions, approximate): {x2 - x1}")
idle_rows = sum(sum(v[:3]) for v in idle.values())
idle_tables = ", ".join(f"{k} +{v[0]}/~{v[1]}/-{v[2]}" for k, v in sorted(idle.items()) if any(v[:3]))
print(f"  idle drift over {settle:.0f} s before the burst: {idle_rows} rows, {x1 - x0} commits "
      f"(background work of the 3 nodes and other sessions; the burst window is about "
      f"{elapsed + settle:.0f} s)" + (f"\n    idle ins/upd/del by table: {idle_tables}" if idle_tables else ""))
print(f"  holds in PostgreSQL for the sale: {holds[0]} (units {holds[1]}, buyers {holds[2]}); "
      f"sale row available/held/sold = {'/'.join(stockrow)}")
sold = int(holds[1])
if sold:
    print(f"  rows written per unit sold: {rows / sold:.2f};  per request: {rows / requests:.3f}")
    print(f"  commits per unit sold: {(x2 - x1) / sold:.2f};  per request: {(x2 - x1) / requests:.3f}")
if sold != stock: print(f"  !!! holds {sold} != stock {stock}")
PY
if [ $fail -ne 0 ]; then echo "FAILED: an invariant check or a metrics request failed"; exit 1; fi
echo "invariant_ok on every node for every sale"
