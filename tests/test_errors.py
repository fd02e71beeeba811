"""Bad input: one clear error naming the problem, exit status 2, and nothing written.

Every case runs against both trainers: they share the command line, so they must refuse alike.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from conftest import tiny_argv

TRAINERS = ["torch_reference.train", "mindspore_impl.train"]


def bad_image_folder(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"this is not a png")
    return folder


def empty_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


CASES = {
    "missing model folder": (lambda t, c: ["--pretrained_model_name_or_path", str(t / "no-such-flux")],
                             "no such folder"),
    "model folder without model_index": (lambda t, c: ["--pretrained_model_name_or_path", str(t)], "model_index.json"),
    "missing instance folder": (lambda t, c: ["--instance_data_dir", str(t / "nothing-here")], "--instance_data_dir"),
    "empty instance folder": (lambda t, c: ["--instance_data_dir", str(empty_folder(t))], "no images"),
    "unreadable image": (lambda t, c: ["--instance_data_dir", str(bad_image_folder(t))], "broken.png"),
    "rank zero": (lambda t, c: ["--rank", "0"], "--rank"),
    "negative rank": (lambda t, c: ["--rank", "-4"], "--rank"),
    "lora layers matching nothing": (lambda t, c: ["--lora_layers", "to_q,not_a_layer"], "not_a_layer"),
    "unknown mixed precision": (lambda t, c: ["--mixed_precision", "fp8"], "--mixed_precision"),
    "resume pointing at nothing": (lambda t, c: ["--resume_from_checkpoint", str(t / "checkpoint-99")],
                                   "--resume_from_checkpoint"),
    "resolution not a multiple of 16": (lambda t, c: ["--resolution", "40"], "--resolution"),
    "prior preservation without class data": (lambda t, c: ["--with_prior_preservation"], "--class_data_dir"),
}


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_cleanly(trainer, case, tiny_checkpoint, tmp_path, capsys):
    extra, phrase = CASES[case]
    out = tmp_path / "output"
    argv = tiny_argv(tiny_checkpoint, out) + extra(tmp_path, tiny_checkpoint)
    main = importlib.import_module(trainer).main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert phrase in error and "error:" in error, error
    assert "Traceback" not in error
    assert not out.exists(), "an output folder was created for a run that never started"


@pytest.mark.parametrize("trainer", TRAINERS)
def test_exit_status_from_the_command_line(trainer, tmp_path):
    result = subprocess.run([sys.executable, "-m", trainer, "--rank", "0", "--output_dir", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--rank must be a positive integer" in result.stderr
    assert not (tmp_path / "o").exists()
