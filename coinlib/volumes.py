"""Reading CT volumes, for data preparation and ``coin label`` alike: one volume (NIfTI or a
DICOM series) to a canonical RAS+ volume (:func:`load_canonical`, :class:`CanonicalVolume`,
checked: 3D, finite, within CT's range, masks on the image's grid), the scans ``coin label``
finds, and TotalSegmentator kidney masks.

Finding scans (:func:`find_scans`): under an input folder, every ``*.nii.gz`` (less label
files: ``segmentation.nii.gz``, anything below ``segmentations/`` or ``instances/``, and
the masks ``coin label`` writes) and every DICOM series. A folder holds DICOM when it has
files ending ``.dcm``/``.ima``/``.dicom`` or carrying the DICOM Part 10 marker (``DICM`` at
byte 128); GDCM's series discovery (SimpleITK's ``ImageSeriesReader.GetGDCMSeriesIDs``)
then splits its files by SeriesInstanceUID. One series in a folder is named after the folder;
several are named ``<folder>/<SeriesInstanceUID>`` (``<folder>/no_series_uid`` for one whose
files leave it empty). Outputs are named after :attr:`Scan.name`.

Reading a DICOM series (:func:`read_dicom_series`): GDCM orders the files by position along
the slice normal and SimpleITK's ``ImageSeriesReader`` builds the volume, applying each
file's RescaleSlope/RescaleIntercept (HU out). Geometry comes from the DICOM
(ImagePositionPatient, ImageOrientationPatient, PixelSpacing): the volume becomes a NIfTI
image with the same voxel grid, ITK's LPS+ coordinates flipped to NIfTI's RAS+, so a mask
written with its affine lies on the series' grid in any viewer. Checked before labelling,
each with an error naming the file or folder: a DICOM-looking file GDCM cannot parse
(corrupt, truncated); in every file of the series, a modality other than CT, a SOP class
that is not a CT image (a secondary capture, an MR slice) or an ImageType of a scout or
screenshot; two series with nothing to tell them apart mixed in one folder (the same or an
empty SeriesInstanceUID) whether their slices coincide (two slices at one position), differ
in a tag one acquisition's slices share (:data:`SERIES_TAGS`: study, series number, frame of
reference, pixel spacing, matrix, slice thickness, kernel) or interleave with origins off one
line; slices of different orientations; uneven slice spacing (a missing slice); a series of
one file.

Every read volume must be 3D, finite and within CT's range (NaN or infinite voxels, or
values beyond :data:`HU_LIMIT`, are an error naming the file, never
labelled). A NIfTI file reached by two names (symlinks, hard links) is labelled once; a
symlink to nothing is named in a warning. Reading errors are raised as :class:`UnreadableScan`, so a caller
can list the scan and go on with the others.

Kidney masks (:func:`find_organ_masks`, :func:`read_kidney_mask`): TotalSegmentator's output
for the scan, either a folder with ``kidney_left.nii.gz`` and ``kidney_right.nii.gz`` (its
default output, and the TotalSegmentator dataset's ``segmentations/``) or its multilabel
file (``--ml``), whose label table (a NIfTI header extension) names the kidney labels; a
multilabel file without a table is read with TotalSegmentator's ``total`` class map (2
kidney_right, 3 kidney_left, the same in v1 and v2). A mask must lie on the scan's voxel
grid: the same voxels in the same place, possibly stored in another axis order (it is
reoriented); anything else is an error naming the mask file.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from .config import FILL_HU_RANGE

__all__ = [
    "HU_LIMIT",
    "CanonicalVolume",
    "open_nifti",
    "read_data",
    "read_finite",
    "check_finite",
    "check_plausible",
    "integer_labels",
    "one_line",
    "check_same_grid",
    "canonical",
    "load_canonical",
    "NIFTI_SUFFIX",
    "MASK_SUFFIX",
    "DICOM_SUFFIXES",
    "KIDNEY_FILES",
    "TOTAL_KIDNEY_LABELS",
    "UnreadableScan",
    "Scan",
    "find_scans",
    "looks_like_dicom",
    "read_scan",
    "read_dicom_series",
    "sitk_to_nifti",
    "find_organ_masks",
    "read_kidney_mask",
]

NIFTI_SUFFIX = ".nii.gz"
MASK_SUFFIX = "_coin_mask.nii.gz"  # what coin label writes: never an input
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
DICOM_IGNORED = frozenset({"DICOMDIR"})  # a media directory, not an image
LABEL_FILE_NAMES = frozenset({"segmentation.nii.gz"})  # KiTS23 labels
LABEL_FOLDERS = frozenset({"segmentations", "instances"})  # TotalSegmentator, KiTS23 annotations
KIDNEY_FILES = ("kidney_left.nii.gz", "kidney_right.nii.gz")
TOTAL_KIDNEY_LABELS = {2: "kidney_right", 3: "kidney_left"}  # TotalSegmentator "total" task, v1 and v2
SLICE_SPACING_TOLERANCE = 0.01  # relative: gaps may differ by 1 % (rounded positions), not more
_TAGS = {"position": "0020|0032", "orientation": "0020|0037", "modality": "0008|0060",
         "sop_class": "0008|0016", "image_type": "0008|0008"}
# The CT image storage classes (CT, Enhanced CT, Legacy Converted Enhanced CT): a file of any
# other class (Secondary Capture, MR, ...) among a series' slices is not a CT slice.
CT_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"})
NOT_AXIAL_IMAGE_TYPES = frozenset({"LOCALIZER", "SCREEN SAVE"})  # scouts and screenshots, not slices
# Tags that one acquisition's slices share: two series with an empty SeriesInstanceUID that
# differ in any of them are not one volume, whatever their positions.
SERIES_TAGS = {"StudyInstanceUID": "0020|000d", "SeriesNumber": "0020|0011", "FrameOfReferenceUID": "0020|0052",
               "PixelSpacing": "0028|0030", "Rows": "0028|0010", "Columns": "0028|0011",
               "SliceThickness": "0018|0050", "ConvolutionKernel": "0018|1210"}
POSITION_TOLERANCE_MM = 0.1  # slice origins must lie on one line (a stack, possibly tilted) within this
# A voxel beyond +-HU_LIMIT is not CT: scanners store HU as 16-bit integers (-32768..32767, or
# an extended scale of the same order), so such a value is a broken or foreign file (say,
# float64 noise near 1e303, which float32 would turn into infinities).
HU_LIMIT = 100_000.0
LABEL_TOLERANCE = 1e-3  # a float label file's values must be this close to integers
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError)
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError)


# --------------------------------------------------------------------------- one volume, NIfTI


def open_nifti(path: Path) -> nib.Nifti1Image:
    """The NIfTI header of ``path`` (data not read yet); a clear error for missing/bad files."""
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        image = nib.load(path)
    except READ_ERRORS as err:
        raise ValueError(f"cannot read NIfTI file {path}: {err}") from err
    if len(image.shape) != 3:
        raise ValueError(f"{path} is not a 3D volume (shape {tuple(image.shape)})")
    return image


def check_finite(data: np.ndarray, path: Path, fill: float | None = None) -> tuple[np.ndarray, int]:
    """``(data, n)``: ``data`` with its ``n`` NaN / infinite voxels checked, and every value
    within +-:data:`HU_LIMIT` (anything beyond is not CT: ``ValueError`` naming ``path``).

    ``fill`` None: any NaN / infinite voxel raises ``ValueError`` naming ``path`` and the
    count. A number in :data:`FILL_HU_RANGE`: they are set to ``fill`` (HU) and counted.
    Integer arrays cannot hold them.
    """
    count = 0
    if data.dtype.kind in "fc" and not np.isfinite(data.sum(dtype=np.float64)):  # one pass, no mask
        bad = ~np.isfinite(data)
        count = int(np.count_nonzero(bad))
        if count and fill is None:
            raise ValueError(
                f"{path}: {count} of {data.size} voxels ({count / data.size:.2%}) are NaN or infinite; "
                "fix the file, or let `coin prepare --fill-nonfinite HU` (DataConfig.fill_nonfinite_hu) "
                "set them to a value, which the manifest then counts"
            )
        if count:
            if not FILL_HU_RANGE[0] <= fill <= FILL_HU_RANGE[1]:
                raise ValueError(f"fill value {fill} HU for the non-finite voxels of {path} is not a CT value; "
                                 f"give one in [{FILL_HU_RANGE[0]:g}, {FILL_HU_RANGE[1]:g}] HU")
            data = np.where(bad, np.asarray(fill, dtype=data.dtype), data)
    check_plausible(data, path)
    return data, count


def check_plausible(data: np.ndarray, path: Path) -> None:
    """Every value within +-:data:`HU_LIMIT` (integer types that cannot exceed it pass unread)."""
    if data.size == 0 or data.dtype.kind == "b":
        return
    if data.dtype.kind in "iu" and np.iinfo(data.dtype).max <= HU_LIMIT and np.iinfo(data.dtype).min >= -HU_LIMIT:
        return
    low, high = float(data.min()), float(data.max())
    if low < -HU_LIMIT or high > HU_LIMIT:
        outside = int(np.count_nonzero((data < -HU_LIMIT) | (data > HU_LIMIT)))
        raise ValueError(f"{path}: {outside} voxels lie outside +-{HU_LIMIT:g} (values from {low:.3g} to "
                         f"{high:.3g}), which no CT scanner writes; this is not a CT volume in HU (or a "
                         "label file) that the project can read")


def integer_labels(data: np.ndarray, path: Path) -> np.ndarray:
    """A label file's values as integers: float values must be integers (within
    :data:`LABEL_TOLERANCE`), else ``ValueError`` naming ``path`` (1.5 is no label)."""
    if data.dtype.kind != "f":
        return data
    rounded = np.rint(data)
    off = np.abs(data - rounded) > LABEL_TOLERANCE
    if off.any():
        raise ValueError(f"{path}: {int(np.count_nonzero(off))} voxels hold non-integer label values "
                         f"(e.g. {float(data[off][0]):g}); a label file holds integers")
    return rounded.astype(np.int64)


def read_data(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The voxel array in the file's own axis order (decompresses the whole file)."""
    try:
        return np.asanyarray(image.dataobj)
    except READ_ERRORS as err:
        raise ValueError(f"cannot read NIfTI data of {path} (truncated or corrupt file?): {err}") from err


