"""Signals, full disks, locks: SIGTERM stops prepare cleanly, a full disk is one line with nothing half-written,
deeply nested JSON is named, a locked registry is called locked."""
from __future__ import annotations

import sqlite3
import textwrap

from rel_helpers import *  # noqa: F401,F403
from rel_helpers import _cli, _edit_json, _env, _one_line_error, _voice  # noqa: F401

from spkid.scoring.speaker_db import SpeakerDB


def test_sigterm_stops_prepare_with_no_temp_files_and_no_orphaned_workers(tmp_path):
    src = tmp_path / "in"
    for s in range(2):
        (src / f"spk{s}").mkdir(parents=True)
        for i in range(40):
            sf.write(src / f"spk{s}" / f"{i}.wav", _voice(16000, seconds=3.0, seed=i), 16000)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "spkid", "prepare", str(src), str(out), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("uttr-*.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    time.sleep(0.5)
    alive = [c for c in children if Path(f"/proc/{c}").exists()
             and "zombie" not in Path(f"/proc/{c}/status").read_text().lower()]
    assert not alive, f"workers left running: {alive}"
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    for pt in out.glob("uttr-*.pt"):                 # every finished file is whole
        assert torch.load(pt, weights_only=True).shape[1] == 40


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_nothing_half_written(tmp_path):
    """RLIMIT_FSIZE makes writes past 64 KB fail with EFBIG, as a full disk fails them with ENOSPC."""
    root = make_hw4(tmp_path / "hw4", n_speakers=3, per_speaker=3)["root"]
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        from spkid.cli import main
        sys.exit(main(["train", {str(root)!r}, "--out", {str(run)!r}, "--config", "tiny", "--steps", "3",
                       "--quiet", "--set", "model.d_model=64"]))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, env=_env())
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "cannot write" in lines[0] and ".ckpt" in lines[0], r.stderr
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.suffix == ".ckpt"]


def test_deeply_nested_json_is_named(tmp_path, capsys, model):
    d = make_hw4(tmp_path / "hw4", n_speakers=2, per_speaker=2)
    (d["root"] / "testdata.json").write_text("[" * 100_000 + "]" * 100_000)
    rc, _, err = _cli(capsys, "predict", model["ckpt"], d["root"], "-o", tmp_path / "p.csv", "--quiet")
    _one_line_error(rc, err, "testdata.json")
    cfg = tmp_path / "deep.json"
    cfg.write_text('{"model": ' * 50_000 + "1" + "}" * 50_000)
    rc, _, err = _cli(capsys, "train", d["root"], "--out", tmp_path / "run", "--config", cfg, "--quiet")
    _one_line_error(rc, err, "deep.json")


def test_a_locked_registry_is_called_locked(model, tmp_path, capsys, monkeypatch):
    from spkid.scoring import speaker_db
    monkeypatch.setattr(speaker_db, "LOCK_WAIT_S", 0.2)
    reg = tmp_path / "r.db"
    SpeakerDB.create(reg, model_id="m", checkpoint=str(model["ckpt"]), embed_dim=4, threshold=0.5).close()
    holder = sqlite3.connect(reg, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")                 # another process in the middle of an enroll
    try:
        with pytest.raises(DataError, match="locked by another process"):
            SpeakerDB.open(reg)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    SpeakerDB.open(reg).close()


def test_a_read_only_place_is_one_line_for_outputs_and_run_folders(model, tmp_path, capsys, monkeypatch):
    """The tests run as root, for whom permissions do not apply: the read-only filesystem is simulated at the
    system calls spkid makes (EROFS from creating files and folders)."""
    import errno

    import spkid.fileio as fileio

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(fileio.tempfile, "mkstemp", read_only)
    rc, _, err = _cli(capsys, "predict", model["ckpt"], model["root"], "-o", tmp_path / "p.csv", "--quiet")
    _one_line_error(rc, err, "p.csv", "Read-only file system")
    monkeypatch.setattr(fileio.os, "open", read_only)
    rc, _, err = _cli(capsys, "train", model["root"], "--out", tmp_path / "run", "--config", "tiny", "--steps", "2",
                      "--quiet")
    _one_line_error(rc, err, "run", "Read-only file system")
