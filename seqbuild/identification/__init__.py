"""Identification against distractors (the MegaFace protocol) with open-set rates, on features at scale.

``features``: the feature-file formats, batched reading and embedding of image sources; ``search``: the
streamed top-k pass over nested distractor subsets (FAISS); ``protocol``: the protocol and its figures;
``plots``: the figures as PNGs. The open-set numerics themselves are in :mod:`seqbuild.openset`.
"""

from .protocol import IdentificationConfig, evaluate_identification

__all__ = ["IdentificationConfig", "evaluate_identification"]
