"""MTCNN's three-stage cascade over a batch of frames, with OpenCV resizing on the CPU.

facenet-pytorch's ``detect_face`` resizes with ``torch.nn.functional.interpolate(mode="area")``,
which on the CPU falls back to adaptive average pooling and takes most of the time (about 3/4 of a
720p frame's detection here). This is the same cascade, with the same networks, thresholds, box
regression and non-maximum suppression (facenet-pytorch's own helpers), but the image pyramid and the
24/48-pixel candidate crops are resized with ``cv2.resize(INTER_AREA)`` on uint8 pixels when the
networks run on the CPU; a candidate is cropped from a half/quarter/... resolution copy of its frame
when its box is large, so that resizing costs little whatever the face size. On CUDA the pyramid is resized on the device as facenet-pytorch does.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_CANDIDATE_BATCH = 64
"""The smallest batch R-net and O-net see; candidate batches are padded up to a power of two from here."""


def _padded(crops: np.ndarray, minimum: int = MIN_CANDIDATE_BATCH) -> np.ndarray:
    """``crops`` followed by zero crops, to the next power of two (at least ``minimum``) in length.

    The number of candidates changes with every batch of frames. Run at their own sizes, R-net and
    O-net allocate blocks of ever new sizes, which fragments the heap: peak memory then keeps growing
    with the length of the video. Padded, the networks see a handful of shapes and their blocks are
    reused; the networks treat each crop on its own, so the results for the real crops do not change.
    """
    size = minimum
    while size < len(crops):
        size *= 2
    if size == len(crops):
        return crops
    out = np.zeros((size, *crops.shape[1:]), crops.dtype)
    out[: len(crops)] = crops
    return out


def _normalise(batch_nhwc: np.ndarray, torch, device, dtype):
    t = torch.from_numpy(np.ascontiguousarray(batch_nhwc)).to(device)
    return (t.permute(0, 3, 1, 2).to(dtype) - 127.5) * 0.0078125


class _Mipmap:
    """Each frame at 1/1, 1/2, 1/4, ... resolution, made on first use, so that a candidate crop is
    resized from the smallest level that still has at least twice the pixels it needs."""

    def __init__(self, frames: np.ndarray) -> None:
        self.levels = [frames]

    def level(self, j: int) -> np.ndarray:
        while len(self.levels) <= j:
            prev = self.levels[-1]
            h, w = prev.shape[1] // 2, prev.shape[2] // 2
            if h < 1 or w < 1:
                return self.levels[-1]
            self.levels.append(np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in prev]))
        return self.levels[j]


def _crops(mip: _Mipmap, boxes, image_inds, w: int, h: int, size: int) -> np.ndarray:
    from facenet_pytorch.models.utils.detect_face import pad

    y, ey, x, ex = pad(boxes, w, h)
    inds = image_inds.cpu().numpy()
    out = np.zeros((len(y), size, size, 3), np.uint8)
    for k in range(len(y)):
        if ey[k] > (y[k] - 1) and ex[k] > (x[k] - 1):
            side = max(ey[k] - y[k] + 1, ex[k] - x[k] + 1)
            j = max(0, int(np.floor(np.log2(side / (2.0 * size)))))
            level = mip.level(j)
            f = 2**j
            y0, x0 = (y[k] - 1) // f, (x[k] - 1) // f
            y1, x1 = max(y0 + 1, -(-ey[k] // f)), max(x0 + 1, -(-ex[k] // f))
            patch = level[inds[k], y0:y1, x0:x1]
            out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return out


def detect_faces_batch(
    frames: np.ndarray,
    minsize: float,
    pnet,
    rnet,
    onet,
    thresholds: list[float],
    factor: float,
    device,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run the cascade on ``frames`` (N, H, W, 3) uint8 RGB; per frame boxes (n, 5: x1 y1 x2 y2 p) and
    landmarks (n, 5, 2), in the frames' pixels."""
    import torch
    from facenet_pytorch.models.utils.detect_face import (
        batched_nms,
        batched_nms_numpy,
        bbreg,
        generateBoundingBox,
        rerec,
    )

    device = torch.device(device)
    on_cpu = device.type == "cpu"
    dtype = next(pnet.parameters()).dtype
    n, h, w = frames.shape[:3]
    m = 12.0 / minsize
    minl = min(h, w) * m
    scales = []
    scale = m
    while minl >= 12:
        scales.append(scale)
        scale *= factor
        minl *= factor

    gpu_batch = None
    if not on_cpu:
        gpu_batch = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).to(dtype)

    boxes_all, inds_all, picks = [], [], []
    offset = 0
    first_level = None
    for scale in scales:
        hs, ws = int(h * scale + 1), int(w * scale + 1)
        if on_cpu:
            # Every level is at most the size of the first one, so the full frames are shrunk once and
            # the smaller levels are taken from that first level (area averaging of an area average).
            source = frames if first_level is None else first_level
            resized = np.stack([cv2.resize(f, (ws, hs), interpolation=cv2.INTER_AREA) for f in source])
            if first_level is None:
                first_level = resized
            im_data = _normalise(resized, torch, device, dtype)
        else:
            im_data = (
                torch.nn.functional.interpolate(gpu_batch, size=(hs, ws), mode="area") - 127.5
            ) * 0.0078125
        reg, probs = pnet(im_data)
        boxes_scale, inds_scale = generateBoundingBox(reg, probs[:, 1], scale, thresholds[0])
        boxes_all.append(boxes_scale)
        inds_all.append(inds_scale)
        pick = batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], inds_scale, 0.5)
        picks.append(pick + offset)
        offset += boxes_scale.shape[0]

    empty = (
        [np.zeros((0, 5), np.float32) for _ in range(n)],
        [np.zeros((0, 5, 2), np.float32) for _ in range(n)],
    )
    if not scales:
        return empty
    boxes = torch.cat(boxes_all, dim=0)
    image_inds = torch.cat(inds_all, dim=0)
    pick = torch.cat(picks, dim=0)
    boxes, image_inds = boxes[pick], image_inds[pick]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    if len(boxes) == 0:
        return empty

    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack(
        [
            boxes[:, 0] + boxes[:, 5] * regw,
            boxes[:, 1] + boxes[:, 6] * regh,
            boxes[:, 2] + boxes[:, 7] * regw,
            boxes[:, 3] + boxes[:, 8] * regh,
            boxes[:, 4],
        ]
    ).permute(1, 0)
    boxes = rerec(boxes)

    # Second stage (R-net on 24x24 crops).
    mip = _Mipmap(frames)
    k = len(boxes)
    im_data = _normalise(_padded(_crops(mip, boxes, image_inds, w, h, 24)), torch, device, dtype)
    out0, out1 = (o[:k].permute(1, 0) for o in rnet(im_data))
    score = out1[1, :]
    ipass = score > thresholds[1]
    boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
    image_inds = image_inds[ipass]
    mv = out0[:, ipass].permute(1, 0)
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
    boxes = bbreg(boxes, mv)
    boxes = rerec(boxes)
    if len(boxes) == 0:
        return empty

    # Third stage (O-net on 48x48 crops): probabilities, box regression, landmarks.
    k = len(boxes)
    im_data = _normalise(_padded(_crops(mip, boxes, image_inds, w, h, 48)), torch, device, dtype)
    out0, out1, out2 = (o[:k].permute(1, 0) for o in onet(im_data))
    score = out2[1, :]
    ipass = score > thresholds[2]
    points = out1[:, ipass]
    boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
    image_inds = image_inds[ipass]
    mv = out0[:, ipass].permute(1, 0)
    w_i = boxes[:, 2] - boxes[:, 0] + 1
    h_i = boxes[:, 3] - boxes[:, 1] + 1
    points_x = w_i.repeat(5, 1) * points[:5, :] + boxes[:, 0].repeat(5, 1) - 1
    points_y = h_i.repeat(5, 1) * points[5:10, :] + boxes[:, 1].repeat(5, 1) - 1
    points = torch.stack((points_x, points_y)).permute(2, 1, 0)
    boxes = bbreg(boxes, mv)
    pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
    boxes, image_inds, points = boxes[pick], image_inds[pick], points[pick]

    boxes_np = boxes.cpu().numpy()
    points_np = points.cpu().numpy()
    inds_np = image_inds.cpu().numpy()
    return (
        [boxes_np[inds_np == i].copy() for i in range(n)],
        [points_np[inds_np == i].copy() for i in range(n)],
    )
