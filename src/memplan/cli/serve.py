"""``memplan serve [--host 127.0.0.1] [--port 8000]``: the web page and JSON API (optional ``web`` extra)."""

from __future__ import annotations

import argparse
import sys

#: Address bound by default: this machine only. Serving others is a choice (``--host 0.0.0.0``).
DEFAULT_HOST = "127.0.0.1"
#: Default port (uvicorn's own default).
DEFAULT_PORT = 8000
#: Hosts that mean "every interface".
_ALL_INTERFACES = {"0.0.0.0", "::", ""}


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``serve`` command."""
    parser = subparsers.add_parser(
        "serve", help="web page and JSON API (pip install 'memplan[web]')",
        description="Serve the page (GET /), the JSON API (POST /api/estimate, /api/check, /api/plan; GET "
                    "/api/models, /api/gpus; answers equal the CLI's --json) and its docs (/docs).")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--allow-hub", action="store_true",
                        help="let model names that are hub ids be fetched from the Hugging Face hub (off: presets "
                             "and uploaded config.json only)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start uvicorn with the app; a missing web extra is a one-line error (exit 2)."""
    from memplan.errors import ConfigError

    if not 0 < args.port < 65536:
        raise ConfigError("--port", f"must be 1..65535, got {args.port}")
    try:
        import uvicorn

        from memplan.web.app import create_app
    except ImportError as exc:
        print(f"memplan serve: needs the web extra ({exc.name} is missing): pip install 'memplan[web]'",
              file=sys.stderr)
        return 2
    if args.host in _ALL_INTERFACES:
        print(f"memplan serve: warning: --host {args.host} serves every network interface; anyone who can reach "
              f"this machine can use it", file=sys.stderr)
    print(f"memplan: serving on http://{args.host}:{args.port}/  (API docs at /docs; Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(create_app(allow_hub=args.allow_hub), host=args.host, port=args.port, log_level="warning")
    return 0
