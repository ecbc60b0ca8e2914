"""Renderers of the synthetic multimodal dataset: one pure function per modality.

Each renderer turns the *positions* of the attribute values it reveals (an index into the full
five-value list of that attribute, see :data:`ATTRIBUTES`) plus a NumPy ``Generator`` into one
sample's media. Nuisance (placement, rotation, background, jitter, distractors) comes only from
the generator, scaled by ``noise`` (0 = clean; 0.5 = default; 1-2 = hard). The renderers never
look at the class, so a modality carries exactly the attributes it is given.
"""

from __future__ import annotations

import math

import numpy as np

#: Every attribute and its five values, ordered so that evenly spaced picks (used when a dataset
#: takes fewer than five values per attribute) are the most distinct ones.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "cross", "square", "ring", "triangle"),
    "colour": ("red", "yellow", "green", "purple", "blue"),
    "habitat": ("forest", "coast", "marsh", "mountain", "desert"),
    "pitch": ("deep", "low", "mid", "high", "shrill"),
    "gait": ("loop", "spiral", "zigzag", "figure8", "glide"),
    "size": ("tiny", "small", "medium", "large", "huge"),
}

_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "yellow": (0.92, 0.84, 0.10),
    "green": (0.12, 0.72, 0.20),
    "purple": (0.58, 0.18, 0.80),
    "blue": (0.12, 0.28, 0.92),
}
_PALETTE = np.array([_RGB[name] for name in ATTRIBUTES["colour"]], dtype=np.float64)

_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "yellow": ("yellow", "golden", "amber"),
    "green": ("green", "emerald", "olive"),
    "purple": ("purple", "violet", "lilac"),
    "blue": ("blue", "azure", "cobalt"),
    "forest": ("forest", "woodland", "woods"),
    "coast": ("coast", "shore", "beach"),
    "marsh": ("marsh", "swamp", "wetland"),
    "mountain": ("mountains", "highlands", "cliffs"),
    "desert": ("desert", "dunes", "sands"),
}

_BOTH_TEMPLATES = (
    "a {c} creature seen in the {h}",
    "{c} animal spotted near the {h}",
    "found in the {h} this one is {c}",
    "observed in the {h} a {c} specimen",
    "the {h} is home to this {c} beast",
    "{c} coloured and living in the {h}",
    "a {c} visitor of the {h}",
    "recorded in the {h} with a {c} coat",
)
_COLOUR_TEMPLATES = ("a {c} creature", "mostly {c} in colour", "its coat is {c}", "a {c} one")
_HABITAT_TEMPLATES = ("seen in the {h}", "lives in the {h}", "a dweller of the {h}")
_BLANK_TEMPLATES = ("an animal was recorded", "no clear sighting", "a creature passed by")
# Words that carry no class information (size and shape words included on purpose: captions
# never reveal size or shape, so these only distract).
_DISTRACTORS = (
    "quietly", "often", "morning", "evening", "rare", "young", "old", "near", "small", "large",
    "tall", "round", "striped", "spotted", "fast", "slow", "again", "two", "three", "reported",
    "briefly", "wild", "alone", "together", "today", "maybe", "clearly", "shy",
)


