"""The synthetic world: a tiny visual world written in the real NLVR2, VQA v2 and SNLI-VE file formats.

World
-----
An image is ``image_size`` px square (64 by default) cut into a ``grid`` x ``grid`` grid of cells (4 x 4 of 16 px,
so one ViT patch of 16 px is exactly one cell). Each cell holds at most one object, drawn in a flat colour on a
light-grey background: a *shape* (circle, square, triangle) in a *colour* (red, green, blue). Scenes have 2-5
objects (``objects`` setting). SNLI-VE images may also carry *occluders*: dark-grey cells that hide whatever is
under them. Colours, shapes, sizes and families are generator settings, so a quick mode can pick a smaller
world or the easy families.

Why it separates a fusion encoder from a dual encoder: every statement names attribute *conjunctions*
("a red circle") and negatives are *hard* -- a False "a red circle" image contains red objects and circles, just
not a red circle; a False spatial statement has both objects, in the other order. Answering needs the words
bound to image regions, which joint attention does directly and pooled vectors do poorly.

Families (``families`` setting; default: all of the task's families)
-------------------------------------------------------------------
* ``exist``: a colour+shape conjunction is present (hard negatives: colour and shape present separately).
* ``count``: how many objects match a colour, a shape or both (negatives off by one).
* ``spatial``: A is left of / right of / above / below B (negatives: same objects, relation reversed;
  objects never share the compared row/column, so relations are unambiguous).
* ``compare`` (NLVR2 only): the left image has more X than the right one (negatives: fewer or equal).
* ``attribute`` (VQA only): "what color is the circle?" / "what shape is the red object?" (the target is unique,
  other objects of other shapes/colours are distractors).
* ``region`` (VQA only, not in the default mix): "is there a red circle in the left half?" (half: left, right,
  top, bottom of the grid). Negatives alternate between the type present only in the other half and the colour
  and shape present in the half but not together. The answer depends on a (type, place) conjunction, so a pooled
  image vector must carry where each type is, not just whether it is there. A one-seed pilot (rich recipe,
  5 colours x 4 shapes, 4-8 objects, exist + region) did not separate the models: the tiny teacher reached only
  81.2 (79.9 on region), a plain dual encoder 80.9. ``suites/vqa-crowded.yaml`` (exist + attribute) does.

Tasks
-----
* NLVR2: each sentence is written twice, once on an image pair where it is True and once on a pair where it is
  False (``{split}-{set}-0-0`` and ``{split}-{set}-1-0``), as NLVR2 does: text alone is exactly at chance and
  consistency is meaningful. Statements name a side ("the left image ...") or both images; the other image is
  random (it holds the named thing half of the time), so the model must look at the right image.
* VQA v2: one question per image; answers balanced round-robin within each family (yes/no, 0-4, colours,
  shapes). Ten annotators: 6-10 give the truth, the rest a near answer (the other of yes/no, a count off by
  one, another colour/shape), so soft scores and the official leave-one-out metric both matter.
* SNLI-VE: the hypothesis (``sentence2``) is about the image; ``sentence1`` is a caption of the visible objects
  (the premise is the image, as in SNLI-VE). Labels round-robin, exactly a third each:
  entailment = visibly true; contradiction = visibly false *and no occluder* (nothing could be hidden);
  neutral = not visibly true *but an occluder could hide what would make it true*. So the same hypothesis text
  takes all three labels on different images, and neutral needs the image (occluder present, target absent),
  never the text alone. Entailment images carry an occluder half of the time, so "occluder => neutral" is wrong.
* Captions for pre-training (image-text matching, masked language modelling): ``captions_train2014.json`` in
  COCO's captions annotation format (``images``: ``id`` / ``file_name``, the path relative to the data folder;
  ``annotations``: ``image_id`` / ``caption``), one caption per training image.

Output also holds ``vocab.txt`` (a WordPiece vocabulary trained on the training text and captions) and
``stats.json`` (settings, per-split counts, label and family balance). Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dde_bench.errors import UserError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 80, 230),
    "yellow": (230, 200, 30),
    "purple": (140, 60, 190),
}
SHAPES = ("circle", "square", "triangle", "cross")
BACKGROUND = (225, 225, 225)
OCCLUDER = (80, 80, 80)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
RELATIONS = ("left of", "right of", "above", "below")
TASK_FAMILIES = {
    "nlvr2": ("exist", "count", "spatial", "compare"),
    "vqa": ("exist", "count", "attribute", "spatial"),
    "snli-ve": ("exist", "count", "spatial"),
}
# Families a suite can name but that are not in a task's default mix (adding them there would change the bytes,
# and so the results, of every suite that relies on the default).
OPTIONAL_FAMILIES = {"vqa": ("region",)}
REGIONS = ("left", "right", "top", "bottom")
DEFAULT_SIZES = {
    "nlvr2": {"train": 6000, "dev": 1000, "test1": 1000},
    "vqa": {"train2014": 6000, "val2014": 1000},
    "snli-ve": {"train": 6000, "dev": 1000, "test": 1000},
}
SPLIT_ALIASES = {"vqa": {"train": "train2014", "val": "val2014"}}


@dataclass(frozen=True)
class WorldSettings:
    """Everything that changes the generated bytes (hashed by :func:`ensure_data` for the cache key)."""

    task: str
    seed: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    families: tuple[str, ...] = ()
    colors: tuple[str, ...] = ("red", "green", "blue")
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    image_size: int = 64
    grid: int = 4
    objects: tuple[int, int] = (2, 5)
    jpeg_quality: int = 95
    vocab_size: int = 1000


Obj = tuple[int, int, str, str]  # row, col, colour, shape


@dataclass
class Scene:
    objects: list[Obj]
    occluders: list[tuple[int, int]] = field(default_factory=list)


# --- scene construction ---------------------------------------------------------------------------------


class World:
    """Builds scenes under constraints and renders them."""

    def __init__(self, s: WorldSettings, rng: random.Random):
        self.s, self.rng = s, rng
        self.cells = [(r, c) for r in range(s.grid) for c in range(s.grid)]
        self.types = [(c, sh) for c in s.colors for sh in s.shapes]
        self._masks = _shape_masks(s.image_size // s.grid)

    def n_objects(self) -> int:
        return self.rng.randint(*self.s.objects)

    def scene(
        self,
        required: Sequence[tuple[str, str]] = (),
        forbid: Callable[[str, str], bool] = lambda c, s: False,
        placed: Sequence[Obj] = (),
        n_occluders: int = 0,
        n_total: int | None = None,
    ) -> Scene:
        """A scene with ``placed`` objects at fixed cells, ``required`` types anywhere, and random fillers of
        types not ``forbid``-den, up to ``n_total`` objects; then ``n_occluders`` occluders on free cells."""
        rng = self.rng
        n_total = max(self.n_objects() if n_total is None else n_total, len(placed) + len(required))
        used = {(r, c) for r, c, _, _ in placed}
        free = [cell for cell in self.cells if cell not in used]
        rng.shuffle(free)
        objs = list(placed)
        for col, sh in required:
            r, c = free.pop()
            objs.append((r, c, col, sh))
        allowed = [t for t in self.types if not forbid(*t)]
        while len(objs) < n_total and allowed and free:
            r, c = free.pop()
            col, sh = rng.choice(allowed)
            objs.append((r, c, col, sh))
        occ = [free.pop() for _ in range(min(n_occluders, len(free)))]
        objs.sort()
        return Scene(objs, sorted(occ))

    def other(self, values: Sequence[str], not_this: str) -> str:
        return self.rng.choice([v for v in values if v != not_this])

    # exist ---------------------------------------------------------------
    def exist_scene(self, col: str, sh: str, truth: bool, **kw) -> Scene:
        if truth:
            return self.scene(required=[(col, sh)], **kw)
        hard = [(col, self.other(self.s.shapes, sh)), (self.other(self.s.colors, col), sh)]
        return self.scene(required=hard, forbid=lambda c, s: (c, s) == (col, sh), **kw)

    # count ---------------------------------------------------------------
    def random_query(self) -> tuple[str | None, str | None]:
        kind = self.rng.randrange(3)
        col = self.rng.choice(self.s.colors) if kind != 1 else None
        sh = self.rng.choice(self.s.shapes) if kind != 0 else None
        return col, sh

    def count_scene(self, q: tuple[str | None, str | None], k: int, **kw) -> Scene:
        col, sh = q
        req = [
            (col or self.rng.choice(self.s.colors), sh or self.rng.choice(self.s.shapes)) for _ in range(k)
        ]
        n_total = max(k, self.n_objects())
        return self.scene(required=req, forbid=lambda c, s: matches(q, c, s), n_total=n_total, **kw)

    # spatial -------------------------------------------------------------
    def two_types(self) -> tuple[tuple[str, str], tuple[str, str]]:
        a = self.rng.choice(self.types)
        b = self.rng.choice([t for t in self.types if t != a])
        return a, b

    def spatial_scene(self, a: tuple[str, str], rel: str, b: tuple[str, str], truth: bool, **kw) -> Scene:
        """A and B each present once; ``rel`` holds iff ``truth`` (strictly, on distinct rows/columns)."""
        g, rng = self.s.grid, self.rng
        i, j = sorted(rng.sample(range(g), 2))  # i < j
        if rel in ("right of", "below"):
            i, j = j, i
        if not truth:
            i, j = j, i
        other_a, other_b = rng.randrange(g), rng.randrange(g)
        if other_a == other_b:
            other_b = (other_b + rng.randrange(1, g)) % g
        if rel in ("left of", "right of"):
            pa, pb = (other_a, i), (other_b, j)
        else:
            pa, pb = (i, other_a), (j, other_b)
        placed = [(*pa, *a), (*pb, *b)]
        return self.scene(placed=placed, forbid=lambda c, s: (c, s) in (a, b), **kw)

    # region --------------------------------------------------------------
    def in_region(self, cell: tuple[int, int], region: str) -> bool:
        r, c = cell
        half = self.s.grid // 2
        return {"left": c < half, "right": c >= half, "top": r < half, "bottom": r >= half}[region]

    def region_scene(self, col: str, sh: str, region: str, truth: bool, k: int = 0) -> Scene:
        """One ``col sh`` in ``region`` (truth); else, alternating with ``k``: one ``col sh`` in the other half
        only, or the colour and the shape in ``region`` on different objects and no ``col sh`` anywhere."""
        rng = self.rng
        inside = [cell for cell in self.cells if self.in_region(cell, region)]
        outside = [cell for cell in self.cells if not self.in_region(cell, region)]
        not_type = lambda c, s: (c, s) == (col, sh)  # noqa: E731
        if truth:
            placed = [(*rng.choice(inside), col, sh)]
        elif k % 2 == 0:
            placed = [(*rng.choice(outside), col, sh)]
        else:
            a, b = rng.sample(inside, 2)
            placed = [(*a, col, self.other(self.s.shapes, sh)), (*b, self.other(self.s.colors, col), sh)]
        return self.scene(placed=placed, forbid=not_type)

    # rendering -------------------------------------------------------------
    def render(self, scene: Scene) -> Image.Image:
        s = self.s
        cell = s.image_size // s.grid
        arr = np.empty((s.image_size, s.image_size, 3), dtype=np.uint8)
        arr[:] = BACKGROUND
        for r, c, col, sh in scene.objects:
            view = arr[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
            view[self._masks[sh]] = COLORS[col]
        for r, c in scene.occluders:
            arr[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = OCCLUDER
        return Image.fromarray(arr)


def _shape_masks(cell: int) -> dict[str, np.ndarray]:
    """Boolean cell x cell masks, objects filling about 3/4 of the cell with a margin."""
    yy, xx = np.mgrid[0:cell, 0:cell] + 0.5
    m = cell / 8  # margin
    cx = cy = cell / 2
    half = cell / 2 - m
    t = cell / 6
    return {
        "circle": (xx - cx) ** 2 + (yy - cy) ** 2 <= half**2,
        "square": (np.abs(xx - cx) <= half * 0.85) & (np.abs(yy - cy) <= half * 0.85),
        "triangle": (yy >= m)
        & (yy <= cell - m)
        & (np.abs(xx - cx) <= (yy - m) / 2 * (2 * half / (cell - 2 * m))),
        "cross": ((np.abs(xx - cx) <= t / 2) | (np.abs(yy - cy) <= t / 2))
        & (np.abs(xx - cx) <= half)
        & (np.abs(yy - cy) <= half),
    }


def known_families(task: str) -> tuple[str, ...]:
    """Every family a suite of ``task`` may name: the default mix, then the optional ones."""
    return TASK_FAMILIES[task] + OPTIONAL_FAMILIES.get(task, ())


def matches(q: tuple[str | None, str | None], col: str, sh: str) -> bool:
    qc, qs = q
    return (qc is None or qc == col) and (qs is None or qs == sh)


def count_matching(scene: Scene, q: tuple[str | None, str | None]) -> int:
    return sum(matches(q, c, s) for _, _, c, s in scene.objects)


def plural(sh: str) -> str:
    return sh + "es" if sh.endswith(("s", "x")) else sh + "s"


def query_text(q: tuple[str | None, str | None], n: int) -> str:
    col, sh = q
    noun = sh if sh else "object"
    if n != 1:
        noun = plural(noun)
    return f"{col} {noun}" if col else noun


def caption(scene: Scene, rng: random.Random) -> str:
    """Describe the visible objects: grouped counts, then one spatial relation when there are two or more."""
    groups = Counter((c, s) for _, _, c, s in scene.objects)
    singles = [o for o in scene.objects if groups[(o[2], o[3])] == 1]
    relation = None
    if len(singles) >= 2:
        a, b = rng.sample(singles, 2)
        if a[1] != b[1]:
            rel = "left of" if a[1] < b[1] else "right of"
        elif a[0] != b[0]:
            rel = "above" if a[0] < b[0] else "below"
        else:
            rel = ""
        if rel:
            relation = ((a[2], a[3]), rel, (b[2], b[3]))
    return format_caption(dict(groups), relation)


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def parse_caption(text: str) -> tuple[dict[tuple[str, str], int], tuple | None] | None:
    """Invert :func:`caption`: ``({(colour, shape): count}, (a, relation, b) or None)``; None if not parseable."""
    singular = {plural(s): s for s in SHAPES}
    groups_text, _, rel_text = text.partition("; ")
    if groups_text == "an empty grid":
        return None
    items = groups_text.split(", ")
    last = items.pop().split(" and ")
    items += last
    groups: dict[tuple[str, str], int] = {}
    for item in items:
        words = item.split(" ")
        if len(words) != 3 or words[1] not in COLORS:
            return None
        if words[0] == "a" and words[2] in SHAPES:
            n, sh = 1, words[2]
        elif words[0] in NUMBER_WORDS and words[2] in singular:
            n, sh = NUMBER_WORDS.index(words[0]), singular[words[2]]
        else:
            return None
        groups[(words[1], sh)] = n
    rel = None
    if rel_text:
        for r in RELATIONS:
            left, sep, right = rel_text.partition(f" is {r} ")
            if sep:
                a, b = left.split(" ")[1:], right.split(" ")[1:]
                if len(a) != 2 or len(b) != 2:
                    return None
                rel = ((a[0], a[1]), r, (b[0], b[1]))
                break
        if rel is None:
            return None
    return groups, rel


def format_caption(groups: dict[tuple[str, str], int], rel: tuple | None) -> str:
    """The caption text of parsed ``(groups, rel)``, in :func:`caption`'s exact format."""
    parts = []
    for (c, s), n in sorted(groups.items()):
        parts.append(f"a {c} {s}" if n == 1 else f"{NUMBER_WORDS[n]} {c} {plural(s)}")
    if not parts:
        return "an empty grid"
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if rel is not None:
        (ac, ash), r, (bc, bsh) = rel
        text += f"; the {ac} {ash} is {r} the {bc} {bsh}"
    return text


