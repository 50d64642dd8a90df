"""The MTCNN cascade: padded candidate batches give the same outputs as unpadded ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqbuild.ingest.mtcnn import MIN_CANDIDATE_BATCH, _normalise, _padded


@pytest.mark.parametrize("n", [1, 63, 64, 65, 200])
def test_padded_is_a_power_of_two_and_keeps_the_crops(n):
    crops = np.random.default_rng(n).integers(0, 256, size=(n, 24, 24, 3), dtype=np.uint8)
    out = _padded(crops)
    assert len(out) >= max(n, MIN_CANDIDATE_BATCH)
    assert len(out) & (len(out) - 1) == 0
    assert np.array_equal(out[:n], crops)
    assert not out[n:].any()


def test_padding_does_not_change_the_networks_outputs():
    from facenet_pytorch import MTCNN

    model = MTCNN(device=torch.device("cpu")).eval()
    rng = np.random.default_rng(0)
    for net, size in ((model.rnet, 24), (model.onet, 48)):
        crops = rng.integers(0, 256, size=(37, size, size, 3), dtype=np.uint8)
        with torch.inference_mode():
            plain = net(_normalise(crops, torch, "cpu", torch.float32))
            padded = net(_normalise(_padded(crops), torch, "cpu", torch.float32))
        assert len(padded[0]) == MIN_CANDIDATE_BATCH
        for a, b in zip(plain, padded, strict=True):
            np.testing.assert_allclose(a.numpy(), b[: len(crops)].numpy(), rtol=1e-4, atol=1e-5)
