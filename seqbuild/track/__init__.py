"""Track: link detections into single-person face sequences with Kalman filters and the Hungarian algorithm."""
