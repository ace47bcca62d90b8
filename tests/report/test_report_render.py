"""The visual reports: pareto.png, report.html (checked in a real headless Chromium), summary."""

from __future__ import annotations

import base64
import csv
import fcntl
import io
import itertools
import json
import math
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from lpsd_search.cli.main import main
from lpsd_search.errors import UserInputError
from lpsd_search.report.data import (
    COMPRESSION_LEVELS,
    export_command,
    hypervolume_curve,
    load_report,
)
from lpsd_search.report.html import render_report
from lpsd_search.report.summary import print_summary

CHROMIUM = shutil.which("chromium")
HEADER = ["trial", "state", "params", "bytes", "flops", "accuracy", "test_accuracy",
          "compression", "feasible", "pareto", "seconds", "plan", "fail_reason"]


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[Path]:
    """A small real search; --train-epochs 8 reuses the conftest baseline from the cache."""
    out = tmp_path_factory.mktemp("report") / "run"
    # One thread: on a small busy CI machine two contend and the search takes many times longer.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["-q", "search", "--budget", "0.5", "--trials", "6", "--finetune-steps",
                     "20", "--train-epochs", "8", "--seed", "0", "--device", "cpu", "--out",
                     str(out), "--cache-dir", str(cache_dir)]) == 0
    finally:
        torch.set_num_threads(threads)
    yield out


@pytest.fixture(scope="module")
def rendered(search_dir: Path) -> list[Path]:
    for name in ("pareto.png", "report.html"):  # the search may have drawn them already
        (search_dir / name).unlink(missing_ok=True)
    return render_report(search_dir)


