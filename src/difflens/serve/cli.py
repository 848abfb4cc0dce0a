"""``difflens serve``: flags, the port check and the server (uvicorn on a socket bound first)."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from typing import Any

from difflens.errors import DifflensError

LOCALHOST = "127.0.0.1"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from difflens.cli_args import add_model_args

    p = sub.add_parser(
        "serve", help="local web page: run list, reports and a live playground",
        description="Serve a local page listing the run directories under --runs (with their "
                    "reports) and a playground: base / finetuned / amplified / ADL-steered "
                    "continuations of a prompt, streamed as they are generated, the finetuned "
                    "one coloured by per-token KL. Listens on 127.0.0.1 unless --host is given. "
                    "With no model flags: the embedded gemma-3-270m base and the shipped "
                    "cake_bake organism. Needs the serve extra: pip install 'difflens[serve]'.")
    add_model_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--runs", default="runs", help="directory whose run directories are listed "
                                                  "(default: runs)")
    g.add_argument("--adl-run", default=None,
                   help="ADL run directory of this pair: steer along its δ̄ at its readout "
                        "layer (default: a short ADL-like pass over 64 reference texts at "
                        "startup)")
    g.add_argument("--host", default=LOCALHOST,
                   help="address to listen on (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    g.add_argument("--max-new-tokens", type=int, default=64,
                   help="most new tokens a request may ask for, per column (default 64)")
    g.add_argument("--max-prompt-chars", type=int, default=2000,
                   help="longest prompt accepted, in characters (default 2000)")
    p.set_defaults(handler=run)


def require_extra() -> None:
    """One line naming the extra when the web library is missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise DifflensError(f"difflens serve needs the web library ({exc.name} is missing); "
                            "install it with pip install 'difflens[serve]'") from None


def check_flags(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise DifflensError(f"--port {args.port} is not a port; give 1-65535")
    if not 1 <= args.max_new_tokens <= 4096:
        raise DifflensError(f"--max-new-tokens {args.max_new_tokens} is out of range; give "
                            "1-4096")
    if not 1 <= args.max_prompt_chars <= 100_000:
        raise DifflensError(f"--max-prompt-chars {args.max_prompt_chars} is out of range; "
                            "give 1-100000")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a one-line error (port in use, bad address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise DifflensError(f"--host {host} is not an address of this machine; give one such "
                            "as 127.0.0.1") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise DifflensError(f"port {port} is in use; choose another with --port") from None
        raise DifflensError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another "
                            "--host or --port") from None
    return sock


def run(args: argparse.Namespace) -> int:
    """Check everything cheap, bind the port, then serve (models load in the background)."""
    from pathlib import Path

    from difflens.cli_args import load_options, model_sources

    require_extra()
    check_flags(args)
    sources = model_sources(args)
    options = load_options(args)
    if args.adl_run:
        from difflens.methods.adl.result import ADLResult

        ADLResult.load(args.adl_run)  # a wrong directory fails here, in one line
    runs = Path(args.runs)
    if runs.exists() and not runs.is_dir():
        raise DifflensError(f"--runs {runs} is not a directory")
    sock = bind(args.host, args.port)
    if args.host != LOCALHOST:
        print(f"difflens: warning: listening on {args.host}: anyone who can reach this machine "
              "can use the models and read the run directories (no authentication)",
              file=sys.stderr)
    return serve(sock, runs, sources, options, args)


def serve(sock: socket.socket, runs: Any, sources: Any, options: Any,
          args: argparse.Namespace) -> int:
    import uvicorn

    from difflens.serve.app import Limits, State, create_app
    from difflens.serve.engine import Playground

    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"

    def loader() -> Playground:
        return Playground.load(sources.base, sources.finetuned, options, args.adl_run)

    def loaded(state: State) -> None:
        if state.playground is None:
            print(f"difflens: error: the models failed to load: {state.error} (the run list "
                  f"still works at {url}/)", file=sys.stderr, flush=True)
        else:
            print(f"models ready: playground at {url}/play", flush=True)

    app = create_app(runs, loader, Limits(args.max_prompt_chars, args.max_new_tokens), loaded)
    print(f"serving {url}/ (runs under {runs}); loading the models… (Ctrl-C stops)",
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
    return 0
