"""What the series tab accepts: one CT series, as slices, one zip or one NIfTI, within the demo's limits."""

import os
import zipfile

import numpy as np

import demo_settings as settings
from modeling.ct_volume import NIFTI_SUFFIXES, read_ct_volumes


def read_series(paths: list):
    """Uploaded files -> the one `CTVolume` they hold; a one-line `ValueError` for anything over the
    demo's limits, for no CT series, and for several series (the user is asked to upload one)."""
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:  # deleted after an earlier request; the names themselves may identify
        raise ValueError("the uploaded files are no longer on the server (uploads are deleted after reading); "
                         "upload them again")
    total_mb = sum(os.path.getsize(path) for path in paths) / 2**20
    if total_mb > settings.MAX_SERIES_MB:
        raise ValueError(f"upload too large ({total_mb:.0f} MB; a series may be up to {settings.MAX_SERIES_MB} MB)")
    volume_files = [path for path in paths if str(path).lower().endswith((".zip", *NIFTI_SUFFIXES))]
    if volume_files and len(paths) > 1:
        raise ValueError("upload one .zip or one NIfTI volume on its own, or the DICOM slices themselves")
    if len(paths) > settings.MAX_SLICES:
        raise ValueError(f"{len(paths)} files; a series may have up to {settings.MAX_SLICES} slices")
    if volume_files:
        _check_volume_file(volume_files[0])
    volumes = read_ct_volumes(volume_files[0] if volume_files else list(paths))
    if len(volumes) > 1:
        found = ", ".join(f"{volume.hu.shape[0]} slices" for volume in volumes)
        raise ValueError(f"the upload holds {len(volumes)} CT series ({found}); upload one series at a time")
    volume = volumes[0]
    if volume.hu.shape[0] > settings.MAX_SLICES:
        raise ValueError(f"the series has {volume.hu.shape[0]} slices; the demo takes up to {settings.MAX_SLICES}")
    return volume


def _check_volume_file(path) -> None:
    """Refuse a zip or NIfTI that would expand beyond the demo's limits, before anything is extracted or decoded."""
    if str(path).lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as archive:
                members = [member for member in archive.infolist() if not member.is_dir()]
        except (zipfile.BadZipFile, OSError) as error:
            raise ValueError(f"not a readable zip file ({type(error).__name__})") from None
        expanded = sum(member.file_size for member in members)  # the reader stops at each member's stated size
        unpacked_mb = settings.ZIP_EXPANSION * settings.MAX_SERIES_MB
        if len(members) > settings.MAX_SLICES or expanded > unpacked_mb * 2**20:
            raise ValueError(f"the zip holds {len(members)} files, {expanded / 2**20:.0f} MB; a series may have up to "
                             f"{settings.MAX_SLICES} slices and {unpacked_mb} MB unpacked")
        return
    import nibabel  # only NIfTI uploads need it; read_ct_volumes says so if it is missing

    try:
        shape = nibabel.load(path).shape  # the header only
    except Exception as error:  # noqa: BLE001 - nibabel raises many types on damaged files
        raise ValueError(f"unreadable NIfTI file, truncated or corrupt ({type(error).__name__})") from None
    if int(np.prod(shape)) > settings.MAX_SLICES * 512 * 512:
        raise ValueError(f"the NIfTI volume is {' x '.join(map(str, shape))} voxels; the demo takes up to "
                         f"{settings.MAX_SLICES} slices of 512 x 512")