def _write_results(out: Path, points: list[dict[str, Any]], rows: list[dict[str, Any]],
                   **extra: Any) -> Path:
    """A hand-made output directory with the keys newer searches add (``extra``)."""
    out.mkdir(parents=True, exist_ok=True)
    baseline = {"params": 1000, "bytes": 4000, "flops": 50000, "accuracy": 0.9,
                "test_accuracy": 0.88}
    document = {"study": "hand-made", "config": {"model": "tiny"}, "baseline": baseline,
                "budget": {"metric": "params", "requested": "0.5", "limit": 500,
                           "fraction": 0.5}, "points": points, **extra}
    (out / "pareto.json").write_text(json.dumps(document))
    columns = HEADER + sorted({key for row in rows for key in row} - set(HEADER))
    with (out / "trials.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return out


def _point(trial: int, params: int, accuracy: float, **extra: Any) -> dict[str, Any]:
    return {"trial": trial, "params": params, "bytes": 4 * params, "flops": 50 * params,
            "accuracy": accuracy, "test_accuracy": accuracy - 0.01,
            "compression": 1000 / params, "plan": {"conv": {"method": "svd", "rank": 2,
                                                             "sparsity": 0.0}}, **extra}


def _row(point: dict[str, Any], **extra: Any) -> dict[str, Any]:
    row = {key: point[key] for key in ("trial", "params", "bytes", "flops", "accuracy",
                                       "test_accuracy", "compression")}
    return {**row, "state": "COMPLETE", "feasible": 1, "pareto": 1, "plan": "conv=svd(2)",
            **extra}


def _failed(trial: int, reason: str) -> dict[str, Any]:
    return {"trial": trial, "state": "FAIL", "feasible": 0, "pareto": 0, "plan": "fc=svd(1)",
            "fail_reason": reason}


def _pixel_spread(png: bytes | Path) -> float:
    """Standard deviation of the grey levels: ~0 for a blank or single-colour image."""
    source = io.BytesIO(png) if isinstance(png, bytes) else png
    with Image.open(source) as image:
        return float(np.asarray(image.convert("L"), dtype=float).std())


def test_render_report_writes_a_chart_and_a_page_next_to_pareto_json(search_dir, rendered):
    assert rendered == [search_dir / "pareto.png", search_dir / "report.html"]
    with Image.open(rendered[0]) as image:
        assert (image.format, image.size) == ("PNG", (1200, 800))
        dark = (np.asarray(image.convert("L")) < 128).mean()
    assert _pixel_spread(rendered[0]) > 10 and dark > 0.005  # axes, text and markers drawn


def _raw(search_dir: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """pareto.json and the rows of trials.csv read with json and csv alone, not the report's
    reader, so that expectations built from them do not share its mistakes."""
    document = json.loads((search_dir / "pareto.json").read_text())
    with (search_dir / "trials.csv").open(newline="") as handle:
        return document, list(csv.DictReader(handle))


def test_html_is_self_contained_and_exports_every_front_point(search_dir, rendered):
    page = rendered[1].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<script src" not in page and "stylesheet" not in page
    document, rows = _raw(search_dir)
    front = sorted(point["trial"] for point in document["points"])
    # The front of pareto.json is the trials.csv rows flagged pareto, and it is not empty.
    assert front == sorted(int(r["trial"]) for r in rows if r["pareto"] == "1")
    assert len(front) >= 1
    # One table row and one export command per front point, and none for other trials.
    assert sorted(int(t) for t in re.findall(r'id="trial-(\d+)"', page)) == front
    exports = re.findall(r"lpsd-search export \S+ --trial (\d+) --out trial-(\d+)\.pt", page)
    assert sorted(int(trial) for trial, _ in exports) == front
    assert all(trial == out for trial, out in exports)
    for trial in front:
        assert escape(export_command(search_dir, trial)) in page
    assert f"lpsd-search export {search_dir} --trial" in page
    for element in ("front-plot", "hypervolume-plot", "layer-table"):
        assert page.count(f'id="{element}"') == 1


def _dominated_area(points: list[tuple[float, float]], top_params: float) -> float:
    """Area of the union of the rectangles [0, accuracy] × [params, top_params], by brute force.

    Independent of ``hypervolume_2d``'s sweep: the plane is cut on every coordinate into cells,
    and a cell counts once when any point's rectangle covers it.
    """
    inside = [(a, p) for a, p in points if a > 0 and p < top_params]
    xs = sorted({0.0, *(a for a, _ in inside)})
    ys = sorted({top_params, *(p for _, p in inside)})
    area = 0.0
    for x0, x1 in itertools.pairwise(xs):
        for y0, y1 in itertools.pairwise(ys):
            if any(a >= x1 and p <= y0 for a, p in inside):
                area += (x1 - x0) * (y1 - y0)
    return area


def test_dominated_area_helper_on_hand_computed_rectangles():
    # The helper itself, checked by hand: (0.9, 500) and (0.5, 100) under 1000 give
    # 0.9 × 500 + 0.5 × 400 = 650; (0.7, 300) adds the 0.2 × 200 = 40 step between them;
    # (0.6, 400) lies inside (0.7, 300)'s rectangle; (0.8, 1000) and (0.0, 50) enclose nothing.
    assert _dominated_area([(0.9, 500), (0.5, 100)], 1000) == pytest.approx(650)
    assert _dominated_area([(0.9, 500), (0.5, 100), (0.7, 300), (0.6, 400)],
                           1000) == pytest.approx(690)
    assert _dominated_area([(0.8, 1000), (0.0, 50)], 1000) == 0.0


def _log_area(seen: list[tuple[float, float]], reference: float) -> float:
    """The log-size hypervolume by brute force: size as ``log10(params / reference) + 3``
    (0 at 1000× below the reference, clipped there), the box's height 3, divided by 3."""
    shifted = [(a, max(math.log10(p / reference) + 3, 0.0)) for a, p in seen if p <= reference]
    return _dominated_area(shifted, 3.0) / 3.0


def test_hypervolume_grows_to_that_of_the_feasible_trials(search_dir):
    document, rows = _raw(search_dir)
    reference = float(document["budget"]["limit"])
    expected, seen = [], []
    for row in sorted(rows, key=lambda r: int(r["trial"])):
        if row["state"] == "COMPLETE" and row["feasible"] == "1":
            seen.append((float(row["accuracy"]), float(row["params"])))
        expected.append((int(row["trial"]), _log_area(seen, reference)))
    # Not vacuous: the search completed feasible trials below the budget, so the area is > 0.
    assert len(seen) >= 1 and expected[-1][1] > 0
    curve = hypervolume_curve(load_report(search_dir))
    assert [trial for trial, _ in curve] == [trial for trial, _ in expected]
    assert [volume for _, volume in curve] == pytest.approx([v for _, v in expected], rel=1e-9)
    volumes = [volume for _, volume in curve]
    assert volumes == sorted(volumes) and 0 < volumes[-1] <= 1


def _l(params: float) -> float:
    """Decades below the hand-made budget of 500 params."""
    return math.log10(500 / params)


def test_hypervolume_curve_counts_only_completed_trials_within_budget(tmp_path):
    # Budget 500 params, size on a log axis: trial 0 dominates 0.9 × log10(500/250), trial 2
    # adds 0.5 × (log10(500/50) − log10(500/250)); the failed trial 1 and the over-budget
    # trial 3 add nothing; all over the box's 3 decades.
    rows = [_row(_point(0, 250, 0.9)), _failed(1, "boom"), _row(_point(2, 50, 0.5)),
            _row(_point(3, 600, 0.95), feasible=0, pareto=0)]
    curve = hypervolume_curve(load_report(_write_results(tmp_path / "run", [], rows)))
    first = 0.9 * _l(250) / 3
    both = first + 0.5 * (_l(50) - _l(250)) / 3
    assert curve == [(0, pytest.approx(first)), (1, pytest.approx(first)),
                     (2, pytest.approx(both)), (3, pytest.approx(both))]


def test_hypervolume_curve_adds_only_the_area_a_trial_newly_dominates(tmp_path):
    # Budget 500 params; areas in accuracy × decades below it, divided by 3 at the end.
    # trial 0 (0.9, 250): 0.9 × L(250).
    # trial 1 (0.5, 50): adds 0.5 × (L(50) − L(250)).
    # trial 2 (0.7, 150): adds the step (0.7 − 0.5) × (L(150) − L(250)).
    # trial 3 (0.6, 200): dominated by trial 2.
    # trial 4 (0.9, 250): a duplicate of trial 0.
    # trial 5 (0.95, 225): adds 0.05 × L(225) + (0.9 − 0.7) × (L(225) − L(250)).
    trials = [(250, 0.9), (50, 0.5), (150, 0.7), (200, 0.6), (250, 0.9), (225, 0.95)]
    rows = [_row(_point(number, params, accuracy))
            for number, (params, accuracy) in enumerate(trials)]
    curve = hypervolume_curve(load_report(_write_results(tmp_path / "run", [], rows)))
    areas = [0.9 * _l(250)]
    areas.append(areas[-1] + 0.5 * (_l(50) - _l(250)))
    areas.append(areas[-1] + 0.2 * (_l(150) - _l(250)))
    areas += [areas[-1], areas[-1]]
    areas.append(areas[-1] + 0.05 * _l(225) + 0.2 * (_l(225) - _l(250)))
    assert curve == [(n, pytest.approx(area / 3)) for n, area in enumerate(areas)]


def test_summary_shows_the_front_and_every_reachable_compression_level(search_dir):
    console = Console(record=True, width=200, file=io.StringIO())
    print_summary(search_dir, console)
    text = console.export_text()
    document, rows = _raw(search_dir)
    points = document["points"]
    completed = sum(r["state"] == "COMPLETE" for r in rows)
    assert f"Pareto front ({len(points)} points of {completed} completed trials" in text
    assert "baseline" in text
    # Budget 0.5: every front point has at most half the baseline's params, so is ≥ 2× smaller.
    base = document["baseline"]["params"]
    assert all(p["params"] <= base / 2 and p["compression"] >= 2 for p in points)
    # Expected rows, from pareto.json alone: per level, the most accurate point at least that
    # small; levels no point reaches have no row.
    expected = {}
    for level in COMPRESSION_LEVELS:
        reaching = [p for p in points if base / p["params"] >= level
                    and p["accuracy"] >= 0.5 * document["baseline"]["accuracy"]]
        if reaching:
            best = max(reaching, key=lambda p: p["accuracy"])
            expected[f"≥ {level:g}×"] = str(best["trial"])
    assert "≥ 2×" in expected
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip()
             for line in text.splitlines() if "≥" in line}
    assert lines == expected


def test_best_point_per_level_is_the_most_accurate_at_least_that_small(tmp_path):
    # Compression 10×, 5.6× and 2.5×: at ≥ 2× the 2.5× point is the most accurate.
    points = [_point(1, 100, 0.5), _point(2, 180, 0.7), _point(3, 400, 0.85)]
    out = _write_results(tmp_path / "run", points, [_row(p) for p in points])
    console = Console(record=True, width=200, file=io.StringIO())
    print_summary(out, console)
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip()
             for line in console.export_text().splitlines() if "≥" in line}
    assert lines == {"≥ 2×": "3", "≥ 5×": "2", "≥ 10×": "1"}


