"""Referring-image (RefCOCO-layout) data as clips, the safe refs loader, joint training."""

import json
import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from rvos.data.batch import ClipMeta, ClipSample, collate_clips
from rvos.data.joint import JointDataset
from rvos.data.refcoco import (ReferringImageDataset, build_image_dataset, load_refs,
                               translate_frames)
from rvos.errors import RVOSError


def make_refcoco(root, dataset="refcoco", split_by="unc"):
    """Two 48x64 images; a polygon annotation (rectangle) and an RLE one."""
    images = root / "images" / "train2014"
    images.mkdir(parents=True)
    for image_id in (1, 2):
        arr = np.full((48, 64, 3), 40 * image_id, dtype=np.uint8)
        Image.fromarray(arr).save(images / f"COCO_train2014_{image_id:012d}.jpg")
    rle_mask = np.zeros((48, 64), dtype=np.uint8)
    rle_mask[30:40, 40:60] = 1
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode()
    coco = {
        "images": [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": 48, "width": 64}
                   for i in (1, 2)],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [8, 4, 16, 20],
             "segmentation": [[8, 4, 24, 4, 24, 24, 8, 24]]},
            {"id": 11, "image_id": 2, "category_id": 1, "iscrowd": 0, "bbox": [40, 30, 20, 10],
             "segmentation": rle},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    folder = root / dataset
    folder.mkdir()
    (folder / "instances.json").write_text(json.dumps(coco))
    refs = [
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "train", "category_id": 1,
         "file_name": "COCO_train2014_000000000001_10.jpg",
         "sentences": [{"sent": "the box on the left", "sent_id": 0}, {"sent": "upper left thing", "sent_id": 1}]},
        {"ref_id": 1, "ann_id": 11, "image_id": 2, "split": "train", "category_id": 1,
         "file_name": "COCO_train2014_000000000002_11.jpg",
         "sentences": [{"sent": "bottom right box", "sent_id": 2}]},
        {"ref_id": 2, "ann_id": 11, "image_id": 2, "split": "val", "category_id": 1,
         "file_name": "x.jpg", "sentences": [{"sent": "validation only", "sent_id": 3}]},
    ]
    with open(folder / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return root


def test_items_are_ref_sentence_pairs_of_the_split(tmp_path):
    ds = ReferringImageDataset(make_refcoco(tmp_path), "refcoco", "train", (32, 32))
    assert len(ds) == 3
    sample = ds[0]
    assert sample.frames.shape == (1, 3, 32, 32) and sample.masks.shape == (1, 32, 32)
    assert sample.text == "the box on the left" and sample.valid.tolist() == [True]
    assert sample.meta.exp_type == "image" and sample.meta.orig_size == (48, 64)
    # polygon (8..24, 4..24) of a 64x48 image -> box centre (16/64, 14/48)
    cx, cy, w, h = sample.boxes[0].tolist()
    assert cx == pytest.approx(16 / 64, abs=0.04) and cy == pytest.approx(14 / 48, abs=0.04)
    assert w == pytest.approx(16 / 64, abs=0.06) and h == pytest.approx(20 / 48, abs=0.06)
    rle_sample = ds[2]
    assert rle_sample.masks[0, 24:, 20:].sum() > 0 and rle_sample.masks[0, :16].sum() == 0


def test_repeated_frames_for_joint_training_and_pseudo_motion(tmp_path):
    root = make_refcoco(tmp_path)
    still = ReferringImageDataset(root, "refcoco", "train", (32, 32), num_frames=3)
    s = still[1]
    assert s.frames.shape == (3, 3, 32, 32)
    assert torch.equal(s.frames[0], s.frames[2]) and s.meta.frame_names == ["00000", "00001", "00002"]
    moving = ReferringImageDataset(root, "refcoco", "train", (32, 32), num_frames=3,
                                   pseudo_motion=0.2, seed=1)
    m = moving[1]
    assert torch.equal(m.frames[0], s.frames[0])              # first frame untouched
    assert not torch.equal(m.masks[1], m.masks[0]) or not torch.equal(m.masks[2], m.masks[0])
    assert torch.equal(moving[1].frames, m.frames)            # same (seed, epoch, index)
    moving.set_epoch(1)
    assert not torch.equal(moving[1].frames, m.frames)


def test_translate_frames_moves_mask_and_image_together():
    frames = torch.zeros(2, 3, 10, 10)
    masks = torch.zeros(2, 10, 10)
    frames[:, :, 2:4, 2:4] = 1
    masks[:, 2:4, 2:4] = 1
    out_f, out_m = translate_frames(frames, masks, 0.3, np.random.default_rng(0))
    assert torch.equal(out_f[1, 0] > 0, out_m[1] > 0)
    assert out_m[1].sum() == 4


def test_refcocog_uses_umd_split_and_build_from_config(tmp_path):
    root = make_refcoco(tmp_path, "refcocog", "umd")
    cfg = SimpleNamespace(refcoco_root=str(root), refcoco_dataset="refcocog", num_frames=2,
                          hflip_prob=0.5, scale_jitter=0.1, color_jitter=0.1)
    ds = build_image_dataset(cfg, (24, 24))
    assert len(ds) == 3 and ds[0].frames.shape == (2, 3, 24, 24)
    with pytest.raises(RVOSError, match="refcoco_root"):
        build_image_dataset(SimpleNamespace(**{**vars(cfg), "refcoco_root": ""}), (24, 24))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_refs_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0, "x": _Exploit()}], protocol=2))
    with pytest.raises(RVOSError, match="refusing to load global"):
        load_refs(path)
    assert not (tmp_path / "pwned").exists()