def family_of(text: str) -> str | None:
    """The statement family of a task text this generator wrote (exist, count, spatial, compare, attribute, region),
    from its wording; None for a text it would not write. Used to break accuracy down by family."""
    t = text.strip().lower()
    if t.startswith("is there a ") and t.rstrip("?").endswith(tuple(f" in the {r} half" for r in REGIONS)):
        return "region"
    if any(f" {rel} " in f" {t.rstrip('?')} " for rel in RELATIONS):
        return "spatial"
    if " exactly " in t or " at least " in t or t.startswith("how many "):
        return "count"
    if " more " in t:
        return "compare"
    if t.startswith(("what color is the ", "what shape is the ")):
        return "attribute"
    if " contain a " in t or " contains a " in t or t.startswith(("there is a ", "is there a ")):
        return "exist"
    return None


def caption_negatives(
    text: str,
    colors: Sequence[str],
    shapes: Sequence[str],
    objects: tuple[int, int],
) -> list[str]:
    """Every minimal edit of a caption that makes it false of its image, in the caption's own format.

    Edits: the relation reversed ("left of" <-> "right of", "above" <-> "below"); one group's colour or shape
    changed (counts merged when the new type is already listed); one group's count changed by one. Groups named
    in the relation are left alone (they must stay single) and totals stay within ``objects``, so a negative is
    a caption some scene of the world could have and only the image tells it from the truth. The group list
    is exhaustive, so every group edit changes the counts and is false; the reversed relation is false."""
    parsed = parse_caption(text)
    if parsed is None:
        return []
    groups, rel = parsed
    named = {rel[0], rel[2]} if rel else set()
    total = sum(groups.values())
    out: list[str] = []
    if rel is not None:
        out.append(format_caption(groups, (rel[0], _OPPOSITE[rel[1]], rel[2])))
    for (c, s), n in sorted(groups.items()):
        if (c, s) in named:
            continue
        rest = {k: v for k, v in groups.items() if k != (c, s)}
        for t in [(c2, s) for c2 in colors if c2 != c] + [(c, s2) for s2 in shapes if s2 != s]:
            if t in named:
                continue
            g = dict(rest)
            g[t] = g.get(t, 0) + n
            if max(g.values()) < len(NUMBER_WORDS):
                out.append(format_caption(g, rel))
        for n2 in (n - 1, n + 1):
            if 1 <= n2 < len(NUMBER_WORDS) and objects[0] <= total - n + n2 <= objects[1]:
                out.append(format_caption({**groups, (c, s): n2}, rel))

    def plausible(neg: str) -> bool:  # caption() names a relation exactly when two or more types are single
        g, r = parse_caption(neg)  # type: ignore[misc]
        return (sum(v == 1 for v in g.values()) >= 2) == (r is not None)

    return sorted(n for n in set(out) - {text} if plausible(n))


