"""The population throughput chart of the documentation, drawn from the results table of ``benchmarks/population.py``.

``benchmarks/population.py`` prints its results as a Markdown table (pasted into docs/benchmarks.md, "Populations");
this script reads the rows of that table -- setting, K, the paired ratio's median, min and max -- from a Markdown
file and plots the ratio against K per setting. The figure is generated from the measurement, never drawn by hand:

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


def read_rows(markdown: str) -> dict[str, list[tuple[int, float, float, float]]]:
    """Setting -> [(K, median ratio, min, max)] from the results table(s) of ``benchmarks/population.py``."""
    rows: dict[str, list[tuple[int, float, float, float]]] = defaultdict(list)
    for line in markdown.splitlines():
        match = ROW.match(line)
        if match:
            rows[match["setting"]].append((int(match["k"]), float(match["median"]), float(match["low"]), float(match["high"])))
    if not rows:
        raise ValueError("no row of benchmarks/population.py's table: | setting | K | ... | ratio: median [min, max] |")
    return dict(rows)


def plot(rows: dict[str, list[tuple[int, float, float, float]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for setting, points in rows.items():
        points = sorted(points)
        k = [p[0] for p in points]
        median = [p[1] for p in points]
        errors = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
        ax.errorbar(k, median, yerr=errors, marker="o", capsize=3, label=setting)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({p[0] for points in rows.values() for p in points}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("members K")
    ax.set_ylabel("aggregate steps/s over one SB3 PPO run's")
    ax.set_title("Population throughput (paired runs; bars: min-max over rounds)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", default=str(HERE.parent / "benchmarks.md"), help="a Markdown file")
    parser.add_argument("--out", default=str(HERE / "population-throughput.png"))
    args = parser.parse_args(argv)
    print(plot(read_rows(Path(args.results).read_text(encoding="utf-8")), Path(args.out)))


if __name__ == "__main__":
    main()
