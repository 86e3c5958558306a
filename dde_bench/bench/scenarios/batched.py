"""The batched scenarios, ``online`` and ``cached``: each teacher and the rows compared against it, measured
interleaved (A B A B ...) at every batch size.

A row holds latency statistics from raw samples, throughput, FLOPs per item and utilisation, memory and energy
(own passes), each stage's time, and for students and reference rows the speedup over the teacher with its
bootstrap interval and FLOP ratio. With ``--compile`` every teacher and student also gets a ``MODEL@compiled``
row, and with ``--variants int8,ort`` a ``MODEL@int8`` / ``MODEL@ort`` row (:mod:`dde_bench.bench.variants`), each
measured in its model's interleaved group; a variant's output is checked against the plain path on the same inputs
before it is timed, and one that fails or disagrees is an error row (a variant that cannot run here: skipped).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import torch

from dde_bench.bench import timing, variants
from dde_bench.bench.context import Rows, RunContext
from dde_bench.bench.flops import count_flops, model_flop_utilisation
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

    def run(self, ctx: RunContext, entries: list[Entry], dtype: str, progress) -> None:
        plan = ctx.plan
        extra = ctx.variants(entries, dtype)
        for teacher, members in comparison_groups(entries, self.name):
            more, skipped = extra.members_for([e for e in members if e.kind != "hf-vilt"])
            if plan.compile:
                # transformers' reference row stays eager: it is a reference, not a contender
                names = {f"{e.name}@compiled" for e in members if e.kind != "hf-vilt"}
                members = members + [
                    compiled_variant(e, plan.compile, names) for e in members if e.kind != "hf-vilt"
                ]
            members = members + more
            for batch in plan.batch_sizes_for(teacher or members[0]):
                for e, why in skipped:
                    ctx.record([e], self.name, batch, dtype, partial(self.skip, ctx, e, batch, dtype, why))
                if all(ctx.is_done(e, self.name, batch, dtype) for e in members):
                    continue
                label = f"{self.name} b={batch} {dtype}: " + ", ".join(e.name for e in members)
                task = progress.add_task(label, total=None)
                ctx.record(
                    members, self.name, batch, dtype, partial(self.measure, ctx, members, batch, dtype)
                )
                progress.remove_task(task)

    def skip(self, ctx: RunContext, e: Entry, batch: int, dtype: str, why: str) -> Rows:
        return [(dict(ctx.base_row(e, self.name, batch, dtype), status="skipped", error=why), None)]

    @torch.inference_mode()
    def measure(self, ctx: RunContext, members: list[Entry], batch: int, dtype_name: str) -> Rows:
        dtype, seed, device = DTYPES[dtype_name], ctx.seed, ctx.device
        x = {e.name: inputs(e, ctx.workload, batch, device, dtype, seed) for e in members if not e.runtime}
        x.update(
            {e.name: x[e.plain] for e in members if e.runtime}
        )  # a variant runs its plain model's inputs
        plain = [e for e in members if not (e.compile or e.runtime)]
        fns = {e.name: scenario_call(e, self.name, x[e.name]) for e in plain}
        flops = {n: count_flops(fn) / batch for n, fn in fns.items()}
        compiled, failed = self.compile_group(ctx, [e for e in members if e.compile], x, fns, dtype)
        checked, failed_v = self.check_variants(ctx, [e for e in members if e.runtime], x, fns)
        failed.update(failed_v)
        compiled.update(checked)
        fns.update({n: c["fn"] for n, c in compiled.items()})
        # the same arithmetic compiled / on ORT; int8: the same operations in int8 (the FLOPs of fp32, so the
        # row's utilisation reads against the fp32 peak: "fp32-equivalent")
        flops.update({n: flops[plain_name(n)] for n in compiled})
        rule = ctx.plan.rule
        overrides = [e.min_iters for e in members if e.min_iters]
        if overrides:
            rule = rule.replace(min_iters=min(overrides))
        meas = timing.measure_interleaved(fns, device=device, items_per_call=batch, **rule.to_dict())
        for name, m in meas.items():
            ctx.per_item_s[(name, dtype_name)] = m.median_s / batch
        out: Rows = []
        for e in members:
            row = ctx.base_row(e, self.name, batch, dtype_name)
            if e.name in failed:
                row.update(status="error", error=failed[e.name])
                out.append((row, None))
                continue
            m = meas[e.name]
            row.update(m.to_row())
            row.update(
                status="ok",
                flops_per_item=flops[e.name],
                flop_utilisation=model_flop_utilisation(flops[e.name], m.throughput_per_s, device, dtype),
                **ctx.utilisation(flops[e.name], m.throughput_per_s, dtype_name),
            )
            # torch's tensor tracker would retrace a compiled call, and sees no tensors inside ORT
            track = not (e.compile or e.runtime == "ort")
            row.update(memory_energy(fns[e.name], device, batch, scenario_modules(e, self.name), track))
            row["stage_ms"] = None if not track else self.stages(ctx, e, x[e.name], m)
            if e.teacher in meas and e.teacher != e.name:
                s = speedup(meas[e.teacher].samples_s, m.samples_s, seed=seed)
                row.update(
                    speedup_vs_teacher=s.ratio,
                    speedup_ci_low=s.ci_low,
                    speedup_ci_high=s.ci_high,
                    speedup_flop_bound=flops[e.teacher] / flops[e.name] if flops[e.name] else None,
                )
            if e.compile:
                row.update(
                    vs_plain(meas, e.name, seed),
                    compile_s=compiled[e.name]["compile_s"],
                    max_abs_diff_vs_plain=compiled[e.name]["max_abs_diff"],
                )
            elif e.runtime:
                row.update(vs_plain(meas, e.name, seed), **compiled[e.name]["check"])
            if e.kind == "student" and self.name == "cached":
                row.update(ctx.features.cost(e, dtype_name))
            out.append((row, m.samples_ms))
        return out

    def compile_group(self, ctx: RunContext, entries: list[Entry], x: dict, plain_fns: dict, dtype):
        """Compile each ``@compiled`` entry's call and check its output against the plain path on the same
        inputs (fp32: 1e-4; bf16/fp16: 3e-2, absolute and relative). Returns ({name: {fn, compile_s,
        max_abs_diff}}, {name: error}): a call that fails to compile or disagrees becomes an error row."""
        if not entries:
            return {}, {}
        from torch import _dynamo

        _dynamo.reset()  # a fresh cache per group: recompile limits never turn a call silently eager
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        done, failed = {}, {}
        for e in entries:
            try:
                fn = scenario_call(e, self.name, x[e.name])
                t0 = time.perf_counter()
                out = fn()  # compiles
                sync(ctx.device)
                compile_s = time.perf_counter() - t0
                ref = plain_fns[plain_name(e.name)]()
                diff = float((out.float() - ref.float()).abs().max()) if out.numel() else 0.0
                torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
            except AssertionError:
                failed[e.name] = f"compiled output differs from the plain path (max abs diff {diff:.3g})"
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. no C++ compiler for inductor: an error row
                if is_oom(exc):
                    raise
                msg = " ".join(str(exc).split())[:300]
                failed[e.name] = f"torch.compile failed: {type(exc).__name__}: {msg}"
                ctx.console.print(f"[yellow]{e.name}[/]: {failed[e.name]}")
                continue
            done[e.name] = {"fn": fn, "compile_s": compile_s, "max_abs_diff": diff}
        return done, failed

    def check_variants(self, ctx: RunContext, entries: list[Entry], x: dict, plain_fns: dict):
        """Build each run-option variant's call (an ORT row exports here) and check its output against the plain
        path on the same inputs (``variants.check``: int8 within 15% of the logit scale, ORT within 1e-3). Returns
        ({name: {fn, check columns}}, {name: error}): a variant that fails or disagrees becomes an error row."""
        done, failed = {}, {}
        for e in entries:
            try:
                fn = scenario_call(e, self.name, x[e.name])
                cols = variants.check(e.runtime, fn(), plain_fns[plain_name(e.name)]())
                if e.runtime == "ort":
                    cols["ort_export_s"] = e.model.export_s
            except variants.Mismatch as exc:
                failed[e.name] = str(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - an exporter or runtime failure: an error row, the run goes on
                if is_oom(exc):
                    raise
                msg = " ".join(str(exc).split())[:300]
                failed[e.name] = f"{e.runtime} variant failed: {type(exc).__name__}: {msg}"
                ctx.console.print(f"[yellow]{e.name}[/]: {failed[e.name]}")
                continue
            done[e.name] = {"fn": fn, "check": cols}
        return done, failed

    def stages(self, ctx: RunContext, e: Entry, x: dict, whole: timing.Measurement) -> dict:
        """Median time of each stage of one call, measured stage by stage (milliseconds). The teacher is one
        joint stage; a cached student has no image tower stage."""
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
        if self.name == "online":
            stages = {"image_tower": lambda: m.encode_images(x["pixel_values"], x["pixel_mask"]), **stages}
        res = timing.measure_interleaved(stages, device=ctx.device, **rule)
        return {k: v.median_s * 1e3 for k, v in res.items()}


SCENARIOS = (BatchedScenario("online"), BatchedScenario("cached"))
