"""The pipeline's report.html: every stage's figures, its images copied beside it."""

from __future__ import annotations

import html
import json

from lmplatform import storage
from lmplatform.pipeline.config import PipelineConfig
from lmplatform.registry.store import Registry


def write_report(cfg: PipelineConfig, state: dict, answers: dict | None = None) -> str:
    """report.html next to state.json, with every image copied beside it (relative links, so
    the folder works wherever it is downloaded to)."""
    out = storage.join(cfg.output_dir, cfg.name)
    parts = [
        *_report_head(cfg.name),
        *_pretrain_section(state.get("pretrain"), out),
        *_adapt_section(state),
        *_finetune_sections(state, cfg.registry, out),
        *_endpoints_section(state.get("deploy")),
        *_examples_section(answers),
    ]
    path = storage.join(out, "report.html")
    storage.write_text(path, "\n".join(parts))
    return path


def _report_image(out: str, src: str, name: str) -> str | None:
    """`src` copied into the report's folder; its link from report.html (None: no such image)."""
    if not storage.exists(src):
        return None
    storage.copy(src, storage.join(out, "report_files", name))
    return f"report_files/{name}"


def _report_head(name: str) -> list[str]:
    e = html.escape
    return [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>pipeline {e(name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "img{max-width:100%}</style>",
        f"<h1>Pipeline {e(name)}</h1>",
    ]


def _pretrain_section(pre: dict | None, out: str) -> list[str]:
    """The pretrained version, its final metrics and its loss curve."""
    if not pre:
        return []
    parts = ["<h2>Pretraining</h2>", f"<p>{_pretrained_line(pre)}</p>"]
    src = _report_image(out, storage.join(pre["run_dir"], "loss_curve.png"), "pretrain_loss.png")
    if src:
        parts.append(f"<img src='{src}' alt='pretraining loss and throughput'>")
    return parts


def _pretrained_line(s: dict) -> str:
    """A pretraining stage's registered version, final metrics and time, escaped."""
    metrics = ", ".join(
        f"{html.escape(k)} {v:.4g}"
        for k, v in s.get("metrics", {}).items()
        if isinstance(v, int | float)
    )
    return (
        f"pretrained/{html.escape(s['name'])}@{html.escape(s['version'])}: {metrics}"
        f" ({s.get('seconds', 0):.0f} s)"
    )


def _adapt_section(state: dict) -> list[str]:
    """Each task's adaptive pretraining: the version its search started from, final metrics."""
    adapts = {k.split(":", 1)[1]: s for k, s in state.items() if k.startswith("adapt:")}
    if not adapts:
        return []
    items = "".join(
        f"<li>{html.escape(task)}: {_pretrained_line(s)}</li>" for task, s in adapts.items()
    )
    return ["<h2>Task-adaptive pretraining</h2><ul>" + items + "</ul>"]


def _finetune_sections(state: dict, reg: Registry, out: str) -> list[str]:
    """The winners of every task's search in one table, then each task's details."""
    tasks = {k.split(":", 1)[1]: s for k, s in state.items() if k.startswith("finetune:")}
    if not tasks:
        return []

    e = html.escape
    rows = "".join(
        f"<tr><td>{e(task)}</td><td>{e(s['metric'])}</td><td>{s['value']:.4f}</td>"
        + _baseline_cells(s.get("baseline"))
        + f"<td>v{e(s['version'][1:])}</td><td>{e(str(s.get('best')))}</td><td>{s['trials']}</td>"
        + f"<td>{e(str(s.get('parent', '—')))}</td></tr>"
        for task, s in tasks.items()
    )
    parts = [
        "<h2>Fine-tuning winners</h2><table><tr><th>task</th><th>metric</th><th>dev value</th>"
        "<th>baseline</th><th>gain vs baseline</th>"
        "<th>version</th><th>best</th><th>trials</th><th>started from</th></tr>" + rows + "</table>"
    ]
    for task, s in tasks.items():
        parts += _task_details(task, s, reg, out)
    return parts


def _baseline_cells(b: dict | None) -> str:
    """The baseline's value (its model as the tooltip) and the winner's gain over it, in
    points; a loss in red."""
    if not b:
        return "<td>—</td><td>—</td>"
    loses = b["gain"] < 0
    style = " style='color:#b00'" if loses else ""
    return (
        f"<td title='{html.escape(b['model'])}'>{b['value']:.4f}</td>"
        f"<td{style}>{b['gain']:+.2f}{' (loses)' if loses else ''}</td>"
    )


def _task_details(task: str, s: dict, reg: Registry, out: str) -> list[str]:
    """A task's published model per class, the data it was trained on, and its trials plot;
    each only if its run left it."""
    from lmplatform.registry.store import RegistryError

    e = html.escape
    parts = []
    try:
        per = reg.metadata("tasks", task, s["version"]).get("per_class") or {}
    except (RegistryError, FileNotFoundError):
        per = {}
    if per:
        parts.append(_per_class_table(task, s["version"], per))
    report_json = storage.join(s["run_dir"], "data_report.json")
    if storage.exists(report_json):
        parts.append(_data_section(task, json.loads(storage.read_text(report_json))))
    src = _report_image(out, storage.join(s["run_dir"], "trials.png"), f"trials_{task}.png")
    if src:
        parts.append(f"<h3>{e(task)}: trials</h3><img src='{src}' alt='trials of {e(task)}'>")
    return parts


def _endpoints_section(dep: dict | None) -> list[str]:
    if not dep:
        return []
    e = html.escape
    url = e(dep["url"])
    return [
        "<h2>Endpoints</h2><ul>",
        f"<li>GET {url}/v1/tasks, GET {url}/healthz, docs {url}/docs</li>",
        *(f"<li>POST {url}/v1/predict/{e(t)}</li>" for t in dep.get("tasks") or []),
        "</ul>",
    ]


def _examples_section(answers: dict | None) -> list[str]:
    if not answers:
        return []
    e = html.escape
    return [
        "<h2>Example requests</h2>",
        *(
            f"<h3>{e(t)}</h3><pre>{e(json.dumps(a, indent=1)[:3000])}</pre>"
            for t, a in answers.items()
        ),
    ]


def _data_section(task: str, report: dict) -> str:
    """The data a task was trained and selected on: rows read and dropped (why, where), the
    label distribution, token lengths and the share `max_seq_len` cuts, per split."""
    e = html.escape
    out = [f"<h3>{e(task)}: data</h3><table><tr><th></th>"]
    splits = [k for k in ("train", "dev") if k in report]
    out.append("".join(f"<th>{k}</th>" for k in splits) + "</tr>")

    def line(name: str, cell) -> None:
        out.append(
            f"<tr><td>{e(name)}</td>"
            + "".join(f"<td>{cell(report[k])}</td>" for k in splits)
            + "</tr>"
        )

    line("files", lambda r: e(f"{r['source']} ({r['format']}, from {r['format_from']})"))
    line("rows read", lambda r: r["rows_read"])
    line(
        "rows dropped",
        lambda r: (
            f"{r['rows_dropped']}"
            + "".join(f"<br>{e(k)}: {v}" for k, v in r["dropped_by_reason"].items())
        ),
    )
    line("labels", lambda r: "<br>".join(f"{e(k)}: {v}" for k, v in r["labels"].items()) or "–")
    for side in ("input", "source", "target"):
        if all(f"{side}_tokens" in report[k] for k in splits):
            line(
                f"{side} tokens (p50 / p95 / p99 / max)",
                lambda r, s=side: " / ".join(
                    str(r[f"{s}_tokens"][q]) for q in ("p50", "p95", "p99", "max")
                ),
            )
    line("over max_seq_len", lambda r: f"{r['truncated_fraction']:.2%} (of {r['max_seq_len']})")
    out.append("</table>")
    for k in splits:
        if report[k]["first_dropped"]:
            out.append(
                f"<p>{k}: first dropped rows</p><pre>"
                + e("\n".join(report[k]["first_dropped"]))
                + "</pre>"
            )
    return "".join(out)


def _per_class_table(task: str, version: str, per: dict) -> str:
    """Dev precision/recall/F1/support per class of the published model: where it fails."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(label)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
        f"<td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>"
        for label, v in per.items()
    )
    return (
        f"<h3>{e(task)} {e(version)}: dev scores per class</h3><table><tr><th>class</th>"
        "<th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>" + rows + "</table>"
    )
