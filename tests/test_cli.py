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


def test_set_changes_one_profile_setting_and_refuses_a_malformed_or_unknown_one(monkeypatch, tmp_path, capsys):
    from coinlib import pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "prepare_track", lambda profile, *a, **k: tmp_path)
    monkeypatch.setattr(pipeline, "ensure_counterfactual",
                        lambda profile, *a, **k: seen.update(batch=profile.train.batch_size, lr=profile.train.lr,
                                                             compile=profile.train.compile, skips=profile.gan.skips))
    args = ["train", "--run-dir", str(tmp_path), "--set", "train.batch_size=8", "--set", "gan.skips=2", "--fast"]
    assert main(args) == 0
    assert seen == {"batch": 8, "lr": 1e-3, "compile": True, "skips": 2}
    assert main(["train", "--run-dir", str(tmp_path), "--set", "batch_size=8"]) == 2
    assert "expected SECTION.FIELD=VALUE" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(tmp_path), "--set", "train.batch=8"]) == 2
    assert "unknown key(s) ['batch']" in capsys.readouterr().err
