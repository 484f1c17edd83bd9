#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, then run it all.
# README.md gives this command; .ci/run runs it. Stages:
#   1. OS packages (HAProxy, nginx's stream module, curl, openssl, chromium for the browser
#      test, valgrind and gcc's AddressSanitizer runtime for the C accelerator's checks);
#   2. .venv: the default python3 with the package (editable) and its dev extras, the latest
#      releases; meanwhile the other virtualenvs' dependencies install in the background;
#   3. ruff and mypy --strict, once;
#   4. the whole suite on .venv (it builds the sdist and the wheel and serves from the
#      wheel in a clean virtualenv: tests/test_packaging.py);
#   5. the suite, without the tests marked slow, on every other Python 3.10+ installed
#      (pyenv's, or python3.X on PATH), C accelerator built for each;
#   6. the contract and end-to-end tests on the declared minimums (.venv-minimums, every
#      lower bound of pyproject.toml pinned by .ci/requirements.py).
# Each stage's time, then one closing line summing every pytest stage. Arguments go to pytest
# in every stage instead of each stage's own selection (bash tests/run.sh tests/test_x.py).
set -uo pipefail
cd "$(dirname "$0")/.."

packages=(haproxy nginx-light libnginx-mod-stream curl openssl chromium valgrind gcc libasan8 libubsan1)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "Installing OS packages: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    { echo "apt-get install failed"; exit 1; }
fi
# The test suite starts its own HAProxy and nginx; the packaged services are not needed.
systemctl disable --now haproxy nginx >/dev/null 2>&1 || true

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
times=()
passed=0 failed=0 skipped=0

# pip, its output shown only when it fails (less the warnings about the local indexes that
# this machine's pip configuration names, which may be absent).
pip_install() {
  local python=$1 log
  shift
  log=$(mktemp)
  if "$python" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    rm -f "$log"
  else
    grep -v "WARNING: Location '.*' is ignored" "$log"
    rm -f "$log"
    return 1
  fi
}

# stage NAME COMMAND...: run it, note its time; a pytest stage's log is kept for the sums.
stage() {
  local name=$1 start=$SECONDS status
  shift
  echo "== $name"
  "$@" 2>&1 | tee "$logs/$name.log"
  status=${PIPESTATUS[0]}
  times+=("$(printf '%-28s %5ss  exit %s' "$name" $((SECONDS - start)) "$status")")
  return "$status"
}

# count NAME STATUS: add a pytest stage's closing line to the sums; a stage that failed
# without one (pytest crashed, or exit 5: no test ran) counts as one failure.
count() {
  local summary n kind seen=0
  summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|errors|skipped)' "$logs/$1.log" | tail -1)
  for kind in passed failed errors? skipped; do
    n=$(grep -oE "[0-9]+ $kind\b" <<<"$summary" | grep -oE '^[0-9]+' || true)
    n=${n:-0}
    case $kind in
      passed) passed=$((passed + n)) ;;
      skipped) skipped=$((skipped + n)) ;;
      *) failed=$((failed + n)); seen=$((seen + n)) ;;
    esac
  done
  if [ "$2" -ne 0 ] && [ "$seen" -eq 0 ]; then
    failed=$((failed + 1))
    echo "$1: pytest exited with $2 without a failed test" >&2
  fi
}

base_python=$(command -v python3)
python3 -m venv .venv || exit 1
start=$SECONDS
pip_install .venv/bin/python --upgrade pip &&
  pip_install .venv/bin/python -e '.[dev]' || { echo "installing .venv failed"; exit 1; }
times+=("$(printf '%-28s %5ss' "install .venv" $((SECONDS - start)))")
. .venv/bin/activate

# The other Pythons: the newest installed release of each minor from 3.10 up.
default_minor=$(python -c 'import sys; print(sys.version_info[1])')
others=()
for minor in 10 11 12 13 14; do
  [ "$minor" = "$default_minor" ] && continue
  found=$(ls -d /root/.pyenv/versions/3."$minor".*/bin/python 2>/dev/null | sort -V | tail -1)
  [ -n "$found" ] || found=$(command -v "python3.$minor" || true)
  [ -n "$found" ] && others+=("3.$minor:$found")
done

