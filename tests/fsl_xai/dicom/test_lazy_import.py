"""pydicom (about 0.4 s to import) loads only when DICOM files are read, not with the library or menus."""

import subprocess
import sys


def test_library_and_window_presets_load_without_pydicom():
    code = ("import sys, fsl_xai, fsl_xai.data, fsl_xai.training\n"
            "from fsl_xai.data.dicom_presets import WINDOW_PRESETS\n"
            "assert WINDOW_PRESETS\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydicom', 'pylibjpeg')))\n"
            "import fsl_xai.data.dicom\n"
            "print('pydicom' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.splitlines()[-2:]
    assert before == "[]", f"pydicom was imported before any DICOM module: {before}"
    assert after == "True"  # the check above can fail: the DICOM package does import pydicom
