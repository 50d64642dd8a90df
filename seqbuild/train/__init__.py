"""The SeqFace trainer: backbones, LSR-L2-SphereFace and DSA losses, data, training loop and evaluation."""
