#!/usr/bin/env bash
# `just bench-cluster`: three release engines on one NATS JetStream server, then on three, against
# one engine, all on this machine, in one run (issue #24's targets):
# - live data: 9,000 event-driven `portfolio` connections (tick_ms = 0) on one node, then 3,000 on
#   each of three nodes, under a feeder of 200 price updates a second through one node's publish
#   API: update posted -> frame and acknowledged -> frame p50/p99 per node, posted -> first frame
#   and posted -> acknowledged per batch (which of the two comes first), and stale clients; the
#   one node's baseline is measured twice, first and before the production topology;
# - nothing lost: every node's applied revision against the stream's last;
# - publish throughput: the publish API alone, one node against a cluster node (through NATS);
# - convergence: NATS killed (-9) and restarted on its store; the time from it accepting
#   connections to a write through one node being served by all three (on the production topology
#   too, all three servers killed);
# - a node joining with 100,000 keys: from its start to /healthz 200 (caught up), with the CPU it
#   and NATS used meanwhile, and the p99 of 3,000 clients on the other nodes under the feed
#   meanwhile, beside a run without a join (the joining node's catch-up unlimited); on the
#   production topology once more with it limited to $CATCH_UP_MBPS (default 60) Mbit/s;
# - rollout: `wasmpush deploy` of alternating builds (tests/cluster_rollout.mjs, Node.js); the time
#   from the command's return to the first frame of the new build at a client on each node;
# - the production topology: the feed, the publish API, the join, convergence and rollout again,
#   on three NATS servers joined in a NATS cluster, every stream with three replicas, each node on
#   its own server.
# After each feed, the machine's iowait and steal time meanwhile: a phase disturbed by the disk or
# by the host (this is a virtual machine) says so.
# Usage: tests/cluster_bench.sh TARGET_DIR
set -euo pipefail
target_dir=$1
engine="$target_dir/release/wasmpush"
data_bench="$target_dir/release/data_bench"
nats_server="$target_dir/nats-server/bin/nats-server"
work=$(mktemp -d)
pids=()
nats_pid=""
nats_pids=()
trap 'for p in "${pids[@]}" $nats_pid "${nats_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
ulimit -n "$(ulimit -Hn)"
mkdir -p "$work/plugins"
cp "$target_dir/wasm32-wasip2/plugin/portfolio_plugin.wasm" "$work/plugins/portfolio.wasm"
nats_port=14222
catch_up_mbps=${CATCH_UP_MBPS:-60}
now_ms() { date +%s%3N; }

start_nats() {
  "$nats_server" -js -a 127.0.0.1 -p $nats_port -m 18222 -sd "$work/nats" > "$work/nats.log" 2>&1 &
  nats_pid=$!
  until (echo > /dev/tcp/127.0.0.1/$nats_port) 2> /dev/null; do sleep 0.01; done
}

# Starts three NATS servers joined in a NATS cluster (client ports 14223-14225, monitoring
# 18223-18225, routes 16223-16225) on their stores; returns once one accepts connections.
launch_nats_cluster() {
  for i in 1 2 3; do
    {
      printf 'server_name: n%s\nlisten: 127.0.0.1:%s\nhttp: 127.0.0.1:%s\njetstream { store_dir: "%s" }\n' \
        "$i" $((14222 + i)) $((18222 + i)) "$work/nats$i"
      printf 'cluster { name: wasmpush, listen: 127.0.0.1:%s, routes: [%s] }\n' $((16222 + i)) \
        "nats://127.0.0.1:16223, nats://127.0.0.1:16224, nats://127.0.0.1:16225"
    } > "$work/nats$i.conf"
    "$nats_server" -c "$work/nats$i.conf" > "$work/nats$i.log" 2>&1 &
    nats_pids+=($!)
  done
  until (echo > /dev/tcp/127.0.0.1/14223) 2> /dev/null || (echo > /dev/tcp/127.0.0.1/14224) 2> /dev/null \
    || (echo > /dev/tcp/127.0.0.1/14225) 2> /dev/null; do sleep 0.01; done
}

# Starts the three NATS servers of launch_nats_cluster; returns once they have a JetStream leader.
start_nats_cluster() {
  launch_nats_cluster
  # /healthz answers 200 once the server's JetStream is current with the cluster's leader.
  for i in 1 2 3; do until curl -sf "http://127.0.0.1:$((18222 + i))/healthz" > /dev/null; do sleep 0.05; done; done
}