def test_bad_layouts_name_the_file(tmp_path):
    with pytest.raises(RVOSError, match="root not found"):
        ReferringImageDataset(tmp_path / "nothing")
    root = make_refcoco(tmp_path)
    with pytest.raises(RVOSError, match=r"refs\(google\).p"):
        ReferringImageDataset(root, "refcoco", split_by="google")
    with pytest.raises(RVOSError, match="unknown referring-image dataset"):
        ReferringImageDataset(root, "flickr")
    (root / "refcoco" / "refs(unc).p").write_bytes(b"not a pickle")
    with pytest.raises(RVOSError, match="refs"):
        ReferringImageDataset(root, "refcoco")
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(RVOSError, match="list of dicts"):
        ReferringImageDataset(root, "refcoco")


def test_missing_image_is_a_clear_error(tmp_path):
    root = make_refcoco(tmp_path)
    (root / "images" / "train2014" / "COCO_train2014_000000000002.jpg").unlink()
    ds = ReferringImageDataset(root, "refcoco", "train", (16, 16))
    with pytest.raises(RVOSError, match="COCO_train2014_000000000002.jpg"):
        ds[2]


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, name, n, t=2):
        self.name, self.n, self.t = name, n, t
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        meta = ClipMeta(f"{self.name}{i}", "0", ["a"] * self.t, (4, 4))
        return ClipSample(torch.zeros(self.t, 3, 4, 4), torch.zeros(self.t, 4, 4),
                          torch.zeros(self.t, dtype=torch.bool), torch.zeros(self.t, 4), "x", meta)


def test_joint_dataset_keeps_the_ratio_and_every_video():
    video, image = ListDataset("v", 30), ListDataset("i", 7)
    joint = JointDataset(video, image, image_ratio=0.25, seed=0)
    assert len(joint) == 40                                  # 30 videos + 10 images
    names = [joint[i].meta.video for i in range(len(joint))]
    assert sorted(n for n in names if n.startswith("v")) == sorted(f"v{i}" for i in range(30))
    images = [n for n in names if n.startswith("i")]
    assert len(images) == 10 and len(set(images)) == 7      # cycles through all 7 images
    joint.set_epoch(1)
    assert video.epoch == image.epoch == 1
    assert [joint[i].meta.video for i in range(30, 40)] != images
    batch = collate_clips([joint[0], joint[35]])             # same T: image and video collate
    assert batch.frames.shape[:2] == (2, 2)