def read_finite(image: nib.Nifti1Image, path: Path, fill: float | None = None) -> np.ndarray:
    """:func:`read_data` with non-finite voxels refused, or set to ``fill`` (:func:`check_finite`)."""
    return check_finite(read_data(image, path), path, fill)[0]


def one_line(matrix: np.ndarray) -> str:
    """A matrix in one line (an error message is one line): ``[[1, 0, 0, 0], ...]``."""
    rows = np.asarray(matrix, dtype=np.float64)
    return "[" + ", ".join("[" + ", ".join(f"{v:.4g}" for v in row) + "]" for row in rows) + "]"


def check_same_grid(ref: nib.Nifti1Image, ref_path: Path, other: nib.Nifti1Image, other_path: Path) -> None:
    """Image and mask must share shape and affine (voxel i of one is voxel i of the other)."""
    if tuple(ref.shape) != tuple(other.shape):
        raise ValueError(
            f"shape mismatch: {ref_path} has shape {tuple(ref.shape)}, "
            f"{other_path} has shape {tuple(other.shape)}"
        )
    if not np.allclose(ref.affine, other.affine, rtol=1e-5, atol=1e-3):
        raise ValueError(
            f"affine mismatch (different voxel grids): {ref_path} has {one_line(ref.affine)}, "
            f"{other_path} has {one_line(other.affine)}"
        )