def test_a_collapsed_point_is_never_the_best_at_a_level(tmp_path):
    # The 20x point kept 20 % accuracy (baseline 90 %): below half the baseline's, it is left
    # out of the levels table, in the terminal and in the page; it stays on the front.
    points = [_point(1, 50, 0.2), _point(2, 180, 0.7)]
    out = _write_results(tmp_path / "run", points, [_row(p) for p in points])
    console = Console(record=True, width=200, file=io.StringIO())
    print_summary(out, console)
    text = console.export_text()
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip()
             for line in text.splitlines() if "≥" in line}
    assert lines == {"≥ 2×": "2", "≥ 5×": "2"}
    assert "points under 45.0% val acc (half the baseline's) left out" in text
    page = render_report(out)[1].read_text()
    levels = page[page.index("<th>compression</th><th>trial</th><th>actual</th>"):]
    assert 'data-trial="2"' in levels and 'data-trial="1"' not in levels.split("</table>")[0]


def test_a_users_min_accuracy_is_the_floor_of_the_levels_table(tmp_path):
    # --min-accuracy 0.75: the 0.7 point (above half the baseline's 0.9) is left out too.
    points = [_point(1, 50, 0.2), _point(2, 180, 0.7), _point(3, 400, 0.8)]
    out = _write_results(tmp_path / "run", points, [_row(p) for p in points], min_accuracy=0.75)
    console = Console(record=True, width=200, file=io.StringIO())
    print_summary(out, console)
    text = console.export_text()
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip()
             for line in text.splitlines() if "≥" in line}
    assert lines == {"≥ 2×": "3"}
    assert "points under 75.0% val acc (--min-accuracy) left out" in text
    page = render_report(out)[1].read_text()
    assert "Points below 75.0% validation accuracy (--min-accuracy)" in page


