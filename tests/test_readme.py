"""README's examples run: the Python block and the `qgraph` part of the first command."""

import re
import shlex

from qgraph.cli.main import main as cli
from tests.conftest import REPO

README = open(f"{REPO}/README.md").read()


def test_python_example_runs(monkeypatch):
    monkeypatch.chdir(REPO)
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_first_command_runs(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    first = re.search(r"```sh\n(?:#.*\n)*(.*?)\n", README).group(1)
    qgraph_part = first.split("&&", 1)[1].strip()
    argv = shlex.split(qgraph_part)
    assert argv[0] == "qgraph"
    assert argv[1] == "compile" and "golden/data/digits_calib.npz" in argv
    assert cli(argv[1:]) == 0
    said = capsys.readouterr().out
    assert "integer ops" in said and "top-1 agreement" in said


def test_quantization_commands_run(monkeypatch, capsys):
    """The verify / run / config examples, after the first command wrote out/digits."""
    import os
    import subprocess

    monkeypatch.chdir(REPO)
    first = re.search(r"```sh\n(?:#.*\n)*(.*?)\n", README).group(1)
    assert cli(shlex.split(first.split("&&", 1)[1])[1:]) == 0
    lines = [l.split("#")[0] for block in re.findall(r"```sh\n(.*?)```", README, re.S) for l in block.splitlines()
             if l.startswith(("qgraph verify out/", "qgraph run out/", "echo ", "qgraph compile golden/models/digits_cnn.onnx --calib golden/data/digits_calib.npz --config"))]
    assert len(lines) == 4
    for line in lines:
        if line.startswith("echo"):
            os.makedirs("out", exist_ok=True)
            subprocess.run(line, shell=True, check=True)
        else:
            assert cli(shlex.split(line)[1:]) == 0, line
    said = capsys.readouterr().out
    assert "SQNR" in said and "default CPU kernels" in said


def test_calibration_commands_run(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    readme = open(f"{REPO}/README.md").read()
    lines = [l for block in re.findall(r"```sh\n(.*?)```", readme, re.S) for l in block.splitlines()
             if l.startswith(("qgraph calibrate golden", "qgraph inspect golden"))]
    assert len(lines) == 2
    for line in lines:
        assert cli(shlex.split(line)[1:]) == 0
    assert "ranges (" in capsys.readouterr().out