@dataclass(frozen=True)
class CanonicalVolume:
    """A volume reoriented to RAS+ (``data[x, y, z]``: x to the patient's right, y anterior,
    z superior), with what is needed to map back to the file's own voxel axes."""

    data: np.ndarray  # (X, Y, Z), the file's dtype (HU or mask values)
    affine: np.ndarray  # (4, 4) voxel -> RAS+ mm for ``data``
    spacing: tuple[float, float, float]  # mm along X, Y, Z of ``data``
    axial_axis: int  # the file's array axis that became Z
    axial_flipped: bool  # True when the file's axial axis runs superior -> inferior
    path: Path

    @property
    def n_axial(self) -> int:
        return int(self.data.shape[2])

    def original_slice_index(self, k: int) -> int:
        """Index along the file's own axial voxel axis of canonical slice ``k`` (what a
        viewer shows as the slice number)."""
        return self.n_axial - 1 - int(k) if self.axial_flipped else int(k)

    def radiological(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Axial slices ``indices`` (canonical z) in radiological view, (n, Y, X):
        row 0 anterior, column 0 the patient's right."""
        idx = np.asarray(indices, dtype=np.int64)
        return np.ascontiguousarray(np.transpose(self.data[:, :, idx], (2, 1, 0))[:, ::-1, ::-1])


def canonical(data: np.ndarray, affine: np.ndarray, path: Path) -> CanonicalVolume:
    ornt = nib.orientations.io_orientation(affine) if np.isfinite(affine).all() else np.full((3, 2), np.nan)
    if np.isnan(ornt).any():
        raise ValueError(f"{path} has a zero or singular affine (no voxel axis maps to a world axis), so "
                         f"its orientation is unknown: {one_line(affine)}")
    canonical = nib.orientations.apply_orientation(data, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    axial_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    spacing = tuple(float(s) for s in np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0)))
    return CanonicalVolume(
        data=canonical,
        affine=new_affine,
        spacing=spacing,  # type: ignore[arg-type]
        axial_axis=axial_axis,
        axial_flipped=bool(ornt[axial_axis, 1] < 0),
        path=path,
    )


