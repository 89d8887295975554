"""Run configuration: one dataclass per concern, presets as data files, file loading and dotted overrides.

``RunConfig`` nests ``FeatureConfig`` (the log-mel definition every front end uses), ``DataConfig``,
``AugmentConfig``, ``ModelConfig``, ``TrainConfig`` and ``InferConfig``. Presets are TOML files shipped in
``spkid/configs/`` (``default``, ``conformer``, ``hw4-sample``, ``hw4-gpu``, ``tiny``, ``demo``), each listing only
what differs from the dataclass defaults. ``load_config("default")`` or ``load_config("my.toml")`` returns a
validated ``RunConfig``; ``apply_overrides(cfg, ["model.n_layers=4", "train.lr=3e-4"])`` changes fields with type
checks. Every setting is used or rejected: a setting that the chosen encoder, head or attention would ignore must
stay at its default, or validation raises ``ConfigError`` naming it.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from spkid.audio.augment import WaveAugmentConfig
from spkid.errors import ConfigError


@dataclass
class FeatureConfig:
    """The log-mel definition (the HW4 one by default); stored in every checkpoint, used by every front end."""
    kind: str = "logmel"              # logmel (HW4) | speechbrain | kaldi | resemblyzer (spkid.audio.fbanks)
    sample_rate: int = 16000          # Hz; audio at other rates is resampled to this
    n_fft: int = 400                  # FFT size = Hann window length (25 ms)
    hop: int = 160                    # frame shift in samples (10 ms)
    n_mels: int = 40                  # mel bands F (HTK scale)
    f_min: float = 0.0                # Hz
    f_max: float = 0.0                # Hz; 0 = sample_rate / 2
    floor: float = 1e-9               # power floor before the natural log


@dataclass
class DataConfig:
    source: str = "features"          # features: an HW4 directory of .pt tensors | audio: speaker folders or a list
    val_per_speaker: int = 2          # whole utterances held out per speaker (stratified, seeded)
    crop_frames: int = 200            # training crop length (frames); shorter utterances are used whole
    crop_min_frames: int = 0          # >0: crop length drawn uniformly from [crop_min_frames, crop_frames] per batch
    batch_size: int = 64
    # audio from several inputs at once (spkid train A B C): each input's share of the training crops, as
    # comma-separated weights in input order ("" = every utterance equally likely, whatever its input)
    weights: str = ""
    min_seconds: float = 0.5          # audio: files with less detected speech than this are skipped (reported)
    # audio: crop lengths on a grid of this many frames (0: any length). Each new batch length makes oneDNN build
    # new convolution kernels; past its cache (1024) every step rebuilds them: measured 0.28-0.37 s a step with
    # any of 141 lengths against 0.20 s with one (benchmarks/loader_cost.py's model, bf16, one thread)
    crop_grid: int = 0


@dataclass
class AugmentConfig(WaveAugmentConfig):
    """Waveform augmentation of audio training (the fields of ``spkid.audio.augment.WaveAugmentConfig``: noise,
    rooms, speed, band limits, telephone, codecs) and SpecAugment on features (any input)."""
    spec_time_masks: int = 0          # SpecAugment: number of time masks per training crop
    spec_time_width: int = 20         # ... each up to this many frames
    spec_freq_masks: int = 0          # number of frequency masks per crop
    spec_freq_width: int = 6          # ... each up to this many mel bands
    feat_eq: float = 0.0              # features: probability of a random smooth equaliser on the log-mel (channel)
    feat_eq_db: float = 10.0          # ... up to this many dB
    feat_band_drop: float = 0.0       # features: probability of losing the bands above a random cutoff (low-pass)


@dataclass
class ModelConfig:
    # shared by every architecture
    encoder: str = "conformer"        # a name in spkid.models.ENCODERS: transformer | conformer | tdnn | ecapa
    norm: str = "global"              # input normalisation: global (train-set mean/std) | cmn (per utterance) | none
    subsample: int = 2                # time subsampling before the encoder: 1 (Linear), 2 or 4 (stride-2 Conv1d);
                                      # 0: none, the encoder reads the mel bands (ecapa)
    d_model: int = 144                # encoder width (tdnn: channels)
    n_layers: int = 2                 # encoder blocks
    pooling: str = "mean"             # a name in spkid.models.POOLING: mean | sap | asp
    embed_dim: int = 0                # >0: linear bottleneck after pooling (the speaker embedding); 0: pooled vector
    head: str = "softmax"             # a name in spkid.models.HEADS: softmax | am | aam
    label_smoothing: float = 0.0      # cross-entropy label smoothing
    # attention encoders (transformer, conformer)
    n_heads: int = 4
    ffn_dim: int = 576                # feed-forward width
    dropout: float = 0.0
    pos_enc: str = "rope"             # rope | none (the HW4 sample has no positional encoding)
    attention: str = "full"           # a name in spkid.models.ATTENTION: full | linformer | local | sparse | adaptive
    attention_params: dict = field(default_factory=dict)   # the variant's own settings, e.g. {"window": 64}
    norm_first: bool = True           # transformer: pre-norm (True) or post-norm as in the HW4 sample (False)
    conv_kernel: int = 15             # conformer: depthwise convolution kernel (odd)
    # tdnn
    tdnn_kernel: int = 3              # kernel of the dilated convolutions (odd)
    agg_dim: int = 384                # channels after multi-layer aggregation (the pooling input)
    # ecapa (SpeechBrain's ECAPA-TDNN)
    res2_scale: int = 8               # Res2Net channel groups
    se_dim: int = 128                 # squeeze-excitation bottleneck
    # margin heads (am, aam)
    margin: float = 0.2
    scale: float = 30.0


@dataclass
class TrainConfig:
    steps: int = 70000                # total steps (with max_minutes: whichever ends first)
    max_minutes: float = 0.0          # >0: wall-clock budget; schedules follow the larger of the step and time fractions
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 1000          # linear LR warmup over this many steps
    grad_clip: float = 5.0            # 0: no clipping
    margin_warmup: float = 0.0        # am/aam: fraction of training over which the margin ramps from 0 to full
    average_last: float = 0.0         # >0: final weights = mean of snapshots taken over this last fraction of training
    average_every: int = 10           # steps between averaged snapshots
    span_penalty: float = 1e-3        # adaptive attention: L1 weight on the learned spans (mean span, frames)
    val_every: int = 0                # steps between validations (0: only at the end, or every val_minutes)
    val_minutes: float = 2.0          # also validate every this many minutes of training (0: never by time)
    ckpt_every: int = 500             # steps between last.ckpt writes
    amp: str = "none"                 # none | bf16 | fp16 (CUDA only) | auto (bf16 where the hardware has it)
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int = 0                  # torch CPU threads (0: the free cores, spkid.runtime.resolve_threads)
    log_tensorboard: bool = False     # also write metrics.jsonl's scalars to RUN_DIR/tensorboard (needs tensorboard)
    init: str = ""                    # fine-tuning: start from this checkpoint (all but the head; spkid train --init)
    freeze: int = 0                   # fine-tuning: keep the subsampling and the first N encoder blocks fixed


@dataclass
class InferConfig:
    window: int = 0                   # >0: embed as the mean over windows of this many frames (0: whole utterance)
    hop: int = 0                      # window hop in frames (0: window // 2); also for utterances over max_frames
    max_frames: int = 6000            # longer utterances are windowed anyway (bounded memory), window = max_frames
    batch_frames: int = 8000          # frames per length-bucketed batch (CPU sweet spot: 3k-10k, measured)


SECTIONS = ("features", "data", "augment", "model", "train", "infer")


@dataclass
class RunConfig:
    name: str = "default"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config", *, stored: bool = False) -> "RunConfig":
        """``d`` over the defaults, validated. ``stored``: ``d`` is a finished run's own record (a checkpoint's
        config), where settings the run did not read hold the defaults of the spkid that wrote it; they are set to
        today's defaults instead of being refused, so a changed default never makes an old checkpoint unloadable."""
        cfg = cls.__new__(cls)
        base = RunConfig()
        for f in dataclasses.fields(cls):
            setattr(cfg, f.name, copy.deepcopy(getattr(base, f.name)))
        _merge(cfg, d, source, prefix="")
        if stored:
            try:
                unused = unused_settings(cfg)
            except ConfigError:          # an unknown encoder/head: validate() below names it with the source
                unused = []
            for key, _ in unused:
                section, name = key.split(".")
                setattr(getattr(cfg, section), name, _default(section, name))
        validate(cfg, source)
        return cfg


