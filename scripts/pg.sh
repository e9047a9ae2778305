#!/usr/bin/env bash
# Starts and stops a throwaway PostgreSQL cluster in a directory of its own, for the
# tests, CI, the benchmarks and the demo. The one place that knows how ordo runs a server.
#
#   scripts/pg.sh start DIR     initdb (first time) and start; prints the conninfo line
#   scripts/pg.sh stop DIR      stop (if running) and remove DIR
#   scripts/pg.sh restart DIR   crash-restart (-m immediate): what a power-less crash looks like
#                               to clients; returns once the server accepts connections again
#   scripts/pg.sh conninfo DIR  prints the conninfo line
#
# The server listens on a Unix socket in DIR only (no TCP port to collide with), trusts
# local connections (user postgres, no password) and commits durably (fsync and
# synchronous_commit on), so what a test measures is what production pays.
# PostgreSQL refuses to run as root: as root the cluster belongs to the `postgres`
# system user, otherwise to the caller. The only output on stdout is the conninfo line;
# everything else goes to stderr.
set -euo pipefail

die() { echo "pg.sh: $*" >&2; exit 1; }

usage() {
  echo "usage: scripts/pg.sh start|stop|restart|conninfo DIR" >&2
  exit 2
}

[ $# -eq 2 ] || usage
action=$1
dir_arg=$2
[ -n "$dir_arg" ] || die "DIR is empty"

# The newest installed server, preferring 15 (what ordo is tested against). Debian keeps
# the binaries off PATH, so they are looked up where its packages put them;
# ORDO_PG_BINDIR overrides (another installation), PATH is the last resort.
find_bindir() {
  if [ -n "${ORDO_PG_BINDIR:-}" ]; then
    [ -x "$ORDO_PG_BINDIR/pg_ctl" ] || die "ORDO_PG_BINDIR=$ORDO_PG_BINDIR has no pg_ctl"
    echo "$ORDO_PG_BINDIR"
    return
  fi
  if [ -x /usr/lib/postgresql/15/bin/pg_ctl ]; then
    echo /usr/lib/postgresql/15/bin
    return
  fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5n | tail -n 1 || true)
  if [ -n "$found" ] && [ -x "$found/pg_ctl" ]; then
    echo "$found"
    return
  fi
  if command -v pg_ctl > /dev/null; then
    dirname "$(command -v pg_ctl)"
    return
  fi
  die "no PostgreSQL server found (looked in /usr/lib/postgresql/*/bin and PATH): apt-get install postgresql"
}

# Runs a server binary as the cluster's owner, from / so that a working directory the
# postgres user cannot read (root's home) does not fail it.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

