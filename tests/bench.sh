#!/usr/bin/env bash
# `just bench`: the release engine with `quote` under the load generator. First idle memory (the
# largest count, connected without params), then one run per connection count with params updates
# every second, each on a fresh engine so no run inherits another's memory or sockets. Prints the
# load generator's table plus the engine's CPU seconds per 100,000 pushes, the load generator's own
# CPU and the engine's resident memory per connection.
# At every count the Node.js `ws` peer (tests/peers/node-ws) serves the same load right after the
# engine, and a last table sets the two side by side.
# Usage: tests/bench.sh TARGET_DIR [CONNECTIONS...]
set -euo pipefail
target_dir=$1; shift
read -r -a counts <<< "${*:-1000 5000 19000}"
engine="$target_dir/release/wasmpush"
loadgen="$target_dir/release/loadgen"
floor="$target_dir/release/push_floor"
data_bench="$target_dir/release/data_bench"
peer_dir=$(dirname "$0")/peers/node-ws
url=ws://127.0.0.1:19503/ws/quote
work=$(mktemp -d)
engine_pid=""
server_pid=""
trap '[[ -n "$engine_pid" ]] && kill "$engine_pid" 2>/dev/null; [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/plugins"
cp "$target_dir/wasm32-wasip2/plugin/quote_plugin.wasm" "$work/plugins/quote.wasm"
cp "$target_dir/wasm32-wasip2/plugin/portfolio_plugin.wasm" "$work/plugins/portfolio.wasm"
ulimit -n "$(ulimit -Hn)"
clk=$(getconf CLK_TCK)

# Starts a fresh engine (with empty data; more flags in "$@") and waits until it serves; sets
# engine_pid and baseline_rss.
start_engine() {
  rm -rf "$work/data"
  "$engine" start --listen 127.0.0.1:19503 --admin 127.0.0.1:19504 --plugins-dir "$work/plugins" \
    --publish 127.0.0.1:19507 --data-dir "$work/data" --pid-file "$work/wasmpush.pid" "$@" > "$work/engine.log" 2>&1 &
  engine_pid=$!
  for _ in $(seq 100); do
    grep -q serving "$work/engine.log" 2>/dev/null && break
    sleep 0.1
  done
  baseline_rss=$(rss_kib)
}

stop_engine() {
  server_pid=$engine_pid
  engine_pid=""
  stop_server
}

