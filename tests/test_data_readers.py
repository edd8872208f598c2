"""Dataset readers: miniature copies of every supported layout, written here from generated pixels and
labels, read back exactly; malformed inputs raise DatasetFormatError naming the file and line."""

import csv
import io
import math
import pickle
import struct

import datasets
import numpy as np
import pytest
from PIL import Image

from faceptor.task_presets import CELEBA_ATTRIBUTES, CELEBAMASK_HQ_CLASSES, EXPRESSIONS
from faceptor.train.data import READERS, SPLITS, DatasetFormatError, load_face_dataset
from faceptor.train.data.parsing import CELEBAMASK_HQ_PARTS
from faceptor.train.data.recordio import RecordIOReader, frame_record

RNG = np.random.default_rng(0)


def pixels(height=6, width=5, channels=3, seed=None):
    rng = RNG if seed is None else np.random.default_rng(seed)
    shape = (height, width, channels) if channels else (height, width)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_image(path, array=None):
    """Lossless PNG content (whatever the file's extension), so decoded pixels compare exactly."""
    array = pixels() if array is None else array
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return array


def decoded(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if image.mode not in ("RGB", "L") else image)


def fails(match, name, root, split, **options):
    """The DatasetFormatError that reading `name` / `split` under `root` raises, checked against `match`."""
    with pytest.raises(DatasetFormatError, match=match) as info:
        load_face_dataset(name, root, split, **options)
    return info.value


# ------------------------------------------------------------------------------------------------ registry


def test_registry_names_and_errors(tmp_path):
    official = {
        "align_300w",
        "align_wflw",
        "align_cofw",
        "align_aflw",
        "parsing_celebam",
        "parsing_lapa",
        "age_morph2",
        "age_utkface",
        "affect_affectnet",
        "affect_rafdb",
        "affect_ferplus",
        "biattr_celeba",
        "recog_ms1mv3",
    }
    assert set(READERS) == official | {"verification"} and set(SPLITS) == set(READERS)
    error = fails("unknown dataset 'nope'", "nope", tmp_path, "train")
    assert "align_300w" in str(error) and isinstance(error, ValueError)
    error = fails("unknown split 'dev' for affect_rafdb", "affect_rafdb", tmp_path, "dev")
    assert "train, test" in str(error)
    fails("missing CelebA root folder", "biattr_celeba", tmp_path / "absent", "train")


# --------------------------------------------------------------------------------------------------- 300W


def write_pts(path, points):
    body = "\n".join(f"{x:.6f} {y:.6f}" for x, y in points)
    path.write_text(f"version: 1\nn_points:  {len(points)}\n{{\n{body}\n}}\n")


def official_box(points):
    x0, y0 = (math.floor(v) for v in points.min(axis=0))
    x1, y1 = (math.ceil(v) for v in points.max(axis=0))
    half = max(x1 - x0, y1 - y0) / 2
    return [(x0 + x1) / 2 - half, (y0 + y1) / 2 - half, (x0 + x1) / 2 + half, (y0 + y1) / 2 + half]


def test_300w(tmp_path):
    folders = {
        "afw": ".jpg",
        "helen/trainset": ".jpg",
        "lfpw/trainset": ".png",
        "helen/testset": ".jpg",
        "lfpw/testset": ".png",
        "ibug": ".jpg",
        "300W/01_Indoor": ".png",
        "300W/02_Outdoor": ".png",
    }
    truth = {}
    for index, (folder, suffix) in enumerate(folders.items()):
        points = np.round(RNG.uniform(10, 90, size=(68, 2)), 6).astype(np.float32)
        name = "image_092 _01" if folder == "ibug" else f"face_{index}"  # a real 300W file name has a space
        (tmp_path / folder).mkdir(parents=True)
        write_pts(tmp_path / folder / f"{name}.pts", points)
        truth[f"{folder}/{name}{suffix}"] = (points, write_image(tmp_path / folder / f"{name}{suffix}"))
    expected = {"train": 3, "common": 2, "challenging": 1, "full": 3, "test": 2}
    for split, count in expected.items():
        assert len(load_face_dataset("align_300w", tmp_path, split)) == count
    dataset = load_face_dataset("align_300w", tmp_path, "valid_challenge")  # the official name
    assert dataset.features["landmarks"] == datasets.Array2D((68, 2), "float32")
    row = dataset[0]
    points, array = truth[row["file_name"]]
    assert row["file_name"] == "ibug/image_092 _01.jpg"
    np.testing.assert_array_equal(np.asarray(row["landmarks"]), points - 2.0)  # the official -2.0 shift
    np.testing.assert_allclose(row["box"], official_box(points - 2.0))
    np.testing.assert_array_equal(decoded(row["image"]), array)
    raw = READERS["align_300w"](tmp_path, "challenging", coordinate_offset=0.0)[0]
    np.testing.assert_array_equal(np.asarray(raw["landmarks"]), points)

    bad = tmp_path / "ibug" / "image_092 _01.pts"
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join(lines[:10] + ["12.5"] + lines[11:]) + "\n")
    error = fails("expected 2 fields", "align_300w", tmp_path, "challenging")
    assert error.path == str(bad) and error.line == 11 and f"{bad}:11:" in str(error)
    bad.write_text("\n".join(lines[:10] + ["12.5 abc"] + lines[11:]) + "\n")
    fails(r":11: coordinate 'abc' is not a number", "align_300w", tmp_path, "challenging")
    bad.write_text("\n".join(lines[:-2]) + "\n")  # a point and the closing brace gone
    fails(r"expected 68 points, found 67", "align_300w", tmp_path, "challenging")
    (tmp_path / "afw" / "face_0.jpg").unlink()
    fails(r"face_0.pts: no image next to this annotation", "align_300w", tmp_path, "train")


