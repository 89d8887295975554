"""``spkid predict``: checkpoints + test data (HW4 directory, ``.pt`` or audio files) -> Kaggle CSV ``Id,Category``."""
from __future__ import annotations

from pathlib import Path

from spkid.data.hw4 import write_predictions
from spkid.scoring.model import ensemble_scores, load


def gather_inputs(models, source: str | Path, progress: bool = True) -> tuple[list[str], list]:
    """``(ids, features)`` for an HW4 directory (``testdata.json``; Id = feature_path), or for ``.pt`` feature and
    audio files, a file or a folder searched recursively (Id = path relative to the folder, or the file name)."""
    from spkid.data.features import load_test_features
    from spkid.data.scan import gather
    src = Path(source)
    if src.is_dir() and (src / "testdata.json").is_file():
        data = load_test_features(src, models[0].cfg.features.n_mels, progress=progress)
        return [u.feature_path for u in data.utts], data.feats
    ids, items = gather(src)
    if src.is_file():
        ids = [src.name]                   # a CSV Id is the file name, not the path typed
    return ids, models[0].features(items)


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
