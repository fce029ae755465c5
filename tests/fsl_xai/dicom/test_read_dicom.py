"""read_dicom on the shared WG04 files, pydicom's bundled files, and generated broken files."""

from pathlib import Path

import numpy as np
import pydicom
import pytest

from fsl_xai.data.dicom import WINDOW_PRESETS, DicomReadError, read_dicom
from fsl_xai.errors import DataError

from .conftest import bundled, bundled_monochrome1, monochrome1_copy

# file -> (sex, age, where the age comes from), as the headers say
SHARED = {"RG1_J2KI.dcm": ("female", None, None),
          "RG3_J2KR.dcm": ("female", 25.0, "birth and study date"),  # born 1979-04-08, studied 2004-08-26
          "MR2_J2KR.dcm": ("male", 54.0, "birth and study date"),  # born 1950-01-12, studied 2004-08-26
          "MR-SIEMENS-DICOM-WithOverlays.dcm": ("male", 58.0, "PatientAge"),  # PatientAge 058Y
          "693_UNCR.dcm": (None, None, "missing")}


@pytest.fixture(scope="module")
def shared_dicom(request):
    data_dir = request.getfixturevalue("data_dir")

    def get(name: str) -> Path:
        path = data_dir / "dicom" / name
        if not path.is_file():
            pytest.fail(f"shared DICOM file {name} is missing from {data_dir / 'dicom'}")
        return path

    return get


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_files_decode(shared_dicom, name):
    path = shared_dicom(name)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    img = read_dicom(path, size=48)
    assert img.pixels.shape == (1, 48, 48) and img.pixels.dtype == np.float32
    assert 0 <= img.pixels.min() and img.pixels.max() <= 1 and img.pixels.std() > 0.02
    sex, age, source = SHARED[name]
    if sex is not None:
        assert img.metadata["sex"] == sex
    if age is not None:
        assert img.metadata["age"] == age
    if source is not None:
        assert img.metadata["age_source"] == source
    if name.endswith("J2KI.dcm") or name.endswith("J2KR.dcm"):
        return  # large JPEG 2000 files: one decode is enough
    native = read_dicom(path, window=None)
    assert native.pixels.shape == (1, int(ds.Rows), int(ds.Columns))
    assert native.pixels.min() == 0 and native.pixels.max() == 1  # min-max window spans [0, 1]
    assert img.metadata["modality"] == ds.Modality
    assert img.window_source == ("tags" if "WindowCenter" in ds else "minmax")


