"""ONNX Runtime reference rows (``MODEL@ort``, :mod:`dde_bench.bench.variants`): a model's call exported with
torch.onnx and run by onnxruntime's CPUExecutionProvider.

Export: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, opset 17). It traces the call on the
row's own inputs, so the data-dependent choices of our models (an all-true attention mask dropped on CPU, the
patch grid of padded images) are taken for those inputs and baked into the graph, without rewriting the model
(the dynamo exporter also exported the tiny unpadded teacher, in 5.0 s against 0.5 s, and gave the same
outputs). Because of that bake-in, an exported
graph is keyed by everything it depends on: the model's weights and config, which call (forward /
forward_cached), the input shapes and dtypes, the bytes of the masks (their values steer the trace), and the
torch, onnx and opset versions. One ``.onnx`` per key, cached under ``CACHE/onnx/`` (``dde_bench.paths``), so a
later run on the same weights and shapes skips the export.

Session: ``intra_op_num_threads`` = the run's torch threads, one inter-op thread, sequential execution, graph
optimisations ALL (``ORT_ENABLE_ALL``: constant folding, LayerNorm / GELU / attention / MatMul+Add fusions,
NCHWc layouts). ``DDE_BENCH_ORT_OPTIMIZED=1`` also writes the optimised graph beside the export
(``*.opt.onnx``) to read what it fused.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path

import torch
from torch import nn

OPSET = 17
PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def unavailable(device: torch.device, dtype: str) -> str | None:
    """Why ORT rows cannot run here (one line), or None."""
    if torch.device(device).type != "cpu":
        return f"ORT rows run on CPU only (CPUExecutionProvider); this run is on {device}"
    if dtype != "fp32":
        return f"ORT rows are exported in fp32 only ({dtype})"
    missing = []
    for p in PACKAGES:
        try:
            __import__(p)
        except ImportError:
            missing.append(p)
    if missing:
        return f"{', '.join(missing)} not installed: pip install 'dde-bench[ort]'"
    return None


def version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def cache_dir(cache_root) -> Path:
    return Path(cache_root) / "onnx"


class _Call(nn.Module):
    """One method of a model with its constant arguments (a mask traced as None) bound, as an exportable
    module."""

    def __init__(self, model: nn.Module, method: str, pattern: tuple):
        super().__init__()
        self.model, self.method, self.pattern = model, method, pattern

    def forward(self, *tensors):
        it = iter(tensors)
        args = [next(it) if p else None for p in self.pattern]
        return getattr(self.model, self.method)(*args)


class OrtModel:
    """A model's calls on ONNX Runtime. :meth:`bind` exports (or loads the cached export of) one call on its
    inputs and returns the timed callable; :meth:`encode_images` is the torch model's (a cached row's image
    features are computed once, outside the timed call)."""

    def __init__(self, model: nn.Module, name: str, cache: Path):
        self.model, self.name, self.cache = model, name, Path(cache)
        self.export_s = 0.0  # export + session set-up of the last bind (0 export when the .onnx was cached)
        self.path: Path | None = None
        self._sessions: dict[str, object] = {}
        self._weights_digest: str | None = None

    def __getattr__(self, name):  # config, task, answer_vocab ...: the torch model's
        if name.startswith("_") or name in ("model", "name", "cache", "export_s", "path"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def encode_images(self, pixel_values, pixel_mask=None):
        return self.model.encode_images(pixel_values, pixel_mask)

    def bind(self, method: str, *args):
        """The callable running ``model.method(*args)`` on ONNX Runtime, returning a torch tensor. An all-ones
        pixel mask is passed as None (no padding), as the compiled path does."""
        import numpy as np

        args = list(args)
        if method == "forward" and args[3] is not None and bool(args[3].all()):
            args[3] = None
        pattern = tuple(a is not None for a in args)
        tensors = [a for a in args if a is not None]
        t0 = time.perf_counter()
        path = self._export(method, pattern, tensors)
        session = self._session(path)
        self.export_s, self.path = time.perf_counter() - t0, path
        # the trace drops inputs the call did not read on these values (an all-true attention mask)
        used = {i.name for i in session.get_inputs()}
        feed = {
            f"in{i}": np.ascontiguousarray(t.detach().cpu().numpy())
            for i, t in enumerate(tensors)
            if f"in{i}" in used
        }
        run = session.run
        return lambda: torch.from_numpy(run(None, feed)[0])

    def _digest(self) -> str:
        if self._weights_digest is None:
            h = hashlib.sha256(type(self.model).__name__.encode())
            cfg = getattr(self.model, "config", None)
            h.update(repr(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg).encode())
            h.update(str(getattr(self.model, "task", "")).encode())
            for k, v in self.model.state_dict().items():
                h.update(k.encode())
                h.update(str((v.dtype, tuple(v.shape))).encode())
                h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._weights_digest = h.hexdigest()
        return self._weights_digest

    def key(self, method: str, pattern: tuple, tensors: list) -> str:
        """What the exported graph depends on (see the module docstring), as a hex digest."""
        import onnx

        h = hashlib.sha256(self._digest().encode())
        h.update(
            f"{method}|{pattern}|{torch.__version__}|{onnx.__version__}|opset{OPSET}|torchscript".encode()
        )
        for t in tensors:
            h.update(str((t.dtype, tuple(t.shape))).encode())
            if not t.is_floating_point():  # masks steer the trace; token ids are data but cheap to include
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:20]

    def _export(self, method: str, pattern: tuple, tensors: list) -> Path:
        path = self.cache / f"{self.name}-{method}-{self.key(method, pattern, tensors)}.onnx"
        if path.is_file():
            return path
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        n_in = len(tensors)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about the data-dependent branches (see above)
            inputs = tuple(t.clone() for t in tensors)
            torch.onnx.export(
                _Call(self.model, method, pattern).eval(),
                inputs,
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=[f"in{i}" for i in range(n_in)],
                output_names=["out"],
            )
        os.replace(tmp, path)
        return path

    def _session(self, path: Path):
        import onnxruntime as ort

        if str(path) not in self._sessions:
            so = ort.SessionOptions()
            so.intra_op_num_threads = torch.get_num_threads()
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3  # errors only (not the note on saving an NCHWc-optimised graph)
            if os.environ.get("DDE_BENCH_ORT_OPTIMIZED"):
                so.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
            self._sessions[str(path)] = ort.InferenceSession(
                str(path), so, providers=["CPUExecutionProvider"]
            )
        return self._sessions[str(path)]
