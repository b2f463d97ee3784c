"""Check a `tuneforge compare` report against its compare.json, and that it renders.

    python scripts/check_report.py RUN_OR_COMPARE_DIR [--screenshot out.png]

Checks, all reported at once:
1. every `data-key` number in report.html equals `report_numbers(compare.json)`, and every key
   `report_numbers` gives appears in the HTML (a number the report should show is not missing);
2. every such number is a correct rounding of the raw value in compare.json, at the precision
   shown: this part does not trust report.py's own formatting;
3. the summary's decision agrees with its own numbers, recomputed here: decided by quality
   exactly when the gain's 95 % interval clears ±margin, each interval is ordered and holds its
   point estimate, the p-value is a probability, "undecided" says how many more requests;
4. the HTML is self-contained: no scripts, no http(s) sources or links, images are data URIs;
5. if Chromium is installed, a headless render is a real page: a PNG of the window's size with
   a meaningful share of non-white pixels (a blank or crashed page has almost none).

Exit 0 with a one-line summary; 1 with one line per problem, naming the key; 2 when the
arguments are wrong or --screenshot was asked for and Chromium is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from tuneforge.eval.report import NULL, report_numbers

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
WINDOW = (1280, 2400)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_INK = 0.02  # share of non-white pixels; a rendered report has ~10%, a blank page 0
MAX_INK = 0.95  # more than this is a dark or garbage frame, not our white page


class _ReportParser(HTMLParser):
    """Collects the text of every element with a `data-key`, and every src/href and tag name."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: list[tuple[str, str]] = []
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: set[str] = set()
        self._open: list[tuple[str, str | None, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        values = dict(attrs)
        self.urls += [(tag, a, values[a] or "") for a in ("src", "href") if a in values]
        self._open.append((tag, values.get("data-key"), []))

    def handle_data(self, data: str) -> None:
        for _, _, text in self._open:
            text.append(data)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, key, text = self._open.pop()
            if key is not None:
                self.numbers.append((key, "".join(text).strip()))
            if open_tag == tag:
                break


def parse_report(html: str) -> _ReportParser:
    parser = _ReportParser()
    parser.feed(html)
    parser.close()
    return parser


def raw_value(compare: dict[str, Any], key: str) -> Any:
    """The value in compare.json a report key stands for. Approach names may hold dots, so the
    longest name the key starts with wins; sample keys carry the example's `index`."""
    head, _, rest = key.partition(".")
    if head == "summary" and rest.startswith("quality_gain_ci95."):
        ci = (compare.get("summary") or {}).get("quality_gain_ci95")
        return ci[int(rest.rpartition(".")[2])] if ci else None
    if head in ("use_case", "summary"):
        return (compare.get(head) or {}).get(rest)
    approaches = compare.get("approaches") or []
    names = [a["name"] for a in approaches if key.startswith(f"approaches.{a['name']}.")]
    if head != "approaches" or not names:
        raise KeyError(key)
    name = max(names, key=len)
    approach = next(a for a in approaches if a["name"] == name)
    field = key[len(f"approaches.{name}.") :]
    if field.startswith("metrics."):
        return (approach.get("metrics") or {}).get(field[len("metrics.") :])
    if field == "primary_ci95.half_width":  # the report's ±: half the interval, recomputed
        ci = approach.get("primary_ci95")
        return (ci[1] - ci[0]) / 2 if ci else None
    if field.startswith("labels."):
        label, _, measure = field[len("labels.") :].rpartition(".")
        return ((approach.get("labels") or {}).get(label) or {}).get(measure)
    if field.startswith("samples."):
        index = field[len("samples.") :].rpartition(".")[0]
        samples = [s for s in approach.get("samples") or [] if str(s["index"]) == index]
        return samples[0].get("score") if samples else None
    return approach.get(field)


def agrees(shown: str, raw: Any) -> bool:
    """Whether `shown` is `raw` rounded to the decimals `shown` has (or "—" for null)."""
    if raw is None or shown == NULL:
        return raw is None and shown == NULL
    if shown.startswith("<"):  # a p-value too small to show: `<0.001`
        try:
            return raw < float(shown[1:])
        except ValueError:
            return False
    try:
        value = float(shown)
    except ValueError:
        return False
    decimals = len(shown.partition(".")[2])
    return math.isclose(value, raw, abs_tol=0.5 * 10**-decimals + 1e-9)


def check_against_compare(compare: dict[str, Any], numbers: dict[str, str]) -> list[str]:
    problems = []
    for key, shown in numbers.items():
        try:
            raw = raw_value(compare, key)
        except KeyError:
            problems.append(f"{key}: no such value in compare.json")
            continue
        if not agrees(shown, raw):
            problems.append(f"{key}: shown {shown!r}, compare.json has {raw!r}")
    return problems


def check_decision(compare: dict[str, Any]) -> list[str]:
    """Problems with the summary's intervals and decision, recomputed from compare.json alone."""
    summary = compare.get("summary") or {}
    problems = []
    intervals = [
        ("summary.quality_gain_ci95", summary.get("quality_gain_ci95"), summary.get("quality_gain"))
    ]
    for approach in compare.get("approaches") or []:
        if approach.get("status") == "ok":
            intervals.append(
                (
                    f"approaches.{approach['name']}.primary_ci95",
                    approach.get("primary_ci95"),
                    (approach.get("metrics") or {}).get(compare.get("primary_metric")),
                )
            )
    for key, ci, point in intervals:
        if ci is None:
            continue
        if len(ci) != 2 or ci[0] > ci[1] + 1e-12:
            problems.append(f"{key}: {ci!r} is not an interval [low, high]")
        elif point is not None and not ci[0] - 1e-9 <= point <= ci[1] + 1e-9:
            problems.append(f"{key}: {ci!r} does not contain the point estimate {point!r}")
    p = summary.get("quality_gain_p_value")
    if p is not None and not 0 <= p <= 1:
        problems.append(f"summary.quality_gain_p_value: {p!r} is not a probability")
    decided_by, ci, margin = (
        summary.get("decided_by"),
        summary.get("quality_gain_ci95"),
        summary.get("margin"),
    )
    if decided_by is None:
        return problems  # a compare.json from before schema 2: nothing to recompute
    clears = bool(ci) and margin is not None and (ci[0] > margin or ci[1] < -margin)
    if (decided_by == "quality") != clears:
        problems.append(
            f"summary.decided_by: {decided_by!r}, but the gain's interval {ci!r} "
            f"{'clears' if clears else 'does not clear'} the margin ±{margin}"
        )
    expected = {
        "undecided": {"undecided"},
        "quality": {"fine_tune", "prompt_engineering"},
        "cost": {"fine_tune", "prompt_engineering"},
    }.get(decided_by, set())
    if summary.get("recommendation") not in expected:
        problems.append(
            f"summary.recommendation: {summary.get('recommendation')!r} does not go with "
            f"decided_by {decided_by!r}"
        )
    if clears and ci is not None:
        direction = "fine_tune" if ci[0] > margin else "prompt_engineering"
        if summary.get("recommendation") != direction:
            problems.append(
                f"summary.recommendation: {summary.get('recommendation')!r}, but the interval "
                f"{ci!r} says {direction}"
            )
    never = "No number of test requests" in (summary.get("decision") or "")  # gain on the margin
    if (
        decided_by == "undecided"
        and ci
        and summary.get("more_requests_needed") is None
        and not never
    ):
        problems.append("summary.more_requests_needed: undecided, but not how many more")
    return problems


def check_numbers(compare: dict[str, Any], html: str) -> list[str]:
    """Problems with the numbers of report.html (empty: they all match compare.json)."""
    expected = report_numbers(compare)
    problems = check_against_compare(compare, expected)
    shown = parse_report(html).numbers
    for key, text in shown:
        if key not in expected:
            problems.append(f"{key}: in report.html but not a number the report should show")
        elif text != expected[key]:
            problems.append(
                f"{key}: report.html shows {text!r}, compare.json gives {expected[key]!r}"
            )
    present = {key for key, _ in shown}
    problems += [f"{key}: missing from report.html" for key in expected if key not in present]
    return list(dict.fromkeys(problems))  # a number shown twice, wrong twice, is one problem


def check_self_contained(html: str) -> list[str]:
    """Problems that would make the report fetch something or run code when opened."""
    report = parse_report(html)
    problems = [
        f"<{tag}> found: the report must not need it"
        for tag in ("script", "link", "iframe")
        if tag in report.tags
    ]
    for tag, attribute, url in report.urls:
        if url.lower().startswith(("http://", "https://", "//")):
            problems.append(f"<{tag} {attribute}={url!r}>: external URL")
        elif tag == "img" and not url.startswith("data:image/"):
            problems.append(f"<img src={url[:60]!r}>: images must be data URIs")
    return problems


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def screenshot(chromium: str, html_path: Path, png_path: Path) -> None:
    """Render `html_path` headless to `png_path`; a private profile so parallel runs don't clash.
    An older file at `png_path` is removed first so it cannot pass for this render."""
    png_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="check-report-chromium-") as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--hide-scrollbars",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                f"--screenshot={png_path.resolve()}",
                html_path.resolve().as_uri(),
            ],
            check=False,
            capture_output=True,
            timeout=120,
        )


