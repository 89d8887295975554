"""``spkid import speechbrain DIR -o ecapa.ckpt``: a SpeechBrain ECAPA-TDNN folder as a spkid model of its architecture.

Reads ``DIR/hyperparams.yaml`` as data (``spkid.importers.hyperparams``) for the sizes of its ``Fbank``,
``InputNormalization`` (``mean_var_norm``) and ``ECAPA_TDNN``, and ``DIR/embedding_model.ckpt`` with
``weights_only=True``. The weights map one to one onto ``spkid.models.ecapa`` inside a ``SpeakerNet``: features
``kind = "speechbrain"`` (its Fbank), ``model.norm = "cmn"`` (its sentence mean normalisation), ``subsample = 0``,
encoder ``ecapa``, pooling ``ecapa``, the final 1x1 convolution as the embedding layer. The result is spkid's own
architecture: it fine-tunes (``train --init``), exports to ONNX and runs with ``--runtime onnx``.

``mean_var_norm_emb.ckpt`` (a global embedding mean) is not applied: SpeechBrain's ``verify_batch`` and
``encode_batch`` leave it off by default; spkid's registry centres embeddings on the user's own domain instead.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from spkid.config import RunConfig
from spkid.errors import CheckpointError
from spkid.importers import NO_LICENCE, check_state, read_weights, save_imported
from spkid.importers.hyperparams import find_built, read_hyperparams

ECAPA = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"
FBANK = "speechbrain.lobes.features.Fbank"
NORM = "speechbrain.processing.features.InputNormalization"
ECAPA_DEFAULTS = dict(channels=[512, 512, 512, 512, 1536], kernel_sizes=[5, 3, 3, 3, 1], dilations=[1, 2, 3, 4, 1],
                      attention_channels=128, lin_neurons=192, res2net_scale=8, se_channels=128,
                      global_context=True, groups=[1, 1, 1, 1, 1], dropout=0.0)
FBANK_DEFAULTS = dict(deltas=False, context=False, sample_rate=16000, f_min=0, f_max=None, n_fft=400, n_mels=40,
                      filter_shape="triangular", win_length=25, hop_length=10)

# SpeechBrain state-dict key -> spkid SpeakerNet key (first match wins; \1 \2 are block numbers)
_RENAMES = [
    (r"blocks\.0\.conv\.conv\.(.+)", r"encoder.stem.conv.\1"),
    (r"blocks\.0\.norm\.norm\.(.+)", r"encoder.stem.bn.\1"),
    (r"blocks\.(\d+)\.(tdnn1|tdnn2)\.conv\.conv\.(.+)", r"encoder.blocks.{\1}.\2.conv.\3"),
    (r"blocks\.(\d+)\.(tdnn1|tdnn2)\.norm\.norm\.(.+)", r"encoder.blocks.{\1}.\2.bn.\3"),
    (r"blocks\.(\d+)\.res2net_block\.blocks\.(\d+)\.conv\.conv\.(.+)", r"encoder.blocks.{\1}.res2.layers.\2.conv.\3"),
    (r"blocks\.(\d+)\.res2net_block\.blocks\.(\d+)\.norm\.norm\.(.+)", r"encoder.blocks.{\1}.res2.layers.\2.bn.\3"),
    (r"blocks\.(\d+)\.se_block\.conv1\.conv\.(.+)", r"encoder.blocks.{\1}.se_down.\2"),
    (r"blocks\.(\d+)\.se_block\.conv2\.conv\.(.+)", r"encoder.blocks.{\1}.se_up.\2"),
    (r"mfa\.conv\.conv\.(.+)", r"encoder.mfa.conv.\1"),
    (r"mfa\.norm\.norm\.(.+)", r"encoder.mfa.bn.\1"),
    (r"asp\.tdnn\.conv\.conv\.(.+)", r"pool.attend.conv.\1"),
    (r"asp\.tdnn\.norm\.norm\.(.+)", r"pool.attend.bn.\1"),
    (r"asp\.conv\.conv\.(.+)", r"pool.score.\1"),
    (r"asp_bn\.norm\.(.+)", r"pool.bn.\1"),
    (r"fc\.conv\.(.+)", r"embed_proj.\1"),
]


def _args(doc: dict, target: str, defaults: dict, path: Path, required: bool, prefer: str = "") -> dict | None:
    found = sorted(find_built(doc, target), key=lambda kv: kv[0] != prefer)      # the key ``prefer`` first
    if not found:
        if required:
            raise CheckpointError(f"{path}: no !new:{target} (not a SpeechBrain ECAPA-TDNN speaker model)")
        return None
    args = found[0][1]
    unknown = sorted(set(args) - set(defaults) - {"input_size", "device", "activation", "norm_type", "std_norm",
                                                  "requires_grad", "param_change_factor", "param_rand_factor",
                                                  "left_frames", "right_frames", "avg_factor", "update_until_epoch"})
    if unknown:
        raise CheckpointError(f"{path}: {found[0][0]}: argument {unknown[0]!r} of {target.rsplit('.', 1)[1]} "
                              "is not one spkid maps")
    return {**defaults, **args}


def config_from(doc: dict, path: Path) -> RunConfig:
    """The spkid configuration of a SpeechBrain ECAPA folder; a setting spkid cannot express is a one-line error."""
    e = _args(doc, ECAPA, ECAPA_DEFAULTS, path, True, prefer="embedding_model")
    fb = _args(doc, FBANK, FBANK_DEFAULTS, path, True, prefer="compute_features")
    norm = _args(doc, NORM, {"norm_type": "global", "std_norm": True}, path, False, prefer="mean_var_norm")
    ch, ks, dil = list(e["channels"]), list(e["kernel_sizes"]), list(e["dilations"])
    n = len(ch) - 2
    expect = {"kernel_sizes": [5] + [ks[1]] * n + [1], "dilations": [1] + list(range(2, n + 2)) + [1],
              "channels": [ch[0]] * (n + 1) + [ch[-1]], "groups": [1] * len(ch)}
    for key, want in expect.items():
        if n < 1 or list(e[key]) != want or len(ks) != len(ch) or len(dil) != len(ch):
            raise CheckpointError(f"{path}: ECAPA_TDNN {key}={list(e[key])}: spkid maps the ECAPA layout "
                                  f"{want} (equal block widths, stem kernel 5, dilations 2, 3, ...)")
    for key, want in (("global_context", True), ("attention_channels", 128), ("dropout", 0.0)):
        if e.get(key) != want:
            raise CheckpointError(f"{path}: ECAPA_TDNN {key}={e.get(key)!r}: spkid maps {want!r} only")
    if "activation" in e:
        raise CheckpointError(f"{path}: ECAPA_TDNN activation {e['activation']!r}: spkid maps the default ReLU only")
    if fb["deltas"] or fb["context"] or fb["filter_shape"] != "triangular":
        raise CheckpointError(f"{path}: Fbank with deltas, context or {fb['filter_shape']} filters: spkid maps plain "
                              "triangular filter banks")
    sr = int(fb["sample_rate"])
    win, hop = round(sr / 1000 * fb["win_length"]), round(sr / 1000 * fb["hop_length"])
    if win != fb["n_fft"]:
        raise CheckpointError(f"{path}: Fbank win_length {fb['win_length']} ms ({win} samples) differs from n_fft "
                              f"{fb['n_fft']}: spkid maps windows as long as the FFT")
    if e.get("input_size", fb["n_mels"]) != fb["n_mels"]:
        raise CheckpointError(f"{path}: ECAPA_TDNN input_size {e['input_size']} != Fbank n_mels {fb['n_mels']}")
    if norm is not None and (norm["norm_type"] != "sentence" or norm["std_norm"]):
        raise CheckpointError(f"{path}: InputNormalization norm_type={norm['norm_type']!r} std_norm="
                              f"{norm['std_norm']}: spkid maps sentence mean normalisation (std_norm False) only")
    return RunConfig.from_dict({
        "name": "speechbrain-ecapa",
        "features": {"kind": "speechbrain", "sample_rate": sr, "n_fft": int(fb["n_fft"]), "hop": hop,
                     "n_mels": int(fb["n_mels"]), "f_min": float(fb["f_min"]),
                     "f_max": float(fb["f_max"] if fb["f_max"] is not None else sr // 2), "floor": 1e-10},
        "model": {"encoder": "ecapa", "norm": "cmn" if norm is not None else "none", "subsample": 0,
                  "d_model": int(ch[0]), "n_layers": n, "tdnn_kernel": int(ks[1]), "agg_dim": int(ch[-1]),
                  "res2_scale": int(e["res2net_scale"]), "se_dim": int(e["se_channels"]), "pooling": "ecapa",
                  "embed_dim": int(e["lin_neurons"])},
    }, f"{path} (as a spkid config)")


def map_state(sb: dict, source: str) -> dict:
    """SpeechBrain ``ECAPA_TDNN`` state dict -> spkid ``SpeakerNet`` keys (block i of SpeechBrain is spkid's i-1)."""
    out = {}
    for key, value in sb.items():
        for pattern, repl in _RENAMES:
            m = re.fullmatch(pattern, key)
            if m:
                new = m.expand(repl)
                new = re.sub(r"\{(\d+)\}", lambda b: str(int(b.group(1)) - 1), new)
                out[new] = value.squeeze(-1) if key == "fc.conv.weight" else value
                break
        else:
            raise CheckpointError(f"{source}: weight {key!r} is not part of a SpeechBrain ECAPA_TDNN")
    return out


def import_speechbrain(folder: str | Path, out: str | Path, *, licence: str = "") -> dict:
    """Write ``out`` from a SpeechBrain speaker-embedding folder; returns the card."""
    from spkid.models import build_model
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder (give the local copy of a SpeechBrain model folder)")
    cfg = config_from(read_hyperparams(folder / "hyperparams.yaml"), folder / "hyperparams.yaml")
    weights = folder / "embedding_model.ckpt"
    state = map_state(read_weights(weights), str(weights))
    net = build_model(cfg, 0)
    own = net.state_dict()
    for key in ("norm.mean", "norm.std"):                      # spkid's input statistics: unused with cmn
        state.setdefault(key, own[key])
    check_state(own, state, str(weights))
    state = {k: v.to(own[k].dtype).contiguous() for k, v in state.items()}
    f = cfg.features
    card = {"arch": "spkid", "source": "SpeechBrain ECAPA-TDNN (speechbrain.lobes.models.ECAPA_TDNN)",
            "origin": str(folder.resolve()), "licence": licence or NO_LICENCE,
            "frontend": (f"SpeechBrain Fbank: {f.n_mels} mel bands, {f.n_fft}-sample Hamming window, hop {f.hop}, "
                         f"dB (top 80 dB)" + ("; sentence mean normalisation" if cfg.model.norm == "cmn" else "")),
            "embedding_norm": ("mean_var_norm_emb.ckpt present, not applied (SpeechBrain's default)"
                               if (folder / "mean_var_norm_emb.ckpt").is_file() else "none"),
            "embed_dim": str(cfg.model.embed_dim)}
    card["fingerprint"] = save_imported(out, cfg, state, card)
    return card
