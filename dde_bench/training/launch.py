"""Worker entry for ``torch.distributed.run``: ``python -m dde_bench.training.launch CONFIG.json``.

The JSON is a :class:`~dde_bench.training.trainer.TrainConfig` as ``to_dict`` writes it; every rank runs
:func:`~dde_bench.training.trainer.train` on it (rank 0 alone writes outputs)."""

from __future__ import annotations

import json
import sys

from dde_bench.errors import UserError


def main(argv: list[str] | None = None) -> int:
    from dde_bench.training.trainer import TrainConfig, train

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dde_bench.training.launch CONFIG.json", file=sys.stderr)
        return 2
    try:
        with open(args[0], encoding="utf-8") as f:
            cfg = TrainConfig.from_dict(json.load(f))
        train(cfg)
    except UserError as e:
        print(f"dde-bench: error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
