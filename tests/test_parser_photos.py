"""Photos as they arrive from visitors: any aspect (letterboxed, never stretched), grey-scale, RGBA,
16-bit, EXIF-rotated JPEGs; the pipeline's encoder and the parser see them the same way."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from smis import GroupDNet, SMISPipeline, get_config
from smis.labels import letterbox_box, letterbox_labels, letterbox_photo, load_photo
from smis.parsing import HumanParser, ParserNet, get_parser_config


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    GroupDNet(get_config("demo", tiny=True, height=128, width=64)).save_pretrained(folder)
    return SMISPipeline.from_pretrained(folder, device="cpu")


def _jpeg(img: Image.Image, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def test_letterbox_keeps_the_aspect_and_centres():
    assert letterbox_box((100, 100), 128, 64) == (32, 0, 64, 64)  # square into 2:1 portrait: bands above/below
    assert letterbox_box((256, 32), 128, 64) == (0, 24, 128, 16)  # very tall: bands left/right
    assert letterbox_box((128, 64), 128, 64) == (0, 0, 128, 64)
    photo = np.zeros((100, 100, 3), np.uint8)
    photo[:, :50] = 255  # left half white, right half black: the border mean is mid grey
    out, (top, left, nh, nw) = letterbox_photo(photo, 128, 64)
    assert out.shape == (128, 64, 3) and (top, nh) == (32, 64)
    assert (out[:top] == out[0, 0]).all() and abs(int(out[0, 0, 0]) - 128) <= 2  # the band: border colour
    assert out[64, 5, 0] > 240 and out[64, 58, 0] < 15  # the photo itself, not stretched: halves stay halves
    lab = np.zeros((100, 100), np.int64)
    lab[10:90, 20:80] = 3
    boxed = letterbox_labels(lab, 128, 64)
    assert boxed.shape == (128, 64) and (boxed[:top] == 0).all() and (boxed[-top:] == 0).all()
    assert set(np.unique(boxed)) == {0, 3}


def test_prepare_photo_letterboxes_instead_of_stretching(pipe):
    # A landscape photo with a centred square: after the letterbox it must stay square.
    photo = np.full((300, 600, 3), 255, np.uint8)
    photo[100:200, 250:350] = 0
    out = pipe.prepare_photo(photo)
    assert out.shape == (128, 64, 3)
    dark = np.argwhere(out[..., 0] < 128)
    h = dark[:, 0].max() - dark[:, 0].min() + 1
    w = dark[:, 1].max() - dark[:, 1].min() + 1
    assert abs(h - w) <= 1, (h, w)  # stretched to 128x64 it would be 43 x 11
    assert (out[:40] == 255).all()  # bands in the border colour (white)


def test_grey_rgba_and_16bit_photos_load_as_rgb(pipe):
    grey = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (32, 1)), "L")
    assert load_photo(grey).shape == (32, 64, 3)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:16, :, 3] = 255  # top half opaque red, bottom half transparent
    arr = load_photo(Image.fromarray(rgba, "RGBA"))
    assert tuple(arr[0, 0]) == (200, 0, 0) and tuple(arr[-1, 0]) == (255, 255, 255)  # transparent -> white
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    assert tuple(load_photo(buf.getvalue())[-1, 0]) == (255, 255, 255)
    deep = Image.fromarray(np.full((16, 16), 65535, np.uint16))
    assert load_photo(deep).max() == 255  # 16-bit grey scaled, not clipped to a white/black image
    for p in (grey, Image.fromarray(rgba, "RGBA")):
        assert pipe.prepare_photo(p).shape == (128, 64, 3)


@pytest.mark.parametrize("orientation, shape", [(1, (40, 80)), (6, (80, 40)), (8, (80, 40)), (3, (40, 80))])
def test_exif_orientation_is_respected(orientation, shape):
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :40] = (255, 0, 0)  # stored: red on the left
    arr = load_photo(_jpeg(Image.fromarray(img), orientation))
    assert arr.shape[:2] == shape
    red = arr[..., 0] > 128
    if orientation == 6:  # rotate 90 clockwise for display: the left becomes the top
        assert red[:35].mean() > 0.9 and red[45:].mean() < 0.1
    if orientation == 3:  # 180: the left becomes the right
        assert red[:, 45:].mean() > 0.9


def test_encode_letterboxes_photo_and_mask_alike(pipe):
    rng = np.random.default_rng(0)
    photo = (rng.random((300, 300, 3)) * 255).astype(np.uint8)
    mask = np.zeros((300, 300), np.int64)
    mask[50:250, 100:200] = 3
    codes = pipe.encode(photo, mask)
    assert codes.values.shape[0] == pipe.config.num_classes
    # the EXIF-rotated JPEG of a portrait photo + a mask drawn on the rotated (displayed) photo
    portrait = Image.fromarray((rng.random((60, 120, 3)) * 255).astype(np.uint8))
    assert pipe.encode(_jpeg(portrait, 6), np.zeros((120, 60), np.int64)).values.shape == codes.values.shape
    with pytest.raises(ValueError, match="same size"):
        pipe.encode(_jpeg(portrait, 6), np.zeros((60, 120), np.int64))


def test_parser_takes_any_photo_at_its_size(tmp_path):
    torch.manual_seed(0)
    ParserNet(get_parser_config("tiny", height=64, width=32)).save_pretrained(tmp_path / "p")
    parser = HumanParser.from_pretrained(tmp_path / "p", device="cpu", backend="torch")
    for photo in (np.zeros((500, 90, 3), np.uint8), Image.new("L", (300, 200)), Image.new("RGBA", (33, 77))):
        res = parser.predict(photo, check=False)
        w, h = photo.size if isinstance(photo, Image.Image) else photo.shape[1::-1]
        assert res.labels.shape == (h, w)
