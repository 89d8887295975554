"""Nothing exhausted: tiny files that describe huge tensors, audio at absurd rates, checkpoints asking for huge
models are refused before anything is allocated (checked under an address-space limit in a subprocess)."""
from __future__ import annotations

import textwrap

from rel_helpers import *  # noqa: F401,F403
from rel_helpers import _cli, _one_line_error, _voice  # noqa: F401

LIMIT = 3 << 30          # 3 GiB of address space: torch imports fine; 160 GB or 24 GB allocations fail loudly


def _limited(tmp_path, args) -> subprocess.CompletedProcess:
    """``spkid ARGS`` in a subprocess whose address space is capped: a refusal is fine, a MemoryError is not."""
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({LIMIT}, {LIMIT}))
        from spkid.cli import main
        sys.exit(main({[str(a) for a in args]!r}))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_zero_stride_view_of_a_billion_frames_is_refused(model, tmp_path):
    pt = tmp_path / "in" / "x.pt"
    pt.parent.mkdir()
    torch.save(torch.zeros(1, 40).expand(1_000_000_000, 40), pt)
    assert pt.stat().st_size < 4096
    r = _limited(tmp_path, ["predict", model["ckpt"], pt.parent, "-o", tmp_path / "p.csv", "--quiet"])
    assert r.returncode == 1 and "MemoryError" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and "x.pt" in line[0] and "view" in line[0]


def test_one_hertz_wav_is_refused_by_predict_and_skipped_by_prepare(model, tmp_path):
    wav = tmp_path / "spk" / "a" / "slow.wav"
    wav.parent.mkdir(parents=True)
    sf.write(wav, np.zeros(200_000, dtype=np.int16), 1)          # 400 KB at 1 Hz: 55 hours
    sf.write(wav.parent / "ok.wav", _voice(16000), 16000)
    r = _limited(tmp_path, ["predict", model["ckpt"], wav, "-o", tmp_path / "p.csv", "--quiet"])
    assert r.returncode == 1 and "sample rate 1 Hz" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _limited(tmp_path, ["prepare", wav.parent.parent, tmp_path / "out", "--workers", "1", "--quiet"])
    assert r.returncode == 2, r.stderr                                   # the rest prepared, the bad one skipped
    report = (tmp_path / "out" / "prepare_report.txt").read_text()
    assert "slow.wav" in report and "sample rate 1 Hz" in report


def test_checkpoint_asking_for_a_huge_model_is_refused_before_allocating(model, tmp_path):
    ck = torch.load(model["ckpt"], weights_only=True)
    ck["config"]["model"]["d_model"] = 200_000
    ck["config"]["model"]["n_heads"] = 2
    bad = tmp_path / "huge.ckpt"
    torch.save(ck, bad)
    r = _limited(tmp_path, ["predict", bad, model["root"], "-o", tmp_path / "p.csv", "--quiet"])
    assert r.returncode == 1 and "MemoryError" not in r.stderr, r.stderr
    assert "weights do not fit this model configuration" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _quantised():
    return torch.quantize_per_tensor(torch.randn(5, 40), 0.1, 0, torch.qint8)


@pytest.mark.parametrize("make, needle", [
    (lambda: torch.randn(5, 40).to_sparse(), "sparse"),
    (lambda: torch.nested.nested_tensor([torch.randn(5, 40), torch.randn(3, 40)]), "nested"),
    (_quantised, "quantised"),
    (lambda: torch.randn(5, 40).to(torch.float8_e4m3fn), "float8"),
    (lambda: torch.randn(5, 40).to(torch.complex64), "complex64"),
    (lambda: torch.randn(5, 40).as_strided((5, 40), (0, 1)), "view"),
], ids=["sparse", "nested", "quantised", "float8", "complex", "overlapping"])
def test_exotic_tensors_get_one_line_errors(model, tmp_path, capsys, make, needle):
    pt = tmp_path / "x.pt"
    try:
        torch.save(make(), pt)
    except Exception as e:                      # a torch build that cannot even save this kind
        pytest.skip(f"torch cannot save it: {e}")
    rc, _, err = _cli(capsys, "predict", model["ckpt"], pt, "-o", tmp_path / "p.csv", "--quiet")
    _one_line_error(rc, err, "x.pt")
    assert needle in err or "not supported" in err or "float16/float32" in err
    assert not (tmp_path / "p.csv").exists()


def test_meta_tensors_in_a_checkpoint_are_refused(model, tmp_path, capsys):
    ck = torch.load(model["ckpt"], weights_only=True)
    k = next(iter(ck["model"]))
    ck["model"][k] = torch.empty(ck["model"][k].shape, device="meta")
    bad = tmp_path / "meta.ckpt"
    try:
        torch.save(ck, bad)
    except Exception as e:
        pytest.skip(f"torch cannot save meta tensors: {e}")
    rc, _, err = _cli(capsys, "predict", bad, model["root"], "-o", tmp_path / "p.csv", "--quiet")
    _one_line_error(rc, err, "meta.ckpt")
