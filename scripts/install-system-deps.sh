#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Java + Maven (local Kafka
# broker), Redis (the production online-store option) and a C compiler (setup.py
# compiles the features engine, tested against its pure-Python sources). Installs
# only what is missing, and only where apt-get can (Debian/Ubuntu as root);
# elsewhere it prints what to install and leaves the decision to you.
set -euo pipefail

need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
for pkg in "$@"; do need+=("$pkg"); done

# Chromium is optional: only the dashboard's browser test uses it, and that test
# is skipped (saying why) where the browser cannot be installed.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing system package: chromium (dashboard browser test)"
    if ! (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq >/dev/null &&
          apt-get install -y -qq --no-install-recommends chromium >/dev/null); then
        echo "could not install chromium: the dashboard browser test will be skipped" >&2
    fi
fi

[ ${#need[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing system packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # The package may start a system-wide redis on port 6379; the tests run their own.
    if [[ " ${need[*]} " == *" redis-server "* ]] && command -v service >/dev/null 2>&1; then
        service redis-server stop >/dev/null 2>&1 || true
    fi
else
    echo "missing system packages: ${need[*]} (install them with your package manager)" >&2
    exit 1
fi
