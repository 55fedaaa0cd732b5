"""The numbers the paper reports (Tables 1-3), to print beside ours.

Transcribed from the paper's Tables 1-3; the tables
of :mod:`coinlib.tables` put them in adjacent columns. Keys are this project's names:
tracks ``synthetic`` (TotalSegmentator + synthetic anomalies) and ``tumour`` (the paper's
private TUH set; here the KiTS23 layout), methods as in :data:`coinlib.variants.VARIANTS`
and :data:`coinlib.saliency.SALIENCY_METHODS`. ``None``: not reported (the paper gives
no FID or CV for saliency methods, and does not run Grad-CAM).
"""

from __future__ import annotations

__all__ = ["PaperRow", "TABLE1", "TABLE2", "TABLE3", "TABLE3_LABELS", "paper_row"]

PaperRow = dict[str, float | None]


def _row(fid: float | None, cv: float | None, iou: float | None) -> PaperRow:
    return {"fid": fid, "cv": cv, "iou": iou}


# Table 1: (track, method) -> FID, CV, IoU (best threshold on the test set, Sec. 5)
TABLE1: dict[tuple[str, str], PaperRow] = {
    ("synthetic", "scorecam"): _row(None, None, 0.030),
    ("synthetic", "layercam"): _row(None, None, 0.026),
    ("synthetic", "rise"): _row(None, None, 0.397),
    ("synthetic", "singla"): _row(0.047, 0.998, 0.445),
    ("synthetic", "coin"): _row(0.003, 0.997, 0.646),
    ("tumour", "scorecam"): _row(None, None, 0.293),
    ("tumour", "layercam"): _row(None, None, 0.296),
    ("tumour", "rise"): _row(None, None, 0.294),
    ("tumour", "singla"): _row(0.203, 0.992, 0.352),
    ("tumour", "coin"): _row(0.036, 0.980, 0.432),
}

# Table 2: COIN's loss ablation on the synthetic track
TABLE2: dict[str, PaperRow] = {
    "coin_no_idt": _row(0.0024, 0.997, 0.500),
    "coin_no_f": _row(0.0032, 0.642, 0.424),
    "coin_no_tv": _row(0.0178, 0.997, 0.427),
    "coin": _row(0.0029, 0.997, 0.646),
}

# Table 3 (Appendix A), synthetic track; row H is Singla* of Table 1 (same settings)
TABLE3: dict[str, PaperRow] = {
    "table3_a": _row(1.6190, 0.992, 0.020),
    "table3_b": _row(0.5500, 0.934, 0.086),
    "table3_c": _row(0.3254, 0.968, 0.284),
    "table3_d": _row(0.1751, 0.933, 0.480),
    "table3_e": _row(0.0849, 0.961, 0.463),
    "table3_f": _row(0.0253, 0.954, 0.509),
    "table3_g": _row(0.0493, 0.996, 0.528),
    "singla": _row(0.0466, 0.998, 0.445),
    "coin": _row(0.0029, 0.997, 0.646),
}

# Table 3's row labels (the settings themselves live in coinlib.variants)
TABLE3_LABELS: dict[str, str] = {
    **{f"table3_{row.lower()}": row for row in "ABCDEFG"},
    "singla": "H",
    "coin": "COIN",
}


def paper_row(table: dict, key) -> PaperRow:
    """The paper's row for ``key``, or all-``None`` when the paper has no such row."""
    return table.get(key, _row(None, None, None))
