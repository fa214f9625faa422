"""PNG plots written next to a run's outputs (matplotlib, headless)."""

from __future__ import annotations

import io
import json
import os

from lmplatform import storage


def _pyplot():
    """matplotlib's pyplot, headless; None (said once) where the `plots` extra is missing:
    a run without its PNGs is better than a run that fails at the end."""
    global _MISSING_SAID
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _MISSING_SAID:
            print("plots: matplotlib is not installed (pip install 'lmplatform[plots]'): no PNGs")
            _MISSING_SAID = True
        return None
    return plt


_MISSING_SAID = False


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file (local path or URI); [] when there is none yet."""
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def _save(fig, out_png: str | os.PathLike) -> str:
    """Render to memory and write in one step (a local path or a URI)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    storage.write_bytes(out_png, buf.getvalue())
    return storage.normalize(out_png)


def loss_curve(rows: list[dict], out_png: str | os.PathLike, title: str = "") -> str | None:
    """Loss (and throughput, when logged) against step; the last value per step wins (resumes)."""
    plt = _pyplot()
    if plt is None:
        return None

    by_step = {r["step"]: r for r in rows if "loss" in r}
    if not by_step:
        return None
    steps = sorted(by_step)
    fig, ax = plt.subplots(
        1, 2 if any("tokens_per_s" in r for r in rows) else 1, figsize=(10, 4), squeeze=False
    )
    ax[0][0].plot(steps, [by_step[s]["loss"] for s in steps], lw=1)
    ax[0][0].set_xlabel("step")
    ax[0][0].set_ylabel("training loss")
    ax[0][0].set_title(title or "loss")
    ax[0][0].grid(alpha=0.3)
    if ax.shape[1] > 1:
        tp = [(s, by_step[s]["tokens_per_s"]) for s in steps if "tokens_per_s" in by_step[s]]
        ax[0][1].plot([s for s, _ in tp], [v for _, v in tp], lw=1, color="tab:green")
        ax[0][1].set_xlabel("step")
        ax[0][1].set_ylabel("tokens/s (per worker)")
        ax[0][1].grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_png)


def trials_plot(results, metric: str, out_png: str | os.PathLike, title: str = "") -> str | None:
    """Two panels: each trial's best metric against its learning rate (log x), and each trial's
    metric over its training time. PBT trials show the lr they ended with."""
    plt = _pyplot()
    if plt is None:
        return None

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    any_data = False
    for r in results:
        df = r.metrics_dataframe
        if df is None or df.empty or metric not in df:
            continue
        any_data = True
        lr = r.config.get("lr", df["lr"].iloc[-1] if "lr" in df else None)
        label = str(df["trial_id"].iloc[-1])
        if lr:
            ax[0].scatter([lr], [df[metric].max()], s=30)
            ax[0].annotate(label[-5:], (lr, df[metric].max()), fontsize=7, alpha=0.7)
        ax[1].plot(df["time_total_s"], df[metric], marker=".", lw=1, label=label[-5:])
    if not any_data:
        plt.close(fig)
        return None
    ax[0].set_xscale("log")
    ax[0].set_xlabel("learning rate")
    ax[0].set_ylabel(f"best dev {metric}")
    ax[0].set_title(title or "trials")
    ax[1].set_xlabel("trial seconds")
    ax[1].set_ylabel(f"dev {metric}")
    ax[1].set_title("metric over time (stopped trials end early)")
    for a in ax:
        a.grid(alpha=0.3)
    if len(ax[1].lines) <= 12:
        ax[1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_png)
