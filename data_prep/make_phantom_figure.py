"""Figure of the procedural CT phantom (docs/phantom.md): figures/phantom.png.

Rows: axial slices of one TotalSegmentator-layout subject at three heights (upper
abdomen, renal hilum, lower kidney poles), window W400/L40, beside the same slices
with the structure masks overlaid; KiTS-layout slices through a typical tumour (the one
nearest KiTS23's median 4 cm) and a cyst with their labels; HU histograms per structure
in the subject's contrast phase. Radiological view: row 0 anterior, column 0 the
patient's right. The phases and the comparison with real CT: data_prep/compare_real_ct.py.

    python data_prep/make_phantom_figure.py                 # generates into a temp dir
    python data_prep/make_phantom_figure.py --src DIR --kits-src DIR
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from coinlib import phantom  # noqa: E402
from coinlib.files import atomic_path, read_json  # noqa: E402

WINDOW = (40 - 200, 40 + 200)  # W400 / L40, soft-tissue window
OVERLAY = {  # structure groups shown in colour
    "liver": ("liver", "#d95f02"), "spleen": ("spleen", "#7570b3"),
    "kidneys": (("kidney_left", "kidney_right"), "#1b9e77"), "aorta": ("aorta", "#e41a1c"),
    "IVC": ("inferior_vena_cava", "#377eb8"), "pancreas": ("pancreas", "#e6ab02"),
    "psoas": (("iliopsoas_left", "iliopsoas_right"), "#a6761d"),
    "erector spinae": (("autochthon_left", "autochthon_right"), "#666666"),
    "vertebrae": (tuple(f"vertebrae_{v}" for v in phantom.VERTEBRAE), "#f0f0f0"),
    "stomach / bowel": (("stomach", "small_bowel", "colon"), "#e7298a"),
    "gallbladder": ("gallbladder", "#66a61e"),
}
KITS_COLOURS = {1: ("kidney", "#1b9e77"), 2: ("tumour", "#e41a1c"), 3: ("cyst", "#00bcd4")}


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _groups(subject: Path) -> dict[str, np.ndarray]:
    out = {}
    for label, (names, _) in OVERLAY.items():
        names = (names,) if isinstance(names, str) else names
        out[label] = np.any([_load(subject / "segmentations" / f"{n}.nii.gz") > 0 for n in names], axis=0)
    return out


def _pick_slices(kidneys: np.ndarray, bone: np.ndarray) -> list[int]:
    """Upper abdomen, renal hilum (largest kidney area), lower poles; each moved to the
    nearest slice through a vertebral body rather than a disc."""
    area = kidneys.sum((0, 1))
    hilum = int(np.argmax(area))
    low = int(np.nonzero(area > 0.45 * area.max())[0].min())
    nz = kidneys.shape[2]
    upper = min(nz - 3, hilum + int(0.6 * (nz - hilum)))
    body = np.nonzero(bone.sum((0, 1)) > 0.6 * bone.sum((0, 1)).max())[0]
    return [int(body[np.argmin(np.abs(body - k))]) for k in (upper, hilum, max(low, 2))]


def _crop(image: np.ndarray, margin: int = 12) -> tuple[slice, slice]:
    """Rows and columns around the body (HU > -500), so the anatomy fills the panel."""
    rows, cols = np.nonzero(image > -500)
    return (slice(max(rows.min() - margin, 0), rows.max() + margin),
            slice(max(cols.min() - margin, 0), cols.max() + margin))


def _overlay(ax, image: np.ndarray, labels: np.ndarray, colours: list[str]) -> None:
    ax.imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
    cmap = ListedColormap(["none"] + colours)
    ax.imshow(np.ma.masked_equal(labels, 0), cmap=cmap, vmin=0, vmax=len(colours), alpha=0.45,
              interpolation="nearest")


def _panel(ax, image, title: str) -> None:
    ax.imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
    ax.set_title(title, fontsize=9)


def make_figure(subject: Path, kits_src: Path, out: Path) -> None:
    """Draw the figure from one TotalSegmentator-layout subject folder and a KiTS-layout folder."""
    ct = _load(subject / "ct.nii.gz").astype(np.float32)
    groups = _groups(subject)
    labels = np.zeros(ct.shape, np.uint8)
    for i, mask in enumerate(groups.values(), start=1):
        labels[mask] = i
    colours = [c for _, c in OVERLAY.values()]
    ks = _pick_slices(groups["kidneys"], groups["vertebrae"])
    spacing = nib.load(subject / "ct.nii.gz").header.get_zooms()

    listing = read_json(kits_src / "kits23.json")
    # a typical tumour: the one closest to KiTS23's median diameter (40 mm)
    tumour = min((c for c in listing if c["kind"] == "tumour"),
                 key=lambda c: min(abs(les["diameter_mm"] - 40) for les in c["lesions"] if les["kind"] == "tumour"))
    cyst = next((c for c in listing if c["kind"] == "cyst"),
                next((c for c in listing if any(les["kind"] == "cyst" for les in c["lesions"])), None))

    fig = plt.figure(figsize=(16, 10.5))
    grid = fig.add_gridspec(3, 4, wspace=0.04, hspace=0.2)
    for row, k in enumerate(ks):
        image, lab = phantom.axial_view(ct, k), phantom.axial_view(labels, k)
        box = _crop(image)
        image, lab = image[box], lab[box]
        height = ["upper abdomen", "renal hilum", "lower kidney poles"][row]
        _panel(fig.add_subplot(grid[row, 0]), image, f"{subject.name}, {height} (slice {k}, {spacing[0]:.1f} mm)")
        ax = fig.add_subplot(grid[row, 1])
        _overlay(ax, image, lab, colours)
        ax.set_title("TotalSegmentator-layout masks", fontsize=9)
    handles = [Patch(color=c, label=name) for name, (_, c) in OVERLAY.items()]
    fig.legend(handles=handles, loc="upper center", ncol=6, fontsize=8, frameon=False,
               bbox_to_anchor=(0.31, 0.1))

    for row, case in enumerate([tumour, cyst]):
        if case is None:
            continue
        img = _load(kits_src / case["case_id"] / "imaging.nii.gz")
        seg = _load(kits_src / case["case_id"] / "segmentation.nii.gz")
        wanted = 2 if row == 0 else 3
        k = int(np.argmax((seg == wanted).sum((1, 2))))  # KiTS axis 0 is axial; img[k] is radiological
        box = _crop(img[k])
        sizes = ", ".join(f"{les.get('subtype', les['kind']).replace('_', ' ')} {les['diameter_mm']:.0f} mm"
                          for les in case["lesions"])
        phase = case.get("phase", "").replace("_", " ")
        _panel(fig.add_subplot(grid[row, 2]), img[k][box], f"KiTS-layout {case['case_id']} ({phase}): {sizes}")
        ax = fig.add_subplot(grid[row, 3])
        _overlay(ax, img[k][box], seg[k][box], [c for _, c in KITS_COLOURS.values()])
        ax.set_title("KiTS labels", fontsize=9)
        ax.legend(handles=[Patch(color=c, label=n) for n, c in KITS_COLOURS.values()], loc="lower center",
                  ncol=3, fontsize=7, frameon=False, bbox_to_anchor=(0.5, -0.13))

    ax = fig.add_subplot(grid[2, 2:])
    bins = np.arange(-200, 451, 5)
    for name, (_, colour) in OVERLAY.items():
        values = ct[groups[name]]
        if name in ("stomach / bowel", "vertebrae") or values.size == 0:
            continue
        ax.hist(values, bins=bins, density=True, histtype="step", lw=1.6, color=colour, label=name)
    fat = ct[(labels == 0) & (ct > -200) & (ct < -30)]
    ax.hist(fat, bins=bins, density=True, histtype="step", lw=1.2, color="k", ls="--", label="fat (unlabelled)")
    ax.set_xlabel("HU")
    ax.set_yticks([])
    phase = read_json(subject / ".phantom.json").get("phase", "?").replace("_", " ")
    ax.set_title(f"HU per structure, {subject.name} ({phase} phase)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.set_xlim(bins[0], bins[-1])
    for a in fig.axes:
        if a is not ax:
            a.set_axis_off()
    fig.suptitle("Procedural abdominal CT phantom (radiological view: patient's right on the left, "
                 "anterior up; W400/L40)", fontsize=11, y=0.95)
    with atomic_path(out.with_suffix(".png")) as tmp:
        fig.savefig(tmp, bbox_inches="tight", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, help="TotalSegmentator-layout folder (default: generate)")
    parser.add_argument("--kits-src", type=Path, help="KiTS23-layout folder (default: generate ten cases)")
    parser.add_argument("--out", type=Path, default=Path("figures/phantom"), help="output path without suffix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subject", type=int, default=0, help="which subject to show (index)")
    parser.add_argument("--phase", default="portal_venous", help="contrast phase of the generated subject")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = args.src or phantom.generate_totalsegmentator(Path(tmp) / "ts", args.subject + 1, args.seed,
                                                            phases=args.phase)
        kits_src = args.kits_src or phantom.generate_kits23(Path(tmp) / "kits", 10, args.seed)
        make_figure(src / f"s{args.subject:04d}", kits_src, args.out)
    print(args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
