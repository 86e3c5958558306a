"""Versioned JSON Schemas of a run folder's files (draft 2020-12), shipped inside the package.

* ``results-row.v1.schema.json``: one line of ``results.jsonl`` (one measurement);
* ``run.v1.schema.json``: ``run.json`` (the run's settings and environment).

The version in the file name is ``dde_bench.bench.schema.SCHEMA_VERSION``, the ``schema_version`` every row and
run.json carry. Validate with any JSON Schema validator, e.g. ``jsonschema.validate(row, load_schema("results-row"))``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from dde_bench.bench.schema import SCHEMA_VERSION

NAMES = ("results-row", "run")


def schema_path(name: str, version: int = SCHEMA_VERSION) -> Path:
    """The file of schema ``name`` (results-row | run) at ``version``."""
    if name not in NAMES:
        raise ValueError(f"unknown schema {name!r}; expected one of {', '.join(NAMES)}")
    path = Path(str(resources.files(__package__) / f"{name}.v{version}.schema.json"))
    if not path.is_file():
        raise FileNotFoundError(f"no {name} schema for version {version} ({path})")
    return path


def load_schema(name: str, version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """Schema ``name`` (results-row | run) at ``version``, parsed."""
    return json.loads(schema_path(name, version).read_text(encoding="utf-8"))
