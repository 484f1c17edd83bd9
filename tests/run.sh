#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, then run it all:
# OS packages (HAProxy, nginx's stream module, curl, openssl), a virtualenv with the package and
# its dev extras, ruff, mypy --strict and pytest. README.md gives this command; .ci/run runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(haproxy nginx-light libnginx-mod-stream curl openssl)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "Installing OS packages: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The test suite starts its own HAProxy and nginx; the packaged services are not needed.
systemctl disable --now haproxy nginx >/dev/null 2>&1 || true

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[dev]'

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy --strict"
mypy
echo "== pytest"
pytest -q "$@"
