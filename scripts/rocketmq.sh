#!/usr/bin/env bash
# Installs the Rust RocketMQ name server and broker once (cargo install,
# cached in ~/.cargo/bin; about 13 minutes on two cores the first time) and
# starts both on loopback: the name server on 127.0.0.1:9876, the broker on
# 127.0.0.1:10911 (every listener on loopback) with scripts/rocketmq-broker.toml. Their home, store and
# logs are under $ROCKETMQ_HOME (default ~/.cache/txmsg/rocketmq).
# Safe to run again: running servers are left alone.
set -euo pipefail

VERSION=1.0.0
here=$(cd "$(dirname "$0")" && pwd)
# Both servers exit with only "Service lifecycle operation failed" when
# ROCKETMQ_HOME is not set.
export ROCKETMQ_HOME=${ROCKETMQ_HOME:-$HOME/.cache/txmsg/rocketmq}

log() { printf '[rocketmq] %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  local name=$1 port=$2 deadline=$((SECONDS + 60))
  until port_open "$port"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name did not open port $port; its log: $ROCKETMQ_HOME/$3"
      tail -n 20 "$ROCKETMQ_HOME/$3" >&2 || true
      return 1
    fi
    sleep 1
  done
  log "$name is up on 127.0.0.1:$port"
}

if ! command -v rocketmq-namesrv-rust >/dev/null || ! command -v rocketmq-broker-rust >/dev/null; then
  log "installing rocketmq-namesrv and rocketmq-broker $VERSION (once)"
  # One target dir for both, so that what they share is built once; it is
  # removed afterwards (the binaries are what is kept).
  build_dir=$HOME/.cache/txmsg/rocketmq-build
  # Optimisation level 1: about 13 minutes on two cores instead of 23, and
  # fast enough for the tests (the tests of every RocketMQ mode pass on it).
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    cargo install --locked --version "$VERSION" --target-dir "$build_dir" rocketmq-namesrv rocketmq-broker
  rm -rf "$build_dir"
fi

mkdir -p "$ROCKETMQ_HOME/store"
cd "$ROCKETMQ_HOME"

if ! port_open 9876; then
  log "starting the name server"
  nohup rocketmq-namesrv-rust --bindAddress 127.0.0.1 --listenPort 9876 >namesrv.log 2>&1 &
fi
wait_port "RocketMQ name server" 9876 namesrv.log

if ! port_open 10911; then
  # Broker 1.0.0 rolls its start back, again with only "Service lifecycle
  # operation failed", when the store's disk is about three quarters full
  # (seen at 73 % and above; it started at 17 %).
  used=$(df -P "$ROCKETMQ_HOME" | awk 'NR == 2 { sub("%", "", $5); print $5 }')
  if [ "${used:-0}" -ge 70 ]; then
    log "the disk of $ROCKETMQ_HOME is ${used} % full: the broker may not start (seen failing at 73 %)"
  fi
  sed "s|@STORE@|$ROCKETMQ_HOME/store|" "$here/rocketmq-broker.toml" >broker.toml
  log "starting the broker"
  # A crashed consumer's queue locks expire after 10 s (60 s by default),
  # so that the tests of crashes see the queues taken over in seconds.
  nohup env 'rocketmq.broker.rebalance.lockMaxLiveTime=10000' \
    rocketmq-broker-rust -c broker.toml >broker.log 2>&1 &
fi
wait_port "RocketMQ broker" 10911 broker.log
