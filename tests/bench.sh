#!/usr/bin/env bash
# `just bench`: runs the release engine with `quote` and the load generator at several connection
# counts, printing the load generator's table plus the engine's CPU seconds per 100,000 pushes and
# resident memory per connection. Usage: tests/bench.sh TARGET_DIR [CONNECTIONS...]
set -euo pipefail
target_dir=$1; shift
read -r -a counts <<< "${*:-1000 5000 19000}"
engine="$target_dir/release/wasmpush"
loadgen="$target_dir/release/loadgen"
work=$(mktemp -d)
trap 'kill "$engine_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/plugins"
cp "$target_dir/wasm32-wasip2/plugin/quote_plugin.wasm" "$work/plugins/quote.wasm"
ulimit -n "$(ulimit -Hn)"

"$engine" start --listen 127.0.0.1:19503 --admin 127.0.0.1:19504 --plugins-dir "$work/plugins" \
  > "$work/engine.log" 2>&1 &
engine_pid=$!
for _ in $(seq 100); do
  grep -q serving "$work/engine.log" 2>/dev/null && break
  sleep 0.1
done
clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$engine_pid/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$engine_pid/status"; }
baseline_rss=$(rss_kib)
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); engine baseline RSS ${baseline_rss} KiB"

# Client source addresses for a run of N connections: one per 15,000 (an address's ephemeral
# port range), and fresh ones for every run (127.RUN.0.x), so no run waits for the ports the
# previous one left in TIME_WAIT.
sources_for() {
  local count=$1 run=$2 sources=""
  for i in $(seq 1 $(( count / 15000 + 1 ))); do sources="$sources${sources:+,}127.$run.0.$i"; done
  echo "$sources"
}
connections() { curl -sf http://127.0.0.1:19504/status | sed -E 's/.*"connections":([0-9]+).*/\1/'; }

# Idle memory first, on the fresh engine: the largest count, connected without params.
idle=${counts[-1]}
idle_sources=$(sources_for "$idle" 1)
"$loadgen" --url ws://127.0.0.1:19503/ws/quote --connections "$idle" --seconds 15 --warmup 0 --idle \
  --sources "$idle_sources" > /dev/null &
loadgen_pid=$!
for _ in $(seq 150); do
  [[ "$(connections)" == "$idle" ]] && break
  sleep 0.1
done
sleep 1
idle_rss=$(rss_kib)
held=$(connections)
wait "$loadgen_pid"
echo
echo "## $held idle connections (no params)"
awk -v r="$idle_rss" -v b="$baseline_rss" -v n="$held" \
  'BEGIN { printf "| engine RSS | %d KiB |\n| above baseline | %d KiB |\n| per idle connection | %.1f KB |\n", r, r - b, (r - b) * 1.024 / n }'
sleep 2

run=1
for n in "${counts[@]}"; do
  run=$(( run + 1 ))
  sources=$(sources_for "$n" "$run")
  before=$(cpu_ticks)
  /usr/bin/time -f '%U %S' -o "$work/loadgen.time" "$loadgen" --url ws://127.0.0.1:19503/ws/quote --connections "$n" --seconds 20 --warmup 3 \
    --update-every 1 --sources "$sources" --json > "$work/run.txt"
  after=$(cpu_ticks)
  json=$(tail -n 1 "$work/run.txt")
  pushes=$(sed -E 's/.*"pushes":([0-9]+).*/\1/' <<< "$json")
  echo
  echo "## $n connections"
  head -n -1 "$work/run.txt"
  awk -v t=$(( after - before )) -v clk="$clk" -v p="$pushes" \
    'BEGIN { printf "| engine_cpu_s (whole run) | %.2f |\n| engine_cpu_s_per_100k_pushes (measured window only counts pushes) | %.3f |\n", t/clk, (t/clk) / (p/100000) }'
  awk '{ printf "| loadgen_cpu_s (whole run, same cores) | %.2f |\n", $1 + $2 }' "$work/loadgen.time"
  sleep 2
done
echo
echo "engine RSS after the runs: $(rss_kib) KiB (baseline ${baseline_rss} KiB)"
