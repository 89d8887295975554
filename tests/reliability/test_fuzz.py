"""Property-based: random CSV text and lists, .pt contents, JSON index structures, registry meta values."""
from __future__ import annotations

from rel_helpers import *  # noqa: F401,F403  (imports, _cli, _spkid, _one_line_error, ...)
from rel_helpers import _cli, _edit_json, _env, _no_temp_files, _one_line_error, _spkid, _voice  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")

# ------------------------------------------------------------------ property-based: random CSV text

_CSV_CHARS = st.sampled_from(list('ab1,\t\n\r" \x00\ufeffé;'))
_csv_text = st.text(_CSV_CHARS, max_size=60)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(_csv_text, st.builds(lambda s: "Id,Category\n" + s, _csv_text), st.binary(max_size=60)))
def test_random_answers_csv_reads_or_names_file(tmp_path_factory, body):
    p = tmp_path_factory.mktemp("answers") / "answers.csv"
    (p.write_bytes if isinstance(body, bytes) else p.write_text)(body)
    try:
        got = read_answers_csv(p)
    except DataError as e:
        assert str(e).startswith(f"{p}: ") and "\n" not in str(e)
    else:
        assert all(k and v and k == k.strip() and v == v.strip() for k, v in got.items())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from(["", "path,speaker\n", "audio\tspeaker\n", "path\n"]), body=_csv_text,
       suffix=st.sampled_from([".csv", ".tsv"]))
def test_random_prepare_list_gives_data_error_naming_the_list(tmp_path_factory, header, body, suffix):
    """No listed file exists, so every list ends in a DataError that names the list (never another exception)."""
    d = tmp_path_factory.mktemp("lists")
    lst = d / f"zz{suffix}"
    lst.write_text(header + body)
    with pytest.raises(DataError) as e:
        prepare(lst, d / "out", workers=1, progress=False)
    assert str(e.value).startswith(f"{lst}: ") and "\n" not in str(e.value)


# ------------------------------------------------------------------ property-based: .pt contents

_DTYPES = [torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.uint8, torch.bool]


@st.composite
def _tensors(draw):
    shape = draw(st.lists(st.integers(0, 6), min_size=0, max_size=3))
    dtype = draw(st.sampled_from(_DTYPES))
    x = torch.zeros(shape, dtype=dtype)
    if x.numel() and dtype.is_floating_point:
        fill = draw(st.sampled_from([0.0, 1.0, -5.0, float("nan"), float("inf"), 1e30]))
        x = x.fill_(fill) if fill != 1e30 or dtype != torch.float16 else x
    if draw(st.booleans()) and x.dim() == 2 and x.shape[0] > 0:
        x = x[:1].expand(draw(st.integers(1, 10 ** 9)), x.shape[1])              # a broadcast view
    return x


_PT_OBJECTS = st.one_of(_tensors(), st.none(), st.integers(), st.text(max_size=5),
                        st.lists(_tensors(), max_size=2), st.dictionaries(st.text(max_size=3), _tensors(), max_size=2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=_PT_OBJECTS, n_mels=st.sampled_from([40, 6]), expect=st.one_of(st.none(), st.integers(1, 8)))
def test_random_pt_contents_load_or_name_the_file(tmp_path_factory, obj, n_mels, expect):
    from spkid.data.hw4 import load_tensor
    p = tmp_path_factory.mktemp("pt") / "x.pt"
    torch.save(obj, p)
    try:
        x = load_tensor(p, n_mels, expect)
    except DataError as e:
        assert str(e).startswith(str(p)) and "\n" not in str(e)
    else:
        assert x.dtype == torch.float16 and x.shape[1] == n_mels and torch.isfinite(x).all()


# ------------------------------------------------------------------ property-based: JSON index structure

_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 1000), st.floats(allow_nan=False),
                               st.sampled_from(["uttr-a.pt", "../x.pt", "/abs.pt", "", "./uttr-a.pt", "spk0"])),
                     lambda inner: st.one_of(st.lists(inner, max_size=3),
                                             st.dictionaries(st.sampled_from(
                                                 ["n_mels", "speakers", "utterances", "feature_path", "mel_len",
                                                  "speaker2id", "id2speaker", "spk0", "0"]), inner, max_size=4)),
                     max_leaves=12)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=_JSON, mapping=_JSON, test=_JSON)
def test_random_json_indexes_read_or_name_the_file(tmp_path_factory, meta, mapping, test):
    from spkid.data.hw4 import read_testdata, read_train
    root = tmp_path_factory.mktemp("hw4")
    torch.save(torch.zeros(3, 40), root / "uttr-a.pt")
    for name, obj in (("metadata.json", meta), ("mapping.json", mapping), ("testdata.json", test)):
        (root / name).write_text(json.dumps(obj))
    for reader in (read_train, read_testdata):
        try:
            reader(root)
        except DataError as e:
            assert str(e).startswith(str(root)) and "\n" not in str(e)


# ------------------------------------------------------------------ property-based: registry meta values

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["format", "schema_version", "model_id", "checkpoint", "embed_dim", "threshold",
                            "threshold_source", "threshold_locked", "threshold_scale", "fallback_threshold",
                            "enroll_config", "domain", "cohort", "calibration"]),
       value=st.one_of(st.text(max_size=8), st.sampled_from(["nan", "inf", "-1", "0", "1e999", "", "2", "1", "[]",
                                                             "null", '{"kind": 3}', '{"a": 1}'])))
def test_random_registry_meta_opens_or_names_the_file(tmp_path_factory, key, value):
    import sqlite3

    from spkid.scoring.speaker_db import SpeakerDB
    reg = tmp_path_factory.mktemp("reg") / "r.db"
    SpeakerDB.create(reg, model_id="m", checkpoint="c", embed_dim=4, threshold=0.5).close()
    conn = sqlite3.connect(reg)
    conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    conn.commit()
    conn.close()
    try:
        db = SpeakerDB.open(reg)
    except DataError as e:
        assert str(e).startswith(str(reg)) and "\n" not in str(e)
    else:
        try:
            assert db.threshold == db.threshold and db.embed_dim >= 1       # finite threshold, positive width
            db.speakers()
            db.threshold_state()                                             # parses the JSON meta (schema 2)
            db.calibration
        except DataError as e:
            assert str(e).startswith(str(reg)) and "\n" not in str(e)
        finally:
            db.close()
