"""The population throughput chart of the documentation, drawn from the results table of ``benchmarks/population.py``.

``benchmarks/population.py`` prints its results as a Markdown table (pasted into docs/benchmarks.md, "Populations");
this script reads the rows of such tables -- setting, K, the paired ratio's median, min and max, and the date written
above each table -- from a Markdown file and plots the ratio against K per setting for the two latest dates (the
latest solid). The figure is generated from the measurement, never drawn by hand:

    python docs/figures/population_throughput.py                      # docs/benchmarks.md -> docs/figures/...png
    python benchmarks/population.py > results.md && python docs/figures/population_throughput.py results.md --out chart.png
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: | setting | K | population steps/s | SB3 steps/s | ratio: median [min, max] | ...
ROW = re.compile(
    r"^\| (?P<setting>[^|]+?) \| (?P<k>\d+) \| \d+ \| \d+ \| (?P<median>[\d.]+) \[(?P<low>[\d.]+), (?P<high>[\d.]+)\] \|"
)


#: a date (and a time, "2026-12-02 14:10", where one follows it) in the text above a table: the table's label
DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?: \d{2}:\d{2})?")

Rows = dict[tuple[str, str], list[tuple[int, float, float, float]]]


def read_rows(markdown: str) -> Rows:
    """(date, setting) -> [(K, median ratio, min, max)] from the results table(s) of ``benchmarks/population.py``; a
    table's date is the last date written in the text above it (a file may hold several runs of the benchmark)."""
    rows: Rows = defaultdict(list)
    date = ""
    for line in markdown.splitlines():
        match = ROW.match(line)
        if match:
            point = (int(match["k"]), float(match["median"]), float(match["low"]), float(match["high"]))
            rows[(date, match["setting"])].append(point)
        elif not line.startswith("|") and (dates := DATE.findall(line)):
            date = dates[0]
    if not rows:
        raise ValueError("no row of benchmarks/population.py's table: | setting | K | ... | ratio: median [min, max] |")
    return dict(rows)


def plot(rows: Rows, path: Path, last: int = 2) -> Path:
    """Plot the tables of the ``last`` latest labels (the latest solid, the others dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dates = sorted({date for date, _ in rows})[-last:]
    rows = {key: points for key, points in rows.items() if key[0] in dates}
    settings = list(dict.fromkeys(setting for _, setting in rows))
    colors = {setting: f"C{i}" for i, setting in enumerate(settings)}
    styles = {date: ("-" if date == dates[-1] else "--") for date in dates}
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for (date, setting), points in rows.items():
        points = sorted(points)
        k = [p[0] for p in points]
        median = [p[1] for p in points]
        errors = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
        label = f"{setting}, {date}"
        ax.errorbar(k, median, yerr=errors, marker="o", capsize=3, color=colors[setting], linestyle=styles[date], label=label)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({p[0] for points in rows.values() for p in points}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("members K")
    ax.set_ylabel("aggregate steps/s over one SB3 PPO run's")
    ax.set_title("Population throughput, paired runs on a 2-core VM (bars: min-max; dashed: earlier)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", default=str(HERE.parent / "benchmarks.md"), help="a Markdown file")
    parser.add_argument("--out", default=str(HERE / "population-throughput.png"))
    parser.add_argument("--last", type=int, default=2, help="plot the tables of this many latest dates")
    args = parser.parse_args(argv)
    print(plot(read_rows(Path(args.results).read_text(encoding="utf-8")), Path(args.out), args.last))


if __name__ == "__main__":
    main()
