"""benchmarks/ablation.py: every variant is a valid config, and the table renders saved results with the seed
spread and the variants' recipes. No ../shared needed (no training here)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from spkid.config import apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("ablation_bench", ROOT / "benchmarks" / "ablation.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("name", sorted(bench.VARIANTS))
def test_every_variant_is_a_valid_config(name):
    preset, sets, desc = bench.VARIANTS[name]
    cfg = apply_overrides(load_config(preset), sets)
    assert desc and cfg.name == preset


def test_table_lists_rows_in_variant_order_with_spread_and_recipes(tmp_path):
    rows = [("default", 0, 0.98, 0.90), ("default", 1, 0.97, 0.88), ("conformer", 0, 0.96, 0.80)]
    for name, seed, acc, acc1 in rows:
        d = tmp_path / f"{name}-s{seed}"
        d.mkdir()
        (d / "result.json").write_text(json.dumps(
            {"variant": name, "seed": seed, "minutes": 10.0, "threads": 1, "val_acc": 0.99, "test_acc": acc,
             "test_1s_acc": acc1, "steps": 100, "params": 1e6}))
    table = bench.render_table(tmp_path)
    lines = table.splitlines()
    assert lines[2].startswith("| default | 0 |") and lines[4].startswith("| conformer | 0 |")
    assert "- default (10 min, 1 threads, 2 seeds): public test 0.0100, 1-s crops 0.0200" in table
    assert "- `conformer`: " in table and "(`--config conformer`)" in table
    md = tmp_path / "r.md"
    md.write_text(f"# R\n\n{bench.START}\nold\n{bench.END}\ntail\n")
    bench.write_section(md, table)
    text = md.read_text()
    assert "old" not in text and text.endswith(f"{bench.END}\ntail\n") and "| default | 1 |" in text
