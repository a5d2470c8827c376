# Two set-up commands: `make demo` and `make test`; both build .venv first when needed.
# Why the install takes three pip steps: see BUILD_NOTES.md.

VENV     := .venv
VPY      := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
REQS     := requirements/tff-pins.txt requirements/tff.txt requirements/dev.txt setup.py
# TFF 0.87 needs Python >=3.9,<3.12: prefer an explicit 3.11, fall back to python3.
PYTHON   ?= $(shell command -v python3.11 || command -v python3)
DEMO_DIR ?= runs/demo
# Test processes (pytest-xdist; each test file stays in one process). 0: one process, no xdist.
TEST_WORKERS ?= 2
export TF_CPP_MIN_LOG_LEVEL ?= 3
export CUDA_VISIBLE_DEVICES ?=

.PHONY: venv demo test bench clean-venv

venv: $(STAMP)

# Rebuilt only when .venv is missing or a requirement file changed.
$(STAMP): $(REQS)
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 9) <= v < (3, 12) else "error: TFF 0.87 needs Python 3.9-3.11, found %d.%d (set PYTHON=...)" % v)'
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade 'pip>=23,<25'
	$(VPY) -m pip install -q -r requirements/tff-pins.txt -r requirements/dev.txt
	$(VPY) -m pip install -q --no-deps -r requirements/tff.txt
	$(VPY) -m pip install -q --no-deps -e .
	$(VPY) -c 'import tensorflow_federated as tff, tensorflow_privacy; print("TFF", tff.__version__, "ready")'
	@touch $(STAMP)

# Real data, offline. With a LEAF FEMNIST folder (FEMNIST_DIR, default the shared one when it
# exists): the Sun et al. setting on writers in small: 5 writers a round, 5 local epochs,
# 20 rounds, the targeted task (one writer's 7s labelled 1), one boosting attacker every round
# from round 10, first undefended, then with norm clipping at M=3. Without FEMNIST:
# Fashion-MNIST (Debian package, else Keras' download) as before. Deterministic for the seed.
FEMNIST_DIR ?= $(wildcard ../shared/data/femnist)
SUN_FEMNIST := --dataset=femnist --data_dir="$(FEMNIST_DIR)" --clients_per_round=5 \
  --rounds=20 --local_epochs=5 --batch_size=20 --client_lr=0.1 --seed=1 \
  --task=targeted --num_tasks=1 --task_min_samples=10 \
  --schedule=fixed_frequency --attack_every=1 --attack_start=10 --attack=boost
demo: venv
ifneq ($(strip $(FEMNIST_DIR)),)
	@echo "demo: Sun et al. on FEMNIST writers from $(FEMNIST_DIR)"
	@echo "== 1/2: a boosting attacker every round from round 10, no defense =="
	$(VPY) -m experiments.emnist_backdoor $(SUN_FEMNIST) --defense=none \
	  --output_dir=$(DEMO_DIR)/no_defense
	@echo "== 2/2: the same attacker against norm clipping at M=3 =="
	$(VPY) -m experiments.emnist_backdoor $(SUN_FEMNIST) --defense=clip --clip_norm=3 \
	  --output_dir=$(DEMO_DIR)/clip
else
	@echo "demo: no LEAF FEMNIST folder (set FEMNIST_DIR=...): Fashion-MNIST, which has no writers"
	@dir=$$($(VPY) -m tff_backdoor.data.fetch fashion_mnist) && \
	$(VPY) -m experiments.emnist_backdoor --dataset=fashion_mnist --data_dir="$$dir" \
	  --partition=dirichlet --alpha=0.5 --num_clients=100 --clients_per_round=10 \
	  --rounds=20 --local_epochs=1 --batch_size=20 --client_lr=0.1 --seed=1 \
	  --task=targeted --num_tasks=1 --task_samples_per_client=10 \
	  --schedule=fixed_frequency --attack_every=1 --attack_start=10 --attack=boost \
	  --defense=clip --clip_norm=2 --output_dir=$(DEMO_DIR)
endif

test: venv
	$(VPY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

bench: venv
	$(VPY) -m bench.fedavg_throughput

clean-venv:
	rm -rf $(VENV)
