#!/usr/bin/env bash
# Headless Chromium and its WebDriver for tests/test_browser.py (Debian/Ubuntu packages).
# Installs `chromium` and `chromium-driver` with apt-get when they are missing and we are root;
# otherwise says what is missing and exits 0, so that the browser test skips with a reason.
set -euo pipefail

have() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }

if have; then
    echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) and chromedriver already installed"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install-browser: /usr/bin/chromium or /usr/bin/chromedriver missing and not root; the browser test will skip" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no apt-get on this machine; install chromium and chromedriver by hand" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Debian names the driver package chromium-driver; Ubuntu's chromium is a snap, chromium-chromedriver a shim.
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null \
    || apt-get install -y -qq --no-install-recommends chromium chromium-chromedriver fonts-dejavu-core >/dev/null
if have; then
    echo "install-browser: installed $(/usr/bin/chromium --version 2>/dev/null)"
else
    echo "install-browser: installation finished but /usr/bin/chromium or /usr/bin/chromedriver is still missing" >&2
    exit 1
fi
