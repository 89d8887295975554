"""Inference from a checkpoint: embeddings, class scores, predictions, verification.

Everything goes through ``embed_features``: utterances are batched by length (padding is masked, so batching
never changes a result), and utterances longer than the window limit are split into overlapping windows whose
embeddings are averaged (bounded memory for any length). Validation during training uses the same function,
so the validation accuracy measures exactly what ``predict`` does on the test set.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import spkid.runtime  # noqa: F401  first: spkid/__init__ imports this module, runtime sets the OpenMP spin before torch
import numpy as np
import torch
import torch.nn.functional as F

from spkid.config import InferConfig, RunConfig
from spkid.data.sampler import length_buckets, pad_batch
from spkid.data.definition import check_definition
from spkid.data.hw4 import load_tensor
from spkid.errors import DataError, InputWarning, SpkidError
from spkid.runtime import check_threads, flush_denormal, resolve_device
from spkid.models.speaker_net import SpeakerNet
from spkid.scoring.loader import open_model


def _windows(t: int, window: int, hop: int) -> list[tuple[int, int]]:
    """Start/end frames of windows covering ``[0, t)``; the last one is aligned to the end."""
    if t <= window:
        return [(0, t)]
    starts = list(range(0, t - window + 1, hop))
    if starts[-1] + window < t:
        starts.append(t - window)
    return [(s, s + window) for s in starts]


@torch.no_grad()
def embed_features(net: SpeakerNet, feats: Sequence[torch.Tensor], cfg: InferConfig,
                   device: torch.device | str = "cpu", *, runner=None) -> torch.Tensor:
    """Per-utterance embeddings ``(N, E)`` (not normalised) for features ``[(T_i, F)]``.

    Whole utterances unless ``cfg.window > 0`` or ``T_i > cfg.max_frames``; then the mean over windows.
    ``runner(x (B, T, F), lengths (B,)) -> (B, E)`` replaces ``net.embed`` for each batch (ONNX Runtime:
    ``spkid.scoring.onnx_runtime.OrtEmbedder``); batching and windowing stay the same.
    """
    with flush_denormal():
        return _embed(net, feats, cfg, device, runner)


def _embed(net, feats, cfg: InferConfig, device, runner=None) -> torch.Tensor:
    was_training = net.training
    net.eval()
    segs, owner = [], []
    for i, f in enumerate(feats):
        window = cfg.window if cfg.window > 0 else cfg.max_frames
        if cfg.window > 0 or f.shape[0] > cfg.max_frames:
            window = min(window, cfg.max_frames)
            for s, e in _windows(f.shape[0], window, cfg.hop or max(1, window // 2)):
                segs.append(f[s:e])
                owner.append(i)
        else:
            segs.append(f)
            owner.append(i)
    out = torch.zeros(len(segs), net.embed_dim)
    for idx in length_buckets([s.shape[0] for s in segs], cfg.batch_frames):
        x, lengths = pad_batch([segs[i] for i in idx])
        out[idx] = (runner or net.embed)(x.to(device), lengths.to(device)).float().cpu()
    owner_t = torch.tensor(owner)
    emb = torch.zeros(len(feats), net.embed_dim).index_add_(0, owner_t, out)
    emb /= torch.bincount(owner_t, minlength=len(feats)).clamp(min=1)[:, None]
    net.train(was_training)
    return emb


@torch.no_grad()
def class_scores(net: SpeakerNet, emb: torch.Tensor, device: torch.device | str = "cpu",
                 n_speakers: int | None = None) -> torch.Tensor:
    """Embeddings ``(N, E)`` -> class probabilities ``(N, n_speakers)`` over the first ``n_speakers`` classes (the
    real speakers; speed-perturbed copies trained as extra classes are left out)."""
    was_training = net.training
    net.eval()
    logits = net.classify(emb.to(device)).float()
    probs = torch.softmax(logits[:, :n_speakers] if n_speakers else logits, dim=-1).cpu()
    net.train(was_training)
    return probs


def none_readable(failures: list) -> DataError:
    """The error of a command none of whose inputs could be read: the first one's message (file: problem)."""
    more = f" (and {len(failures) - 1} more unreadable input(s))" if len(failures) > 1 else ""
    return DataError(f"{failures[0][1]}{more}")


