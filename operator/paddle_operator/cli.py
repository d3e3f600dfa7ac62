"""``paddle-operator run``: the kopf operator, standalone (one replica, no peering)."""

from __future__ import annotations

import argparse
import ctypes
import logging
import sys
import threading
import time

from .settings import OperatorSettings

M_ARENA_MAX = -8  # glibc mallopt() parameter number


def limit_malloc_arenas(settings: OperatorSettings, arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas before the handler threads start.

    glibc gives each new thread its own arena (up to 8 per core); with dozens of handler threads the
    freed memory of a burst stays scattered over them and RSS never comes back down. Two arenas cost
    nothing measurable here (handlers wait on the API server, not on malloc).
    """
    if settings.malloc_arena_max is not None:
        return  # set by the user or the image: glibc already read it
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass  # not glibc (musl, macOS): nothing to tune


TRIM_PERIOD_S = 30.0


def return_freed_memory(period: float = TRIM_PERIOD_S) -> None:
    """Every ``period`` seconds, hand the memory glibc keeps after frees back to the system.

    A burst (hundreds of resources created at once) decodes thousands of API answers at the same time
    in many threads; once they are freed, glibc keeps most of that heap (it only trims the top of an
    arena), and the operator's RSS stayed at its burst peak. ``malloc_trim(0)`` releases the free
    pages inside the arenas too; with two arenas it takes milliseconds. Not glibc: nothing to do.
    """
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return

    def loop() -> None:
        while True:
            time.sleep(period)
            trim(0)

    threading.Thread(target=loop, name="malloc-trim", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, read the settings once and run kopf with the handlers registered."""
    parser = argparse.ArgumentParser(prog="paddle-operator", description="PaddleModelService operator")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator")
    run.add_argument(
        "--namespace", "-n", action="append", default=[],
        help="namespace to watch (repeatable, globs allowed); default: all namespaces",
    )
    run.add_argument(
        "--liveness", default="http://0.0.0.0:8081/healthz",
        help="health endpoint for the operator's own liveness probe ('' to disable)",
    )
    run.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Kopf logs every handler success at INFO; at scale that is noise, our own modules keep INFO.
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    settings = OperatorSettings()
    limit_malloc_arenas(settings)
    return_freed_memory()
    import kopf

    from . import handlers  # importing registers the handlers and the startup hooks

    handlers.use_settings(settings)

    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