def test_failed_trials_and_an_empty_front_still_render(tmp_path):
    infeasible = _point(1, 800, 0.6)
    rows = [_failed(0, "CUDA out of memory"), _row(infeasible, feasible=0, pareto=0),
            {"trial": 2, "state": "RUNNING"}]
    out = _write_results(tmp_path / "run", [], rows)
    png, html = render_report(out)
    page = html.read_text()
    assert "the front is empty" in page and "CUDA out of memory" in page
    assert Image.open(png).size == (1200, 800)
    console = Console(record=True, width=200, file=io.StringIO())
    print_summary(out, console)
    assert "No front point reaches 2×" in console.export_text()


def test_no_completed_trial_gives_a_page_that_says_so_and_no_results_an_error(tmp_path):
    out = _write_results(tmp_path / "run", [], [_failed(0, "boom")])
    (out / "trials.csv").unlink()  # a search killed before its first trial finished
    png, html = render_report(out)
    assert "No completed trials yet" in html.read_text() and png.is_file()
    with pytest.raises(UserInputError, match=r"pareto\.json is missing"):
        render_report(tmp_path)


def test_newer_keys_show_references_latency_and_promotion_and_text_is_escaped(tmp_path):
    evil = "<script>alert('x')</script>"
    front = [_point(3, 100, 0.7, latency_ms=1.25, promoted=True), _point(4, 300, 0.88)]
    front[1]["plan"] = {"conv": {"method": "tucker2", "rank": [3, 2], "sparsity": 0.05,
                                 "alternating": True}, evil: {"method": "none", "rank": None,
                                                              "sparsity": 0.1}}
    rows = [_row(_point(0, 480, 0.8), source="uniform svd", stage="global", pareto=0),
            _row(_point(1, 450, 0.5), source="alpsd", pareto=0, plan=evil),
            _failed(2, evil), _row(front[0], source="sampled"), _row(front[1], source=evil)]
    budgets = [{"metric": "params", "limit": 500, "fraction": 0.5},
               {"metric": "bytes", "limit": 2000, "fraction": 0.5}]
    out = _write_results(tmp_path / "run", front, rows, budgets=budgets, layers=["conv", evil],
                         study=evil, objectives=[{"name": "accuracy", "direction": "maximize"}])
    png, html = render_report(out)
    page = html.read_text()
    assert evil not in page and escape(evil) in page
    assert "reference: uniform svd" in page and "reference: alpsd" in page
    assert "latency 1.25 ms" in page and "promoted" in page
    assert "bytes ≤ 2,000" in page and "+S 5.00%" in page
    assert _pixel_spread(png) > 10