# CPU ticks (user + system) process $1 has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$engine_pid/status"; }
# Field $1 of the JSON object $2 (a number, or null).
json_field() { sed -E "s/.*\"$1\":([0-9.]+|null).*/\\1/" <<< "$2"; }
# Field $1 of the /status of the server whose status port is $2 (the engine's admin port if none).
status_field() { json_field "$1" "$(curl -sf "http://127.0.0.1:${2:-19504}/status")"; }
per_connection_kb() { awk -v r="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.1f", (r - b) * 1.024 / n }'; }

# Client source addresses for run RUN of N connections: one per 15,000 (an address's ephemeral
# port range), fresh for every run (127.RUN.0.x), so no run waits for ports the last one left in
# TIME_WAIT.
sources_for() {
  local count=$1 run=$2 sources=""
  for i in $(seq 1 $(( count / 15000 + 1 ))); do sources="$sources${sources:+,}127.$run.0.$i"; done
  echo "$sources"
}

# One row of the peer table: $1 server, $2 the load generator's JSON, $3 the server's CPU ticks,
# $4 its pushes (connects and warm-up included, by its own count).
summary_row() {
  local ratio
  ratio=$(json_field expected_ratio "$2")
  awk -v n="$n" -v name="$1" -v est="$(json_field established "$2")" -v ratio="$ratio" \
    -v gap="$(json_field gap_p99_ms "$2")" -v missed="$(json_field missed_ticks "$2")" \
    -v upd="$(json_field update_p99_ms "$2")" -v t="$3" -v clk="$clk" -v p="$4" \
    'BEGIN { printf "| %d | %s | %d | %.1f %% | %s | %s | %s | %.3f |\n", n, name, est, ratio / 1.2 * 100, gap, missed, upd, (t/clk) / (p/100000) }'
}

# One load generator run against the server whose pid is in server_pid: run=$(( run + 1 )), the
# run's JSON in $work/run.txt, and the server's CPU ticks and pushes over it in used_ticks and
# made_pushes. $1: url, $2: command printing the server's push count so far, then more loadgen flags.
measured_run() {
  local url=$1 count=$2 before pushes_before
  shift 2
  run=$(( run + 1 ))
  before=$(cpu_ticks "$server_pid")
  pushes_before=$($count)
  "$loadgen" --url "$url" --connections "$n" --seconds 20 --warmup 3 --sources "$(sources_for "$n" "$run")" \
    --json "$@" > "$work/run.txt"
  used_ticks=$(( $(cpu_ticks "$server_pid") - before ))
  made_pushes=$(( $($count) - pushes_before ))
}

# Stops the server whose pid is in server_pid.
stop_server() {
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# The Node.js peer runs where Node.js and its `ws` package are installed (`just bench` runs `npm ci`).
with_peer=false
if command -v node > /dev/null && [[ -d "$peer_dir/node_modules/ws" ]]; then
  node "$peer_dir/server.js" --self-test > /dev/null
  with_peer=true
else
  echo "Node.js or the peer's ws package is missing: the Node.js peer is skipped"
fi

# The peer under the same load as the engine's run at $n connections; appends its summary row.
peer_run() {
  sleep 2
  node "$peer_dir/server.js" --listen 127.0.0.1:19506 > "$work/peer.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 50); do
    curl -sf http://127.0.0.1:19506/status > /dev/null && break
    sleep 0.1
  done
  measured_run ws://127.0.0.1:19506/ws/quote "status_field pushes 19506" --update-every 1
  summary_row "Node.js ws" "$(tail -n 1 "$work/run.txt")" "$used_ticks" "$made_pushes" >> "$work/summary"
  stop_server
}

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

idle=${counts[-1]}
start_engine
"$loadgen" --url "$url" --connections "$idle" --seconds 15 --warmup 0 --idle \
  --sources "$(sources_for "$idle" 1)" > /dev/null &
loadgen_pid=$!
for _ in $(seq 150); do
  [[ "$(status_field connections)" == "$idle" ]] && break
  sleep 0.1
done
sleep 1
idle_rss=$(rss_kib)
held=$(status_field connections)
wait "$loadgen_pid"
stop_engine
echo
echo "## $held idle connections (no params)"
echo "| engine RSS | $idle_rss KiB (baseline $baseline_rss KiB) |"
echo "| per idle connection | $(per_connection_kb "$idle_rss" "$baseline_rss" "$held") KB |"

run=1
for n in "${counts[@]}"; do
  run=$(( run + 1 ))
  sleep 2
  start_engine
  before=$(cpu_ticks "$engine_pid")
  pushes_before=$(status_field pushes)
  # Resident memory with every connection open and pushed to, mid-way through the window.
  ( sleep 15; rss_kib > "$work/active.rss" ) &
  sampler=$!
  /usr/bin/time -f '%U %S' -o "$work/loadgen.time" "$loadgen" --url "$url" --connections "$n" --seconds 20 \
    --warmup 3 --update-every 1 --sources "$(sources_for "$n" "$run")" --json > "$work/run.txt"
  after=$(cpu_ticks "$engine_pid")
  # Every push the engine made in the run (connects and warm-up included), by its own count.
  pushes=$(( $(status_field pushes) - pushes_before ))
  wait "$sampler"
  active_rss=$(cat "$work/active.rss")
  stop_engine
  echo
  echo "## $n connections"
  head -n -1 "$work/run.txt"
  awk -v t=$(( after - before )) -v clk="$clk" -v p="$pushes" \
    'BEGIN { printf "| engine_cpu_s (whole run) | %.2f |\n| engine_cpu_s_per_100k_pushes (whole run) | %.3f |\n", t/clk, (t/clk) / (p/100000) }'
  awk '{ printf "| loadgen_cpu_s (whole run, same cores) | %.2f |\n", $1 + $2 }' "$work/loadgen.time"
  echo "| engine_rss_kib (mid-run; baseline $baseline_rss) | $active_rss |"
  echo "| rss_per_connection_kb (above baseline) | $(per_connection_kb "$active_rss" "$baseline_rss" "$n") |"
  summary_row wasmpush "$(tail -n 1 "$work/run.txt")" $(( after - before )) "$pushes" >> "$work/summary"

  if $with_peer; then peer_run; fi
done

if $with_peer; then
  echo
  echo "## wasmpush against the Node.js ws peer: same load, same run (params updates every second)"
  echo "| connections | server | established | of expected | gap_p99_ms | missed_ticks | update_p99_ms | cpu_s_per_100k_pushes |"
  echo "|---|---|---|---|---|---|---|---|"
  cat "$work/summary"
  echo
  awk -F'|' '{ gsub(/ /, "", $2); gsub(/ /, "", $9); cpu[$2, $3 ~ /wasmpush/] = $9; if (!seen[$2]++) order[++k] = $2 }
    END { printf "CPU per push, wasmpush against Node.js ws:"
          for (i = 1; i <= k; i++) printf " %s: %.2fx%s", order[i], cpu[order[i], 1] / cpu[order[i], 0], i < k ? ";" : "\n" }' \
    "$work/summary"
fi

# Pushes only, at the largest count: CPU per 100,000 pushes of SERVER (engine or push_floor, whose
# pid is in server_pid) over one load generator run without params updates, as a table row.
# $1: name, $2: url, $3: command printing the server's push count so far.
pushes_only_row() {
  local name=$1 json gap missed
  measured_run "$2" "$3"
  json=$(tail -n 1 "$work/run.txt")
  gap=$(json_field gap_p99_ms "$json")
  missed=$(json_field missed_ticks "$json")
  awk -v name="$name" -v t="$used_ticks" -v clk="$clk" -v p="$made_pushes" -v gap="$gap" -v missed="$missed" \
    'BEGIN { printf "| %s | %.2f | %d | %.3f | %s | %s |\n", name, t/clk, p, (t/clk) / (p/100000), gap, missed }'
}

floor_pushes() { tail -n 1 "$work/floor.out" | awk '{print $2}'; }

n=${counts[-1]}
echo
echo "## $n connections, pushes only (no params updates): the engine against push_floor"
echo "| server | cpu_s (whole run) | pushes | cpu_s_per_100k_pushes | gap_p99_ms | missed_ticks |"
echo "|---|---|---|---|---|---|"
sleep 2
start_engine
server_pid=$engine_pid
pushes_only_row "wasmpush + quote" "$url" "status_field pushes"
stop_engine
sleep 2
"$floor" --listen 127.0.0.1:19505 > "$work/floor.out" 2> "$work/floor.log" &
server_pid=$!
for _ in $(seq 50); do
  [[ -n "$(floor_pushes)" ]] && break
  sleep 0.1
done
pushes_only_row "push_floor (bare sends)" ws://127.0.0.1:19505/ws/quote floor_pushes
stop_server

# Live data: `portfolio` connections, each reading 1 account and 3 of 1,000 prices, while
# data_bench publishes 200 prices a second in batches every 100 ms. $1 connections, $2 the
# plugin's tick_ms (0: pushes on changes only; 200: ticks too).
data_run() {
  local n=$1 tick=$2
  printf '[plugins.portfolio]\nread = ["accounts", "prices"]\ntick_ms = %s\n' "$tick" > "$work/data.toml"
  sleep 2
  start_engine --config "$work/data.toml"
  server_pid=$engine_pid
  data_row "wasmpush + portfolio" "$n" "$tick" "status_field pushes" --url ws://127.0.0.1:19503/ws/portfolio \
    --publish 127.0.0.1:19507 --tick-ms "$tick"
  stop_engine
}

# The same fan-out from push_floor --events (bare sends, no publishing): the latency floor. $1 connections.
data_floor_run() {
  sleep 2
  "$floor" --listen 127.0.0.1:19505 --events > "$work/floor.out" 2> "$work/floor.log" &
  server_pid=$!
  for _ in $(seq 50); do
    [[ -n "$(floor_pushes)" ]] && break
    sleep 0.1
  done
  data_row "push_floor --events (bare sends)" "$1" - floor_pushes --url ws://127.0.0.1:19505/ws/portfolio --floor
  stop_server
}

# One data_bench run against the server whose pid is in server_pid, as a table row; its JSON in
# $work/data.txt. $1 name, $2 connections, $3 tick_ms shown, $4 command printing the server's
# push count so far, then more data_bench flags.
data_row() {
  local name=$1 n=$2 tick=$3 count=$4 before pushes_before json
  shift 4
  run=$(( run + 1 ))
  before=$(cpu_ticks "$server_pid")
  pushes_before=$($count)
  "$data_bench" --connections "$n" --seconds 20 --sources "$(sources_for "$n" "$run")" "$@" > "$work/data.txt"
  used_ticks=$(( $(cpu_ticks "$server_pid") - before ))
  made_pushes=$(( $($count) - pushes_before ))
  json=$(tail -n 1 "$work/data.txt")
  awk -v name="$name" -v n="$n" -v tick="$tick" -v est="$(json_field established "$json")" -v dropped="$(json_field dropped "$json")" \
    -v ups="$(json_field updates_per_sec "$json")" -v fps="$(json_field frames_per_sec "$json")" \
    -v p50="$(json_field latency_p50_ms "$json")" -v p99="$(json_field latency_p99_ms "$json")" \
    -v max="$(json_field latency_max_ms "$json")" -v stale="$(json_field stale "$json")" \
    -v post50="$(json_field from_post_p50_ms "$json")" -v post99="$(json_field from_post_p99_ms "$json")" \
    -v postmax="$(json_field from_post_max_ms "$json")" \
    -v missed="$(json_field missed_ticks "$json")" -v t="$used_ticks" -v clk="$clk" -v p="$made_pushes" \
    'BEGIN { printf "| %s | %d | %s | %d | %d | %.0f | %.0f | %s / %s / %s | %s / %s / %s | %s | %s | %.3f |\n", name, n, tick, est, dropped, ups, fps, p50, p99, max, post50, post99, postmax, stale, missed, (t/clk) / (p/100000) }' \
    | tee -a "$work/data_summary"
}

echo
echo "## Live data: portfolio under a feed of 200 prices a second (for push_floor, both latencies are batch begun -> frame)"
echo "| server | connections | plugin tick_ms | established | dropped | updates/s | frames/s | acknowledged -> frame p50 / p99 / max ms | posted -> frame p50 / p99 / max ms | stale clients | missed ticks | server cpu_s_per_100k_pushes |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
data_run "${counts[-1]}" 0
data_floor_run "${counts[-1]}"
data_run 5000 200
echo
awk -F'|' 'NR <= 2 { split($10, l, "/"); p50[NR] = l[1]; p99[NR] = l[2] }
  END { printf "Event-driven latency at %d connections, posted -> frame, against the floor: p50 %.2fx, p99 %.2fx\n", n, p50[1] / p50[2], p99[1] / p99[2] }' \
  n="${counts[-1]}" "$work/data_summary"

echo
echo "## Publish API alone: 4 publishers, batches of 500 updates, each acknowledged (fsynced)"
sleep 2
start_engine
"$data_bench" --publish 127.0.0.1:19507 --publish-only --seconds 10 > "$work/publish.txt"
stop_engine
echo "| updates per second | $(json_field updates_per_sec "$(tail -n 1 "$work/publish.txt")") |"
