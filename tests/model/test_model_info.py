from __future__ import annotations

import json
import subprocess
import sys


def _info(*args):
    r = subprocess.run([sys.executable, "-m", "puyu.cli", "info", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_info_7b_json_at_200k():
    s = json.loads(_info("internlm2-7b", "--context", "200000", "--json"))
    assert s["parameters"]["total"] == 7_737_708_544
    assert s["kv_bytes_per_token"]["bfloat16"] == 131072
    assert s["kv_bytes_at_context"] == 131072 * 200000  # ~24.4 GiB, the figure users hit at 200K
    assert s["weight_bytes"]["bfloat16"] == 2 * 7_737_708_544


def test_info_table_and_checkpoint_dir(tiny_checkpoint):
    out = _info("internlm2-20b")
    assert "19,861,149,696" in out and "feed_forward" in out
    assert "total" in _info(str(tiny_checkpoint), "--context", "1000")
