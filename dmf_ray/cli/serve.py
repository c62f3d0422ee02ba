"""``dmf serve``: a trained model over HTTP with Ray Serve, until Ctrl-C or SIGTERM.

Every ServeArgs field is a flag (nested roles as --ingress-num-cpus, --encoders-autoscaling-max-
replicas, ...), and ``--config`` reads the same YAML as ``serve run`` (serve_configs/fusion.yaml:
applications[0].args and http_options); flags override the file field by field."""

from __future__ import annotations

import argparse

from dmf_ray.cli import console
from dmf_ray.cli.flags import add_config_flags, build_config, merge

RENAME = {"model_dir": "model"}


def configure_serve(parser: argparse.ArgumentParser) -> None:
    from dmf_ray.pipelines.serve.args import ServeArgs

    # Help shows the defaults each role really gets (ServeArgs merges per-role defaults under the input).
    shown = ServeArgs.model_validate({"model_dir": "."}).model_dump(exclude={"model_dir"})
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="a Serve config file like serve_configs/fusion.yaml: the app's args "
                             "(applications[0].args) and http_options.host/port; flags override it")
    parser.add_argument("--host", default=None,
                        help="address to bind (default: 127.0.0.1, or the config's http_options.host); "
                             "0.0.0.0 only on purpose, behind a gateway")
    parser.add_argument("--port", type=int, default=None,
                        help="HTTP port (default: 8000, or the config's http_options.port)")
    flags = add_config_flags(parser, ServeArgs, rename=RENAME, defaults=shown)
    console.add_run_flags(parser, ray=False)  # ServeArgs has its own num_cpus
    parser.set_defaults(func=run_serve, flags=flags)


def serve_settings(args: argparse.Namespace):
    """(ServeArgs, host, port) from --config and the flags, validated before anything starts."""
    from dmf_ray.pipelines.serve.args import ServeArgs

    base, host, port = {}, "127.0.0.1", 8000
    if args.config:
        from dmf_ray.pipelines.serve import load_serve_config

        base, host, port = load_serve_config(args.config)
    serve_args = build_config(ServeArgs, merge(base, args.flags.values(args)))
    return serve_args, args.host or host, args.port or port


def run_serve(args: argparse.Namespace) -> int:
    from dmf_ray.pipelines.serve import run_server

    serve_args, host, port = serve_settings(args)
    # Serve's access lines come from the proxy and replica processes: echoed only when asked for.
    console.setup(args.verbose, worker_lines=bool(getattr(serve_args, "access_log", False)))
    run_server(serve_args.model_dir, host=host, port=port, args=serve_args)
    return 0
