"""The run report: one static HTML page per run, with the pictures and sounds it shows.

Where, beside the run's metadata (``amnst.batch.metadata``)::

    {output}/_amnst/reports/date=YYYY-MM-DD/run_id={run_id}/report.html
    {output}/_amnst/reports/date=YYYY-MM-DD/run_id={run_id}/assets/{key}.ogg, {key}.png

No table reader looks into ``reports/``, so the Parquet tables stay readable
by any tool. The page links only its own assets, by relative paths, and needs
no server: it opens from a local folder, by the object URL of ``report.html``
on S3 (served as HTML), or after copying the folder anywhere. Inputs may live
in other buckets, so the page never links to them: it carries previews.
Assets are files rather than data URIs so that a page of many pairs stays
small, and the browser fetches a picture or a sound only when it shows it.

What the page shows, from the run's Parquet records (only the sounds are read
from storage):

- the run: its status, totals (pairs by status, audio seconds, wall time),
  the stages' seconds summed over its pairs, slowest first, and its slowest
  pairs;
- per pair, for the first :data:`PAIR_LIMIT` pairs in manifest order:
  content, style and output as players (Ogg Vorbis, the first
  :data:`PREVIEW_SECONDS`, about 4 kB/s) over their mel spectrograms (PNG),
  the loss curve (inline SVG) and the output's quality measures beside the
  reference rows' (the content itself, a plain mix; ``amnst.engine.quality``).

An asset is named by the hash of the audio file it previews, so a style
shared by many pairs is previewed once. PNGs are written here with numpy and
zlib (8-bit indexed, a magma-like palette), which keeps plotting libraries
out of the service's dependencies.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import heapq
import html
import math
import re
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from amnst.batch import metadata, storage
from amnst.config import AudioConfig

REPORT_PAGE = "report.html"
ASSETS = "assets"
PREVIEW_SECONDS = 30.0
PAIR_LIMIT = 100  # pairs shown in detail; a run's totals count every pair
SLOWEST_PAIRS = 5
STAGES = ("analyse", "style", "optimise", "render", "quality", "write")
# The pictures: mel bands averaged per image row, the widest image (longer
# previews average neighbouring frames), and the dynamic range shown.
IMAGE_BANDS = 2
IMAGE_WIDTH = 800
TOP_DB = 80.0
# Every sound is analysed alike for the page (22050 Hz, 384 bands, power mel).
PAGE_AUDIO = AudioConfig()
# Which way each quality measure is better (amnst.engine.quality): +1 higher, -1 lower.
BETTER = {"chroma_similarity": 1, "onset_correlation": 1, "mfcc_progress": 1, "gram_progress": 1,
          "texture_progress": 1, "mfcc_distance": -1, "gram_distance": -1, "texture_distance": -1,
          "spectral_convergence": -1, "noise_ratio": -1}
# Magma, sampled at ten evenly spaced points; the palette interpolates them.
MAGMA_ANCHORS = ("000004", "180f3e", "451077", "721f81", "9f2f7f", "cd4071", "f1605d", "fd9567",
                 "fec98d", "fcfdbf")

_RUN_FOLDER = re.compile(r"(?:(?P<output>.*)/)?_amnst/[^/]+/date=(?P<date>\d{4}-\d{2}-\d{2})"
                         r"/run_id=(?P<run_id>[^/]+)/?")
_FACT_COLUMNS = ["pair_id", "row", "status", "audio_seconds", "segments", "seconds_total",
                 *(f"seconds_{stage}" for stage in STAGES)]


class ReportError(Exception):
    """No run to report on at the given URI."""


# --- where a run's report lives ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunLocation:
    """A run: the output URI it wrote under, its id and the UTC day it started."""

    output: str
    run_id: str
    date: datetime.date

    @property
    def records(self) -> str:
        """The run's metadata folder: the RUN_URI that ``amnst report`` takes."""
        return metadata.run_partition(self.output, "runs", self.run_id, self.date)

    @property
    def folder(self) -> str:
        return storage.join(self.output, "_amnst", "reports", f"date={self.date:%Y-%m-%d}",
                            f"run_id={self.run_id}")

    @property
    def page(self) -> str:
        return storage.join(self.folder, REPORT_PAGE)


