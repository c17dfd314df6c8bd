"""The run report: its pieces, a real run's page in a real headless browser, its rebuild, S3."""

from __future__ import annotations

import datetime
import re
import shutil
import struct
import zlib
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from amnst.batch import metadata, report
from amnst import synth
from amnst.cli import main
from amnst.config import get_preset
from amnst.batch.ray_runner import RunOptions, run_manifest
from tests.conftest import system_program, write_wav

PRESET = get_preset("default").with_overrides(iterations=3)


# --- pieces ----------------------------------------------------------------------------------------

def read_png(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Indices and palette of an 8-bit indexed PNG, checking every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = {}, 8
    while at < len(data):
        (length,), kind = struct.unpack(">I", data[at:at + 4]), data[at + 4:at + 8]
        body = data[at + 8:at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        at += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour_type) == (8, 3) and b"IEND" in chunks
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, width + 1)
    assert not rows[:, 0].any()  # filter type none on every scanline
    return rows[:, 1:], np.frombuffer(chunks[b"PLTE"], np.uint8).reshape(-1, 3)


def test_png_round_trips_with_the_magma_palette():
    indices = np.arange(256 * 3, dtype=np.uint32).reshape(3, 256).astype(np.uint8)
    decoded, colours = read_png(report.png(indices, report.palette()))
    np.testing.assert_array_equal(decoded, indices)
    assert colours.shape == (256, 3)
    assert colours[0].tolist() == [0, 0, 4] and colours[-1].tolist() == [252, 253, 191]
    assert np.all(np.diff(colours.astype(int).sum(axis=1)) >= 0)  # dark to light


def test_mel_image_is_bounded_and_puts_low_frequencies_at_the_bottom():
    sr = report.PAGE_AUDIO.sample_rate
    t = np.arange(40 * sr) / sr
    low = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    image = report.mel_image(low)
    assert image.shape == (report.PAGE_AUDIO.n_mels // report.IMAGE_BANDS, 690)  # 3446 frames / 5
    assert image.max() == 255 and image.min() == 0
    brightest_row = int(np.argmax(image.mean(axis=1)))
    assert brightest_row > 0.75 * image.shape[0]


def test_loss_curve_svg():
    svg = report.loss_svg([8.0, 4.0, 2.0, np.nan, 1.0])
    points = re.search(r'points="([^"]+)"', svg).group(1).split()
    assert len(points) == 4 and "log scale" in svg and ">4 iterations<" in svg
    ys = [float(p.split(",")[1]) for p in points]
    assert ys == sorted(ys)  # the loss falls: each point lower on the page
    assert "polyline" in report.loss_svg([-1.0, 0.0, 1.0]) and "log scale" not in report.loss_svg([-1.0, 1.0])
    assert "no loss curve" in report.loss_svg([]) and "no loss curve" in report.loss_svg([3.0])


def test_facts_count_every_pair_and_show_the_first_in_manifest_order():
    total = report.PAIR_LIMIT + 20
    rows = [{"pair_id": f"p{row}", "row": row, "status": "failed" if row % 10 == 0 else "ok",
             "audio_seconds": 2.0, "segments": 1, "seconds_total": float(row), "seconds_analyse": 0.5,
             "seconds_style": None, "seconds_optimise": 3.0 if row != 7 else 30.0, "seconds_render": 1.0,
             "seconds_quality": 0.5, "seconds_write": 0.1} for row in reversed(range(1, total + 1))]
    batches = pa.Table.from_pylist(rows).to_batches(max_chunksize=16)
    facts = report.gather(batches)
    assert facts.pairs == total and facts.statuses == {"ok": total - 12, "failed": 12, "skipped": 0}
    assert facts.audio_seconds == 2.0 * (total - 12)
    assert facts.shown() == [f"p{row}" for row in range(1, report.PAIR_LIMIT + 1)]
    assert [pair for _, pair in sorted(facts.slowest, reverse=True)] == [f"p{total - i}" for i in range(5)]
    optimise = facts.stages["optimise"]
    assert optimise.slowest_pair == "p7" and optimise.seconds == pytest.approx(3.0 * (total - 1) + 30.0)
    assert facts.stages["style"].pairs == 0


def test_locate_reads_run_folders_and_output_uris(tmp_path):
    day = datetime.date(2026, 11, 25)
    assert report.locate("s3://b/x/_amnst/runs/date=2026-11-25/run_id=r1/") == \
        report.RunLocation("s3://b/x", "r1", day)
    assert report.locate("_amnst/pairs/date=2026-11-25/run_id=r1") == report.RunLocation(".", "r1", day)
    location = report.RunLocation(str(tmp_path), "r1", day)
    assert report.locate(location.records) == location and report.locate(location.folder) == location
    with pytest.raises(report.ReportError, match="no committed run"):
        report.locate(str(tmp_path))
    started = datetime.datetime(2026, 11, 25, 9, tzinfo=datetime.timezone.utc)
    for run_id in ("20261125T090000Z-aaaaaa", "20261125T100000Z-bbbbbb"):
        metadata.MetadataWriter(str(tmp_path), run_id, started).commit({"status": "completed"})
    assert report.locate(str(tmp_path)).run_id == "20261125T100000Z-bbbbbb"


def test_version_2_pair_rows_read_back_without_the_new_columns(tmp_path):
    """Rows written before the loss curve and reference rows (schema 2) still read."""
    old_schema = pa.schema([field for field in metadata._FILE_SCHEMAS["pairs"]
                            if field.name not in ("loss_curve", "reference_content", "reference_mix")])
    folder = Path(metadata.run_partition(str(tmp_path), "pairs", "old", datetime.date(2026, 1, 1)))
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"schema_version": 2, "pair_id": "p", "status": "ok",
                                          "loss_end": 1.0}], schema=old_schema), folder / "part.parquet")
    (row,) = [r for batch in metadata.scan_run(str(tmp_path), "pairs", "old") for r in batch.to_pylist()]
    assert row["loss_end"] == 1.0 and row["loss_curve"] is None and row["reference_mix"] is None


