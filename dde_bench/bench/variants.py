"""The run-option variants of a model, ``--variants int8,ort``: the one home of what each variant is, which rows get
one, what it is compared with, and the tolerance its output must meet against the plain path before it is timed.
(``@compiled`` keeps its own option, ``--compile BACKEND``, and its check in the batched scenario.)

* ``MODEL@int8`` -- dynamic int8 quantisation of every ``nn.Linear`` (int8 weights, per-tensor scale; activations
  quantised per call from their observed range), through ``torch.ao.quantization.quantize_dynamic`` on the
  platform's quantised engine (fbgemm / x86: VNNI int8 GEMMs on this CPU). The patch embedding (a Conv2d),
  attention's score/value products, LayerNorm and GELU stay fp32. Why not torchao 0.18's
  ``Int8DynamicActivationInt8WeightConfig``: with torch 2.13 on this CPU (avx512_vnni) its eager path ran the
  paper-size cached student (batch 8, one thread) in 21.8 s against 0.73 s for fp32 and 0.44 s for
  ``quantize_dynamic`` (measured 2026-12-01, same process). Its eager matmul is ``torch._int_mm``, which on this
  CPU ran at 0.6-1.7 GFLOP/s (shapes 320x768x3072 ... 2048^3) against 50-90 for fp32 and 110-160 (fp32-equivalent)
  for fbgemm's ``quantized::linear_dynamic``: torchao's fast int8 kernels come only through ``torch.compile``
  (inductor), which would make ``@int8`` a compiled row too and mix two effects in one ratio. (The ``onednn``
  engine measured the same as ``x86`` / ``fbgemm``.)
  fp32 runs only: int8 of a bf16 or fp16 run is a skipped row saying so. Its accuracy is measured on the
  evaluation split like its plain model's (the runner's accuracy pass), since int8 changes the numerics.
  Like with like: an int8 model is compared with the **fp32 teacher** (``speedup_vs_teacher``: what a deployer
  gains against the accuracy reference) and with its own plain model (``speedup_vs_plain``); the teacher@int8
  row is there to read the int8 teacher's gain.
* ``MODEL@ort`` -- the same call exported with torch.onnx and run by ONNX Runtime's CPUExecutionProvider
  (``bench/ort.py``): the reference a CPU deployer would reach for. The same fp32 arithmetic on another runtime,
  so like with like as ``@compiled``: a student@ort is compared with the teacher@ort (``speedup_vs_teacher``), a
  teacher@ort with the plain teacher; every ``@ort`` row's ``speedup_vs_plain`` answers "would ORT be faster?".
  Its accuracy is its plain model's (its outputs match within :data:`ORT_TOL`). CPU runs only; without the
  ``ort`` extra (onnx, onnxscript, onnxruntime) the rows are skipped with the reason.

Transformers reference rows get no variants (a reference, not a contender).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from dde_bench.bench.workload import Entry, variant
from dde_bench.errors import UserError

VARIANTS = {
    "int8": "dynamic int8 quantisation of the Linear layers (torch.ao quantize_dynamic, fp32 runs)",
    "ort": "exported with torch.onnx, run by ONNX Runtime's CPU provider (CPU runs; the `ort` extra)",
}

# int8: the largest |logit difference| to the fp32 plain path on the same batch, as a share of that batch's
# logit scale (max |logit| of the plain path). Dynamic int8 rounds each Linear's inputs and weights to 1/255 of
# their range (about 0.2-0.5% error per layer); through 12 residual blocks that compounds to a few percent of
# the logit scale (measured: 4.7% for the random-weight paper-size student, cached). A broken quantisation
# (wrong scale, wrong or transposed weights, a skipped layer) moves logits by the order of their scale, so 15%
# separates the two. Whether int8 still ranks answers right is what its measured accuracy says, on the whole
# split; the agreement of argmax on the checked batch is recorded beside the difference.
INT8_REL_TOL = 0.15
# ort: the same fp32 arithmetic reordered and fused by another runtime (absolute and relative)
ORT_TOL = 1e-3


def check_names(names: list[str] | None, where: str = "--variants") -> list[str]:
    """The variant names of a run option, each known, in the order given, once."""
    out: list[str] = []
    for n in names or []:
        if n not in VARIANTS:
            known = ", ".join(VARIANTS)
            hint = " (torch.compile has its own option: --compile)" if n == "compiled" else ""
            raise UserError(f"{where}: unknown variant {n!r}; known: {known}{hint}")
        if n not in out:
            out.append(n)
    return out


def eligible(e: Entry) -> bool:
    """Teachers and students get variants; reference rows and variants of variants do not."""
    return e.kind in ("teacher", "student") and e.name == e.plain


@dataclass
class VariantSet:
    """The variant rows of one run and dtype: those to measure, and those skipped with their reason."""

    entries: list[Entry]
    skipped: list[tuple[Entry, str]]

    def members_for(self, members: list[Entry]) -> tuple[list[Entry], list[tuple[Entry, str]]]:
        """The variants (and skipped variants) of the plain rows in ``members``."""
        plain = {e.name for e in members}
        return (
            [v for v in self.entries if v.plain in plain],
            [(v, why) for v, why in self.skipped if v.plain in plain],
        )


def build(
    names: list[str], entries: list[Entry], dtype: str, device: torch.device, cache_root, cache: dict
) -> VariantSet:
    """The ``names`` variants of every eligible entry for ``dtype`` (memoised in ``cache``, so the accuracy pass
    and the scenarios share one quantised model / one ONNX session per model)."""
    key = (tuple(names), tuple(e.name for e in entries), dtype)
    if key in cache:
        return cache[key]
    base = [e for e in entries if eligible(e)]
    out = VariantSet([], [])
    if "int8" in names:
        for e in base:
            if torch.device(device).type != "cpu":
                out.skipped.append((_int8_entry(e, None), f"int8 variants run on CPU only ({device})"))
            elif dtype != "fp32":
                out.skipped.append(
                    (_int8_entry(e, None), f"int8 variants are measured in fp32 runs only ({dtype})")
                )
            else:
                out.entries.append(_int8_entry(e, int8_model(e.model)))
    if "ort" in names:
        from dde_bench.bench import ort

        why = ort.unavailable(device, dtype)
        names_ort = {f"{e.name}@ort" for e in base}
        for e in base:
            teacher = e.name if e.kind == "teacher" else _like(e.teacher, "ort", names_ort)
            if why:
                out.skipped.append((variant(e, "ort", "ONNX Runtime", runtime="ort", teacher=teacher), why))
                continue
            model = ort.OrtModel(e.model, e.name, ort.cache_dir(cache_root))
            out.entries.append(
                variant(
                    e,
                    "ort",
                    f"torch.onnx (TorchScript exporter) + onnxruntime {ort.version()} CPUExecutionProvider, "
                    "graph optimisations ALL; cached: image features from the plain model (untimed)",
                    runtime="ort",
                    model=model,
                    teacher=teacher,
                )
            )
    cache[key] = out
    return out


def _like(teacher: str | None, suffix: str, names: set[str]) -> str | None:
    return f"{teacher}@{suffix}" if teacher and f"{teacher}@{suffix}" in names else teacher


def _int8_entry(e: Entry, model) -> Entry:
    # compared with the fp32 teacher (its plain teacher row): the teacher@int8's own teacher is the plain one
    teacher = e.name if e.kind == "teacher" else e.teacher
    return variant(
        e,
        "int8",
        "dynamic int8 Linear layers (torch.ao quantize_dynamic, engine "
        f"{torch.backends.quantized.engine}); compared with the fp32 teacher",
        runtime="int8",
        model=model if model is not None else e.model,
        teacher=teacher,
    )


def int8_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every nn.Linear dynamically quantised to int8 (weights once, activations per
    call). The original is untouched."""
    q = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's migration notice (see the module docstring for why)
        q = torch.ao.quantization.quantize_dynamic(q, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return q


def packed_int8_mb(modules: list) -> float:
    """MB (1e6 bytes) of the int8 Linear layers' packed weights and biases in ``modules``: they live in
    fbgemm's packed buffers, which torch's tensor tracker does not see as parameters."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    total = 0
    for mod in modules:
        for m in mod.modules():
            if isinstance(m, DynamicLinear):
                w, b = m.weight(), m.bias()
                total += w.numel() * w.element_size() + (0 if b is None else b.numel() * b.element_size())
    return total / 1e6


class Mismatch(AssertionError):
    """A variant's output disagrees with the plain path beyond its tolerance."""


def check(runtime: str, out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Compare a variant's output with the plain path's on the same inputs. Returns the columns the row records
    (max_abs_diff_vs_plain, and for int8 the relative difference and argmax agreement); raises
    :class:`Mismatch` with a one-line reason when the output is out of tolerance."""
    out, ref = out.float(), ref.float()
    if out.shape != ref.shape:
        raise Mismatch(f"output shape {tuple(out.shape)} differs from the plain path's {tuple(ref.shape)}")
    diff = float((out - ref).abs().max()) if out.numel() else 0.0
    cols = {"max_abs_diff_vs_plain": diff}
    if runtime == "int8":
        scale = float(ref.abs().max()) if ref.numel() else 0.0
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        agree = float((out.argmax(-1) == ref.argmax(-1)).float().mean()) if ref.numel() else 1.0
        cols.update(rel_diff_vs_plain=rel, argmax_agreement_vs_plain=agree)
        if not rel <= INT8_REL_TOL:
            raise Mismatch(
                f"int8 output differs from the fp32 plain path by {rel:.1%} of the logit scale "
                f"(max abs diff {diff:.3g}; tolerance {INT8_REL_TOL:.0%})"
            )
        return cols
    try:
        torch.testing.assert_close(out, ref, atol=ORT_TOL, rtol=ORT_TOL)
    except AssertionError:
        raise Mismatch(
            f"{runtime} output differs from the plain path (max abs diff {diff:.3g}; tolerance {ORT_TOL:g})"
        ) from None
    return cols
