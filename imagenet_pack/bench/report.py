"""The bench's results as a text table, a chart and a JSON file."""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from ..errors import BenchError, MissingExtraError

PLOT_INSTALL = "pip install -e '.[plot]'"


def check_outputs(json_path: Path | None, plot_path: Path | None, images: Path | None) -> None:
    """ImagenetPackError now, before any measuring, for outputs that could not be written at the end."""
    if plot_path is not None:
        if images is None:
            raise BenchError("--plot draws the ratios to the ImageFolder baselines: add --images SRC")
        require_matplotlib()
    for option, path in (("--json", json_path), ("--plot", plot_path)):
        if path is not None:
            check_output(path, option)


def check_output(path: Path, option: str) -> None:
    """ImagenetPackError unless a file can be written at ``path`` (its folder exists and is writable): said
    before measuring, not after."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise BenchError(f"{path}: is a folder; {option} takes a file name")
    if not folder.is_dir():
        raise BenchError(f"{path}: no folder {folder} to write it in ({option})")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise BenchError(f"{path}: this user cannot write it ({option})")


def require_matplotlib() -> None:
    """ImagenetPackError now, before any measuring, when ``--plot`` cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"--plot needs matplotlib: {PLOT_INSTALL} (or pip install matplotlib)") from None


RATIO_NOTE = ("x baseline: the median over rounds of (entry's images/s / the baseline's in the same round); a "
              "slow spell of a shared machine moves one round of every entry alike, so this is steadier than "
              "a ratio of the medians")


def rate_cells(result: dict, baseline: dict | None) -> tuple[str, str]:
    """(images/s of each round -> their median, the ratio to ``baseline`` with the per-round ratios): the
    two cells every timing table shows, so its figures can be checked against each other at a glance."""
    rounds = result["rounds_images_per_s"]
    rates = " ".join(f"{v:.0f}" for v in rounds) + (f" -> {result['images_per_s']:.0f}" if len(rounds) > 1 else "")
    if baseline is None:
        return rates, "-"
    per_round = [e / b for e, b in zip(rounds, baseline["rounds_images_per_s"])]
    median = result.get("ratio_to_baseline") or statistics.median(per_round)
    return rates, f"{median:.2f}" + (f" ({' '.join(f'{v:.2f}' for v in per_round)})" if len(per_round) > 1 else "")


def format_table(report: dict) -> str:
    """The results as text, ratios against the baseline of the same kind measured in the same run."""
    per_round = report["images_per_round"] or "epoch of"
    baselines = {r["name"].split("-")[0]: r for r in report["results"] if r["name"].endswith("-baseline")}
    cells = [rate_cells(r, baselines.get(r["name"].split("-")[0]) if r["ratio_to_baseline"] is not None else None)
             for r in report["results"]]
    width = max([len("entry")] + [len(r["name"]) for r in report["results"]])
    rates_w, ratio_w = (max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(("images/s, each round "
                                                                                         "-> median", "x baseline")))
    lines = [f"{report['workers']} workers on {report['machine']['cores']} cores ({report['machine']['cpu']}), "
             f"batch {report['batch_size']}, {per_round} images per round, {report['rounds']} interleaved rounds",
             RATIO_NOTE,
             f"{'entry':<{width}}  {'images/s, each round -> median':<{rates_w}}  {'x baseline':<{ratio_w}}  "
             "worker MB private / shared"]
    for r, (rates, ratio) in zip(report["results"], cells):
        memory = f"{r['worker_private_mb']:.0f} / {r['worker_shared_mb']:.0f}"
        lines.append(f"{r['name']:<{width}}  {rates:<{rates_w}}  {ratio:<{ratio_w}}  {memory:>26}")
    if not baselines:
        lines.append("(no ratios: add --images SRC, the JPEG tree the database was made from, to time the ImageFolder "
                     "baselines beside it)")
    first = report["time_to_first_batch"]
    lines.append("time to first batch from process start: " + ", ".join(
        f"{name[:-2].replace('_', ' ')} {seconds:.2f} s" for name, seconds in first.items()))
    if report["training_feed"]:
        model = report["training_feed_model"]
        lines.append(f"training feed, {model['arch']} batch {model['batch_size']} on {model['device']}:")
        for row in report["training_feed"]:
            share = f"   GPU share {row['gpu_share']:.2f}" if row["gpu_share"] is not None else ""
            lines.append(f"  {row['feed']:<36} {row['images_per_s']:8.0f} images/s   {row['of_bound']:5.2f} of the "
                         f"bound   data wait {row['data_wait']:4.0%}{share}")
    if report.get("accuracy"):
        from .accuracy import format_accuracy
        lines.append(format_accuracy(report["accuracy"]))
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Save :func:`chart` as a PNG."""
    import matplotlib.pyplot as plt
    figure = chart(report)
    figure.savefig(path)
    plt.close(figure)


def chart(report: dict):
    """A bar chart of the ratios, titled with the machine and the run, each bar labelled with its images/s."""
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in report["results"] if r["ratio_to_baseline"] is not None]
    if not rows:
        raise BenchError("--plot draws ratios to the ImageFolder baselines: pass --images too")
    figure, axes = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.8))
    bars = axes.barh([r["name"] for r in rows], [r["ratio_to_baseline"] for r in rows],
                     color=["#999999" if "baseline" in r["name"] else "#3a7ebf" for r in rows])
    for bar, r in zip(bars, rows):
        axes.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {r['images_per_s']:.0f} images/s",
                  va="center", fontsize=8)
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlim(0, max(r["ratio_to_baseline"] for r in rows) * 1.3)
    axes.set_xlabel("images/s, x the torchvision ImageFolder baseline of the same kind (train or val)")
    machine = report["machine"]
    axes.set_title(f"imagenet-pack bench, {report['date']}: {machine['cores']} cores ({machine['cpu']})\n"
                   f"{report['workers']} workers, batch {report['batch_size']}, "
                   f"{report['images_per_round'] or 'epochs of'} images per round", fontsize=9, wrap=True)
    axes.invert_yaxis()
    figure.tight_layout()
    return figure


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2))