def locate(run_uri: str) -> RunLocation:
    """The run a RUN_URI names.

    A RUN_URI is a run's folder under an output's ``_amnst`` (of any table, or
    of its report): ``OUTPUT/_amnst/runs/date=YYYY-MM-DD/run_id=RUN_ID``; or an
    output URI, which names its newest committed run.
    """
    uri = storage.check_uri(run_uri)
    match = _RUN_FOLDER.fullmatch(uri)
    if match:
        # "_amnst/..." lies in the working folder, "/_amnst/..." in the root.
        output = "." if match["output"] is None else match["output"] or "/"
        return RunLocation(output, match["run_id"], datetime.date.fromisoformat(match["date"]))
    runs = metadata.read_table(uri, "runs", committed_only=True).select(["run_id", "date"])
    if not runs.num_rows:
        raise ReportError(f"{uri}: no committed run there; name a run's folder "
                          "(OUTPUT/_amnst/runs/date=YYYY-MM-DD/run_id=RUN_ID)")
    newest = max(runs.to_pylist(), key=lambda run: run["run_id"])  # run ids sort by start time
    return RunLocation(uri, newest["run_id"], datetime.date.fromisoformat(newest["date"]))


# --- pictures ----------------------------------------------------------------------------------

def palette(anchors: Sequence[str] = MAGMA_ANCHORS, size: int = 256) -> np.ndarray:
    """``size`` colours interpolated linearly between hex ``anchors``, ``(size, 3)`` uint8."""
    points = np.array([[int(anchor[i:i + 2], 16) for i in (0, 2, 4)] for anchor in anchors], float)
    where = np.linspace(0, len(anchors) - 1, size)
    channels = [np.interp(where, np.arange(len(anchors)), points[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=1)).astype(np.uint8)


def png(indices: np.ndarray, colours: np.ndarray) -> bytes:
    """An 8-bit indexed PNG of ``indices`` ``(height, width)`` uint8 into ``colours`` ``(256, 3)``."""
    height, width = indices.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # Each scanline starts with its filter type: 0, none, which suits indexed colour.
    scanlines = np.hstack([np.zeros((height, 1), np.uint8), indices.astype(np.uint8)])
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)  # 8-bit, indexed, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"PLTE", colours.tobytes())
            + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 9)) + chunk(b"IEND", b""))


