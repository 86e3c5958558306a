"""One place for how results look: model colours and variant styles (the same in every plot), number
formatting, and which statistics a row's sample size lets the report print.

Every model gets a colour of its own, picked by its *role* so the legend reads at a glance: teachers blues and
teals, distilled students oranges and reds, students trained without distillation purples, the transformers
ViLT reference greens (always drawn as a reference: dotted, never as a contender). Within a role models take the
role's colours in name order, so a model keeps its colour across plots and across reports of the same models.
A variant (``MODEL@compiled``, ``MODEL@fusion-cache``) takes its model's colour and its variant's style (line,
marker, hatch), the same style for that variant everywhere.
"""

from __future__ import annotations

import math
from typing import Any

from dde_bench.bench.schema import VARIANT_SEP, plain_name
from dde_bench.bench.stats import MIN_ROUNDS_FOR_INTERVAL, min_calls_for, supports
from dde_bench.errors import UserError

NA = "n/a"

# distinct hues within a role (no light/dark shades of one hue: two models must never look alike)
ROLE_COLORS: dict[str, tuple[str, ...]] = {
    "teacher": ("#1f5fa8", "#17a3a3", "#3b3b98"),
    "student": ("#e8731a", "#c8102e", "#b8860b"),
    "student-nodistill": ("#8e6bb8", "#d45fa8", "#5b3f80"),
    "hf-vilt": ("#3f9a4a", "#8a9a1f", "#1f5e27"),
    "other": ("#7f7f7f", "#4d4d4d", "#b0b0b0"),
}
# one style per variant, whatever the model: solid/circle for the plain model
VARIANT_STYLES: dict[str, dict[str, Any]] = {
    "": {"linestyle": "-", "marker": "o", "hatch": None},
    "compiled": {"linestyle": "-.", "marker": "^", "hatch": ".."},
    "fusion-cache": {"linestyle": "--", "marker": "D", "hatch": "//"},
    "int8": {"linestyle": (0, (5, 1, 1, 1)), "marker": "s", "hatch": "\\\\"},
    "ort": {"linestyle": (0, (1, 2)), "marker": "P", "hatch": "++"},
}
OTHER_VARIANT_STYLE = {"linestyle": ":", "marker": "v", "hatch": "xx"}
REFERENCE_STYLE = {"linestyle": ":", "marker": "x"}  # the transformers reference row, in its own colour
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


def lighter(color: str, amount: float = 0.55) -> str:
    """The colour mixed with white (activations beside a model's weights, in the same hue)."""
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
        # a variant ('tiny-student@fusion-cache') takes its model's colour; its style tells it apart
        for m in models:
            if VARIANT_SEP in m:
                self.colors[m] = self.colors.get(plain_name(m), ROLE_COLORS["other"][0])

    def color(self, model: str) -> str:
        """The model's colour (grey for a model the palette was not built with)."""
        return self.colors.get(model, ROLE_COLORS["other"][0])

    def style(self, model: str) -> dict[str, Any]:
        """The model's line style, marker and hatch: its variant's (plain models solid with circles)."""
        variant = model.split(VARIANT_SEP, 1)[1] if VARIANT_SEP in model else ""
        return dict(VARIANT_STYLES.get(variant, OTHER_VARIANT_STYLE))

    def is_reference(self, model: str) -> bool:
        """Whether the model is a reference row (transformers' ViLT), drawn as a reference, not a contender."""
        return self.roles.get(plain_name(model)) == "hf-vilt" or self.roles.get(model) == "hf-vilt"

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


def speedup_ci(v: Any, lo: Any, hi: Any, rounds: Any = None) -> str:
    """Speedup with its 95% interval: '6.2x [5.8, 6.6]'. With ``rounds`` given, the interval is printed only
    where that many interleaved rounds support one (bench.stats.supports), else '10.4x (n=5 rounds)'."""
    if is_missing(v):
        return NA
    if rounds is not None and not supports("interval", None if is_missing(rounds) else float(rounds)):
        return f"{fixed(v, 1, 'x')} ({sample_note(rounds, 'rounds')})"
    if is_missing(lo) or is_missing(hi):
        return fixed(v, 1, "x")
    return f"{fixed(v, 1, 'x')} [{float(lo):.1f}, {float(hi):.1f}]"


# ---------------------------------------------------------------- what a sample size lets us print

SAMPLE_RULE = (
    f"Percentiles and intervals are printed only where the sample supports them (bench/stats.py): the IQR and "
    f"p90 from {min_calls_for('p90')} timed calls, p99 from {min_calls_for('p99')}, a bootstrap 95% interval "
    f"from {MIN_ROUNDS_FOR_INTERVAL} interleaved rounds (one call of each model per round). Below that a cell "
    "reads n=K, the number of calls (rounds) timed, and only the median is given."
)


def sample_note(n: Any, unit: str = "calls") -> str:
    """'n=5 calls' (n/a where the count is unknown)."""
    return f"n={int(float(n))} {unit}" if not is_missing(n) else f"n unknown ({unit})"


def stat_cell(v: Any, n: Any, statistic: str) -> str:
    """A latency statistic (``iqr``, ``p90``, ``p99``) to 3 significant figures where ``n`` calls support it,
    else 'n=K'; n/a where not measured."""
    if is_missing(v):
        return NA
    if not supports(statistic, None if is_missing(n) else float(n)):
        return f"n={int(float(n))}" if not is_missing(n) else NA
    return sig(v)