def render_image(
    shape: int, colour: int, rng: np.random.Generator, *, size: int, noise: float
) -> np.ndarray:
    """Draw one shape in one colour at a random place, angle and scale on a noisy background.

    Args:
        shape: position of the shape value in ``ATTRIBUTES["shape"]`` (0-4).
        colour: position of the colour value in ``ATTRIBUTES["colour"]`` (0-4).
        rng: the sample's generator (all nuisance comes from it).
        size: side of the square image in pixels.
        noise: nuisance strength (background texture, colour jitter, distractor blob).

    Returns:
        uint8 ``[size, size, 3]`` RGB image.

    Example:
        >>> render_image(0, 0, np.random.default_rng(0), size=16, noise=0.5).shape
        (16, 16, 3)
    """
    grid = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(grid, grid, indexing="ij")

    base = rng.uniform(0.3, 0.7) + rng.normal(0.0, 0.06 * noise, size=3)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ramp = (math.cos(angle) * x + math.sin(angle) * y)[..., None] * rng.uniform(0.0, 0.2 * noise)
    image = base + ramp + rng.normal(0.0, 0.1 * noise, size=(size, size, 3))

    if rng.random() < min(1.0, 0.6 * noise):  # a small blob of a random palette colour
        radius = rng.uniform(0.1, 0.2)
        cx, cy = rng.uniform(-0.85, 0.85, size=2)
        dist = (np.hypot(x - cx, y - cy) - radius) * size / 2.0
        alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]
        image = image * (1.0 - alpha) + _PALETTE[rng.integers(len(_PALETTE))] * alpha

    scale = rng.uniform(0.35, 0.6)
    cx, cy = rng.uniform(-(0.95 - scale), 0.95 - scale, size=2)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    cos, sin = math.cos(theta), math.sin(theta)
    u = ((x - cx) * cos + (y - cy) * sin) / scale
    v = (-(x - cx) * sin + (y - cy) * cos) / scale
    dist = _shape_distance(ATTRIBUTES["shape"][shape], u, v) * scale * size / 2.0  # in pixels
    alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]
    rgb = _PALETTE[colour] * math.exp(rng.normal(0.0, 0.1 * noise))
    rgb = rgb + rng.normal(0.0, 0.05 * noise, size=3)
    image = image * (1.0 - alpha) + rgb * alpha
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _shape_distance(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside, in shape units) of points ``(u, v)`` to a unit shape."""
    if name == "circle":
        return np.hypot(u, v) - 0.9
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.72
    if name == "ring":
        return np.abs(np.hypot(u, v) - 0.68) - 0.24
    if name == "cross":
        bar = np.maximum(np.abs(u) - 0.95, np.abs(v) - 0.28)
        return np.minimum(bar, np.maximum(np.abs(u) - 0.28, np.abs(v) - 0.95))
    if name == "triangle":
        angles = np.array([0.5, 7.0 / 6.0, 11.0 / 6.0]) * math.pi
        proj = u[..., None] * np.cos(angles) + v[..., None] * np.sin(angles)
        return proj.max(axis=-1) - 0.5
    raise ValueError(f"unknown shape {name!r}")


def render_caption(colour: int | None, habitat: int | None, rng: np.random.Generator, *,
                   noise: float) -> str:
    """Write a short caption naming the colour and the habitat, paraphrased, with distractors.

    Each attribute is left out with probability ``0.2 * noise``; synonyms and templates are
    chosen at random; about ``2 * noise`` uninformative words are inserted.

    Args:
        colour: position in ``ATTRIBUTES["colour"]``, or None to never mention it.
        habitat: position in ``ATTRIBUTES["habitat"]``, or None to never mention it.
        rng: the sample's generator.
        noise: nuisance strength.

    Returns:
        a lowercase caption of words separated by single spaces.

    Example:
        >>> render_caption(0, 0, np.random.default_rng(0), noise=0.0)
        'found in the forest this one is red'
    """
    drop = min(0.7, 0.2 * noise)
    c = None if colour is None or rng.random() < drop else ATTRIBUTES["colour"][colour]
    h = None if habitat is None or rng.random() < drop else ATTRIBUTES["habitat"][habitat]
    if c is not None and h is not None:
        templates = _BOTH_TEMPLATES
    elif c is not None:
        templates = _COLOUR_TEMPLATES
    elif h is not None:
        templates = _HABITAT_TEMPLATES
    else:
        templates = _BLANK_TEMPLATES
    template = templates[rng.integers(len(templates))]
    c_word = _SYNONYMS[c][rng.integers(3)] if c is not None else ""
    h_word = _SYNONYMS[h][rng.integers(3)] if h is not None else ""
    words = template.format(c=c_word, h=h_word).split()
    for _ in range(rng.poisson(2.0 * noise)):
        word = _DISTRACTORS[rng.integers(len(_DISTRACTORS))]
        words.insert(int(rng.integers(len(words) + 1)), word)
    return " ".join(words)


def render_call(pitch: int, habitat: int, rng: np.random.Generator, *, sample_rate: int,
                seconds: float, noise: float) -> np.ndarray:
    """Synthesise a call: pulses of a harmonic tone over the habitat's background ambience.

    The tone's fundamental is set by ``pitch`` (220 Hz x 1.52 per level, jittered); the ambience
    is noise with a spectral bump whose centre is set by ``habitat`` (180 Hz to 2.8 kHz).
    Pulse count, timing and length, vibrato and the levels are nuisance; white noise grows with
    ``noise``.

    Args:
        pitch: position in ``ATTRIBUTES["pitch"]``.
        habitat: position in ``ATTRIBUTES["habitat"]``.
        rng: the sample's generator.
        sample_rate: samples per second.
        seconds: clip length.
        noise: nuisance strength.

    Returns:
        float32 ``[round(sample_rate * seconds)]`` waveform with peak 0.9.

    Example:
        >>> render_call(2, 0, np.random.default_rng(0), sample_rate=8000, seconds=0.5,
        ...             noise=0.5).shape
        (4000,)
    """
    n = int(round(sample_rate * seconds))
    t = np.arange(n, dtype=np.float64) / sample_rate

    f0 = 220.0 * 1.52**pitch * math.exp(rng.normal(0.0, 0.01 + 0.04 * noise))
    vibrato = 1.0 + 0.012 * np.sin(2.0 * math.pi * rng.uniform(4.0, 8.0) * t + rng.uniform(0, 7))
    phase = 2.0 * math.pi * np.cumsum(f0 * vibrato) / sample_rate
    tone = np.zeros(n)
    for harmonic, amplitude in ((1, 1.0), (2, 0.4), (3, 0.15)):
        if harmonic * f0 < 0.45 * sample_rate:
            tone += amplitude * np.sin(harmonic * phase)

    pulses = int(rng.integers(1, 5))
    length = rng.uniform(0.06, 0.2, size=pulses) * seconds / 0.5
    start = rng.uniform(0.0, seconds - length)
    position = (t[None, :] - start[:, None]) / length[:, None]
    inside = (position >= 0.0) & (position <= 1.0)
    envelope = np.clip((np.sin(math.pi * np.clip(position, 0.0, 1.0)) ** 2 * inside).sum(0), 0, 1)
    call = tone * envelope

    centre = 180.0 * (2800.0 / 180.0) ** (habitat / 4.0)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    bump = np.exp(-0.5 * ((np.log2(freqs + 1.0) - math.log2(centre)) / 0.4) ** 2)
    ambience = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * bump, n)
    ambience *= rng.uniform(0.15, 0.3) / max(float(np.sqrt(np.mean(ambience**2))), 1e-12)
    hiss = rng.normal(0.0, 0.02 + 0.12 * noise, size=n)

    wave = call + ambience + hiss
    return (0.9 * wave / max(float(np.abs(wave).max()), 1e-12)).astype(np.float32)


def render_track(gait: int, size: int, rng: np.random.Generator, *, length: int,
                 noise: float) -> np.ndarray:
    """Trace a 2-D path: the gait's motion pattern at the size's scale, randomly placed.

    Patterns: loop (circling with drift), spiral, zigzag, figure8, glide (gently curved line).
    Scale grows 1.6x per size level. Rotation, mirror, offset, pattern frequency, time warping
    (uneven speed), point jitter and a drifting random walk are nuisance.

    Args:
        gait: position in ``ATTRIBUTES["gait"]``.
        size: position in ``ATTRIBUTES["size"]``.
        rng: the sample's generator.
        length: number of points ``T``.
        noise: nuisance strength.

    Returns:
        float32 ``[T, 2]`` positions.

    Example:
        >>> render_track(0, 2, np.random.default_rng(0), length=64, noise=0.5).shape
        (64, 2)
    """
    t = np.linspace(0.0, 1.0, length)
    warp = min(0.9, 0.6 * noise) * rng.uniform()
    t = t + warp * np.sin(2.0 * math.pi * t + rng.uniform(0.0, 2.0 * math.pi)) / (2.0 * math.pi)
    name = ATTRIBUTES["gait"][gait]
    if name == "loop":
        turns = rng.uniform(2.0, 3.0)
        x = np.cos(2 * math.pi * turns * t) + 3.0 * rng.uniform(0.8, 1.5) * t
        y = np.sin(2 * math.pi * turns * t)
    elif name == "spiral":
        turns, radius = rng.uniform(2.0, 3.0), 0.15 + 1.2 * t
        x, y = radius * np.cos(2 * math.pi * turns * t), radius * np.sin(2 * math.pi * turns * t)
    elif name == "zigzag":
        periods = rng.uniform(3.0, 5.0)
        x = 4.0 * t
        y = 1.2 * (2.0 * np.abs((periods * t + rng.uniform()) % 1.0 - 0.5)) - 0.6
    elif name == "figure8":
        turns = rng.uniform(1.0, 2.0)
        x, y = np.sin(2 * math.pi * turns * t), 0.5 * np.sin(4 * math.pi * turns * t)
    elif name == "glide":
        x, y = 4.0 * t, rng.uniform(-1.0, 1.0) * (t - 0.5) ** 2
    else:
        raise ValueError(f"unknown gait {name!r}")
    path = np.stack([x, y], axis=1)
    if rng.random() < 0.5:
        path[:, 1] = -path[:, 1]
    scale = 0.5 * 1.6**size * math.exp(rng.normal(0.0, 0.05 + 0.15 * noise))
    theta = rng.uniform(0.0, 2.0 * math.pi)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    path = (path - path.mean(0)) @ rotation.T * scale + rng.normal(0.0, 1.5, size=2)
    path += rng.normal(0.0, (0.02 + 0.08 * noise) * scale, size=path.shape)
    path += np.cumsum(rng.normal(0.0, 0.01 * noise * scale, size=path.shape), axis=0)
    return path.astype(np.float32)


#: Columns of the tabular modality, in order.
MEASUREMENTS = ("body_length_cm", "body_width_cm", "weight_g", "air_temp_c")


def render_measurements(shape: int, size: int, rng: np.random.Generator, *,
                        noise: float) -> tuple[float, float, float, float]:
    """Measure a body: length and width from size and shape (elongation), weight, temperature.

    Size sets the scale (8 cm x 1.6 per level); shape sets the elongation length/width
    (1.5 ** (level / 2)); each measurement has multiplicative log-normal error ``0.03 + 0.12
    * noise``. The air temperature carries no class information.

    Args:
        shape: position in ``ATTRIBUTES["shape"]``.
        size: position in ``ATTRIBUTES["size"]``.
        rng: the sample's generator.
        noise: nuisance strength.

    Returns:
        ``(body_length_cm, body_width_cm, weight_g, air_temp_c)``, rounded to 0.01 / 0.1.

    Example:
        >>> len(render_measurements(0, 0, np.random.default_rng(0), noise=0.5))
        4
    """
    sigma = 0.03 + 0.12 * noise
    scale, elongation = 8.0 * 1.6**size, 1.5 ** (shape / 2.0)
    err = np.exp(rng.normal(0.0, sigma, size=3))
    length = scale * math.sqrt(elongation) * err[0]
    width = scale / math.sqrt(elongation) * err[1]
    weight = 0.3 * length * width**2 * err[2]
    temperature = rng.normal(15.0, 8.0)
    return round(length, 2), round(width, 2), round(weight, 1), round(temperature, 1)
