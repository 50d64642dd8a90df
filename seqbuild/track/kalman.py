"""A constant-velocity Kalman filter on one face box, with time measured in frames.

State: box centre (cx, cy), scale s = sqrt(w * h), aspect r = w / h, and the velocity of each
(per frame). Noise is proportional to the face size, so the filter behaves the same on a 40-pixel
face in a crowd and on a 600-pixel close-up. Prediction takes the number of frames since the last
step, so detections every k-th frame (and irregular gaps) are handled by the motion model itself.
"""

from __future__ import annotations

import numpy as np
from filterpy.kalman import KalmanFilter

DIM_Z = 4
DIM_X = 8

MEASUREMENT_STD = (0.05, 0.05, 0.05, 0.05)
"""Detector jitter: centre and scale as a fraction of the face size, aspect in absolute units."""

ACCELERATION_STD = (0.02, 0.02, 0.01, 0.002)
"""Unmodelled acceleration per frame^2: centre and scale as a fraction of size, aspect absolute."""

INITIAL_VELOCITY_STD = (0.1, 0.1, 0.02, 0.005)
"""Prior on the velocity of a new track (per frame): a face may move 0.1 of its size per frame."""


def box_to_z(box: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) -> (cx, cy, s, r) with s = sqrt(w * h) and r = w / h."""
    box = np.asarray(box, dtype=np.float64)
    w = np.maximum(box[..., 2] - box[..., 0], 1e-6)
    h = np.maximum(box[..., 3] - box[..., 1], 1e-6)
    cx = (box[..., 0] + box[..., 2]) / 2
    cy = (box[..., 1] + box[..., 3]) / 2
    return np.stack([cx, cy, np.sqrt(w * h), w / h], axis=-1)


def z_to_box(z: np.ndarray) -> np.ndarray:
    """(cx, cy, s, r) -> (x1, y1, x2, y2)."""
    z = np.asarray(z, dtype=np.float64)
    s = np.maximum(z[..., 2], 1e-6)
    r = np.maximum(z[..., 3], 1e-6)
    w = s * np.sqrt(r)
    h = s / np.sqrt(r)
    return np.stack([z[..., 0] - w / 2, z[..., 1] - h / 2, z[..., 0] + w / 2, z[..., 1] + h / 2], axis=-1)


def _scaled(std: tuple[float, float, float, float], s: float) -> np.ndarray:
    return np.array([std[0] * s, std[1] * s, std[2] * s, std[3]], dtype=np.float64)


class BoxKalman:
    """Constant-velocity Kalman filter (filterpy) of one face box; ``frame`` is the time of the state."""

    def __init__(
        self,
        box: np.ndarray,
        frame: int,
        measurement_std: tuple[float, float, float, float] = MEASUREMENT_STD,
        acceleration_std: tuple[float, float, float, float] = ACCELERATION_STD,
        initial_velocity_std: tuple[float, float, float, float] = INITIAL_VELOCITY_STD,
    ) -> None:
        self.measurement_std = measurement_std
        self.acceleration_std = acceleration_std
        z = box_to_z(box)
        kf = KalmanFilter(dim_x=DIM_X, dim_z=DIM_Z)
        kf.x = np.concatenate([z, np.zeros(4)]).reshape(DIM_X, 1)
        kf.H = np.hstack([np.eye(DIM_Z), np.zeros((DIM_Z, DIM_Z))])
        pos_var = _scaled(measurement_std, z[2]) ** 2
        vel_var = _scaled(initial_velocity_std, z[2]) ** 2
        kf.P = np.diag(np.concatenate([pos_var, vel_var]))
        kf.R = np.diag(pos_var)
        self.kf = kf
        self.frame = int(frame)

    @property
    def z(self) -> np.ndarray:
        """The current state's (cx, cy, s, r)."""
        return self.kf.x[:DIM_Z, 0].copy()

    @property
    def box(self) -> np.ndarray:
        """The current state's box (x1, y1, x2, y2)."""
        return z_to_box(self.z)

    def _noise(self) -> None:
        s = max(float(self.kf.x[2, 0]), 1.0)
        self.kf.R = np.diag(_scaled(self.measurement_std, s) ** 2)

    def predict_to(self, frame: int) -> np.ndarray:
        """Advance the state to ``frame`` (no-op when already there) and return the predicted box."""
        dt = int(frame) - self.frame
        if dt > 0:
            s = max(float(self.kf.x[2, 0]), 1.0)
            F = np.eye(DIM_X)
            F[:DIM_Z, DIM_Z:] = np.eye(DIM_Z) * dt
            q = _scaled(self.acceleration_std, s) ** 2
            Q = np.zeros((DIM_X, DIM_X))
            for i in range(DIM_Z):
                # Discrete white-noise acceleration over dt frames (position, velocity) block.
                Q[i, i] = dt**4 / 4 * q[i]
                Q[i, i + DIM_Z] = Q[i + DIM_Z, i] = dt**3 / 2 * q[i]
                Q[i + DIM_Z, i + DIM_Z] = dt**2 * q[i]
            self.kf.predict(F=F, Q=Q)
            # A face cannot shrink to nothing: keep scale and aspect positive.
            self.kf.x[2, 0] = max(self.kf.x[2, 0], 1.0)
            self.kf.x[3, 0] = max(self.kf.x[3, 0], 0.05)
            self.frame = int(frame)
        return self.box

    def mahalanobis(self, boxes: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each box (n, 4) from the current (predicted) state."""
        self._noise()
        z = box_to_z(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
        H, P = self.kf.H, self.kf.P
        S = H @ P @ H.T + self.kf.R
        y = z - (H @ self.kf.x)[:, 0]
        d2 = np.einsum("ni,ij,nj->n", y, np.linalg.inv(S), y)
        return np.sqrt(np.maximum(d2, 0.0))

    def update(self, box: np.ndarray) -> None:
        """Correct the state with a detected box at the current frame."""
        self._noise()
        self.kf.update(box_to_z(box).reshape(DIM_Z, 1))