def test_joint_dataset_edge_ratios():
    video, image = ListDataset("v", 5), ListDataset("i", 3)
    assert len(JointDataset(video, image, 0.0)) == 5
    only_images = JointDataset(video, image, 1.0)
    assert len(only_images) == 3 and all(only_images.is_image(i) for i in range(3))
    with pytest.raises(ValueError):
        JointDataset(video, image, 1.5)
    with pytest.raises(IndexError):
        only_images[3]


# ----------------------------------------------------------------------------- per-expression layout
def refexp_entries(coco, refs, dataset, split):
    """ReferFormer's tools/data/convert_refexp_to_coco.py scheme: one images entry per
    sentence (ids from 1), one annotation each, original COCO ids under original_id."""
    images = {im["id"]: im for im in coco["images"]}
    anns = {a["id"]: a for a in coco["annotations"]}
    out = {"info": {}, "licenses": [], "images": [], "annotations": [], "categories": coco["categories"]}
    n = 0
    for ref in refs:
        if ref["split"] != split:
            continue
        img, ann = images[ref["image_id"]], anns[ref["ann_id"]]
        for sentence in ref["sentences"]:
            n += 1
            out["images"].append({"file_name": img["file_name"], "height": img["height"],
                                  "width": img["width"], "original_id": img["id"], "id": n,
                                  "caption": sentence["sent"], "dataset_name": dataset})
            out["annotations"].append({"segmentation": ann["segmentation"],
                                       "area": ann.get("area", 100), "iscrowd": ann["iscrowd"],
                                       "bbox": ann["bbox"], "image_id": n,
                                       "category_id": ann["category_id"], "id": n,
                                       "original_id": ann["id"]})
    return out


def make_refexp_coco(root, dataset="refcoco", splits=("train", "val")):
    """The layout ReferFormer / SgMg / SOC read: <root>/train2014/ and
    <root>/<dataset>/instances_<dataset>_<split>.json, made from the refer-layout fixture."""
    make_refcoco(root / "_refer", dataset, DATASETS_SPLIT_BY[dataset])
    (root / "_refer" / "images" / "train2014").rename(root / "train2014")
    coco = json.loads((root / "_refer" / dataset / "instances.json").read_text())
    refs = pickle.loads((root / "_refer" / dataset / f"refs({DATASETS_SPLIT_BY[dataset]}).p").read_bytes())
    (root / dataset).mkdir(parents=True)
    for split in splits:
        with open(root / dataset / f"instances_{dataset}_{split}.json", "w") as f:
            json.dump(refexp_entries(coco, refs, dataset, split), f)
    return root


DATASETS_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


def test_per_expression_layout_reads_like_the_refer_layout(tmp_path):
    refer = ReferringImageDataset(make_refcoco(tmp_path / "a"), "refcoco", "train", (32, 32))
    coco = ReferringImageDataset(make_refexp_coco(tmp_path / "b"), "refcoco", "train", (32, 32))
    assert refer.layout == "refer toolkit" and coco.layout == "per-expression COCO"
    assert coco.image_dir == tmp_path / "b" / "train2014"
    assert [e.text for e in coco.expressions] == [e.text for e in refer.expressions]
    assert [(e.image_id, e.ann_id, e.file_name) for e in coco.expressions] == \
        [(e.image_id, e.ann_id, e.file_name) for e in refer.expressions]
    assert [e.sample_id for e in coco.expressions] == ["1", "2", "3"]
    for i in range(len(coco)):
        a, b = refer[i], coco[i]
        assert torch.equal(a.frames, b.frames) and torch.equal(a.masks, b.masks)
        assert a.text == b.text and b.meta.video == a.meta.video and b.meta.obj_ids == a.meta.obj_ids
    val = ReferringImageDataset(tmp_path / "b", "refcoco", "val", (32, 32), train=False)
    assert [e.text for e in val.expressions] == ["validation only"]


def test_both_layouts_side_by_side_use_the_per_expression_file(tmp_path):
    root = make_refexp_coco(tmp_path)
    for name in ("refs(unc).p", "instances.json"):     # ReferFormer converts in place
        (root / "_refer" / "refcoco" / name).rename(root / "refcoco" / name)
    ds = ReferringImageDataset(root, "refcoco", "val", (16, 16), train=False)
    assert ds.files.path.name == "instances_refcoco_val.json"
    assert ReferringImageDataset(root, "refcoco", "val", (16, 16), split_by="unc").layout == "refer toolkit"


