"""`lmplatform-registry` (or `python jobs/registry.py`): look after a model registry.

    list     [--kind K] [NAME]          every complete version, its metric and which is best
    show     REF [--json]               metadata, lineage, metrics (and a task's promotion log)
    export   REF --hf DIR [--merge]     a folder for transformers alone (AutoModel…, pipeline);
                                        an adapter version in peft's layout (--merge: folded in)
    promote  TASK@VERSION [--force]     make it the best if it beats the current one
    rollback TASK [--to VERSION] [--force]
                                        the best back to an earlier version (worse: --force)
    gc       [--older-than HOURS] [--dry-run]
                                        remove versions whose publisher died before finishing

REF is `[pretrained/|tasks/]name[@version|@latest|@best]`; the kind is looked up when omitted.
Every command takes `--registry` (a path or s3:// / gs:// URI; default: ./registry).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from lmplatform.registry.store import KINDS, Registry, RegistryError
from lmplatform.storage import StorageError


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        reg = Registry(args.registry)
        args.run(reg, args)
    except (RegistryError, ValueError, FileNotFoundError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # `… | head`: the reader has seen enough
        sys.stderr.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmplatform-registry",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--registry", default="registry", help="registry root (path or URI)")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("list", help="versions with metric, best marker and parent")
    c.add_argument("name", nargs="?", help="only this model or task")
    c.add_argument("--kind", choices=KINDS)
    c.set_defaults(run=cmd_list)

    c = sub.add_parser("show", help="one version: metadata, lineage, metrics")
    c.add_argument("ref")
    c.add_argument("--json", action="store_true", help="the raw metadata.json")
    c.set_defaults(run=cmd_show)

    c = sub.add_parser("export", help="write a version as a transformers folder")
    c.add_argument("ref")
    c.add_argument("--hf", required=True, metavar="DIR", help="output folder")
    c.add_argument(
        "--merge",
        action="store_true",
        help="an adapter version: fold the adapters into the weights (one plain folder)",
    )
    c.set_defaults(run=cmd_export)

    c = sub.add_parser("promote", help="make TASK@VERSION the best if it beats the current")
    c.add_argument("ref", metavar="TASK@VERSION")
    c.add_argument("--force", action="store_true", help="even if worse or not comparable")
    c.set_defaults(run=cmd_promote)

    c = sub.add_parser("rollback", help="the best back to an earlier version")
    c.add_argument("task")
    c.add_argument("--to", metavar="VERSION", help="default: the version the best replaced")
    c.add_argument("--force", action="store_true", help="even if it scores worse")
    c.set_defaults(run=cmd_rollback)

    c = sub.add_parser("gc", help="remove versions left incomplete by a publisher that died")
    c.add_argument("--older-than", type=float, default=24.0, metavar="HOURS")
    c.add_argument("--dry-run", action="store_true")
    c.set_defaults(run=cmd_gc)
    return p


def parse_ref(reg: Registry, ref: str) -> tuple[str, str, str]:
    """'[kind/]name[@version]' -> (kind, name, version), the kind looked up when omitted."""
    kind, sep, rest = ref.partition("/")
    if not sep:
        kind, rest = "", ref
    elif kind not in KINDS:
        raise ValueError(f"{ref!r}: the kind before '/' must be one of {', '.join(KINDS)}")
    if not kind:
        name = rest.partition("@")[0]
        found = [k for k in KINDS if name in reg.names(k)]
        if not found:
            raise RegistryError(f"no model or task {name!r} in {reg.uri}")
        if len(found) > 1:
            raise ValueError(f"{name!r} is both a pretrained model and a task: write KIND/{ref}")
        kind = found[0]
    name, version = reg.resolve(kind, rest)
    return kind, name, version


def cmd_list(reg: Registry, args) -> None:
    rows = []
    for kind in [args.kind] if args.kind else KINDS:
        for name in reg.names(kind):
            if args.name and name != args.name:
                continue
            best = reg.best(name) if kind == "tasks" else None
            for v in reg.versions(kind, name):
                m = reg.metadata(kind, name, v)
                metric, value = m.get("metric"), m.get("value")
                if kind == "pretrained":
                    ev = (m.get("metrics") or {}).get("eval_loss")
                    metric, value = ("eval_loss", ev) if ev is not None else ("", None)
                rows.append(
                    [
                        kind,
                        name,
                        v + (" *" if v == best else ""),
                        m.get("created", ""),
                        metric or "",
                        "" if value is None else f"{value:.4f}",
                        m.get("parent") or (m.get("lineage") or {}).get("init_from") or "",
                    ]
                )
    if not rows:
        print(f"(no models in {reg.uri})")
        return
    _table(["KIND", "NAME", "VERSION", "CREATED", "METRIC", "VALUE", "PARENT"], rows)
    if any(r[2].endswith("*") for r in rows):
        print("* the task's promoted best (what serving loads)")


def cmd_show(reg: Registry, args) -> None:
    kind, name, version = parse_ref(reg, args.ref)
    meta = reg.metadata(kind, name, version)
    if args.json:
        print(json.dumps(meta, indent=2))
        return
    files = meta.get("files") or {}
    print(f"{kind}/{name}@{version}   {reg.location(kind, name, version)}")
    print(f"  created   {meta.get('created', '?')}")
    model = meta.get("model") or {}
    if model:
        shape = ", ".join(
            f"{k}={model[k]}" for k in ("hidden_size", "num_layers", "num_heads") if k in model
        )
        print(f"  model     {model.get('family')} ({shape})")
    print(f"  files     {len(files)}, {_mb(files)}")
    adapter = meta.get("adapter")
    if isinstance(adapter, dict):
        print(
            f"  adapter   LoRA rank {adapter.get('rank')}, alpha {adapter.get('alpha')}, "
            f"{', '.join(adapter.get('targets') or [])} ({len(adapter.get('modules') or [])} layers)"
        )
        print(f"  base      pretrained/{adapter.get('base')}  {_base_size(reg, adapter)}")
    if kind == "tasks":
        best = reg.best(name)
        print(f"  task      {meta.get('type')}  labels: {', '.join(meta.get('labels') or [])}")
        print(
            f"  metric    {meta.get('metric')} = {meta.get('value')}"
            + ("   (the promoted best)" if version == best else f"   (best: {best})")
        )
        print(f"  parent    {meta.get('parent')}")
        for label, s in (meta.get("per_class") or {}).items():
            print(
                f"    {label:<14} P {s['precision']:.3f}  R {s['recall']:.3f}  "
                f"F1 {s['f1']:.3f}  n={s['support']}"
            )
        if meta.get("hyperparameters"):
            hp = meta["hyperparameters"]
            print("  hyperparameters  " + ", ".join(f"{k}={hp[k]}" for k in sorted(hp)))
        print("  promotions")
        for rec in reg.promotions(name):
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(rec.get("time", 0)))
            prev = (rec.get("previous") or {}).get("version")
            extra = " ".join(
                x for x in (rec.get("note"), "forced" if rec.get("forced") else "") if x
            )
            print(
                f"    {when}  {rec['version']}  {rec.get('metric')}={rec.get('value')}"
                + (f"  (replaced {prev})" if prev else "")
                + (f"  [{extra}]" if extra else "")
            )
    else:
        for section in ("lineage", "metrics"):
            for k, v in (meta.get(section) or {}).items():
                print(f"  {section:<9} {k}: {v}")


def cmd_export(reg: Registry, args) -> None:
    from lmplatform.models.io import export_hf
    from lmplatform.registry.adapters import adapter_of, export_adapter

    kind, name, version = parse_ref(reg, args.ref)
    folder = reg.local_path(kind, name, version)
    adapter = adapter_of(reg.metadata(kind, name, version))
    if adapter is None and args.merge:
        raise ValueError(
            f"{kind}/{name}@{version} is a whole model: --merge is for adapter versions"
        )
    if adapter is None:
        out = export_hf(folder, args.hf)
    else:
        out = export_adapter(reg, folder, args.hf, args.merge)
    arch = json.loads((out / "config.json").read_text()).get("architectures", ["?"])[0]
    remote = ", trust_remote_code=True" if (out / "modeling_lmplatform.py").is_file() else ""
    task = next(
        (t for suffix, t in _PIPELINES.items() if arch.endswith(suffix)), "feature-extraction"
    )
    print(f"exported {kind}/{name}@{version} -> {args.hf} ({arch})")
    if adapter is not None and not args.merge:
        auto = "AutoModel" + (arch[arch.index("For") :] if "For" in arch else "")
        print(
            f"  LoRA adapters in peft's layout on pretrained/{adapter['base']} (a transformers "
            f"folder of it with the task's head: {out})\n"
            f"  from peft import PeftModel\n  from transformers import {auto}\n"
            f"  model = PeftModel.from_pretrained({auto}.from_pretrained({str(out)!r}), "
            f"{str(args.hf)!r})"
        )
        return
    print(f"  from transformers import pipeline\n  pipeline({task!r}, model={str(out)!r}{remote})")


# the first suffix that matches wins: ELECTRA's pretraining head detects replaced tokens, which no
# transformers pipeline serves, so its encoder's features are the one use
_PIPELINES = {
    "ElectraForPreTraining": "feature-extraction",
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForPreTraining": "fill-mask",
    "LMHeadModel": "text-generation",
}


def cmd_promote(reg: Registry, args) -> None:
    task, _, version = args.ref.partition("@")
    if not version:
        raise ValueError(f"{args.ref!r}: name the version, TASK@vNNNN")
    _, version = reg.resolve("tasks", args.ref)
    promoted, previous = reg.promote(task, version, force=args.force)
    was = f" (was {previous['version']}: {previous['value']})" if previous else ""
    if promoted:
        print(f"tasks/{task}@{version} is now the best{was}")
    else:
        print(f"not promoted: tasks/{task}@{version} does not beat the best{was}")
        sys.exit(1)


def cmd_rollback(reg: Registry, args) -> None:
    rec = reg.rollback(args.task, args.to, force=args.force)
    before = (rec.get("previous") or {}).get("version")  # what the rollback replaced, exactly
    print(
        f"tasks/{args.task}: best {before} -> {rec['version']} "
        f"({rec.get('metric')}={rec.get('value')}{', forced' if args.force else ''})"
    )


def cmd_gc(reg: Registry, args) -> None:
    stale = reg.incomplete(args.older_than * 3600)
    for kind, name, version, age in stale:
        if not args.dry_run:
            reg.remove_incomplete(kind, name, version)
        verb = "would remove" if args.dry_run else "removed"
        print(f"{verb} {kind}/{name}@{version} (incomplete, claimed {age / 3600:.1f} h ago)")
    if not stale:
        print(f"nothing to remove (no version incomplete for over {args.older_than:g} h)")


def _mb(files: dict) -> str:
    return f"{sum(f['bytes'] for f in files.values()) / 1e6:.1f} MB"


def _base_size(reg: Registry, adapter: dict) -> str:
    """The base's size on disk, and whether it is still the content the adapters were
    trained on (loading refuses it otherwise)."""
    from lmplatform.registry.adapters import base_digest

    name, _, version = str(adapter.get("base")).partition("@")
    try:
        files = reg.metadata("pretrained", name, version).get("files") or {}
        same = base_digest(reg, name, version) == adapter.get("base_digest")
    except (RegistryError, ValueError, FileNotFoundError, StorageError) as e:
        return f"(cannot be read: {e})"
    return f"{_mb(files)}" + (
        "" if same else "  (CHANGED since training: the version will not load)"
    )


def _table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for r in [head, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    main()
