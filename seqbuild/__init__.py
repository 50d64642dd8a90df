"""seqbuild: face sequences from video for SeqFace training."""

__version__ = "0.1.0"
