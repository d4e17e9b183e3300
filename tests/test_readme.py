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
    assert cli(argv[1:]) == 0
    assert "13 -> 8 nodes" in capsys.readouterr().out


def test_calibration_commands_run(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    readme = open(f"{REPO}/README.md").read()
    lines = [l for block in re.findall(r"```sh\n(.*?)```", readme, re.S) for l in block.splitlines()
             if l.startswith(("qgraph calibrate golden", "qgraph inspect golden"))]
    assert len(lines) == 2
    for line in lines:
        assert cli(shlex.split(line)[1:]) == 0
    assert "ranges (" in capsys.readouterr().out
