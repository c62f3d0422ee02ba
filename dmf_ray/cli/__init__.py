"""The ``dmf`` command: thin subcommands over the workflows, flags generated from their typed
configs (``flags``), output kept to dmf's own lines (``console``).

One module per command group: ``quickstart``, ``store`` (featurize, store info), ``train``,
``tune``, ``finetune``, ``embed``, ``evaluate``, ``serve``. Only the chosen command's module is
imported, and only when it runs or prints its help, so ``dmf --help`` imports no torch, Ray or
RDKit.

Known problems (missing file, unknown encoder, absent column, bad setting, incompatible store...)
end the command with one line naming the problem and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from dmf_ray import __version__

EXIT_USAGE = 2

# name -> (module under dmf_ray.cli, one-line help). The module's configure_<name>(parser) adds the
# command's arguments and sets func; nothing else is imported to list the commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("quickstart", "featurize -> train -> embed RDKit's bundled 5k molecules, offline (the README's main job)"),
    "featurize": ("featurize", "add molecules and/or modalities to an embedding store (Ray Data)"),
    "train": ("train", "train the fusion model on a store with Ray Train (DDP, progressive masking)"),
    "embed": ("embed", "fused embeddings for a library (input files or a store) with a trained model"),
    "tune": ("tune", "search training settings with Ray Tune (ASHA; each trial a Ray Train run); best model to --out"),
    "finetune": ("finetune", "fine-tune a model plus a head on a task's labels (masking kept on); robustness figures"),
    "evaluate": ("evaluate", "downstream benchmark of a model: Table 1, robustness, reconstruction, attention"),
    "serve": ("serve", "serve a trained model over HTTP with Ray Serve (blocking; Ctrl-C stops)"),
    "store": ("store", "inspect a store (store info)"),
}


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the arguments of the command named in ``argv`` (if any) are filled in."""
    parser = argparse.ArgumentParser(
        prog="dmf", description="Dynamic multi-modal fusion embeddings for molecules, on Ray.",
        epilog="`dmf COMMAND --help` lists a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"dmf_ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _chosen_command(sys.argv[1:] if argv is None else argv)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            configure = getattr(importlib.import_module(f"dmf_ray.cli.{module}"), f"configure_{name}")
            configure(p)
    return parser


def _chosen_command(argv: list[str]) -> str | None:
    """The first word that names a command (top-level options take no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Problems the user can fix (imported only once something failed)."""
    errors: list[type[BaseException]] = [CliError, FileNotFoundError, NotADirectoryError, ValueError]
    for module, name in (("dmf_ray.encoders", "UnknownEncoderError"), ("dmf_ray.inputs", "InputError"),
                         ("dmf_ray.store", "StoreError"), ("dmf_ray.pipelines.train", "TrainingError")):
        mod = sys.modules.get(module)  # a class from a module never imported cannot have been raised
        if mod is not None and hasattr(mod, name):
            errors.append(getattr(mod, name))
    return tuple(errors)


def error_line(exc: BaseException, args: argparse.Namespace | None = None) -> str:
    """The one line printed for a user error; config problems name their flags."""
    from dmf_ray.cli.flags import problem_lines

    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc)
    if not isinstance(exc, ValueError) or "\n" not in text:
        return " ".join(text.split())
    # A config error: "invalid X:" / "2 validation errors for X", then one problem per line.
    flag_set = getattr(args, "flags", None) if args is not None else None
    head = text.partition("\n")[0].rstrip(":")
    return f"{head}: " + "; ".join(problem_lines(exc, flag_set))


def main(argv: list[str] | None = None, own_process: bool | None = None) -> int:
    """Run ``dmf`` with ``argv`` (default: sys.argv[1:]); returns the exit status.

    ``own_process``: dmf is the program of this process (default: when argv is None), so the
    driver's C-level stderr may go to the Ray logs (see console)."""
    from dmf_ray.cli import console

    console.own_process(argv is None if own_process is None else own_process)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("dmf: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            logs = console.ray_logs_dir() if _ray_started() else None
            if logs:  # where Ray's side of the failure is (session_latest may be another session's)
                print(f"dmf: Ray's logs of this run: {logs}", file=sys.stderr)
            raise
        print(f"dmf: error: {error_line(exc, args)}", file=sys.stderr)
        if console.owns_process() and not _ray_started():
            _exit_now(EXIT_USAGE)
        return EXIT_USAGE


def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _exit_now(code: int) -> None:
    """End the process with ``code`` at once, skipping interpreter teardown. Only for a user
    error before Ray started (nothing to clean up): with torch and a pyarrow CSV reader both
    loaded (dmf embed's checks of its input files), teardown aborted about half the time
    ("terminate called without an active exception", exit 134 instead of 2; torch 2.13,
    pyarrow 26), which scripts read as a crash."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