# Their dependencies (and the minimums') install in the background while .venv's stages run;
# the package itself installs into each afterwards (an editable install writes into the
# checkout, which the running suite builds its sdist from).
python .ci/requirements.py dev >"$logs/dev-requirements.txt"
python .ci/requirements.py minimums >"$logs/minimums.txt"
(
  for entry in "${others[@]}" "minimums:$base_python"; do
    name=${entry%%:*} python=${entry#*:} start=$SECONDS
    constraints=()
    [ "$name" = minimums ] && constraints=(-c "$logs/minimums.txt")
    if "$python" -m venv ".venv-$name" && pip_install ".venv-$name/bin/python" --upgrade pip &&
      pip_install ".venv-$name/bin/python" "${constraints[@]}" -r "$logs/dev-requirements.txt"; then
      echo "$name $((SECONDS - start))" >>"$logs/installed"
    else
      echo "installing .venv-$name failed" >&2
    fi
  done
) >"$logs/background-install.log" 2>&1 &
background=$!

stage ruff bash -c 'ruff check . && ruff format --check .'
lint=$?
stage mypy mypy
types=$?

main="pytest python$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
stage "$main" pytest -q "$@"
count "$main" $?

start=$SECONDS
wait "$background"
times+=("$(printf '%-28s %5ss' "waiting for the other venvs" $((SECONDS - start)))")
cat "$logs/background-install.log"

# install_package NAME: the package (editable, C accelerator built) into .venv-NAME.
install_package() {
  grep -q "^$1 " "$logs/installed" 2>/dev/null &&
    pip_install ".venv-$1/bin/python" --no-deps -e . &&
    ".venv-$1/bin/python" -c 'import proxyproto_mw.decoder as d; assert d.ACCELERATED, "no C accelerator"'
}

for entry in "${others[@]}"; do
  name=${entry%%:*}
  if install_package "$name"; then
    selection=("$@")
    [ $# -gt 0 ] || selection=(-m "not slow")
    # websockets 17, which proxyproto_mw.websockets needs, requires Python 3.11.
    [ "$name" != 3.10 ] || selection+=(--ignore=tests/test_websockets.py
      --ignore=tests/test_websockets_chat_example.py
      --ignore=tests/test_websockets_sync_arguments.py)
    stage "pytest python$name" ".venv-$name/bin/python" -m pytest -q -p no:cacheprovider "${selection[@]}"
    count "pytest python$name" $?
  else
    echo "python$name: the package did not install" >&2
    failed=$((failed + 1))
  fi
done

# The declared minimums: what relies on the other projects, i.e. the contracts and the
# end-to-end tests. gunicorn 26's own gthread worker drops pipelined requests after the first
# (fixed in 27), so the test that pipelines on gthread is left out there.
# In the main suite's (alphabetical) order.
end_to_end=()
for module in asgi chat_example cli contracts demo gunicorn gunicorn_wsgi testing uvicorn \
  uvicorn_state websockets websockets_chat_example werkzeug; do
  [ -f "tests/test_$module.py" ] && end_to_end+=("tests/test_$module.py")
done
if install_package minimums; then
  .venv-minimums/bin/python -m pip list 2>/dev/null |
    grep -iE '^(click|crc32c|gunicorn|uvicorn|uvicorn-worker|websockets|werkzeug) ' | tr -s ' ' | paste -sd, -
  selection=("$@")
  [ $# -gt 0 ] || selection=("${end_to_end[@]}" --deselect
    "tests/test_gunicorn_wsgi.py::test_every_request_of_a_connection_sees_the_header[gthread]")
  stage "pytest minimums" .venv-minimums/bin/python -m pytest -q -p no:cacheprovider "${selection[@]}"
  count "pytest minimums" $?
else
  echo "minimums: the package did not install" >&2
  failed=$((failed + 1))
fi

[ "$lint" -eq 0 ] || { echo "ruff failed" >&2; failed=$((failed + 1)); }
[ "$types" -eq 0 ] || { echo "mypy failed" >&2; failed=$((failed + 1)); }

echo "== times"
printf '%s\n' "${times[@]}"
while read -r name seconds; do printf '%-28s %5ss (background)\n' "install .venv-$name" "$seconds"; done \
  <"$logs/installed" 2>/dev/null
echo "total $((SECONDS))s"
line="$passed passed, $failed failed"
[ "$skipped" -eq 0 ] || line+=", $skipped skipped"
echo "$line"
[ "$failed" -eq 0 ]