# --- tasks ----------------------------------------------------------------------------------------------


def _nlvr2_statement(w: World, family: str) -> tuple[str, Callable[[bool], tuple[Scene, Scene]]]:
    """A sentence and a builder of an image pair (left, right) on which it has a given truth value."""
    rng = w.rng
    side = rng.choice(("left", "right"))

    def place(named: Scene, truth_free: Callable[[], Scene]) -> tuple[Scene, Scene]:
        return (named, truth_free()) if side == "left" else (truth_free(), named)

    if family == "exist":
        col, sh = rng.choice(w.types)
        if rng.random() < 0.25:
            text = f"both images contain a {col} {sh}"

            def build(truth: bool) -> tuple[Scene, Scene]:
                if truth:
                    return w.exist_scene(col, sh, True), w.exist_scene(col, sh, True)
                pair = [w.exist_scene(col, sh, False), w.exist_scene(col, sh, rng.random() < 0.5)]
                rng.shuffle(pair)
                return pair[0], pair[1]

            return text, build
        text = f"the {side} image contains a {col} {sh}"
        return text, lambda truth: place(
            w.exist_scene(col, sh, truth), lambda: w.exist_scene(col, sh, rng.random() < 0.5)
        )
    if family == "count":
        q = w.random_query()
        k = rng.randint(1, 3)
        text = f"the {side} image contains exactly {NUMBER_WORDS[k]} {query_text(q, k)}"

        def build(truth: bool) -> tuple[Scene, Scene]:
            n = k if truth else rng.choice([k - 1, k + 1])
            return place(w.count_scene(q, n), lambda: w.count_scene(q, rng.randint(0, 3)))

        return text, build
    if family == "spatial":
        a, b = w.two_types()
        rel = rng.choice(RELATIONS)
        text = f"in the {side} image the {a[0]} {a[1]} is {rel} the {b[0]} {b[1]}"
        return text, lambda truth: place(
            w.spatial_scene(a, rel, b, truth), lambda: w.spatial_scene(a, rel, b, rng.random() < 0.5)
        )
    if family == "compare":
        q = w.random_query()
        text = f"the left image contains more {query_text(q, 2)} than the right image"

        def build(truth: bool) -> tuple[Scene, Scene]:
            x, y = sorted(rng.sample(range(4), 2))
            if truth:
                lc, rc = y, x
            elif rng.random() < 0.5:
                lc, rc = x, y
            else:
                lc = rc = rng.randint(0, 3)
            return w.count_scene(q, lc), w.count_scene(q, rc)

        return text, build
    raise UserError(f"unknown nlvr2 family {family!r}; known: {', '.join(TASK_FAMILIES['nlvr2'])}")


