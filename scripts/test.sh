#!/usr/bin/env bash
# Sets up everything the tests need and runs them: the README's test command, and CI's.
#   ./scripts/test.sh            all tests
#   ./scripts/test.sh -k overlay any pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools the tests drive for real: headless Chromium + its driver (the web page),
# ffmpeg/ffprobe (reading the MJPEG stream and the .avi files), nginx with its RTMP module (the
# relay tests/test_publish.py publishes to).
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ] || need+=(libnginx-mod-rtmp)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing ${need[*]} (apt)"
    $sudo apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# DonkeyCar's own Tub writer builds the tubs the tests read. donkeycar 5.3 pins numpy<2 and a
# pile of car-side packages; its tub code needs none of them, so it comes without its deps.
.venv/bin/python -m pip install -q --no-deps 'donkeycar==5.3.0'
exec .venv/bin/python -m pytest "$@"
