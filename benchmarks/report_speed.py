"""How long ``spkid report`` takes on the shared speechocean762 public test: 500 utterances of 250 speakers.

    python -m spkid train ../shared/data/speechocean762 --out /tmp/rep_run --max-minutes 3 --quiet --set train.threads=1
    python benchmarks/report_speed.py --run /tmp/rep_run [--trials DIR] [--registry FILE] [--threads 1]

Prints the time of each stage (reading the run, embedding the test set, each section, writing) and the total;
the target is under 30 s on the project's 2-core CPU. Exit status 1 when over it. A benchmark, not a timed test.
"""
from __future__ import annotations

import time

T_START = time.perf_counter()               # before torch is imported: the total includes what a CLI call pays

import argparse                              # noqa: E402
import sys                                   # noqa: E402
from pathlib import Path                     # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "speechocean762"
BUDGET_S = 30.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a spkid train run directory (best.ckpt inside)")
    p.add_argument("--data", type=Path, default=DATA, help="HW4 test directory (testdata.json)")
    p.add_argument("--answers", type=Path, help="Id,Category CSV (default: DATA/answers.csv)")
    p.add_argument("--trials", type=Path, help="HW4 training-layout directory of unseen speakers")
    p.add_argument("--registry", type=Path, help="a spkid enroll registry whose threshold is drawn")
    p.add_argument("--out", type=Path, default=Path("/tmp/spkid_report_bench/report.html"))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the lead's measurements use 1)")
    a = p.parse_args(argv)
    answers = a.answers or a.data / "answers.csv"
    if not (a.data / "testdata.json").is_file() or not answers.is_file():
        print(f"{a.data}: no testdata.json/answers.csv (the shared data is not here)", file=sys.stderr)
        return 2

    import torch
    torch.set_num_threads(a.threads)
    from spkid.data.hw4 import read_answers_csv
    from spkid.report import build_report

    ans = read_answers_csv(answers)
    t_imports = time.perf_counter() - T_START
    t0 = time.perf_counter()
    r = build_report([a.run], a.out, test_dir=a.data, answers=answers, trials_dir=a.trials, registry=a.registry,
                     progress=False, device="cpu")
    t_build = time.perf_counter() - t0
    total = time.perf_counter() - T_START

    print(f"spkid report on {len(ans)} test utterances of {len(set(ans.values()))} speakers "
          f"({torch.get_num_threads()} torch thread(s)); sections missing: {r.sections_missing or 'none'}")
    print(f"| {'stage':<36} | {'seconds':>7} |")
    print(f"|{'-' * 38}|{'-' * 9}|")
    print(f"| {'python + torch + spkid imports':<36} | {t_imports:7.2f} |")
    for stage, sec in r.timings.items():
        print(f"| {stage:<36} | {sec:7.2f} |")
    print(f"| {'build_report total':<36} | {t_build:7.2f} |")
    print(f"| {'whole process':<36} | {total:7.2f} |")
    size = r.path.stat().st_size / 1e6
    verdict = "within" if total < BUDGET_S else "OVER"
    print(f"{r.path} ({size:.1f} MB, {len(r.figures)} figures): {total:.1f} s, {verdict} the {BUDGET_S:.0f} s budget")
    return 0 if total < BUDGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
