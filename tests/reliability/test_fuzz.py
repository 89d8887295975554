"""Property-based: random CSV text and lists."""
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
