"""Find the suites/ and models/ folders, from a source checkout or from an installed wheel.

In a checkout they are the top-level folders beside the package; in a wheel the build copies them to
``dde_bench/_resources``. Environment variables ``DDE_BENCH_SUITES`` and ``DDE_BENCH_MODELS`` override both.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from dde_bench.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def _resource_dir(kind: str) -> Path:
    env = os.environ.get(f"DDE_BENCH_{kind.upper()}")
    if env:
        return Path(env)
    for candidate in (REPO_ROOT / kind, PACKAGE_DIR / "_resources" / kind):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    raise UserError(f"cannot find the {kind}/ folder (looked beside the package and in dde_bench/_resources)")


def suites_dir() -> Path:
    return _resource_dir("suites")


def models_dir() -> Path:
    return _resource_dir("models")


def load_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text ({e.reason}, byte {e.start})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def list_names(kind: str) -> list[str]:
    d = suites_dir() if kind == "suites" else models_dir()
    return sorted(p.stem for p in d.glob("*.yaml"))