def load_canonical(path: str | os.PathLike, fill_nonfinite: float | None = None) -> CanonicalVolume:
    """Read a 3D NIfTI file and reorient it to RAS+ using its affine.

    Works for any axis order and sign (LPS, RAS, KiTS's axial-first arrays); oblique
    affines go to the closest canonical orientation. Raises ``FileNotFoundError`` for a
    missing file and ``ValueError`` naming ``path`` for a non-3D, truncated or corrupt one,
    one with a singular affine, or one with NaN / infinite voxels (unless
    ``fill_nonfinite`` gives the value to put there, :func:`check_finite`).
    """
    path = Path(path)
    image = open_nifti(path)
    return canonical(read_finite(image, path, fill_nonfinite), image.affine, path)




class UnreadableScan(ValueError):
    """A scan (or its organ masks) cannot be read; the message names the file."""


@dataclass(frozen=True, order=True)
class Scan:
    """One volume to label.

    ``name``: its path relative to the input root without extension (POSIX), e.g.
    ``case_00000/imaging`` or ``dicom/series_a``; outputs are ``<name>_coin_mask.nii.gz``.
    ``path``: the ``.nii.gz`` file, or the DICOM folder. ``series_uid``: the DICOM series
    (``""`` where the files leave SeriesInstanceUID empty; ``None`` for NIfTI, and for a
    DICOM folder in which GDCM found no readable series).
    """

    name: str
    path: Path
    kind: Literal["nifti", "dicom"]
    series_uid: str | None = None

    @property
    def display(self) -> str:
        """How the CSV names the input: the NIfTI file, or the DICOM folder (``/`` at the end)."""
        return f"{self.name}{NIFTI_SUFFIX}" if self.kind == "nifti" else f"{self.name}/"


# --------------------------------------------------------------------------- finding scans


def _simpleitk():
    try:
        import SimpleITK
    except ImportError as err:  # a dependency (pyproject.toml); say so instead of a traceback
        raise ImportError("reading DICOM needs SimpleITK: pip install SimpleITK") from err
    return SimpleITK


@contextlib.contextmanager
def _quiet_itk() -> Iterator[Any]:
    """SimpleITK with ITK's warnings (printed to stderr) off: the checks here report instead."""
    sitk = _simpleitk()
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield sitk
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def looks_like_dicom(path: Path) -> bool:
    """A DICOM suffix, or the Part 10 marker ``DICM`` at byte 128 (files without a suffix)."""
    if path.name in DICOM_IGNORED or not path.is_file():
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if looks_like_dicom(p))


def _series_ids(folder: Path) -> tuple[str, ...]:
    with _quiet_itk() as sitk:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def _series_files(folder: Path, series_uid: str) -> list[Path]:
    """The files of one series, in GDCM's order (by position along the slice normal)."""
    with _quiet_itk() as sitk:
        return [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)]


def _dicom_scans(folder: Path, name: str) -> list[Scan]:
    ids = _series_ids(folder)
    if len(ids) <= 1:  # none readable: reading says which files fail
        return [Scan(name, folder, "dicom", ids[0] if ids else None)]
    return [Scan(f"{name}/{uid or 'no_series_uid'}", folder, "dicom", uid) for uid in ids]


