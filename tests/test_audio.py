"""Tests for amnst.engine.audio: decoding, mixing, resampling, validation, mel, segments, encoding."""

from __future__ import annotations

import io
import warnings

import librosa
import numpy as np
import pytest
import soundfile as sf

from amnst.engine import audio
from amnst import synth
from amnst.config import AudioConfig

SR = 22050
CONFIG = AudioConfig()
OVERLAPPED = AudioConfig(overlap_frames=32)
FITTED = AudioConfig(overlap_frames=32, fit_segments=True)
# 16-bit PCM: one quantisation step plus libsndfile's 32767-vs-32768 scaling.
PCM16_ATOL = 2 / 32768
# (container, subtype, lossless)
FORMATS = {
    "wav": ("WAV", "PCM_16", True),
    "flac": ("FLAC", "PCM_16", True),
    "ogg": ("OGG", "VORBIS", False),
    "mp3": ("MP3", "MPEG_LAYER_III", False),
}


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return synth.music(2.0, 0, SR)


def _file_bytes(samples: np.ndarray, sample_rate: int, container: str = "WAV",
                subtype: str = "FLOAT") -> bytes:
    """``samples`` (``(n,)`` or ``(n, channels)``) written as a sound file in memory."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()


def _error(source, name=None) -> str:
    with pytest.raises(audio.AudioError) as info:
        audio.load(source, CONFIG, name)
    return str(info.value)


# --------------------------------------------------------------------------
# decode, mono, resample


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_from_path_and_from_bytes(tmp_path, clip, fmt):
    container, subtype, lossless = FORMATS[fmt]
    data = _file_bytes(clip, SR, container, subtype)
    path = tmp_path / f"clip.{fmt}"
    path.write_bytes(data)

    from_path, path_rate = audio.decode(path)
    from_str, _ = audio.decode(str(path))
    from_bytes, bytes_rate = audio.decode(data)
    assert path_rate == bytes_rate == SR
    assert from_path.dtype == np.float32 and from_path.ndim == 2 and from_path.shape[0] == 1
    np.testing.assert_array_equal(from_path, from_bytes)
    np.testing.assert_array_equal(from_path, from_str)
    if lossless:
        np.testing.assert_allclose(from_path[0], clip, atol=PCM16_ATOL, rtol=0)
    else:
        common = min(from_path.shape[1], clip.size)
        assert abs(from_path.shape[1] - clip.size) < 0.05 * SR
        assert np.corrcoef(from_path[0, :common], clip[:common])[0, 1] > 0.98


def test_stereo_mixes_to_mono(clip):
    stereo = np.stack([clip, 0.5 * clip], axis=1)
    samples, _ = audio.decode(_file_bytes(stereo, SR))
    assert samples.shape == (2, clip.size)
    np.testing.assert_allclose(audio.to_mono(samples), 0.75 * clip, atol=1e-6)
    np.testing.assert_allclose(audio.load(_file_bytes(stereo, SR), CONFIG), 0.75 * clip, atol=1e-6)


def test_six_channels_mix_to_mono(clip):
    gains = np.arange(1, 7) / 6
    surround = clip[:, None] * gains
    samples, _ = audio.decode(_file_bytes(surround, SR))
    assert samples.shape == (6, clip.size)
    mono = audio.to_mono(samples)
    assert mono.dtype == np.float32 and mono.shape == clip.shape
    np.testing.assert_allclose(mono, gains.mean() * clip, atol=1e-6)


def test_to_mono_passes_mono_through(clip):
    assert audio.to_mono(clip) is clip


@pytest.mark.parametrize("orig_sr", [8000, 44100, 96000])
def test_resampling_gives_target_rate_duration_and_waveform(orig_sr):
    seconds = 1.5
    # Noise-free hum is the same continuous-time signal at any sample rate.
    source = synth.hum(seconds, 0, orig_sr, noise_level=0.0)
    expected = synth.hum(seconds, 0, SR, noise_level=0.0)
    y = audio.load(_file_bytes(source, orig_sr), CONFIG)
    assert y.dtype == np.float32
    assert y.shape == (round(seconds * SR),)
    inner = slice(SR // 10, -SR // 10)  # away from the resampler's edge effects
    np.testing.assert_allclose(y[inner], expected[inner], atol=0.01)


def test_resample_is_identity_at_same_rate(clip):
    assert audio.resample(clip, SR, SR) is clip


# --------------------------------------------------------------------------
# validation: every error names its input


def test_empty_bytes():
    assert _error(b"", "upload.wav").startswith("upload.wav: empty")
    assert _error(b"").startswith("<bytes>: empty")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    assert _error(path).startswith(f"{path}: empty")


def test_missing_file(tmp_path):
    path = tmp_path / "missing.wav"
    assert _error(path).startswith(f"{path}: no such file")
    assert _error(tmp_path) == f"{tmp_path}: is a directory"  # not "no such file"


def test_random_bytes_named_mp3(tmp_path):
    path = tmp_path / "noise.mp3"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert _error(path).startswith(f"{path}: cannot decode audio")
    from_bytes = _error(path.read_bytes(), "noise.mp3")
    assert from_bytes.startswith("noise.mp3: cannot decode audio (") and "BytesIO" not in from_bytes


@pytest.mark.parametrize("cut", [4, 12, 30])
def test_truncated_wav_header(tmp_path, clip, cut):
    path = tmp_path / "truncated.wav"
    path.write_bytes(_file_bytes(clip, SR, "WAV", "PCM_16")[:cut])
    assert _error(path).startswith(f"{path}: cannot decode audio")


def test_header_without_samples(clip):
    # A complete 44-byte header whose data chunk is cut off entirely.
    message = _error(_file_bytes(clip, SR, "WAV", "PCM_16")[:44], "header.wav")
    assert message.startswith("header.wav: no audio samples")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_wav_holding_non_finite_samples(tmp_path, clip, bad):
    samples = clip.copy()
    samples[1000] = bad
    path = tmp_path / "bad.wav"
    path.write_bytes(_file_bytes(samples, SR, "WAV", "FLOAT"))
    assert _error(path).startswith(f"{path}: audio holds NaN or infinite")


def test_silence():
    silent = np.zeros(SR, dtype=np.float32)
    assert _error(_file_bytes(silent, SR), "quiet.wav").startswith("quiet.wav: audio is silent")
    # Just above the threshold (about -100 dBFS) is not silence.
    audio.validate(silent + 2 * audio.SILENCE_PEAK, CONFIG, "faint")


def test_too_short(clip):
    short = clip[:CONFIG.n_fft - 1]
    assert _error(_file_bytes(short, SR), "blip.wav").startswith("blip.wav: too short")
    audio.validate(clip[:CONFIG.n_fft], CONFIG, "just long enough")


def test_validate_arrays_directly(clip):
    assert audio.validate(clip, CONFIG, "ok") is clip
    for bad, reason in [(np.zeros(0, np.float32), "no audio samples"),
                        (np.full(SR, np.inf, np.float32), "audio holds NaN or infinite")]:
        with pytest.raises(audio.AudioError, match=f"^array: {reason}"):
            audio.validate(bad, CONFIG, "array")


# --------------------------------------------------------------------------
# mel spectrogram


@pytest.fixture(scope="module")
def long_clip() -> np.ndarray:
    return synth.music(6.0, 1, SR, timbre="organ")


def test_power_mel_matches_librosa(long_clip):
    mel = audio.mel_spectrogram(long_clip, AudioConfig(mel_power=2.0))
    expected = librosa.feature.melspectrogram(y=long_clip, sr=SR, n_fft=1024, hop_length=256,
                                              n_mels=384, power=2.0)
    assert mel.dtype == np.float32
    assert mel.shape == (384, audio.num_frames(long_clip.size, CONFIG)) == expected.shape
    np.testing.assert_allclose(mel, expected, rtol=1e-5, atol=1e-6 * expected.max())


def test_magnitude_mel_matches_librosa(long_clip):
    mel = audio.mel_spectrogram(long_clip, AudioConfig(mel_power=1.0))
    magnitude = np.abs(librosa.stft(long_clip, n_fft=1024, hop_length=256))
    expected = librosa.feature.melspectrogram(S=magnitude, sr=SR, n_mels=384)
    assert mel.shape == expected.shape
    np.testing.assert_allclose(mel, expected, rtol=1e-5, atol=1e-6 * expected.max())


def test_mel_basis_is_cached_and_read_only():
    basis = audio.mel_basis(CONFIG)
    assert basis is audio.mel_basis(AudioConfig())
    assert basis.shape == (384, 513)
    with pytest.raises(ValueError):
        basis[0, 0] = 1.0


@pytest.mark.parametrize(("n_samples", "frames"), [(1024, 5), (22050, 87), (110250, 431)])
def test_num_frames(n_samples, frames):
    assert audio.num_frames(n_samples, CONFIG) == frames
    assert audio.mel_spectrogram(np.ones(n_samples, np.float32), CONFIG).shape[1] == frames


# --------------------------------------------------------------------------
# segment and stitch


def _random_mel(n_frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((CONFIG.n_mels, n_frames), dtype=np.float32)


@pytest.mark.parametrize(("n_frames", "overlap", "count"), [
    (1, 0, 1), (100, 0, 1), (431, 0, 1), (432, 0, 2), (862, 0, 2), (863, 0, 3),
    (10, 32, 1), (431, 32, 1), (432, 32, 2), (830, 32, 2), (831, 32, 3),
])
def test_num_segments(n_frames, overlap, count):
    config = AudioConfig(overlap_frames=overlap)
    assert audio.num_segments(n_frames, config) == count
    assert audio.segment(_random_mel(n_frames), config).shape == (count, 384, 431)


@pytest.mark.parametrize(("n_frames", "count", "width"), [
    (1, 1, 192), (200, 1, 208), (431, 1, 431), (432, 2, 240), (862, 3, 320), (2584, 7, 400),
    (10336, 26, 431),
])
def test_fitted_segments_keep_the_count_and_shrink_to_cover_the_piece(n_frames, count, width):
    assert audio.segment_layout(n_frames, FITTED) == (count, width)
    assert audio.num_segments(n_frames, FITTED) == count
    assert audio.segment(_random_mel(n_frames), FITTED).shape == (count, 384, width)
    covered = count * width - (count - 1) * 32
    assert n_frames <= covered < n_frames + count * 16 or width in (192, 431)


def test_segments_without_overlap_tile_the_mel_and_pad_with_zeros():
    mel = _random_mel(1000)
    segments = audio.segment(mel, CONFIG)
    assert segments.shape == (3, 384, 431) and segments.dtype == np.float32
    np.testing.assert_array_equal(segments[0], mel[:, :431])
    np.testing.assert_array_equal(segments[1], mel[:, 431:862])
    np.testing.assert_array_equal(segments[2, :, :138], mel[:, 862:])
    assert not segments[2, :, 138:].any()


def test_mel_shorter_than_a_segment_gives_one_padded_segment():
    mel = _random_mel(50)
    for config in (CONFIG, OVERLAPPED):
        segments = audio.segment(mel, config)
        assert segments.shape == (1, 384, 431)
        np.testing.assert_array_equal(segments[0, :, :50], mel)
        assert not segments[0, :, 50:].any()


def test_overlapping_segments_share_frames():
    mel = _random_mel(2000)
    segments = audio.segment(mel, OVERLAPPED)
    step = 431 - 32
    for index in range(1, len(segments)):
        np.testing.assert_array_equal(segments[index, :, :32], segments[index - 1, :, -32:])
        start = index * step
        stop = min(start + 431, 2000)
        np.testing.assert_array_equal(segments[index, :, :stop - start], mel[:, start:stop])


@pytest.mark.parametrize("config", [CONFIG, OVERLAPPED, AudioConfig(overlap_frames=215), FITTED],
                         ids=["no-overlap", "overlap-32", "overlap-max", "fitted"])
@pytest.mark.parametrize("n_frames", [1, 300, 431, 432, 830, 831, 1293, 2500])
def test_no_frame_is_dropped(config, n_frames):
    mel = _random_mel(n_frames, seed=n_frames)
    segments = audio.segment(mel, config)
    step = segments.shape[2] - config.overlap_frames
    for frame in range(n_frames):
        index = min(frame // step, len(segments) - 1)
        np.testing.assert_array_equal(segments[index, :, frame - index * step], mel[:, frame])


@pytest.mark.parametrize("config", [CONFIG, OVERLAPPED, AudioConfig(overlap_frames=215), FITTED],
                         ids=["no-overlap", "overlap-32", "overlap-max", "fitted"])
@pytest.mark.parametrize("n_frames", [1, 300, 431, 432, 830, 831, 1293, 2500])
def test_stitching_unmodified_segments_reproduces_the_mel(config, n_frames):
    mel = _random_mel(n_frames, seed=n_frames)
    stitched = audio.stitch(audio.segment(mel, config), n_frames, config)
    assert stitched.shape == mel.shape and stitched.dtype == np.float32
    np.testing.assert_allclose(stitched, mel, rtol=1e-6, atol=1e-7)


def test_stitch_real_mel_round_trip(long_clip):
    mel = audio.mel_spectrogram(long_clip, CONFIG)
    for config in (CONFIG, OVERLAPPED, FITTED):
        stitched = audio.stitch(audio.segment(mel, config), mel.shape[1], config)
        np.testing.assert_allclose(stitched, mel, rtol=1e-5, atol=1e-6 * mel.max())


def test_stitch_crossfades_linearly_between_segments():
    # Segment i is constant i: inside each overlap the result must ramp from
    # one value to the next, with gains summing to one (mean is the midpoint).
    segments = np.stack([np.full((2, 431), i, np.float32) for i in range(3)])
    stitched = audio.stitch(segments, 3 * 431 - 2 * 32, OVERLAPPED)
    step = 431 - 32
    for index in (1, 2):
        ramp = stitched[0, index * step:index * step + 32]
        assert np.all(np.diff(ramp) > 0)
        assert index - 1 < ramp.min() and ramp.max() < index
        assert ramp.mean() == pytest.approx(index - 0.5)
        assert stitched[0, index * step + 32] == index


def test_stitch_rejects_wrong_shapes():
    segments = audio.segment(_random_mel(500), CONFIG)
    with pytest.raises(ValueError, match="frames"):
        audio.stitch(segments[:, :, :400], 500, CONFIG)
    with pytest.raises(ValueError, match="863 frames are 3 segments of 431 frames, got 2"):
        audio.stitch(segments, 863, CONFIG)
    with pytest.raises(ValueError, match="500 frames are 2 segments of 272 frames, got 2 of 431"):
        audio.stitch(segments, 500, FITTED)


# --------------------------------------------------------------------------
# encode and prevent_clipping


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_encode_round_trips_through_decode(clip, fmt):
    data = audio.encode(clip, SR, fmt)
    assert sf.info(io.BytesIO(data)).format == audio.ENCODINGS[fmt][0]
    samples, sample_rate = audio.decode(data)
    assert sample_rate == SR and samples.shape == (1, clip.size)
    np.testing.assert_allclose(samples[0], clip, atol=PCM16_ATOL, rtol=0)


def test_encode_clips_out_of_range_samples(clip):
    samples, _ = audio.decode(audio.encode(2 * clip, SR, "wav"))
    assert np.max(np.abs(samples)) <= 1.0
    np.testing.assert_allclose(samples[0], np.clip(2 * clip, -1, 1), atol=PCM16_ATOL, rtol=0)


def test_encode_rejects_bad_input(clip):
    with pytest.raises(ValueError, match="mp3"):
        audio.encode(clip, SR, "mp3")
    bad = clip.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        audio.encode(bad, SR, "wav")


def test_prevent_clipping(clip):
    loud = 3 * clip
    limited = audio.prevent_clipping(loud)
    assert np.max(np.abs(limited)) == pytest.approx(0.98)
    np.testing.assert_allclose(limited / np.max(np.abs(limited)), loud / np.max(np.abs(loud)),
                               rtol=1e-6)
    assert np.max(np.abs(audio.prevent_clipping(loud, ceiling=0.5))) == pytest.approx(0.5)
    assert audio.prevent_clipping(clip) is clip  # peak 0.8 is already below the ceiling
    assert audio.prevent_clipping(np.zeros(0, np.float32)).size == 0


def test_blend_is_a_dry_wet_control_in_decibels():
    rng = np.random.default_rng(0)
    content, transferred = rng.uniform(0.01, 1, (2, 8, 5)).astype(np.float32)
    assert np.array_equal(audio.blend(content, transferred, 0.0), content)
    assert np.array_equal(audio.blend(content, transferred, 1.0), transferred)
    np.testing.assert_allclose(audio.blend(content, transferred, 0.5), np.sqrt(content * transferred), rtol=1e-5)
    with pytest.raises(ValueError, match="strength"):
        audio.blend(content, transferred, 1.5)


def test_a_truncated_wav_decodes_with_a_warning_naming_the_shortfall(clip):
    whole = audio.encode(clip, 22050, "wav")
    with pytest.warns(audio.AudioWarning, match=r"cut\.wav: truncated: its header promises \d+ frames"):
        y = audio.load(whole[:len(whole) // 2], AudioConfig(), name="cut.wav")
    assert 0 < y.size < clip.size
    with warnings.catch_warnings():
        warnings.simplefilter("error", audio.AudioWarning)
        audio.load(whole, AudioConfig(), name="whole.wav")
        audio.load(audio.encode(clip, 22050, "flac"), AudioConfig(), name="whole.flac")
