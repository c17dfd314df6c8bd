"""Validated configuration: audio parameters, NST parameters and presets.

Every stage takes its parameters from these frozen dataclasses, so a run's
effective configuration is one value that can be hashed (resume fingerprints)
and written to metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Layer indices of the seed CNN (positions in ``model.layers``), see model.py.
NUM_LAYERS = 23
# Layers whose output is a 4-D feature map (B, H, W, C) usable for a Gram matrix.
FEATURE_MAP_LAYERS = tuple(range(0, 20))
# The narrowest segment every feature-map layer accepts: the six stride-2
# pools must leave conv8's input at least 2 frames wide.
MIN_FITTED_SEGMENT_FRAMES = 192
# Fitted segment widths are rounded up to a multiple of this, which bounds the
# distinct shapes a compiled step sees (XLA compiles one program per shape).
FITTED_FRAMES_QUANTUM = 16
# Seeds go to NumPy's RandomState and TensorFlow's initialisers: an integer in
# [0, 2**32), the range RandomState accepts.
SEED_LIMIT = 2**32


class ConfigError(ValueError):
    """An invalid parameter value; the message names the parameter."""


def _layer_indices(name: str, layers: Any) -> tuple[int, ...]:
    """``layers`` as a tuple of ints; anything but a sequence of integers raises ConfigError."""
    try:
        return tuple(operator.index(i) for i in layers)
    except TypeError:
        raise ConfigError(f"{name}={layers!r} must be a sequence of integer layer indices") from None


def _check_layers(name: str, layers: tuple[int, ...]) -> None:
    for index in layers:
        _require(index in FEATURE_MAP_LAYERS, name, layers,
                 f"holds {index}; layer indices must be feature-map layers "
                 f"{FEATURE_MAP_LAYERS[0]}..{FEATURE_MAP_LAYERS[-1]}")
    _require(len(set(layers)) == len(layers), name, layers, "has duplicates")


def _require(ok: Any, name: str, value: Any, reason: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} {reason}")


def _is_number(value: Any) -> bool:
    """A real number that is not a bool (True is not a weight)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _require_number(name: str, value: Any, ok: Callable[[float], bool], reason: str) -> None:
    """``value`` must be a finite real number for which ``ok(value)`` holds.

    Every float field goes through here, so NaN and infinities are refused
    everywhere, not only where a comparison happens to fail for NaN.
    """
    _require(_is_number(value), name, value, "must be a number")
    finite = math.isfinite(value)
    # An interval ("must be in [0, 1]") already says NaN and the infinities are out;
    # a one-sided bound ("must be >= 0") does not, and inf would satisfy it.
    _require(finite or reason.startswith("must be in "), name, value, "must be finite")
    _require(finite and ok(value), name, value, reason)


def _require_int(name: str, value: Any, minimum: int, maximum: int | None = None, reason: str = "") -> None:
    """``value`` must be an integer (not a bool, not a float) in ``[minimum, maximum)``."""
    _require(isinstance(value, numbers.Integral) and not isinstance(value, bool), name, value,
             "must be an integer")
    if maximum is None:
        _require(value >= minimum, name, value, reason or f"must be >= {minimum}")
    else:
        _require(minimum <= value < maximum, name, value, reason or f"must be in [{minimum}, {maximum})")


