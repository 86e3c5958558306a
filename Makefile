# Set-up and the two everyday commands. Everything installs into ./.venv; nothing is installed by hand.
#   make run    install, then run the main job: dde-bench run --suite nlvr2 (synthetic world, tiny models)
#   make test   install, then run the test suite (what CI runs)
# On a CUDA machine pick a matching torch build, e.g.  make run TORCH_SPEC="torch==2.13.0" DEVICE=cuda

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
DEVICE     ?= auto
SUITE      ?= nlvr2
BIN         = $(VENV)/bin

.PHONY: install run test gate bench browser lint clean gpu-check

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/dde-bench run --suite $(SUITE) --device $(DEVICE)

# The HTML report test needs a headless browser; install Debian's Chromium where we may (root + apt),
# otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	   apt-get install -y -q chromium >/dev/null 2>&1)) || echo "chromium not installed: the browser test will skip"; }

test: install browser
	$(BIN)/python -m pytest -q

# The CI gate (the data behind every number: reports/baselines/README.md). Both parts run; either failing fails.
#  1. A/B speed: `dde-bench gate --against GATE_AGAINST` measures this checkout against its base commit (auto: the
#     merge base with main, or HEAD~1 on main) on this machine, alternating worker processes of the two versions:
#     the tiny student's cached call, the tiny teacher's call (batch 8, one thread) and their ratio. A gated call
#     fails when it is slower by more than GATE_MAX_SLOWDOWN (median of the per-round ratios) with p < 0.01 (one-sided Wilcoxon
#     signed-rank test over the paired rounds). Writes GATE_AB_OUT (gate.json, gate.md, base/ and change/ runs).
#  2. in-run: the harness's speedup of the tiny student over its teacher (interleaved in one process, one thread)
#     must reach GATE_MIN_SPEEDUP, a coarse floor that holds across machines (catches a broken cached path, not
#     a 30% slowdown), and the distilled student must stay within GATE_MAX_DROP of the teacher's accuracy.
GATE_OUT          ?= reports/runs/ci-gate
GATE_AB_OUT       ?= reports/runs/ci-gate-ab
GATE_AGAINST      ?= auto
GATE_MAX_SLOWDOWN ?= 10%
GATE_MIN_SPEEDUP  ?= 1.8
GATE_MAX_DROP     ?= 2%
gate: install
	rm -rf $(GATE_OUT) $(GATE_AB_OUT)
	@status=0; \
	$(BIN)/dde-bench gate --against $(GATE_AGAINST) --max-slowdown $(GATE_MAX_SLOWDOWN) --out $(GATE_AB_OUT) \
	  || status=$$?; \
	$(BIN)/dde-bench run --suite nlvr2 --models tiny-teacher,tiny-student --scenarios cached --batch-sizes 8 \
	  --threads 1 --min-time 2 --no-report --out $(GATE_OUT) && \
	$(BIN)/dde-bench gate $(GATE_OUT) --model tiny-student --on median --min-speedup $(GATE_MIN_SPEEDUP) \
	  --max-accuracy-drop $(GATE_MAX_DROP) || status=$$?; \
	exit $$status

bench: install
	$(BIN)/python -m pytest -q tests/benchmarks -m benchmark_suite --benchmark-enable --benchmark-autosave

# Every CUDA path in one prepared check (scripts/gpu_check.py, standard library only, so no install first): on a
# machine without a GPU it says so in one line and exits 0. ARGS passes options, e.g. ARGS=--dry-run (every step
# and its time budget), ARGS="--out DIR", ARGS="--only pytest-cuda,nccl". Budget: 8 minutes in all.
gpu-check:
	@$(PYTHON) scripts/gpu_check.py $(ARGS)

lint: install
	$(BIN)/ruff check dde_bench tests
	$(BIN)/ruff format --check dde_bench tests

clean:
	rm -rf $(VENV) reports/runs reports/cache reports/checkpoints reports/profiles
