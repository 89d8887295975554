"""Short clips: how often ``spkid diarize`` finds the right number of speakers in a few seconds of speech.

Clips are cut from each voice of a folder (one sub-folder per speaker, its files joined in name order; the voice's
first second skipped): one voice for 3-20 s, two voices one after the other (2-8 s each, a quarter second apart),
A-B-A (turns of 4 s), three voices of 3 s each; each clean and through degrade.py's telephone (8 kHz 300-3400 Hz,
G.711 mu-law). Each clip is analysed once (speech, window embeddings); its clustering is then decided at each
``--drops`` value of ``DiarizeConfig.short_merge_drop`` (the raw merge of a recording under
``short_speech_s`` of speech, from ``merge_raw`` minus it; 0: the rule of every other recording), side by side.
The table: per clip kind and length, the clips whose count came out right at each drop.

    python benchmarks/diarization_short.py                    # librispeech-sample test-other (10 voices)
    python benchmarks/diarization_short.py --voices ../shared/data/librispeech-sample/train-clean-100 --max-voices 40
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import degrade  # noqa: E402  (the telephone channel)

from spkid.audio.io import load_audio  # noqa: E402
from spkid.data.scan import scan  # noqa: E402
from spkid.diarization.batch import load_embedder  # noqa: E402
from spkid.diarization.pipeline import DiarizeConfig, analyse, decide  # noqa: E402
from spkid.diarization.stream import AudioStream  # noqa: E402
from spkid.errors import SpkidError  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SR = 16000
GAP = np.zeros(SR // 4, dtype=np.float32)
ONE_S = (3, 5, 8, 12, 16, 20)       # one voice: seconds (as far as each voice's audio reaches)
TWO_S = (2, 3, 5, 8)                # two voices: seconds each


def voices(folder: Path, max_voices: int | None) -> dict[str, np.ndarray]:
    """Speaker -> 16 kHz waveform ``(S,)``: the audio files of each sub-folder of ``folder`` (spkid's scanner) joined
    in name order."""
    out = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))[:max_voices]:
        if files := scan(d):
            out[d.name] = np.concatenate([load_audio(f).numpy() for f in files])
    if len(out) < 3:
        raise SpkidError(f"{folder}: need sub-folders of at least 3 speakers' audio, found {len(out)}")
    return out


def clips(wavs: dict[str, np.ndarray]) -> list[tuple[str, int, np.ndarray]]:
    """``[(kind, true count, waveform)]``: kind is ``one 5 s``, ``two 3 s each``, ``A-B-A 4 s turns``,
    ``three 3 s each``."""
    names, out = sorted(wavs), []
    cut = {n: wavs[n][SR:] for n in names}                         # the first second skipped (a file's lead-in)
    for s in ONE_S:
        out += [(f"one {s} s", 1, cut[n][: s * SR]) for n in names if len(cut[n]) >= s * SR]
    for s in TWO_S:
        out += [(f"two {s} s each", 2, np.concatenate([cut[a][: s * SR], GAP, cut[b][: s * SR]]))
                for a, b in zip(names, names[1:] + names[:1]) if min(len(cut[a]), len(cut[b])) >= s * SR]
    for a, b, c in zip(names, names[1:] + names[:1], names[2:] + names[:2]):
        if len(cut[a]) >= 8 * SR and len(cut[b]) >= 4 * SR:
            out.append(("A-B-A 4 s turns", 2, np.concatenate([cut[a][: 4 * SR], GAP, cut[b][: 4 * SR], GAP,
                                                                cut[a][4 * SR: 8 * SR]])))
        if min(len(cut[a]), len(cut[b]), len(cut[c])) >= 3 * SR:
            out.append(("three 3 s each", 3, np.concatenate([cut[a][: 3 * SR], GAP, cut[b][: 3 * SR], GAP,
                                                               cut[c][: 3 * SR]])))
    return out


def run(wavs: dict[str, np.ndarray], checkpoint: str | None, drops: list[float], conditions: list[str]) -> dict:
    """``{(condition, kind): [clips, right at each drop...]}`` in the order built."""
    from tqdm import tqdm
    embedder = load_embedder(checkpoint)
    cfg = DiarizeConfig(refine=False)
    out: dict[tuple[str, str], list[int]] = {}
    cut = clips(wavs)
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=len(cut) * len(conditions), unit="clip",
                                                    desc="short clips") as bar:
        path = Path(tmp) / "clip.wav"
        for cond in conditions:
            for kind, k, x in cut:
                bar.update()
                sf.write(path, degrade.telephone(x) if cond == "telephone" else x, SR)
                with warnings.catch_warnings(), AudioStream(path) as stream:
                    warnings.simplefilter("ignore")
                    a = analyse(stream, embedder, cfg)
                row = out.setdefault((cond, kind), [0] * (1 + len(drops)))
                row[0] += 1
                for i, d in enumerate(drops):
                    row[1 + i] += len(decide(a, None, None, dataclasses.replace(cfg, short_merge_drop=d)).labels) == k
    return out


def table(res: dict, drops: list[float]) -> str:
    lines = ["| condition | clips | count right, drop " + " | ".join(f"{d:g}" for d in drops) + " |",
             "|---|---|" + "---|" * len(drops)]
    for (cond, kind), (n, *right) in res.items():
        lines.append(f"| {cond} | {kind} ({n}) | " + " | ".join(f"{r}" for r in right) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voices", type=Path, default=SHARED / "librispeech-sample" / "test-other",
                    help="a folder with one sub-folder of audio per speaker (default: librispeech-sample test-other)")
    ap.add_argument("--max-voices", type=int, help="the first N speakers only")
    ap.add_argument("--checkpoint", help="the model (default: the pretrained base)")
    ap.add_argument("--drops", type=float, nargs="+", default=[0.0, DiarizeConfig.short_merge_drop],
                    help="short_merge_drop values side by side (default: 0 and the default)")
    ap.add_argument("--conditions", nargs="+", choices=["clean", "telephone"], default=["clean", "telephone"])
    a = ap.parse_args(argv)
    try:
        res = run(voices(a.voices, a.max_voices), a.checkpoint, a.drops, a.conditions)
    except (SpkidError, OSError) as e:
        print(f"diarization_short: {e}", file=sys.stderr)
        return 2
    print(table(res, a.drops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
