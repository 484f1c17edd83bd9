# Shared by the example scripts (sourced, from the repository root): install what an example
# needs, write its HAProxy configuration with the ports filled in, wait for a server.

# install_example "MODULES" PIP_ARGS...: HAProxy and curl from Debian if missing; then the
# active virtualenv ($VIRTUAL_ENV), or .venv (created if missing), activated; pip installs
# PIP_ARGS there unless every Python module in MODULES (space-separated) imports already.
install_example() {
  local modules="$1"; shift
  if ! command -v haproxy >/dev/null || ! command -v curl >/dev/null; then
    local sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends haproxy curl >/dev/null
  fi
  if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -d .venv ] || python3 -m venv .venv
    . .venv/bin/activate
  fi
  local module
  for module in $modules; do
    if ! python -c "import $module" 2>/dev/null; then
      python -m pip install -q "$@"
      return
    fi
  done
}

# haproxy_config TEMPLATE OUT: TEMPLATE with @FRONT_PORT@ and @APP_PORT@ replaced.
haproxy_config() {
  sed -e "s/@FRONT_PORT@/$FRONT_PORT/g" -e "s/@APP_PORT@/$APP_PORT/g" "$1" > "$2"
}

# wait_for_port PORT [SECONDS]: until 127.0.0.1:PORT accepts connections (default 30 s).
# A connection that closes before sending a byte is not logged by the app. Start HAProxy
# only then: a first health check that finds no server makes HAProxy print
# "[ALERT] ... backend '...' has no server available!".
wait_for_port() {
  python - "$1" "${2:-30}" <<'PY'
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"nothing listens on 127.0.0.1:{sys.argv[1]} after {sys.argv[2]} s")
        time.sleep(0.2)
PY
}
