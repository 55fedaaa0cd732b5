"""The ``coin`` command: each sub-command is a thin wrapper over a ``coinlib`` function.

    coin phantom --out DIR --subjects N --seed S [--layout kits23] [--phases SPEC]
    coin prepare --layout totalsegmentator|kits23 --src DIR --out DIR [--image-size 256]
    coin train-classifier --profile quick --run-dir runs/quick [--track synthetic|tumour]
    coin train --profile quick --run-dir runs/quick [--variant coin] [--set train.batch_size=8]
    coin evaluate --profile quick --run-dir runs/quick [--variant coin]
    coin reproduce --profile quick --run-dir runs/quick [--set train.steps=900]
    coin report --run-dir runs/quick          # README summary, docs/results.md, figures/, tables/, docs/notebooks/
    coin label --model runs/quick --in scans/ --out masks/ [--organ-masks seg/]   # weak masks for CT (NIfTI, DICOM)

A bad run ends with one line on stderr naming the file or parameter at fault, and exit
status 2; options and --set values are checked before any work starts. --debug (or the
environment variable COIN_DEBUG=1) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser", "parse_overrides"]


def _integer_at_least(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} is above {high}")
        return value

    parse.__name__ = f"integer >= {low}" if high is None else f"integer in [{low}, {high}]"
    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _unit_interval(text: str) -> float:
    value = _finite(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 1]")
    return value


def _device(text: str) -> str:
    """A device torch has here: cpu, cuda, cuda:N (N below the GPU count) or mps."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine; use cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA device(s), 0..{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine; use cpu")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r}: use cpu, cuda or cuda:N")
    return text


# the same bounds as the config fields they set (coinlib.config: seeds, image and batch sizes)
_COUNT, _SEED = _integer_at_least(1), _integer_at_least(0, 2**32 - 1)
_IMAGE_SIZE, _BATCH = _integer_at_least(8, 2048), _integer_at_least(1, 65536)