def block_mean(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Means of consecutive blocks of ``size`` along ``axis`` (the last block may be shorter)."""
    starts = np.arange(0, values.shape[axis], size)
    counts = np.diff(np.append(starts, values.shape[axis]))
    shape = [1] * values.ndim
    shape[axis] = len(counts)
    return np.add.reduceat(values, starts, axis=axis) / counts.reshape(shape)


def mel_image(y: np.ndarray, config: AudioConfig = PAGE_AUDIO) -> np.ndarray:
    """``y``'s mel spectrogram as palette indices ``(n_mels / IMAGE_BANDS, <= IMAGE_WIDTH)`` uint8.

    Power in dB, from :data:`TOP_DB` below the peak (index 0) to the peak
    (255); low frequencies at the bottom.
    """
    from amnst.engine import audio

    power = audio.mel_spectrogram(y, dataclasses.replace(config, mel_power=2.0)).astype(np.float64)
    power = block_mean(power, IMAGE_BANDS, axis=0)
    power = block_mean(power, math.ceil(power.shape[1] / IMAGE_WIDTH), axis=1)
    decibels = 10.0 * np.log10(np.maximum(power, 1e-20))
    relative = np.clip(decibels - decibels.max(), -TOP_DB, 0.0)
    return np.round((relative + TOP_DB) * (255 / TOP_DB)).astype(np.uint8)[::-1]


def sound_assets(y: np.ndarray, config: AudioConfig = PAGE_AUDIO) -> dict[str, bytes]:
    """A sound's preview (``"ogg"``) and mel picture (``"png"``), both of its first
    :data:`PREVIEW_SECONDS`."""
    from amnst.engine import audio

    excerpt = y[:round(PREVIEW_SECONDS * config.sample_rate)]
    return {"ogg": audio.encode(excerpt, config.sample_rate, "ogg"),
            "png": png(mel_image(excerpt, config), palette())}


def loss_svg(curve: Sequence[float], width: int = 360, height: int = 140) -> str:
    """The loss per iteration as an inline SVG line chart, log-scaled when every value is positive.

    Non-finite values (steps the NaN guard rolled back) are left out.
    """
    values = np.asarray(curve, np.float64)
    steps = np.flatnonzero(np.isfinite(values))
    if len(values) < 2 or len(steps) < 2:
        return '<p class="note">no loss curve recorded</p>'
    log = bool(np.all(values[steps] > 0))
    shown = np.log10(values[steps]) if log else values[steps]
    low, high = float(shown.min()), float(shown.max())
    left, top, plot_width, plot_height = 64, 8, width - 72, height - 32
    xs = left + steps / (len(values) - 1) * plot_width
    span = high - low
    ys = top + ((high - shown) / span * plot_height if span else np.full_like(shown, plot_height / 2))
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    label_high, label_low = (10 ** high, 10 ** low) if log else (high, low)
    bottom = top + plot_height
    return (f'<svg class="loss" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img"><title>loss per iteration, mean over segments{" (log scale)" if log else ""}'
            f'</title><rect x="{left}" y="{top}" width="{plot_width}" height="{plot_height}"/>'
            f'<polyline points="{points}"/>'
            f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{label_high:.3g}</text>'
            f'<text x="{left - 4}" y="{bottom}" text-anchor="end">{label_low:.3g}</text>'
            f'<text x="{left}" y="{height - 6}">0</text>'
            f'<text x="{left + plot_width}" y="{height - 6}" text-anchor="end">{len(values) - 1} '
            f'iterations</text></svg>')


# --- a run's facts, in one streaming pass over its pair rows -----------------------------------

@dataclasses.dataclass
class StageTotal:
    """One stage's seconds summed over a run's pairs, and its slowest pair."""

    seconds: float = 0.0
    pairs: int = 0
    slowest_seconds: float = 0.0
    slowest_pair: str = ""


@dataclasses.dataclass
class RunFacts:
    """What the page says of a whole run: counted over every pair row, in bounded memory."""

    statuses: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(metadata.PAIR_STATUSES, 0))
    audio_seconds: float = 0.0
    segments: int = 0
    stages: dict[str, StageTotal] = dataclasses.field(
        default_factory=lambda: {stage: StageTotal() for stage in STAGES})
    # Heaps: the slowest pairs as (seconds_total, pair_id), the first rows as (-row, pair_id).
    slowest: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    first: list[tuple[float, str]] = dataclasses.field(default_factory=list)

    @property
    def pairs(self) -> int:
        return sum(self.statuses.values())

    def add(self, row: dict[str, Any]) -> None:
        """Count one pair row (a dict with at least the columns of ``_FACT_COLUMNS``)."""
        pair = row["pair_id"]
        self.statuses[row["status"]] = self.statuses.get(row["status"], 0) + 1
        if row["status"] == "ok":
            self.audio_seconds += row["audio_seconds"] or 0.0
            self.segments += row["segments"] or 0
        for stage, total in self.stages.items():
            seconds = row[f"seconds_{stage}"]
            if seconds is not None:
                total.seconds += seconds
                total.pairs += 1
                if seconds > total.slowest_seconds:
                    total.slowest_seconds, total.slowest_pair = seconds, pair
        if row["seconds_total"] is not None:
            _keep_largest(self.slowest, (row["seconds_total"], pair), SLOWEST_PAIRS)
        _keep_largest(self.first, (-(row["row"] if row["row"] is not None else math.inf), pair),
                      PAIR_LIMIT)

    def shown(self) -> list[str]:
        """Ids of the pairs shown in detail: the first :data:`PAIR_LIMIT` in manifest order."""
        return [pair for _, pair in sorted(self.first, reverse=True)]


def _keep_largest(heap: list, item: tuple, limit: int) -> None:
    """Keep in ``heap`` the ``limit`` largest items it has been given."""
    if len(heap) < limit:
        heapq.heappush(heap, item)
    else:
        heapq.heappushpop(heap, item)


def gather(batches: Iterable[pa.RecordBatch]) -> RunFacts:
    """A run's facts from its pair rows, which need the columns of ``_FACT_COLUMNS``."""
    facts = RunFacts()
    for row in _rows(batches):
        facts.add(row)
    return facts


def _rows(batches: Iterable[pa.RecordBatch]) -> Iterator[dict[str, Any]]:
    for batch in batches:
        yield from batch.to_pylist()


# --- the page ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Sound:
    """A sound as the page shows it: its assets' name (``assets/{key}.ogg`` and ``.png``) and length."""

    key: str
    seconds: float


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;
text-align:right}td:first-child,th:first-child,.text{text-align:left}dt{font-weight:600}dl{display:grid;
grid-template-columns:max-content auto;gap:.1em 1em}section.pair{border-top:2px solid #444;margin-top:2em}
.sounds{display:grid;grid-template-columns:repeat(3,1fr);gap:1em}figure{margin:0}figure img{width:100%;height:12em;
image-rendering:pixelated;background:#000}audio{width:100%}.beats{font-weight:700;color:#064}
.error,.failed{color:#a00}.note{color:#666}svg.loss rect{fill:none;stroke:#999}
svg.loss polyline{fill:none;stroke:#c33;stroke-width:1.5}svg.loss text{font-size:11px;fill:#444}
"""


def page(location: RunLocation, run: dict[str, Any] | None, facts: RunFacts,
         pairs: list[dict[str, Any]], sounds: dict[str, Sound | str]) -> str:
    """The report's HTML: ``run`` is the run's row (``None`` if it never committed), ``pairs``
    the rows shown in detail, ``sounds`` each of their audio URIs' :class:`Sound` or the
    reason it could not be previewed."""
    title = f"AM-NST run {location.run_id}"
    body = [f"<h1>{_text(title)}</h1>", _run_summary(location, run, facts), _stage_table(facts),
            _slowest_pairs(facts), _pair_table(pairs, facts)]
    body += [_pair_section(index, row, sounds) for index, row in enumerate(pairs) if row["status"] == "ok"]
    body.append(f'<p class="note">Rebuild this page with <code>amnst report '
                f'{_text(location.records)}</code>.</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{_text(title)}</title><style>{_STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _run_summary(location: RunLocation, run: dict[str, Any] | None, facts: RunFacts) -> str:
    counts = ", ".join(f"{count} {status}" for status, count in facts.statuses.items())
    items = [("status", run["status"] if run else "not committed: the run has no run row (yet)"),
             ("pairs", f"{facts.pairs} ({counts})"),
             ("audio", f"{facts.audio_seconds:.1f} s in {facts.segments} segments"),
             ("wall time", f"{run['seconds']:.1f} s" if run and run["seconds"] is not None else "-")]
    if run:
        items += [("started", f"{run['started_at']:%Y-%m-%d %H:%M:%S} UTC"),
                  ("finished", f"{run['finished_at']:%Y-%m-%d %H:%M:%S} UTC"),
                  ("manifest", run["manifest_uri"]), ("preset", run["preset"]),
                  ("model", run["model_id"]), ("nodes", run["nodes"])]
    items.append(("output", location.output))
    return "<dl>" + "".join(f"<dt>{name}</dt><dd>{_text(value)}</dd>" for name, value in items) + "</dl>"


def _stage_table(facts: RunFacts) -> str:
    used = sorted(((name, total) for name, total in facts.stages.items() if total.pairs),
                  key=lambda item: -item[1].seconds)
    if not used:
        return ""
    whole = sum(total.seconds for _, total in used) or 1.0
    lines = [f"<tr><td>{name}</td><td>{total.seconds:.2f}</td><td>{100 * total.seconds / whole:.0f} %</td>"
             f"<td>{total.seconds / total.pairs:.2f}</td><td>{total.slowest_seconds:.2f} "
             f"({_text(total.slowest_pair)})</td></tr>" for name, total in used]
    return ("<h2>Stages, slowest first</h2><table><tr><th>stage</th><th>seconds, all pairs</th>"
            "<th>share</th><th>mean per pair</th><th>slowest pair</th></tr>" + "".join(lines) + "</table>")


def _slowest_pairs(facts: RunFacts) -> str:
    if not facts.slowest:
        return ""
    items = "".join(f"<li>{_text(pair)}: {seconds:.1f} s</li>" for seconds, pair in sorted(facts.slowest,
                                                                                         reverse=True))
    return f"<h2>Slowest pairs</h2><ol>{items}</ol>"


def _pair_table(pairs: list[dict[str, Any]], facts: RunFacts) -> str:
    lines = []
    for index, row in enumerate(pairs):
        name = _text(row["pair_id"])
        link = f'<a href="#pair-{index}">{name}</a>' if row["status"] == "ok" else name
        losses = (f"{row['loss_start']:.4g} &rarr; {row['loss_end']:.4g}"
                  if row["loss_start"] is not None and row["loss_end"] is not None else "")
        lines.append(f'<tr class="{row["status"]}"><td>{link}</td><td>{row["status"]}</td>'
                     f"<td>{_number(row['audio_seconds'], '.1f')}</td><td>{losses}</td>"
                     f"<td>{_number(row['seconds_total'], '.1f')}</td><td class=text>{_text(row['error'] or '')}</td></tr>")
    more = facts.pairs - len(pairs)
    note = (f'<p class="note">The first {len(pairs)} pairs in manifest order; {more} more are in the '
            "run's Parquet records.</p>") if more > 0 else ""
    return ("<h2>Pairs</h2><table><tr><th>pair</th><th>status</th><th>audio s</th><th>loss</th>"
            "<th>seconds</th><th class=text>error</th></tr>" + "".join(lines) + "</table>" + note)


def _pair_section(index: int, row: dict[str, Any], sounds: dict[str, Sound | str]) -> str:
    figures = "".join(_figure(role, sounds[row[f"{role}_uri"]])
                      for role in ("content", "style", "output"))
    return (f'<section class="pair" id="pair-{index}"><h2>{_text(row["pair_id"])}</h2>'
            f'<p class="note">{_text(row["content_uri"])} in the style of {_text(row["style_uri"])}; '
            f'preset {_text(row["preset"])}, {_strength(row)}{row["iterations"]} iterations x '
            f'{row["segments"]} segments</p><div class="sounds">{figures}</div>'
            f"<h3>Loss</h3>{loss_svg(row['loss_curve'] or [])}"
            f"<h3>Quality against the reference rows</h3>{_quality_table(row)}</section>")


def _strength(row: dict[str, Any]) -> str:
    """The pair's strength for its heading; nothing for rows of schema 4 or less, which lack it."""
    return "" if row.get("strength") is None else f"strength {row['strength']:g}, "


def _figure(role: str, sound: Sound | str) -> str:
    if isinstance(sound, str):
        return f'<figure><figcaption>{role}</figcaption><p class="error">{_text(sound)}</p></figure>'
    length = (f"first {PREVIEW_SECONDS:.0f} s of {sound.seconds:.1f} s" if sound.seconds > PREVIEW_SECONDS
              else f"{sound.seconds:.1f} s")
    return (f"<figure><figcaption>{role}, {length}</figcaption>"
            f'<audio controls preload="metadata" src="{ASSETS}/{sound.key}.ogg"></audio>'
            f'<img src="{ASSETS}/{sound.key}.png" alt="mel spectrogram of the {role}"></figure>')


def _quality_table(row: dict[str, Any]) -> str:
    """One line per measure: the output's beside the plain mix's and the content's;
    an output that beats the mix is marked."""
    from amnst.engine.quality import MIX_CONTENT_GAIN

    columns = {"output": row, "plain mix": row["reference_mix"] or {},
               "content": row["reference_content"] or {}}
    lines = []
    for name in metadata.QUALITY_COLUMNS:
        output, mix = row[name], columns["plain mix"].get(name)
        beats = name in BETTER and output is not None and mix is not None and BETTER[name] * (output - mix) > 0
        better = {1: "higher", -1: "lower"}.get(BETTER.get(name, 0), "")
        cells = "".join(f'<td{" class=beats" if beats and label == "output" else ""}>'
                        f"{_number(measures.get(name), '.3f')}</td>" for label, measures in columns.items())
        lines.append(f"<tr><td>{name}</td><td>{better}</td>{cells}</tr>")
    return ("<table><tr><th>measure</th><th>better</th><th>output</th><th>plain mix</th><th>content</th>"
            f"</tr>{''.join(lines)}</table><p class=\"note\">Bold: the output beats the plain mix ("
            f"{MIX_CONTENT_GAIN:g} content + {1 - MIX_CONTENT_GAIN:g} style).</p>")


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def _text(value: Any) -> str:
    return html.escape(str(value))


# --- building and writing ----------------------------------------------------------------------

def write_report(location: RunLocation) -> str:
    """Build a run's page from its records and write it with its assets; returns the page's URI.

    A sound that cannot be read or decoded is named on the page instead of
    failing it; storage failures writing the page raise ``StorageError``.
    """
    runs = list(_rows(metadata.scan_run(location.output, "runs", location.run_id)))
    facts = gather(metadata.scan_run(location.output, "pairs", location.run_id, columns=_FACT_COLUMNS))
    if not runs and not facts.pairs:
        raise ReportError(f"{location.records}: no records of run {location.run_id}")
    shown = facts.shown()
    order = {pair: index for index, pair in enumerate(shown)}
    pairs = sorted(_rows(metadata.scan_run(location.output, "pairs", location.run_id, pair_ids=shown)),
                   key=lambda row: order[row["pair_id"]])
    sounds: dict[str, Sound | str] = {}
    for row in pairs:
        if row["status"] == "ok":
            for uri in (row["content_uri"], row["style_uri"], row["output_uri"]):
                if uri not in sounds:
                    sounds[uri] = _write_sound(location.folder, uri)
    text = page(location, runs[0] if runs else None, facts, pairs, sounds)
    storage.write_bytes(location.page, text.encode(), content_type="text/html; charset=utf-8")
    return location.page


_CONTENT_TYPES = {"ogg": "audio/ogg", "png": "image/png"}


def _write_sound(folder: str, uri: str) -> Sound | str:
    """Write the preview and picture of the audio at ``uri``; the reason if it cannot be read."""
    from amnst.engine import audio

    try:
        data = storage.read_bytes(uri)
        y = audio.load(data, PAGE_AUDIO, name=uri)
    except (storage.StorageError, audio.AudioError) as error:
        return f"cannot preview: {error}"
    key = hashlib.sha256(data).hexdigest()[:16]
    for suffix, blob in sound_assets(y).items():
        storage.write_bytes(storage.join(folder, ASSETS, f"{key}.{suffix}"), blob,
                            content_type=_CONTENT_TYPES[suffix])
    return Sound(key, len(y) / PAGE_AUDIO.sample_rate)
