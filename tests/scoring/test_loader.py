"""The one way in: shipped names resolve through ``spkid.pretrained``, the ONNX cache of a model inside the
package goes to the user cache, and fine-tuning/export refuse architectures that are not spkid's own."""
from __future__ import annotations

import sys
import types

import pytest

import spkid
from spkid.errors import CheckpointError
from spkid.scoring import onnx_cache
from spkid.scoring.loader import open_model, resolve, spkid_architecture


def test_shipped_names_resolve_through_spkid_pretrained(trained, monkeypatch):
    import spkid.pretrained
    monkeypatch.setattr(spkid.pretrained, "shipped_path", lambda name: trained["ckpt"])
    assert resolve("base") == trained["ckpt"]
    m = spkid.load("base", "cpu")
    assert m.path == trained["ckpt"] and m.card["arch"] == "spkid" and m.name == "base"
    assert open_model("base").model_id == m.model_id


def test_onnx_cache_of_a_shipped_model_goes_to_the_user_cache(trained, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_cache, "inside_package", lambda p: True)
    m = spkid.load(trained["ckpt"], runtime="onnx", threads=1)
    assert m.runner.path == tmp_path / "cache" / "spkid" / "onnx" / f"{m.model_id}.onnx"


def test_inside_package_sees_package_files_only(tmp_path):
    assert onnx_cache.inside_package(spkid.__file__.replace("__init__.py", "configs/tiny.toml"))
    assert not onnx_cache.inside_package(tmp_path / "x.ckpt")


def test_other_architectures_cannot_be_fine_tuned(tmp_path):
    pytest.importorskip("onnxruntime")
    from spkid.importers.resemblyzer import import_resemblyzer
    try:
        import_resemblyzer(tmp_path / "rz.ckpt")
    except CheckpointError:
        pytest.skip("resemblyzer not installed")
    with pytest.raises(CheckpointError, match=r"rz.ckpt: fine-tuning \(train --init\) needs a model of spkid's own "
                                              r"architecture; this one is 'ge2e'"):
        spkid_architecture(tmp_path / "rz.ckpt", "fine-tuning (train --init)")


def test_info_on_a_trained_checkpoint(trained, capsys):
    from spkid.cli import main
    assert main(["info", str(trained["ckpt"])]) == 0
    out = capsys.readouterr().out
    assert "architecture:  spkid" in out and "speakers:      6 (closed-set classes)" in out and "fingerprint:" in out
