"""``amnst bench quality``: presets and variants over the synthesized evaluation set,
beside reference rows, summarised against the quality targets.

With ``--frontier`` the sweep of :mod:`amnst.bench.frontier` runs instead.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from amnst.bench import evaluation
from amnst.bench.measure import machine
from amnst.bench.variants import parse_variant
from amnst.config import get_preset
from amnst.engine.nst import StyleTransfer


QUALITY_TARGETS = {"chroma_similarity": 0.95, "onset_correlation": 0.8, "mfcc_progress": 0.3}


def bench_quality(quick: bool = False, presets: tuple[str, ...] = ("seed", "default"),
                  variants: tuple[str, ...] = (), weights: str | None = None,
                  seconds: float = 10.0, frontier: bool = False, plot: str | None = None,
                  designs: tuple[str, ...] = (), precisions: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every preset (and variant) over the synthesized evaluation set, with reference rows.

    With ``frontier``: instead, the trade-off yardstick (:mod:`amnst.bench.frontier`):
    the mix and every design of ``frontier.DESIGNS`` (and variant) swept over
    their strengths, with margins over the mix frontier; ``plot`` is where
    the picture goes (none if not given). ``designs``: only the designs whose name
    contains one of these (default: all). ``precisions``: every design and variant
    at each of these precisions (``NSTConfig.precision``), with how far each
    design's medians move between them (``frontier.precision_shift``).

    A variant is ``"base:key=value,key=value"`` (base preset, then overrides).
    Reference rows: the content itself; a plain mix (0.7 content + 0.3
    style), which keeps the content and already moves toward the style: a
    transfer has to beat it; and the content equalised to the style's
    long-term spectrum. Returns per-pair rows and per-method means.
    """
    from amnst.engine import quality
    from amnst.engine.model import load_model
    from amnst.batch.pipeline import transfer_pair

    pairs = evaluation.EVALUATION_PAIRS[:3] if quick else evaluation.EVALUATION_PAIRS
    if frontier:
        return _bench_frontier(pairs, variants, weights, seconds, plot, quick, designs, precisions)
    methods = {name: get_preset(name) for name in presets}
    methods.update({variant: parse_variant(variant) for variant in variants})
    if quick:
        methods = {name: p.with_overrides(iterations=min(p.nst.iterations, 10)) for name, p in methods.items()}
    transfers = {name: StyleTransfer(load_model(weights, seed=p.nst.seed), p.nst, audio=p.audio) for name, p in methods.items()}
    reference_config = get_preset("default").audio
    for name, preset in methods.items():
        # Untimed: a method's first call traces its step, and its first pair would pay for it.
        transfer_pair(*evaluation.evaluation_pair(pairs[0].name, preset.audio.segment_seconds / 2), preset,
                      transfers[name])
    rows = []
    for index, pair in enumerate(pairs):
        content, style = evaluation.evaluation_pair(pair.name, seconds)
        # Content and style are analysed once per pair for every output measured with the
        # same audio configuration (the Gram signature segments as the preset does).
        anchors = {config: quality.Anchors.of(content, style, config)
                   for config in {reference_config, *(p.audio for p in methods.values())}}
        references = {"content": content, "mix": quality.plain_mix(content, style),
                      "equalised": quality.equalised(content, style, reference_config)}
        for name, output in references.items():
            rows.append({"pair": pair.name, "method": name,
                         **quality.measure(output, anchors[reference_config], reference_config)})
        # Each pair starts at the next method: variants doing the same work as
        # `default` took 0.88-0.91x its time when `default` always ran first.
        names = list(methods)
        for name in names[index % len(names):] + names[:index % len(names)]:
            preset = methods[name]
            start = time.perf_counter()
            outcome = transfer_pair(content, style, preset, transfers[name])
            rows.append({"pair": pair.name, "method": name, "seconds": time.perf_counter() - start,
                         "loss_start": float(outcome.result.loss[0].mean()),
                         "loss_end": float(outcome.result.loss[-1].mean()),
                         **quality.measure(outcome.audio, anchors[preset.audio], preset.audio, outcome.mel)})
    return {"benchmark": "quality", "machine": machine(), "seconds_per_pair": seconds, "weights": weights,
            "rows": rows, "summary": _quality_summary(rows)}


