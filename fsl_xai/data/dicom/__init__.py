"""DICOM import with de-identification (the only package that imports pydicom).

- :func:`read_dicom` (:mod:`.reading`) reads one frame of a file into a float32 (C, H, W) image in
  [0, 1] with de-identified metadata (:func:`read_dicom_frames`: several frames, one parse);
  windows and the fit to the model's size are in :mod:`.pixels`, each frame's rescale and window
  (enhanced multi-frame functional groups) in :mod:`.frames`.
- :func:`import_dicom_folder` (:mod:`.folder`) reads a folder (one frame or every frame of each
  file) into an :class:`~fsl_xai.data.imageset.ImageSet`, reporting every bad file with its reason
  and carrying on; :meth:`DicomImport.to_npz` writes it as a MedMNIST-format npz file
  (:mod:`.npz_export`, atomic, no pickles).
- :func:`deidentify_dataset` / :func:`deidentify_file` (:mod:`.deid`) apply the PS3.15 Annex E
  basic profile (:mod:`.profile`); the metadata of every image this package returns is already
  de-identified (:func:`safe_metadata`): only safe fields (sex, age, modality, manufacturer,
  model, keyed site pseudonym, body part, study year, pseudonymous case id, frame, ...) and never a
  name, ID, date or UID.
- :mod:`.loading` opens files with pydicom's warnings and log records suppressed (they can quote
  element values) and defines :class:`DicomReadError`.

Importing this package imports pydicom (about 0.4 s), so the rest of the library and the widgets
import it only when DICOM files are read; the window presets, needed earlier by menus, are in the
pydicom-free :mod:`fsl_xai.data.dicom_presets`.
"""

from ..dicom_presets import WINDOW_PRESETS
from .deid import DeidConfig, deidentify_dataset, deidentify_file, safe_metadata
from .folder import DicomImport, import_dicom_folder, import_folder
from .frames import FrameLevels, frame_levels
from .loading import DicomReadError
from .npz_export import write_medmnist_npz
from .pixels import FIT_MODES
from .reading import DicomImage, read_dicom, read_dicom_frames

__all__ = ["FIT_MODES", "DicomImage", "DicomImport", "DicomReadError", "DeidConfig", "FrameLevels", "WINDOW_PRESETS",
           "deidentify_dataset", "deidentify_file", "frame_levels", "import_dicom_folder", "import_folder",
           "read_dicom", "read_dicom_frames", "safe_metadata", "write_medmnist_npz"]