_CHOICES = {"features.kind": ("logmel", "speechbrain", "kaldi", "resemblyzer"), "data.source": ("features", "audio"), "model.norm": ("global", "cmn", "none"), "model.subsample": (0, 1, 2, 4), "model.pos_enc": ("rope", "none"),
            "train.amp": ("none", "bf16", "fp16", "auto")}


_SECTION_DEFAULTS = {f.name: f.default_factory for f in dataclasses.fields(RunConfig) if f.name in SECTIONS}


def _default(section: str, name: str):
    return getattr(_SECTION_DEFAULTS[section](), name)


def unused_settings(cfg: RunConfig) -> list[tuple[str, str]]:
    """``(key, why)`` for every setting that this configuration would not read (it must keep its default)."""
    from spkid.models import ENCODERS, HEADS
    m, a, t = cfg.model, cfg.augment, cfg.train
    out = []
    for name in sorted(ENCODERS.all_uses() - ENCODERS.uses(m.encoder)):
        out.append((f"model.{name}", f"model.encoder={m.encoder!r} does not use it"))
    for name in sorted(HEADS.all_uses() - HEADS.uses(m.head)):
        out.append((f"model.{name}", f"model.head={m.head!r} has no margin"))
    if m.head not in ("am", "aam"):
        out.append(("train.margin_warmup", f"model.head={m.head!r} has no margin"))
    if "attention" not in ENCODERS.uses(m.encoder) or m.attention != "adaptive":
        out.append(("train.span_penalty", "only adaptive attention has spans"))
    if not t.init:
        out.append(("train.freeze", "train.init is empty (freezing needs a trained checkpoint to start from)"))
    if t.average_last == 0:
        out.append(("train.average_every", "train.average_last is 0 (no weight averaging)"))
    if cfg.data.source == "features":            # no waveforms: only SpecAugment applies
        for f in dataclasses.fields(WaveAugmentConfig):
            out.append((f"augment.{f.name}", "data.source='features' has no waveforms to augment"))
        for name in ("weights", "min_seconds", "crop_grid"):
            out.append((f"data.{name}", "data.source='features' reads one HW4 directory of tensors"))
    else:
        if a.p_speed == 0:
            out += [("augment.speed_slow", "augment.p_speed is 0"), ("augment.speed_fast", "augment.p_speed is 0")]
        if a.p_pause == 0:
            out.append(("augment.pause_max", "augment.p_pause is 0"))
        if a.p_gain == 0:
            out.append(("augment.gain_db", "augment.p_gain is 0"))
    if cfg.features.kind in ("kaldi", "resemblyzer"):
        out.append(("features.floor", f"features.kind={cfg.features.kind!r} has its own floor (or no log)"))
    if a.feat_eq == 0:
        out.append(("augment.feat_eq_db", "augment.feat_eq is 0"))
    if a.spec_time_masks == 0:
        out.append(("augment.spec_time_width", "augment.spec_time_masks is 0"))
    if a.spec_freq_masks == 0:
        out.append(("augment.spec_freq_width", "augment.spec_freq_masks is 0"))
    return out


