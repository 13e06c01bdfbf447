"""`mlscore model register|list|show|download|delete`: the registry's command line, over `Registry`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from mlscore.deploy.registry import (
    HOME_ENV,
    ModelVersion,
    Registry,
    RegistryError,
    check_tags,
    parse_ref,
    parse_tags,
)


def add_model_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `model` and its subcommands to a parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", metavar="DIR",
                        help=f"the registry's root folder (env {HOME_ENV}; default ~/.mlscore)")
    model = subparsers.add_parser("model", help="register, list, show, download and delete models",
                                  description="Manage the models in the embedded registry.")
    commands = model.add_subparsers(dest="model_command", metavar="COMMAND", required=True)

    register = commands.add_parser("register", parents=[common], help="register a file or a folder as a new version",
                                   description="Copy a file or a folder into the registry as NAME's next version.")
    register.add_argument("-n", "--name", required=True, help="the model's name (letters, digits, '-', '_', '.')")
    register.add_argument("-p", "--path", required=True, help="the file or folder to register")
    register.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="a tag (repeatable)")
    register.add_argument("--description", help="a description of this version")

    listing = commands.add_parser("list", parents=[common], help="list registered versions",
                                  description="List registered versions, by name then version.")
    listing.add_argument("-n", "--name", help="only versions of this model")
    listing.add_argument("--tag", action="append", default=[], metavar="KEY[=VALUE]",
                         help="only versions with this tag, or with this key when no value is given (repeatable)")
    listing.add_argument("--json", action="store_true", help="print JSON")

    show = commands.add_parser("show", parents=[common], help="show one version",
                               description="Show one version's record; NAME alone shows the latest.")
    show.add_argument("ref", metavar="NAME[:VERSION]")
    show.add_argument("--json", action="store_true", help="print JSON")

    download = commands.add_parser("download", parents=[common], help="copy a version's files out",
                                   description="Copy a version's file or folder into DIR; NAME alone is the latest.")
    download.add_argument("ref", metavar="NAME[:VERSION]")
    download.add_argument("-t", "--target-dir", dest="target_dir", required=True, metavar="DIR",
                          help="the folder to copy into")
    download.add_argument("--exist-ok", dest="exist_ok", action="store_true", help="replace what is already there")

    delete = commands.add_parser("delete", parents=[common], help="delete a version, or every version",
                                 description="Delete NAME:VERSION, or every version of NAME with --all-versions. "
                                             "A version that a recorded service uses is not deleted.")
    delete.add_argument("ref", metavar="NAME[:VERSION]")
    delete.add_argument("--all-versions", dest="all_versions", action="store_true",
                        help="delete every version of NAME")


def run_model_command(args: argparse.Namespace) -> int:
    """Run a parsed `model` command: 0 when done, 1 (and one line on stderr) when the registry refused."""
    try:
        registry = Registry(args.registry)
        _COMMANDS[args.model_command](registry, args)
    except RegistryError as error:
        print(f"mlscore: error: {error}", file=sys.stderr)
        return 1
    return 0


def _register(registry: Registry, args: argparse.Namespace) -> None:
    model = registry.register(args.name, args.path, tags=parse_tags(args.tag), description=args.description)
    print(f"registered {model.ref} ({_size(model.size_bytes)}) at {model.path}")


def _list(registry: Registry, args: argparse.Namespace) -> None:
    models = registry.list(name=args.name, tags=_tag_filter(args.tag))
    if args.json:
        _print_json([model.to_dict() for model in models])
        return
    if not models:
        print(f"no models match in {registry.root}")
        return
    rows = [("NAME", "VERSION", "CREATED", "SIZE", "TAGS", "DESCRIPTION")]
    rows += [(model.name, str(model.version), _created(model), _size(model.size_bytes), _tags(model.tags),
              model.description or "") for model in models]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _show(registry: Registry, args: argparse.Namespace) -> None:
    model = registry.get(args.ref)
    services = registry.services_using(model.ref)
    if args.json:
        _print_json({**model.to_dict(), "services": services})
        return
    fields = (
        ("name", model.name),
        ("version", str(model.version)),
        ("created", _created(model)),
        ("description", model.description or ""),
        ("tags", _tags(model.tags)),
        ("size", f"{model.size_bytes} bytes ({_size(model.size_bytes)})"),
        ("sha256", model.sha256),
        ("registered from", model.source_path),
        ("stored at", str(model.path)),
        ("used by", ", ".join(services) or "no service"),
    )
    for label, value in fields:
        print(f"{label + ':':<16} {value}".rstrip())


def _download(registry: Registry, args: argparse.Namespace) -> None:
    print(registry.download(args.ref, args.target_dir, exist_ok=args.exist_ok))


def _delete(registry: Registry, args: argparse.Namespace) -> None:
    name, version = parse_ref(args.ref)
    if args.all_versions and version is not None:
        raise RegistryError(f"--all-versions deletes every version of a model: give NAME, not {args.ref}")
    if args.all_versions:
        deleted = registry.delete_all_versions(name)
    elif version is None:
        registry.get(name)  # an unknown name's error lists the known ones
        versions = ", ".join(str(model.version) for model in registry.list(name=name))
        raise RegistryError(f"{name!r} names a model, not a version: give {name}:VERSION to delete one version"
                            f" (versions: {versions}), or add --all-versions to delete them all")
    else:
        deleted = [registry.delete(args.ref)]
    for model in deleted:
        print(f"deleted {model.ref}")


_COMMANDS: dict[str, Callable[[Registry, argparse.Namespace], None]] = {
    "register": _register,
    "list": _list,
    "show": _show,
    "download": _download,
    "delete": _delete,
}


def _tag_filter(items: list[str]) -> dict[str, str | None]:
    """`--tag KEY=VALUE` asks for that value, `--tag KEY` for the key with any value."""
    wanted: dict[str, str | None] = {}
    for item in items:
        if "=" in item:
            wanted.update(parse_tags([item]))
        else:
            wanted[next(iter(check_tags({item: ""})))] = None
    return wanted


def _created(model: ModelVersion) -> str:
    return model.created_at.strftime("%Y-%m-%d %H:%M:%SZ")


def _tags(tags: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(tags.items()))


def _size(size_bytes: int) -> str:
    if size_bytes < 1024:
        return f"{size_bytes} B"
    size, unit = size_bytes / 1024, 0
    while size >= 1024 and unit < len(_UNITS) - 1:
        size, unit = size / 1024, unit + 1
    return f"{size:.1f} {_UNITS[unit]}"


_UNITS = ("KiB", "MiB", "GiB", "TiB")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))