# Starts node $1 (ports 2N503 websocket, 2N504 admin, 2N505 publish); "cluster" as $2 joins NATS,
# "replicated" joins the three NATS servers (its own, port 14223 + (N - 1) % 3, first) with three
# replicas; $3, if given, limits its catch-up to that many Mbit/s (0: none; unset, the engine's
# default of 60).
start_node() {
  local n=$1 dir="$work/node$1"
  mkdir -p "$dir/plugins"
  cp "$work/plugins/"*.wasm "$dir/plugins/"
  {
    printf 'listen = "127.0.0.1:2%s503"\nadmin = "127.0.0.1:2%s504"\npublish = "127.0.0.1:2%s505"\n' "$n" "$n" "$n"
    printf 'plugins_dir = "%s/plugins"\ndata_dir = "%s/data"\n' "$dir" "$dir"
    # Nodes sharing this machine's two cores get one worker thread each (a node alone, one per core).
    if [[ -n "${2:-}" ]]; then printf 'workers = 1\n'; fi
    printf '[plugins.portfolio]\nread = ["accounts", "prices"]\ntick_ms = 0\n'
    printf '[plugins.rollout]\nread = ["accounts", "prices"]\n'
    if [[ "${2:-}" == cluster ]]; then
      printf '[cluster]\nnats = ["nats://127.0.0.1:%s"]\nnode = "node%s"\n' $nats_port "$n"
    elif [[ "${2:-}" == replicated ]]; then
      local own=$((14223 + (n - 1) % 3)) others
      others=$(for p in 14223 14224 14225; do [[ $p == "$own" ]] || printf ', "nats://127.0.0.1:%s"' $p; done)
      printf '[cluster]\nnats = ["nats://127.0.0.1:%s"%s]\nnode = "node%s"\nreplicas = 3\n' $own "$others" "$n"
    fi
    if [[ -n "${3:-}" ]]; then printf 'catch_up_mbps = %s\n' "$3"; fi
  } > "$dir/wasmpush.toml"
  "$engine" start --config "$dir/wasmpush.toml" --pid-file "$dir/pid" > "$dir/log" 2>&1 &
  pids+=($!)
  until curl -sf "http://127.0.0.1:2${n}504/healthz" > /dev/null; do sleep 0.02; done
}