def _add_run_arguments(parser: argparse.ArgumentParser, variant: bool = False) -> None:
    parser.add_argument("--profile", default="quick", help="smoke | quick | lesson | paper (default: quick)")
    parser.add_argument("--run-dir", type=Path, default=None, help="run folder (default: runs/<profile>)")
    parser.add_argument("--track", default="synthetic", choices=["synthetic", "tumour"],
                        help="synthetic anomalies (TotalSegmentator layout) or real tumours (KiTS23 layout)")
    parser.add_argument("--data", default="phantom",
                        help="'phantom' (default) or a dataset folder in the track's real layout")
    parser.add_argument("--device", type=_device, default=None, help="cpu | cuda | cuda:N (default: CUDA if present)")
    parser.add_argument("--seed", type=_SEED, default=None,
                        help="the replicate to train or score (default: the profile's first seed); models and "
                             "results go to models/<track>/seed<S>/ and results/seed<S>/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="change one profile setting, e.g. train.batch_size=8 (VALUE is read as JSON, "
                             "else as text; repeatable); give such a run its own --run-dir")
    if variant:
        parser.add_argument("--variant", default="coin", help="coin, singla or another named variant")
        parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                            help="torch.compile the training step (default: the profile's train.compile)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also: environment variable COIN_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    phantom = commands.add_parser("phantom", help="write the procedural CT phantom in a real layout")
    phantom.add_argument("--out", type=Path, required=True)
    phantom.add_argument("--subjects", type=_COUNT, default=40, help="number of scans (default 40)")
    phantom.add_argument("--seed", type=_SEED, default=0)
    phantom.add_argument("--layout", default="totalsegmentator", choices=["totalsegmentator", "kits23"])
    phantom.add_argument("--phases", default=None,
                         help="contrast phases drawn per scan, 'phase:weight,...' or one phase of native, "
                              "arterial, portal_venous, nephrographic, delayed (default: the layout's "
                              "mix, e.g. TotalSegmentator native:0.30,arterial:0.15,portal_venous:0.45,"
                              "delayed:0.10; KiTS23 arterial:0.80,nephrographic:0.20)")

    prepare = commands.add_parser(
        "prepare", help="turn a dataset in a real layout into prepared slices",
        description="Written against TotalSegmentator v2.0.1 (1,228 CT scans, sXXXX/ct.nii.gz + segmentations/, "
                    "meta.csv with train/val/test; a later release whose meta.csv lists train and test only gets "
                    "its validation scans drawn from the train ones with --split-source meta) and KiTS23's "
                    "dataset/ folder (489 cases, case_XXXXX/imaging.nii.gz + segmentation.nii.gz, images fetched "
                    "with the KiTS23 repository's own download command). Nothing is downloaded here.")
    prepare.add_argument("--layout", required=True, choices=["totalsegmentator", "kits23", "auto"])
    prepare.add_argument("--src", type=Path, required=True)
    prepare.add_argument("--out", type=Path, required=True)
    prepare.add_argument("--image-size", type=_IMAGE_SIZE, default=256)
    prepare.add_argument("--split-source", default="random", choices=["random", "meta"],
                         help="TotalSegmentator: the paper's random 80/20 split or meta.csv's split")
    prepare.add_argument("--seed", type=_SEED, default=0, help="split seed")
    prepare.add_argument("--fill-nonfinite", type=_finite, default=None, metavar="HU",
                         help="set NaN / infinite voxels to this HU and count them in the manifest "
                              "(default: such voxels are an error naming the file)")
    prepare.add_argument("--force", action="store_true", help="rebuild even when the folder is valid")
    prepare.add_argument("--workers", type=_COUNT, default=None,
                         help="scans read side by side (default: one per core); the output is the same for any "
                              "number, and a killed run resumes at the scan it was on")

    train_classifier = commands.add_parser("train-classifier", help="train (or resume) the classifier f")
    _add_run_arguments(train_classifier)

    train = commands.add_parser("train", help="train (or resume) a counterfactual GAN")
    _add_run_arguments(train, variant=True)

    evaluate = commands.add_parser("evaluate", help="IoU / CV / FID of a trained GAN -> results JSON")
    _add_run_arguments(evaluate, variant=True)

    report = commands.add_parser("report", help="write the README's summary and the results page from a finished run")
    report.add_argument("--run-dir", type=Path, required=True)
    report.add_argument("--readme", type=Path, default=Path("README.md"),
                        help="the README whose summary block (what reproduced) is rewritten (default: README.md)")
    report.add_argument("--results-page", type=Path, default=Path("docs") / "results.md",
                        help="the page whose results block (full tables, verdicts) is rewritten "
                             "(default: docs/results.md)")
    report.add_argument("--figures", type=Path, default=Path("figures"), help="where to copy the run's figures")
    report.add_argument("--tables", type=Path, default=Path("tables"), help="where to copy the run's tables")
    report.add_argument("--docs", type=Path, default=Path("docs") / "notebooks",
                        help="where to write the run's executed notebooks as Markdown with their images")
    report.add_argument("--block", default="results",
                        help="the results page's block to rewrite, between <!-- BLOCK:start --> and "
                             "<!-- BLOCK:end --> (default: results, which also rewrites the README's summary; "
                             "e.g. results-cpu-full beside the quick run's)")
    report.add_argument("--partial", action="store_true",
                        help="publish an unfinished run, its block marked as partial (default: refused)")

    label = commands.add_parser("label", help="weak lesion masks (NIfTI + CSV) for CT scans with a trained run")
    label.add_argument("--model", type=Path, required=True, metavar="RUN_DIR",
                       help="run folder holding the trained models")
    label.add_argument("--in", dest="source", type=Path, required=True, metavar="PATH",
                       help="a .nii.gz file, a DICOM series folder, or a folder searched recursively for both")
    label.add_argument("--out", type=Path, required=True, metavar="FOLDER",
                       help="folder for the masks, sidecars and labels.csv")
    label.add_argument("--track", default="synthetic", choices=["synthetic", "tumour"])
    label.add_argument("--variant", default="coin", help="coin, singla or another trained variant")
    label.add_argument("--batch-size", type=_BATCH, default=32, help="axial slices per forward pass")
    label.add_argument("--device", type=_device, default=None, help="cpu | cuda | cuda:N (default: CUDA if present)")
    label.add_argument("--threshold", type=_unit_interval, default=None,
                       help="mask threshold on |x - x_cf| in [0, 1] (default: the run's validation choice)")
    label.add_argument("--organ-masks", type=Path, default=None, metavar="DIR",
                       help="TotalSegmentator's output for the scans (kidney_left/right.nii.gz or its multilabel "
                            "file): classify only slices with enough kidney, as training did (Sec. 4.3)")
    label.add_argument("--mask-margin-mm", type=float, default=None, metavar="MM",
                       help="with --organ-masks: keep the weak mask within MM of the kidneys")
    label.add_argument("--force", action="store_true", help="relabel scans that already have a mask")

    reproduce = commands.add_parser("reproduce", help="run every notebook end to end with papermill")
    reproduce.add_argument("--profile", default="quick")
    reproduce.add_argument("--run-dir", type=Path, default=None)
    reproduce.add_argument("--notebooks", default=None, help="comma-separated prefixes, e.g. 00,01")
    reproduce.add_argument("--data", default="phantom", help="synthetic-track data: phantom or a folder")
    reproduce.add_argument("--tumour-data", default="phantom", help="tumour-track data: phantom or a folder")
    reproduce.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                           help="change one profile setting for every notebook, e.g. train.steps=2000 (checked "
                                "at once, recorded in the run folder; repeatable); give such a run its own --run-dir")
    for command in commands.choices.values():  # --debug after the command name works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error (also: COIN_DEBUG=1)")
    return parser


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``["train.batch_size=8", ...]`` -> ``{"train": {"batch_size": 8}}`` for ``get_profile``."""
    overrides: dict[str, dict] = {}
    for item in items:
        key, sep, text = item.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot and section and name):
            raise ValueError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. train.batch_size=8")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        overrides.setdefault(section, {})[name] = value
    return overrides


def _message(err: BaseException) -> str:
    """One line for an error: its message (which names the file or parameter), and its type
    where the type says more than the message (OSError and the unexpected ones)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if not isinstance(err, (ValueError, KeyError, FileNotFoundError)) or not text:
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("COIN_DEBUG", "") not in ("", "0")
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        message, status = "interrupted", 130
    except Exception as err:  # noqa: BLE001 -- every failure ends in one line, unless --debug
        if debug:
            raise
        message, status = f"error: {_message(err)} (--debug or COIN_DEBUG=1 shows the traceback)", 2
    # the traceback is gone now: let the progress bars of the frames it held close first,
    # so the message is the last line
    gc.collect()
    print(f"coin {args.command}: {message}", file=sys.stderr)
    return status


