"""Window presets for CT DICOM images (centre, width in Hounsfield units).

Kept apart from :mod:`fsl_xai.data.dicom` so that menus can list them without importing pydicom."""

from __future__ import annotations

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (40.0, 400.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