def _bench_frontier(pairs: list[evaluation.EvaluationPair], variants: tuple[str, ...], weights: str | None,
                    seconds: float, plot: str | None, quick: bool, designs: tuple[str, ...] = (),
                    precisions: tuple[str, ...] = ()) -> dict[str, Any]:
    """``bench quality --frontier``: see :func:`bench_quality`."""
    from amnst.bench import frontier

    methods = [m for m in frontier.DESIGNS if not designs or any(d in m.name for d in designs)]
    methods += [frontier.Method(v, parse_variant(v)) for v in variants]
    if precisions:
        methods = [frontier.at_precision(m, precision) for m in methods for precision in precisions]
    strengths = frontier.STRENGTHS
    if quick:
        methods = [dataclasses.replace(m, preset=m.preset.with_overrides(iterations=min(m.preset.nst.iterations, 4)))
                   for m in methods[:2]]
        strengths = (0.0, 0.5, 1.0)
    figures = frontier.run(methods, pairs, seconds, weights, strengths)
    if len(precisions) > 1:
        figures["precision_shift"] = frontier.precision_shift(figures, precisions)
    if plot:
        frontier.plot(figures, plot)
    return {"benchmark": "quality-frontier", "machine": machine(), "seconds_per_pair": seconds,
            "weights": weights, "plot": plot, **figures}


def _quality_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method: the mean of every measure, the worst pair on each target, on how
    many pairs each target is met (``pairs_ok``), and whether all are met on every pair."""
    summary = {}
    mix = {row["pair"]: row for row in rows if row["method"] == "mix"}
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        numeric = [k for k, v in mine[0].items() if isinstance(v, float)]
        entry: dict[str, Any] = {k: float(np.mean([row[k] for row in mine])) for k in numeric}
        entry.update({f"worst_{k}": float(min(row[k] for row in mine)) for k in QUALITY_TARGETS})
        met = [_targets_met(row, mix[row["pair"]]) for row in mine]
        entry["pairs_ok"] = {target: sum(m[target] for m in met) for target in met[0]}
        entry["targets_met"] = all(all(m.values()) for m in met)
        summary[method] = entry
    return summary


def _targets_met(row: dict[str, Any], mix: dict[str, Any]) -> dict[str, bool]:
    """Which of the quality targets one pair's row meets, against that pair's plain mix."""
    return {
        "chroma": row["chroma_similarity"] >= QUALITY_TARGETS["chroma_similarity"],
        "onset": row["onset_correlation"] >= QUALITY_TARGETS["onset_correlation"],
        "mfcc": row["mfcc_progress"] >= QUALITY_TARGETS["mfcc_progress"]
        and row["mfcc_progress"] > mix["mfcc_progress"],
        "noise": row["noise_ratio"] <= mix["noise_ratio"],
        "no clipping": row["peak"] < 1.0,
        "loss falls": row.get("loss_end", 0) <= row.get("loss_start", 0),
    }


def quality_table(figures: dict[str, Any]) -> str:
    """The summary as a plain-text table, one line per method: means, then on how
    many pairs each target is met."""
    columns = ("chroma_similarity", "onset_correlation", "mfcc_progress", "gram_progress",
               "noise_ratio", "spectral_convergence", "seconds")
    targets = list(next(iter(figures["summary"].values()))["pairs_ok"])
    lines = ["method".ljust(40) + "".join(c[:12].rjust(13) for c in columns)
             + "  pairs ok: " + ", ".join(targets)]
    for method, entry in figures["summary"].items():
        cells = "".join((f"{entry[c]:.3f}" if c in entry else "-").rjust(13) for c in columns)
        ok = "/".join(str(entry["pairs_ok"][t]) for t in targets)
        lines.append(method[:40].ljust(40) + cells + f"  {ok}" + ("  all met" if entry["targets_met"] else ""))
    return "\n".join(lines)
