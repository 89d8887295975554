"""``spkid predict``: checkpoints + test data (HW4 directory, ``.pt`` or audio files) -> Kaggle CSV ``Id,Category``."""
from __future__ import annotations

from pathlib import Path

from spkid.data.hw4 import write_predictions
from spkid.errors import DataError
from spkid.scoring.model import ensemble_scores, load, none_readable


def gather_inputs(models, source: str | Path, progress: bool = True, failures: list | None = None
                  ) -> tuple[list[str], list]:
    """``(ids, features)`` for an HW4 directory (``testdata.json``; Id = feature_path), or for ``.pt`` feature and
    audio files, a file or a folder searched recursively (Id = path relative to the folder, or the file name).
    ``failures``: collects ``(index, message)`` of unreadable files (their feature is None) instead of raising."""
    from spkid.data.features import load_test_features
    from spkid.data.scan import gather
    src = Path(source)
    if src.is_dir() and (src / "testdata.json").is_file():
        data = load_test_features(src, models[0].cfg.features.n_mels, progress=progress,
                                  definition=models[0].cfg.features)
        return [u.feature_path for u in data.utts], data.feats
    ids, items = gather(src)
    if src.is_file():
        ids = [src.name]                   # a CSV Id is the file name, not the path typed
    return ids, models[0].features(items, failures=failures, level=False)      # what `prepare` writes of it


def gather_paths(models, source: str | Path) -> tuple[list[str], list[Path], list[int]]:
    """``(ids, files, lengths)`` as ``gather_inputs`` names them, without reading features: for ``--nproc``
    (lengths: ``mel_len`` from ``testdata.json``, else a size-based proxy that only balances the shards)."""
    from spkid.data.features import check_index
    from spkid.data.hw4 import read_testdata
    from spkid.data.scan import gather
    from spkid.scoring.shards import item_lengths
    src = Path(source)
    n_mels = models[0].cfg.features.n_mels
    if src.is_dir() and (src / "testdata.json").is_file():
        file_mels, utts = read_testdata(src)
        check_index(src, "testdata.json", file_mels, n_mels, models[0].cfg.features)
        return [u.feature_path for u in utts], [src / u.feature_path for u in utts], [u.mel_len for u in utts]
    ids, items = gather(src)
    if src.is_file():
        ids = [src.name]
    return ids, items, item_lengths(items, n_mels)


def predict(checkpoints: list[str], source: str | Path, output: str | Path, *, device: str = "auto",
            window: int | None = None, progress: bool = True, runtime: str = "torch", threads: int = 0,
            quantize: bool = False, nproc: int = 0) -> int:
    """Predict every test item with the mean probability of ``checkpoints``; returns the number of rows.

    ``runtime="onnx"``: ONNX Runtime on the CPU with ``threads`` intra-op threads (0: the free cores).
    ``nproc > 1``: ``nproc`` processes, resumable shard by shard (``spkid.scoring.shards``).
    """
    from spkid.data.scan import input_files
    from spkid.fileio import refuse_overwriting_inputs
    refuse_overwriting_inputs([output], [*checkpoints, *input_files(source)])
    sharded = nproc > 1
    models = [load(c, "cpu" if sharded else device, runtime=runtime, threads=threads, quantize=quantize)
              for c in checkpoints]
    for m in models:
        if window is not None:
            m.cfg.infer.window = window
    if sharded:
        from spkid.scoring.shards import remove_shards, run_sharded
        ids, items, lengths = gather_paths(models, source)
        run = run_sharded("scores", models, items, lengths, output, nproc=nproc, device=device, threads=threads)
        probs = run.values
    else:
        failures: list = []                   # unreadable files: a row with an empty Category, a warning each
        ids, feats = gather_inputs(models, source, progress, failures)
        good = [k for k, f in enumerate(feats) if f is not None]
        if not good:
            raise none_readable(failures)
        probs = ensemble_scores(models, [feats[k] for k in good])
    speakers = models[0].speakers
    labels = [speakers[i] for i in probs.argmax(-1).tolist()]
    if not sharded and len(good) < len(ids):
        by_k = dict(zip(good, labels))
        labels = [by_k.get(k, "") for k in range(len(ids))]
    write_predictions(output, ids, labels)
    if sharded:
        remove_shards(run)
    return len(ids)
