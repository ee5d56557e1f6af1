#!/usr/bin/env bash
# Print the path of Debian's chromium, installing the package first if it is missing.
# The browser tests drive it through Playwright (no browser download exists on the course machine).
set -euo pipefail
for c in "${CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; exit 0; fi
done
if [ "$(id -u)" = 0 ]; then sudo=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"
else
  echo "tools/browser.sh: chromium is missing and this user cannot install it;" \
       "run: sudo apt-get install chromium   (or set CHROMIUM=/path/to/chromium)" >&2
  exit 1
fi
echo "tools/browser.sh: installing Debian's chromium for the browser tests (once, about a minute)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y -q chromium >/dev/null 2>&1; then
  $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null
fi
echo /usr/bin/chromium
