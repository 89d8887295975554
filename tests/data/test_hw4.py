"""HW4 reader: layout, dtypes, and one-line errors naming the file for every kind of bad input."""
import json
import pickle

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spkid.data.features import load_test_features, load_train_features
from spkid.data.hw4 import load_tensor, read_metadata, read_testdata, read_train
from spkid.errors import DataError

from conftest import SHARED_HW4, make_hw4, needs_shared


def test_reads_layout_float16_and_float32(tmp_path):
    for dtype in (torch.float16, torch.float32):
        d = make_hw4(tmp_path / str(dtype), dtype=dtype)
        n_mels, speakers, utts = read_train(d["root"])
        assert n_mels == 40 and speakers == d["speakers"] and len(utts) == 24
        data = load_train_features(d["root"], 40, progress=False)
        assert all(f.dtype == torch.float16 and f.shape == (u.mel_len, 40) for f, u in zip(data.feats, data.utts))
        test = load_test_features(d["root"], 40, progress=False)
        assert [u.feature_path for u in test.utts] == list(d["answers"])


def test_memory_mapped_cache_matches_direct_load(hw4, tmp_path):
    direct = load_train_features(hw4["root"], 40, progress=False)
    cached1 = load_train_features(hw4["root"], 40, progress=False, cache_dir=tmp_path / "cache")
    cached2 = load_train_features(hw4["root"], 40, progress=False, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.f16"))) == 1
    for a, b, c in zip(direct.feats, cached1.feats, cached2.feats):
        assert torch.equal(a, b) and torch.equal(a, c)


def _edit(root, name, fn):
    p = root / name
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


@pytest.mark.parametrize("case, expect", [
    ("missing_dir", "directory not found"),
    ("missing_file", "mapping.json: file not found"),
    ("malformed", "metadata.json: malformed JSON"),
    ("missing_key", "metadata.json: missing key 'speakers'"),
    ("wrong_type", "speakers['spk00'][0].mel_len must be int, found str"),
    ("unknown_speaker", "speaker 'ghost' from metadata.json is missing"),
    ("bad_ids", "ids must be the integers"),
    ("escape_path", "must be a relative path"),
])
def test_bad_json_gives_one_line_error_naming_file(hw4, case, expect):
    root = hw4["root"]
    if case == "missing_dir":
        root = root / "nope"
    elif case == "missing_file":
        (root / "mapping.json").unlink()
    elif case == "malformed":
        (root / "metadata.json").write_text('{"n_mels": 40, "speakers": {')
    elif case == "missing_key":
        _edit(root, "metadata.json", lambda d: d.pop("speakers"))
    elif case == "wrong_type":
        _edit(root, "metadata.json", lambda d: d["speakers"]["spk00"][0].update(mel_len="12"))
    elif case == "unknown_speaker":
        _edit(root, "metadata.json", lambda d: d["speakers"].update(ghost=d["speakers"]["spk00"][:1]) or
              d["speakers"]["spk00"].pop(0))
    elif case == "bad_ids":
        _edit(root, "mapping.json", lambda d: d["speaker2id"].update(spk00=7))
    elif case == "escape_path":
        _edit(root, "metadata.json", lambda d: d["speakers"]["spk00"][0].update(feature_path="../x.pt"))
    with pytest.raises(DataError) as e:
        read_train(root)
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_duplicate_test_ids(hw4):
    _edit(hw4["root"], "testdata.json", lambda d: d["utterances"].append(d["utterances"][0]))
    with pytest.raises(DataError, match="testdata.json: duplicate test id"):
        read_testdata(hw4["root"])


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("case, expect", [
    ("truncated", "cannot load tensor"),
    ("not_tensor", "expected a tensor"),
    ("pickle_code", "unsafe pickle"),
    ("wrong_mels", "expected shape (frames, 40), found (10, 80)"),
    ("zero_len", "zero-length"),
    ("nan", "NaN or Inf"),
    ("int", "expected float16/float32"),
    ("len_mismatch", "json says mel_len 9"),
])
def test_bad_tensors(tmp_path, case, expect):
    p = tmp_path / "uttr-x.pt"
    if case == "truncated":
        torch.save(torch.randn(10, 40), p)
        p.write_bytes(p.read_bytes()[:100])
    elif case == "not_tensor":
        torch.save({"a": 1}, p)
    elif case == "pickle_code":
        p.write_bytes(pickle.dumps(Evil()))
    elif case == "wrong_mels":
        torch.save(torch.randn(10, 80), p)
    elif case == "zero_len":
        torch.save(torch.randn(0, 40), p)
    elif case == "nan":
        x = torch.randn(10, 40)
        x[3, 3] = float("nan")
        torch.save(x, p)
    elif case == "int":
        torch.save(torch.zeros(10, 40, dtype=torch.int64), p)
    elif case == "len_mismatch":
        torch.save(torch.randn(10, 40), p)
    with pytest.raises(DataError) as e:
        load_tensor(p, 40, 9 if case == "len_mismatch" else None)
    assert str(e.value).startswith(str(p)) and expect in str(e.value)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=json_values, test=json_values)
def test_random_json_never_crashes_reader(tmp_path_factory, meta, test):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "metadata.json").write_text(json.dumps(meta))
    (root / "testdata.json").write_text(json.dumps(test))
    for fn in (read_metadata, read_testdata):
        try:
            fn(root)
        except DataError as e:
            assert str(root) in str(e)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_random_bytes_as_tensor_file_give_data_error(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("fuzzpt") / "uttr-x.pt"
    p.write_bytes(data)
    with pytest.raises(DataError):
        load_tensor(p, 40)


@needs_shared
def test_shared_corpus_reads():
    n_mels, speakers, utts = read_train(SHARED_HW4)
    assert n_mels == 40 and len(speakers) == 250 and len(utts) == 3745
    assert load_tensor(SHARED_HW4 / utts[0].feature_path, 40, utts[0].mel_len).dtype == torch.float16