def find_scans(source: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Scan]:
    """The scans to label under ``source``, sorted by name (module doc).

    ``source``: a ``.nii.gz`` file, a DICOM folder, or a folder searched recursively.
    Files below ``exclude`` (the output folder) are left out when it lies inside ``source``.
    Raises ``FileNotFoundError``/``ValueError`` naming ``source`` when it is missing, holds no
    scan, or two scans would get one name.
    """
    source = Path(source)
    if source.is_file():
        if not source.name.endswith(NIFTI_SUFFIX):
            raise ValueError(f"{source} is not a {NIFTI_SUFFIX} file; give a NIfTI file, a DICOM "
                             "folder, or a folder holding either")
        return [Scan(source.name[: -len(NIFTI_SUFFIX)], source, "nifti")]
    if not source.is_dir():
        raise FileNotFoundError(f"input not found: {source}")
    root = source.resolve()
    skip = Path(exclude).resolve() if exclude is not None else None
    skip_below = skip is not None and skip != root and skip.is_relative_to(root)  # out inside in
    found: list[Scan] = []
    for folder, subfolders, files in os.walk(source):
        folder = Path(folder)
        relative = folder.relative_to(source)
        if skip_below and folder.resolve().is_relative_to(skip):
            subfolders[:] = []
            continue
        subfolders[:] = sorted(s for s in subfolders if s not in LABEL_FOLDERS)
        for file in sorted(files):
            is_label = file in LABEL_FILE_NAMES or file.endswith(MASK_SUFFIX)
            if not file.endswith(NIFTI_SUFFIX) or is_label:
                continue
            path = folder / file
            if not path.is_file():
                warnings.warn(f"skipping {path}: a symlink to nothing (its target {os.readlink(path)!r} is "
                              "missing)" if path.is_symlink() else f"skipping {path}: not a file", stacklevel=2)
                continue
            found.append(Scan((relative / file[: -len(NIFTI_SUFFIX)]).as_posix(), path, "nifti"))
        if any(looks_like_dicom(folder / f) for f in files):
            found += _dicom_scans(folder, source.name if relative == Path(".") else relative.as_posix())
    if not found:
        raise ValueError(f"no CT scans (*{NIFTI_SUFFIX} files or DICOM series; label files excluded) "
                         f"found under {source}")
    found = _one_per_file(found)
    names: dict[str, Scan] = {}
    for scan in found:
        if scan.name in names:
            raise ValueError(f"two scans would share the output name {scan.name!r}: {names[scan.name].path} "
                             f"and {scan.path}; move one of them")
        names[scan.name] = scan
    return sorted(found)


def _one_per_file(scans: list[Scan]) -> list[Scan]:
    """NIfTI scans that are the same file (symlinks, hard links) kept once, by the first name
    in sorted order; each one left out is warned about (prepare counts such a scan once too)."""
    seen: dict[tuple[int, int], Scan] = {}
    kept = []
    for scan in sorted(scans):
        if scan.kind == "nifti":
            stat = scan.path.stat()  # follows symlinks: the file itself
            key = (stat.st_dev, stat.st_ino)
            if key in seen:
                warnings.warn(f"skipping {scan.path}: the same file as {seen[key].path} (a symlink or hard "
                              "link); it is labelled once", stacklevel=3)
                continue
            seen[key] = scan
        kept.append(scan)
    return kept


# --------------------------------------------------------------------------- reading volumes


def _finite(data: np.ndarray, where: Path | str) -> np.ndarray:
    """``data`` when every voxel is finite and within CT's range (:func:`check_plausible`)."""
    if data.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise UnreadableScan(f"{where} holds {bad} non-finite voxels (NaN or infinite) of {data.size}; "
                                 "fix or fill them before labelling")
    try:
        check_plausible(data, Path(where))
    except ValueError as err:
        raise UnreadableScan(str(err)) from None
    return data


def read_scan(scan: Scan) -> tuple[nib.Nifti1Image, CanonicalVolume]:
    """``(image, volume)``: the scan as a NIfTI image (its own voxel grid; for DICOM the
    series' grid, data in HU) and its RAS+ canonical data (``coinlib.prepare``'s reader).
    Raises :class:`UnreadableScan` naming the file for anything that stops labelling."""
    try:
        if scan.kind == "dicom":
            image = read_dicom_series(scan.path, scan.series_uid)
            data = _finite(np.asanyarray(image.dataobj), scan.path)  # float when a RescaleSlope is fractional
        else:
            image = open_nifti(scan.path)
            data = _finite(read_data(image, scan.path), scan.path)
        return image, canonical(data, image.affine, scan.path)
    except UnreadableScan:
        raise
    except (ValueError, OSError, RuntimeError, nib.orientations.OrientationError) as err:
        raise UnreadableScan(str(err) if str(scan.path) in str(err) else f"{scan.path}: {err}") from err


