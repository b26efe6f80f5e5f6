"""The bench's results as a text table, a chart and a JSON file."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ImagenetPackError

PLOT_INSTALL = "pip install -e '.[plot]'"


def require_matplotlib() -> None:
    """ImagenetPackError now, before any measuring, when ``--plot`` cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImagenetPackError(f"--plot needs matplotlib: {PLOT_INSTALL} (or pip install matplotlib)") from None


def format_table(report: dict) -> str:
    """The results as text, ratios against the baseline of the same kind measured in the same run."""
    per_round = report["images_per_round"] or "epoch of"
    width = max([len("entry")] + [len(r["name"]) for r in report["results"]])
    lines = [f"{report['workers']} workers on {report['machine']['cores']} cores ({report['machine']['cpu']}), "
             f"batch {report['batch_size']}, {per_round} images per round, median of {report['rounds']} "
             "interleaved rounds",
             f"{'entry':<{width}} {'images/s':>9} {'x baseline':>11} {'worker MB private / shared':>27}"]
    for r in report["results"]:
        ratio = f"{r['ratio_to_baseline']:.2f}" if r["ratio_to_baseline"] is not None else "-"
        memory = f"{r['worker_private_mb']:.0f} / {r['worker_shared_mb']:.0f}"
        lines.append(f"{r['name']:<{width}} {r['images_per_s']:>9.0f} {ratio:>11} {memory:>27}")
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
        raise ImagenetPackError("--plot draws ratios to the ImageFolder baselines: pass --images too")
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
    axes.set_title(f"imagenet-pack bench, {report['date']}: {machine['cores']} cores ({machine['cpu']}), "
                   f"{report['workers']} workers, batch {report['batch_size']}, "
                   f"{report['images_per_round'] or 'epochs of'} images per round", fontsize=9)
    axes.invert_yaxis()
    figure.tight_layout()
    return figure


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2))
