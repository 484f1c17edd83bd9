#!/usr/bin/env bash
# The chat example: HAProxy (TCP mode, send-proxy-v2) in front of gunicorn with
# proxyproto_mw.gunicorn.UvicornWorker. Installs what it needs, then runs until Ctrl-C.
# Open http://127.0.0.1:8081/ in two tabs: every message shows its sender's address.
set -euo pipefail
cd "$(dirname "$0")/../.."
FRONT_PORT="${FRONT_PORT:-8081}"
APP_PORT="${APP_PORT:-8001}"

. examples/setup.sh
install_example "proxyproto_mw gunicorn uvicorn_worker fastapi websockets" -e '.[gunicorn]' fastapi

workdir="$(mktemp -d)"
haproxy_config examples/chat/haproxy.cfg "$workdir/haproxy.cfg"
gunicorn_pid="" haproxy_pid=""
cleanup() {
  # HAProxy first: its health checks would report gunicorn going away.
  local pid
  for pid in $haproxy_pid $gunicorn_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# gunicorn reads PROXY v2 headers, and believes them only from HAProxy (which connects
# from 127.0.0.3).
CHAT_BIND="127.0.0.1:$APP_PORT" gunicorn -c examples/chat/gunicorn.conf.py --no-control-socket &
gunicorn_pid=$!
# HAProxy starts once gunicorn listens, so that its first health check passes.
wait_for_port "$APP_PORT"
haproxy -f "$workdir/haproxy.cfg" -db &
haproxy_pid=$!

for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$FRONT_PORT/healthz" && break
  sleep 0.2
done
echo
echo "Two clients, from source addresses 127.0.0.2 and 127.0.0.4, through HAProxy:"
python - "$FRONT_PORT" <<'PY'
import asyncio, socket, sys
from websockets.asyncio.client import connect

async def client(source):
    sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), source_address=(source, 0))
    return await connect(f"ws://127.0.0.1:{sys.argv[1]}/ws", sock=sock, proxy=None)

async def main():
    alice, bob = await client("127.0.0.2"), await client("127.0.0.4")
    for ws in (alice, bob):
        print("  joined as", (await ws.recv()))
    await alice.send("hello from alice")
    print("  bob received", await bob.recv())
    await alice.close(); await bob.close()

asyncio.run(asyncio.wait_for(main(), 10))
PY
echo
echo "Open http://127.0.0.1:$FRONT_PORT/ in two tabs and write: each message shows the"
echo "address it came from (here 127.0.0.1, the address your browser connects from, not"
echo "127.0.0.3, HAProxy's)."
echo "From a terminal: python -m websockets ws://127.0.0.1:$FRONT_PORT/ws"
echo "Ctrl-C stops the example."
wait
