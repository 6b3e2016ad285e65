#!/usr/bin/env bash
# `just bench-reconnect`: CLIENTS JavaScript clients (clients/js, in Node.js) on one release engine,
# then `wasmpush restart`: when each came back and the engine's peak accept rate, for the client as
# shipped (full jitter) and with its jitter taken out, with the engine draining at once
# (drain_secs = 0, the worst case: a restart's closes all at one moment) and as configured by
# default (drain_secs = 10, the closes spread by the engine). See tests/reconnect_spread.mjs.
# Usage: tests/reconnect_bench.sh TARGET_DIR CLIENTS
set -euo pipefail
target_dir=$1 clients=$2
engine="$target_dir/release/wasmpush"
work=$(mktemp -d)
trap '"$engine" stop --pid-file "$work/wasmpush.pid" > /dev/null 2>&1 || true; rm -rf "$work"' EXIT
ulimit -n "$(ulimit -Hn)"
mkdir -p "$work/plugins"
cp "$target_dir/wasm32-wasip2/plugin/quote_plugin.wasm" "$work/plugins/quote.wasm"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for drain in 0 10; do
  cat > "$work/wasmpush.toml" <<TOML
listen = "127.0.0.1:$(free_port)"
admin = "127.0.0.1:$(free_port)"
plugins_dir = "$work/plugins"
data_dir = "$work/data"
drain_secs = $drain
# One address stands for every client here.
max_handshakes_per_ip = 4096
TOML
  "$engine" start --daemon --config "$work/wasmpush.toml" --pid-file "$work/wasmpush.pid" --log-file "$work/wasmpush.log"
  for mode in jitter none; do
    echo "drain_secs = $drain, $mode: $(node --experimental-websocket --no-warnings tests/reconnect_spread.mjs \
      "$engine" "$work/wasmpush.toml" "$work/wasmpush.pid" "$clients" "$mode")"
  done
  "$engine" stop --pid-file "$work/wasmpush.pid" > /dev/null
done
