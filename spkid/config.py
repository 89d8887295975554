"""Run configuration: one dataclass per concern, named presets, file loading and dotted overrides.

``RunConfig`` nests ``DataConfig``, ``ModelConfig`` and ``TrainConfig``. Presets live in ``PRESETS``;
``load_config("default")`` or ``load_config("my.json")`` returns a resolved, validated ``RunConfig``;
``apply_overrides(cfg, ["model.n_layers=4", "train.lr=3e-4"])`` changes fields with type checks.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from spkid.errors import ConfigError


@dataclass
class DataConfig:
    val_per_speaker: int = 2          # whole utterances held out per speaker (stratified, seeded)
    crop_frames: int = 200            # training crop length (frames); shorter utterances are used whole
    crop_min_frames: int = 0          # >0: crop length drawn uniformly from [crop_min_frames, crop_frames] per batch
    batch_size: int = 64
    spec_time_masks: int = 0          # SpecAugment: number of time masks per training crop
    spec_time_width: int = 20         # ... each up to this many frames
    spec_freq_masks: int = 0          # number of frequency masks per crop
    spec_freq_width: int = 6          # ... each up to this many mel bands


@dataclass
class ModelConfig:
    n_mels: int = 40
    encoder: str = "conformer"        # transformer | conformer | tdnn (ECAPA-style 1-D convolutions)
    norm: str = "global"              # input normalisation: global (train-set mean/std) | cmn (per utterance) | none
    subsample: int = 2                # conv2d time subsampling before the encoder: 1 (prenet Linear), 2 or 4
    d_model: int = 144
    n_heads: int = 4
    n_layers: int = 2
    ffn_dim: int = 576                # transformer/conformer FFN width; tdnn: channels after layer aggregation
    dropout: float = 0.1
    conv_kernel: int = 15             # conformer depthwise conv kernel / tdnn dilated conv kernel (odd)
    norm_first: bool = True           # transformer: pre-norm (True) or post-norm as in the HW4 sample (False)
    pos_enc: str = "rope"             # rope | none (the HW4 sample has no positional encoding)
    attention: str = "full"           # full | linformer | local | sparse | adaptive
    attention_params: dict = field(default_factory=dict)
    pooling: str = "mean"             # mean | sap | asp
    embed_dim: int = 0                # >0: linear bottleneck after pooling (the speaker embedding); 0: pooled vector
    head: str = "softmax"             # softmax | am | aam
    margin: float = 0.2               # am/aam margin
    scale: float = 30.0               # am/aam scale
    label_smoothing: float = 0.0


@dataclass
class TrainConfig:
    steps: int = 70000                # total steps when no time budget is given
    max_minutes: float = 0.0          # >0: wall-clock budget; the LR schedule follows elapsed time fraction
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 1000          # with a time budget: warmup over this many steps or 5% of the budget
    grad_clip: float = 5.0
    margin_warmup: float = 0.0        # fraction of training over which am/aam margin ramps from 0 to full
    average_last: float = 0.0         # >0: final weights = mean of snapshots taken over this last fraction of training
    average_every: int = 10           # steps between averaged snapshots
    span_penalty: float = 1e-3        # adaptive attention: L1 weight on the learned spans (mean span, frames)
    val_every: int = 0                # steps between validations (0: only at the end; also every val_minutes)
    val_minutes: float = 2.0          # with a time budget: validate at most this often
    ckpt_every: int = 500             # steps between last.ckpt writes
    amp: str = "none"                 # none | bf16 | fp16 (CUDA only) | auto (bf16 where the hardware has it)
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int = 0                  # torch CPU threads (0: leave torch's default)


@dataclass
class InferConfig:
    window: int = 0                   # >0: embed as the mean over windows of this many frames (0: whole utterance)
    hop: int = 0                      # window hop in frames (0: window // 2)
    max_frames: int = 6000            # longer utterances are windowed anyway (bounded memory), window = max_frames
    batch_frames: int = 8000          # frames per length-bucketed batch (CPU sweet spot: 3k-10k, measured)


@dataclass
class RunConfig:
    name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "RunConfig":
        cfg = cls.__new__(cls)
        base = RunConfig()
        for f in dataclasses.fields(cls):
            setattr(cfg, f.name, copy.deepcopy(getattr(base, f.name)))
        _merge(cfg, d, source, prefix="")
        validate(cfg, source)
        return cfg


CHOICES = {
    "model.encoder": ("transformer", "conformer", "tdnn"),
    "model.norm": ("global", "cmn", "none"),
    "model.subsample": (1, 2, 4),
    "model.pos_enc": ("rope", "none"),
    "model.pooling": ("mean", "sap", "asp"),
    "model.head": ("softmax", "am", "aam"),
    "train.amp": ("none", "bf16", "fp16", "auto"),
}


def validate(cfg: RunConfig, source: str = "config") -> None:
    """Cross-field checks; raise ConfigError naming the source and key."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{source}: {key}={value!r}; choose one of {list(allowed)}")
    m, d, t = cfg.model, cfg.data, cfg.train
    from spkid.models.attention import ATTENTION  # the registry is the list of valid names
    if m.attention not in ATTENTION:
        raise ConfigError(f"{source}: model.attention={m.attention!r}; choose one of {sorted(ATTENTION)}")
    if m.encoder == "tdnn":       # settings the convolutional encoder has no use for are errors, not no-ops
        if m.attention != "full":
            raise ConfigError(f"{source}: model.attention={m.attention!r} needs an attention encoder (transformer "
                              "or conformer), not model.encoder='tdnn'; try --config conformer")
        if m.dropout > 0:
            raise ConfigError(f"{source}: model.dropout={m.dropout} is not used by model.encoder='tdnn'; set it to 0")
    elif m.d_model % m.n_heads:
        raise ConfigError(f"{source}: model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads})")
    if m.conv_kernel % 2 == 0:
        raise ConfigError(f"{source}: model.conv_kernel must be odd, got {m.conv_kernel}")
    for key, value in [("model.n_layers", m.n_layers), ("data.crop_frames", d.crop_frames),
                       ("data.batch_size", d.batch_size), ("model.d_model", m.d_model)]:
        if value < 1:
            raise ConfigError(f"{source}: {key} must be >= 1, got {value}")
    if d.crop_min_frames > d.crop_frames:
        raise ConfigError(f"{source}: data.crop_min_frames ({d.crop_min_frames}) > data.crop_frames ({d.crop_frames})")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"{source}: model.dropout must be in [0, 1), got {m.dropout}")
    i = cfg.infer
    if i.window < 0 or i.hop < 0 or i.max_frames < 16 or i.batch_frames < 1:
        raise ConfigError(f"{source}: infer.window/hop must be >= 0, infer.max_frames >= 16, infer.batch_frames >= 1")
    if t.steps < 1 and t.max_minutes <= 0:
        raise ConfigError(f"{source}: need train.steps >= 1 or train.max_minutes > 0")


