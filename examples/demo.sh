#!/usr/bin/env bash
# The demo: HAProxy (TCP mode, send-proxy-v2) in front of `proxyproto-mw serve`, the way an
# ELB or NLB TCP listener would sit in front of your app. Installs what it needs, then runs
# until Ctrl-C. Open http://127.0.0.1:8080/ (through HAProxy) to see your own address.
set -euo pipefail
cd "$(dirname "$0")/.."
FRONT_PORT="${FRONT_PORT:-8080}"
APP_PORT="${APP_PORT:-8000}"

. examples/setup.sh
install_example -e '.[uvicorn]'

workdir="$(mktemp -d)"
haproxy_config examples/haproxy-demo.cfg "$workdir/haproxy.cfg"
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$workdir"; }
pids=()
trap cleanup EXIT INT TERM

# Only HAProxy, on loopback, is trusted to send PROXY headers.
PROXYPROTO_TRUSTED=127.0.0.1 proxyproto-mw serve examples.demo_app:app \
  --host 127.0.0.1 --port "$APP_PORT" &
pids+=($!)
haproxy -f "$workdir/haproxy.cfg" -db &
pids+=($!)

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
