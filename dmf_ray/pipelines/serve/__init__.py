"""Online embedding with Ray Serve: SMILES in over HTTP, fused embeddings out.

Public API: ``build_app`` (the Serve application; ``import_path: dmf_ray.pipelines.serve:build_app``),
``run_server`` (``dmf serve``: run until SIGINT/SIGTERM, then stop cleanly), ``load_serve_config``
(the args and host/port of a Serve YAML) and ``ServeArgs`` (the typed app arguments).

Modules, one job each: ``args`` typed arguments; ``api`` HTTP bodies; ``limits`` request size
limits; ``errors`` JSON errors (app and proxy); ``calls`` what travels between deployments;
``scheduler`` the encoders' fair, cancellable work queue; ``backends`` the encoder and fusion
deployments; ``ingress`` the HTTP edge; ``responses`` model card and answer pieces;
``capacity`` replica counts the cluster can place; ``builder`` the application; ``server`` the
process lifetime of ``dmf serve``.

Importing this package does not import Ray or torch; the names are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from dmf_ray.pipelines.serve.args import ServeArgs

__all__ = ["ServeArgs", "build_app", "load_serve_config", "run_server"]


def build_app(args: Any):
    """See ``builder.build_app`` (Serve's import_path target)."""
    from dmf_ray.pipelines.serve.builder import build_app as build

    return build(args)


def __getattr__(name: str) -> Any:
    if name in ("run_server", "load_serve_config"):
        from dmf_ray.pipelines.serve import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