VAD_DEFAULT = True      # speech detection on audio files; the CLI's --no-vad turns it off for the whole command
MIN_SPEECH_S = 0.25     # seconds of detected speech an audio file must have


class Model:
    """A trained spkid model loaded from a checkpoint: ``spkid.load(path)``.

    Inputs (``inputs`` below) are a sequence of items, each a path (``.pt`` features or an audio file), a
    ``(T, n_mels)`` feature array/tensor, or a 1-D waveform array/tensor at the model's ``features.sample_rate`` (16 kHz by default).

    ``runtime="onnx"`` runs the network through ONNX Runtime on the CPU (``spkid.scoring.onnx_runtime``: exported
    once, cached beside the checkpoint; ``quantize=True``: dynamic int8 weights) with ``threads`` intra-op threads
    (0: the free cores); ``"torch"`` (default) runs it eagerly on ``device``.
    """

    def __init__(self, path: str | Path, device: str = "auto", *, runtime: str = "torch", threads: int = 0,
                 quantize: bool = False, vad: bool | None = None):
        from spkid.pretrained import display_name
        from spkid.scoring.onnx_runtime import check_runtime
        self.name = display_name(path)          # "base" for a shipped model, else the path as given
        self.runtime = check_runtime(runtime)
        check_threads(threads)                  # before the checkpoint is read (the torch runtime never resolves them)
        self.quantize = quantize
        if quantize and runtime != "onnx":
            raise SpkidError("int8 quantisation needs runtime onnx")
        if runtime == "onnx" and device not in ("auto", "cpu"):
            raise SpkidError(f"--runtime onnx runs on the CPU, not {device!r}; use --runtime torch for a GPU")
        self.device = resolve_device("cpu" if runtime == "onnx" else device)
        loaded = open_model(path, "cpu")        # checkpoint, shipped name or imported model: spkid.scoring.loader
        self.path = loaded.path
        self.cfg: RunConfig = loaded.cfg
        self.speakers: list[str] = loaded.speakers
        self.card: dict = loaded.card             # arch, source, licence, front end (spkid info)
        if loaded.arch == "onnx":                 # ONNX Runtime already: --runtime onnx asks for what runs
            self.device = resolve_device("cpu" if device == "auto" else device)
        self.net = loaded.net.to(self.device).eval()
        self.model_id = loaded.model_id
        # EER threshold on the run's validation trials (training speakers), when the run validated
        self.val_eer_threshold: float | None = loaded.ckpt.get("val_eer_threshold")
        # the model's own diarization cosines and where they were tuned (spkid tune-diarization), or {}
        self.diarization: dict = dict(loaded.ckpt.get("diarization") or {})
        self.vad = VAD_DEFAULT if vad is None else vad   # audio files: keep only the detected speech
        # a file with too little detected speech: its whole signal with an InputWarning (True; many-file commands
        # finish the rest) or a DataError (False; a service answering for one clip)
        self.speech_fallback = True
        self.runner = None                     # the batch function replacing net.embed (ONNX Runtime), or None
        if runtime == "onnx" and loaded.arch == "spkid":
            from spkid.scoring.onnx_cache import ensure_onnx
            from spkid.scoring.onnx_runtime import OrtEmbedder
            self.runner = OrtEmbedder(ensure_onnx(self.path, self.model_id, quantize=quantize), threads)
        elif runtime == "onnx" and (quantize or loaded.arch != "onnx"):
            raise SpkidError(f"{self.path}: --runtime onnx{' --int8' if quantize else ''} needs a model of spkid's "
                             f"own architecture; this one is {loaded.arch!r} (run it with --runtime torch)")

    # -- inputs ---------------------------------------------------------------------------------------------
    def features(self, inputs, *, failures: list | None = None, channel=None, level: bool = True) -> list:
        """Turn each input item into log-mel features ``(T, n_mels)``.

        ``level``: a waveform outside the training data's level range is brought into it first
        (``conditions_audio``); ``predict`` passes False, so that audio gives exactly the features ``prepare`` writes
        of it (the HW4 definition) and the two paths agree.

        ``channel``: a function of the item's index and its 16 kHz speech waveform ``(S,)`` that gives copies of it
        through simulated channels, ``{name: [(S,), ...]}`` (``scoring.openset.enrollment_copies``: a telephone,
        rooms); each item then gives ``(features, {name: [features of each copy]})``, the second None for an item
        given as features (a ``.pt`` file, a ``(T, n_mels)`` array: no waveform to pass).

        ``failures``: a list to collect ``(index, message)`` of the items that cannot be read (their feature is
        None, an ``InputWarning`` names each) while the rest go on; None: the first bad item raises ``DataError``.
        """
        if isinstance(inputs, (str, Path, np.ndarray, torch.Tensor)):
            inputs = [inputs]
        first_pt = {}                                   # folder -> its first .pt input: one definition check each
        for item in inputs:
            if isinstance(item, (str, Path)) and Path(item).suffix == ".pt":
                first_pt.setdefault(Path(item).parent, item)
        for folder, item in first_pt.items():
            check_definition(folder, self.cfg.features, str(item))
        pick = (lambda pair: pair) if channel is not None else (lambda pair: pair[0])
        if failures is None:
            return [pick(self._one(item, channel, k, level)) for k, item in enumerate(inputs)]
        out: list = []
        for k, item in enumerate(inputs):
            try:
                out.append(pick(self._one(item, channel, k, level)))
            except DataError as e:
                failures.append((k, str(e)))
                warnings.warn(InputWarning(f"{e}; left out"), stacklevel=2)
                out.append(pick((None, None)))
        return out

    def _one(self, item, channel=None, k: int = 0, level: bool = True) -> tuple[torch.Tensor, dict | None]:
        """``(features, {name: [features of each copy channel(k, speech) gives]} or None)`` of one item."""
        n_mels = self.cfg.features.n_mels
        if isinstance(item, (str, Path)):
            path = Path(item)
            if path.suffix == ".pt":                    # its folder's definition: checked in features()
                return load_tensor(path, n_mels), None
            from spkid.audio.io import load_audio
            wav = load_audio(path, self.cfg.features.sample_rate)
            if self.vad and self.cfg.features.sample_rate == 16000:       # Silero runs at 16 kHz
                from spkid.audio.vad import keep_speech
                speech, seconds = keep_speech(wav)
                if seconds >= MIN_SPEECH_S:
                    wav = speech
                elif not self.speech_fallback:
                    raise DataError(f"{path}: only {seconds:.2f} s of speech found (need {MIN_SPEECH_S} s)")
                else:             # a quiet or unusual recording: the whole signal rather than nothing
                    warnings.warn(InputWarning(f"{path}: only {seconds:.2f} s of speech detected (need "
                                               f"{MIN_SPEECH_S} s); used the whole {wav.shape[0] / 16000:.2f} s "
                                               "recording"), stacklevel=2)
            return self._with_channel(wav, str(path), channel, k, level)
        x = torch.as_tensor(np.asarray(item) if not isinstance(item, torch.Tensor) else item).float()
        if x.dim() == 2 and x.shape[1] == n_mels and x.shape[0] >= 1:
            if not torch.isfinite(x).all():
                raise DataError("input array: contains NaN or Inf values")
            return x, None
        if x.dim() == 1 and x.numel() > 0:
            return self._with_channel(x, "input waveform", channel, k, level)
        raise DataError(f"input array: expected a 1-D waveform or (frames, {n_mels}) features, got {tuple(x.shape)}")

    @property
    def conditions_audio(self) -> bool:
        """Whether a waveform loses its DC offset and is brought into the training data's level range before its
        features (``audio.frontend.remove_dc``, ``set_level``): with spkid's own front end; an imported one stays its
        toolkit's, exactly."""
        return self.cfg.features.kind == "logmel"

    def _with_channel(self, wav: torch.Tensor, name: str, channel, k: int,
                      level: bool = True) -> tuple[torch.Tensor, dict | None]:
        if self.conditions_audio:
            from spkid.audio.frontend import remove_dc, set_level
            wav = remove_dc(wav)
            wav = set_level(wav) if level else wav
        feats = self._logmel(wav, name)
        if channel is None or self.cfg.features.sample_rate != 16000:
            return feats, None
        return feats, {ch: [self._logmel(torch.as_tensor(c, dtype=torch.float32), name) for c in copies]
                       for ch, copies in channel(k, wav).items()}

    def _logmel(self, wav: torch.Tensor, name: str) -> torch.Tensor:
        from spkid.audio.frontend import logmel
        if not torch.isfinite(wav).all():
            raise DataError(f"{name}: waveform contains NaN or Inf")
        return logmel(wav.float(), self.cfg.features)

    # -- outputs --------------------------------------------------------------------------------------------
    def embed_raw(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Embeddings ``(N, E)``, not normalised, of features ``[(T_i, n_mels)]`` through this model's runtime."""
        return embed_features(self.net, feats, self.cfg.infer, self.device, runner=self.runner)

    def embed(self, inputs) -> torch.Tensor:
        """L2-normalised embeddings ``(N, E)``."""
        return F.normalize(self.embed_raw(self.features(inputs)), dim=-1)

    def scores(self, inputs) -> torch.Tensor:
        """Class probabilities ``(N, n_speakers)``, columns in ``self.speakers`` order."""
        self.check_classes()
        return class_scores(self.net, self.embed_raw(self.features(inputs, level=False)), self.device,
                            len(self.speakers))

    def check_classes(self) -> None:
        """An imported embedder has no training speakers: closed-set prediction is an error naming it."""
        if not self.speakers:
            raise SpkidError(f"{self.path}: an imported speaker embedder has no classes to predict "
                             f"({self.card.get('source', 'imported')}); enroll speakers and use identify")

    def predict(self, inputs) -> list[str]:
        """The most likely training speaker for each input."""
        return [self.speakers[i] for i in self.scores(inputs).argmax(-1).tolist()]

    def verify(self, a, b) -> float:
        """Cosine similarity of two inputs' embeddings (higher = more likely the same speaker)."""
        e = self.embed([a, b] if not isinstance(a, list) else a + b)
        return float(e[0] @ e[1])


def load(checkpoint: str | Path, device: str = "auto", *, runtime: str = "torch", threads: int = 0,
         quantize: bool = False) -> Model:
    """Load a checkpoint for inference: ``m = spkid.load("runs/a/best.ckpt"); m.predict(["x.wav"])``;
    ``spkid.load(path, runtime="onnx")`` runs it through ONNX Runtime on the CPU."""
    return Model(checkpoint, device, runtime=runtime, threads=threads, quantize=quantize)


def ensemble_scores(models: Sequence[Model], feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean class probabilities over models that share one speaker list: ``(N, n_speakers)``."""
    first = models[0]
    for m in models:
        m.check_classes()
    for m in models[1:]:
        if m.speakers != first.speakers:
            raise SpkidError(f"{m.path}: speaker list differs from {first.path}; cannot ensemble")
    total = None
    for m in models:
        p = class_scores(m.net, m.embed_raw(feats), m.device, len(m.speakers))
        total = p if total is None else total + p
    return total / len(models)
