"""The speed gate's probe: a worker process that times the gated calls of one version of dde-bench.

Kept small and stable on purpose: the A/B gate (``dde_bench/bench/abgate.py``) runs *this file of the current
checkout* by path, ``python -P <checkout>/dde_bench/gate_probe.py SPEC_JSON``, with ``PYTHONPATH`` set to the
version being measured (the change, or the base commit's temporary worktree), so a base commit that lacks this
file can still be measured. It imports only the standard library, torch, safetensors and that version's public
modeling API: ``dde_bench.modeling.Teacher``, ``Student``, ``size_config`` and the student's ``encode_images`` /
``forward_cached``. Timing is this file's own loop, the same for both sides.

The worker builds the tiny teacher and student with seeded random weights (the arithmetic of a dense forward
pass does not depend on the weights' values, and no checkpoint format of either version is needed), loads the
inputs the gate saved once (the suite's evaluation batch, identical for both sides), computes the student's
image features (outside the timed calls), warms up, and prints one ready line,
``{"ok": true, "threads": ..., "dde_bench_file": ...}``. Then each line on stdin holding a number N asks for one
round: N interleaved calls of each (teacher, student, teacher, ...), answered with one line
``{"teacher_ms": [...], "student_cached_ms": [...], "teacher_cpu_ms": [...], "student_cached_cpu_ms": [...]}``
(wall time and the process's CPU time of each call). EOF ends it. Anything the version cannot do prints
``{"ok": false, "error": "..."}`` and exits 3.

``DDE_BENCH_INJECT_SLOWDOWN=cached=0.3`` (the harness's test-only switch, same semantics) makes the student's
cached call busy-wait for 0.3 x its own duration; the gate passes it to the change side only.

SPEC_JSON keys: inputs (a safetensors file: input_ids, attention_mask, pixel_values, pixel_mask), task, size,
vocab_size, num_labels (or null), seed, threads, warmup (calls of each before the ready line).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

PROBE_VERSION = 1
INJECT_ENV = "DDE_BENCH_INJECT_SLOWDOWN"


def slowed(fn: Callable[[], Any], scenario: str) -> Callable[[], Any]:
    """``fn`` made slower by ``DDE_BENCH_INJECT_SLOWDOWN=<scenario>=<fraction>`` (busy-wait), else ``fn``."""
    spec = os.environ.get(INJECT_ENV, "")
    if not spec.startswith(f"{scenario}="):
        return fn
    frac = float(spec.split("=", 1)[1])

    def call() -> Any:
        t0 = time.perf_counter()
        out = fn()
        until = time.perf_counter() + frac * (time.perf_counter() - t0)
        while time.perf_counter() < until:
            pass
        return out

    return call


def load(spec: dict[str, Any]) -> tuple[list[Callable[[], Any]], dict[str, Any]]:
    """Build the importable dde_bench's tiny teacher and student and return the two gated calls
    (teacher's call, student's cached call) on the saved inputs, plus facts about this process."""
    import torch
    from safetensors.torch import load_file

    import dde_bench
    from dde_bench.modeling import Student, Teacher, size_config

    torch.set_num_threads(int(spec["threads"]))
    x = load_file(spec["inputs"])
    config = size_config(spec["size"], vocab_size=int(spec["vocab_size"]))
    task, labels = spec["task"], spec.get("num_labels")
    torch.manual_seed(int(spec["seed"]))
    teacher = Teacher(config, task, labels).eval()
    torch.manual_seed(int(spec["seed"]) + 1)
    student = Student(config, task, labels).eval()
    ids, am, pv, pm = x["input_ids"], x["attention_mask"], x["pixel_values"], x["pixel_mask"]
    with torch.inference_mode():
        feats = student.encode_images(pv, pm)

    def teacher_call() -> Any:
        with torch.inference_mode():
            return teacher(ids, am, pv, pm)

    def student_call() -> Any:
        with torch.inference_mode():
            return student.forward_cached(ids, am, feats)

    facts = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dde_bench_file": dde_bench.__file__,
        "injected": os.environ.get(INJECT_ENV) or None,
    }
    return [teacher_call, slowed(student_call, "cached")], facts


def time_round(fns: list[Callable[[], Any]], calls: int) -> list[tuple[list[float], list[float]]]:
    """``calls`` interleaved rounds of every fn (teacher, student, teacher, ...); per fn its wall times
    (``perf_counter``) and CPU times of this process (``process_time``: time another tenant holds the core is
    not counted), both in ms."""
    perf, cpu = time.perf_counter, time.process_time
    samples: list[tuple[list[float], list[float]]] = [([], []) for _ in fns]
    for _ in range(calls):
        for fn, (wall, used) in zip(fns, samples, strict=True):
            c0, t0 = cpu(), perf()
            fn()
            t1, c1 = perf(), cpu()
            wall.append((t1 - t0) * 1e3)
            used.append((c1 - c0) * 1e3)
    return samples


def main(argv: list[str]) -> int:
    """Load, warm up, print a ready line; then answer each stdin line (a number of calls) with one round."""
    try:
        spec = json.loads(argv[1])
        fns, facts = load(spec)
        time_round(fns, int(spec["warmup"]))
    except Exception as e:  # any failure of the measured version is reported, never a traceback
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)
        return 3
    print(json.dumps({"ok": True, "probe_version": PROBE_VERSION, **facts}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        (t_wall, t_cpu), (s_wall, s_cpu) = time_round(fns, int(line))
        res = {
            "teacher_ms": t_wall,
            "student_cached_ms": s_wall,
            "teacher_cpu_ms": t_cpu,
            "student_cached_cpu_ms": s_cpu,
        }
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
