#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432, trust, database `test`) and RabbitMQ (127.0.0.1:5672,
# guest/guest) answer, starting them if not: the ingest tests (tests/test_ingest_*.py) run
# against both. Installs them from Debian's packages when missing and running as root.
set -euo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # port, what, tries of 0.2 s
  for _ in $(seq 1 "$3"); do
    answers "$1" && return 0
    sleep 0.2
  done
  echo "$2 did not answer on 127.0.0.1:$1" >&2
  return 1
}

install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $* from Debian's packages" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "$* is not installed; install it to run the ingest tests" >&2
    exit 1
  fi
}

if ! answers 5432; then
  command -v pg_ctlcluster >/dev/null 2>&1 || install postgresql
  version=$(ls /etc/postgresql | sort -n | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for 5432 PostgreSQL 100
fi
psql_cmd=(psql -h 127.0.0.1 -U postgres -d postgres -tAc)
if ! "${psql_cmd[@]}" "SELECT 1 FROM pg_database WHERE datname = 'test'" 2>/dev/null | grep -q 1; then
  "${psql_cmd[@]}" "CREATE DATABASE test" >/dev/null
fi

if ! answers 5672; then
  command -v rabbitmq-server >/dev/null 2>&1 || install rabbitmq-server
  rabbitmq-server -detached
  wait_for 5672 RabbitMQ 300
fi