@dataclass(frozen=True)
class AudioConfig:
    """Signal parameters shared by analysis, segmentation and inversion.

    ``segment_frames`` frames of ``hop_length`` samples make one CNN input
    (431 frames = 5.0039 s at 22050 Hz). ``overlap_frames`` consecutive
    segments share, and stitching crossfades over them.

    ``fit_segments``: a piece keeps the number of segments that
    ``segment_frames``-wide ones need, but they shrink to the narrowest common
    width that still covers it (rounded up to a multiple of
    ``FITTED_FRAMES_QUANTUM``, at least ``MIN_FITTED_SEGMENT_FRAMES``), so
    compute follows the audio rather than whole segments: a 10 s piece is
    three 320-frame segments, not three of 431 frames padded with 4 s of
    silence. The CNN is convolutional up to its feature-map layers, and the
    Grams are normalised per position, so any width gives comparable losses.
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 384
    fmin: float = 0.0
    fmax: float | None = None
    segment_frames: int = 431
    overlap_frames: int = 0
    # Exponent of the STFT magnitude the mel is built from: 2 is the power mel
    # of the original NST code, 1 the magnitude mel its classifier was trained on.
    mel_power: float = 2.0
    fit_segments: bool = False

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "n_mels"):
            _require_int(name, getattr(self, name), 1, reason="must be positive")
        _require_int("hop_length", self.hop_length, 1, self.n_fft + 1, "must be in (0, n_fft]")
        nyquist = self.sample_rate / 2
        _require_number("fmin", self.fmin, lambda v: 0 <= v < nyquist, "must be in [0, sample_rate/2)")
        if self.fmax is not None:
            _require_number("fmax", self.fmax, lambda v: self.fmin < v <= nyquist, "must be in (fmin, sample_rate/2]")
        _require_int("segment_frames", self.segment_frames, 2, reason="must be > 1")
        _require_int("overlap_frames", self.overlap_frames, 0, self.segment_frames // 2 + 1,
                     "must be in [0, segment_frames/2]")
        _require(_is_number(self.mel_power) and self.mel_power in (1.0, 2.0), "mel_power", self.mel_power,
                 "must be 1 or 2")
        _require(not self.fit_segments or self.overlap_frames <= MIN_FITTED_SEGMENT_FRAMES // 2,
                 "overlap_frames", self.overlap_frames,
                 f"must be at most {MIN_FITTED_SEGMENT_FRAMES // 2} (half the narrowest fitted segment) "
                 "with fit_segments")

    @property
    def segment_seconds(self) -> float:
        return self.segment_frames * self.hop_length / self.sample_rate


INITS = ("content", "style", "mix", "zero", "random")
OPTIMIZERS = ("sgd", "adam")
PARAMETERIZATIONS = ("linear", "log")
CNN_INPUTS = ("mel", "log")
GRAM_NORMS = ("none", "positions")
INVERSIONS = ("librosa", "fast")
PHASES = ("random", "content")
# The CNN's arithmetic: float32, bfloat16, or bfloat16 where the device computes
# it natively (``amnst.engine.precision``).
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class NSTConfig:
    """Parameters of the style-transfer optimisation.

    ``gram_norm="none"`` is the original's pooled, un-normalised Gram over the
    whole batch, which couples a pair's segments: they must be optimised as one
    batch. ``"positions"`` divides each segment's Gram by its number of
    positions, which makes every segment's loss independent of the others.
    """

    content_layers: tuple[int, ...] = (0, 2)
    style_layers: tuple[int, ...] = (4, 8, 12, 16)
    content_weight: float = 50.0
    style_weight: float = 10.0
    iterations: int = 100
    learning_rate: float = 1e-3
    decay_steps: int = 10
    decay_rate: float = 1.0
    optimizer: str = "sgd"
    init: str = "content"
    # ``init="mix"`` starts from this share of the style's mel, brought to the
    # content's level segment by segment, added to the rest of the content's.
    init_style_share: float = 0.5
    parameterization: str = "linear"
    # What the CNN sees, for the content and for the style losses: the mel
    # itself, or ``log(mel + LOG_INPUT_OFFSET)``, which gives quiet bands and
    # frames (where an ambience's texture lives) a say comparable to the loud
    # partials of the music.
    content_input: str = "mel"
    style_input: str = "mel"
    gram_norm: str = "none"
    # Weight of the spectral style loss: the Gram matrix of the log-mel's
    # bands (``log(mel + LOG_INPUT_OFFSET)``, bands as channels, frames as
    # positions), matched like a layer's. The bands' levels and co-variation
    # are the timbre (what MFCCs summarise) that the CNN's 2x2 kernels see only
    # piecewise. Needs ``gram_norm="positions"``.
    spectral_style_weight: float = 0.0
    # Weight of the style loss on random shallow networks (Antognini, Hoffman and
    # Weiss, 2019): the Grams of random dilated 1-D convolutions over the
    # log-mel's frames (``nst.RANDOM_NET_DILATIONS``), statistics of the
    # texture at several time scales that the CNN's 2x2 kernels cannot see.
    # Needs ``gram_norm="positions"``.
    random_style_weight: float = 0.0
    # Weights of the content loss on the music alone (``amnst.engine.musical``): the
    # target's pitch classes and its onset envelope against the content's,
    # each a relative error. Unlike the CNN layers' content loss, they leave
    # each band's level, the timbre, free to move.
    pitch_weight: float = 0.0
    onset_weight: float = 0.0
    # Divide each layer's content loss by the content features' mean square
    # and each style loss by the style Gram's, so that weights are relative
    # errors, comparable across layers, representations and networks.
    relative_loss: bool = False
    seed: int = 0
    # NaN/inf guard: roll back this many steps and halve the learning rate,
    # giving up on a segment after max_retries rollbacks in a row.
    rollback_steps: int = 2
    max_retries: int = 20
    inversion: str = "librosa"
    griffin_lim_iters: int = 32
    # Where phase retrieval starts: librosa's random phase, or the content's own
    # STFT phase (``invert.content_phase``), which keeps the notes that phase
    # retrieval from random phase smears. Needs ``inversion="fast"``.
    phase: str = "random"
    # How far toward the optimised mel the output goes, as a dry/wet control:
    # the rendered mel is ``content ** (1 - strength) * optimised ** strength``
    # band by band (``render.blend``). 0 is the content's own reconstruction.
    strength: float = 1.0
    # The type of the CNN's convolutions and feature maps. The optimised target,
    # Adam's moments, the Grams and the losses stay float32 whatever it is.
    precision: str = "fp32"
    segments_per_batch: int = 4

    def __post_init__(self) -> None:
        for name in ("content_layers", "style_layers"):
            object.__setattr__(self, name, _layer_indices(name, getattr(self, name)))
        _check_layers("content_layers", self.content_layers)
        _check_layers("style_layers", self.style_layers)
        for name in ("content_weight", "style_weight", "spectral_style_weight", "random_style_weight",
                     "pitch_weight", "onset_weight"):
            _require_number(name, getattr(self, name), lambda v: v >= 0, "must be >= 0")
        _require_int("iterations", self.iterations, 0)
        _require_number("learning_rate", self.learning_rate, lambda v: v > 0, "must be > 0")
        _require_int("decay_steps", self.decay_steps, 1)
        _require_number("decay_rate", self.decay_rate, lambda v: 0 < v <= 1, "must be in (0, 1]")
        _require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"must be one of {OPTIMIZERS}")
        _require(self.init in INITS, "init", self.init, f"must be one of {INITS}")
        _require_number("init_style_share", self.init_style_share, lambda v: 0 < v < 1, "must be in (0, 1)")
        _require(self.parameterization in PARAMETERIZATIONS, "parameterization",
                 self.parameterization, f"must be one of {PARAMETERIZATIONS}")
        _require(self.content_input in CNN_INPUTS, "content_input", self.content_input,
                 f"must be one of {CNN_INPUTS}")
        _require(self.style_input in CNN_INPUTS, "style_input", self.style_input, f"must be one of {CNN_INPUTS}")
        _require(self.gram_norm in GRAM_NORMS, "gram_norm", self.gram_norm, f"must be one of {GRAM_NORMS}")
        _require(not self.spectral_style_weight or self.gram_norm == "positions", "spectral_style_weight",
                 self.spectral_style_weight, 'needs gram_norm="positions"')
        _require(not self.random_style_weight or self.gram_norm == "positions", "random_style_weight",
                 self.random_style_weight, 'needs gram_norm="positions"')
        _require(isinstance(self.relative_loss, bool), "relative_loss", self.relative_loss, "must be true or false")
        _require_int("seed", self.seed, 0, SEED_LIMIT, "must be an integer in [0, 2**32)")
        _require_int("rollback_steps", self.rollback_steps, 1)
        _require_int("max_retries", self.max_retries, 0)
        _require(self.inversion in INVERSIONS, "inversion", self.inversion, f"must be one of {INVERSIONS}")
        _require_int("griffin_lim_iters", self.griffin_lim_iters, 0)
        _require(self.phase in PHASES, "phase", self.phase, f"must be one of {PHASES}")
        _require(self.phase == "random" or self.inversion == "fast", "phase", self.phase,
                 'needs inversion="fast"')
        _require_number("strength", self.strength, lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
        _require(self.precision in PRECISIONS, "precision", self.precision, f"must be one of {PRECISIONS}")
        _require_int("segments_per_batch", self.segments_per_batch, 1)
        self._check_objective()

    def _check_objective(self) -> None:
        """Refuse a configuration whose optimisation has nothing (or nothing of the style) to do."""
        # Without layers and without the log-mel's own style terms the run would
        # be the content's reconstruction, silently: a style transfer with no style.
        _require(self.style_layers or self.spectral_style_weight or self.random_style_weight, "style_layers",
                 self.style_layers, "leaves no style loss: style_layers is empty and spectral_style_weight "
                 "and random_style_weight are 0")
        # Every term reads the CNN's features through at least one layer.
        _require(self.content_layers or self.style_layers, "style_layers", self.style_layers,
                 "and content_layers=() cannot both be empty: the transfer reads at least one CNN layer")
        content = (bool(self.content_layers) and self.content_weight > 0) or self.pitch_weight > 0 \
            or self.onset_weight > 0
        style = (bool(self.style_layers) and self.style_weight > 0) or self.spectral_style_weight > 0 \
            or self.random_style_weight > 0
        if not (content or style):
            raise ConfigError("no loss to optimise: every content weight (content_weight on content_layers, "
                              "pitch_weight, onset_weight) and style weight (style_weight on style_layers, "
                              "spectral_style_weight, random_style_weight) is 0")

    @property
    def couples_segments(self) -> bool:
        """True when a pair's segments must be optimised together (pooled Grams)."""
        return self.gram_norm == "none"