# --------------------------------------------------------------------------------------------------- WFLW


def test_wflw(tmp_path):
    lists = tmp_path / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    lists.mkdir(parents=True)
    rows = {"train": [], "test": []}
    flags = {"train": [(0, 0, 0, 0, 0, 0)], "test": [(1, 0, 0, 0, 0, 1), (0, 1, 0, 0, 0, 0), (0, 0, 0, 0, 0, 1)]}
    for part, part_flags in flags.items():
        for index, attribute_flags in enumerate(part_flags):
            points = np.round(RNG.uniform(0, 60, size=(98, 2)), 3).astype(np.float32)
            name = f"{index}--Event/{part}_{index}.jpg"
            array = write_image(tmp_path / "WFLW_images" / name)
            fields = [f"{value:.3f}" for value in points.ravel()] + ["1", "2", "50", "60"]
            rows[part].append((name, points, array, attribute_flags))
            line = " ".join(fields + [str(flag) for flag in attribute_flags] + [name])
            with open(lists / f"list_98pt_rect_attr_{part}.txt", "a") as handle:
                handle.write(line + "\n")
    train = load_face_dataset("align_wflw", tmp_path, "train")
    name, points, array, _ = rows["train"][0]
    assert len(train) == 1 and train[0]["file_name"] == name
    np.testing.assert_array_equal(np.asarray(train[0]["landmarks"]), points)
    np.testing.assert_allclose(train[0]["box"], official_box(points))
    np.testing.assert_array_equal(decoded(train[0]["image"]), array)
    test = load_face_dataset("align_wflw", tmp_path, "test")
    assert len(test) == 3 and test[0]["attributes"]["pose"] and test[0]["attributes"]["blur"]
    blur = load_face_dataset("align_wflw", tmp_path, "test_blur")
    assert blur["file_name"] == [rows["test"][0][0], rows["test"][2][0]]
    assert load_face_dataset("align_wflw", tmp_path, "test_largepose")["file_name"] == [rows["test"][0][0]]
    assert len(load_face_dataset("align_wflw", tmp_path, "test_makeup")) == 0

    test_file = lists / "list_98pt_rect_attr_test.txt"
    lines = test_file.read_text().splitlines()
    test_file.write_text("\n".join([lines[0], lines[1].rsplit(" ", 2)[0], lines[2]]) + "\n")
    error = fails("expected 207 fields, found 205", "align_wflw", tmp_path, "test")
    assert error.line == 2
    test_file.write_text("\n".join([lines[0], lines[1], lines[2].replace(" ", " x", 1)]) + "\n")
    fails(r"list_98pt_rect_attr_test.txt:3: coordinate 'x", "align_wflw", tmp_path, "test")
    (tmp_path / "WFLW_images" / rows["train"][0][0]).unlink()
    fails(r"rect_attr_train.txt:1: missing image", "align_wflw", tmp_path, "train")


# --------------------------------------------------------------------------------------------------- COFW


def cofw_contents(count):
    images = [pixels(7 + index, 9, 0 if index == 1 else 3) for index in range(count)]  # image 1 is grey
    phis = np.concatenate(
        [RNG.uniform(0, 8, size=(count, 58)).round(4), RNG.integers(0, 2, size=(count, 29))], axis=1
    ).astype(np.float64)
    return images, phis


