"""Tests of the image-folder source and the resize helpers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnvis_jax.data.broden import format_summary
from cnnvis_jax.data.folder import FolderSource, load_images
from cnnvis_jax.data.imageio import cover_size, crop_offsets, resize_crop, resize_to_contract
from cnnvis_jax.errors import DataError, InputError


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path)


def _uniform(h, w, rgb=(10, 200, 30)):
    return np.broadcast_to(np.asarray(rgb, np.uint8), (h, w, 3)).copy()


@pytest.fixture
def classes(tmp_path):
    root = tmp_path / "imgs"
    _save(root / "dog" / "a.png", _uniform(12, 16, (1, 2, 3)))
    _save(root / "dog" / "nested" / "b.jpg", _uniform(20, 10, (100, 100, 100)))
    _save(root / "cat" / "c.PNG", _uniform(9, 9, (7, 8, 9)))
    _save(root / "cat" / "grey.png", np.full((8, 8), 77), "L")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"")
    _save(root / ".cache" / "x.png", _uniform(4, 4))  # hidden folder: not a class
    _save(root / "loose.png", _uniform(4, 4))  # next to class folders: ignored
    return root


def test_class_subfolders(classes):
    source = FolderSource(classes, size=(8, 8))
    assert source.class_names == ("cat", "dog")
    assert source.vocabulary is None
    assert len(source) == 4
    names = [p.name for p in source.files]
    assert names == ["c.PNG", "grey.png", "a.png", "b.jpg"]
    assert source.targets == (0, 0, 1, 1)
    assert source.ignored == {"unsupported_type": 1, "outside_class_folders": 1}
    for i in range(len(source)):
        sample = source[i]
        assert sample["image"].shape == (8, 8, 3) and sample["image"].dtype == np.uint8
        assert sample["pixel"] == {} and sample["scalar"] == {}
        assert sample["target"] == source.targets[i] and sample["index"] == i
    # uniform images stay uniform through resize and crop; grey becomes RGB
    np.testing.assert_array_equal(source[0]["image"], _uniform(8, 8, (7, 8, 9)))
    np.testing.assert_array_equal(source[1]["image"], np.full((8, 8, 3), 77, np.uint8))
    np.testing.assert_array_equal(source[2]["image"], _uniform(8, 8, (1, 2, 3)))
    summary = source.validate(progress=False)
    assert summary["classes"] == {"cat": 2, "dog": 2} and summary["skipped"] == 0
    text = format_summary(summary)
    assert "4 images" in text and "2 classes" in text and "1 unsupported type" in text


def test_flat_folder_and_native_size(tmp_path):
    _save(tmp_path / "b.png", _uniform(5, 7))
    _save(tmp_path / "a.bmp", _uniform(6, 6))
    (tmp_path / "readme.md").write_text("x")
    source = FolderSource(tmp_path)
    assert source.class_names == () and source.targets == (-1, -1)
    assert [p.name for p in source.files] == ["a.bmp", "b.png"]
    assert source.ignored["unsupported_type"] == 1
    assert source.image_size is None
    assert source[1]["image"].shape == (5, 7, 3)
    assert source[-1]["target"] == -1
    with pytest.raises(IndexError):
        source[2]
    assert "no class sub-folders" in format_summary(source.validate(progress=False))


def test_extensions_option(tmp_path):
    _save(tmp_path / "a.png", _uniform(4, 4))
    _save(tmp_path / "b.bmp", _uniform(4, 4))
    source = FolderSource(tmp_path, size=4, extensions=("png",))
    assert [p.name for p in source.files] == ["a.png"]
    assert source.ignored["unsupported_type"] == 1


def test_size_from_contract(tmp_path):
    from cnnvis_jax.model import InputContract

    _save(tmp_path / "a.png", _uniform(30, 40))
    source = FolderSource(tmp_path, contract=InputContract(size=(6, 9)))
    assert source.image_size == (6, 9) and source[0]["image"].shape == (6, 9, 3)
    with pytest.raises(InputError, match="not both"):
        FolderSource(tmp_path, size=(4, 4), contract=InputContract(size=(4, 4)))


def test_empty_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FolderSource(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"holds no images.*1 other files ignored"):
        FolderSource(tmp_path)
    (tmp_path / "empty_class").mkdir()
    _save(tmp_path / "full_class" / "a.png", _uniform(4, 4))
    with pytest.raises(DataError, match="class folder .*empty_class.* holds no images"):
        FolderSource(tmp_path)


def test_corrupt_image_named(tmp_path):
    _save(tmp_path / "good.png", _uniform(4, 4))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    source = FolderSource(tmp_path, size=(4, 4))
    with pytest.raises(DataError, match=r"bad\.jpg.*corrupt or not an image"):
        source[0]
    assert source[1]["image"].shape == (4, 4, 3)
    with pytest.raises(DataError, match=r"bad\.jpg"):
        source.validate(progress=False)
    summary = source.validate(on_error="skip", progress=False)
    assert summary["skipped"] == 1 and "bad.jpg" in summary["errors"][0]


def test_symlink_escape(tmp_path):
    outside = tmp_path / "outside"
    _save(outside / "secret.png", _uniform(4, 4))
    root = tmp_path / "root"
    _save(root / "a" / "ok.png", _uniform(4, 4))
    (root / "a" / "link.png").symlink_to(outside / "secret.png")
    with pytest.raises(DataError, match=r"link\.png.*symbolic link.*outside"):
        FolderSource(root)
    (root / "a" / "link.png").unlink()
    (root / "b").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match="symbolic link"):
        FolderSource(root)
    (root / "b").unlink()
    # links that stay inside the folder are fine, and a link cycle ends
    (root / "a" / "inner.png").symlink_to(root / "a" / "ok.png")
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
    source = FolderSource(root)
    assert [p.name for p in source.files] == ["inner.png", "ok.png"]


# --- resizing --------------------------------------------------------------------


def test_cover_size_and_offsets():
    assert cover_size((10, 20), (10, 10)) == (10, 20)
    assert cover_size((20, 40), (10, 10)) == (10, 20)
    assert cover_size((30, 20), (10, 10)) == (15, 10)
    assert cover_size((333, 500), (224, 224)) == (224, 336)  # torchvision Resize(224)
    assert cover_size((100, 100), (10, 30)) == (30, 30)  # non-square target
    assert crop_offsets((10, 20), (10, 10)) == (0, 5)
    assert crop_offsets((15, 10), (10, 10)) == (2, 0)  # round(2.5) = 2


def test_gradient_center_crop_exact():
    ramp = np.broadcast_to((np.arange(20) * 10).astype(np.uint8)[None, :, None], (10, 20, 3))
    out = resize_crop(ramp, (10, 10))  # no resize: only the crop
    np.testing.assert_array_equal(out[0, :, 0], np.arange(5, 15) * 10)


def test_gradient_downscaled_then_cropped():
    ramp = np.broadcast_to((np.arange(40) * 4).astype(np.uint8)[None, :, None], (20, 40, 3))
    out = resize_crop(ramp, (10, 10)).astype(int)
    # x2 smaller: output column j averages source columns 2j, 2j+1 -> 8j + 2; crop from 5
    expected = 8 * (np.arange(10) + 5) + 2
    np.testing.assert_allclose(out[:, :, 1], np.broadcast_to(expected, (10, 10)), atol=1)
    # float input follows the same filter without rounding
    outf = resize_crop(ramp.astype(np.float32) / 255.0, (10, 10))
    np.testing.assert_allclose(outf[0, :, 0] * 255.0, expected, atol=0.01)


def test_uniform_stays_uniform_at_any_size():
    image = _uniform(37, 23, (5, 250, 128))
    for size in [(8, 8), (50, 50), (10, 30), (23, 37)]:
        np.testing.assert_array_equal(resize_crop(image, size), _uniform(*size, (5, 250, 128)))


def test_resize_to_contract():
    from cnnvis_jax.model import InputContract

    contract = InputContract(size=(6, 6))
    batch = np.stack([_uniform(12, 8, (255, 0, 51)), _uniform(12, 8, (0, 255, 102))])
    out = resize_to_contract(batch, contract)
    assert out.shape == (2, 6, 6, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)
    single = resize_to_contract(batch[1].astype(np.float32) / 255, contract)
    np.testing.assert_allclose(single[0], out[1], atol=1e-6)
    grey = resize_to_contract(np.full((10, 10), 51, np.uint8), (5, 5))
    assert grey.shape == (1, 5, 5, 3) and np.allclose(grey, 0.2)
    rgba = resize_to_contract(np.zeros((4, 4, 4), np.float32), (2, 2))
    assert rgba.shape == (1, 2, 2, 3)
    with pytest.raises(InputError, match=r"must be in \[0, 1\].*divide"):
        resize_to_contract(np.full((4, 4, 3), 200.0), contract)
    with pytest.raises(InputError, match="NaN"):
        resize_to_contract(np.full((4, 4, 3), np.nan, np.float32), contract)
    with pytest.raises(InputError, match="channels last"):
        resize_to_contract(np.zeros((1, 3, 8, 8, 2), np.uint8), contract)
    with pytest.raises(InputError, match="size"):
        resize_to_contract(batch, (0, 4))


def test_load_images(tmp_path):
    _save(tmp_path / "a.png", _uniform(10, 30, (9, 9, 9)))
    _save(tmp_path / "b.png", _uniform(40, 20, (200, 1, 2)))
    out = load_images([tmp_path / "a.png", str(tmp_path / "b.png")], (8, 8))
    assert out.shape == (2, 8, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[1], _uniform(8, 8, (200, 1, 2)))
    with pytest.raises(DataError, match=r"nope\.png.*does not exist"):
        load_images([tmp_path / "nope.png"], (8, 8))
    with pytest.raises(DataError, match="is a folder"):
        load_images([tmp_path], (8, 8))
    with pytest.raises(InputError, match="no image files"):
        load_images([], (8, 8))


def test_exif_orientation_applied(tmp_path):
    image = Image.fromarray(np.zeros((4, 8, 3), np.uint8))  # 4 high, 8 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert FolderSource(tmp_path)[0]["image"].shape == (8, 4, 3)
