"""Joint image + video training: one dataset that mixes referring clips and referring
images (as clips of repeated frames) in a fixed proportion."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from rvos.data.batch import ClipSample


class JointDataset(Dataset):
    """Every video sample once per epoch, plus image samples making up ``image_ratio`` of
    the epoch.

    With V video samples and ratio r < 1 the epoch has V + round(V * r / (1 - r)) items:
    indices below V are the video samples, the rest are image samples, drawn without
    repetition (cycling when the image set is smaller) in an order seeded by (seed, epoch),
    so that successive epochs see different images. r = 1 gives the image set alone.
    Both datasets must yield clips of the same T and size (see
    ``rvos.data.refcoco.build_image_dataset``). Call :meth:`set_epoch` every epoch; it is
    passed on to both datasets.
    """

    def __init__(self, video_ds: Dataset, image_ds: Dataset, image_ratio: float, seed: int = 0):
        if not 0.0 <= image_ratio <= 1.0:
            raise ValueError(f"image_ratio must lie in [0, 1], got {image_ratio}")
        if image_ratio > 0 and len(image_ds) == 0:
            raise ValueError("image_ratio > 0 but the image dataset is empty")
        self.video_ds, self.image_ds = video_ds, image_ds
        self.image_ratio = image_ratio
        self.seed, self.epoch = seed, 0
        if image_ratio >= 1.0:
            self.num_video, self.num_image = 0, len(image_ds)
        else:
            self.num_video = len(video_ds)
            self.num_image = int(round(self.num_video * image_ratio / (1.0 - image_ratio)))
        self._order = self._image_order()

    def _image_order(self) -> np.ndarray:
        if self.num_image == 0:
            return np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        n = len(self.image_ds)
        rounds = -(-self.num_image // n)
        return np.concatenate([rng.permutation(n) for _ in range(rounds)])[:self.num_image]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for ds in (self.video_ds, self.image_ds):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)
        self._order = self._image_order()

    def __len__(self) -> int:
        return self.num_video + self.num_image

    def is_image(self, index: int) -> bool:
        return index >= self.num_video

    def __getitem__(self, index: int) -> ClipSample:
        if index < 0 or index >= len(self):
            raise IndexError(index)
        if index < self.num_video:
            return self.video_ds[index]
        return self.image_ds[int(self._order[index - self.num_video])]
