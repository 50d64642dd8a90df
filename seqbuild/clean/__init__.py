"""Clean: remove noisy, near-duplicate, low-quality and rerun faces and sequences, with reasons."""
