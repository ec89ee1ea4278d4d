#!/usr/bin/env bash
# Install a headless browser for the `rnnkit inspect` browser test (tests/test_inspect.py).
#
# Debian's chromium, with apt-get, only when no chromium is on PATH yet. Never fails the
# build: where it cannot install (no root, no apt-get, no network, lock held too long) it
# says why and exits 0, and the browser test then skips with a clear message.
set -u

find_browser() {
    for name in chromium chromium-browser google-chrome chrome; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

if browser=$(find_browser); then
    echo "install_browser: found $browser"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: no apt-get here; the browser test will be skipped"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_browser: not root and no password-less sudo; the browser test will be skipped"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# wait for another apt run (up to 10 minutes) instead of failing on the lock
APT_OPTS=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
echo "install_browser: installing Debian's chromium (this takes a few minutes)"
if ! $SUDO apt-get "${APT_OPTS[@]}" update -qq; then
    echo "install_browser: apt-get update failed; the browser test will be skipped"
    exit 0
fi
if ! $SUDO apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; then
    echo "install_browser: apt-get install chromium failed; the browser test will be skipped"
    exit 0
fi
if browser=$(find_browser); then
    echo "install_browser: installed $browser"
else
    echo "install_browser: chromium installed but not on PATH; the browser test will be skipped"
fi
exit 0
