"""Run the numbered notebooks end to end with papermill (the README's main command).

Every notebook takes the same papermill parameters (``profile``, ``run_dir``, ``data``,
``tumour_data``, ``overrides``: ``{"section": {"field": value}}`` applied to the profile, as
``coin reproduce --set`` gives them); executed copies go to ``<run_dir>/notebooks/``, written atomically, so
a failed notebook never leaves a copy that looks finished. The kernels run with text
progress bars and static widgets (``COIN_TEXT_PROGRESS=1``, ``COIN_STATIC_WIDGETS=1``: see
:mod:`coinlib.progress` and :mod:`coinlib.widgets`). Each notebook reuses what the
earlier ones left in the run folder, so a re-run after an interruption is cheap.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .files import atomic_path, write_json
from .provenance import using_run_folder

__all__ = ["NOTEBOOK_DIR", "list_notebooks", "check_inputs", "run_notebooks"]

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def list_notebooks(selected: list[str] | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) in order; ``selected`` filters by prefix."""
    notebooks = sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no numbered notebooks in {notebook_dir}")
    if selected:
        chosen = [p for p in notebooks if any(p.name.startswith(s) for s in selected)]
        unknown = [s for s in selected if not any(p.name.startswith(s) for p in notebooks)]
        if unknown:
            raise ValueError(f"no notebook starts with {unknown}; have {[p.name for p in notebooks]}")
        return chosen
    return notebooks


def check_inputs(profile: str, run_dir: Path, data: str, tumour_data: str, overrides: dict | None = None) -> None:
    """Before any kernel starts: the profile (with ``overrides``) exists, its values are in range
    and it fits the run folder, and each track's data is the phantom or a folder in its layout
    (errors name the option)."""
    from .config import get_profile
    from .pipeline import check_source
    from .provenance import check_run_folder

    check_run_folder(get_profile(profile, overrides), run_dir)
    for option, track, source in (("--data", "synthetic", data), ("--tumour-data", "tumour", tumour_data)):
        try:
            check_source(track, source)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"{option} {source}: {err}") from None


def run_notebooks(
    profile: str,
    run_dir: str | os.PathLike,
    selected: list[str] | None = None,
    data: str = "phantom",
    tumour_data: str = "phantom",
    notebook_dir: Path = NOTEBOOK_DIR,
    overrides: dict | None = None,
) -> list[dict]:
    """Execute the notebooks in order; returns and writes ``<run_dir>/notebooks/timings.json``.
    Nothing starts before :func:`check_inputs` passes; the run folder is held
    (:func:`coinlib.provenance.using_run_folder`) until the last notebook ends."""
    run_dir = Path(run_dir).resolve()
    notebooks = list_notebooks(selected, notebook_dir)
    check_inputs(profile, run_dir, data, tumour_data, overrides)
    with using_run_folder(run_dir, f"coin reproduce --profile {profile}"):
        return _run(notebooks, profile, run_dir, data, tumour_data, overrides or {})


def _run(notebooks: list[Path], profile: str, run_dir: Path, data: str, tumour_data: str,
         overrides: dict) -> list[dict]:
    import papermill

    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"profile": profile, "run_dir": str(run_dir), "data": str(data), "tumour_data": str(tumour_data),
                  "overrides": overrides}
    timings = []
    os.environ["COIN_TEXT_PROGRESS"] = "1"  # kernels inherit it: text bars show in the log
    # and static widgets: an executed copy keeps a figure a repository viewer can show
    os.environ["COIN_STATIC_WIDGETS"] = "1"
    for notebook in notebooks:
        print(f"==> {notebook.name} (profile {profile})", flush=True)
        start = time.perf_counter()
        with atomic_path(out_dir / notebook.name) as tmp:
            papermill.execute_notebook(
                str(notebook), str(tmp), parameters=parameters, kernel_name="python3",
                cwd=str(notebook.parent), progress_bar=False, log_output=True, stdout_file=sys.stdout,
                stderr_file=sys.stderr,
            )
        seconds = time.perf_counter() - start
        timings.append({"notebook": notebook.name, "seconds": round(seconds, 1)})
        print(f"    {notebook.name}: {seconds:.0f} s", flush=True)
        write_json(out_dir / "timings.json", {"profile": profile, "overrides": overrides, "notebooks": timings})
    from .report import results_markdown

    try:
        summary = results_markdown(run_dir)
    except FileNotFoundError:
        summary = ""
    if summary:
        with atomic_path(run_dir / "results" / "summary.md") as tmp:
            tmp.write_text(summary)
        print("\n" + summary)
    total = sum(t["seconds"] for t in timings)
    print(f"all {len(timings)} notebooks done in {total / 60:.1f} min; executed copies in {out_dir}")
    return timings
