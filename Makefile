# Two commands for a fresh machine: `make demo` (main job, offline default), then `make test`.
# Both build the virtual environment on first use (tools/venv.sh); nothing else is needed by hand.
SHELL := /bin/bash
RUN = venv=$$(tools/venv.sh) && PYTHONPATH=$(CURDIR) MPLBACKEND=Agg "$$venv/bin/python"

.PHONY: demo test bench venv lab release
venv:
	@tools/venv.sh

demo:
	@$(RUN) -m course_utils demo --out outputs

test:
	@$(RUN) -m pytest -q

bench:
	@$(RUN) benchmarks/gradcam.py

lab:
	@venv=$$(tools/venv.sh) && PYTHONPATH=$(CURDIR) "$$venv/bin/jupyter" lab

release:
	@$(RUN) tools/release.py