# Kills (-9) every NATS server, starts them again on their stores with $1 (start_nats or
# launch_nats_cluster), and prints the time from the first accepting connections again to a write
# through node 1 being served by nodes 2 and 3, and to the first write acknowledged (each try gives
# up after a second: one sent while JetStream has no leader waits its 5 s for nothing).
converge_after_kill() {
  local p value accepted acknowledged
  for p in $nats_pid "${nats_pids[@]}"; do kill -9 "$p"; wait "$p" 2>/dev/null || true; done
  nats_pids=()
  sleep 2
  "$1"
  accepted=$(now_ms)
  value=$RANDOM
  until [[ "$(curl -s --max-time 1 -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
    --data "{\"v\":$value}" http://127.0.0.1:21505/v1/buckets/probe/keys/k || true)" == 200 ]]; do
    sleep 0.02
  done
  acknowledged=$(now_ms)
  for n in 2 3; do
    until [[ "$(curl -s "http://127.0.0.1:2${n}505/v1/buckets/probe/keys/k")" == "{\"v\":$value}" ]]; do sleep 0.02; done
  done
  echo "converged $(( $(now_ms) - accepted )) ms after NATS accepted connections again" \
    "(the first write acknowledged after $(( acknowledged - accepted )) ms)"
}

stop_nodes() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}

# CPU time (user + system) processes $@ have used together, in ms.
cpu_ms() {
  local p
  for p; do cat "/proc/$p/stat"; done | awk -v tick="$(getconf CLK_TCK)" '{ ms += ($14 + $15) * 1000 / tick } END { print int(ms) }'
}
# The machine's iowait and steal time so far (all cores), in ms: what a phase lost to the disk or
# to the host, which no process's own CPU time shows.
machine_ms() { awk -v tick="$(getconf CLK_TCK)" '/^cpu / { print int($6 * 1000 / tick), int($9 * 1000 / tick) }' /proc/stat; }
# Prints the iowait and steal time since machine_ms gave "$1 $2".
machine_since() {
  local io steal
  read -r io steal < <(machine_ms)
  echo "the machine meanwhile: iowait $((io - $1)) ms, steal $((steal - $2)) ms"
}
json_field() { sed -E "s/.*\"$1\":([0-9.]+|null).*/\\1/" <<< "$2"; }
revision_of() { json_field data_revision "$(curl -sf "http://127.0.0.1:2${1}504/status")"; }
# The data stream's last sequence, from the monitoring port ${1:-18222} of a server holding it.
stream_last() { curl -sf "http://127.0.0.1:${1:-18222}/jsz?streams=true" | python3 -c '
import json, sys
for account in json.load(sys.stdin).get("account_details", []):
    for stream in account.get("stream_detail", []):
        if stream["name"] == "KV_wasmpush-data":
            print(stream["state"]["last_seq"])'; }

# Runs the feed on one node alone with 9,000 clients (the baseline), then, with "publish" as $1, the
# publish API alone.
feed_one_node() {
  rm -rf "$work/node1/data"
  start_node 1
  local machine
  machine=$(machine_ms)
  "$data_bench" --url ws://127.0.0.1:21503/ws/portfolio --publish 127.0.0.1:21505 --connections 9000 --seconds 20 \
    --sources 127.0.0.1,127.0.0.2
  machine_since $machine
  if [[ "${1:-}" == publish ]]; then "$data_bench" --publish 127.0.0.1:21505 --publish-only --seconds 10; fi
  stop_nodes
}

echo "## One node, 9,000 portfolio connections"
feed_one_node publish

urls=ws://127.0.0.1:21503/ws/portfolio,ws://127.0.0.1:22503/ws/portfolio,ws://127.0.0.1:23503/ws/portfolio
# Starts nodes 1-3 as start_node's $1 says, runs the feed on 3,000 clients of each (JSON in
# $work/$1.json), checks every node applied the whole stream (monitoring port $2), then runs the
# publish API alone through node 1.
feed_three_nodes() {
  for n in 1 2 3; do rm -rf "$work/node$n/data"; start_node "$n" "$1"; done
  local machine
  machine=$(machine_ms)
  "$data_bench" --url "$urls" --publish 127.0.0.1:21505 --connections 9000 --seconds 20 \
    --sources 127.0.0.1,127.0.0.2 > "$work/$1.json"
  cat "$work/$1.json"
  machine_since $machine
  sleep 1
  echo "stream last: $(stream_last "$2"); applied: node1 $(revision_of 1), node2 $(revision_of 2), node3 $(revision_of 3)"
  "$data_bench" --publish 127.0.0.1:21505 --publish-only --seconds 10
}

echo "## Three nodes on NATS, 3,000 portfolio connections each, the feed through node 1"
start_nats
feed_three_nodes cluster 18222

echo "## Convergence after kill -9 of NATS"
converge_after_kill start_nats

echo "## Acknowledged -> applied: a PUT through node 1, then nodes 2 and 3 read until they serve it (200 writes)"
python3 - << 'EOF'
import http.client, json, time
writer = http.client.HTTPConnection("127.0.0.1", 21505)
readers = {2: http.client.HTTPConnection("127.0.0.1", 22505), 3: http.client.HTTPConnection("127.0.0.1", 23505)}
delays = {2: [], 3: []}
for i in range(200):
    value = json.dumps({"i": i}, separators=(",", ":"))
    writer.request("PUT", "/v1/buckets/probe/keys/applied", value, {"Content-Type": "application/json"})
    answer = writer.getresponse()
    answer.read()
    assert answer.status == 200
    acked = time.perf_counter()
    for node, reader in readers.items():
        while True:
            reader.request("GET", "/v1/buckets/probe/keys/applied")
            if reader.getresponse().read() == value.encode():
                delays[node].append((time.perf_counter() - acked) * 1000)
                break
for node, samples in delays.items():
    samples.sort()
    print(f"node{node}: acknowledged -> served p50 {samples[100]:.2f} ms, p99 {samples[197]:.2f} ms")
EOF

p99s() {
  python3 -c 'import json, sys
for node in json.load(sys.stdin)["nodes"]:
    print(node["url"], "p99", node["latency_p99_ms"], "ms (from the post", node["from_post_p99_ms"], "ms), stale", node["stale"])' < "$1" | paste -sd ';'
}

# Writes 100,000 keys through node 1, runs the feed on 3,000 clients of nodes 1-3 without a join,
# then once more for each catch-up limit in $3 (Mbit/s, 0: none) while node 4 joins as
# start_node's $1 says (the last one stays); $2 is a monitoring port, 127.0.0.$4 the first source.
join_fourth_node() {
  local mode=$1 monitor=$2 source=$4 limit started nats_cpu bench_pid machine
  python3 - << 'EOF'
import http.client, json
for batch in range(200):
    body = json.dumps({"put": {f"k{batch * 500 + i}": {"n": batch * 500 + i} for i in range(500)}})
    connection = http.client.HTTPConnection("127.0.0.1", 21505)
    connection.request("POST", "/v1/buckets/bulk", body, {"Content-Type": "application/json"})
    answer = connection.getresponse()
    assert answer.status == 200, answer.read()
EOF
  machine=$(machine_ms)
  "$data_bench" --url "$urls" --publish 127.0.0.1:21505 --connections 3000 --seconds 12 --sources "127.0.0.$source" \
    > "$work/quiet.json"
  echo "nodes 1-3 under the feed, no node joining: $(p99s "$work/quiet.json")"
  machine_since $machine
  for limit in $3; do
    source=$((source + 1))
    rm -rf "$work/node4"
    machine=$(machine_ms)
    "$data_bench" --url "$urls" --publish 127.0.0.1:21505 --connections 3000 --seconds 12 --sources "127.0.0.$source" \
      > "$work/join.json" &
    bench_pid=$!
    sleep 5
    started=$(now_ms)
    nats_cpu=$(cpu_ms $nats_pid "${nats_pids[@]}")
    start_node 4 "$mode" "$limit"
    until [[ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:24504/healthz)" == 200 ]]; do sleep 0.01; done
    echo "node 4 (catch-up limit $limit Mbit/s, 0: none) ready (caught up with $(stream_last "$monitor") revisions)" \
      "$(( $(now_ms) - started )) ms after it was started, having used $(cpu_ms "${pids[-1]}") ms of CPU" \
      "(NATS meanwhile $(( $(cpu_ms $nats_pid "${nats_pids[@]}") - nats_cpu )) ms)"
    wait "$bench_pid"
    echo "nodes 1-3 under the feed while node 4 joined: $(p99s "$work/join.json")"
    machine_since $machine
    if [[ $limit != "${3##* }" ]]; then
      kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
    fi
  done
}

# Runs 10 deploys alternating two builds through NATS at $1; a client on each of the four nodes
# times the first frame of the new build.
roll_out() {
  node --experimental-websocket --no-warnings "$(dirname "$0")/cluster_rollout.mjs" "$engine" "$1" \
    "$target_dir/wasm32-wasip2/plugin/portfolio_plugin.wasm" "$target_dir/wasm32-wasip2/plugin/quote_plugin.wasm" 10 \
    21503 22503 23503 24503
}

echo "## A node joining with 100,000 keys"
join_fourth_node cluster 18222 0 3

echo "## Rollout: 10 deploys alternating two builds; a client on each node times the first frame of the new build"
roll_out nats://127.0.0.1:$nats_port
stop_nodes
kill "$nats_pid"; wait "$nats_pid" 2>/dev/null || true; nats_pid=""

# The baseline again, next to the production topology's feed: on this shared machine a run's
# figures can be disturbed for a while, which one baseline would hide.
echo "## One node again, 9,000 portfolio connections (the baseline, measured a second time)"
feed_one_node
echo "## Three NATS servers in a NATS cluster, three replicas; 3,000 portfolio connections on each node, each node on its own server"
start_nats_cluster
feed_three_nodes replicated 18223
echo "## Three NATS servers: a node joining with 100,000 keys, without a catch-up limit and with $catch_up_mbps Mbit/s"
join_fourth_node replicated 18223 "0 $catch_up_mbps" 5
echo "## Three NATS servers: convergence after kill -9 of all three"
converge_after_kill launch_nats_cluster
echo "## Three NATS servers: rollout"
roll_out nats://127.0.0.1:14223
stop_nodes