def weights_list(text: str) -> list[float] | None:
    """``data.weights`` as numbers (``[]`` for ""), or None when it is not a list of positive finite numbers."""
    if not text.strip():
        return []
    try:
        w = [float(x) for x in text.split(",")]
    except ValueError:
        return None
    return w if all(0 < x < float("inf") for x in w) else None


def validate(cfg: RunConfig, source: str = "config") -> None:
    """Cross-field checks; raise ConfigError naming the source and key."""
    from spkid.models import ATTENTION, ENCODERS, HEADS, POOLING
    for key, reg in (("model.encoder", ENCODERS), ("model.pooling", POOLING), ("model.head", HEADS),
                     ("model.attention", ATTENTION)):
        value = getattr(cfg.model, key.split(".")[1])
        if value not in reg:
            raise ConfigError(f"{source}: {key}={value!r}; choose one of {reg.names()}")
    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{source}: {key}={value!r}; choose one of {list(allowed)}")
    for key, why in unused_settings(cfg):
        section, name = key.split(".")
        value, default = getattr(getattr(cfg, section), name), _default(section, name)
        if value != default:
            raise ConfigError(f"{source}: {key}={value!r} would be ignored: {why} (leave it at {default!r})")
    m, d, t, fe, i = cfg.model, cfg.data, cfg.train, cfg.features, cfg.infer
    try:
        cfg.augment.validate()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    a = cfg.augment
    if not (0 <= a.feat_eq <= 1 and 0 <= a.feat_band_drop <= 1 and 0 <= a.feat_eq_db <= 40):
        raise ConfigError(f"{source}: augment.feat_eq and feat_band_drop must be in [0, 1], feat_eq_db in [0, 40]")
    if d.source == "audio" and fe.sample_rate != 16000:
        raise ConfigError(f"{source}: data.source='audio' decodes and detects speech at 16 kHz; features.sample_rate "
                          f"must be 16000, got {fe.sample_rate}")
    if m.attention == "full" and m.attention_params:
        raise ConfigError(f"{source}: model.attention_params={m.attention_params} would be ignored: full attention "
                          "has no parameters")
    if (m.subsample == 0) != (m.encoder == "ecapa"):
        raise ConfigError(f"{source}: model.subsample={m.subsample} with model.encoder={m.encoder!r}: the ecapa "
                          "encoder reads the mel bands itself (subsample 0), the others need 1, 2 or 4")
    if m.encoder == "ecapa" and (m.res2_scale < 2 or m.d_model % m.res2_scale or m.se_dim < 1):
        raise ConfigError(f"{source}: model.res2_scale ({m.res2_scale}) must be >= 2 and divide model.d_model "
                          f"({m.d_model}); model.se_dim must be >= 1")
    if "n_heads" in ENCODERS.uses(m.encoder) and m.d_model % m.n_heads:
        raise ConfigError(f"{source}: model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads})")
    for key, value in (("model.conv_kernel", m.conv_kernel), ("model.tdnn_kernel", m.tdnn_kernel)):
        if value % 2 == 0 or value < 1:
            raise ConfigError(f"{source}: {key} must be odd and >= 1, got {value}")
    for key, value in [("model.n_layers", m.n_layers), ("data.crop_frames", d.crop_frames),
                       ("data.batch_size", d.batch_size), ("model.d_model", m.d_model), ("model.n_heads", m.n_heads),
                       ("model.ffn_dim", m.ffn_dim), ("model.agg_dim", m.agg_dim), ("features.n_mels", fe.n_mels),
                       ("train.ckpt_every", t.ckpt_every), ("train.average_every", t.average_every)]:
        if value < 1:
            raise ConfigError(f"{source}: {key} must be >= 1, got {value}")
    if d.crop_min_frames > d.crop_frames or d.crop_min_frames < 0:
        raise ConfigError(f"{source}: data.crop_min_frames ({d.crop_min_frames}) must be in 0..data.crop_frames "
                          f"({d.crop_frames})")
    if d.weights and weights_list(d.weights) is None:
        raise ConfigError(f"{source}: data.weights={d.weights!r}: expected positive numbers separated by commas, "
                          "one per training input")
    if d.crop_grid < 0 or (d.crop_grid and d.crop_min_frames == 0):
        raise ConfigError(f"{source}: data.crop_grid={d.crop_grid}: must be >= 0, and it needs a range of crop lengths "
                          "(data.crop_min_frames > 0)")
    if not 0 <= d.min_seconds <= 10:
        raise ConfigError(f"{source}: data.min_seconds must be in [0, 10], got {d.min_seconds}")
    if d.val_per_speaker < 0 or m.embed_dim < 0:
        raise ConfigError(f"{source}: data.val_per_speaker and model.embed_dim must be >= 0")
    if not 0 <= m.dropout < 1 or not 0 <= m.label_smoothing < 1:
        raise ConfigError(f"{source}: model.dropout and model.label_smoothing must be in [0, 1)")
    if not 0 <= t.margin_warmup <= 1 or not 0 <= t.average_last < 1:
        raise ConfigError(f"{source}: train.margin_warmup must be in [0, 1] and train.average_last in [0, 1)")
    for key, value in (("train.lr", t.lr), ("model.scale", m.scale)):
        if not 0 < value < float("inf"):
            raise ConfigError(f"{source}: {key} must be a positive finite number, got {value}")
    for key, value in (("train.weight_decay", t.weight_decay), ("train.grad_clip", t.grad_clip),
                       ("train.warmup_steps", t.warmup_steps), ("train.max_minutes", t.max_minutes),
                       ("train.val_every", t.val_every), ("train.val_minutes", t.val_minutes),
                       ("train.threads", t.threads), ("model.margin", m.margin), ("train.span_penalty", t.span_penalty),
                       ("train.freeze", t.freeze)):
        if not 0 <= value < float("inf"):
            raise ConfigError(f"{source}: {key} must be >= 0 and finite, got {value}")
    if i.window < 0 or i.hop < 0 or i.max_frames < 16 or i.batch_frames < 1:
        raise ConfigError(f"{source}: infer.window/hop must be >= 0, infer.max_frames >= 16, infer.batch_frames >= 1")
    if t.steps < 1:
        raise ConfigError(f"{source}: train.steps must be >= 1, got {t.steps}")
    blocks = m.n_layers + (1 if m.encoder == "tdnn" else 0)          # a TDNN's stem counts as its first block
    if t.freeze > blocks:
        raise ConfigError(f"{source}: train.freeze={t.freeze}: the encoder has only {blocks} blocks to freeze")
    f_max = fe.f_max or fe.sample_rate / 2
    if fe.sample_rate < 1000 or fe.n_fft < 16 or not 1 <= fe.hop <= fe.n_fft or fe.floor <= 0:
        raise ConfigError(f"{source}: features: need sample_rate >= 1000, n_fft >= 16, 1 <= hop <= n_fft, floor > 0")
    if not 0 <= fe.f_min < f_max <= fe.sample_rate / 2:
        raise ConfigError(f"{source}: features: need 0 <= f_min < f_max <= sample_rate / 2, got {fe.f_min}..{f_max}")
    if fe.n_mels > fe.n_fft // 2:
        raise ConfigError(f"{source}: features.n_mels ({fe.n_mels}) must be <= n_fft / 2 ({fe.n_fft // 2})")
    if t.device != "auto" and t.device != "cpu" and not t.device.startswith("cuda"):
        raise ConfigError(f"{source}: train.device={t.device!r}; choose auto, cpu or cuda[:N]")


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
        if len(parts) != 2 or parts[0] not in SECTIONS:
            raise ConfigError(f"{source}: key {key!r} must look like SECTION.name with SECTION one of {list(SECTIONS)}")
        d[parts[0]][parts[1]] = _parse_value(text)
    return RunConfig.from_dict(d, source)