def _merge(obj, d: dict, source: str, prefix: str) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a table/object")
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in d.items():
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{source}: unknown key {prefix + key!r}{extra}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, source, prefix + key + ".")
        else:
            setattr(obj, key, _coerce(current, value, f"{source}: {prefix + key}"))


def _coerce(current, value, where: str):
    """Check ``value`` has the type of the default ``current`` (int accepted for float)."""
    kind = type(current)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, kind):
        return value
    raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")


def _parse_value(text: str):
    """Parse an override value: JSON when it parses (numbers, true/false, {...}), else a plain string."""
    low = text.strip()
    if low in ("True", "False"):
        return low == "True"
    try:
        return json.loads(low)
    except json.JSONDecodeError:
        return low


def apply_overrides(cfg: RunConfig, overrides: list[str], source: str = "--set") -> RunConfig:
    """Return a copy of ``cfg`` with ``section.key=value`` overrides applied and validated."""
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: expected key=value, got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or parts[0] not in ("data", "model", "train", "infer"):
            raise ConfigError(f"{source}: key {key!r} must look like data.x, model.x, train.x or infer.x")
        d[parts[0]][parts[1]] = _parse_value(text)
    return RunConfig.from_dict(d, source)


def _preset_default() -> RunConfig:
    """Best recipe found for learning per second on a 2-core CPU (see docs/results.md).

    An ECAPA-style TDNN (1-D convolutions: a CPU runs them near its peak, and BatchNorm keeps them stable at a
    high learning rate) after 2x time subsampling; attentive statistics pooling; cross-entropy with label
    smoothing (it beat AAM-softmax at this budget); bf16 autocast where the hardware does bf16 natively
    (1.5x the steps on an AVX512-BF16 CPU); crops of 0.5-1.5 s: cheaper steps than longer crops, short test
    utterances in-domain, and no worse on whole utterances.
    """
    return RunConfig(
        name="default",
        data=DataConfig(val_per_speaker=2, crop_frames=150, crop_min_frames=50, batch_size=64),
        model=ModelConfig(encoder="tdnn", subsample=2, d_model=128, n_layers=3, ffn_dim=384, conv_kernel=3,
                          dropout=0.0, pooling="asp", head="softmax", label_smoothing=0.1),
        train=TrainConfig(max_minutes=10.0, lr=2e-3, warmup_steps=100, weight_decay=0.05, amp="auto"),
    )


