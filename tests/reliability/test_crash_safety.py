"""SIGKILL mid-step or mid-write, SIGINT: resumable, identical weights."""
from __future__ import annotations

from rel_helpers import *  # noqa: F401,F403  (imports, _cli, _spkid, _one_line_error, ...)
from rel_helpers import _cli, _edit_json, _env, _no_temp_files, _one_line_error, _spkid, _voice  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")

# ------------------------------------------------------------------ crash safety: SIGKILL mid-step, mid-write; SIGINT

# Started as `python -c KILLER <spkid args>`: kills itself with SIGKILL after the Nth backward pass, or halfway
# through writing the Nth last.ckpt (half the bytes on disk, fsynced, then death): no hook in the library.
KILLER = r"""
import io, os, signal, sys
import torch
mode, n, count = os.environ["SPKID_KILL_MODE"], int(os.environ["SPKID_KILL_AT"]), [0]
if mode == "backward":
    real_backward = torch.Tensor.backward
    def backward(self, *a, **k):
        real_backward(self, *a, **k)
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    torch.Tensor.backward = backward
else:
    real_save = torch.save
    def save(obj, f, *a, **k):
        if isinstance(f, (str, os.PathLike)) and ".last.ckpt." in os.fspath(f):
            count[0] += 1
            if count[0] == n:
                buf = io.BytesIO()
                real_save(obj, buf, *a, **k)
                with open(f, "wb") as fh:
                    fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)
    torch.save = save
from spkid.cli import main
sys.exit(main(sys.argv[1:]))
"""

STEPS, CKPT_EVERY = 12, 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run of the same command, trained in this process (same thread count)."""
    base = tmp_path_factory.mktemp("crash")
    root = make_hw4(base / "hw4", n_speakers=3, per_speaker=4, n_test=1)["root"]
    cfg = apply_overrides(load_config("tiny"), [f"train.ckpt_every={CKPT_EVERY}", f"train.steps={STEPS}",
                                                "train.max_minutes=0", "train.device=cpu"])
    r = train(root, base / "reference", cfg, progress=False)
    return {"root": root, "ckpt": load_checkpoint(r.last)}


KILL_CASES = [
    ("backward", 7, 4),        # killed after step 7's backward, before its optimizer step: last.ckpt is step 4
    ("write", 2, 4),           # killed halfway through writing step 8's last.ckpt: the step-4 one is intact
]


@pytest.mark.parametrize("mode, kill_at, resumes_from", KILL_CASES, ids=[c[0] for c in KILL_CASES])
def test_sigkill_then_resume_gives_identical_weights(reference, tmp_path, mode, kill_at, resumes_from):
    run = tmp_path / "run"
    args = ["train", str(reference["root"]), "--out", str(run), "--config", "tiny", "--steps", str(STEPS),
            "--set", f"train.ckpt_every={CKPT_EVERY}", "--device", "cpu", "--quiet"]
    env = {**_env(), "SPKID_KILL_MODE": mode, "SPKID_KILL_AT": str(kill_at)}
    r = subprocess.run([sys.executable, "-c", KILLER, *args], capture_output=True, text=True, timeout=120,
                       cwd=REPO, env=env)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert load_checkpoint(run / "last.ckpt")["step"] == resumes_from          # the last complete checkpoint loads
    leftovers = [p for p in run.iterdir() if p.name.endswith(".tmp")]
    if mode == "write":
        assert len(leftovers) == 1 and leftovers[0].name.startswith(".last.ckpt.")   # the half-written file...
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            load_checkpoint(leftovers[0])                                       # ...is not a checkpoint
    assert sorted(p.name for p in run.glob("*.ckpt")) == ["last.ckpt"]          # and never looks like one
    r = _spkid("train", reference["root"], "--out", run, "--resume", "--device", "cpu", "--quiet")
    assert r.returncode == 0 and f"done: {STEPS} steps" in r.stdout, r.stderr
    resumed, ref = load_checkpoint(run / "last.ckpt"), reference["ckpt"]
    assert resumed["step"] == ref["step"] == STEPS
    assert resumed["model"].keys() == ref["model"].keys()
    assert all(torch.equal(resumed["model"][k], ref["model"][k]) for k in ref["model"])
    opt_a, opt_b = resumed["optimizer"]["state"], ref["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_b)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]            # resume removed the stale temp


def _default_sigint():
    # a test run started in the background inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: give the child the disposition a terminal would
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_saves_checkpoint_exits_130_and_resume_finishes(tmp_path, sig):
    """Ctrl-C, and SIGTERM as docker stop or Slurm preemption send it, save a resumable checkpoint."""
    root = make_hw4(tmp_path / "hw4", n_speakers=3, per_speaker=3, n_test=1)["root"]
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "spkid", "train", str(root), "--out", str(run), "--config",
                             "tiny", "--steps", "100000", "--set", "train.ckpt_every=1000000", "--device", "cpu",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=_env(), preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 90
        while not (run / "metrics.jsonl").exists():              # first written at step 25: training is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted, checkpoint saved (--resume to continue)" in out and "Traceback" not in err
    step = load_checkpoint(run / "last.ckpt")["step"]               # the only save: ckpt_every is never reached
    assert 25 <= step < 100000
    _no_temp_files(run)
    r = _spkid("train", root, "--out", run, "--resume", "--steps", step + 3, "--device", "cpu", "--quiet")
    assert r.returncode == 0 and f"done: {step + 3} steps" in r.stdout, r.stderr
    assert load_checkpoint(run / "last.ckpt")["step"] == step + 3
