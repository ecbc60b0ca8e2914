"""Per-modality encoders, registered by name: ``encoders.create("conv4", dim=64, input_info=...)``.

=============  ==================  ==========================================================
name           kinds               what
=============  ==================  ==========================================================
``conv4``      image               4 x (conv3x3, BatchNorm, ReLU, max-pool), linear
``resnet12``   image               4 residual blocks of 3 conv3x3, average pool, linear
``bag``        text                mean of token embeddings, MLP
``textcnn``    text                convolutions of widths 3/4/5, max over time, linear
``gru``        sequence, text      bidirectional GRU over packed sequences, linear
``tcn``        sequence            dilated causal conv blocks, masked mean/max pool, linear
``trajectory`` sequence            pen strokes: resampled along the path, normalised, 1-D CNN
``stroke-set`` sequence            pen strokes as a set: each stroke (either way) by a 1-D CNN,
                                   self-attention across strokes, mean and max over them
``stroke-image`` sequence          pen strokes rendered with their motion (ink, direction,
                                   progress), ResNet-12
``audio-cnn``  audio               2-D conv blocks over log-mels, masked pool over frames
``mlp``        tabular             multi-layer perceptron
``video-conv`` video               conv4 on every frame, mean (or 1-D conv) over time
=============  ==================  ==========================================================

Pretrained frozen encoders (the ``pretrained`` extra, `metamodal.encoders.pretrained`):
``minilm`` (text), ``efficientnet-lite0`` (image), ``resemblyzer`` (audio). Their features are
computed once per input when the data is prepared, through the on-disk feature cache
(`metamodal.encoders.features`, `metamodal.encoders.cache`); the encoders registered here
under those names are the trainable adapters over the features (`metamodal.encoders.adapter`).

`DEFAULT_ENCODERS` names the encoder of each kind when a config names none (each
`metamodal.data.kinds.ModalityKind`'s ``default_encoder``); `ENCODER_KINDS`
(or `check_encoder` / `encoders_for`) says which kinds an encoder fits; `build_encoder`
checks both and the hyper-parameters.
"""

from metamodal.encoders import (
    adapter,
    audio,
    image,
    sequence,
    tabular,
    text,
    trajectory,
    video,
)
from metamodal.encoders.base import (
    DEFAULT_ENCODERS,
    ENCODER_KINDS,
    Encoder,
    build_encoder,
    check_encoder,
    encoders,
    encoders_for,
    register_encoder,
)

__all__ = [
    "DEFAULT_ENCODERS",
    "ENCODER_KINDS",
    "Encoder",
    "adapter",
    "audio",
    "build_encoder",
    "check_encoder",
    "encoders",
    "encoders_for",
    "image",
    "register_encoder",
    "sequence",
    "tabular",
    "text",
    "trajectory",
    "video",
]

# The package doubles as its registry, so `metamodal.encoders.create(...)` works whether
# `metamodal.encoders` resolves to this package or to the registry object.
create = encoders.create
get = encoders.get
names = encoders.names
register = encoders.register
