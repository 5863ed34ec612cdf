"""Where real medical images ship inside packages, what they are, and which of them must never be used.

Distillation needs pixels, not labels, and the only images a machine without internet can have are the
files that packages ship. :data:`SOURCES` names each package (PyPI, Debian, or the shared copy of the
pyradiomics test volumes), the files in it that hold real anatomy, their modality and licence.
:mod:`.unlabelled_cache` reads them into a slice cache with provenance.

Two kinds of file are never read:

* **Reserved for independent evaluation**: Debian's ``mricron-data`` and anything Colin27 or AAL
  (``colin27``, MRIcron's ``ch2*`` templates, ``aal*`` atlases, and BrainWeb, which is simulated from the
  Colin27 scans). :func:`excluded_reason` finds them by package and path tokens; every source is filtered by
  it, so a new source cannot let one in.
* **Held out by the splits**: the source files of ``test`` (and ``val``) images, e.g. pydicom's
  ``examples_overlay.dcm`` (a COSMOS test image) and the volumes ``lung2``, ``brain2``, ``breast1``
  (:func:`held_out_stems`).
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .splits import patient_id, read_splits

# Debian package and path tokens reserved for independent evaluation (never read, whatever the source).
RESERVED_PACKAGES = ("mricron-data", "mricron")
RESERVED_TOKENS = ("colin27", "colin", "ch2", "ch2bet", "ch2better", "brainweb", "aal", "aal2", "aal3",
                   "mricron")
_TOKEN = re.compile(r"[a-z]+[0-9]*|[0-9]+")


def excluded_reason(package: str, path) -> str | None:
    """Why ``path`` (of ``package``) must not be read, or ``None``.

    Tokens are lower-cased runs of letters (with trailing digits) in every path part, so ``Colin27_T1.nii``,
    ``/usr/share/mricron/ch2bet.nii.gz`` and ``AAL3v1.nii`` match but ``examples_palette.dcm`` does not.
    """
    if str(package).lower() in RESERVED_PACKAGES:
        return f"package {package} is reserved for independent evaluation"
    tokens = set()
    for part in Path(str(path)).parts:
        tokens.update(_TOKEN.findall(part.lower()))
    hit = sorted(tokens & set(RESERVED_TOKENS))
    if hit:
        return f"Colin27 / AAL / MRIcron data ({', '.join(hit)}) is reserved for independent evaluation"
    return None


@dataclass(frozen=True)
class ShippedSource:
    """Real images inside one package.

    Attributes:
        name: id in the cache and its provenance (``pydicom``, ``itk-examples``...).
        package: PyPI distribution or Debian package name.
        kind: ``pypi`` (found with ``importlib.metadata``), ``debian`` (``dpkg-query``) or ``folder`` (a
            folder given at run time: the shared pyradiomics volumes).
        root: folder inside the distribution (``pypi``), absolute folder (``debian``), unused for ``folder``.
        files: ``(glob, modality)`` pairs under ``root``; modality ``""`` means "from the DICOM header".
        license: the licence the package states for these files.
        install: how to get the package.
        axes: ``all`` slices near-isotropic volumes along all three axes, ``first`` only along the stored one.
        skip: ``(glob, reason)`` for files that pass the generic checks but show no anatomy (seen by eye).
    """

    name: str
    package: str
    kind: str
    root: str
    files: tuple
    license: str
    install: str
    axes: str = "first"
    skip: tuple = ()
    note: str = field(default="", compare=False)


SOURCES: tuple[ShippedSource, ...] = (
    ShippedSource(
        "pydicom", "pydicom", "pypi", "pydicom/data/test_files", (("**/*", ""),), "MIT (pydicom test files)",
        "installed with the package",
        skip=(("ExplVR_BigEnd.dcm", "an 80x60 colour test pattern, no anatomy"),),
        note="CT/MR/US/NM images; synthetic, secondary-capture, RT and SEG files dropped"),
    ShippedSource(
        "pydicom-data", "pydicom-data", "pypi", "data_store/data", (("*.dcm", ""),), "MIT",
        "pip install 'napari-qlora-minisam[distill-data]'",
        skip=(("eCT_Supplemental.dcm", "a supplemental-palette test: its stored values show no anatomy"),),
        note="CT, MR, US and radiography images"),
    ShippedSource(
        "nilearn-mni", "nilearn", "pypi", "nilearn/datasets/data",
        (("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "MR"),),
        "BSD-3-Clause (nilearn); MNI ICBM152 2009a template (free use with attribution)",
        "pip install 'napari-qlora-minisam[distill-data]'", axes="all",
        note="the T1 template only: the GM/WM files are probability maps, not images"),
    ShippedSource(
        "dipy", "dipy", "pypi", "dipy/data/files",
        (("t1_coronal_slice.npy", "MR"), ("S0_10slices.nii.gz", "MR"), ("aniso_vox.nii.gz", "MR")),
        "BSD-3-Clause", "pip install 'napari-qlora-minisam[distill-data]'",
        note="a T1 slice and two diffusion b0 volumes; crops of a few voxels and derived outputs skipped"),
    ShippedSource(
        "skimage", "scikit-image", "pypi", "skimage/data",
        (("retina.jpg", "fundus"), ("microaneurysms.png", "fundus"), ("ihc.png", "pathology")),
        "CC0 (retina, microaneurysms); no known restrictions (ihc)", "installed with napari",
        note="the shipped medical images; skimage.data.brain and cells3d need a download"),
    ShippedSource(
        "invesalius", "invesalius-examples", "debian", "/usr/share/doc/invesalius-examples/examples",
        (("*.inv3", "CT"),), "GPL-2 (Debian copyright of InVesalius)", "apt-get install invesalius-examples",
        axes="all", note="one head CT (108 slices of 256²), InVesalius project format"),
    ShippedSource(
        "itk-examples", "insighttoolkit5-examples", "debian", "/usr/share/doc/insighttoolkit5-examples/examples/Data",
        (("FatMRISlice.png", "MR"), ("KmeansTest_T1UCharRaw.nii.gz", "MR"), ("VisibleWomanHeadSlice.png", "cryosection")),
        "Apache-2.0 (ITK)", "apt-get install insighttoolkit5-examples",
        note="the brain slices (BrainT1Slice, BrainProtonDensity*, BrainMidSagittalSlice) are BrainWeb, "
             "simulated from Colin27: never read"),
    ShippedSource(
        "pyradiomics", "pyradiomics", "folder", "",
        (("lung*_image.tif", "CT"), ("brain*_image.tif", "MR"), ("breast*_image.tif", "MR")),
        "BSD-3-Clause (pyradiomics test data)",
        "the shared data's volumes/ folder (from the pyradiomics 3.0.1 sdist; not installable as a wheel)",
        note="all slices of the chest CTs and brain/breast MRs, labelled or not"),
)


@dataclass
class LocatedSource:
    """A source found on this machine: its root folder, the version that was read, and the folder that
    provenance paths are relative to (the distribution's install folder; ``/`` for Debian files)."""

    source: ShippedSource
    root: Path
    version: str
    base: Path

    def relative(self, f: Path) -> str:
        return str(Path(f).relative_to(self.base)) if self.base != Path("/") else str(f)


def locate(source: ShippedSource, folder=None) -> LocatedSource:
    """Find ``source`` on this machine.

    Raises:
        DataError: the package is not installed (the message says how to install it).
    """
    if source.kind == "pypi":
        try:
            dist = importlib.metadata.distribution(source.package)
        except importlib.metadata.PackageNotFoundError:
            raise DataError(f"{source.name}: {source.package} is not installed ({source.install}).") from None
        base = Path(dist.locate_file(""))
        root, version = base / source.root, dist.version
    elif source.kind == "debian":
        root, version, base = Path(source.root), _debian_version(source.package), Path("/")
        if version is None:
            raise DataError(f"{source.name}: Debian package {source.package} is not installed ({source.install}).")
    elif source.kind == "folder":
        if folder is None:
            raise DataError(f"{source.name}: no folder given ({source.install}).")
        root, version = Path(folder), _folder_version(Path(folder))
        base = root
    else:
        raise DataError(f"{source.name}: unknown source kind {source.kind!r}.")
    if not root.is_dir():
        raise DataError(f"{source.name}: {root} does not exist ({source.install}).")
    return LocatedSource(source, root, version, base)


def _debian_version(package: str) -> str | None:
    if shutil.which("dpkg-query") is None:
        return None
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
                          capture_output=True, text=True, check=False)
    status, _, version = done.stdout.partition("\t")
    return version if done.returncode == 0 and status.endswith(" installed") else None


