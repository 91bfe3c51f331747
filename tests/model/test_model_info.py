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


def test_info_totals_with_packed_weights_and_an_int8_kv_cache(capsys):
    """`puyu info internlm2-7b --weights int4 --kv int8 --context 200000`: the figures a user needs (in-process:
    each `puyu info` subprocess costs an interpreter and torch import)."""
    from puyu.cli import main
    from puyu.model.config import get_preset
    from puyu.model.memory import weight_bytes

    args = ["info", "internlm2-7b", "--weights", "int4", "--kv", "int8", "--context", "200000"]
    assert main(args + ["--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    per_token = 2 * 32 * 8 * (128 + 4)  # layers, kv heads, head_dim int8 elements + a float32 scale
    assert s["kv_dtype"] == "int8" and s["kv_bytes_per_token"]["int8"] == per_token
    assert s["kv_bytes_at_context"] == per_token * 200000  # 12.6 GiB, against 24.4 in bf16
    assert s["total_bytes_at_context"] == (weight_bytes(get_preset("internlm2-7b"), "int4") + per_token * 200000
                                           + s["activation_bytes_prefill_chunk_fp32"])
    assert main(args) == 0
    assert "int8 KV cache" in capsys.readouterr().out
