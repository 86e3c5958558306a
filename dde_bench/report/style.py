"""One place for how results look: model colours (the same in every plot) and number formatting.

Colours go by a model's *role*: the teacher is always blue, the distilled student always orange, a student
trained without distillation grey-purple, the transformers ViLT reference green. Several models in one role
(e.g. tiny and b32 teachers) get shades of that role's colour, in name order, so a model keeps its colour
across plots and across reports built from the same set of models.
"""

from __future__ import annotations

import math
from typing import Any

from dde_bench.bench.schema import VARIANT_SEP, plain_name
from dde_bench.errors import UserError

NA = "n/a"

ROLE_COLORS: dict[str, tuple[str, ...]] = {
    "teacher": ("#1f5fa8", "#6f9fd8", "#0b3466"),
    "student": ("#e8731a", "#f3a866", "#9c4a0a"),
    "student-nodistill": ("#8e6bb8", "#b9a2d6", "#5b3f80"),
    "hf-vilt": ("#3f9a4a", "#8cc893", "#1f5e27"),
    "other": ("#7f7f7f", "#b0b0b0", "#4d4d4d"),
}
ROLE_ORDER = ("teacher", "hf-vilt", "student", "student-nodistill", "other")

# Stage fills are neutral so they never read as a model; the model shows as the bar's outline and label colour.
STAGE_COLORS = {
    "joint": "#8c8c8c",
    "image_tower": "#9ecae1",
    "text_tower": "#c7e9c0",
    "fusion_head": "#fdd0a2",
}
STAGE_LABELS = {
    "joint": "joint stack + head (teacher)",
    "image_tower": "image tower",
    "text_tower": "text tower",
    "fusion_head": "fusion + head",
}
SCENARIO_MARKERS = {"online": "o", "cached": "s", "gallery": "^"}


def _is_distilled(model: str) -> bool:
    """A student counts as distilled when its model card gives soft or attention distillation a weight."""
    from dde_bench.cards import load_model_card

    try:
        card = load_model_card(model)
    except (UserError, OSError):  # a run from another installation: its cards are not here
        return "nodistill" not in model
    return bool(card.distill.soft or card.distill.attention)


def model_role(model: str, kind: str | None) -> str:
    """The colour role of a model: teacher, student, student-nodistill, hf-vilt or other."""
    if kind == "teacher":
        return "teacher"
    if kind == "hf-vilt":
        return "hf-vilt"
    if kind == "student":
        return "student" if _is_distilled(model) else "student-nodistill"
    return "other"


def _lighter(color: str, amount: float = 0.45) -> str:
    """The colour mixed with white."""
    from matplotlib.colors import to_hex, to_rgb

    r, g, b = to_rgb(color)
    return to_hex((r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount))


class Palette:
    """Model -> colour, fixed once from every model that appears in the report."""

    def __init__(self, models: dict[str, str | None]):
        """models: model name -> model kind (teacher | student | hf-vilt | None)."""
        self.roles = {m: model_role(m, k) for m, k in models.items()}
        self.colors: dict[str, str] = {}
        by_role: dict[str, list[str]] = {}
        for m in sorted(models):
            by_role.setdefault(self.roles[m], []).append(m)
        for role, names in by_role.items():
            shades = ROLE_COLORS[role]
            base_names = [m for m in names if VARIANT_SEP not in m]
            for i, m in enumerate(base_names):
                self.colors[m] = shades[i % len(shades)]
        # a variant ('tiny-student@fusion-cache') takes a lighter shade of its model's colour
        for m in models:
            if VARIANT_SEP in m:
                base = plain_name(m)
                self.colors[m] = _lighter(self.colors.get(base, ROLE_COLORS["other"][0]))

    def color(self, model: str) -> str:
        """The model's colour (grey for a model the palette was not built with)."""
        return self.colors.get(model, ROLE_COLORS["other"][0])

    def order(self, models: list[str] | set[str]) -> list[str]:
        """Models in report order: teachers, reference, students, then the rest; by name within a role."""
        return sorted(models, key=lambda m: (ROLE_ORDER.index(self.roles.get(m, "other")), m))


# ---------------------------------------------------------------- number formatting


def is_missing(v: Any) -> bool:
    """None, NaN and empty strings count as not measured."""
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() in ("", NA)


def sig(v: Any, digits: int = 3) -> str:
    """A number to `digits` significant figures, without exponent for ordinary magnitudes; n/a if missing."""
    if is_missing(v):
        return NA
    x = float(v)
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag >= 6 or mag <= -4:
        return f"{x:.{digits - 1}e}"
    decimals = digits - 1 - mag
    rounded = round(x, decimals)
    return f"{rounded:.{decimals}f}" if decimals > 0 else f"{int(round(rounded)):d}"


def fixed(v: Any, decimals: int = 1, suffix: str = "") -> str:
    """A number with fixed decimals (speedups: 1 decimal, 'x' suffix); n/a if missing."""
    if is_missing(v):
        return NA
    return f"{float(v):.{decimals}f}{suffix}"


def pct(v: Any, decimals: int = 1) -> str:
    """A fraction (0.742) as a percentage with one decimal (74.2%); n/a if missing."""
    if is_missing(v):
        return NA
    return f"{100 * float(v):.{decimals}f}%"


def pct_ci(v: Any, lo: Any, hi: Any) -> str:
    """Accuracy with its 95% interval: '74.2% [71.5, 74.9]'; the interval is left out when not known."""
    if is_missing(v):
        return NA
    if is_missing(lo) or is_missing(hi):
        return pct(v)
    return f"{pct(v)} [{100 * float(lo):.1f}, {100 * float(hi):.1f}]"


def speedup_ci(v: Any, lo: Any, hi: Any) -> str:
    """Speedup with its 95% interval: '6.2x [5.8, 6.6]'."""
    if is_missing(v):
        return NA
    if is_missing(lo) or is_missing(hi):
        return fixed(v, 1, "x")
    return f"{fixed(v, 1, 'x')} [{float(lo):.1f}, {float(hi):.1f}]"
