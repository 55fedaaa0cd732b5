import subprocess
import sys

from coinlib.cli import main


def test_prepare_on_a_folder_in_no_known_layout_fails_clearly(tmp_path, capsys):
    (tmp_path / "random.txt").write_text("not a dataset")
    code = main(["prepare", "--layout", "auto", "--src", str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "neither TotalSegmentator" in err and str(tmp_path) in err
    assert not (tmp_path / "out").exists()


def test_unknown_profile_is_refused(tmp_path, capsys):
    assert main(["train", "--profile", "quik", "--run-dir", str(tmp_path)]) == 2
    assert "unknown profile 'quik'" in capsys.readouterr().err


def test_phantom_command_writes_the_layout(tmp_path):
    result = subprocess.run([sys.executable, "-m", "coinlib.cli", "phantom", "--out", str(tmp_path / "ts"),
                             "--subjects", "1", "--seed", "3"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ts" / "s0000" / "ct.nii.gz").is_file()
    assert (tmp_path / "ts" / "meta.csv").is_file()


def test_fast_flag_overrides_the_profiles_compile_setting(monkeypatch, tmp_path):
    from coinlib import pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "prepare_track", lambda profile, *a, **k: tmp_path)
    monkeypatch.setattr(pipeline, "ensure_counterfactual",
                        lambda profile, *a, **k: seen.setdefault("compile", profile.train.compile))
    assert main(["train", "--profile", "paper", "--run-dir", str(tmp_path), "--no-fast"]) == 0
    assert seen == {"compile": False}  # the paper profile compiles by default
    seen.clear()
    assert main(["train", "--profile", "quick", "--run-dir", str(tmp_path), "--fast"]) == 0
    assert seen == {"compile": True}