# Absolute, because the socket directory is named in the conninfo as host=, and libpq
# takes a host starting with / as a socket directory (anything else as a host name).
absolute_dir() {
  case "$1" in
    /*) echo "$1" ;;
    *) echo "$PWD/$1" ;;
  esac
}

dir=$(absolute_dir "$dir_arg")
dir=${dir%/}
data="$dir/data"
log="$dir/log"
conninfo="host=$dir user=postgres dbname=postgres"

# A Unix socket path is at most 107 bytes (sun_path), and the server's socket is
# DIR/.s.PGSQL.5432 (plus .lock for its lock file, which has no such limit).
check_dir_name() {
  case "$dir" in
    *[[:space:]\'\"\\]*) die "DIR '$dir' contains a space, quote or backslash; the socket directory cannot be named in a conninfo then" ;;
  esac
  local socket="$dir/.s.PGSQL.5432"
  if [ ${#socket} -gt 107 ]; then
    die "DIR '$dir' is too long: its socket path $socket is ${#socket} bytes, Unix sockets allow 107; use a short directory such as \$(mktemp -d /tmp/ordo-pg.XXXXXX)"
  fi
}

# The settings live in the cluster's own postgresql.conf rather than on pg_ctl's command
# line, so a restart (which re-reads the file) and a start after a crash get the same ones,
# and DIR never passes through a shell inside pg_ctl.
write_settings() {
  cat >> "$data/postgresql.conf" <<EOF

# ordo throwaway cluster (scripts/pg.sh)
listen_addresses = ''
unix_socket_directories = '$dir'
fsync = on
synchronous_commit = on
max_connections = 200
shared_buffers = 128MB
EOF
}

show_log_tail() {
  if [ -r "$log" ]; then
    echo "pg.sh: last lines of $log:" >&2
    tail -n 20 "$log" | sed 's/^/  /' >&2
  else
    echo "pg.sh: no server log at $log" >&2
  fi
}

# pg_ctl status: 0 running, 3 not running, 4 no usable data directory.
is_running() {
  [ -f "$data/PG_VERSION" ] || return 1
  as_owner "$bindir/pg_ctl" status -D "$data" > /dev/null 2>&1
}

start() {
  check_dir_name
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$dir"
    chmod 700 "$dir"
    runuser -u postgres -- test -w "$dir" -a -x "$dir" ||
      die "the postgres user cannot write into $dir (a parent directory closed to it?); use a directory under /tmp"
  else
    chmod 700 "$dir"
  fi

  if is_running; then
    echo "$conninfo"
    return
  fi

  if [ ! -f "$data/PG_VERSION" ]; then
    [ ! -e "$data" ] || die "$data exists but is not a cluster (an initdb that failed half-way?); run: scripts/pg.sh stop $dir"
    local out
    # -N: the cluster is thrown away, so initdb need not sync its template files; the
    # server itself runs with fsync on. C locale: the same collation everywhere.
    if ! out=$(as_owner "$bindir/initdb" -D "$data" -A trust -U postgres -E UTF8 --locale=C -N 2>&1); then
      echo "$out" | tail -n 20 | sed 's/^/  /' >&2
      die "initdb -D $data failed (output above)"
    fi
    write_settings
  fi

  if ! as_owner "$bindir/pg_ctl" start -w -t 60 -s -D "$data" -l "$log" > /dev/null; then
    show_log_tail
    die "pg_ctl start -D $data failed"
  fi
  echo "$conninfo"
}

# Refuses to delete a directory that does not look like one this script made: stop runs
# as root in CI, and a mistyped DIR must not become rm -rf of something else.
check_removable() {
  local entry
  for entry in "$dir"/* "$dir"/.[!.]*; do
    [ -e "$entry" ] || continue
    case "${entry##*/}" in
      data | log | .s.PGSQL.5432 | .s.PGSQL.5432.lock) ;;
      *) die "refusing to remove $dir: it holds ${entry##*/}, which a cluster of scripts/pg.sh does not" ;;
    esac
  done
}

stop() {
  [ -e "$dir" ] || return 0
  [ -d "$dir" ] || die "$dir is not a directory"
  check_removable
  if is_running; then
    if ! as_owner "$bindir/pg_ctl" stop -m fast -w -t 60 -s -D "$data" > /dev/null; then
      echo "pg.sh: fast stop failed; stopping with -m immediate" >&2
      as_owner "$bindir/pg_ctl" stop -m immediate -w -t 60 -s -D "$data" > /dev/null ||
        { show_log_tail; die "pg_ctl stop -D $data failed: the server is still running"; }
    fi
  fi
  rm -rf "$dir"
}

restart() {
  [ -f "$data/PG_VERSION" ] || die "no cluster in $dir (run scripts/pg.sh start $dir first)"
  if ! as_owner "$bindir/pg_ctl" restart -m immediate -w -t 60 -s -D "$data" -l "$log" > /dev/null; then
    show_log_tail
    die "pg_ctl restart -D $data failed"
  fi
}

conninfo() {
  [ -f "$data/PG_VERSION" ] || die "no cluster in $dir (run scripts/pg.sh start $dir first)"
  echo "$conninfo"
}

case "$action" in
  start) bindir=$(find_bindir); start ;;
  stop) bindir=$(find_bindir); stop ;;
  restart) bindir=$(find_bindir); restart ;;
  conninfo) conninfo ;;
  *) usage ;;
esac
