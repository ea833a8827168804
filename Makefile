# Two entry points, each doing all of its own set-up on a fresh machine:
#   make demo   the quick ablation study with its report
#   make test   the whole test suite (slow end-to-end and service tests included)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast mutation system-deps clean-demo

demo: $(STAMP)
	$(VENV)/bin/ablate run experiments/quick.yaml
	$(VENV)/bin/ablate report quick

test: $(STAMP) system-deps
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# Mutation testing of the scientific core (mutmut; configuration in pyproject.toml). Slow (about
# an hour on 2 cores), so not part of `make test`. Narrow it with, for example,
#   make mutation MUTATION_FUNCTIONS='harness.core.metrics.*'
# mutmut names a mutant module.x_function__mutmut_N (a method: module.xǁClassǁmethod__mutmut_N).
MUTATION_FUNCTIONS ?= 'harness.core.metrics.*' 'harness.core.augment.*' 'harness.core.schedules.*' \
	'harness.core.model.x_decay_groups*' 'harness.core.model.xǁGPTǁloss*' 'harness.core.train.x_mean_loss*' \
	'harness.core.train.x_make_optimizer*' 'harness.report.stats.*' 'harness.report.verdict.x_judge*' \
	'harness.report.verdict.x__significant*' \
	'harness.report.verdict.x_verdict*' 'harness.report.formatting.*' \
	'harness.report.verdict.x__change*' 'harness.report.render.x_md*'
MUTATION_CHILDREN ?= 2

mutation: $(STAMP)
	$(VENV)/bin/mutmut run --max-children $(MUTATION_CHILDREN) $(MUTATION_FUNCTIONS)
	$(PY) tools/mutation_score.py $(MUTATION_FUNCTIONS)

# torch first, pinned: its CPU build lies on this kind of machine, and an unpinned torch would
# pull a multi-GB CUDA build.
# Everything else at the versions of constraints.txt (pip freeze of a working install): a fresh
# machine gets what CI tested.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,dashboard]'
	touch $@

# PostgreSQL, Chromium, Slurm and munge for the service tests (Debian packages; needs root).
# Without them those tests skip and say why.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v chromium >/dev/null \
	     || ! command -v slurmd >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql chromium \
	      slurmctld slurmd slurm-client munge >/dev/null; \
	  fi; \
	else echo "note: not root or no apt-get: PostgreSQL/Chromium/Slurm tests skip unless installed"; fi

clean-demo:
	rm -rf reports/quick
