"""`mlscore deploy` and `mlscore service list|show|logs|update|delete|keys`, over `deploy.service`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from mlscore.deploy import service
from mlscore.deploy.registry import HOME_ENV, Registry, RegistryError


def add_service_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `deploy` and `service` to a parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", metavar="DIR",
                        help=f"the registry's root folder (env {HOME_ENV}; default ~/.mlscore)")

    deploy = subparsers.add_parser(
        "deploy", parents=[common], help="deploy registered models as a service (local, aci/Docker, aks/Kubernetes)",
        description="Deploy registered model versions with an entry script, where the deployment config's "
                    "computeType says: local (a background process), aci (a container image, built and run "
                    "with docker or podman), aks or kubernetes (manifests, applied when a cluster answers).")
    deploy.add_argument("-n", "--name", required=True, help="the service's name")
    _model_options(deploy, required=True)
    deploy.add_argument("--ic", "--inference-config", dest="inference_config", required=True, metavar="FILE",
                        help="the inference config JSON (entryScript, sourceDirectory, condaFile, …)")
    deploy.add_argument("--dc", "--deploy-config", dest="deployment_config", required=True, metavar="FILE",
                        help="the deployment config JSON (computeType and its fields)")
    deploy.add_argument("--output", type=Path, metavar="DIR",
                        help="where aci and aks write the build context and manifests (default: under the registry)")
    deploy.add_argument("--strict", action="store_true",
                        help="aci and aks: refuse (exit 2) when the entry script imports packages that neither the "
                             "condaFile nor mlscore's dependencies provide, instead of warning")

    services = subparsers.add_parser("service", help="list, show, update and delete deployed services",
                                     description="Manage the services deployed from this registry.")
    commands = services.add_subparsers(dest="service_command", metavar="COMMAND", required=True)
    listing = commands.add_parser("list", parents=[common], help="list services")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = commands.add_parser("show", parents=[common], help="show one service: state, models, URIs")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    logs = commands.add_parser("logs", parents=[common], help="print the service's server log")
    logs.add_argument("name")
    logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    update = commands.add_parser("update", parents=[common], help="serve other model versions or configs",
                                 description="Update a service in place. A local service's new server starts "
                                             "beside the old one and takes over when ready: no request fails.")
    update.add_argument("name")
    _model_options(update, required=False)
    update.add_argument("--ic", "--inference-config", dest="inference_config", metavar="FILE")
    update.add_argument("--dc", "--deploy-config", dest="deployment_config", metavar="FILE")
    delete = commands.add_parser("delete", parents=[common], help="stop a service and forget it")
    delete.add_argument("name")
    keys = commands.add_parser("keys", parents=[common], help="print a service's keys, or regenerate one")
    keys.add_argument("name")
    keys.add_argument("--regenerate", choices=service.KEY_NAMES, help="replace this key and redeploy")


def _model_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("-m", "--model", dest="models", action="append", required=required, metavar="NAME:VERSION",
                        help="a registered model version (repeatable; NAME alone is its latest version)")


def run_service_command(args: argparse.Namespace) -> int:
    """Run a parsed `deploy` or `service` command: 0 when done, 1 (with the reason on stderr) otherwise, 2 when
    `deploy --strict` refuses an image that would lack packages."""
    from mlscore.deploy.configs import ConfigError
    from mlscore.deploy.image import ImageError  # the targets load when a command runs, not for the parser
    from mlscore.deploy.kubernetes import KubectlError

    try:
        registry = Registry(args.registry)
        if args.command == "deploy":
            _deploy(registry, args)
        else:
            _COMMANDS[args.service_command](registry, args)
    except service.MissingPackages as error:
        print(f"mlscore: error: {error}", file=sys.stderr)
        return 2
    except (service.DeployError, ConfigError, RegistryError, ImageError, KubectlError) as error:
        print(f"mlscore: error: {error}", file=sys.stderr)
        return 1
    return 0


def _deploy(registry: Registry, args: argparse.Namespace) -> None:
    from mlscore.deploy.configs import load_deployment_config, load_inference_config

    inference = load_inference_config(args.inference_config)
    deployment = load_deployment_config(args.deployment_config)
    service.deploy(registry, args.name, args.models, inference, deployment, args.output, progress=_say,
                   strict=args.strict)


def _list(registry: Registry, args: argparse.Namespace) -> None:
    records = service.list_services(registry)
    if args.json:
        print(json.dumps([_public(record.to_dict()) for record in records], indent=2, sort_keys=True))
        return
    if not records:
        print(f"no services in {registry.root}")
        return
    rows = [("NAME", "COMPUTE", "STATE", "MODELS", "SCORING URI")]
    rows += [(record.name, record.compute_type, record.state, ",".join(record.models),
              record.details.get("scoring_uri") or "") for record in records]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _show(registry: Registry, args: argparse.Namespace) -> None:
    current = service.get(registry, args.name)
    shown = _public(current.record.to_dict())
    if args.json:
        print(json.dumps(shown, indent=2, sort_keys=True))
        return
    details = shown["details"]
    fields = [("name", current.name), ("compute type", current.record.compute_type), ("state", current.record.state),
              ("models", ", ".join(current.record.models)), ("scoring uri", current.scoring_uri or ""),
              ("swagger uri", current.swagger_uri or ""), ("auth", "keys (mlscore service keys)" if current.keys
                                                           else "off"),
              ("updated", current.record.updated_at.strftime("%Y-%m-%d %H:%M:%SZ"))]
    fields += [(key.replace("_", " "), str(value)) for key, value in sorted(details.items())
               if key in ("folder", "port", "generation", "context", "image", "container", "output", "namespace",
                          "message")]
    for label, value in fields:
        print(f"{label + ':':<14} {value}".rstrip())


def _logs(registry: Registry, args: argparse.Namespace) -> None:
    text = service.logs(registry, args.name, args.tail)
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")


def _update(registry: Registry, args: argparse.Namespace) -> None:
    from mlscore.deploy.configs import load_deployment_config, load_inference_config

    inference = load_inference_config(args.inference_config) if args.inference_config else None
    deployment = load_deployment_config(args.deployment_config) if args.deployment_config else None
    if args.models is None and inference is None and deployment is None:
        raise service.DeployError("nothing to update: give -m NAME:VERSION, --ic FILE or --dc FILE")
    service.update(registry, args.name, args.models, inference, deployment, progress=_say)


def _delete(registry: Registry, args: argparse.Namespace) -> None:
    service.delete(registry, args.name, progress=_say)
    print(f"deleted service {args.name}")


def _keys(registry: Registry, args: argparse.Namespace) -> None:
    if args.regenerate:
        keys = service.regenerate_key(registry, args.name, args.regenerate, progress=_say)
    else:
        keys = service.get(registry, args.name).keys
        if keys is None:
            raise service.DeployError(f"service {args.name!r} has auth off: it has no keys")
    print(json.dumps({"primaryKey": keys.primary_key, "secondaryKey": keys.secondary_key}, indent=2))


_COMMANDS: dict[str, Callable[[Registry, argparse.Namespace], None]] = {
    "list": _list,
    "show": _show,
    "logs": _logs,
    "update": _update,
    "delete": _delete,
    "keys": _keys,
}


def _public(record: dict) -> dict:
    """A service's record without its keys (`service keys` prints those)."""
    details = {key: value for key, value in record["details"].items() if key != "keys"}
    return {**record, "details": details}


def _say(line: str) -> None:
    print(line, flush=True)