def sitk_to_nifti(image: Any) -> nib.Nifti1Image:
    """A 3D SimpleITK image as a NIfTI image on the same voxel grid.

    Array axes (i, j, k) = ITK's (x, y, z) index order; affine = diag(-1, -1, 1) (LPS+ to
    RAS+) @ [direction @ diag(spacing) | origin]. qform and sform codes 1 (scanner).
    """
    sitk = _simpleitk()
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    data = np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)))
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    lps[:3, 3] = image.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    nifti = nib.Nifti1Image(data, affine)
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=1)
    return nifti


def _floats(text: str, count: int, tag: str, path: Path) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.split("\\")], dtype=np.float64)
    except ValueError:
        values = np.zeros(0)
    if values.size != count:
        raise UnreadableScan(f"{path}: DICOM tag {tag} is {text!r}, expected {count} numbers")
    return values


def _check_slices(files: list[Path], reader: Any, folder: Path, series_uid: str) -> None:
    """The series is one stack of parallel, evenly spaced, distinct slices of CT (module doc)."""
    if len(files) < 2:
        raise UnreadableScan(f"{folder}: the series has {len(files)} file (one slice, or a multi-frame "
                             "file); coin label needs a series of at least 2 single-frame slices")

    def tag(k: int, key: str) -> str:
        return reader.GetMetaData(k, key) if reader.HasMetaDataKey(k, key) else ""

    _check_every_file_is_ct(files, tag, folder)
    _check_one_acquisition(files, tag, folder, series_uid)
    missing = [f.name for k, f in enumerate(files) if not tag(k, _TAGS["position"]) or not tag(k, _TAGS["orientation"])]
    if missing:
        raise UnreadableScan(f"{folder / missing[0]}: no ImagePositionPatient/ImageOrientationPatient; "
                             "the slices cannot be placed")
    orientation = [_floats(tag(k, _TAGS["orientation"]), 6, "ImageOrientationPatient", f) for k, f in enumerate(files)]
    for k in range(1, len(files)):
        if not np.allclose(orientation[k], orientation[0], atol=1e-4):
            raise UnreadableScan(f"{folder}: slices of different orientations ({files[0].name} vs "
                                 f"{files[k].name}): two series mixed in one folder?")
    normal = np.cross(orientation[0][:3], orientation[0][3:])
    along = np.array([_floats(tag(k, _TAGS["position"]), 3, "ImagePositionPatient", f) @ normal
                      for k, f in enumerate(files)])
    positions, counts = np.unique(np.round(along, 3), return_counts=True)
    if len(positions) < len(files):  # GDCM cannot order such a folder either: say why
        shared = positions[counts > 1][0]
        a, b = [files[k].name for k in np.flatnonzero(np.round(along, 3) == shared)[:2]]
        raise UnreadableScan(
            f"{folder}: {len(files) - len(positions)} files lie at the slice position of another (e.g. {a} and "
            f"{b}): two series mixed in one folder with nothing to tell them apart (SeriesInstanceUID "
            f"{series_uid!r} for all); put each series in a folder of its own")
    _check_collinear(files, [_floats(tag(k, _TAGS["position"]), 3, "ImagePositionPatient", f)
                             for k, f in enumerate(files)], along, folder, series_uid)
    gaps = np.diff(along)
    spread = np.abs(gaps - np.median(gaps))
    if spread.max() > SLICE_SPACING_TOLERANCE * abs(np.median(gaps)):
        k = int(spread.argmax())
        raise UnreadableScan(
            f"{folder}: slices unevenly spaced ({abs(gaps[k]):.3g} mm between {files[k].name} and "
            f"{files[k + 1].name}, {abs(np.median(gaps)):.3g} mm elsewhere): a slice missing?")


def _check_every_file_is_ct(files: list[Path], tag: Any, folder: Path) -> None:
    """Each file's modality, SOP class and image type, where present, say CT axial slice."""
    for k, path in enumerate(files):
        modality = tag(k, _TAGS["modality"]).strip()
        if modality and modality != "CT":
            raise UnreadableScan(f"{path}: modality {modality}, in the series of {folder}; coin label reads CT "
                                 "only (move the file out, or the series to a folder of its own)")
        sop_class = tag(k, _TAGS["sop_class"]).strip().rstrip("\0")
        if sop_class and sop_class not in CT_SOP_CLASSES:
            raise UnreadableScan(f"{path}: SOP class {sop_class} is not a CT image (e.g. a secondary capture), "
                                 f"in the series of {folder}; move the file out")
        image_type = {v.strip().upper() for v in tag(k, _TAGS["image_type"]).split("\\")}
        if image_type & NOT_AXIAL_IMAGE_TYPES:
            raise UnreadableScan(f"{path}: ImageType {tag(k, _TAGS['image_type']).strip()} is not a CT slice "
                                 f"(a scout or screenshot), in the series of {folder}; move the file out")


