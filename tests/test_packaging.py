"""The project's set-up files agree with each other and with the README."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _requirements(lines):
    pattern = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*([<>=!~].*)?$")
    found = {}
    for line in lines:
        match = pattern.match(line)
        if match:
            found[match.group(1).lower().replace("_", "-")] = (match.group(2) or "").replace(" ", "")
    return found


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_side = _requirements(project["dependencies"] + project["optional-dependencies"]["dev"])
    conda_lines = []
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("\ndependencies:", 1)[1].splitlines():
        item = line.strip()
        if item.startswith("- ") and not item.startswith("- pip") and ":" not in item and item != "- -e .":
            conda_lines.append(item[2:])
    conda_side = _requirements(conda_lines)
    conda_side.pop("python", None)
    conda_side["torch"] = conda_side.pop("pytorch")  # conda's name for the same package
    assert conda_side == pip_side


def test_readme_commands_are_the_makefile_targets_and_ci_runs_the_tests():
    readme = (ROOT / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^reproduce:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "coinlib.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "reproduce" in result.stdout
    script = Path(sys.executable).parent / "coin"
    assert script.exists(), "pip install -e . should provide the `coin` command"


def test_make_lab_registers_the_kernel_and_make_lesson_runs_the_lesson_profile():
    plan = subprocess.run(["make", "-n", "lab", "lesson", f"VENV={Path(sys.executable).parent.parent}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    assert "-m ipykernel install --user --name coin" in plan.stdout
    assert "cd notebooks && " in plan.stdout and "/bin/jupyter lab" in plan.stdout
    assert "coin train --profile lesson --run-dir runs/lesson" in plan.stdout
    assert "--notebooks 02_coin_from_scratch" in plan.stdout
    teaching = (ROOT / "docs" / "teaching.md").read_text()
    assert "make lab" in teaching and "make lesson" in teaching
    assert "(docs/teaching.md)" in (ROOT / "README.md").read_text()
    # the class plans name notebooks that exist, and the 90-minute one walks through most of them
    named = set(re.findall(r"`(\d\d_[a-z0-9_]+)`", teaching))
    existing = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert named <= existing, named - existing
    assert len(named) >= 10


def test_the_gpu_check_names_steps_that_exist_here():
    """The script a GPU machine runs first, dry: every step's profile, test file, script and
    arguments exist here, so a short GPU lease is not spent on a typo."""
    import os
    import shlex

    from coinlib.config import PROFILES

    listed = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env={**os.environ, "DRY_RUN": "1"},
                            capture_output=True, text=True, check=True).stdout.splitlines()
    steps = dict(line.split(": ", 1) for line in listed)
    assert list(steps) == ["machine", "gpu_tests", "paper_mini", "train_step"]
    for word in shlex.split(steps["gpu_tests"]) + shlex.split(steps["train_step"]):
        if word.endswith(".py"):
            assert (ROOT / word).is_file(), word
    profile = shlex.split(steps["paper_mini"])[shlex.split(steps["paper_mini"]).index("--profile") + 1]
    assert profile in PROFILES
    arguments = shlex.split(steps["train_step"])[2:]
    parsed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_step.py"), *arguments, "--help"],
                            capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
