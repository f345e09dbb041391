"""Damaged CT DICOMs (seeded mutations of valid ones): `python -m modeling.predict` gives one row per file,
every refusal a one-line reason, no traceback, exit status 0 or 1."""

import csv
import subprocess
import sys
from pathlib import Path

from conftest import FUZZ_PATIENT

ROOT = Path(__file__).resolve().parents[1]


def test_predict_survives_damaged_dicoms(fuzzed_dicoms, tiny_model_dir, tmp_path):
    folder, paths = fuzzed_dicoms
    assert len(paths) >= 200
    output = tmp_path / "fuzz.csv"
    command = [sys.executable, "-m", "modeling.predict", str(folder), "--model", str(tiny_model_dir),
               "--output", str(output), "--batch-size", "32"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)

    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in paths)
    scored = [row for row in rows if row["status"] == "ok"]
    refused = [row for row in rows if row["status"] == "error"]
    assert len(scored) + len(refused) == len(rows)
    for row in refused:
        assert row["error"] and "\n" not in row["error"] and len(row["error"]) < 200, row
        # the decoders are installed here: damaged JPEG 2000 data must not be blamed on a missing package
        assert "no decoder installed" not in row["error"], row
    for row in scored:
        assert 0.0 <= float(row["probability"]) <= 1.0, row
    # every kind of damage is met: some files are refused, and damage that spares what is read still scores
    assert refused and scored
    assert f"{len(scored)} predicted, {len(refused)} refused" in result.stderr
    assert result.returncode == 1
    # damage can make a tag's value run into the next tags: refusals must not echo the patient's name or ID
    assert any(FUZZ_PATIENT.encode() in path.read_bytes() for path in paths)
    assert "FUZZ-4242" not in output.read_text() + result.stderr