def _preset_conformer() -> RunConfig:
    """The best Conformer found for a 2-core CPU (the default before the TDNN; see docs/results.md).

    4x time subsampling and a narrow FFN keep a step cheap; no dropout (Bernoulli sampling costs a quarter of
    a CPU step and ten minutes of crops do not overfit); AAM-softmax with its margin ramped in over the first
    20% (a full margin from step 0 learns slowly); crops of 1-3 s so that short test utterances are in-domain.
    """
    return RunConfig(
        name="conformer",
        data=DataConfig(val_per_speaker=2, crop_frames=300, crop_min_frames=100, batch_size=64),
        model=ModelConfig(encoder="conformer", subsample=4, d_model=128, n_heads=4, n_layers=3, ffn_dim=256,
                          dropout=0.0, conv_kernel=15, pooling="asp", head="aam", margin=0.2, scale=30.0),
        train=TrainConfig(max_minutes=10.0, lr=2e-3, warmup_steps=100, weight_decay=0.05, margin_warmup=0.2),
    )


def _preset_hw4_sample() -> RunConfig:
    """The original HW4 sample: prenet 40->80, one post-norm Transformer layer (ff 256, 2 heads), mean pooling."""
    return RunConfig(
        name="hw4-sample",
        data=DataConfig(crop_frames=128, batch_size=32),
        model=ModelConfig(encoder="transformer", norm="none", subsample=1, d_model=80, n_heads=2, n_layers=1,
                          ffn_dim=256, dropout=0.1, norm_first=False, pos_enc="none", pooling="mean",
                          head="softmax"),
        train=TrainConfig(steps=70000, lr=1e-3, weight_decay=0.01, warmup_steps=1000, grad_clip=0.0),
    )


def _preset_tiny() -> RunConfig:
    """Very small and fast: tests and the offline demo."""
    return RunConfig(
        name="tiny",
        data=DataConfig(val_per_speaker=1, crop_frames=100, batch_size=16),
        model=ModelConfig(d_model=32, n_heads=2, n_layers=1, ffn_dim=64, conv_kernel=7, dropout=0.0),
        train=TrainConfig(steps=30, warmup_steps=5, ckpt_every=10),
    )


def _preset_demo() -> RunConfig:
    """The offline demo: a small Conformer that learns a 16-speaker synthetic corpus in a minute or two."""
    return RunConfig(
        name="demo",
        data=DataConfig(val_per_speaker=2, crop_frames=150, crop_min_frames=80, batch_size=32),
        model=ModelConfig(d_model=64, n_heads=4, n_layers=2, ffn_dim=128, conv_kernel=15, dropout=0.0,
                          subsample=2, pooling="asp"),
        # a fixed number of steps (same accuracy on any machine), with a time cap for slow ones
        train=TrainConfig(steps=1200, max_minutes=3.0, lr=2e-3, warmup_steps=50, val_every=150, val_minutes=0,
                          ckpt_every=300),
    )


def _preset_hw4_gpu() -> RunConfig:
    """The default recipe scaled for the real HW4 data (600 speakers, 56,666 utterances) on one GPU.

    Ten times the data per speaker and a GPU's step cost make a wider, deeper model with 2x subsampling and a long
    schedule pay off; bf16 autocast; SpecAugment and dropout because 70k steps do overfit.
    """
    return RunConfig(
        name="hw4-gpu",
        data=DataConfig(val_per_speaker=2, crop_frames=400, crop_min_frames=150, batch_size=128,
                        spec_time_masks=2, spec_freq_masks=2),
        model=ModelConfig(encoder="conformer", subsample=2, d_model=256, n_heads=4, n_layers=6, ffn_dim=1024,
                          dropout=0.1, conv_kernel=15, pooling="asp", embed_dim=256, head="aam", margin=0.2,
                          scale=30.0),
        train=TrainConfig(steps=70000, lr=1e-3, warmup_steps=2000, weight_decay=0.05, margin_warmup=0.1,
                          average_last=0.1, average_every=100, amp="bf16", val_every=5000, ckpt_every=1000),
    )


PRESETS = {"default": _preset_default, "conformer": _preset_conformer, "hw4-gpu": _preset_hw4_gpu,
           "hw4-sample": _preset_hw4_sample, "tiny": _preset_tiny, "demo": _preset_demo}


def load_config(name_or_file: str = "default") -> RunConfig:
    """A preset name or a ``.json``/``.toml`` file (keys override the ``default`` preset, or ``base = "<preset>"``)."""
    if name_or_file in PRESETS:
        return PRESETS[name_or_file]()
    path = Path(name_or_file)
    if not path.suffix:
        raise ConfigError(f"unknown config {name_or_file!r}; choose a preset {sorted(PRESETS)} or a .toml/.json file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text()
        d = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: top level must be a table/object")
    base_name = d.pop("base", "default")
    if base_name not in PRESETS:
        raise ConfigError(f"{path}: base {base_name!r} is not a preset; choose one of {sorted(PRESETS)}")
    d.setdefault("name", path.stem)
    merged = PRESETS[base_name]().to_dict()
    for key, value in d.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "attention_params":
            merged[key].update(value)
        else:
            merged[key] = value
    return RunConfig.from_dict(merged, str(path))
