"""The scenarios of a run, one module each, behind one small protocol.

A scenario measures every entry of a run for one dtype and writes its rows through the run context::

    class Scenario(Protocol):
        name: str                       # the --scenarios name, and the rows' `scenario` column
        def run(self, ctx: RunContext, entries: list[Entry], dtype: str, progress: Progress) -> None: ...

A scenario may also define ``label(plan) -> str | None``: the name of its phase in the run's timing of phases, or
None when another scenario measures it in this plan (``cached`` beside ``online``).

Every module of this package that defines ``SCENARIOS`` (a tuple of scenario objects) is found by
:func:`registry`, so a new scenario is one new file. The shipped ones:

  online   (batched.py)  every call brings raw images and text; the student runs both towers.
  cached   (batched.py)  image features were computed once; the student runs the text tower, fusion MLP and head.
                         The teacher cannot cache: its row runs the full model (the baseline it is compared with).
                         With online in the same run, both are one interleaved group (the teacher timed once).
  gallery  (gallery.py)  one text scored against N cached images read from an on-disk feature store; the
                         teacher runs N joint passes.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.progress import Progress

    from dde_bench.bench.context import RunContext
    from dde_bench.bench.workload import Entry


class Scenario(Protocol):
    name: str

    def run(self, ctx: RunContext, entries: list[Entry], dtype: str, progress: Progress) -> None: ...


@cache
def registry() -> dict[str, Scenario]:
    """Every scenario of this package by name, in module then definition order."""
    found: dict[str, Scenario] = {}
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        for s in getattr(importlib.import_module(f"{__name__}.{mod}"), "SCENARIOS", ()):
            found[s.name] = s
    return found


def phase_label(scenario: Scenario, plan) -> str | None:
    """The phase name of ``scenario`` in ``plan`` (see the module docstring); its name by default."""
    label = getattr(scenario, "label", None)
    return label(plan) if label is not None else scenario.name


def names() -> list[str]:
    """Known scenario names in their canonical order (online, cached, gallery, then any others)."""
    order = {"online": 0, "cached": 1, "gallery": 2}
    return sorted(registry(), key=lambda n: (order.get(n, 3), n))
