"""The batched scenarios, ``online`` and ``cached``: each teacher and the rows compared against it, measured
interleaved (A B A B ...) at every batch size.

A row holds latency statistics from raw samples, throughput, FLOPs per item and utilisation, memory and energy
(own passes), each stage's time, and for students and reference rows the speedup over the teacher with its
bootstrap interval and FLOP ratio. With ``--compile`` every teacher and student also gets a ``MODEL@compiled``
row, and with ``--variants int8,ort`` a ``MODEL@int8`` / ``MODEL@ort`` row (:mod:`dde_bench.bench.variants`), each
measured in its model's interleaved group; a variant's output is checked against the plain path on the same inputs
before it is timed, and one that fails or disagrees is an error row (a variant that cannot run here: skipped). A run with both scenarios measures them in
one interleaved group per teacher and batch size: the teacher's call is the same in both, so it is timed once
(its two rows share those samples and say so), and each student's online and cached forms are compared with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch

from dde_bench.bench import timing, variants
from dde_bench.bench.context import Rows, RunContext
from dde_bench.bench.flops import model_flop_utilisation
from dde_bench.bench.guard import is_oom
from dde_bench.bench.stats import speedup
from dde_bench.bench.trackers import memory_energy
from dde_bench.bench.workload import (
    DTYPES,
    Entry,
    comparison_groups,
    compiled_variant,
    inputs,
    plain_name,
    scenario_call,
    scenario_modules,
    sync,
)


def vs_plain(meas: dict, variant: str, seed: int) -> dict:
    """A variant's speedup over its plain model measured in the same interleaved group (ratio of medians)."""
    p = speedup(meas[plain_name(variant)].samples_s, meas[variant].samples_s, seed=seed)
    return {
        "speedup_vs_plain": p.ratio,
        "speedup_vs_plain_ci_low": p.ci_low,
        "speedup_vs_plain_ci_high": p.ci_high,
    }


