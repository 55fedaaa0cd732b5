"""Interactive views for the notebooks (ipywidgets), each falling back to a static figure.

Four views; each returns an ipywidgets box in a live Jupyter front end and a matplotlib
``Figure`` otherwise (make the call a cell's last expression, or pass it to ``display``):

- :func:`threshold_slider`: a threshold on |x - x_cf|, the slice's weak mask drawn as
  TP / FP / FN, its IoU and the IoU of the whole set at that threshold (Eq. 8, Sec. 5);
- :func:`slice_picker`: a scan and a slice of a split, with its counterfactual if given;
- :func:`compare_methods`: one slice under every method (COIN, Singla*, saliency maps);
- :func:`ablation_switch`: one slice under each model of an ablation (Tables 2, 3).

**Interactive or static.** :func:`widgets_interactive` decides when ``interactive=None``:

1. ``COIN_STATIC_WIDGETS=1`` in the environment: static. ``coin reproduce``
   (:mod:`coinlib.notebook_runner`) sets it for its papermill kernels, so every executed
   notebook keeps a figure that a repository viewer and ``docs/notebooks/`` show. Set it
   for other headless runs too, e.g. ``COIN_STATIC_WIDGETS=1 pytest --nbval notebooks/``.
2. Otherwise interactive only inside an IPython kernel (ipykernel) that has a comm
   manager, the channel widgets talk through: JupyterLab, Notebook, VS Code. Plain Python,
   terminal IPython and scripts get the figure.

The static figure of a view shows what its controls would: the slice at the given
threshold with the whole IoU curve (threshold slider), slices spread over the scans
(picker), every model in one grid (ablation switch).

The maths is in plain functions (:func:`slice_score`, :func:`set_iou`, :func:`rows_by_scan`)
tested by hand; the views only wire controls to them. Colours are
:data:`coinlib.plots.OUTCOME_COLOURS` (colour-blind safe), named by
:data:`coinlib.plots.OUTCOME_CAPTION`. Glossary: ``x``, ``x_cf`` are (N, H, W) in [-1, 1];
``diff_map = |x - x_cf| / 2`` in [0, 1]; ``mask_true`` (N, H, W) bool.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import numpy as np

from .config import EvalConfig
from .evaluate import config_mask, sweep
from .masks import difference_map
from .metrics import confusion_counts, iou_from_counts, sweep_thresholds
from .plots import OUTCOME_CAPTION, OUTCOME_COLOURS, outcome_rgba, outline_truth

__all__ = [
    "STATIC_ENV",
    "SliceScore",
    "widgets_interactive",
    "slice_score",
    "set_iou",
    "rows_by_scan",
    "threshold_slider",
    "slice_picker",
    "compare_methods",
    "ablation_switch",
]

STATIC_ENV = "COIN_STATIC_WIDGETS"
DIFF_LABEL = "|x - x_cf| on [0, 1]"


def widgets_interactive() -> bool:
    """True when widgets can be shown live: no ``COIN_STATIC_WIDGETS=1`` and an ipykernel
    with a comm manager (see the module doc)."""
    if os.environ.get(STATIC_ENV, "") not in ("", "0"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    return kernel is not None and getattr(kernel, "comm_manager", None) is not None


# ---------------------------------------------------------------------------- the maths


class SliceScore(NamedTuple):
    """One slice's weak mask at a threshold and its pixel counts against the truth (Eq. 8)."""

    mask_pred: np.ndarray  # (H, W) bool
    tp: int
    fp: int
    fn: int
    iou: float


def slice_score(diff_map: np.ndarray, mask_true: np.ndarray, threshold: float,
                config: EvalConfig = EvalConfig(), postprocess: bool = True) -> SliceScore:
    """``diff_map (H, W) in [0, 1] > threshold``, post-processed as in Sec. 5 (counterfactual
    methods) or not (saliency maps), scored against ``mask_true (H, W)``."""
    pred = config_mask(np.asarray(diff_map), threshold, config, postprocess)
    tp, fp, fn = confusion_counts(pred, mask_true)
    return SliceScore(pred, tp, fp, fn, iou_from_counts(tp, fp, fn))


