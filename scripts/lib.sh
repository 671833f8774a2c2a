# Shared helpers for the demo, the test suite and the benchmarks (sourced, not run).
# Everything runs on a fresh Debian 12 machine as root (or a sudo user); Postgres itself runs
# as the `postgres` OS user, on a unix socket and loopback only.

set -euo pipefail

PG_MAJOR=${PG_MAJOR:-15}
# PG_BIN=/some/private/install/bin runs clusters and installs against another PostgreSQL copy
PG_BIN=${PG_BIN:-/usr/lib/postgresql/$PG_MAJOR/bin}
PG_CONFIG=$PG_BIN/pg_config
PGRX_VERSION=0.18.1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
run_as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

# Install what is missing: apt packages, cargo-pgrx (only if absent), the pgrx config.
ensure_toolchain() {
    local missing=()
    # chromium, chromium-driver: the dashboard's browser tests (clients/python/tests/dashboard)
    for pkg in postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang sudo chromium chromium-driver; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! command -v cargo >/dev/null; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        log "installing cargo-pgrx $PGRX_VERSION (takes about 5 minutes, once)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    if ! grep -qs "pg$PG_MAJOR" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
    fi
}

# Build the extension and install it into the system Postgres.
# The old library file is unlinked first: running backends keep their mapping of it, where
# an in-place overwrite would crash them.
install_extension() {
    local profile=${EVENTIC_PROFILE:-release}
    log "building ($profile) and installing eventic into PostgreSQL $PG_MAJOR"
    as_root rm -f "$("$PG_CONFIG" --pkglibdir)/eventic.so"
    local flags=()
    [ "$profile" = release ] && flags+=(--release)
    (cd "$ROOT" && cargo pgrx install "${flags[@]}" --pg-config "$PG_CONFIG" >/dev/null)
}

# start_cluster DIR PORT [extra postgresql.conf lines...]: a throwaway cluster owned by
# postgres, listening on 127.0.0.1:PORT and a socket in DIR, eventic preloaded.
start_cluster() {
    local dir=$1 port=$2
    shift 2
    stop_cluster "$dir"
    as_root rm -rf "$dir"
    as_root mkdir -p "$dir"
    as_root chown postgres:postgres "$dir"
    run_as_postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$dir'"
        echo "shared_preload_libraries = 'eventic'"
        echo "max_connections = 100"
        echo "max_worker_processes = 16"
        echo "fsync = off"
        for line in "$@"; do echo "$line"; done
    } | run_as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null
    # RUST_BACKTRACE in the server's environment makes pgrx append a Rust backtrace to the
    # DETAIL of errors that cross an SPI call; users never want that in their messages
    run_as_postgres env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE \
        "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

stop_cluster() {
    local dir=$1
    if [ -f "$dir/data/postmaster.pid" ]; then
        run_as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

# psql_as DIR PORT [psql args...]: psql as the postgres superuser against a cluster.
cluster_psql() {
    local dir=$1 port=$2
    shift 2
    run_as_postgres "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres "$@"
}