@dataclass(frozen=True)
class Preset:
    name: str
    audio: AudioConfig = field(default_factory=AudioConfig)
    nst: NSTConfig = field(default_factory=NSTConfig)

    def with_overrides(self, **overrides: Any) -> "Preset":
        """A copy with NST (or audio) fields replaced; unknown names raise ConfigError."""
        audio_names = {f.name for f in dataclasses.fields(AudioConfig)}
        nst_names = {f.name for f in dataclasses.fields(NSTConfig)}
        unknown = sorted(set(overrides) - audio_names - nst_names)
        if unknown:
            raise ConfigError(f"unknown parameter(s): {', '.join(unknown)}")
        audio = {k: v for k, v in overrides.items() if k in audio_names}
        nst = {k: v for k, v in overrides.items() if k in nst_names}
        return Preset(self.name, dataclasses.replace(self.audio, **audio),
                      dataclasses.replace(self.nst, **nst))

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.name, "audio": dataclasses.asdict(self.audio),
                "nst": dataclasses.asdict(self.nst)}

    def fingerprint(self) -> str:
        """A stable hash of the effective configuration.

        The preset's name and ``segments_per_batch`` (how segments are grouped
        for execution, not what is computed) are left out.
        """
        nst = dataclasses.asdict(self.nst)
        del nst["segments_per_batch"]
        body = {"audio": dataclasses.asdict(self.audio), "nst": nst}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


