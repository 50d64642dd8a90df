"""Encoding and decoding of the JPEG crops stored in the tables (RGB uint8 arrays in memory)."""

from __future__ import annotations

import cv2
import numpy as np

from .errors import InputError
from .storage import read_regular_file


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB uint8 image."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """An RGB uint8 image from JPEG (or PNG) bytes; ValueError when they are empty or undecodable."""
    if not data:
        raise ValueError("empty image (no bytes)")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ValueError(f"undecodable image bytes ({str(exc).strip().splitlines()[-1]})") from None
    if img is None:
        raise ValueError("undecodable image bytes")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str) -> np.ndarray:
    """An RGB uint8 image from a regular file; InputError naming the file when it cannot be read."""
    data = read_regular_file(path)
    try:
        return decode_jpeg(data)
    except ValueError:
        raise InputError(f"{path}: not a readable image") from None
