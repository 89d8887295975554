"""Outputs that cannot be written."""
from __future__ import annotations

from rel_helpers import *  # noqa: F401,F403  (imports, _cli, _spkid, _one_line_error, ...)
from rel_helpers import _cli, _edit_json, _env, _no_temp_files, _one_line_error, _spkid, _voice  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")

# ------------------------------------------------------------------ outputs that cannot be written

def test_unwritable_output_is_one_line_error(model, tmp_path, capsys):
    utt = next(model["root"].glob("uttr-t*.pt"))
    target = tmp_path / "is_a_dir"
    target.mkdir()
    rc, _, err = _cli(capsys, "predict", model["ckpt"], utt, "-o", target, "--quiet")
    _one_line_error(rc, err, f"{target}: cannot write")
    rc, _, err = _cli(capsys, "embed", model["ckpt"], utt, "-o", tmp_path / "e.txt")
    _one_line_error(rc, err, "e.txt: output must end in .npz or .pt")
    _no_temp_files(tmp_path)
