"""``spkid predict``: checkpoints + test data (HW4 directory or audio) -> Kaggle CSV ``Id,Category``."""
from __future__ import annotations

from pathlib import Path

from .errors import DataError
from .infer import ensemble_scores, load, write_predictions


def gather_inputs(models, source: str | Path, progress: bool = True) -> tuple[list[str], list]:
    """``(ids, features)`` for an HW4 directory (``testdata.json``; Id = feature_path) or audio file(s)
    (Id = path relative to the given folder, or the file name)."""
    from .data.features import load_test_features
    src = Path(source)
    n_mels = models[0].cfg.model.n_mels
    if src.is_dir() and (src / "testdata.json").is_file():
        data = load_test_features(src, n_mels, progress=progress)
        return [u.feature_path for u in data.utts], data.feats
    if src.is_dir():
        from .audio import list_audio
        files = list_audio(src)
        if not files:
            raise DataError(f"{src}: no testdata.json and no audio files")
        ids = [str(f.relative_to(src)) for f in files]
    elif src.is_file():
        files, ids = [src], [src.name]
    else:
        raise DataError(f"{src}: input not found")
    return ids, models[0].features(files)


def predict(checkpoints: list[str], source: str | Path, output: str | Path, *, device: str = "auto",
            window: int | None = None, progress: bool = True) -> int:
    """Predict every test item with the mean probability of ``checkpoints``; returns the number of rows."""
    models = [load(c, device) for c in checkpoints]
    for m in models:
        if window is not None:
            m.cfg.infer.window = window
    ids, feats = gather_inputs(models, source, progress)
    probs = ensemble_scores(models, feats)
    speakers = models[0].speakers
    write_predictions(output, ids, [speakers[i] for i in probs.argmax(-1).tolist()])
    return len(ids)
