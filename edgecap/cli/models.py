"""``edgecap models``: list, pull, import, export, verify, remove and register models.

Each action parses its arguments, calls one ``Registry`` method, and prints the outcome.
Progress bars go to stderr, and only when it is a terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgecap.config import load_settings
from edgecap.errors import InvalidParameter
from edgecap.registry import InstalledModel, ModelStatus, Registry

TRUST_LABELS = {"manifest": "catalog", "hub": "hub", "tofu": "TOFU"}
TRUST_LEGEND = (
    "DIGESTS: catalog = checked against the sha256 in edgecap's catalog; hub = checked against "
    "the sha256 the Hugging Face Hub publishes; TOFU = trust on first use: recorded at "
    "install, with nothing published to check against."
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list, pull, import, export, verify and remove models",
        description="Manage the model store (default: $EDGECAP_HOME/models).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = actions.add_parser("list", help="known and installed models")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_list)

    p = actions.add_parser("pull", help="download a model from Hugging Face (resumable)")
    p.add_argument("name", help="model id or alias, e.g. qwen2.5-vl-7b-instruct")
    p.add_argument("--variant", help="file variant, e.g. q4_k_m (default) or q8_0")
    p.add_argument("--endpoint", help="base URL of a Hugging Face mirror")
    p.set_defaults(func=run_pull)

    p = actions.add_parser("import", help="install a pack made by `edgecap models export`")
    p.add_argument("path", type=Path, help="the pack directory")
    p.set_defaults(func=run_import)

    p = actions.add_parser("export", help="write an installed model as a pack directory")
    p.add_argument("name", help="model id or alias")
    p.add_argument("dir", type=Path, help="a new or empty directory, e.g. on removable media")
    p.set_defaults(func=run_export)

    p = actions.add_parser("verify", help="re-hash a model's files against their digests")
    p.add_argument("name", help="model id or alias")
    p.set_defaults(func=run_verify)

    p = actions.add_parser("rm", help="remove an installed model")
    p.add_argument("name", help="model id or alias")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=run_rm)

    p = actions.add_parser("register", help="use GGUF files where they are, under a name")
    p.add_argument("name", help="a new name, e.g. my-qwen")
    p.add_argument("--text", type=Path, required=True, help="the text model GGUF")
    p.add_argument("--mmproj", type=Path, required=True, help="the vision projector GGUF")
    p.add_argument(
        "--random-weights", action="store_true", help="mark it as a model of random weights"
    )
    p.add_argument(
        "--as",
        dest="stands_in_for",
        metavar="CATALOG_ID",
        help="answer for this catalog model (its id and aliases, e.g. runware:152@2) until "
        "its published files are installed",
    )
    p.set_defaults(func=run_register)


def _registry() -> Registry:
    return Registry(load_settings())


def _progress() -> bool:
    return sys.stderr.isatty()


def run_list(args: argparse.Namespace) -> int:
    statuses = _registry().list()
    if args.json:
        print(json.dumps([s.to_dict() for s in statuses], indent=2))
        return 0
    rows: list[tuple[str, ...]] = [
        ("ID", "INSTALLED", "SIZE", "DIGESTS", "VERIFIED", "LICENCE", "ALIASES")
    ]
    rows += [_row(s) for s in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    print()
    print("* = the default model, used when a request names none")
    if any(s.stands_in_for for s in statuses):
        print(
            "standing in for = a local conversion answering for that catalog model (its id and "
            "aliases), not its published files; pulling or importing those replaces it"
        )
    print(TRUST_LEGEND)
    return 0


def _row(s: ModelStatus) -> tuple[str, ...]:
    if not s.installed:
        installed = "no" if s.pullable else "no (make demo)"
        installed = f"no, served by {s.served_by}" if s.served_by else installed
        size = digests = verified = "-"
    else:
        installed = {"pull": "pulled", "import": "imported", "local": "local"}[s.source or "local"]
        installed += f" ({s.variant})" if s.variant else ""
        installed += f", standing in for {s.stands_in_for}" if s.stands_in_for else ""
        size = format_bytes(s.size or 0)
        digests = TRUST_LABELS[s.trust or "tofu"]
        verified = s.verified_at.date().isoformat() if s.verified_at else "never"
    model_id = f"{s.id} *" if s.is_default else s.id
    return (model_id, installed, size, digests, verified, s.licence, ", ".join(s.aliases))


def run_pull(args: argparse.Namespace) -> int:
    registry = _registry()
    stand_ins = _stand_ins(registry)
    record = registry.pull(
        args.name, variant=args.variant, endpoint=args.endpoint, progress=_progress()
    )
    _print_installed("installed", record)
    _print_replaced(stand_ins.get(record.id), record)
    return 0


def run_import(args: argparse.Namespace) -> int:
    registry = _registry()
    stand_ins = _stand_ins(registry)
    record = registry.import_pack(args.path, progress=_progress())
    _print_installed(f"imported from {args.path}:", record)
    _print_replaced(stand_ins.get(record.id), record)
    return 0


def _stand_ins(registry: Registry) -> dict[str, InstalledModel]:
    """The installed stand-ins, by the catalog id each answers for."""
    return {r.stands_in_for: r for r in registry.store.all() if r.stands_in_for}


def _print_replaced(stand_in: InstalledModel | None, record: InstalledModel) -> None:
    if stand_in is not None:
        print(
            f"  replaced the stand-in {stand_in.id}: requests for {record.id} (and its "
            f"aliases) are now served by the published files; {stand_in.id} stays "
            "installed under its own name"
        )


def run_register(args: argparse.Namespace) -> int:
    record = _registry().register_local(
        args.name,
        args.text,
        args.mmproj,
        args.random_weights,
        stands_in_for=args.stands_in_for,
        progress=_progress(),
    )
    _print_installed("registered", record)
    if record.stands_in_for:
        print(
            f"  stands in for {record.stands_in_for}: requests naming it or its aliases are "
            f"served by {record.id} (a local conversion, not the published files) until "
            "those are pulled or imported"
        )
    return 0


def _print_installed(verb: str, record: InstalledModel) -> None:
    variant = f" (variant {record.variant})" if record.variant else ""
    print(f"{verb} {record.id}{variant}: {format_bytes(record.size)}")
    for role in ("text", "mmproj"):
        f = record.file(role)
        print(f"  {role:<6}  {f.name}  sha256 {f.sha256}  [{TRUST_LABELS[f.digest_source]}]")
    licence = record.licence.name + (f" <{record.licence.url}>" if record.licence.url else "")
    print(f"  licence: {licence}")
    if record.trust == "tofu":
        print(
            "  digests recorded on first use (TOFU): there was no published digest to check "
            "against; `edgecap models verify` checks the files against them from now on"
        )


def run_export(args: argparse.Namespace) -> int:
    pack = _registry().export_pack(args.name, args.dir, progress=_progress())
    size = pack.text.size + pack.mmproj.size
    print(f"exported {pack.id} to {args.dir}: {format_bytes(size)}")
    print(f"  {pack.text.name}, {pack.mmproj.name}, edgecap-pack.json")
    print(f"  on the other machine: edgecap models import {args.dir}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    report = _registry().verify(args.name, progress=_progress())
    for check in report.files:
        state = "ok" if check.ok else "MISMATCH" if check.actual_sha256 else "MISSING"
        label = TRUST_LABELS[check.digest_source]
        print(f"{state:<8}  {check.role:<6}  {check.path}  [{label}]")
    error = report.error()
    if error is not None:
        raise error
    print(f"{report.id}: every file matches its sha256")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    registry = _registry()
    if not args.yes:
        if not sys.stdin.isatty():
            raise InvalidParameter(
                f"removing {args.name} needs confirmation: run `edgecap models rm {args.name} "
                "--yes`"
            )
        answer = input(f"Remove {args.name} from the model store? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 1
    removed = registry.remove(args.name)
    print(f"removed {removed.id}")
    for path in removed.kept_files:
        print(f"  left in place (registered by path): {path}")
    return 0


def format_bytes(n: int) -> str:
    """A size for people, in decimal units: 12 B, 853.1 MB, 4.7 GB."""
    if n < 1000:
        return f"{n} B"
    exponent = min((len(str(n)) - 1) // 3, 4)
    return f"{n / 1000**exponent:.1f} {('kB', 'MB', 'GB', 'TB')[exponent - 1]}"
