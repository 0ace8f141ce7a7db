#!/usr/bin/env bash
# Installs the system packages the test suite talks to for real, when they are missing:
# redis-server (shared slots) and chromium (the batch report rendered in a real browser).
# Debian/Ubuntu with apt-get; runs as root, or through sudo when it is there.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