def _check_one_acquisition(files: list[Path], tag: Any, folder: Path, series_uid: str) -> None:
    """The tags one acquisition's slices share (:data:`SERIES_TAGS`) agree across the files."""
    for name, key in SERIES_TAGS.items():
        values = [tag(k, key).strip() for k in range(len(files))]
        differ = [k for k, v in enumerate(values) if v != values[0]]
        if differ:
            k = differ[0]
            raise UnreadableScan(
                f"{folder}: {name} differs between {files[0].name} ({values[0] or 'empty'}) and {files[k].name} "
                f"({values[k] or 'empty'}): two series that cannot be told apart (SeriesInstanceUID "
                f"{series_uid!r} for both) are mixed in one folder; put each series in a folder of its own")


def _check_collinear(files: list[Path], origins: list[np.ndarray], along: np.ndarray, folder: Path,
                     series_uid: str) -> None:
    """Slice origins lie on one line (a straight or gantry-tilted stack), within
    :data:`POSITION_TOLERANCE_MM`; interleaved series with shifted origins do not."""
    origins_mm = np.asarray(origins)
    design = np.stack([np.ones_like(along), along], axis=1)
    fit, *_ = np.linalg.lstsq(design, origins_mm, rcond=None)
    off = np.linalg.norm(origins_mm - design @ fit, axis=1)
    if off.max() > POSITION_TOLERANCE_MM:
        k = int(off.argmax())
        raise UnreadableScan(
            f"{folder}: the slice origin of {files[k].name} lies {off[k]:.3g} mm off the line of the others "
            f"(ImagePositionPatient): two series that cannot be told apart (SeriesInstanceUID {series_uid!r}) "
            "are mixed in one folder; put each series in a folder of its own")


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None) -> nib.Nifti1Image:
    """One DICOM series as a NIfTI image on the series' voxel grid, HU (module doc).

    ``series_uid``: a SeriesInstanceUID as GDCM reports it (``""`` when empty in the files);
    ``None`` means GDCM found no series in ``folder`` (an error naming its files).
    """
    folder = Path(folder)
    candidates = _dicom_files(folder)
    if series_uid is None:
        raise UnreadableScan(f"no readable DICOM series in {folder}: GDCM cannot parse "
                             f"{candidates[0] if candidates else 'any file'}"
                             f"{f' nor {len(candidates) - 1} other file(s)' if len(candidates) > 1 else ''}")
    in_a_series = {f.resolve() for uid in _series_ids(folder) for f in _series_files(folder, uid)}
    unreadable = [f for f in candidates if f.resolve() not in in_a_series]
    if unreadable:
        raise UnreadableScan(f"{unreadable[0]} is not a readable DICOM image (corrupt or truncated?); "
                             f"it lies among the series in {folder}" +
                             (f" ({len(unreadable) - 1} more such file(s))" if len(unreadable) > 1 else ""))
    files = _series_files(folder, series_uid)
    with _quiet_itk() as sitk:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in files])
        reader.MetaDataDictionaryArrayUpdateOn()
        try:
            image = reader.Execute()
        except RuntimeError as err:
            raise UnreadableScan(f"{_first_unreadable(files) or folder}: cannot read the DICOM series: "
                                 f"{str(err).strip().splitlines()[-1]}") from err
        _check_slices(files, reader, folder, series_uid)
        return sitk_to_nifti(image)


def _first_unreadable(files: list[Path]) -> Path | None:
    """The first file SimpleITK cannot read on its own (to name it in an error)."""
    with _quiet_itk() as sitk:
        for path in files:
            try:
                sitk.ReadImage(str(path))
            except RuntimeError:
                return path
    return None


# --------------------------------------------------------------------------- organ masks


def _has_kidney_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in KIDNEY_FILES)