@dataclass(frozen=True)
class BatchedScenario:
    name: str  # online | cached

    def label(self, plan) -> str | None:
        """online+cached when the run has both (measured together, by online), else the name."""
        if {"online", "cached"} <= set(plan.scenarios):
            return "online+cached" if self.name == "online" else None
        return self.name

    def run(self, ctx: RunContext, entries: list[Entry], dtype: str, progress) -> None:
        """Measure every teacher's group at every batch size. When the run has both ``online`` and ``cached``,
        the online pass measures both in one interleaved group per teacher and batch size (the teacher's call is
        the same in both, so it is timed once and both student forms are compared with the same samples), and
        the cached pass has nothing left to do."""
        plan = ctx.plan
        both = {"online", "cached"} <= set(plan.scenarios)
        if both and self.name == "cached":
            return  # measured with online
        scenarios = ("online", "cached") if both else (self.name,)
        extra = ctx.variants(entries, dtype)
        # each group is keyed by its first member: the teacher, or a student measured without one
        groups = {s: {ms[0].name: ms for ms in _with_variants(entries, s, plan, extra)} for s in scenarios}
        for lead, members in groups[scenarios[0]].items():
            slots = {s: groups[s].get(lead, []) for s in scenarios}
            skipped = {
                s: extra.members_for([e for e in slots[s] if e.kind != "hf-vilt"])[1] for s in scenarios
            }
            for batch in plan.batch_sizes_for(members[0]):
                for s, pairs in skipped.items():
                    for e, why in pairs:
                        ctx.record([e], s, batch, dtype, partial(self.skip, ctx, e, s, batch, dtype, why))
                if all(ctx.is_done(e, s, batch, dtype) for s, es in slots.items() for e in es):
                    continue
                names = list(dict.fromkeys(e.name for es in slots.values() for e in es))
                label = f"{'+'.join(scenarios)} b={batch} {dtype}: " + ", ".join(names)
                task = progress.add_task(label, total=None)
                ctx.record(
                    members,
                    self.name,
                    batch,
                    dtype,
                    partial(self.measure, ctx, slots, batch, dtype),
                    slots=[(e, s) for s, es in slots.items() for e in es],
                )
                progress.remove_task(task)

    def skip(self, ctx: RunContext, e: Entry, scenario: str, batch: int, dtype: str, why: str) -> Rows:
        return [(dict(ctx.base_row(e, scenario, batch, dtype), status="skipped", error=why), None)]

    @torch.inference_mode()
    def measure(self, ctx: RunContext, slots: dict[str, list[Entry]], batch: int, dtype_name: str) -> Rows:
        """One interleaved measurement of every (entry, scenario) in ``slots``; rows for each. Only a student's
        call depends on the scenario (cached: against precomputed image features), so every other entry is one
        callable, timed once, whose row is written for each scenario it belongs to."""
        dtype, seed, device = DTYPES[dtype_name], ctx.seed, ctx.device
        everyone = {e.name: e for es in slots.values() for e in es}
        x = {
            n: inputs(e, ctx.workload, batch, device, dtype, seed)
            for n, e in everyone.items()
            if not e.runtime
        }
        x.update(
            {n: x[e.plain] for n, e in everyone.items() if e.runtime}
        )  # a variant runs its plain's inputs
        fns, pairs, runtime = {}, {}, {}
        for s, members in slots.items():
            for e in members:
                k = _key(e, s)
                if e.compile:
                    pairs.setdefault(k, (e, s))
                elif e.runtime:
                    runtime.setdefault(k, (e, s))
                elif k not in fns:
                    fns[k] = scenario_call(e, s, x[e.name])
        compiled, failed = self.compile_group(ctx, list(pairs.values()), x, fns, dtype)
        checked, failed_v = self.check_variants(ctx, list(runtime.values()), x, fns)
        failed.update(failed_v)
        fns.update({k: c["fn"] for k, c in compiled.items()})
        fns.update({k: c["fn"] for k, c in checked.items()})
        rule = ctx.plan.rule
        overrides = [e.min_iters for e in everyone.values() if e.min_iters]
        if overrides:
            rule = rule.replace(min_iters=min(overrides))
        timed = timing.measure_interleaved(fns, device=device, items_per_call=batch, **rule.to_dict())
        for e in everyone.values():
            if e.kind != "student" and e.name in timed:  # what the gallery's teacher estimates start from
                ctx.per_item_s[(e.name, dtype_name)] = timed[e.name].median_s / batch
        # memory and FLOPs of each call in one instrumented pass of its own, after the timed window. A variant
        # does its plain model's arithmetic (compiled, on ORT; int8: the same operations, so its utilisation reads
        # against the fp32 peak: "fp32-equivalent"); torch's tensor tracker would retrace a compiled call and
        # sees no tensors inside ORT
        profiled = {}
        for s, members in slots.items():
            for e in members:
                k = _key(e, s)
                if k in fns and k not in profiled:
                    track = not (e.compile or e.runtime == "ort")
                    plain = not (e.compile or e.runtime)
                    profiled[k] = memory_energy(fns[k], device, batch, scenario_modules(e, s), track, plain)
                    if e.runtime == "int8" and profiled[k].get("weights_mb") is not None:
                        packed = variants.packed_int8_mb(scenario_modules(e, s))
                        for col in ("weights_mb", "tensor_peak_mb", "peak_mem_mb"):
                            if profiled[k].get(col) is not None:
                                profiled[k][col] += packed
        flops = {k: p.pop("flops_per_call") / batch for k, p in profiled.items() if "flops_per_call" in p}
        for k in (*compiled, *checked):
            flops[k] = flops[_plain_key(k)]
        joint = len(slots) > 1
        stage_ms: dict[str, dict] = {}  # a student's stages are measured once for both scenarios
        out: Rows = []
        for s, members in slots.items():
            meas = {e.name: timed[_key(e, s)] for e in members if _key(e, s) in timed}
            for e in members:
                k = _key(e, s)
                row = ctx.base_row(e, s, batch, dtype_name)
                if k in failed:
                    row.update(status="error", error=failed[k])
                    out.append((row, None))
                    continue
                m = meas[e.name]
                row.update(m.to_row())
                row.update(
                    status="ok",
                    flops_per_item=flops[k],
                    flop_utilisation=model_flop_utilisation(flops[k], m.throughput_per_s, device, dtype),
                    **ctx.utilisation(flops[k], m.throughput_per_s, dtype_name),
                )
                row.update(profiled[k])
                if e.compile or e.runtime == "ort":
                    row["stage_ms"] = None
                else:
                    if e.name not in stage_ms:
                        stage_ms[e.name] = self.stages(ctx, e, x[e.name], m, image="online" in slots)
                    row["stage_ms"] = _stages_of(stage_ms[e.name], s)
                if joint and e.kind == "teacher":
                    row["note"] = "; ".join(
                        n for n in (row.get("note"), f"one timed call for {' and '.join(slots)}") if n
                    )
                if e.teacher in meas and e.teacher != e.name:
                    t = meas[e.teacher]
                    sp = speedup(t.samples_s, m.samples_s, seed=seed)
                    row.update(
                        speedup_vs_teacher=sp.ratio,
                        speedup_ci_low=sp.ci_low,
                        speedup_ci_high=sp.ci_high,
                        speedup_flop_bound=flops[_key(everyone[e.teacher], s)] / flops[k]
                        if flops[k]
                        else None,
                    )
                if e.compile:
                    row.update(
                        vs_plain(meas, e.name, seed),
                        compile_s=compiled[k]["compile_s"],
                        max_abs_diff_vs_plain=compiled[k]["max_abs_diff"],
                    )
                elif e.runtime:
                    row.update(vs_plain(meas, e.name, seed), **checked[k]["check"])
                if e.kind == "student" and s == "cached":
                    row.update(ctx.features.cost(e, dtype_name))
                out.append((row, m.samples_ms))
        return out

    def compile_group(self, ctx: RunContext, pairs: list[tuple[Entry, str]], x: dict, plain_fns: dict, dtype):
        """Compile each ``@compiled`` entry's call in its scenario and check its output against the plain path on
        the same inputs (fp32: 1e-4; bf16/fp16: 3e-2, absolute and relative). Returns ({key: {fn, compile_s,
        max_abs_diff}}, {key: error}), keyed like the measured calls (:func:`_key`): a call that fails to compile
        or disagrees becomes an error row."""
        if not pairs:
            return {}, {}
        from torch import _dynamo

        _dynamo.reset()  # a fresh cache per group: recompile limits never turn a call silently eager
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        done, failed = {}, {}
        for e, scenario in pairs:
            k = _key(e, scenario)
            try:
                fn = scenario_call(e, scenario, x[e.name])
                t0 = time.perf_counter()
                out = fn()  # compiles
                sync(ctx.device)
                compile_s = time.perf_counter() - t0
                ref = plain_fns[_plain_key(k)]()
                diff = float((out.float() - ref.float()).abs().max()) if out.numel() else 0.0
                torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
            except AssertionError:
                failed[k] = f"compiled output differs from the plain path (max abs diff {diff:.3g})"
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. no C++ compiler for inductor: an error row
                if is_oom(exc):
                    raise
                msg = " ".join(str(exc).split())[:300]
                failed[k] = f"torch.compile failed: {type(exc).__name__}: {msg}"
                ctx.console.print(f"[yellow]{e.name}[/]: {failed[k]}")
                continue
            done[k] = {"fn": fn, "compile_s": compile_s, "max_abs_diff": diff}
        return done, failed

    def check_variants(self, ctx: RunContext, pairs: list[tuple[Entry, str]], x: dict, plain_fns: dict):
        """Build each run-option variant's call in its scenario (an ORT row exports here) and check its output
        against the plain path on the same inputs (``variants.check``: int8 within 15% of the logit scale, ORT
        within 1e-3). Returns ({key: {fn, check columns}}, {key: error}): a variant that fails or disagrees
        becomes an error row."""
        done, failed = {}, {}
        for e, scenario in pairs:
            k = _key(e, scenario)
            try:
                fn = scenario_call(e, scenario, x[e.name])
                cols = variants.check(e.runtime, fn(), plain_fns[_plain_key(k)]())
                if e.runtime == "ort":
                    cols["ort_export_s"] = e.model.export_s
            except variants.Mismatch as exc:
                failed[k] = str(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - an exporter or runtime failure: an error row, the run goes on
                if is_oom(exc):
                    raise
                msg = " ".join(str(exc).split())[:300]
                failed[k] = f"{e.runtime} variant failed: {type(exc).__name__}: {msg}"
                ctx.console.print(f"[yellow]{e.name}[/]: {failed[k]}")
                continue
            done[k] = {"fn": fn, "check": cols}
        return done, failed

    def stages(
        self, ctx: RunContext, e: Entry, x: dict, whole: timing.Measurement, image: bool = True
    ) -> dict:
        """Median time of each stage of one call, measured stage by stage (milliseconds). The teacher is one
        joint stage; a student's stages are its image tower (``image``: for online rows), text tower and fusion
        + head (a cached row shows the last two: it has no image tower stage)."""
        if e.kind != "student":
            return {"joint": whole.median_s * 1e3}
        m = e.model
        rule = dict(warmup_iters=1, warmup_s=0.0, min_iters=5, min_time_s=0.1, max_time_s=10.0)
        text = m.encode_text(x["input_ids"], x["attention_mask"])
        img = m.encode_images(x["pixel_values"], x["pixel_mask"])
        stages = {
            "text_tower": lambda: m.encode_text(x["input_ids"], x["attention_mask"]),
            "fusion_head": lambda: m.score(text, img),
        }
        if image:
            stages = {"image_tower": lambda: m.encode_images(x["pixel_values"], x["pixel_mask"]), **stages}
        res = timing.measure_interleaved(stages, device=ctx.device, **rule)
        return {k: v.median_s * 1e3 for k, v in res.items()}


def _stages_of(stages: dict, scenario: str) -> dict:
    """A row's stages: a cached student runs no image tower."""
    return {k: v for k, v in stages.items() if not (scenario == "cached" and k == "image_tower")}


def _key(e: Entry, scenario: str) -> str:
    """The measured call of ``e`` in ``scenario``: a student's depends on it, every other entry's does not."""
    return f"{e.name}|{scenario}" if e.kind == "student" else e.name


def _plain_key(key: str) -> str:
    """The key of the plain model's call that a variant's call ``key`` is checked and compared against."""
    name, sep, scenario = key.partition("|")
    return plain_name(name) + sep + scenario


def _with_variants(entries: list[Entry], scenario: str, plan, extra) -> Iterator[list[Entry]]:
    """Each comparison group of ``scenario`` (see ``comparison_groups``), with its ``@compiled`` variants and the
    run-option variants (``extra``: a ``variants.VariantSet``) that can run here."""
    for _, members in comparison_groups(entries, scenario):
        # transformers' reference row gets no variants: it is a reference, not a contender
        more, _ = extra.members_for([e for e in members if e.kind != "hf-vilt"])
        if plan.compile:
            names = {f"{e.name}@compiled" for e in members if e.kind != "hf-vilt"}
            members = members + [
                compiled_variant(e, plan.compile, names) for e in members if e.kind != "hf-vilt"
            ]
        yield members + more


SCENARIOS = (BatchedScenario("online"), BatchedScenario("cached"))
