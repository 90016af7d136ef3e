#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run lint + the whole test suite. This is exactly what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# The labeling app's tests drive Debian's Chromium and run against PostgreSQL as well as SQLite: install both
# when missing (as root, with apt-get), then start a throwaway PostgreSQL server on 127.0.0.1 for this run.
# Failing to do so fails the run (CI must test both); ALIGNKIT_SKIP_SERVICES=1 skips those tests instead.
need() { if [ "${ALIGNKIT_SKIP_SERVICES:-0}" = 1 ]; then echo "warning: $1; its tests will be skipped" >&2; else
  echo "error: $1 (set ALIGNKIT_SKIP_SERVICES=1 to skip the tests that need it)" >&2; exit 1; fi; }
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; } ||
    need "could not install$missing"
fi
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$pg_bin" ] || [ -n "${ALIGNKIT_TEST_PG_URL:-}" ] || need "no PostgreSQL server binaries"
[ -x /usr/bin/chromium ] || need "no /usr/bin/chromium"
if [ -z "${ALIGNKIT_TEST_PG_URL:-}" ] && [ -n "$pg_bin" ]; then
  pg_dir=$(mktemp -d)
  pg_port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_pg=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$pg_dir"; as_pg=(runuser -u postgres --); fi
  if "${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust >"$pg_dir/initdb.log" 2>&1 &&
     "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
       -o "-h 127.0.0.1 -p $pg_port -k $pg_dir" start >/dev/null; then
    trap '"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null; rm -rf "$pg_dir"' EXIT
    export ALIGNKIT_TEST_PG_URL="postgresql://postgres@127.0.0.1:$pg_port/postgres"
  else
    need "could not start PostgreSQL (see $pg_dir)"
  fi
fi
ruff check src tests benchmarks
set +e
python -m pytest -q -p no:cacheprovider "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$code"
