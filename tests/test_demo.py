"""README's main command, as a user types it: the built-in demo, no model given, nothing downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fluxlora.lora_file import LORA_WEIGHT_NAME


@pytest.mark.parametrize("trainer", ["mindspore_impl.train", "torch_reference.train"])
def test_builtin_demo_runs_from_the_command_line(trainer, tmp_path):
    env = {**os.environ, "FLUXLORA_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "demo"
    # the demo's own settings, shortened to 3 steps so CI stays fast
    result = subprocess.run([sys.executable, "-m", trainer, "--max_train_steps", "3", "--output_dir", str(out)],
                            capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BUILT-IN DEMO" in result.stdout + result.stderr
    assert len(list((tmp_path / "cache").glob("flux-small-seed0-v*/model_index.json"))) == 1
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert (out / LORA_WEIGHT_NAME).is_file()


def test_graph_mode_is_refused_with_the_reason(tmp_path, capsys):
    from mindspore_impl.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--mindspore_mode", "graph", "--output_dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "SplitWithSize" in capsys.readouterr().err and not (tmp_path / "o").exists()