def test_ct_rescale_and_window_presets(shared_dicom):
    path = shared_dicom("693_UNCR.dcm")
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.float64)
    img = read_dicom(path, window="auto", keep_raw=True)
    hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(img.raw, hu)
    assert float(ds.RescaleIntercept) != 0 and img.raw.min() < -500  # air is about -1000 HU after rescale
    assert img.window == (float(ds.WindowCenter if not isinstance(ds.WindowCenter, pydicom.multival.MultiValue)
                                else ds.WindowCenter[0]),
                          float(ds.WindowWidth if not isinstance(ds.WindowWidth, pydicom.multival.MultiValue)
                                else ds.WindowWidth[0]))
    outs = {}
    for preset in ("lung", "soft_tissue", "bone", "brain"):
        out = read_dicom(path, window=preset)
        c, w = WINDOW_PRESETS[preset]
        expected = np.clip((hu - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
        np.testing.assert_allclose(out.pixels[0], expected, atol=1e-6)
        assert out.window == (c, w) and out.window_source == f"preset:{preset}"
        outs[preset] = out.pixels
    # the lung window shows air (-1000 HU) as grey-to-dark detail; the brain window saturates it to black
    air = hu < -900
    assert outs["brain"][0][air].max() == 0 and outs["lung"][0][air].mean() > 0
    # a narrow window saturates more pixels than a wide one
    sat = {k: float(((v == 0) | (v == 1)).mean()) for k, v in outs.items()}
    assert sat["brain"] > sat["soft_tissue"] > sat["lung"]
    user = read_dicom(path, window=WINDOW_PRESETS["bone"])
    np.testing.assert_array_equal(user.pixels, outs["bone"])
    assert user.window_source == "user"
    with pytest.raises(DataError, match="unknown window preset"):
        read_dicom(path, window="liverish")
    with pytest.raises(DataError, match="width must be positive"):
        read_dicom(path, window=(40, 0))


def test_compressed_syntaxes_match_uncompressed():
    ref = read_dicom(bundled("MR_small.dcm")).pixels
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"):
        np.testing.assert_array_equal(read_dicom(bundled(name)).pixels, ref, err_msg=name)
    j2k = read_dicom(bundled("JPEG2000.dcm"))
    assert j2k.pixels.shape == (1, 1024, 256) and j2k.pixels.std() > 0


def test_monochrome1_is_inverted(tmp_path):
    m2 = read_dicom(bundled("MR_small.dcm"))
    m1 = read_dicom(monochrome1_copy(tmp_path / "m1.dcm"))
    np.testing.assert_allclose(m1.pixels, 1 - m2.pixels, atol=1e-6)
    real = read_dicom(bundled_monochrome1())
    assert real.metadata["photometric"] == "MONOCHROME1" and real.metadata["modality"] == "CR"
    ds = pydicom.dcmread(bundled_monochrome1())
    values = ds.pixel_array.astype(float)
    hi = np.unravel_index(values.argmax(), values.shape)
    lo = np.unravel_index(values.argmin(), values.shape)
    assert real.pixels[0][hi] < real.pixels[0][lo]  # the largest value displays darkest


def test_multiframe_frames():
    path = bundled("examples_ybr_color.dcm")  # 30 frames, YBR_FULL_422 JPEG
    first, last = read_dicom(path, frame=0), read_dicom(path, frame=29)
    assert first.n_frames == 30 and first.pixels.shape[0] == 3
    assert np.abs(first.pixels - last.pixels).mean() > 0.001
    assert first.metadata["sample_id"] != last.metadata["sample_id"]
    with pytest.raises(DicomReadError, match="frame 30 is out of range.*30 frame"):
        read_dicom(path, frame=30)
    dose = bundled("rtdose.dcm")  # 15 grey frames
    assert not np.array_equal(read_dicom(dose, frame=0).pixels, read_dicom(dose, frame=14).pixels)


def test_colour_rgb_ybr_and_palette():
    rgb = read_dicom(bundled("examples_rgb_color.dcm"))
    assert rgb.pixels.shape[0] == 3 and rgb.window is None and rgb.window_source == "none"
    # the same colour bars stored as YBR_FULL_422 (uncompressed) and as RGB (RLE, lossless)
    ybr = read_dicom(bundled("SC_ybr_full_422_uncompressed.dcm")).pixels
    ref = read_dicom(bundled("SC_rgb_rle.dcm")).pixels
    assert np.abs(ybr - ref).mean() < 0.01  # without the YBR -> RGB conversion this is about 0.3
    raw_ybr = pydicom.dcmread(bundled("SC_ybr_full_422_uncompressed.dcm"))
    assert raw_ybr.PhotometricInterpretation == "YBR_FULL_422"
    pal = read_dicom(bundled("examples_palette.dcm"))
    assert pal.pixels.shape[0] == 3 and pal.metadata["photometric"] == "PALETTE COLOR"
    # a palette image is coloured: the channels differ somewhere
    assert np.abs(pal.pixels[0] - pal.pixels[1]).max() > 0.1
    grey = read_dicom(bundled("examples_rgb_color.dcm"), channels=1)
    np.testing.assert_allclose(grey.pixels[0], 0.299 * rgb.pixels[0] + 0.587 * rgb.pixels[1]
                               + 0.114 * rgb.pixels[2], atol=1e-5)
    three = read_dicom(bundled("MR_small.dcm"), channels=3)
    assert three.pixels.shape == (3, 64, 64) and np.array_equal(three.pixels[0], three.pixels[2])


def test_resize_and_crop_modes():
    path = bundled("JPEG2000.dcm")  # 1024 x 256
    native = read_dicom(path).pixels
    crop = read_dicom(path, size=64, fit="crop").pixels
    np.testing.assert_array_equal(crop, native[:, 480:544, 96:160])
    resized = read_dicom(path, size=64).pixels
    stretched = read_dicom(path, size=64, fit="stretch").pixels
    assert resized.shape == stretched.shape == (1, 64, 64)
    assert not np.allclose(resized, stretched)
    # "resize" keeps the aspect ratio: a centre 256 x 256 square, antialiased down to 64 x 64
    block = native[:, 384:640, :].reshape(1, 64, 4, 64, 4).mean(axis=(2, 4))
    assert np.abs(resized - block).mean() < 0.02
    rect = read_dicom(path, size=(32, 16), fit="stretch").pixels
    assert rect.shape == (1, 32, 16)
    with pytest.raises(DataError, match="fit must be one of"):
        read_dicom(path, size=32, fit="squash")


def test_every_broken_file_is_refused_with_a_clear_reason(broken_dir):
    root, expected = broken_dir
    for name, reason in expected.items():
        with pytest.raises(DicomReadError) as info:
            read_dicom(root / name)
        err = info.value
        assert err.reason == reason, (name, str(err))
        assert isinstance(err, DataError)
        assert name in str(err) and len(err.detail) > 30  # names the file and says what to do or why


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(DicomReadError, match="not found"):
        read_dicom(tmp_path / "nope.dcm")
    with pytest.raises(DicomReadError, match="import_dicom_folder"):
        read_dicom(tmp_path)


def test_bare_dataset_without_preamble_and_contract_pair(tmp_path):
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.preamble, ds.file_meta = None, FileMetaDataset()
    path = tmp_path / "bare.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    pixels, metadata = read_dicom(path)  # unpacks as the (image, metadata) pair of docs/CONTRACTS.md
    np.testing.assert_array_equal(pixels, read_dicom(bundled("MR_small.dcm")).pixels)
    assert metadata["modality"] == "MR"
    with pytest.raises(DicomReadError) as info:
        read_dicom(bundled("ExplVR_LitEndNoMeta.dcm"))  # a bare RT plan: DICOM, but not an image
    assert info.value.reason == "no pixel data"
