"""The region benchmark's small configuration runs end to end (bench/region.py --small).

13 nodes in host processes plus one village as real ``tongban serve`` + ``tongban syncd``:
the catalog reaches every village, every case reaches its township and the county, and
the report says so. Its figures are not asserted (the machine is shared); that each
measurement produced one for every village and every case is.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_small_region_delivers_the_catalog_and_every_case(tmp_path):
    out = tmp_path / "region.md"
    result = subprocess.run(
        [sys.executable, "-P", str(ROOT / "bench" / "region.py"), "--small", "--json",
         "--dir", str(tmp_path / "region"), "--out", str(out), "--timeout", "120"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    catalog, cases, memory = results["catalog"], results["cases"], results["memory"]
    assert catalog["missing"] == 0
    assert len(catalog["villages"]) == 10 and len(catalog["townships"]) == 2
    assert all(seconds > 0 for seconds in catalog["villages"])
    assert cases["count"] == 5
    assert len(cases["handler"]) == 5 and len(cases["county"]) == 5
    # A case reaches the county through its township, never before it.
    assert all(county >= town for town, county in zip(cases["handler"], cases["county"]))
    assert cases["gross_bytes_per_case"] > 0
    assert memory["serve"]["rss"] > 0 and memory["syncd"]["rss"] > 0
    report = out.read_text(encoding="utf-8")
    assert "catalog at every village (max)" in report
    assert "village serve + syncd RSS" in report
