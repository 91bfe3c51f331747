"""Bad device names, int4 group sizes and ports on the command line are one `error:` line, not a traceback
(found by trying the CLI as a new user: `--device cuda` on a CPU-only torch, `info --group 0`, `serve --port
99999`), and a --model directory that does not exist is named as such (not as a missing tokenizer)."""

from __future__ import annotations

import pytest
import torch

from puyu.cli import main
from puyu.errors import ConfigError
from puyu.model.checkpoint import resolve_device


def test_resolve_device_names_what_is_wrong():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device; use --device cpu"):
            resolve_device("cuda")


def _one_error_line(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("group", ["0", "48", "-64"])
def test_info_refuses_group_sizes_the_loader_refuses(capsys, group):
    err = _one_error_line(capsys, ["info", "internlm2-7b", "--weights", "int4", "--group", group])
    assert f"int4 group size {group}: expected one of 32, 64, 128" in err


def test_generate_names_a_bad_group_before_the_memory_check(capsys, tiny_checkpoint):
    err = _one_error_line(capsys, ["generate", "--model", str(tiny_checkpoint), "--ids", "1 2 3",
                                   "--weights", "int4", "--group", "0"])
    assert "int4 group size 0" in err


@pytest.mark.parametrize("port, msg", [("99999", "99999 is not a TCP port (0-65535)"), ("-1", "-1 is not a TCP port"),
                                       ("http", "'http' is not a port number")])
def test_serve_refuses_a_port_out_of_range(capsys, port, msg):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", "nano", "--port", port])
    assert e.value.code == 2 and msg in capsys.readouterr().err


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_a_missing_model_directory_is_named_as_such(capsys, tmp_path, command):
    missing = tmp_path / "doesnotexist"
    argv = [command, "--model", str(missing)] + (["hi"] if command == "generate" else [])
    err = _one_error_line(capsys, argv)
    assert "is neither a checkpoint directory nor a preset" in err and "tokenizer" not in err, err
