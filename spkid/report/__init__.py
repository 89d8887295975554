"""``spkid report``: training curves, closed-set and verification analysis, embedding map -> one HTML page.

    from spkid.report import build_report
    r = build_report([Path("runs/a")], Path("report.html"), test_dir=Path("data"), answers=Path("answers.csv"))
    r.path, r.figures, r.sections_missing
"""
from spkid.report.build import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]
