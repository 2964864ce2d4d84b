#!/usr/bin/env bash
# A throwaway PostgreSQL server for the many-machine tests (tests/test_distributed.py).
#
#   scripts/with_postgres.sh make test        # start, export AUTOEFF_TEST_POSTGRES_URL, run, stop
#   scripts/with_postgres.sh start DIR        # start with its data in DIR (new or empty); prints the URL
#   scripts/with_postgres.sh stop DIR         # stop it and remove DIR
#
# The server listens on 127.0.0.1 on a free port (and on a Unix socket in DIR), trusts local connections,
# and keeps its data in DIR only. It uses the server binaries of Debian's `postgresql` package
# (/usr/lib/postgresql/<version>/bin) or those on PATH; it never installs anything (.ci/run does).
# As root it runs the server as the `postgres` user, since initdb refuses to run as root.
set -euo pipefail

die() { echo "with_postgres.sh: $*" >&2; exit 1; }

pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    if command -v initdb >/dev/null 2>&1; then dirname "$(readlink -f "$(command -v initdb)")"; return 0; fi
    die "no PostgreSQL server binaries (initdb); install them with: apt-get install -y postgresql"
}

as_owner() {  # run a server command as the data folder's owner
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run the server"
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1 bin port
    bin=$(pg_bindir)
    mkdir -p "$dir"
    [ -z "$(ls -A "$dir")" ] || die "$dir is not empty; give a new or empty folder"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    chmod 700 "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-instructions \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed (log above)"; }
    port=$(free_port)
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off" \
        start >/dev/null || { cat "$dir/server.log" >&2 || true; die "the server did not start (log above)"; }
    echo "$port" >"$dir/port"
    echo "postgresql+psycopg2://postgres@127.0.0.1:$port/postgres"
}

stop() {
    local dir=$1 bin
    bin=$(pg_bindir)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    ""|-h|--help) sed -n '2,11p' "$0"; exit 2 ;;
    *)
        dir=$(mktemp -d "${TMPDIR:-/tmp}/autoeff-pg.XXXXXX")
        trap 'stop "$dir"' EXIT
        AUTOEFF_TEST_POSTGRES_URL=$(start "$dir")
        export AUTOEFF_TEST_POSTGRES_URL
        echo "with_postgres.sh: PostgreSQL at $AUTOEFF_TEST_POSTGRES_URL" >&2
        "$@"
        ;;
esac