def ink(png_path: Path) -> tuple[tuple[int, int], float]:
    """(width, height) and the share of pixels that are not (near) white."""
    from PIL import Image  # matplotlib's own PNG reader; always installed with it

    with Image.open(png_path) as image:
        gray = image.convert("L")
        histogram = gray.histogram()
        return gray.size, sum(histogram[:240]) / (gray.size[0] * gray.size[1])


def check_screenshot(png_path: Path) -> tuple[list[str], str]:
    """(problems, a short description of the render)."""
    if not png_path.is_file():
        return [f"{png_path}: Chromium wrote no screenshot"], ""
    if png_path.read_bytes()[:8] != PNG_SIGNATURE:
        return [f"{png_path}: not a PNG"], ""
    (width, height), share = ink(png_path)
    problems = []
    if (width, height) != WINDOW:
        problems.append(
            f"{png_path}: {width}x{height}, expected the window's {WINDOW[0]}x{WINDOW[1]}"
        )
    if not MIN_INK <= share <= MAX_INK:
        problems.append(f"{png_path}: {share:.1%} non-white pixels: a blank or broken render")
    return problems, f"{width}x{height}, {share:.1%} non-white"


def find_files(folder: Path) -> tuple[Path, Path]:
    """compare.json and report.html in `folder`, or in the one subfolder holding them (a run
    directory keeps its comparison in a subfolder)."""
    candidates = [folder / "compare.json", *sorted(folder.glob("*/compare.json"))]
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise FileNotFoundError(f"{folder}: no compare.json here or in a subfolder")
    compare_path = found[0]
    html_path = compare_path.with_name("report.html")
    if not html_path.is_file():
        raise FileNotFoundError(f"{html_path}: missing; write the report first")
    return compare_path, html_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a compare output folder or a run directory")
    parser.add_argument("--screenshot", type=Path, help="keep the headless render here (PNG)")
    args = parser.parse_args(argv)
    try:
        compare_path, html_path = find_files(args.folder)
    except FileNotFoundError as error:
        print(f"check_report: {error}", file=sys.stderr)
        return 2
    chromium = find_chromium()
    if args.screenshot and not chromium:
        print(
            f"check_report: --screenshot needs one of {', '.join(CHROMIUM_NAMES)}", file=sys.stderr
        )
        return 2
    compare = json.loads(compare_path.read_text(encoding="utf-8"))
    html = html_path.read_text(encoding="utf-8")
    problems = check_numbers(compare, html) + check_decision(compare) + check_self_contained(html)
    rendered = "not rendered (no Chromium)"
    if chromium:
        with tempfile.TemporaryDirectory(prefix="check-report-") as tmp:
            png = args.screenshot or Path(tmp) / "report.png"
            screenshot(chromium, html_path, png)
            shot_problems, description = check_screenshot(png)
        problems += shot_problems
        rendered = f"rendered {description}" + (f" to {args.screenshot}" if args.screenshot else "")
    if problems:
        print(f"check_report: {html_path}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    count = len(report_numbers(compare))
    decided = (compare.get("summary") or {}).get("decided_by") or "not recorded"
    print(
        f"{html_path}: {count} numbers match compare.json, decision ({decided}) agrees with "
        f"its interval, self-contained, {rendered}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
