#!/usr/bin/env bash
# The demo: HAProxy (TCP mode, send-proxy-v2) in front of `proxyproto-mw serve`, the way an
# ELB or NLB TCP listener would sit in front of your app. Installs what it needs, then runs
# until Ctrl-C. Open http://127.0.0.1:8080/ (through HAProxy) to see your own address.
# FRONT_PORT (default 8080) and APP_PORT (default 8000) change the ports.
set -euo pipefail
cd "$(dirname "$0")/.."
FRONT_PORT="${FRONT_PORT:-8080}"
APP_PORT="${APP_PORT:-8000}"

. examples/setup.sh
install_example "proxyproto_mw uvicorn starlette" -e '.[uvicorn]'

workdir="$(mktemp -d)"
haproxy_config examples/haproxy-demo.cfg "$workdir/haproxy.cfg"
app_pid="" haproxy_pid=""
cleanup() {
  # HAProxy first: its health checks would report the app going away.
  local pid
  for pid in $haproxy_pid $app_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Only HAProxy, on loopback, is trusted to send PROXY headers. A real deployment listens on
# every interface (--host 0.0.0.0) and trusts the balancers' network instead.
PROXYPROTO_TRUSTED=127.0.0.1 proxyproto-mw serve examples.demo_app:app \
  --host 127.0.0.1 --port "$APP_PORT" &
app_pid=$!
wait_for_port "$APP_PORT"
haproxy -f "$workdir/haproxy.cfg" -db &
haproxy_pid=$!

for _ in $(seq 50); do
  curl -s -o /dev/null "http://127.0.0.1:$FRONT_PORT/whoami" && break
  sleep 0.2
done
echo
echo "Through HAProxy, from source address 127.0.0.2, the app sees:"
curl -s --interface 127.0.0.2 "http://127.0.0.1:$FRONT_PORT/whoami"
echo
echo
echo "Open http://127.0.0.1:$FRONT_PORT/ : the page's WebSocket shows the address the app sees."
echo "Ctrl-C stops the demo."
wait