def write_mat73(path, variables):
    """A MATLAB v7.3 file: HDF5 with a 512-byte user block, arrays stored with their axes reversed, cells
    as arrays of object references into '#refs#'."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as handle:
        refs = handle.create_group("#refs#")
        for name, value in variables.items():
            if isinstance(value, list):  # an n x 1 cell
                references = np.empty((1, len(value)), dtype=h5py.ref_dtype)
                for index, item in enumerate(value):
                    element = refs.create_dataset(f"{name}{index}", data=np.asarray(item).T)
                    element.attrs["MATLAB_class"] = np.bytes_("uint8")
                    references[0, index] = element.ref
                node = handle.create_dataset(name, data=references)
                node.attrs["MATLAB_class"] = np.bytes_("cell")
            else:
                node = handle.create_dataset(name, data=np.asarray(value).T)
                node.attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as handle:
        handle.write(b"MATLAB 7.3 MAT-file, written by the faceptor tests".ljust(116))


@pytest.mark.parametrize("version", ["v5-scipy", "v7.3-hdf5"])
def test_cofw(tmp_path, version):
    import scipy.io

    contents = {"train": cofw_contents(3), "test": cofw_contents(2)}
    for split, (images, phis) in contents.items():
        keys = ("IsTr", "phisTr") if split == "train" else ("IsT", "phisT")
        path = tmp_path / f"COFW_{split}_color.mat"
        if version == "v5-scipy":
            cell = np.empty((len(images), 1), dtype=object)
            for index, image in enumerate(images):
                cell[index, 0] = image
            scipy.io.savemat(path, {keys[0]: cell, keys[1]: phis})
        else:
            write_mat73(path, {keys[0]: images, keys[1]: phis})
    for split, (images, phis) in contents.items():
        dataset = load_face_dataset("align_cofw", tmp_path, split)
        assert len(dataset) == len(images)
        for index, row in enumerate(dataset):
            points = phis[index, :58].reshape(2, 29).T.astype(np.float32)
            np.testing.assert_array_equal(np.asarray(row["landmarks"]), points)
            np.testing.assert_allclose(row["box"], official_box(points))
            assert row["occluded"] == [bool(value) for value in phis[index, 58:]]
            image = images[index] if images[index].ndim == 3 else np.repeat(images[index][:, :, None], 3, axis=2)
            np.testing.assert_array_equal(decoded(row["image"]), image)
    path = tmp_path / "COFW_test_color.mat"
    if version == "v5-scipy":
        scipy.io.savemat(path, {"IsT": np.empty((0, 1), dtype=object)})
    else:
        write_mat73(path, {"IsT": contents["test"][0]})
    fails(r"COFW_test_color.mat: variables \['phisT'\] not found", "align_cofw", tmp_path, "test")
    path.unlink()
    fails(r"COFW_test_color.mat: missing .mat file", "align_cofw", tmp_path, "test")


# ------------------------------------------------------------------------------------------------ AFLW-19


def test_aflw(tmp_path):
    import scipy.io

    count = 5
    names = [f"{index % 3}/image{index:05d}.jpg" for index in range(count)]
    arrays = [write_image(tmp_path / "data" / "flickr" / name) for name in names]
    data = RNG.uniform(0, 5, size=(count, 38)).round(3)
    bbox = RNG.uniform(0, 5, size=(count, 4)).round(3)  # left right top bottom
    mask = np.ones((count, 19))
    mask[3, 4] = 0
    order = np.array([[3, 1, 5, 2, 4]], dtype=np.float64)  # MATLAB's 1-based permutation
    name_cell = np.empty((count, 1), dtype=object)
    for index, name in enumerate(names):
        name_cell[index, 0] = name
    info = {"bbox": bbox, "data": data, "mask_new": mask, "nameList": name_cell, "ra": order}
    scipy.io.savemat(tmp_path / "AFLWinfo_release.mat", info)
    train = READERS["align_aflw"](tmp_path, "train", num_train=3)
    assert [row["file_name"] for row in train] == [names[2], names[0], names[4]]
    row = train[0]
    np.testing.assert_array_equal(np.asarray(row["landmarks"]), data[2].reshape(2, 19).T.astype(np.float32))
    left, right, top, bottom = bbox[2]
    np.testing.assert_allclose(row["box"], [left, top, right, bottom], rtol=1e-6)
    np.testing.assert_array_equal(decoded(row["image"]), arrays[2])
    assert READERS["align_aflw"](tmp_path, "test_full", num_train=3)["file_name"] == [names[1], names[3]]
    frontal = READERS["align_aflw"](tmp_path, "test_frontal", num_train=3)
    assert frontal["file_name"] == [names[1]] and frontal[0]["visible"] == [True] * 19
    info["ra"] = np.array([[1, 1, 2, 3, 4]], dtype=np.float64)
    scipy.io.savemat(tmp_path / "AFLWinfo_release.mat", info)
    fails(r"AFLWinfo_release.mat: ra is not a permutation", "align_aflw", tmp_path, "train")


# ------------------------------------------------------------------------------------------ CelebAMask-HQ


def test_celebamask_hq(tmp_path):
    originals = {0: "000011.jpg", 1: "000022.jpg", 2001: "000033.jpg", 3: "000044.jpg"}
    mapping = ["idx         orig_idx orig_file"] + [
        f"{hq}  {int(name[:6]) - 1}  {name}" for hq, name in originals.items()
    ]
    (tmp_path / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
    partition = {"000011.jpg": 0, "000022.jpg": 1, "000033.jpg": 0, "000044.jpg": 2, "000055.jpg": 0}
    (tmp_path / "list_eval_partition.txt").write_text("".join(f"{k} {v}\n" for k, v in partition.items()))
    expected = {}
    for hq in originals:
        write_image(tmp_path / "CelebA-HQ-img" / f"{hq}.jpg", pixels(8, 8))
        label = np.zeros((512, 512), np.uint8)
        for part in ("skin", "l_eye", "hair", "eye_g") if hq != 3 else ("neck",):
            value = CELEBAMASK_HQ_PARTS.index(part) + 1
            mask = np.zeros((512, 512), np.uint8)
            top, left = RNG.integers(0, 400, size=2)
            mask[top : top + 100, left : left + 150] = 255
            write_image(tmp_path / "CelebAMask-HQ-mask-anno" / str(hq // 2000) / f"{hq:05d}_{part}.png", mask)
            label[mask > 0] = value
        expected[hq] = label
    train = load_face_dataset("parsing_celebam", tmp_path, "train")
    assert train["id"] == [0, 2001]
    assert set(train.features) == {"image", "mask_parts", "id"}  # stored columns; `mask` is merged on access
    assert CELEBAMASK_HQ_CLASSES[CELEBAMASK_HQ_PARTS.index("eye_g") + 1] == "eyeglasses"
    for row in train:
        assert row["mask"].mode == "L" and row["mask"].size == (512, 512)
        np.testing.assert_array_equal(np.asarray(row["mask"]), expected[row["id"]])
    assert load_face_dataset("parsing_celebam", tmp_path, "train_val")["id"] == [0, 1, 2001]
    test = load_face_dataset("parsing_celebam", tmp_path, "test")
    np.testing.assert_array_equal(np.asarray(test[0]["mask"]), expected[3])
    assert test[0]["image"].size == (8, 8)
    with open(tmp_path / "CelebA-HQ-to-CelebA-mapping.txt", "a") as handle:
        handle.write("7 000055.jpg\n")
    fails(r"mapping.txt:6: expected 3 fields", "parsing_celebam", tmp_path, "train")


# --------------------------------------------------------------------------------------------------- LaPa


def test_lapa(tmp_path):
    truth = {}
    for subfolder in ("train", "val", "test"):
        for index in range(2 if subfolder == "train" else 1):
            name = f"{subfolder}_{index}"
            array = write_image(tmp_path / subfolder / "images" / f"{name}.jpg")
            mask = RNG.integers(0, 11, size=(6, 5), dtype=np.uint8)
            write_image(tmp_path / subfolder / "labels" / f"{name}.png", mask)
            points = RNG.uniform(0, 5, size=(106, 2)).round(4).astype(np.float32)
            (tmp_path / subfolder / "landmarks").mkdir(exist_ok=True)
            text = "106\n" + "".join(f"{x} {y}\n" for x, y in points.tolist())
            (tmp_path / subfolder / "landmarks" / f"{name}.txt").write_text(text)
            truth[f"{subfolder}/{name}"] = (array, mask, points)
    dataset = load_face_dataset("parsing_lapa", tmp_path, "train_val")
    assert dataset["file_name"] == ["train/train_0", "train/train_1", "val/val_0"]
    for row in dataset:
        array, mask, points = truth[row["file_name"]]
        np.testing.assert_array_equal(decoded(row["image"]), array)
        np.testing.assert_array_equal(np.asarray(row["mask"]), mask)
        np.testing.assert_array_equal(np.asarray(row["landmarks"]), points)
    assert len(load_face_dataset("parsing_lapa", tmp_path, "test")) == 1
    landmark_file = tmp_path / "test" / "landmarks" / "test_0.txt"
    lines = landmark_file.read_text().splitlines()
    landmark_file.write_text("\n".join(lines[:1] + ["abc 1.5"] + lines[2:]) + "\n")
    fails(r"test_0.txt:2: coordinate 'abc' is not a number", "parsing_lapa", tmp_path, "test")
    landmark_file.write_text("\n".join(lines[:-1]) + "\n")
    fails(r"test_0.txt:106: expected '106' and 212", "parsing_lapa", tmp_path, "test")
    (tmp_path / "test" / "labels" / "test_0.png").unlink()
    fails(r"test_0.jpg: missing label mask", "parsing_lapa", tmp_path, "test")


# ---------------------------------------------------------------------------------------------------- age


def test_morph2(tmp_path):
    labels = tmp_path / "label" / "RANDOM_80_20"
    labels.mkdir(parents=True)
    arrays = {name: write_image(tmp_path / "data" / name) for name in ("Album2/001_0M27.JPG", "Album2/002_1F61.JPG")}
    (labels / "train.txt").write_text("Album2/001_0M27.JPG 27\n\nAlbum2/002_1F61.JPG 61\n")
    (labels / "test.txt").write_text("Album2/002_1F61.JPG 61\nAlbum2/001_0M27.JPG\n")
    train = load_face_dataset("age_morph2", tmp_path, "train")
    assert train.features["age"] == datasets.Value("float32") and train["age"] == [27.0, 61.0]
    np.testing.assert_array_equal(decoded(train[1]["image"]), arrays["Album2/002_1F61.JPG"])
    fails(r"RANDOM_80_20/test.txt:2: expected 2 fields, found 1", "age_morph2", tmp_path, "test")
    (labels / "test.txt").write_text("Album2/002_1F61.JPG sixty\n")
    fails(r"test.txt:1: age 'sixty' is not a number", "age_morph2", tmp_path, "test")


def test_utkface(tmp_path):
    names = [
        "26_1_2_20170116181301976.jpg.chip.jpg",
        "53_0_0_20170120223125364.jpg.chip.jpg",
        "1_0_0_2017.jpg.chip.jpg",
    ]
    arrays = {name: write_image(tmp_path / "data" / name) for name in names}
    (tmp_path / "label").mkdir()
    # CORAL's csv files store age - 21 in their `age` column: the file name's age must win
    (tmp_path / "label" / "train.csv").write_text(f",file,age\n18903,{names[0]},5\n18899,{names[1]},32\n")
    (tmp_path / "label" / "test.csv").write_text(f",file,age\n1,{names[2]},0\n2,x_0_0_1.jpg,3\n")
    train = load_face_dataset("age_utkface", tmp_path, "train")
    assert train["age"] == [26.0, 53.0] and train["file_name"] == names[:2]
    np.testing.assert_array_equal(decoded(train[0]["image"]), arrays[names[0]])
    assert sorted(load_face_dataset("age_utkface", tmp_path, "all")["age"]) == [1.0, 26.0, 53.0]
    error = fails(r"test.csv:3: file name 'x_0_0_1.jpg'", "age_utkface", tmp_path, "test")
    assert error.line == 3


# --------------------------------------------------------------------------------------------- expression


def test_affectnet_both_layouts(tmp_path):
    official = tmp_path / "official"
    (official / "label").mkdir(parents=True)
    arrays = {
        f"{index}/img{index}.jpg": write_image(official / "data" / f"{index}/img{index}.jpg") for index in range(4)
    }
    (official / "label" / "train.txt").write_text("0/img0.jpg 6\n1/img1.jpg 7\n2/img2.jpg 0\n3/img3.jpg 10\n")
    dataset = load_face_dataset("affect_affectnet", official, "train")
    assert dataset.features["label"].names == list(EXPRESSIONS)
    assert dataset["label"] == [6, 0] and dataset["file_name"] == ["0/img0.jpg", "2/img2.jpg"]
    np.testing.assert_array_equal(decoded(dataset[1]["image"]), arrays["2/img2.jpg"])
    (official / "label" / "test.txt").write_text("0/img0.jpg 6\n1/img1.jpg 11\n")
    fails(r"label/test.txt:2: label 11 outside 0..10", "affect_affectnet", official, "test")

    public = tmp_path / "public"
    lists = public / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
    rows = [("10/a.jpg", 3), ("11/b.png", 8), ("12/c.jpg", 4)]
    for name, _ in rows:
        write_image(public / "Manually_Annotated" / "Manually_Annotated_Images" / name)
    body = "".join(f'{name},1,2,30,40,"1.0;2.0;3.0",{label},0.1,-0.2\n' for name, label in rows)
    (lists / "training.csv").write_text(header + "\n" + body)
    (lists / "validation.csv").write_text(body.replace(",4,0.1", ",four,0.1"))  # no header, like the download
    dataset = load_face_dataset("affect_affectnet", public, "train")
    assert dataset["label"] == [3, 4] and dataset["file_name"] == ["10/a.jpg", "12/c.jpg"]
    fails(r"validation.csv:3: expression 'four'", "affect_affectnet", public, "test")


def test_rafdb(tmp_path):
    (tmp_path / "EmoLabel").mkdir()
    lines, arrays = [], {}
    for label in range(1, 8):
        name = f"train_{label:05d}.jpg"
        arrays[name] = write_image(tmp_path / "Image" / "aligned" / f"train_{label:05d}_aligned.jpg")
        write_image(tmp_path / "Image" / "original" / name)
        lines.append(f"{name} {label}")
    write_image(tmp_path / "Image" / "aligned" / "test_0001_aligned.jpg")
    lines.append("test_0001.jpg 4")
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    train = load_face_dataset("affect_rafdb", tmp_path, "train")
    # 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness, 6 anger, 7 neutral
    names = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
    assert [EXPRESSIONS[label] for label in train["label"]] == names
    assert train["file_name"][0] == "train_00001_aligned.jpg"
    np.testing.assert_array_equal(decoded(train[0]["image"]), arrays["train_00001.jpg"])
    test = load_face_dataset("affect_rafdb", tmp_path, "test")
    assert test["label"] == [EXPRESSIONS.index("happiness")]
    assert READERS["affect_rafdb"](tmp_path, "train", aligned=False)["file_name"][0] == "train_00001.jpg"
    with open(tmp_path / "EmoLabel" / "list_patition_label.txt", "a") as handle:
        handle.write("test_0002.jpg 8\n")
    fails(r"list_patition_label.txt:9: label 8 outside 1..7", "affect_rafdb", tmp_path, "test")


def test_ferplus(tmp_path):
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
    rows = [
        ("Training", "fer0000000.png", [5, 0, 0, 1, 3, 0, 0, 0, 1, 0]),  # neutral 5 of 8 once single votes go
        ("Training", "fer0000001.png", [0, 0, 6, 0, 0, 0, 4, 0, 0, 0]),  # surprise
        ("Training", "fer0000002.png", [3, 3, 0, 0, 0, 0, 0, 0, 4, 0]),  # no majority: dropped
        ("Training", "fer0000003.png", [0, 0, 0, 0, 0, 0, 0, 8, 2, 0]),  # contempt: dropped
        ("Training", "", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # removed image
        ("PublicTest", "fer0000004.png", [0, 0, 0, 0, 1, 0, 9, 0, 0, 0]),  # fear
        ("PrivateTest", "fer0000005.png", [0, 0, 0, 0, 7, 3, 0, 0, 0, 0]),  # anger
        ("PrivateTest", "fer0000006.png", [0, 0, 0, 0, 0, 0, 0, 0, 3, 7]),  # not a face: dropped
    ]
    folders = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
    arrays = {}
    with open(tmp_path / "fer2013new.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header.split(","))
        for usage, name, votes in rows:
            writer.writerow([usage, name, *votes])
            if name:
                arrays[name] = write_image(tmp_path / folders[usage] / name, pixels(48, 48, 0))
    train = load_face_dataset("affect_ferplus", tmp_path, "train")
    assert [EXPRESSIONS[label] for label in train["label"]] == ["neutral", "surprise"]
    np.testing.assert_array_equal(np.asarray(train[0]["image"]), arrays["fer0000000.png"])
    train_val = load_face_dataset("affect_ferplus", tmp_path, "train_val")
    assert [EXPRESSIONS[label] for label in train_val["label"]] == ["neutral", "surprise", "fear"]
    assert train_val["file_name"][2] == "FER2013Valid/fer0000004.png"
    assert [EXPRESSIONS[label] for label in load_face_dataset("affect_ferplus", tmp_path, "test")["label"]] == ["anger"]
    with open(tmp_path / "fer2013new.csv", "a") as handle:
        handle.write("PrivateTest,fer0000007.png,1,2,3\n")
    fails(r"fer2013new.csv:10: expected 12 fields, found 5", "affect_ferplus", tmp_path, "test")


# ------------------------------------------------------------------------------------------------- CelebA


def write_celeba(root, count, shuffled_header=False):
    names = list(CELEBA_ATTRIBUTES)
    if shuffled_header:
        names = names[::-1]
    values = RNG.choice([-1, 1], size=(count, 40))
    lines = [str(count), " ".join(names)]
    for index in range(count):
        lines.append(f"{index + 1:06d}.jpg " + " ".join(f"{value:2d}" for value in values[index]))
    (root / "Anno").mkdir(parents=True)
    (root / "Anno" / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "Eval").mkdir()
    partition = "".join(f"{index + 1:06d}.jpg {index % 3}\n" for index in range(count))
    (root / "Eval" / "list_eval_partition.txt").write_text(partition)
    ordered = values[:, ::-1] if shuffled_header else values
    return (ordered == 1).astype(int)


def test_celeba(tmp_path):
    expected = write_celeba(tmp_path, 7, shuffled_header=True)
    arrays = [write_image(tmp_path / "Img" / "img_align_celeba" / f"{index + 1:06d}.jpg") for index in range(7)]
    train = load_face_dataset("biattr_celeba", tmp_path, "train")
    assert train.features["attributes"] == datasets.Sequence(datasets.ClassLabel(names=["no", "yes"]), length=40)
    assert train["file_name"] == ["000001.jpg", "000004.jpg", "000007.jpg"]
    assert train["attributes"] == expected[[0, 3, 6]].tolist()
    np.testing.assert_array_equal(decoded(train[1]["image"]), arrays[3])
    assert load_face_dataset("biattr_celeba", tmp_path, "train_val")["file_name"][:2] == ["000001.jpg", "000002.jpg"]
    assert len(load_face_dataset("biattr_celeba", tmp_path, "test")) == 2
    attr = tmp_path / "Anno" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join(lines[:4] + [lines[4].replace(" 1", " 2", 1)] + lines[5:]) + "\n")
    fails(r"celeba.txt:5: attribute values must be -1 or 1", "biattr_celeba", tmp_path, "test")
    attr.write_text("\n".join(lines[:4] + [lines[4].rsplit(" ", 1)[0]] + lines[5:]) + "\n")
    fails(r"celeba.txt:5: expected 41 fields, found 40", "biattr_celeba", tmp_path, "val")


# --------------------------------------------------------------------------------------------- MS1MV3


MAGIC = 0xCED7230A


def write_recordio(path, payloads):
    """A RecordIO file + index in dmlc-core's framing, written independently of the reader: payloads are
    split where they hold the magic word at a 4-byte-aligned position (flags 1, 2, 3), else flag 0."""
    magic_bytes = struct.pack("<I", MAGIC)
    offsets = []
    with open(path.with_suffix(".rec"), "wb") as rec:
        for payload in payloads:
            offsets.append(rec.tell())
            cuts = [i for i in range(0, len(payload) // 4 * 4, 4) if payload[i : i + 4] == magic_bytes]
            starts = [0] + [cut + 4 for cut in cuts]
            ends = cuts + [len(payload)]
            for part, (start, end) in enumerate(zip(starts, ends, strict=True)):
                flag = 0 if not cuts else (1 if part == 0 else (3 if part == len(cuts) else 2))
                rec.write(struct.pack("<II", MAGIC, flag << 29 | (end - start)))
                rec.write(payload[start:end] + b"\0" * (-(end - start) % 4))
    lines = "".join(f"{key}\t{offset}\n" for key, offset in enumerate(offsets))
    path.with_suffix(".idx").write_text(lines)
    return offsets


def image_record(label, encoded, extra=b""):
    return struct.pack("<IfQQ", 0, float(label), 0, 0) + encoded + extra


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_ms1mv3_recordio(tmp_path):
    arrays = [pixels(112, 112, seed=index) for index in range(3)]
    jpeg = io.BytesIO()
    Image.fromarray(arrays[2]).save(jpeg, format="JPEG", quality=90)
    encoded = [png_bytes(arrays[0]), png_bytes(arrays[1]), jpeg.getvalue()]
    # record 1 carries the magic word at an aligned position after its PNG (decoders ignore trailing bytes)
    tail = b"\0" * (-(24 + len(encoded[1])) % 4) + struct.pack("<I", MAGIC) + b"tail" + struct.pack("<I", MAGIC)
    header = struct.pack("<IfQQ", 2, 0.0, 0, 0) + np.array([4, 6], "<f4").tobytes()  # images are keys 1..3
    identity = struct.pack("<IfQQ", 2, 0.0, 0, 0) + np.array([1, 3], "<f4").tobytes()  # an identity record
    payloads = [header, image_record(7, encoded[0]), image_record(93430, encoded[1], tail), image_record(7, encoded[2])]
    offsets = write_recordio(tmp_path / "train", payloads + [identity, identity])
    assert frame_record(payloads[2]) == (tmp_path / "train.rec").read_bytes()[offsets[2] : offsets[3]]
    dataset = load_face_dataset("recog_ms1mv3", tmp_path, "train")
    assert len(dataset) == 3 and dataset.features["offset"] == datasets.Value("int64")
    rows = [dataset[index] for index in range(3)]
    assert [row["label"] for row in rows] == [7, 93430, 7] and [row["key"] for row in rows] == [1, 2, 3]
    np.testing.assert_array_equal(np.asarray(rows[0]["image"]), arrays[0])
    np.testing.assert_array_equal(np.asarray(rows[1]["image"]), arrays[1])
    np.testing.assert_array_equal(np.asarray(rows[2]["image"]), np.asarray(Image.open(io.BytesIO(encoded[2]))))
    clone = pickle.loads(pickle.dumps(dataset.select([1])))  # as DataLoader workers get it: the transform travels
    assert clone[0]["label"] == 93430 and clone[0]["image"].size == (112, 112)
    reader = RecordIOReader(tmp_path / "train.rec")
    assert reader.read_at(offsets[2]) == payloads[2]  # the parts joined again
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read_at(offsets[3]) == payloads[3]

    plain = tmp_path / "plain"  # no header record: every indexed key is an image
    plain.mkdir()
    write_recordio(plain / "train", payloads[1:])
    assert [row["label"] for row in load_face_dataset("recog_ms1mv3", plain, "train")] == [7, 93430, 7]

    idx = tmp_path / "train.idx"
    idx.write_text(idx.read_text().replace(f"2\t{offsets[2]}", "2\tabc"))
    fails(r"train.idx:3: offset 'abc' is not an integer", "recog_ms1mv3", tmp_path, "train")
    idx.write_text(f"0\t{offsets[0]}\n1\t{offsets[1]}\n")
    fails(r"train.idx: header record announces keys 1..3 but key 2", "recog_ms1mv3", tmp_path, "train")
    idx.write_text(f"0\t{offsets[1] + 4}\n")
    fails(r"train.rec: no RecordIO magic at byte", "recog_ms1mv3", tmp_path, "train")
    idx.unlink()
    fails(r"train.idx: missing RecordIO index", "recog_ms1mv3", tmp_path, "train")


# ------------------------------------------------------------------------------------------- verification


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_verification_bin(tmp_path, protocol):
    arrays = [pixels(112, 112, seed=10 + index) for index in range(4)]
    bins = [png_bytes(array) for array in arrays]
    issame = [True, False]
    with open(tmp_path / "lfw.bin", "wb") as handle:
        pickle.dump((bins, issame), handle, protocol=protocol)
    with open(tmp_path / "cfp_fp.bin", "wb") as handle:  # arrays of bytes, as some packs hold
        pickle.dump(([np.frombuffer(data, np.uint8) for data in bins], np.array(issame)), handle, protocol=protocol)
    for target in ("lfw", "cfp_fp"):
        dataset = load_face_dataset("verification", tmp_path, target)
        assert dataset["is_same"] == issame
        for index, row in enumerate(dataset):
            np.testing.assert_array_equal(np.asarray(row["image1"]), arrays[2 * index])
            np.testing.assert_array_equal(np.asarray(row["image2"]), arrays[2 * index + 1])
    with open(tmp_path / "agedb_30.bin", "wb") as handle:
        pickle.dump((bins, [_Boom()]), handle, protocol=protocol)
    fails(
        r"agedb_30.bin: refusing to unpickle global (posix|nt|os)\.system",
        "verification",
        tmp_path,
        "agedb_30",
    )
    with open(tmp_path / "calfw.bin", "wb") as handle:
        pickle.dump((bins[:3], issame), handle, protocol=protocol)
    fails(r"calfw.bin: 3 images for 2 pairs", "verification", tmp_path, "calfw")
    fails(r"cplfw.bin: missing verification .bin file", "verification", tmp_path, "cplfw")
