#!/usr/bin/env bash
# `just bench`: the release engine with `quote` under the load generator. First idle memory (the
# largest count, connected without params), then one run per connection count with params updates
# every second, each on a fresh engine so no run inherits another's memory or sockets. Prints the
# load generator's table plus the engine's CPU seconds per 100,000 pushes, the load generator's own
# CPU and the engine's resident memory per connection.
# Usage: tests/bench.sh TARGET_DIR [CONNECTIONS...]
set -euo pipefail
target_dir=$1; shift
read -r -a counts <<< "${*:-1000 5000 19000}"
engine="$target_dir/release/wasmpush"
loadgen="$target_dir/release/loadgen"
floor="$target_dir/release/push_floor"
url=ws://127.0.0.1:19503/ws/quote
work=$(mktemp -d)
engine_pid=""
server_pid=""
trap '[[ -n "$engine_pid" ]] && kill "$engine_pid" 2>/dev/null; [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/plugins"
cp "$target_dir/wasm32-wasip2/plugin/quote_plugin.wasm" "$work/plugins/quote.wasm"
ulimit -n "$(ulimit -Hn)"
clk=$(getconf CLK_TCK)

# Starts a fresh engine and waits until it serves; sets engine_pid and baseline_rss.
start_engine() {
  "$engine" start --listen 127.0.0.1:19503 --admin 127.0.0.1:19504 --plugins-dir "$work/plugins" \
    --pid-file "$work/wasmpush.pid" > "$work/engine.log" 2>&1 &
  engine_pid=$!
  for _ in $(seq 100); do
    grep -q serving "$work/engine.log" 2>/dev/null && break
    sleep 0.1
  done
  baseline_rss=$(rss_kib)
}

stop_engine() {
  kill "$engine_pid"
  wait "$engine_pid" 2>/dev/null || true
  engine_pid=""
}

# CPU ticks (user + system) process $1 has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$engine_pid/status"; }
status_field() { curl -sf http://127.0.0.1:19504/status | sed -E "s/.*\"$1\":([0-9]+).*/\\1/"; }
per_connection_kb() { awk -v r="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.1f", (r - b) * 1.024 / n }'; }

# Client source addresses for run RUN of N connections: one per 15,000 (an address's ephemeral
# port range), fresh for every run (127.RUN.0.x), so no run waits for ports the last one left in
# TIME_WAIT.
sources_for() {
  local count=$1 run=$2 sources=""
  for i in $(seq 1 $(( count / 15000 + 1 ))); do sources="$sources${sources:+,}127.$run.0.$i"; done
  echo "$sources"
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
done

# Pushes only, at the largest count: CPU per 100,000 pushes of SERVER (engine or push_floor, whose
# pid is in server_pid) over one load generator run without params updates, as a table row.
# $1: name, $2: url, $3: command printing the server's push count so far.
pushes_only_row() {
  local name=$1 url=$2 count=$3 before pushes_before after
  run=$(( run + 1 ))
  before=$(cpu_ticks "$server_pid")
  pushes_before=$($count)
  "$loadgen" --url "$url" --connections "$n" --seconds 20 --warmup 3 --sources "$(sources_for "$n" "$run")" \
    --json > "$work/run.txt"
  after=$(cpu_ticks "$server_pid")
  local pushes=$(( $($count) - pushes_before ))
  local json gap missed
  json=$(tail -n 1 "$work/run.txt")
  gap=$(sed -E 's/.*"gap_p99_ms":([0-9.]+).*/\1/' <<< "$json")
  missed=$(sed -E 's/.*"missed_ticks":([0-9]+).*/\1/' <<< "$json")
  awk -v name="$name" -v t=$(( after - before )) -v clk="$clk" -v p="$pushes" -v gap="$gap" -v missed="$missed" \
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
kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=""