PRESET_DIR = "configs"          # inside the spkid package: spkid/configs/<name>.toml


def presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.name[:-5] for p in resources.files("spkid").joinpath(PRESET_DIR).iterdir()
                  if p.name.endswith(".toml"))


def _read_table(text: str, suffix: str, source: str) -> dict:
    try:
        d = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ConfigError(f"{source}: cannot parse: {str(e)[:200]}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: top level must be a table/object")
    return d


def _preset_dict(name: str) -> dict:
    res = resources.files("spkid").joinpath(PRESET_DIR, f"{name}.toml")
    d = _read_table(res.read_text(), ".toml", f"preset {name}")
    d.setdefault("name", name)
    return d


def load_config(name_or_file: str = "default") -> RunConfig:
    """A preset name or a ``.json``/``.toml`` file. A file's keys override a preset: ``base = "<preset>"``
    (default ``"default"``); nested tables merge key by key, ``model.attention_params`` is replaced whole."""
    names = presets()
    if name_or_file in names:
        return RunConfig.from_dict(_preset_dict(name_or_file), f"preset {name_or_file}")
    path = Path(name_or_file)
    if not path.suffix:
        raise ConfigError(f"unknown config {name_or_file!r}; choose a preset {names} or a .toml/.json file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    d = _read_table(text, path.suffix, str(path))
    base_name = d.pop("base", "default")
    if base_name not in names:
        raise ConfigError(f"{path}: base {base_name!r} is not a preset; choose one of {names}")
    d.setdefault("name", path.stem)
    merged = _preset_dict(base_name)
    for key, value in d.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return RunConfig.from_dict(merged, str(path))
