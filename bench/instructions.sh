#!/usr/bin/env bash
# What one request costs the server, counted in instructions rather than timed: each server runs
# under valgrind's callgrind (pinned to core 0) while wrk (core 1) sends it requests for
# SECONDS; the instructions its connection tasks executed, divided by the requests answered,
# are the same from run to run and on a busy machine, where req/s figures are not.
#
#   bare      the axum handler with no middleware (crates/drill/src/bin/bare.rs)
#   healthz   Stampede's GET /healthz
#   sold_out  Stampede's reserve on a sold-out sale, distinct buyers (tokens minted with the
#             server's session key, as R11/R12 do)
#
# Usage: bench/instructions.sh     env: SECONDS_PER_RUN=10 SKIP_BUILD=1
# Needs valgrind (callgrind_annotate, callgrind_control), wrk, python3, curl, taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
for c in valgrind callgrind_annotate callgrind_control wrk python3 curl taskset; do
  command -v $c >/dev/null || { echo "needs $c"; exit 1; }
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p stampede -p stampede-drill --bins --quiet
SECS=${SECONDS_PER_RUN:-10}
work=$(mktemp -d)
vp=""
cleanup() { [ -n "$vp" ] && kill "$vp" 2>/dev/null; [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"; }
trap cleanup EXIT

# measure NAME PORT PATH [wrk args…]: the server on PORT is already running under callgrind.
measure() {
  local name=$1 port=$2 path=$3; shift 3
  callgrind_control -z "$vp" >/dev/null
  callgrind_control -i on "$vp" >/dev/null
  local n
  n=$(taskset -c 1 wrk -t1 -c16 -d"${SECS}s" "$@" "http://127.0.0.1:$port$path" | awk '/requests in/{print $1}')
  callgrind_control -i off "$vp" >/dev/null
  callgrind_control -d "$vp" >/dev/null
  sleep 1
  local f
  f=$(ls -t "$work"/cg.out.* | head -1)
  # The connection tasks' instructions, inclusive (background work of the server excluded).
  python3 - "$f" "$n" "$name" <<'EOF'
import re, subprocess, sys
f, n, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", f],
                     capture_output=True, text=True).stdout
best = 0
for line in out.splitlines():
    if re.search(r"(server\.rs:stampede_http::server::serve|axum::serve::handle_connection)::\{\{closure\}\}::\{\{closure\}\} \[", line):
        best = max(best, int(line.split()[0].replace(",", "")))
print(f"{name:9} {best / n:8.0f} instructions per request  ({n} requests)")
EOF
}

start() { # PORT CMD…
  local port=$1; shift
  taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --instr-atstart=no \
    "$@" >"$work/server.log" 2>&1 &
  vp=$!
  for _ in $(seq 120); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && return; sleep 1; done
  echo "server on $port did not start"; cat "$work/server.log"; exit 1
}
stop() { kill "$vp" 2>/dev/null || true; wait "$vp" 2>/dev/null || true; vp=""; }

echo "conditions: callgrind, server on core 0, wrk -t1 -c16 on core 1, ${SECS} s each; $(date -u +%FT%TZ)"
start 18090 "$CARGO_TARGET_DIR/release/bare" --listen 127.0.0.1:18090
measure bare 18090 /healthz
stop

KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
# Under valgrind itself (not `valgrind env …`, whose exec valgrind would not follow).
export STAMPEDE_ADMIN_EMAIL=bench@example.com STAMPEDE_ADMIN_PASSWORD=bench-password \
  STAMPEDE_RATE_LIMIT_PER_SEC=1000000 STAMPEDE_IP_RATE_LIMIT_PER_SEC=100000000 \
  STAMPEDE_ARGON2_MEMORY_KIB=256 STAMPEDE_ARGON2_ITERATIONS=1 STAMPEDE_LOG=warn \
  STAMPEDE_SESSION_KEY="$KEY"
start 18091 "$CARGO_TARGET_DIR/release/stampede" serve --listen 127.0.0.1:18091 --data-dir "$work/data"
measure healthz 18091 /healthz
B=http://127.0.0.1:18091
admin=$(curl -sf -XPOST $B/api/v1/auth/login -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"bench-password"}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["token"])')
sale=$(curl -sf -XPOST $B/api/v1/admin/sales -H 'content-type: application/json' -H "authorization: Bearer $admin" \
  -d '{"name":"gone","original_price":"10.00","sale_price":"2.00","currency":"EUR","total_stock":0,"starts_at":"2020-01-01T00:00:00Z","ends_at":"2099-01-01T00:00:00Z","per_user_limit":1,"hold_seconds":3600}' |
  python3 -c 'import sys,json; print(json.load(sys.stdin)["sale_id"])')
python3 bench/mint_tokens.py "$KEY" 200000 >"$work/tokens"
TOKENS_FILE=$work/tokens SALE_ID=$sale measure sold_out 18091 / -s bench/reserve.lua
stop