def _folder_version(folder: Path) -> str:
    """What a folder says about where it came from (``volumes.json``'s ``source``), else ``folder``."""
    import json

    meta = folder / "volumes.json"
    if meta.is_file():
        sources = {str(v.get("source", "")) for v in json.loads(meta.read_text()).values() if isinstance(v, dict)}
        return "; ".join(sorted(s for s in sources if s)) or "folder"
    return "folder"


def source_files(located: LocatedSource) -> list[tuple[Path, str]]:
    """``(file, modality)`` for every file of the source, sorted, directories and symlink loops skipped."""
    out, seen = [], set()
    for pattern, modality in located.source.files:
        for f in sorted(located.root.glob(pattern)):
            if f.is_file() and f not in seen:
                seen.add(f)
                out.append((f, modality))
    return out


def skip_reason(source: ShippedSource, path) -> str | None:
    """The reason ``source`` gives for never reading ``path``, or ``None``."""
    name = Path(str(path)).name
    for pattern, reason in source.skip:
        if fnmatch.fnmatch(name, pattern):
            return reason
    return None


def held_out_stems(split_file, keys=("test", "val")) -> set[str]:
    """Source-file stems of the images that ``split_file`` lists under ``keys`` (lower case).

    Only named sources count (``lung2``, ``examples_overlay``): a numeric COSMOS case id names a patient of
    a COSMOS dataset, which no package ships, and would match unrelated numbered files.
    """
    splits = read_splits(split_file)
    stems = set()
    for ds, parts in splits.items():
        if not isinstance(parts, dict):
            continue
        for key in keys:
            for name in parts.get(key, []):
                pid = patient_id(ds, name)
                if not pid.isdigit():
                    stems.add(pid.lower())
    return stems


def held_out_match(path, stems) -> str | None:
    """The held-out stem that ``path``'s file name belongs to (``lung2_image.tif`` -> ``lung2``), or ``None``."""
    name = Path(str(path)).name.lower()
    stem = name.split(".")[0]
    for s in stems:
        if stem == s or stem.startswith(f"{s}_"):
            return s
    return None