PRESETS: dict[str, Preset] = {
    # The original research algorithm, exactly: power mel into the CNN,
    # pooled un-normalised Grams, plain SGD, concatenated segments and librosa
    # inversion. Its only departures: the NaN rollback takes effect, and the
    # last partial segment is padded rather than dropped.
    "seed": Preset("seed", AudioConfig(), NSTConfig()),
    # Converges where "seed" diverges, and moves toward the style further than
    # mixing the two files can at the same cost to the music (docs/quality.md):
    # the magnitude mel the CNN was trained on, a log-parameterised (always
    # positive) target started from a mix of content and style, per-position
    # Grams (segments independent, so per-segment fan-out is exact) of the CNN,
    # of the log-mel's bands and of random shallow networks, a content loss on
    # pitch classes and onsets instead of CNN features (which pin the timbre),
    # Adam, crossfaded fitted segments, and inversion from the content's phase.
    "default": Preset(
        "default",
        AudioConfig(mel_power=1.0, overlap_frames=32, fit_segments=True),
        NSTConfig(
            content_layers=(),
            style_layers=(4, 8, 12, 16),
            style_weight=10.0,
            spectral_style_weight=100.0,
            random_style_weight=100.0,
            pitch_weight=1000.0,
            onset_weight=1000.0,
            iterations=35,
            learning_rate=0.1,
            optimizer="adam",
            init="mix",
            init_style_share=0.3,
            parameterization="log",
            gram_norm="positions",
            relative_loss=True,
            inversion="fast",
            # Phase retrieval starts from the content's phase and holds it where the
            # level is the content's: half of librosa's 32 iterations move no quality
            # measure's median by more than 0.004 (docs/quality.md).
            griffin_lim_iters=16,
            phase="content",
            # The strongest strength at which the margin over the mix frontier is
            # positive on every style measure on at least 7 of the 10 evaluation
            # pairs, with chroma, onsets and progress on target (docs/quality.md says
            # which pair sits at the onset floor).
            strength=0.6,
            # bfloat16 convolutions where the device computes them natively: the
            # quality measures move by less than 0.01 (docs/performance.md).
            precision="auto",
        ),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}") from None


def parse_layers(text: str) -> tuple[int, ...]:
    """Parse ``"0,2"`` into ``(0, 2)``; an empty string is no layers."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"layer list {text!r} must be comma-separated integers") from None
