# Two commands for a fresh machine: `make demo` (main job, offline default), then `make test`.
# Both build the virtual environment on first use (tools/venv.sh); nothing else is needed by hand.
SHELL := /bin/bash
RUN = venv=$$(tools/venv.sh) && PYTHONPATH=$(CURDIR) "$$venv/bin/python"

.PHONY: demo figure test bench venv lab release nbgrader
venv:
	@tools/venv.sh

# The whole instructor workflow on examples/class/ in outputs/example-class/ (rerunning reuses it).
demo:
	@$(RUN) -m grader demo --out outputs/example-class

# The Grad-CAM figure of one validation image: outputs/gradcam.png.
figure:
	@$(RUN) -m grader figure --out outputs

# The browser tests need Debian's chromium: tools/browser.sh installs it (or says how) before the suite.
test:
	@export CHROMIUM=$$(tools/browser.sh || true) && $(RUN) -m pytest -q

bench:
	@$(RUN) benchmarks/gradcam.py

# JupyterLab 4 on the course with nbgrader's formgrader and Validate enabled; LAB_ARGS="--no-browser --port 8899"
lab:
	@cd $(CURDIR) && tools/lab.sh $(LAB_ARGS)

release:
	@$(RUN) tools/release.py

# Instructor: any nbgrader command in the course environment, e.g. make nbgrader ARGS="autograde 01_setup"
nbgrader:
	@venv=$$(tools/venv.sh) && PATH="$$venv/bin:$$PATH" PYTHONPATH=$(CURDIR) "$$venv/bin/nbgrader" $(ARGS)
