"""Training options and their defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option


@dataclass
class TrainConfig:
    """Options of `seqbuild train` (defaults follow the SeqFace paper and the authors' released layers)."""

    identities: str = option("", "identity dataset (Parquet folder from `seqbuild import-identities`)")
    sequences: list[str] = option([], "final datasets of seqbuild runs (RUN/dataset) used as sequence data")
    backbone: str = option("resnet27", "backbone, by registry name (resnet27 | resnet64 | resnet20 | tiny)")
    embedding_dim: int = option(512, "size of the fc5 face feature", min=2)
    norm: str = option("bn", "normalisation in the backbone: bn | none", choices=("bn", "none"))
    chief_loss: str = option(
        "lsr_sphereface", "chief loss: softmax | l2_sphereface | lsr_sphereface | arcface | cosface"
    )
    aux_loss: str = option("dsa", "auxiliary loss: dsa | center | margin ('' = none)")
    # chief loss
    scale: float = option(
        0.0, "feature scale s (0 = the loss's default: 32 SphereFace, 64 ArcFace/CosFace)", min=0.0
    )
    margin_m: float = option(
        0.0, "margin (0 = the loss's default: A-Softmax m=4, ArcFace 0.5, CosFace 0.35)", min=0.0
    )
    lambda_base: float = option(5.0, "A-Softmax annealing: base", min=0.0)
    lambda_gamma: float = option(0.12, "A-Softmax annealing: gamma", min=0.0)
    lambda_power: float = option(1.0, "A-Softmax annealing: power", min=0.0)
    lambda_min: float = option(5.0, "A-Softmax annealing: lambda_min", min=0.0)
    overlap_removed: bool = option(
        True, "sequences are known not to overlap the identity classes (LSR target 1/C; else 0)"
    )
    # auxiliary losses
    aux_normalise: bool = option(
        True,
        "the auxiliary loss sees L2-normalised features scaled to aux_scale (false: raw fc5 features, "
        "whose norm the backbone sets)",
    )
    aux_scale: float = option(
        4.0, "norm of the features the auxiliary loss sees (with aux_normalise; see the DSA loss)", min=0.0
    )
    aux_weight: float = option(0.04, "weight of the auxiliary loss", min=0.0)
    centre_update: str = option(
        "rate",
        "how centres move: rate (centre_rate per appearance, whatever the learning rate) | solver (the "
        "step's learning rate and momentum, as the released Caffe layer)",
        choices=("rate", "solver"),
    )
    centre_rate: float = option(0.5, "centre update rate (centre_update = rate)", min=0.0)
    dsa_lambda: float = option(0.5, "DSA: weight of the pull term", min=0.0, max=1.0)
    dsa_alpha: float = option(2.0, "DSA: alpha", min=0.0)
    dsa_beta: float = option(
        1.0,
        "DSA: beta (the paper's 1; a margin on the sphere of radius aux_scale)",
        min=0.0,
    )
    dsa_p: float = option(
        0.01, "DSA: probability that a centre is in the iteration's subset", min=0.0, max=1.0
    )
    dsa_distance: str = option(
        "euclidean", "DSA distance: euclidean | angular", choices=("euclidean", "angular")
    )
    dsa_normaliser: str = option(
        "pooled",
        "DSA push normaliser: pooled (mean over the sampled centres, as the released layer) | paper "
        "(eq. 12: identity and sequence parts each over their expected count)",
        choices=("pooled", "paper"),
    )
    margin_loss_margin: float = option(1.0, "margin loss (Gao et al.): margin", min=0.0)
    # data
    identity_ratio: float = option(
        0.5, "fraction of each batch drawn from identity data (1:1 = 0.5)", min=0.0, max=1.0
    )
    image_size: int = option(144, "crops are resized to this size (they are stored at 144)", min=8)
    crop_size: int = option(128, "random crop (train) / centre crop (test) size", min=8)
    workers: int = option(4, "data-loader worker processes (JPEG decoding)", min=0, affects_output=False)
    # optimisation
    epochs: int = option(1, "passes over the identity data", min=1)
    max_steps: int = option(0, "stop after this many steps in total (0 = run all epochs)", min=0)
    batch_size: int = option(128, "images per batch (per process under DDP)", min=2)
    lr: float = option(0.1, "learning rate", min=0.0)
    momentum: float = option(0.9, "SGD momentum", min=0.0)
    weight_decay: float = option(5e-4, "weight decay (not applied to centres)", min=0.0)
    lr_steps: list[int] = option([], "steps at which the learning rate is multiplied by lr_gamma")
    lr_gamma: float = option(0.1, "learning-rate decay factor", min=0.0)
    warmup_steps: int = option(0, "linear learning-rate warm-up over this many steps", min=0)
    clip_grad_norm: float = option(
        5.0, "clip the gradient's global L2 norm to this, as arcface_torch (0 = no clipping)", min=0.0
    )
    init: str = option(
        "",
        "checkpoint that initialises this run (fine-tuning): its backbone, and its classifier head when "
        "its identity list is the same",
    )
    # validation while training
    # (they measure the model, they do not change it)
    val_bins: list[str] = option(
        [], "insightface verification .bin files checked while training", affects_output=False
    )
    val_pairs: str = option(
        "", "LFW-style pairs file checked while training (with val_images)", affects_output=False
    )
    val_images: str = option("", "folder of aligned crops that val_pairs refers to", affects_output=False)
    val_every: int = option(
        2000, "steps between verification checks (and one at the end)", min=1, affects_output=False
    )
    val_flip: bool = option(False, "verification adds the feature of the mirrored crop", affects_output=False)
    # engineering
    device: str = option("auto", "auto | cpu | cuda | cuda:N", affects_output=False)
    amp: str = option(
        "auto",
        "mixed precision: auto | bf16 | fp16 | off (auto = bf16 on CUDA)",
        choices=("auto", "bf16", "fp16", "off"),
    )
    compile: bool = option(False, "torch.compile the backbone", affects_output=False)
    channels_last: bool = option(True, "channels_last memory format on CUDA")
    seed: int = option(0, "random seed (sampling, augmentation, DSA subsets, initialisation)")
    checkpoint_every: int = option(
        1000, "steps between checkpoints (one is always written at the end)", min=1, affects_output=False
    )
    log_every: int = option(20, "steps between log lines", min=1, affects_output=False)
    tensorboard: bool = option(True, "write TensorBoard logs beside the CSV log", affects_output=False)
    resume: bool = option(True, "resume from OUT/last.pt when it exists", affects_output=False)
    rank_checkpoints: bool = option(
        False,
        "under DDP every rank also writes its own state (OUT/last.rankN.pt) to check they agree",
        affects_output=False,
    )
    out: str = option("", "checkpoint folder")


@dataclass
class ImportConfig:
    """Options of `seqbuild import-identities` (photos are detected and aligned as ingest does)."""

    aligned: bool = option(False, "images are already aligned face crops (no detection)")
    size: int = option(144, "side of the stored aligned crop", min=32)
    detector: str = option("mtcnn", "face detector for unaligned photos, by registry name")
    # Identity photos are portraits: a looser minimum face and threshold than ingest's (which must not
    # admit background faces of a broadcast) keep small and partly turned portraits.
    min_face: int = option(20, "smallest face side (source pixels) looked for in a photo", min=12)
    threshold: float = option(0.9, "detector face probability threshold", min=0.0, max=1.0)
    max_side: int = option(1280, "photos larger than this are downscaled before detection", min=64)
    device: str = option("auto", "auto | cpu | cuda | cuda:N", affects_output=False)
