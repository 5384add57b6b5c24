"""The torch J/F path gives exactly the numpy numbers (CPU here; CUDA when available)."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from rvos.metrics.davis import jaccard_and_f
from rvos.metrics.davis_torch import jaccard_and_f_torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _blobs(rng, shape):
    return gaussian_filter(rng.random(shape), (0, 1.5, 1.5)) > 0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bound_th", [0.008, 0.2, 1.5, 3])
def test_torch_matches_numpy_exactly(device, bound_th):
    rng = np.random.default_rng(int(bound_th * 100))
    for with_void in (False, True):
        h, w = (int(v) for v in rng.integers(2, 50, 2))
        gt, pred = _blobs(rng, (3, h, w)), _blobs(rng, (3, h, w))
        gt[0] = False  # an empty ground-truth frame
        void = rng.random((3, h, w)) < 0.1 if with_void else None
        j_np, f_np = jaccard_and_f(gt, pred, void, bound_th)
        to = lambda a: None if a is None else torch.from_numpy(a).to(device)  # noqa: E731
        j_t, f_t = jaccard_and_f_torch(to(gt), to(pred), to(void), bound_th)
        np.testing.assert_array_equal(j_t.cpu().numpy(), j_np)
        np.testing.assert_array_equal(f_t.cpu().numpy(), f_np)


def test_torch_special_cases():
    empty = torch.zeros((1, 6, 6), dtype=torch.bool)
    full = torch.ones((1, 6, 6), dtype=torch.bool)
    j, f = jaccard_and_f_torch(empty, empty)
    assert j.item() == 1.0 and f.item() == 1.0
    j, f = jaccard_and_f_torch(full, empty)
    assert j.item() == 0.0 and f.item() == 1.0  # no boundary on either side
