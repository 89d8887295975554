"""RTTM / UEM / CSV files: the ten standard fields, the file stem, names with spaces, one-line errors."""
import pytest

from spkid.diarization.rttm import Segment, read_rttm, read_uem, rttm_lines, write_rttm, write_segments_csv
from spkid.errors import DataError


def test_rttm_has_ten_fields_and_round_trips(tmp_path):
    segs = [Segment("meeting", 0.5, 2.25, "SPEAKER_00", 0.9), Segment("meeting", 2.25, 4.0, "Ada Lovelace", 2.1)]
    lines = rttm_lines(segs)
    assert lines[0] == "SPEAKER meeting 1 0.500 1.750 <NA> <NA> SPEAKER_00 <NA> <NA>"
    assert all(len(ln.split()) == 10 for ln in lines) and lines[1].split()[7] == "Ada_Lovelace"
    write_rttm(tmp_path / "a.rttm", segs)
    back = read_rttm(tmp_path / "a.rttm")
    assert [(s.file, s.start, s.end, s.speaker) for s in back] == [("meeting", 0.5, 2.25, "SPEAKER_00"),
                                                                   ("meeting", 2.25, 4.0, "Ada_Lovelace")]
    write_segments_csv(tmp_path / "a.csv", segs)
    assert (tmp_path / "a.csv").read_text().splitlines()[2] == "meeting,2.250,4.000,Ada Lovelace,2.1000"
    write_rttm(tmp_path / "empty.rttm", [])
    assert (tmp_path / "empty.rttm").read_text() == "" and read_rttm(tmp_path / "empty.rttm") == []


def test_reader_skips_comments_and_names_bad_lines(tmp_path):
    p = tmp_path / "r.rttm"
    p.write_text(";; comment\nSPKR-INFO x 1 <NA> <NA> <NA> unknown A <NA>\nSPEAKER x 1 1.0 2.0 <NA> <NA> A <NA> <NA>\n"
                 "SPEAKER x 1 abc 2.0 <NA> <NA> B <NA> <NA>\n")
    with pytest.raises(DataError, match=r"r\.rttm: line 4: onset 'abc' is not a number"):
        read_rttm(p)
    p.write_text("SPEAKER x 1 1.0\n")
    with pytest.raises(DataError, match=r"line 1: expected 10 RTTM fields .* found 4"):
        read_rttm(p)
    with pytest.raises(DataError, match="missing.rttm: file not found"):
        read_rttm(tmp_path / "missing.rttm")


def test_uem(tmp_path):
    p = tmp_path / "u.uem"
    p.write_text("a 1 0.0 10.0\na 1 20 30\nb 1 5 6\n")
    assert read_uem(p) == {"a": [(0.0, 10.0), (20.0, 30.0)], "b": [(5.0, 6.0)]}
    p.write_text("a 1 5 4\n")
    with pytest.raises(DataError, match="u.uem: line 1: end 4.0 is not after start 5.0"):
        read_uem(p)