class Chromium:
    """Headless Chromium driven over the DevTools protocol with the standard library alone:
    with ``--remote-debugging-pipe`` it reads NUL-terminated JSON on fd 3 and answers on fd 4."""

    def __init__(self, executable: str, profile: Path) -> None:
        # Moved above fd 9 first so that placing them on 3 and 4 in the child cannot clobber.
        commands_in, self._commands = os.pipe()
        self._replies, replies_out = os.pipe()
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_in, replies_out)]
        os.close(commands_in)
        os.close(replies_out)
        self._stderr = (profile / "stderr.log").open("wb")
        self.process = subprocess.Popen(
            [executable, "--headless", "--remote-debugging-pipe", "--no-sandbox",
             "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            pass_fds=(3, 4), preexec_fn=lambda: (os.dup2(ends[0], 3), os.dup2(ends[1], 4)))
        for fd in ends:
            os.close(fd)
        self._buffer, self._next_id = b"", 0
        self.events: list[dict[str, Any]] = []

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            timeout = max(0.0, deadline - time.monotonic())
            if not select.select([self._replies], [], [], timeout)[0]:
                raise TimeoutError("chromium did not answer within 30 s")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise EOFError(f"chromium exited; its log: {self._stderr.name}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return dict(json.loads(message))

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            command["sessionId"] = session
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + 30
        while (message := self._receive(deadline)).get("id") != self._next_id:
            self.events.append(message)
        assert "error" not in message, f"{method}: {message['error']}"
        return dict(message["result"])

    def wait_for(self, method: str, session: str) -> None:
        deadline = time.monotonic() + 30
        while not any(m.get("method") == method and m.get("sessionId") == session
                      for m in self.events):
            self.events.append(self._receive(deadline))

    def open(self, html: Path) -> str:
        """Load ``html`` in a new 1280×900 tab; return the tab's session."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = str(self.call("Target.attachToTarget", targetId=target, flatten=True)
                      ["sessionId"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session)
        self.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=900,
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", session, url=html.resolve().as_uri())
        self.wait_for("Page.loadEventFired", session)
        self.evaluate(session, "new Promise(done => setTimeout(done, 200))")  # late reports
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", session, expression=expression,
                          returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def problems(self, session: str) -> list[str]:
        """Console output but console.log, uncaught exceptions, logged errors, remote requests."""
        found = []
        for event in (e for e in self.events if e.get("sessionId") == session):
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] != "log":
                found.append(f"console.{params['type']}: {params['args']}")
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(f"exception: {details.get('exception', details)['description']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log: {params['entry']['text']}")
            elif (method == "Network.requestWillBeSent"
                  and not params["request"]["url"].startswith(("file:", "data:"))):
                found.append(f"request: {params['request']['url']}")
        return found

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            os.close(self._commands)
            os.close(self._replies)
            self._stderr.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package 'chromium')")
    chromium = Chromium(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


def _box(browser: Chromium, session: str, selector: str) -> dict[str, float]:
    """The element scrolled into view: its page box (x, y, width, height), its viewport centre."""
    return dict(browser.evaluate(session, f"""(() => {{
        const node = document.querySelector('{selector}');
        node.scrollIntoView({{block: "center"}});
        const r = node.getBoundingClientRect();
        return {{x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height,
                 cx: r.x + r.width / 2, cy: r.y + r.height / 2}}; }})()"""))


def _screenshot(browser: Chromium, session: str, selector: str) -> bytes:
    box = _box(browser, session, selector)
    clip = {key: box[key] for key in ("x", "y", "width", "height")} | {"scale": 1}
    shot = browser.call("Page.captureScreenshot", session, clip=clip, captureBeyondViewport=True)
    return base64.b64decode(shot["data"])


@pytest.mark.browser
def test_page_loads_in_chromium_without_errors_and_shows_the_plot(browser, search_dir, rendered):
    session = browser.open(rendered[1])
    box = _box(browser, session, "#front-plot")
    assert box["width"] > 600 and box["height"] > 300
    assert _pixel_spread(_screenshot(browser, session, "#front-plot")) > 10
    assert browser.problems(session) == []


@pytest.mark.browser
def test_hovering_a_front_point_shows_its_numbers_and_marks_its_row(browser, search_dir,
                                                                    rendered):
    point = json.loads((search_dir / "pareto.json").read_text())["points"][0]
    session = browser.open(rendered[1])
    dot = _box(browser, session, f'#front-plot circle.front[data-trial="{point["trial"]}"]')
    browser.call("Input.dispatchMouseEvent", session, type="mouseMoved", x=dot["cx"],
                 y=dot["cy"])
    tip, row = browser.evaluate(session, "[getComputedStyle(tooltip).display === 'block' ? "
                                "tooltip.textContent : '', document.getElementById("
                                f"'trial-{point['trial']}').className]")
    assert tip.startswith(f"trial {point['trial']} (front") and row == "hl"
    for text in (f"params {int(point['params']):,}", f"bytes {int(point['bytes']):,}",
                 f"FLOPs {int(point['flops']):,}", f"val acc {point['accuracy']:.2%}",
                 f"test acc {point['test_accuracy']:.2%}"):
        assert text in tip
    assert browser.problems(session) == []


@pytest.mark.browser
def test_an_empty_report_loads_in_chromium_without_errors(browser, tmp_path):
    page = render_report(_write_results(tmp_path / "run", [], [_failed(0, "boom")]))[1]
    session = browser.open(page)
    assert "No completed trials yet" in browser.evaluate(session, "document.body.innerText")
    assert browser.problems(session) == []


@pytest.mark.browser
def test_the_chromium_checks_catch_errors_blocked_requests_and_blank_shots(browser, tmp_path):
    # The page's own policy blocks the image: the blocked load must be reported, as must the
    # console error; and a screenshot of an empty box must count as blank.
    page = render_report(_write_results(tmp_path / "run", [], [_failed(0, "boom")]))[1]
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace(
        "</main>", '</main><img src="https://example.invalid/a.png"><div id="blank" '
        'style="width:300px;height:200px"></div><script>console.error("deliberate")</script>'))
    session = browser.open(broken)
    problems = "\n".join(browser.problems(session))
    assert "deliberate" in problems and "example.invalid" in problems
    assert _pixel_spread(_screenshot(browser, session, "#blank")) < 1


def test_export_commands_say_what_a_model_spec_needs(tmp_path):
    # Built-ins export as they are; a user's file or module needs consent; an object given to
    # the Python API is rebuilt by the caller's factory.
    for spec in ("digits-cnn", "vgg16:width=0.25", "torchvision:resnet18", ""):
        assert export_command(tmp_path, 3, spec).endswith("--out trial-3.pt"), spec
    for spec in ("nets/tiny.py:build", "/abs/nets.py:build", "mypkg.nets:tiny"):
        assert export_command(tmp_path, 3, spec).endswith("--trust-model-spec"), spec
    command = export_command(tmp_path, 3, "python:mypkg.Net@3f2a")
    assert command.startswith("lpsd_search.load(") and "model_factory=" in command
    assert str(tmp_path / "models" / "trial-3.pt") in command
