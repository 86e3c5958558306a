"""int8 and ONNX Runtime against our fp32 path at paper size (ViLT-B/32, random weights, VQA head), batch 8, 40 tokens,
384x384 images, one thread: each call interleaved with its variants for more rounds than `dde-bench run` gives a
paper-size group (its timing rule caps a row at 60 s, i.e. 2-4 rounds of a teacher group there).

    PYTHONPATH=. python scripts/lowprec_paper.py [--rounds 8] [--calls teacher,online,cached] [--cache DIR]

The variants are the harness's own (dde_bench/bench/variants.py, bench/ort.py), checked against fp32 first; the
ratios are ratios of medians with the paired bootstrap interval of bench.stats.speedup.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from dde_bench.bench import timing, variants
from dde_bench.bench.stats import speedup
from dde_bench.modeling import Student, Teacher, size_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", default="teacher,online,cached")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "dde-bench-onnx"))
    ap.add_argument("--no-ort", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = size_config("b32")
    teacher = Teacher(cfg, "vqa", num_labels=3129).eval()
    student = Student(cfg, "vqa", num_labels=3129).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (8, 40), generator=g)
    am = torch.ones(8, 40, dtype=torch.long)
    pv = torch.randn(8, 3, 384, 384, generator=g)
    qt, qs = variants.int8_model(teacher), variants.int8_model(student)
    ort = None
    if not args.no_ort and not variants_unavailable():
        from dde_bench.bench.ort import OrtModel

        ort = (OrtModel(teacher, "paper-teacher", args.cache), OrtModel(student, "paper-student", args.cache))
    with torch.inference_mode():
        feats = student.encode_images(pv, None)
        qfeats = qs.encode_images(pv, None)
        calls = {
            "teacher": {
                "fp32": lambda: teacher(ids, am, pv, None),
                "int8": lambda: qt(ids, am, pv, None),
            },
            "online": {
                "fp32": lambda: student(ids, am, pv, None),
                "int8": lambda: qs(ids, am, pv, None),
            },
            "cached": {
                "fp32": lambda: student.forward_cached(ids, am, feats),
                "int8": lambda: qs.forward_cached(ids, am, qfeats),
            },
        }
        if ort:
            calls["teacher"]["ort"] = ort[0].bind("forward", ids, am, pv, None)
            calls["online"]["ort"] = ort[1].bind("forward", ids, am, pv, None)
            calls["cached"]["ort"] = ort[1].bind("forward_cached", ids, am, feats)
        for name in args.calls.split(","):
            fns = calls[name]
            ref = fns["fp32"]()
            checks = {k: variants.check(k, f(), ref) for k, f in fns.items() if k != "fp32"}
            meas = timing.measure_interleaved(
                fns,
                warmup_iters=1,
                warmup_s=0.0,
                min_iters=args.rounds,
                min_time_s=0.0,
                max_time_s=3600.0,
                items_per_call=8,
            )
            base = meas["fp32"]
            print(f"{name}: fp32 p50 {base.median_s * 1e3:.0f} ms ({len(base.samples_s)} rounds)")
            for k in fns:
                if k == "fp32":
                    continue
                s = speedup(base.samples_s, meas[k].samples_s, seed=0)
                print(
                    f"  {k}: p50 {meas[k].median_s * 1e3:.0f} ms, {s.ratio:.2f}x fp32 [{s.ci_low:.2f}, {s.ci_high:.2f}]"
                    f"; check { ({c: round(v, 4) for c, v in checks[k].items()}) }"
                )


def variants_unavailable() -> str | None:
    from dde_bench.bench.ort import unavailable

    why = unavailable(torch.device("cpu"), "fp32")
    if why:
        print(f"ort: {why}")
    return why


if __name__ == "__main__":
    main()
