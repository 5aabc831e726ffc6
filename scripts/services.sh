#!/usr/bin/env bash
# Makes sure the services the integration tests talk to are installed, running
# and accepting connections on loopback: PostgreSQL, RabbitMQ, MariaDB, Redis,
# Mosquitto (the machine's, and one on port 1884 with scripts/mosquitto.conf),
# NATS (JetStream) and RocketMQ. Installs missing ones from Debian's packages
# (RocketMQ with cargo, see scripts/rocketmq.sh).
# Safe to run again: running services are left alone.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2 deadline=$((SECONDS + ${3:-120}))
  until port_open "$port"; do
    if [ "$SECONDS" -ge "$deadline" ]; then log "$name did not open port $port"; return 1; fi
    sleep 1
  done
  log "$name is up on 127.0.0.1:$port"
}

apt_updated=0
install_pkgs() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# name | port | binary that proves it is installed | package(s) | start command
ensure() {
  local name=$1 port=$2 bin=$3 pkgs=$4 start=$5
  if port_open "$port"; then log "$name is up on 127.0.0.1:$port"; return 0; fi
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "$bin" ]; then
    # shellcheck disable=SC2086
    install_pkgs $pkgs
  fi
  log "starting $name"
  as_root bash -c "$start" >/dev/null 2>&1 || log "start command for $name returned non-zero; waiting for its port anyway"
}

pg_start='pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n1) main start'
ensure PostgreSQL 5432 pg_ctlcluster "postgresql" "$pg_start"
ensure RabbitMQ 5672 rabbitmq-server "rabbitmq-server" "rabbitmq-server -detached"
ensure Redis 6379 redis-server "redis-server" \
  'mkdir -p /var/lib/redis /var/log/redis && redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log'
ensure Mosquitto 1883 mosquitto "mosquitto" "mosquitto -d -c /etc/mosquitto/mosquitto.conf"
# The tests' Mosquitto, with the queue settings txmsg's MQTT mode needs.
ensure "Mosquitto (txmsg settings)" 1884 mosquitto "mosquitto" "mosquitto -d -c $(cd "$(dirname "$0")" && pwd)/mosquitto.conf"
ensure NATS 4222 /usr/sbin/nats-server "nats-server" \
  'mkdir -p /var/lib/nats-server && start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log'
ensure MariaDB 3306 /usr/sbin/mariadbd "mariadb-server" \
  'mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null; start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd'

wait_port PostgreSQL 5432
wait_port RabbitMQ 5672 180
wait_port Redis 6379
wait_port Mosquitto 1883
wait_port "Mosquitto (txmsg settings)" 1884
wait_port NATS 4222
wait_port MariaDB 3306

# PostgreSQL: trust on loopback for the postgres user, as the tests expect.
if ! psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
  log "PostgreSQL refuses postgres@127.0.0.1 without a password; allowing trust on loopback"
  hba=$(as_root su postgres -c "psql -Atqc 'show hba_file'")
  as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  as_root su postgres -c "psql -Atqc 'select pg_reload_conf()'" >/dev/null
fi
# PostgreSQL: logical decoding, for the log capture's relay. `wal_level`
# needs a restart; ALTER SYSTEM keeps it for the next starts.
pg_url="postgres://postgres@127.0.0.1:5432/postgres"
if [ "$(psql "$pg_url" -Atqc 'show wal_level')" != logical ]; then
  log "PostgreSQL: setting wal_level = logical and restarting"
  psql "$pg_url" -Atqc "ALTER SYSTEM SET wal_level = logical" >/dev/null
  as_root bash -c "${pg_start/ start/ restart}" >/dev/null
  wait_port PostgreSQL 5432
  for _ in $(seq 60); do
    psql "$pg_url" -Atqc 'select 1' >/dev/null 2>&1 && break
    sleep 1
  done
fi
# Slots a killed test run left behind keep WAL: drop the idle ones of the
# tests (named `p_<uuid>`).
psql "$pg_url" -Atqc "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
  WHERE slot_name LIKE 'p\_%' AND NOT active" >/dev/null || log "PostgreSQL: could not drop idle test slots"
# MariaDB: a `test` database and root without a password over TCP.
if command -v mariadb >/dev/null 2>&1; then
  as_root mariadb -uroot -e "CREATE DATABASE IF NOT EXISTS test" >/dev/null 2>&1 || true
fi
# RabbitMQ accepts connections before its AMQP listener is fully ready.
if command -v rabbitmqctl >/dev/null 2>&1; then
  as_root timeout 120 rabbitmqctl await_startup >/dev/null 2>&1 || log "rabbitmqctl await_startup did not confirm; going on"
fi
# RocketMQ: the Rust name server and broker, installed with cargo (once) and
# started on loopback by their own script.
bash "$(cd "$(dirname "$0")" && pwd)/rocketmq.sh"
