"""A model never reads tensors made with another log-mel definition than its own (``spkid.data.definition``):
``features.json`` of ``spkid prepare`` is compared on training and at every entry that reads ``.pt`` features."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import make_hw4
from spkid.config import FeatureConfig, apply_overrides, load_config
from spkid.data.definition import check_definition, differences, feature_definition
from spkid.errors import DataError


def _definition(folder, **changes):
    d = {**FeatureConfig().__dict__, **changes, "vad": True}             # as spkid prepare writes it
    (folder / "features.json").write_text(json.dumps(d))


def test_a_folder_without_features_json_holds_hw4_tensors(tmp_path):
    assert feature_definition(tmp_path) == FeatureConfig()
    check_definition(tmp_path, FeatureConfig(f_max=8000.0), "x")      # f_max 0 is the Nyquist frequency: same
    _definition(tmp_path)
    check_definition(tmp_path, FeatureConfig(), "x")
    assert differences(FeatureConfig(f_max=4000.0, hop=80), FeatureConfig()) == ["hop 80 (model: 160)",
                                                                                  "f_max 4000 (model: 8000)"]


def test_another_definition_is_refused_naming_the_file_and_a_rewrite_is_seen(tmp_path):
    _definition(tmp_path, f_min=300.0)
    with pytest.raises(DataError, match=r"^x\.pt: .*another log-mel definition.*f_min 300 \(model: 0\)"):
        check_definition(tmp_path, FeatureConfig(), "x.pt")
    _definition(tmp_path)                                               # prepared again with the model's definition
    check_definition(tmp_path, FeatureConfig(), "x.pt")


def test_an_unreadable_definition_is_a_one_line_error(tmp_path):
    (tmp_path / "features.json").write_text("{broken")
    with pytest.raises(DataError, match="features.json: unreadable feature definition"):
        feature_definition(tmp_path)
    (tmp_path / "features.json").write_text(json.dumps({"f_max": "high"}))
    with pytest.raises(DataError, match="unreadable feature definition"):
        feature_definition(tmp_path)


def test_training_refuses_tensors_of_another_definition_and_names_the_settings(tmp_path):
    from spkid.training.loop import train
    data = make_hw4(tmp_path / "hw4")["root"]
    _definition(data, hop=80, f_max=4000.0)
    cfg = apply_overrides(load_config("tiny"), ["train.steps=2"])
    with pytest.raises(DataError, match=r"features.json: .*hop 80 \(run: 160\).*train with --set features.hop=80 "
                                        r"--set features.f_max=4000$"):
        train(data, tmp_path / "run", cfg, progress=False)
    assert not (tmp_path / "run" / "last.ckpt").exists()
    cfg = apply_overrides(cfg, ["features.hop=80", "features.f_max=4000"])
    assert train(data, tmp_path / "run2", cfg, progress=False).best.exists()


def test_every_reading_path_refuses_them(trained, tmp_path):
    from spkid.report.evaluate import evaluate_test, evaluate_trials
    from spkid.scoring.model import load
    from spkid.scoring.predict import predict
    other = tmp_path / "other"
    shutil.copytree(trained["unseen"]["root"], other)
    _definition(other, n_fft=512)
    model = load(trained["ckpt"], "cpu")
    one = next(other.glob("uttr-*.pt"))
    with pytest.raises(DataError, match=rf"^{one}: .*n_fft 512 \(model: 400\)"):
        model.features([one])
    for call in (lambda: evaluate_test(model, other, None, progress=False),
                 lambda: evaluate_trials(model, other, progress=False),
                 lambda: predict([str(trained["ckpt"])], other, tmp_path / "p.csv", device="cpu", progress=False)):
        with pytest.raises(DataError, match=r"n_fft 512 \(model: 400\)"):
            call()
    assert not (tmp_path / "p.csv").exists()
    # the same folder with the model's definition reads as before
    _definition(other)
    assert len(model.features([one])) == 1