def set_iou(diff_maps: np.ndarray, masks_true: np.ndarray, threshold: float,
            config: EvalConfig = EvalConfig(), postprocess: bool = True) -> float:
    """IoU of a set of slices at ``threshold``: one TP/FP/FN count over all of them (Sec. 4.2).

    ``diff_maps``, ``masks_true``: (N, H, W); the Sec. 5 sweep (:func:`coinlib.evaluate.sweep`) at that threshold.
    """
    return float(sweep(diff_maps, masks_true, config, postprocess, thresholds=[threshold])[1][0])


def rows_by_scan(scan_ids: Sequence[str], slice_indices: Sequence[int]) -> dict[str, list[int]]:
    """``{scan: positions}``: positions into the arrays, grouped by scan (in order of first
    appearance) and sorted by slice index within each scan."""
    if len(scan_ids) != len(slice_indices):
        raise ValueError(f"{len(scan_ids)} scan ids but {len(slice_indices)} slice indices")
    groups: dict[str, list[int]] = {}
    for position, scan in enumerate(scan_ids):
        groups.setdefault(str(scan), []).append(position)
    return {scan: sorted(rows, key=lambda p: int(slice_indices[p])) for scan, rows in groups.items()}


# ------------------------------------------------------------------------------ drawing


def _figure(rows: int, cols: int, cell: float = 2.3) -> tuple[plt.Figure, np.ndarray]:
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 0.6, cell * rows + 0.7), squeeze=False,
                             layout="constrained")  # makes room for colour bars and two-line titles
    plt.close(fig)  # shown once, by whoever displays it (not again by the inline backend)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _image(ax: plt.Axes, x: np.ndarray, truth: np.ndarray | None = None, title: str = "") -> None:
    """x in [-1, 1], grey, with the true mask outlined (:func:`coinlib.plots.outline_truth`)."""
    ax.imshow(x, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    outline_truth(ax, truth, 0.8)
    ax.set_title(title, fontsize=8)


def _map(ax: plt.Axes, values: np.ndarray, title: str, vmax: float, threshold: float | None = None) -> None:
    """A map in [0, vmax] with its colour bar; the threshold marked on the bar."""
    im = ax.imshow(values, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=6)
    if threshold is not None and threshold <= vmax:
        bar.ax.axhline(threshold, color="cyan", lw=1.2)
    ax.set_title(title, fontsize=8)


def _outcome(ax: plt.Axes, x: np.ndarray, score: SliceScore, truth: np.ndarray, title: str) -> None:
    ax.imshow(x, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.imshow(outcome_rgba(score.mask_pred, truth), interpolation="nearest")
    ax.set_title(f"{title}\nIoU {score.iou:.3f} (TP {score.tp}, FP {score.fp}, FN {score.fn})", fontsize=8)


def _finish(fig: plt.Figure, title: str, caption: str = OUTCOME_CAPTION) -> plt.Figure:
    fig.suptitle(title, fontsize=9)
    fig.supxlabel(caption, fontsize=7)
    return fig


def _live(draw: Callable[..., plt.Figure], controls: Mapping[str, Any]) -> Any:
    """A VBox of ``controls`` over an Output that shows ``draw(**values)`` after every change.

    The box keeps the latest figure in ``box.figure`` (the tests read it).
    """
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()
    box = widgets.VBox([widgets.HBox(list(controls.values())), out])

    def refresh(_change=None) -> None:
        box.figure = draw(**{name: control.value for name, control in controls.items()})
        out.clear_output(wait=True)
        with out:
            display(box.figure)

    for control in controls.values():
        control.observe(refresh, names="value")
    refresh()
    return box


def _slider_step(config: EvalConfig) -> float:
    return float(sweep_thresholds(config.sweep_points)[1])


def _stack(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[None] if a.ndim == 2 else a


# -------------------------------------------------------------------------------- views


def threshold_slider(
    x: np.ndarray,
    x_cf: np.ndarray,
    mask_true: np.ndarray,
    threshold: float = 0.25,
    index: int = 0,
    config: EvalConfig = EvalConfig(),
    postprocess: bool = True,
    diff_vmax: float = 0.5,
    interactive: bool | None = None,
):
    """A threshold on |x - x_cf| and a slice: TP / FP / FN overlay, that slice's IoU, the set's IoU.

    ``x``, ``x_cf``: (N, H, W) in [-1, 1], abnormal slices; ``mask_true``: (N, H, W) bool.
    Weak masks are post-processed as in Sec. 5 (``postprocess``, radii from ``config``); the
    set's IoU at the threshold is one TP/FP/FN count over all N slices, and the curve beside
    it is the Sec. 5 sweep over ``config.sweep_points`` thresholds, drawn over [0, ``diff_vmax``]
    (the difference map's colour scale; [0, 1] once the threshold passes it). Static: the
    slice ``index`` at ``threshold``.
    """
    x, x_cf, truth = _stack(x), _stack(x_cf), _stack(mask_true).astype(bool)
    diff = difference_map(x, x_cf)
    thresholds, curve = sweep(diff, truth, config, postprocess)

    def draw(threshold: float, index: int) -> plt.Figure:
        score = slice_score(diff[index], truth[index], threshold, config, postprocess)
        whole = set_iou(diff, truth, threshold, config, postprocess)
        fig, axes = _figure(1, 5, cell=2.7)
        _image(axes[0, 0], x[index], truth[index], "x (truth outlined)")
        _image(axes[0, 1], x_cf[index], None, "x_cf")
        _map(axes[0, 2], diff[index], DIFF_LABEL, diff_vmax, threshold)
        _outcome(axes[0, 3], x[index], score, truth[index], f"weak mask, t = {threshold:.2f}")
        ax = axes[0, 4]
        ax.plot(thresholds, curve, lw=1.2, color="0.3")
        ax.plot([threshold], [whole], "o", color=OUTCOME_COLOURS["fp"])
        shown = diff_vmax if threshold <= diff_vmax else 1.0  # the difference map's colour scale
        ax.set(xlim=(0, shown), ylim=(0, 1), xlabel="threshold", ylabel="IoU of the set")
        ax.set_xticks(np.linspace(0, shown, 6))
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=7)
        ax.set_title(f"all {len(diff)} slices: IoU {whole:.3f}", fontsize=8)
        return _finish(fig, f"slice {index + 1} of {len(diff)}: IoU {score.iou:.3f}; "
                            f"the set of {len(diff)} slices: IoU {whole:.3f} at t = {threshold:.2f}")

    if not (widgets_interactive() if interactive is None else interactive):
        return draw(threshold, index)
    import ipywidgets as widgets

    controls = {"threshold": widgets.FloatSlider(value=threshold, min=0.0, max=1.0, step=_slider_step(config),
                                                 description="threshold", continuous_update=False,
                                                 readout_format=".2f"),
                "index": widgets.IntSlider(value=index, min=0, max=len(diff) - 1, description="slice",
                                           continuous_update=False)}
    return _live(draw, controls)


def slice_picker(
    x: np.ndarray,
    scan_ids: Sequence[str],
    slice_indices: Sequence[int],
    mask_true: np.ndarray | None = None,
    x_cf: np.ndarray | None = None,
    diff_vmax: float = 0.5,
    static_count: int = 6,
    interactive: bool | None = None,
):
    """Pick a scan and one of its slices: x (truth outlined), and x_cf and |x - x_cf| if given.

    ``x`` (N, H, W) in [-1, 1], e.g. a split's slices; ``scan_ids``, ``slice_indices`` (N,)
    from the prepared index (``prepared.index[row]["scan_id"]``, ``["slice_index"]``);
    ``mask_true``, ``x_cf`` (N, H, W) optional. Live, the box's ``position`` attribute is the
    picked slice's position in the arrays. Static: up to ``static_count`` scans spread over
    the split, each at its slice with the largest true mask (the middle slice without masks).
    """
    x = _stack(x)
    if len(x) != len(scan_ids):
        raise ValueError(f"x has {len(x)} slices, scan_ids {len(scan_ids)}")
    truth = None if mask_true is None else _stack(mask_true).astype(bool)
    x_cf = None if x_cf is None else _stack(x_cf)
    diff = None if x_cf is None else difference_map(x, x_cf)
    groups = rows_by_scan(scan_ids, slice_indices)

    def panels(axes: Sequence[plt.Axes], position: int) -> None:
        title = f"scan {scan_ids[position]}, slice {int(slice_indices[position])}"
        if truth is not None:
            title += f"\ntrue mask {int(truth[position].sum())} px"
        _image(axes[0], x[position], None if truth is None else truth[position], title)
        if diff is not None:
            _image(axes[1], x_cf[position], None, "x_cf")
            _map(axes[2], diff[position], DIFF_LABEL, diff_vmax)

    per_slice = 1 if diff is None else 3

    def draw(scan: str, slice_number: int) -> plt.Figure:
        fig, axes = _figure(1, per_slice)
        panels(axes[0], groups[scan][slice_number])
        return _finish(fig, f"scan {scan}: slice {slice_number + 1} of {len(groups[scan])}",
                       "ground truth outlined in sky blue")

    if not (widgets_interactive() if interactive is None else interactive):
        scans = list(groups)
        spread = np.unique(np.linspace(0, len(scans) - 1, min(static_count, len(scans))).astype(int))
        fig, axes = _figure(per_slice, len(spread))
        for col, i in enumerate(spread):
            rows = groups[scans[i]]
            best = rows[len(rows) // 2] if truth is None else max(rows, key=lambda p: (truth[p].sum(), -p))
            panels(axes[:, col], best)
        which = "its slice with the largest true mask" if truth is not None else "its middle slice"
        return _finish(fig, f"{len(spread)} of {len(scans)} scans, each at {which}", "ground truth outlined in sky blue")
    import ipywidgets as widgets

    first = next(iter(groups))
    scan = widgets.Dropdown(options=list(groups), value=first, description="scan")
    slider = widgets.IntSlider(value=len(groups[first]) // 2, min=0, max=len(groups[first]) - 1,
                               description="slice", continuous_update=False)

    def new_scan(change) -> None:  # keep the slider inside the new scan before redrawing
        slider.max = len(groups[change["new"]]) - 1
        slider.value = min(slider.value, slider.max)

    scan.observe(new_scan, names="value")
    box = _live(draw, {"scan": scan, "slice_number": slider})

    def remember(_change=None) -> None:
        box.position = groups[scan.value][slider.value]

    scan.observe(remember, names="value")
    slider.observe(remember, names="value")
    remember()
    return box


def compare_methods(
    x: np.ndarray,
    mask_true: np.ndarray,
    maps: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
    postprocess: Collection[str] = (),
    index: int = 0,
    config: EvalConfig = EvalConfig(),
    diff_vmax: float = 0.5,
    interactive: bool | None = None,
):
    """One slice under every method: each map with its colour bar, and its weak mask and IoU.

    ``x`` (N, H, W) or (H, W) in [-1, 1]; ``mask_true`` the same shape, bool; ``maps[name]``
    the method's maps, same shape, in [0, 1]: |x - x_cf| for counterfactual methods (name
    them in ``postprocess``: closing, opening, largest component, Sec. 5), min-max normalised
    saliency maps otherwise; ``thresholds[name]`` each method's threshold (e.g. chosen on
    validation). Each map has its colour bar: |x - x_cf| on [0, ``diff_vmax``], saliency maps on
    [0, 1]. Live: a slice slider and one threshold slider per method.
    """
    x, truth = _stack(x), _stack(mask_true).astype(bool)
    stacks = {name: _stack(m) for name, m in maps.items()}
    for name, m in stacks.items():
        if m.shape != x.shape:
            raise ValueError(f"maps[{name!r}] has shape {m.shape}, x {x.shape}")
    missing = [name for name in stacks if name not in thresholds]
    if missing:
        raise KeyError(f"no threshold for {missing}")

    def draw(index: int, **chosen: float) -> plt.Figure:
        fig, axes = _figure(2, len(stacks) + 1)
        _image(axes[0, 0], x[index], truth[index], "x (truth outlined)")
        _image(axes[1, 0], np.where(truth[index], 1.0, -1.0), None, "true mask")
        for col, (name, m) in enumerate(stacks.items(), start=1):
            t = chosen[_key(name)]
            counterfactual = name in postprocess  # an absolute difference, on its own colour scale
            kind = "|x - x_cf|" if counterfactual else "normalised map"
            _map(axes[0, col], m[index], f"{name}: {kind}", diff_vmax if counterfactual else 1.0, t)
            score = slice_score(m[index], truth[index], t, config, name in postprocess)
            _outcome(axes[1, col], x[index], score, truth[index], f"{name}, t = {t:.2f}")
        return _finish(fig, f"slice {index + 1} of {len(x)} under {len(stacks)} methods")

    keys = {_key(name): name for name in stacks}
    if not (widgets_interactive() if interactive is None else interactive):
        return draw(index, **{key: float(thresholds[name]) for key, name in keys.items()})
    import ipywidgets as widgets

    controls: dict[str, Any] = {"index": widgets.IntSlider(value=index, min=0, max=len(x) - 1,
                                                           description="slice", continuous_update=False)}
    for key, name in keys.items():
        controls[key] = widgets.FloatSlider(value=float(thresholds[name]), min=0.0, max=1.0,
                                            step=_slider_step(config), description=name[:12],
                                            continuous_update=False, readout_format=".2f")
    return _live(draw, controls)


def _key(name: str) -> str:
    """A keyword-safe name for a method's threshold control."""
    return "t_" + "".join(c if c.isalnum() else "_" for c in name)


def ablation_switch(
    x: np.ndarray,
    mask_true: np.ndarray,
    counterfactuals: Mapping[str, np.ndarray] | Callable[[str], np.ndarray],
    names: Sequence[str] | None = None,
    thresholds: float | Mapping[str, float] = 0.25,
    index: int = 0,
    config: EvalConfig = EvalConfig(),
    diff_vmax: float = 0.5,
    interactive: bool | None = None,
):
    """One slice under each model of an ablation: x_cf, |x - x_cf| on one scale, weak mask, IoU.

    ``x``, ``mask_true``: (N, H, W) (or (H, W)); ``counterfactuals``: ``{name: x_cf (N, H, W)}``
    or a loader ``name -> x_cf`` (called once per model, when first shown; then ``names`` is
    required); ``thresholds``: one for all, or per model (e.g. each row's validation choice).
    Live: toggle buttons switch the model, a slider the slice. Static: one row per model.
    """
    x, truth = _stack(x), _stack(mask_true).astype(bool)
    if callable(counterfactuals):
        if not names:
            raise ValueError("give the model names when counterfactuals is a loader")
        loader, loaded = counterfactuals, {}
    else:
        loader, loaded = None, {name: _stack(v) for name, v in counterfactuals.items()}
    names = list(names or loaded)

    def x_cf_of(name: str) -> np.ndarray:
        if name not in loaded:
            loaded[name] = _stack(loader(name))
        if loaded[name].shape != x.shape:
            raise ValueError(f"x_cf of {name!r} has shape {loaded[name].shape}, x {x.shape}")
        return loaded[name]

    def threshold_of(name: str) -> float:
        return float(thresholds[name] if isinstance(thresholds, Mapping) else thresholds)

    def row(axes: Sequence[plt.Axes], name: str, index: int) -> None:
        x_cf = x_cf_of(name)[index]
        diff = difference_map(x[index], x_cf)
        t = threshold_of(name)
        _image(axes[0], x[index], truth[index], f"{name}: x (truth outlined)")
        _image(axes[1], x_cf, None, f"{name}: x_cf")
        _map(axes[2], diff, DIFF_LABEL, diff_vmax, t)
        _outcome(axes[3], x[index], slice_score(diff, truth[index], t, config), truth[index], f"t = {t:.2f}")

    def draw(name: str, index: int) -> plt.Figure:
        fig, axes = _figure(1, 4)
        row(axes[0], name, index)
        return _finish(fig, f"{name}, slice {index + 1} of {len(x)}")

    if not (widgets_interactive() if interactive is None else interactive):
        fig, axes = _figure(len(names), 4)
        for r, name in enumerate(names):
            row(axes[r], name, index)
        return _finish(fig, f"slice {index + 1} of {len(x)} under {len(names)} models")
    import ipywidgets as widgets

    controls = {"name": widgets.ToggleButtons(options=names, value=names[0], description="model"),
                "index": widgets.IntSlider(value=index, min=0, max=len(x) - 1, description="slice",
                                           continuous_update=False)}
    return _live(draw, controls)