# --- a real run ------------------------------------------------------------------------------------

def write_pairs(folder: Path) -> Path:
    """Two short pairs sharing one rain, one failing on a missing style, and their manifest."""
    write_wav(folder / "piano.wav", synth.music(4.0, seed=1, timbre="piano"))
    write_wav(folder / "organ.wav", synth.music(3.0, seed=2, timbre="organ"))
    write_wav(folder / "rain.wav", synth.rain(3.0, seed=1))
    manifest = folder / "manifest.csv"
    manifest.write_text("pair_id,content,style,strength\npiano,piano.wav,rain.wav,0.5\n"
                        "organ,organ.wav,rain.wav,\nlost,piano.wav,missing.wav,\n")
    return manifest


@pytest.fixture(scope="module")
def local_run(local_ray, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report-run")
    output = str(folder / "out")
    summary = run_manifest(str(write_pairs(folder)), RunOptions(output, PRESET))
    assert (summary.progress.ok, summary.progress.failed) == (2, 1)
    return output, summary


def test_every_run_writes_its_report_beside_its_records(local_run):
    output, summary = local_run
    location = report.locate(str(Path(summary.report_uri).parent))
    assert (location.output, location.run_id) == (output, summary.run_id)
    assert summary.report_uri == location.page and summary.report_error is None
    page = Path(location.page).read_text()
    assert page.count("<section class=\"pair\"") == 2 and "lost" in page and "missing.wav" in page
    assert page.count("<audio ") == 6 and page.count("<img ") == 6 and page.count("<svg ") == 2
    sources = set(re.findall(r'src="([^"]+)"', page))
    assert len(sources) == 5 * 2  # piano, organ, one rain shared, two outputs: a preview and a picture each
    assert all(src.startswith("assets/") and (Path(location.folder) / src).is_file() for src in sources)
    assert "<h2>Stages, slowest first</h2>" in page and "3 (2 ok, 1 failed, 0 skipped)" in page
    assert "preset default, strength 0.5, 3 iterations" in page  # piano's own
    assert f"preset default, strength {PRESET.nst.strength:g}, 3 iterations" in page  # organ: the preset's

    rows = {row["pair_id"]: row for row in metadata.read_table(output, "pairs").to_pylist()}
    for pair_id in ("piano", "organ"):
        row = rows[pair_id]
        assert len(row["loss_curve"]) == PRESET.nst.iterations + 1
        assert row["loss_curve"][0] == pytest.approx(row["loss_start"])
        assert row["loss_curve"][-1] == pytest.approx(row["loss_end"])
        content, mix = row["reference_content"], row["reference_mix"]
        assert content["chroma_similarity"] == pytest.approx(1.0) and content["mfcc_progress"] == pytest.approx(0)
        assert 0 < mix["mfcc_progress"] < 1 and mix["spectral_convergence"] is None
        assert row["schema_version"] == metadata.SCHEMA_VERSION


def test_amnst_report_rebuilds_the_same_page_from_the_records(local_run, tmp_path, capsys):
    output, summary = local_run
    page = Path(summary.report_uri)
    written = page.read_text()
    shutil.rmtree(page.parent)
    assert main(["report", report.locate(str(page.parent)).records]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {page}"
    assert page.read_text() == written
    page.unlink()
    assert main(["report", output]) == 0  # the output URI: its newest committed run, this one
    assert page.read_text() == written
    assert main(["report", str(tmp_path)]) == 1
    assert "no committed run" in capsys.readouterr().err


def test_the_report_opens_in_a_headless_browser_with_every_picture_and_player(local_run, tmp_path):
    chromium = system_program("chromium", "chromium")
    chromedriver = system_program("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(chromedriver))
    try:
        browser.get(Path(local_run[1].report_uri).resolve().as_uri())
        media = """return {
            images: [...document.images].map(i => ({src: i.getAttribute('src'), done: i.complete,
                                                     width: i.naturalWidth})),
            audios: [...document.querySelectorAll('audio')].map(a => ({src: a.getAttribute('src'),
                     ready: a.readyState, error: a.error && a.error.code, duration: a.duration}))};"""
        settled = WebDriverWait(browser, 30, poll_frequency=0.2).until(
            lambda driver: (lambda m: m if all(i["done"] for i in m["images"])
                            and all(a["ready"] >= 1 or a["error"] for a in m["audios"]) else None)(
                driver.execute_script(media)))
    finally:
        browser.quit()
    assert len(settled["images"]) == 6 and len(settled["audios"]) == 6
    assert [i["src"] for i in settled["images"] if not i["width"]] == []
    assert [a["src"] for a in settled["audios"] if a["error"] or a["ready"] < 1] == []
    assert all(2.5 < a["duration"] < 4.5 for a in settled["audios"])


def test_a_run_on_s3_writes_its_report_there_served_as_html(local_ray, s3_bucket, tmp_path):
    s3 = boto3.client("s3")
    write_pairs(tmp_path)
    for name in ("organ.wav", "rain.wav"):
        s3.put_object(Bucket="amnst-test", Key=f"in/{name}", Body=(tmp_path / name).read_bytes())
    s3.put_object(Bucket="amnst-test", Key="in/manifest.csv", Body=b"pair_id,content,style\norgan,organ.wav,rain.wav\n")
    output = f"{s3_bucket}/out"
    summary = run_manifest(f"{s3_bucket}/in/manifest.csv", RunOptions(output, PRESET))
    assert summary.progress.ok == 1 and summary.report_uri.startswith(f"{output}/_amnst/reports/date=")
    key = summary.report_uri.removeprefix(f"{s3_bucket}/")
    assert s3.head_object(Bucket="amnst-test", Key=key)["ContentType"] == "text/html; charset=utf-8"
    page = s3.get_object(Bucket="amnst-test", Key=key)["Body"].read().decode()
    folder = key.rsplit("/", 1)[0]
    for src in re.findall(r'src="([^"]+)"', page):
        head = s3.head_object(Bucket="amnst-test", Key=f"{folder}/{src}")
        assert head["ContentType"] == ("image/png" if src.endswith(".png") else "audio/ogg")
    s3.delete_object(Bucket="amnst-test", Key=key)
    assert main(["report", output]) == 0
    assert s3.get_object(Bucket="amnst-test", Key=key)["Body"].read().decode() == page