def _dispatch(args: argparse.Namespace) -> int:
    from .config import DataConfig, get_profile, with_seed
    from .provenance import using_run_folder

    if args.command == "phantom":
        from .phantom import KITS23_PHASES, TOTALSEGMENTATOR_PHASES, generate_kits23, generate_totalsegmentator

        if args.layout == "totalsegmentator":
            make, phases = generate_totalsegmentator, TOTALSEGMENTATOR_PHASES
        else:
            make, phases = generate_kits23, KITS23_PHASES
        print(make(args.out, args.subjects, args.seed, phases=args.phases or phases))
        return 0
    if args.command == "prepare":
        from .prepare import detect_layout, prepare_dataset

        layout = detect_layout(args.src) if args.layout == "auto" else args.layout
        config = DataConfig(image_size=args.image_size, split_source=args.split_source, split_seed=args.seed,
                            fill_nonfinite_hu=args.fill_nonfinite)
        print(prepare_dataset(layout, args.src, args.out, config, force=args.force, workers=args.workers))
        return 0
    if args.command == "report":
        from .report import export_notebooks, publish_figures, publish_tables, update_readme, update_summary

        print(update_readme(args.run_dir, args.results_page, args.block, partial=args.partial))
        if args.block == "results":
            print(update_summary(args.run_dir, args.readme, args.results_page))
        print(f"copied {len(publish_figures(args.run_dir, args.figures))} figure files to {args.figures}")
        print(f"copied {len(publish_tables(args.run_dir, args.tables))} table files to {args.tables}")
        pages = export_notebooks(args.run_dir, args.docs)
        if pages:
            size = sum(p.stat().st_size for p in pages) / 1e6
            count = sum(p.suffix == ".md" for p in pages) - 1
            print(f"wrote {count} executed notebooks to {args.docs} ({len(pages)} files, {size:.1f} MB)")
        else:
            print(f"no executed notebooks in {args.run_dir / 'notebooks'} (coin reproduce writes them); "
                  f"{args.docs} left as it was")
        return 0
    if args.command == "label":
        from .label import label_folder

        done = label_folder(args.model, args.source, args.out, track=args.track, variant=args.variant,
                            batch_size=args.batch_size, device=args.device, force=args.force,
                            threshold=args.threshold, organ_masks=args.organ_masks,
                            mask_margin_mm=args.mask_margin_mm)
        print(f"labelled {len(done.labelled)}, skipped {len(done.skipped)} already done, "
              f"{len(done.failed)} unreadable (rank {done.rank} of {done.world_size}); "
              f"{done.csv} lists {done.csv_rows} of {done.total} scans")
        for scan, reason in done.failed:
            print(f"coin label: cannot label {scan.display}: {reason}", file=sys.stderr)
        return 1 if done.failed else 0
    if args.command == "reproduce":
        from .notebook_runner import run_notebooks

        run_dir = args.run_dir or Path("runs") / args.profile
        overrides = parse_overrides(args.overrides)
        get_profile(args.profile, overrides)  # fail fast on a typo or a value out of range
        selected = args.notebooks.split(",") if args.notebooks else None
        run_notebooks(args.profile, run_dir, selected, data=args.data, tumour_data=args.tumour_data,
                      overrides=overrides)
        return 0

    from . import pipeline

    overrides = parse_overrides(args.overrides)
    fast = getattr(args, "fast", None)
    if fast is not None:
        overrides.setdefault("train", {})["compile"] = fast
    profile = get_profile(args.profile, overrides)
    profile = with_seed(profile, profile.seeds[0] if args.seed is None else args.seed)
    run_dir = args.run_dir or Path("runs") / args.profile
    with using_run_folder(run_dir, f"coin {args.command} --track {args.track}"):
        return _run_stage(args, profile, run_dir)


def _run_stage(args: argparse.Namespace, profile, run_dir: Path) -> int:
    from . import pipeline

    prepared = pipeline.prepare_track(profile, run_dir, args.track, args.data)
    if args.command == "train-classifier":
        print(pipeline.ensure_classifier(profile, run_dir, args.track, prepared, device=args.device))
        return 0
    if args.command == "train":
        print(pipeline.ensure_counterfactual(profile, run_dir, args.track, prepared, args.variant,
                                             device=args.device))
        return 0
    if args.command == "evaluate":
        results = pipeline.evaluate_variant(profile, run_dir, args.track, prepared, args.variant,
                                            device=args.device)
        print(json.dumps(results["metrics"], indent=2))
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
