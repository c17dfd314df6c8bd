"""The yardstick of a transfer: how far it moves toward the style beyond what mixing can.

Plainly mixing the style into the content is the cheapest way toward the
style, and its style share is a knob along a curve: more style, less of the
content's harmony and rhythm. A transfer method with a strength knob traces a
curve of its own. On each evaluation pair this module measures both curves,
and scores a method's point by its **margin over the mix frontier**: its
progress toward the style minus the most progress any mix reaches while
keeping at least the method's own chroma similarity and onset correlation.
A positive margin on a style measure is style movement mixing cannot buy at
that price. The fixed floors (chroma >= 0.95, onsets >= 0.8) give a second
view: the most progress each curve reaches while meeting both.

Shares, strengths and measures are in ``amnst.engine.quality``'s units; progress on
each of three families (MFCC statistics, the independent network's Grams,
auditory texture statistics), none of them a representation any loss optimises.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from amnst.engine import quality
from amnst.bench import evaluation
from amnst.config import Preset, get_preset

MIX_SHARES = tuple(round(0.1 * k, 1) for k in range(10))  # 0 is the content itself
STRENGTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
STYLE_MEASURES = ("mfcc_progress", "gram_progress", "texture_progress")
FLOORS = {"chroma_similarity": 0.95, "onset_correlation": 0.8}
KNOBS = ("blend", "stop")


@dataclass(frozen=True)
class Method:
    """A transfer method and how its strength knob turns.

    ``knob="blend"``: one optimisation, rendered at each strength (the
    configuration's ``strength``). ``"stop"``: strength ``s`` stops the
    optimisation after ``round(s * iterations)`` of its iterations and renders
    at full strength (Grinstein et al., 2018).
    """

    name: str
    preset: Preset
    knob: str = "blend"

    def __post_init__(self) -> None:
        if self.knob not in KNOBS:
            raise ValueError(f"knob must be one of {KNOBS}, got {self.knob!r}")

    def at(self, strength: float) -> Preset:
        """The preset that gives this method's output at ``strength``."""
        if self.knob == "stop":
            return self.preset.with_overrides(iterations=round(strength * self.preset.nst.iterations), strength=1.0)
        return self.preset.with_overrides(strength=strength)


def _designs() -> list[Method]:
    """The objective designs measured against the mix (docs/quality.md), each as
    overrides of ``default``, and ``default`` itself."""
    default = get_preset("default")
    before = default.with_overrides(  # the default preset until the frontier replaced it
        content_layers=(0, 2), content_weight=1.0, spectral_style_weight=0.0, random_style_weight=0.0,
        pitch_weight=0.0, onset_weight=0.0, init="content", phase="random")
    content_phase = before.with_overrides(phase="content")
    music_loss = content_phase.with_overrides(content_layers=(), pitch_weight=1000.0, onset_weight=1000.0,
                                              spectral_style_weight=100.0)
    return [
        Method("before: CNN content, random phase", before),
        Method("(d) inversion from the content's phase", content_phase),
        Method("(a) pitch+onset content, spectral style", music_loss),
        Method("(b) style only, stopped early", music_loss.with_overrides(pitch_weight=0.0, onset_weight=0.0),
               knob="stop"),
        Method("(c) (a) + random shallow networks", music_loss.with_overrides(random_style_weight=100.0)),
        Method("default: (c) started from a mix", default),
    ]


DESIGNS = _designs()


def at_precision(method: Method, precision: str) -> Method:
    """``method`` computing its CNN at ``precision``, named ``"[precision] NAME"``."""
    return dataclasses.replace(method, name=f"[{precision}] {method.name}",
                               preset=method.preset.with_overrides(precision=precision))


def precision_shift(figures: dict[str, Any], precisions: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """How far each method's results move from the first of ``precisions`` to the
    others (methods named by :func:`at_precision`), from :func:`run`'s figures: per
    measure kept and style measure, the largest change of the median over pairs at
    any strength (``median``), and the largest change of any one pair (``pair``)."""
    measures = (*FLOORS, *STYLE_MEASURES)
    rows = {(row["method"], row["pair"], row["level"]): row for row in figures["rows"]}
    base = f"[{precisions[0]}] "
    shifts: dict[str, dict[str, float]] = {}
    for method, points in figures["curves"].items():
        if not method.startswith(base):
            continue
        name = method.removeprefix(base)
        for other in precisions[1:]:
            twin = f"[{other}] {name}"
            medians = list(zip(points, figures["curves"][twin]))
            pairs = [(row, rows[(twin, pair, level)]) for (m, pair, level), row in rows.items() if m == method]
            shifts[f"{name}: {precisions[0]} -> {other}"] = {
                **{f"median_{m}": max(abs(b[m] - a[m]) for a, b in medians) for m in measures},
                **{f"pair_{m}": max(abs(b[m] - a[m]) for a, b in pairs) for m in measures}}
    return shifts


def sweep_pair(name: str, content: np.ndarray, style: np.ndarray, methods: Iterable[Method],
               transfer_for: Callable[[Preset], Any], strengths: tuple[float, ...] = STRENGTHS) -> list[dict[str, Any]]:
    """Every measure of the mix at each of ``MIX_SHARES`` and of each method at each
    strength, on one pair: one row each, with ``pair``, ``method`` and ``level``.
    ``transfer_for`` gives the compiled ``StyleTransfer`` of a preset."""
    from amnst.engine.nst import optimise_piece
    from amnst.batch.pipeline import analyse, render

    config = get_preset("default").audio
    anchors = {config: quality.Anchors.of(content, style, config)}
    rows = [{"pair": name, "method": "mix", "level": share,
             **quality.measure(quality.plain_mix(content, style, share), anchors[config], config)}
            for share in MIX_SHARES]
    for method in methods:
        preset = method.preset
        if preset.audio not in anchors:
            anchors[preset.audio] = quality.Anchors.of(content, style, preset.audio)
        segments = analyse(content, preset.audio).segments
        targets = transfer_for(preset).style_targets(analyse(style, preset.audio).segments)
        optimised = None
        for strength in strengths:
            chosen = method.at(strength)
            start = time.perf_counter()
            if optimised is None or method.knob == "stop":
                optimised = optimise_piece(transfer_for(chosen), segments, targets) if chosen.nst.iterations \
                    else None
            mels = segments if optimised is None else optimised.mels
            y, mel = render(mels, content, chosen.audio, chosen.nst)
            loss = {} if optimised is None else {"loss_start": float(optimised.loss[0].mean()),
                                                 "loss_end": float(optimised.loss[-1].mean())}
            rows.append({"pair": name, "method": method.name, "level": strength,
                         "seconds": time.perf_counter() - start, **loss,
                         **quality.measure(y, anchors[chosen.audio], chosen.audio, mel)})
    return rows


def mix_frontier(mix_rows: list[dict[str, Any]], chroma: float, onsets: float, measure: str) -> float:
    """The most ``measure`` any mix reaches while keeping at least ``chroma`` and
    ``onsets``; the content itself (share 0) always qualifies, so at least its 0."""
    kept = [row[measure] for row in mix_rows
            if row["chroma_similarity"] >= chroma and row["onset_correlation"] >= onsets]
    return max(kept + [0.0])


def with_margins(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each method row with ``margin_<measure>`` for every style measure: its progress
    minus :func:`mix_frontier` at its own chroma and onsets, on its pair."""
    mixes: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["method"] == "mix":
            mixes.setdefault(row["pair"], []).append(row)
    marked = []
    for row in rows:
        if row["method"] != "mix":
            row = {**row, **{f"margin_{m}": row[m] - mix_frontier(
                mixes[row["pair"]], row["chroma_similarity"], row["onset_correlation"], m) for m in STYLE_MEASURES}}
        marked.append(row)
    return marked


def best_at_floors(rows: list[dict[str, Any]], measure: str) -> float | None:
    """The most ``measure`` among ``rows`` that meet both :data:`FLOORS`; None if none does."""
    kept = [row[measure] for row in rows if all(row[k] >= floor for k, floor in FLOORS.items())]
    return max(kept) if kept else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method and level: medians over pairs of every measure and margin, and on how
    many pairs every margin is above 0 (``pairs_beating_mix``). Per method: the median
    over pairs of its best progress at the floors, beside the mix's."""
    levels: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for row in rows:
        levels.setdefault(row["method"], {}).setdefault(row["level"], []).append(row)
    curves = {}
    for method, by_level in levels.items():
        curves[method] = []
        for level, mine in sorted(by_level.items()):
            numeric = [k for k, v in mine[0].items() if isinstance(v, float) and k != "level"]
            point: dict[str, Any] = {"level": level, **{k: float(np.median([r[k] for r in mine])) for k in numeric}}
            if method != "mix":
                point["pairs_beating_mix"] = sum(all(r[f"margin_{m}"] > 0 for m in STYLE_MEASURES) for r in mine)
                point["pairs_on_floors"] = sum(all(r[k] >= f for k, f in FLOORS.items()) for r in mine)
                point["pairs"] = len(mine)
            curves[method].append(point)
    pairs = sorted({row["pair"] for row in rows})
    floors = {}
    for method in levels:
        floors[method] = {}
        for m in STYLE_MEASURES:
            best = [best_at_floors([r for r in rows if r["pair"] == p and r["method"] == method], m) for p in pairs]
            reached = [b for b in best if b is not None]
            floors[method][m] = {"median": float(np.median(reached)) if reached else None,
                                 "pairs_reaching_floors": len(reached)}
    return {"curves": curves, "floors": floors}


def run(methods: list[Method], pairs: list[evaluation.EvaluationPair], seconds: float,
        weights: str | None = None, strengths: tuple[float, ...] = STRENGTHS) -> dict[str, Any]:
    """Sweep every method and the mix over ``pairs`` of ``seconds`` each: rows with
    margins, and :func:`summarise`'s curves and floors."""
    from amnst.engine.model import load_model
    from amnst.engine.nst import StyleTransfer

    transfers: dict[Preset, StyleTransfer] = {}

    def transfer_for(preset: Preset) -> StyleTransfer:
        # The strength knob changes no compiled step; the stopping knob's
        # iteration counts each get one (a key by name would share them).
        key = dataclasses.replace(preset, name="", nst=dataclasses.replace(preset.nst, strength=1.0))
        if key not in transfers:
            transfers[key] = StyleTransfer(load_model(weights, seed=preset.nst.seed), preset.nst, audio=preset.audio)
        return transfers[key]

    rows = []
    for pair in pairs:
        content, style = evaluation.evaluation_pair(pair.name, seconds)
        rows.extend(sweep_pair(pair.name, content, style, methods, transfer_for, strengths))
    rows = with_margins(rows)
    return {"rows": rows, **summarise(rows), "strengths": list(strengths), "mix_shares": list(MIX_SHARES),
            "floors_used": FLOORS}


def table(figures: dict[str, Any]) -> str:
    """One line per method and level: medians of chroma, onsets, progress and margins,
    and the pairs beating the mix on every measure; then the progress reached at the floors."""
    short = {"chroma_similarity": "chroma", "onset_correlation": "onsets", "mfcc_progress": "MFCC",
             "gram_progress": "Gram", "texture_progress": "texture"}
    columns = ["chroma_similarity", "onset_correlation", *STYLE_MEASURES, *(f"margin_{m}" for m in STYLE_MEASURES)]
    heads = [short.get(c, "+" + short[c.removeprefix("margin_")]) for c in columns]
    lines = ["method".ljust(34) + "level".rjust(6) + "".join(h.rjust(9) for h in heads) + "  beat mix"]
    for method, points in figures["curves"].items():
        for point in points:
            cells = "".join((f"{point[c]:.3f}" if c in point else "-").rjust(9) for c in columns)
            beat = f"{point['pairs_beating_mix']}/{point['pairs']}" if "pairs" in point else ""
            lines.append(method[:34].ljust(34) + f"{point['level']:6.1f}" + cells + "  " + beat)
    lines.append("")
    lines.append("best progress at chroma >= 0.95 and onsets >= 0.8 (median over pairs reaching the floors)")
    for method, floors in figures["floors"].items():
        cells = "".join(("-" if f["median"] is None else f"{f['median']:.3f}").rjust(9) + f" ({f['pairs_reaching_floors']})"
                        for f in floors.values())
        lines.append(method[:34].ljust(34) + cells)
    for name, shift in figures.get("precision_shift", {}).items():
        lines.append("")
        lines.append(f"{name}: largest move of a median at any strength (of one pair)")
        lines.append("".join(f"{short.get(m, m)} {shift['median_' + m]:.4f} ({shift['pair_' + m]:.4f})  "
                             for m in (*FLOORS, *STYLE_MEASURES)))
    return "\n".join(lines)


def plot(figures: dict[str, Any], path: str) -> None:
    """Write the curves as a PNG: progress on each style measure (rows) against chroma
    and onsets (columns), medians over pairs, one line per method and the mix's beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keeps = ("chroma_similarity", "onset_correlation")
    fig, axes = plt.subplots(len(STYLE_MEASURES), len(keeps), figsize=(10, 11), squeeze=False)
    for row, measure in enumerate(STYLE_MEASURES):
        for column, keep in enumerate(keeps):
            ax = axes[row][column]
            for method, points in figures["curves"].items():
                style = dict(color="black", linestyle="--", marker="s") if method == "mix" else dict(marker="o")
                ax.plot([p[keep] for p in points], [p[measure] for p in points], label=method, **style)
            ax.axvline(FLOORS[keep], color="grey", linewidth=0.8, linestyle=":")
            ax.axhline(0.0, color="grey", linewidth=0.8)
            ax.set_xlabel(keep.replace("_", " ") + " to the content")
            ax.set_ylabel(measure.replace("_", " ") + " toward the style")
            ax.invert_xaxis()
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Style progress against what is kept: medians over the evaluation pairs\n"
                 "(mix: style share 0 to 0.9; methods: strength 0 to 1)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