def test_data_format_refcoco_builds_training_and_checks_validation(tmp_path):
    from rvos.config import load_config
    from rvos.data.build import build_train_dataset, verify_validation_split

    root = make_refexp_coco(tmp_path, "refcoco+")
    cfg = load_config(None, ["data.format=refcoco", f"data.root={root}", "data.refcoco_dataset=refcoco+",
                             "data.val_split=val", "data.num_frames=1", "data.input_size=[24,24]"])
    ds = build_train_dataset(cfg)
    assert len(ds) == 3 and ds[0].frames.shape == (1, 3, 24, 24) and ds.dataset == "refcoco+"
    verify_validation_split(cfg)
    (root / "train2014" / "COCO_train2014_000000000002.jpg").unlink()   # the val image
    with pytest.raises(RVOSError, match="COCO_train2014_000000000002.jpg"):
        verify_validation_split(cfg)
    with pytest.raises(RVOSError, match="COCO_train2014_000000000002.jpg"):
        build_train_dataset(cfg)
    bad = load_config(None, ["data.format=refcoco", f"data.root={root}", "data.refcoco_dataset=refcoco+"])
    with pytest.raises(RVOSError, match=r"instances_refcoco\+_valid.json.*refs\(unc\).p"):
        verify_validation_split(bad)                 # data.val_split left at "valid"


def test_neither_layout_names_both(tmp_path):
    (tmp_path / "refcoco").mkdir()
    with pytest.raises(RVOSError) as e:
        ReferringImageDataset(tmp_path, "refcoco", "val")
    message = str(e.value)
    assert "instances_refcoco_val.json" in message and "refs(unc).p" in message
    assert "instances.json" in message and str(tmp_path / "refcoco") in message


def _rewrite(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][0].update(image_id=99), "annotation 1 names image 99"),
    (lambda d: d["annotations"].append(dict(d["annotations"][0], id=7)), "image entry 1 has 2 annotations"),
    (lambda d: d["annotations"][0].pop("segmentation"), "annotation 1 has no 'segmentation'"),
    (lambda d: d["annotations"][0].update(segmentation=[]), "box-only"),
    (lambda d: d["images"][0].pop("caption"), "image entry 1 has no 'caption'"),
    (lambda d: d["images"][0].update(file_name="../x.jpg"), "file_name"),
    (lambda d: d["images"][0].update(dataset_name="refcocog"), "dataset_name 'refcocog'"),
    (lambda d: d.pop("annotations"), "no 'annotations' list"),
])
def test_bad_per_expression_files_name_the_file(tmp_path, change, message):
    root = make_refexp_coco(tmp_path)
    path = root / "refcoco" / "instances_refcoco_train.json"
    _rewrite(path, change)
    with pytest.raises(RVOSError, match=message) as e:
        ReferringImageDataset(root, "refcoco", "train")
    assert "instances_refcoco_train.json" in str(e.value)


def test_malformed_json_and_missing_images_folder(tmp_path):
    root = make_refexp_coco(tmp_path)
    path = root / "refcoco" / "instances_refcoco_train.json"
    path.write_text('{"images": [')
    with pytest.raises(RVOSError, match="not valid JSON") as e:
        ReferringImageDataset(root, "refcoco", "train")
    assert "instances_refcoco_train.json" in str(e.value)
    (root / "train2014").rename(root / "elsewhere")
    with pytest.raises(RVOSError, match="train2014 images not found"):
        ReferringImageDataset(root, "refcoco", "val")


def test_rle_of_another_size_is_a_clear_error(tmp_path):
    root = make_refexp_coco(tmp_path)
    path = root / "refcoco" / "instances_refcoco_val.json"
    _rewrite(path, lambda d: d["annotations"][0]["segmentation"].update(size=[10, 10]))
    ds = ReferringImageDataset(root, "refcoco", "val", (16, 16), train=False)
    with pytest.raises(RVOSError, match=r"mask of size \[10, 10\]") as e:
        ds[0]
    assert "instances_refcoco_val.json" in str(e.value)