def find_organ_masks(organ_dir: str | os.PathLike, scan: Scan, single: bool) -> Path:
    """Where TotalSegmentator's kidney masks for ``scan`` are: a folder holding
    ``kidney_left/right.nii.gz``, or a multilabel ``.nii.gz`` file.

    Looked for, in order: ``organ_dir`` itself when one scan is labelled (``single``);
    ``organ_dir/<name>/`` (one TotalSegmentator output folder per scan, mirroring the input);
    ``organ_dir/<folder>/segmentations/`` for a scan ``<folder>/ct.nii.gz`` (the
    TotalSegmentator dataset layout), or the ``segmentations/`` beside that scan when it lies
    inside ``organ_dir``; ``organ_dir/<name>.nii.gz`` (a multilabel file; never the scan itself). Raises :class:`UnreadableScan` listing the places looked in.
    """
    organ_dir = Path(organ_dir)
    name = Path(scan.name)
    folders = [organ_dir] if single else []
    folders.append(organ_dir / name)
    if scan.kind == "nifti" and name.name == "ct":
        folders.append(organ_dir / name.parent / "segmentations")
        beside = scan.path.parent / "segmentations"  # the dataset itself, or a folder holding it, given as DIR
        if beside.resolve().is_relative_to(organ_dir.resolve()) and beside not in folders:
            folders.append(beside)
    for folder in folders:
        if folder.is_dir() and _has_kidney_files(folder):
            return folder
    files = [organ_dir] if single else []
    files.append(organ_dir / f"{name}{NIFTI_SUFFIX}")
    files = [f for f in files if f.resolve() != scan.path.resolve()]  # the scan is not its own mask
    for file in files:
        if file.is_file() and file.name.endswith(NIFTI_SUFFIX):
            return file
    looked = [str(f) for f in folders] + [str(f) for f in files]
    multilabel = f" and for a multilabel file {', '.join(looked[len(folders):])}" if files else ""
    raise UnreadableScan(f"no kidney masks for {scan.display} under {organ_dir}: looked for "
                         f"{' + '.join(KIDNEY_FILES)} in {', '.join(looked[:len(folders)])}{multilabel}")


def _label_table(image: nib.Nifti1Image) -> dict[int, str]:
    """TotalSegmentator's label table (``<Label Key="2">...kidney_right...</Label>`` in a
    header extension), or {} when the file has none."""
    for extension in image.header.extensions:
        content = extension.get_content()
        if isinstance(content, bytes) and b"<Label" in content:
            try:
                root = ElementTree.fromstring(content.decode("utf-8", "replace").strip())
            except ElementTree.ParseError:
                continue
            return {int(label.get("Key")): (label.text or "").strip() for label in root.iter("Label")
                    if label.get("Key", "").lstrip("-").isdigit()}
    return {}


def _mask_on_grid(path: Path, image: nib.Nifti1Image, scan: Scan) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The mask file's header and data, reoriented to ``image``'s axis order; raises naming
    ``path`` when it is not on the scan's voxel grid."""
    mask = open_nifti(path)
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(mask.affine),
                                                nib.orientations.io_orientation(image.affine))
    mask = mask.as_reoriented(transform)  # the same image when the axis orders already agree
    try:
        check_same_grid(image, scan.path, mask, path)
    except ValueError as err:
        raise UnreadableScan(f"organ mask {path} is not on the voxel grid of the scan {scan.path} "
                             f"(TotalSegmentator's output for another scan, or resampled?): {err}") from err
    return mask, read_data(mask, path)


def read_kidney_mask(location: str | os.PathLike, image: nib.Nifti1Image, scan: Scan) -> tuple[np.ndarray, str]:
    """``(kidney, what)``: the kidney mask (bool, ``image``'s voxel grid and axis order) from a
    :func:`find_organ_masks` location, and a line saying what was read. Raises
    :class:`UnreadableScan` naming the file."""
    location = Path(location)
    try:
        if location.is_dir():
            kidney = np.zeros(image.shape, dtype=bool)
            for name in KIDNEY_FILES:
                _, data = _mask_on_grid(location / name, image, scan)
                kidney |= _finite(data, location / name) > 0
            return kidney, f"{' + '.join(KIDNEY_FILES)} in {location}"
        mask, data = _mask_on_grid(location, image, scan)
        table = _label_table(mask)
        labels = [k for k, v in table.items() if v in TOTAL_KIDNEY_LABELS.values()] if table else list(TOTAL_KIDNEY_LABELS)
        if not labels:
            raise UnreadableScan(f"{location}: its label table names no kidney_left/kidney_right "
                                 f"(labels {sorted(table)[:8]}...)")
        source = "its label table" if table else "TotalSegmentator's total class map (no label table in the file)"
        values = integer_labels(_finite(data, location), location)
        return np.isin(values, labels), f"labels {sorted(labels)} of {location} ({source})"
    except UnreadableScan:
        raise
    except (ValueError, OSError, nib.orientations.OrientationError) as err:
        raise UnreadableScan(str(err)) from err
