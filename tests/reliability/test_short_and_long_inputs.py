"""Utterances of one to three frames, and very long ones."""
from __future__ import annotations

from rel_helpers import *  # noqa: F401,F403  (imports, _cli, _spkid, _one_line_error, ...)
from rel_helpers import _cli, _edit_json, _env, _no_temp_files, _one_line_error, _spkid, _voice  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")

# ------------------------------------------------------------------ very short utterances

def test_one_two_three_frame_utterances_predict(model, tmp_path, capsys):
    root = make_hw4(tmp_path / "hw4", n_speakers=2, per_speaker=1, n_test=3, seed=9, lengths=(1, 3))["root"]
    for i, n in enumerate((1, 2, 3)):                         # exactly 1, 2 and 3 frames
        u = json.loads((root / "testdata.json").read_text())["utterances"][i]
        torch.save(torch.randn(n, 40).half() - 5, root / u["feature_path"])
        _edit_json(root / "testdata.json", lambda d: d["utterances"][i].update(mel_len=n))
    rc, _, err = _cli(capsys, "predict", model["ckpt"], root, "-o", tmp_path / "p.csv", "--quiet")
    assert rc == 0, err
    assert len(list(csv.reader(open(tmp_path / "p.csv")))) == 4


@pytest.mark.parametrize("preset", ["tiny", "default", "conformer", "hw4-sample", "demo", "hw4-gpu"])
def test_every_preset_and_attention_embeds_one_to_three_frames(preset):
    """Shorter than every convolution kernel and attention window: finite embeddings, no shape errors."""
    attentions = ("full", "linformer", "local", "sparse", "adaptive")
    for attention in attentions if load_config(preset).model.encoder != "tdnn" else ("full",):
        net = build_model(apply_overrides(load_config(preset), [f"model.attention={attention}"]), 5).eval()
        with torch.no_grad():
            for t in (1, 2, 3):
                emb = net.embed(torch.randn(2, t, 40) - 5, torch.tensor([t, 1]))
                assert emb.shape == (2, net.embed_dim) and torch.isfinite(emb).all(), (preset, attention, t)


def test_training_on_one_to_three_frame_utterances(tmp_path):
    root = make_hw4(tmp_path / "hw4", n_speakers=2, per_speaker=3, n_test=1, lengths=(1, 3))["root"]
    r = train(root, tmp_path / "run", apply_overrides(load_config("tiny"), ["train.steps=2", "train.device=cpu"]),
              progress=False)
    assert r.steps == 2 and r.finished
    assert all(torch.isfinite(v).all() for v in load_checkpoint(r.last)["model"].values())



# ------------------------------------------------------------------ resource limits: a 10-minute utterance

MEASURE = r"""
import resource, sys
from spkid.cli import main
rc = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(rc)
"""


def test_ten_minute_utterance_predicts_in_bounded_memory(model, tmp_path):
    long = tmp_path / "ten_minutes.pt"
    torch.save(torch.randn(60_000, 40).half() - 5, long)          # 60,000 frames = 10 min at a 10 ms hop
    r = subprocess.run([sys.executable, "-c", MEASURE, "predict", str(model["ckpt"]), str(long), "-o",
                        str(tmp_path / "p.csv"), "--device", "cpu", "--quiet"], capture_output=True, text=True,
                       timeout=300, cwd=REPO, env=_env())
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows[1][0] == "ten_minutes.pt" and rows[1][1] in model["speakers"]
    peak_mb = int(r.stdout.split("MAXRSS_KB")[1].split()[0]) / 1024
    assert peak_mb < 2500, f"peak resident memory {peak_mb:.0f} MB"
