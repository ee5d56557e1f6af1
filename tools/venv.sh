#!/usr/bin/env bash
# Print the path of this project's virtual environment, building it first if it is missing.
# The venv lives outside the clone, keyed by requirements.txt and the Python version, so every
# clone (and CI) reuses it; a venv whose build was interrupted lacks the marker and is rebuilt.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
# One interpreter start (a pyenv shim costs 0.1-0.2 s each): checks 3.11 and prints what `--version` prints.
version=$("$python" -c 'import platform, sys; assert sys.version_info[:2] == (3, 11); print("Python " + platform.python_version())' 2>/dev/null) || {
  echo "tools/venv.sh: needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 2; }
key=$({ cat "$here/requirements.txt"; echo "$version"; uname -m; } | sha256sum | cut -c1-16)
root=${COURSE_VENV_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/cnn-cam-course}
venv="$root/venv-$key"
if [ ! -f "$venv/.complete" ]; then
  echo "tools/venv.sh: building $venv (about 4 minutes, ~6.6 GB)" >&2
  rm -rf "$venv"
  mkdir -p "$root"
  log="$root/build-$key.log"
  # pip's output goes to the log; the terminal gets a count of the packages as progress.
  if ! { "$python" -m venv "$venv" && "$venv/bin/python" -m pip install --upgrade pip; } >"$log" 2>&1 ||
     ! "$venv/bin/python" -m pip install -r "$here/requirements.txt" 2>&1 | tee -a "$log" | awk '
         /^Collecting / { n++; printf "\r  tools/venv.sh: packages resolved: %d", n; fflush() }
         /^Installing collected packages/ { printf "\n  tools/venv.sh: installing them (the longest part)\n"; fflush() }' >&2
  then
    tail -n 30 "$log" >&2
    echo "tools/venv.sh: the build failed; the full log is $log" >&2
    exit 1
  fi
  touch "$venv/.complete"
fi
echo "$venv"
