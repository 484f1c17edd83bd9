# Shared by the example scripts (sourced, from the repository root): install what an example
# needs, and write its HAProxy configuration with the ports filled in.

# install_example PIP_ARGS...: HAProxy and curl from Debian if missing, then a virtualenv
# in .venv with the package installed as PIP_ARGS say; the venv stays activated.
install_example() {
  if ! command -v haproxy >/dev/null; then
    local sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends haproxy curl >/dev/null
  fi
  [ -d .venv ] || python3 -m venv .venv
  . .venv/bin/activate
  python -m pip install -q "$@"
}

# haproxy_config TEMPLATE OUT: TEMPLATE with @FRONT_PORT@ and @APP_PORT@ replaced.
haproxy_config() {
  sed -e "s/@FRONT_PORT@/$FRONT_PORT/" -e "s/@APP_PORT@/$APP_PORT/" "$1" > "$2"
}
