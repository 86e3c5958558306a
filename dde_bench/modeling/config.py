"""Model sizes. One config describes the transformer used by the teacher's joint stack and by each student tower."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from dde_bench.errors import UserError

# the type of each VLConfig field, by its annotation (a string under `from __future__ import annotations`)
_FIELD_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


@dataclass(frozen=True)
class VLConfig:
    """Sizes of a ViLT-style transformer (fusion encoder or one tower of the dual encoder)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_size: int = 3072
    max_text_len: int = 40
    type_vocab_size: int = 2  # BERT token-type embedding (always type 0 here, kept for checkpoint parity)
    modality_type_vocab_size: int = 2  # 0 text, 1 image; 3 for NLVR2 (second image uses type 2)
    image_size: int = 384  # size of the pre-trained position-embedding grid (image_size / patch_size)^2
    patch_size: int = 32
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    qkv_bias: bool = True
    hidden_act: str = "gelu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_grid(self) -> int:
        return self.image_size // self.patch_size

    def __post_init__(self) -> None:
        if self.num_heads < 1 or self.patch_size < 1:
            raise UserError(
                f"num_heads and patch_size must be positive, got {self.num_heads}, {self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise UserError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise UserError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise UserError(f"unsupported hidden_act {self.hidden_act!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "model config") -> VLConfig:
        """A config from a mapping (a checkpoint's ``config``); wrong shapes, unknown keys, wrong types or
        impossible sizes are a UserError starting with ``source`` (the file and key) and naming the key."""
        if not isinstance(d, dict):
            raise UserError(f"{source}: expected a JSON object of model sizes, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"{source}: unknown model config keys: {', '.join(sorted(map(str, unknown)))}")
        try:
            _check_values(d)
            return cls(**d)
        except UserError as e:
            raise UserError(f"{source}: {e}") from None

    def replace(self, **kw) -> VLConfig:
        return replace(self, **kw)


def _check_values(d: dict) -> None:
    """Types and ranges of config values read from a file: integers positive, numbers finite and
    non-negative (layer_norm_eps positive), flags bool, names str. (Configs built in code are trusted: the
    trainer compares shapes through configs with a field zeroed.)"""
    for f in fields(VLConfig):
        if f.name not in d:
            continue
        value, kind = d[f.name], _FIELD_KINDS[f.type]
        if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UserError(f"{f.name} must be a positive integer, got {value!r}")
        if kind is float and (
            not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < float("inf")
        ):
            raise UserError(f"{f.name} must be a non-negative number, got {value!r}")
        if kind in (bool, str) and not isinstance(value, kind):
            raise UserError(f"{f.name} must be a {kind.__name__}, got {value!r}")
    if "layer_norm_eps" in d and d["layer_norm_eps"] <= 0:
        raise UserError(f"layer_norm_eps must be positive, got {d['layer_norm_eps']!r}")


# Named sizes. "b32" is ViLT-B/32 as in the paper; "tiny" trains on 2 CPU cores in minutes.
SIZES: dict[str, VLConfig] = {
    "b32": VLConfig(),
    "tiny": VLConfig(
        vocab_size=1000,
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        mlp_size=256,
        max_text_len=24,
        image_size=64,
        patch_size=16,
        layer_norm_eps=1e-5,
    ),
}


def size_config(name: str, **overrides) -> VLConfig:
    if name not in SIZES:
        raise UserError(f"unknown model size {name!r}; known sizes: {', '.join(SIZES)}")
    return SIZES[name].replace(**overrides) if overrides else SIZES[name]
