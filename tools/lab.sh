#!/usr/bin/env bash
# JupyterLab 4 on the nbgrader course in the current folder, with nbgrader's extensions switched on:
# the formgrader (instructors: Nbgrader menu > Formgrader) and Validate (students: the notebook
# toolbar's Validate button). Offline: the extensions ship inside the nbgrader package, this only
# enables them (idempotent). Arguments go to `jupyter lab`, e.g. tools/lab.sh --no-browser --port 8899.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$here/tools/venv.sh")
export PATH="$venv/bin:$PATH" PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
for ext in formgrader validate_assignment; do
  jupyter server extension enable --sys-prefix "nbgrader.server_extensions.$ext" >/dev/null 2>&1
done
jupyter labextension enable --level=sys_prefix @jupyter/nbgrader:menu @jupyter/nbgrader:formgrader \
  @jupyter/nbgrader:validate-assignment >/dev/null 2>&1
if [ "$(id -u)" = 0 ]; then set -- --allow-root "$@"; fi    # containers and CI often run as root
exec jupyter lab "$@"