def _vqa_question(w: World, family: str, j: int) -> tuple[str, str, str, str, Scene, list[str]]:
    """(question, answer, question_type, answer_type, scene, near answers) with the answer chosen by ``j``."""
    rng, s = w.rng, w.s
    if family == "exist":
        col, sh = rng.choice(w.types)
        truth = j % 2 == 0
        ans = "yes" if truth else "no"
        return (
            f"is there a {col} {sh}?",
            ans,
            "is there a",
            "yes/no",
            w.exist_scene(col, sh, truth),
            ["no" if truth else "yes"],
        )
    if family == "count":
        q = w.random_query()
        k = j % 5
        near = [str(n) for n in (k - 1, k + 1) if 0 <= n <= 5]
        return (
            f"how many {query_text(q, 2)} are there?",
            str(k),
            "how many",
            "number",
            w.count_scene(q, k),
            near,
        )
    if family == "attribute":
        if j % 2 == 0:
            sh = rng.choice(s.shapes)
            col = s.colors[(j // 2) % len(s.colors)]
            scene = w.scene(required=[(col, sh)], forbid=lambda c, x: x == sh)
            near = [c for c in s.colors if c != col]
            return f"what color is the {sh}?", col, "what color is the", "other", scene, near
        col = rng.choice(s.colors)
        sh = s.shapes[(j // 2) % len(s.shapes)]
        scene = w.scene(required=[(col, sh)], forbid=lambda c, x: c == col)
        near = [x for x in s.shapes if x != sh]
        return f"what shape is the {col} object?", sh, "what shape is the", "other", scene, near
    if family == "spatial":
        a, b = w.two_types()
        rel = rng.choice(RELATIONS)
        truth = j % 2 == 0
        ans = "yes" if truth else "no"
        q = f"is the {a[0]} {a[1]} {rel} the {b[0]} {b[1]}?"
        return q, ans, "is the", "yes/no", w.spatial_scene(a, rel, b, truth), ["no" if truth else "yes"]
    if family == "region":
        col, sh = rng.choice(w.types)
        region = REGIONS[(j // 2) % len(REGIONS)]
        truth = j % 2 == 0
        ans = "yes" if truth else "no"
        q = f"is there a {col} {sh} in the {region} half?"
        return (
            q,
            ans,
            "is there a",
            "yes/no",
            w.region_scene(col, sh, region, truth, j // 2),
            ["no" if truth else "yes"],
        )
    raise UserError(f"unknown vqa family {family!r}; known: {', '.join(known_families('vqa'))}")


SNLI_LABELS = ("entailment", "neutral", "contradiction")


def _snli_hypothesis(w: World, family: str, label: str) -> tuple[str, Scene]:
    rng = w.rng
    occ_ent = rng.randint(0, 1)  # entailment: occluders half of the time
    if family == "exist":
        col, sh = rng.choice(w.types)
        text = f"there is a {col} {sh}"
        if label == "entailment":
            return text, w.exist_scene(col, sh, True, n_occluders=occ_ent)
        return text, w.exist_scene(col, sh, False, n_occluders=1 if label == "neutral" else 0)
    if family == "count":
        q = w.random_query()
        k = rng.randint(1, 3)
        text = f"there {'is' if k == 1 else 'are'} at least {NUMBER_WORDS[k]} {query_text(q, k)}"
        if label == "entailment":
            return text, w.count_scene(q, rng.choice([k, k + 1]), n_occluders=occ_ent)
        if label == "neutral":
            return text, w.count_scene(q, k - 1, n_occluders=1)
        return text, w.count_scene(q, rng.randint(max(0, k - 2), k - 1), n_occluders=0)
    if family == "spatial":
        a, b = w.two_types()
        rel = rng.choice(RELATIONS)
        text = f"the {a[0]} {a[1]} is {rel} the {b[0]} {b[1]}"
        if label == "entailment":
            return text, w.spatial_scene(a, rel, b, True, n_occluders=occ_ent)
        if label == "contradiction":
            return text, w.spatial_scene(a, rel, b, False, n_occluders=0)
        keep, drop = (a, b) if rng.random() < 0.5 else (b, a)
        return text, w.scene(required=[keep], forbid=lambda c, s: (c, s) in (a, b), n_occluders=1)
    raise UserError(f"unknown snli-ve family {family!r}; known: {', '.join(TASK_FAMILIES['snli-ve'])}")


# --- writers --------------------------------------------------------------------------------------------


def _dump_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=False) + "\n")


def _save(im: Image.Image, path: Path, quality: int) -> None:
    if path.suffix == ".png":
        im.save(path, format="PNG", compress_level=1)
    else:
        im.save(path, format="JPEG", quality=quality, subsampling=0)


def normalize_sizes(task: str, sizes: dict[str, int] | None) -> dict[str, int]:
    """Fill defaults and map suite keys (VQA ``train``/``val``) to split names (``train2014``/``val2014``)."""
    if task not in TASK_FAMILIES:
        raise UserError(f"unknown task {task!r}; known tasks: {', '.join(TASK_FAMILIES)}")
    if not sizes:
        return dict(DEFAULT_SIZES[task])
    out = {}
    for k, v in sizes.items():
        split = SPLIT_ALIASES.get(task, {}).get(k, k)
        if split not in DEFAULT_SIZES[task]:
            raise UserError(f"unknown {task} split {k!r}; known: {', '.join(DEFAULT_SIZES[task])}")
        if int(v) < 0:
            raise UserError(f"split size for {k!r} must be >= 0, got {v}")
        out[split] = int(v)
    return out


def synthesize(
    task: str,
    out_dir: Path,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    families: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
    **world: object,
) -> dict:
    """Write a synthetic ``task`` data folder at ``out_dir`` in the original file formats; returns the stats.

    ``sizes``: examples per split (NLVR2 counts examples, i.e. two per sentence; odd sizes round down to even).
    ``families``: which statement families to mix (round-robin); default all of the task's families.
    ``world``: other :class:`WorldSettings` fields (colors, shapes, image_size, grid, objects, ...).
    ``progress`` is called with the number of examples just written.
    """
    sizes = normalize_sizes(task, sizes)
    fams = tuple(families) if families else TASK_FAMILIES[task]
    bad = [f for f in fams if f not in known_families(task)]
    if bad:
        raise UserError(
            f"unknown {task} families: {', '.join(bad)}; known: {', '.join(known_families(task))}"
        )
    for key in ("colors", "shapes", "objects"):
        if key in world:
            world[key] = tuple(world[key])  # type: ignore[arg-type]
    settings = WorldSettings(task=task, seed=seed, sizes=sizes, families=fams, **world)  # type: ignore[arg-type]
    if any(c not in COLORS for c in settings.colors) or any(s not in SHAPES for s in settings.shapes):
        raise UserError(f"colours must be among {', '.join(COLORS)} and shapes among {', '.join(SHAPES)}")
    if len(settings.colors) < 2 or len(settings.shapes) < 2:
        raise UserError(
            "the world needs at least two colours and two shapes (hard negatives need distractors)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stats: dict = {"task": task, "settings": asdict(settings), "splits": {}}
    captions: list[dict] = []
    texts: list[str] = []
    writer = {"nlvr2": _write_nlvr2, "vqa": _write_vqa, "snli-ve": _write_snli_ve}[task]
    for split_idx, (split, n) in enumerate(sizes.items()):
        rng = random.Random(f"dde-bench/{task}/{seed}/{split}")
        w = World(settings, rng)
        split_stats, split_texts, split_caps = writer(w, out_dir, split, split_idx, n, progress)
        stats["splits"][split] = split_stats
        if split in ("train", "train2014"):
            texts += split_texts
            captions += split_caps
    from dde_bench.data.readers import COCO_CAPTIONS, write_coco_captions

    write_coco_captions(out_dir / COCO_CAPTIONS, [(c["image"], c["caption"]) for c in captions])
    from dde_bench.data.tokenize import train_wordpiece

    train_wordpiece(texts + [c["caption"] for c in captions], out_dir, vocab_size=settings.vocab_size)
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def _balance(labels: list, families: list) -> dict:
    return {
        "n": len(labels),
        "labels": dict(sorted(Counter(labels).items())),
        "families": dict(sorted(Counter(families).items())),
    }


def _write_nlvr2(
    w: World, out: Path, split: str, split_idx: int, n: int, progress
) -> tuple[dict, list, list]:
    rows, labels, fams, caps = [], [], [], []
    fam_list = w.s.families
    for set_id in range(n // 2):
        family = fam_list[set_id % len(fam_list)]
        text, build = _nlvr2_statement(w, family)
        true_pair = w.rng.randrange(2)
        directory = str(set_id % 10)
        img_dir = out / "images" / "train" / directory if split == "train" else out / split
        img_dir.mkdir(parents=True, exist_ok=True)
        for pair in (0, 1):
            truth = pair == true_pair
            left, right = build(truth)
            prefix = f"{split}-{set_id}-{pair}"
            for k, scene in enumerate((left, right)):
                path = img_dir / f"{prefix}-img{k}.png"
                _save(w.render(scene), path, w.s.jpeg_quality)
                if split == "train":
                    caps.append(
                        {
                            "image": str(path.relative_to(out)),
                            "caption": caption(scene, w.rng),
                            "split": split,
                        }
                    )
            row = {
                "validation": {},
                "sentence": text,
                "left_url": f"synthetic://{prefix}-img0.png",
                "writer": "synth",
                "label": "True" if truth else "False",
                "right_url": f"synthetic://{prefix}-img1.png",
                "synset": family,
                "query": family,
                "identifier": f"{prefix}-0",
                "extra_validations": {},
            }
            if split == "train":
                row["directory"] = directory
            rows.append(row)
            labels.append(row["label"])
            fams.append(family)
            if progress:
                progress(1)
    _dump_jsonl(out / f"{split}.json", rows)
    return _balance(labels, fams), [r["sentence"] for r in rows], caps


def _write_vqa(w: World, out: Path, split: str, split_idx: int, n: int, progress) -> tuple[dict, list, list]:
    img_dir = out / split
    img_dir.mkdir(parents=True, exist_ok=True)
    questions, anns, labels, fams, caps = [], [], [], [], []
    fam_list = w.s.families
    for i in range(n):
        family = fam_list[i % len(fam_list)]
        q, ans, qtype, atype, scene, near = _vqa_question(w, family, i // len(fam_list))
        image_id = (split_idx + 1) * 1_000_000 + i
        qid = image_id * 10
        path = img_dir / f"COCO_{split}_{image_id:012d}.jpg"
        _save(w.render(scene), path, w.s.jpeg_quality)
        n_true = w.rng.randint(6, 10)
        raw = [ans] * n_true + [w.rng.choice(near) for _ in range(10 - n_true)]
        w.rng.shuffle(raw)
        answers = [
            {
                "answer": a,
                "answer_confidence": "yes" if a == ans else w.rng.choice(("maybe", "no")),
                "answer_id": k + 1,
            }
            for k, a in enumerate(raw)
        ]
        questions.append({"image_id": image_id, "question": q, "question_id": qid})
        anns.append(
            {
                "question_type": qtype,
                "multiple_choice_answer": ans,
                "answers": answers,
                "image_id": image_id,
                "answer_type": atype,
                "question_id": qid,
            }
        )
        if split.startswith("train"):
            caps.append(
                {"image": str(path.relative_to(out)), "caption": caption(scene, w.rng), "split": split}
            )
        labels.append(ans)
        fams.append(family)
        if progress:
            progress(1)
    common = {
        "info": {"description": "dde-bench synthetic world"},
        "license": {"name": "CC0"},
        "data_subtype": split,
    }
    q_obj = {**common, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions}
    a_obj = {**common, "data_type": "mscoco", "annotations": anns}
    (out / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps(q_obj), encoding="utf-8")
    (out / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps(a_obj), encoding="utf-8")
    return _balance(labels, fams), [r["question"] for r in questions], caps


def _write_snli_ve(
    w: World, out: Path, split: str, split_idx: int, n: int, progress
) -> tuple[dict, list, list]:
    img_dir = out / "flickr30k_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows, labels, fams, caps = [], [], [], []
    fam_list = w.s.families
    for i in range(n):
        family = fam_list[i % len(fam_list)]
        label = SNLI_LABELS[(i // len(fam_list)) % 3]
        hyp, scene = _snli_hypothesis(w, family, label)
        fid = (split_idx + 1) * 10_000_000 + i
        path = img_dir / f"{fid}.jpg"
        _save(w.render(scene), path, w.s.jpeg_quality)
        premise = caption(scene, w.rng)
        rows.append(
            {
                "Flickr30K_ID": str(fid),
                "sentence1": premise,
                "sentence2": hyp,
                "gold_label": label,
                "pairID": f"{fid}.jpg#0r1{label[0]}",
                "captionID": f"{fid}.jpg#0",
            }
        )
        if split == "train":
            caps.append({"image": str(path.relative_to(out)), "caption": premise, "split": split})
        labels.append(label)
        fams.append(family)
        if progress:
            progress(1)
    _dump_jsonl(out / f"snli_ve_{split}.jsonl", rows)
    return _balance(labels, fams), [r["sentence2"] for r in rows], caps


# --- the pre-training caption pool ------------------------------------------------------------------------

POOL_SPLITS = ("train2014", "val2014")  # pre-training captions / held-out captions for the ITM accuracy


def _image_digests(folder: Path) -> set[str]:
    """SHA-1 of the bytes of every image file under ``folder`` (the generator's JPEG/PNG encoding is
    deterministic, so one scene rendered twice gives the same bytes)."""
    import hashlib

    return {
        hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file()
    }


def captions(
    task_dir: Path,
    out_dir: Path,
    n: int,
    n_val: int = 500,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """A pre-training caption pool for the world of the task folder ``task_dir``, written at ``out_dir``.

    ``n`` images (``train2014/``) and ``n_val`` held-out ones (``val2014/``) of the task's world (its colours,
    shapes, object counts, image size, read from ``task_dir/stats.json``), each with one caption, in COCO's
    captions format (``captions_train2014.json``, ``captions_val2014.json``). The pool is separate from the task:
    its scenes come from their own random stream (``dde-bench/pool/{task}/{seed}``) and any rendering byte-equal
    to an image of the task folder (any split) is drawn again, so no task image is in the pool. Deterministic
    for the task folder, ``n``, ``n_val`` and ``seed``. Returns the stats (also ``stats.json``)."""
    import hashlib
    import io

    from dde_bench.data.readers import write_coco_captions

    task_dir, out_dir = Path(task_dir), Path(out_dir)
    stats_path = task_dir / "stats.json"
    if not stats_path.is_file():
        raise UserError(f"{task_dir}: no stats.json; a caption pool is made for a synthetic world's folder")
    if n < 2 or n_val < 0:
        raise UserError(f"a caption pool needs at least 2 images (got {n}) and n_val >= 0 (got {n_val})")
    task_stats = json.loads(stats_path.read_text(encoding="utf-8"))
    s = dict(task_stats["settings"])
    for key in ("colors", "shapes", "objects", "families"):
        s[key] = tuple(s[key])
    settings = WorldSettings(**{**s, "seed": seed})
    taken = _image_digests(task_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"dde-bench/pool/{settings.task}/{seed}")
    w = World(settings, rng)
    redrawn = 0
    counts = {}
    for split, size in zip(POOL_SPLITS, (n, n_val), strict=True):
        (out_dir / split).mkdir(exist_ok=True)
        pairs = []
        for i in range(size):
            while True:
                scene = w.scene()
                buf = io.BytesIO()
                w.render(scene).save(buf, format="JPEG", quality=settings.jpeg_quality, subsampling=0)
                data = buf.getvalue()
                digest = hashlib.sha1(data).hexdigest()
                if digest not in taken:
                    break
                redrawn += 1
            name = f"{split}/POOL_{split}_{i:012d}.jpg"
            (out_dir / name).write_bytes(data)
            pairs.append((name, caption(scene, rng)))
            if progress:
                progress(1)
        write_coco_captions(out_dir / f"captions_{split}.json", pairs)
        counts[split] = size
    stats = {
        "kind": "caption pool",
        "task": settings.task,
        "seed": seed,
        "images": counts,
        "task_train_images": _train_images(task_stats),
        "redrawn_task_images": redrawn,
        "world": {k: s[k] for k in ("colors", "shapes", "objects", "image_size", "grid", "jpeg_quality")},
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def _train_images(task_stats: dict) -> int:
    """Images in a task folder's training split (NLVR2: two per example)."""
    task = task_stats["task"]
    split = "train2014" if task == "vqa" else "train"
    n = task_stats["splits"][split]["n"]
    return 2 * n if task == "nlvr2" else n
