"""The `fastgw` command: run, check, routes, demo, echo, version."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import sys

from .config.loader import ConfigError, Loaded, load
from .logs import JsonFormatter


def setup_logging(level: str, form: str = "text") -> None:
    """The gateway's own log (not the access log): human-readable, or one JSON object a line."""
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
        )
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def load_or_report(path: str) -> Loaded | None:
    """The validated config, or None after printing every error."""
    try:
        return load(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from .supervisor import serve

    return serve(args.config)


def cmd_check(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.config)
    if loaded is None:
        return 1
    config = loaded.config
    listen = ", ".join(f"{h}:{p}" for h, p in (lst.address for lst in config.server.listen))
    plugins = sorted({*config.plugins, *(name for r in config.routes for name in r.plugins)})
    summary = (
        f"ok: {args.config} ({loaded.digest}): {len(config.routes)} route(s), "
        f"{len(config.upstreams)} upstream(s), {sum(len(u.targets) for u in config.upstreams.values())} target(s), "
        f"{len(config.consumers)} consumer(s), plugins: {', '.join(plugins) or 'none'}, "
        f"listening on {listen}, workers: {config.server.workers}"
    )
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(loaded.redact(summary))
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    from .admin import route_table

    loaded = load_or_report(args.config)
    if loaded is None:
        return 1
    header = {k: k.upper() for k in ("path", "methods", "hosts", "route", "upstream", "options")}
    rows = [list(header.values())] + [list(row.values()) for row in route_table(loaded)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print(loaded.redact(line.rstrip()))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """A short summary of a running gateway, from its admin API."""
    from .status import summary

    address, token = args.admin, args.token or os.environ.get("FASTGW_ADMIN_TOKEN")
    if address is None:
        if args.config is None:
            print("status: give -c FILE or --admin HOST:PORT", file=sys.stderr)
            return 2
        loaded = load_or_report(args.config)
        if loaded is None:
            return 1
        admin = loaded.config.server.admin
        if admin is None:
            print(f"{args.config}: no server.admin: the gateway has no admin API", file=sys.stderr)
            return 1
        address = f"{admin.address[0]}:{admin.address[1]}"
        token = token or admin.token
    try:
        print(summary(address, token))
    except (OSError, ValueError) as exc:
        print(f"status: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Print a scrypt hash for `consumers[].basic_auth.password_hash`."""
    import getpass

    from .plugins.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("the two passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def version_text() -> str:
    """fastgw's version and those of what its speed depends on."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return (
        f"fastgw {__version__} (Python {platform.python_version()}, uvloop {of('uvloop')}, "
        f"httptools {of('httptools')})"
    )


def cmd_version(args: argparse.Namespace) -> int:
    print(version_text())
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from .demo import run_echo

    run_echo(args.host, args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The echo upstream in a child process, the gateway in the foreground."""
    from .demo import run_echo
    from .supervisor import serve

    loaded = load_or_report(args.config)
    if loaded is None:
        return 1
    targets = [t.url for u in loaded.config.upstreams.values() for t in u.targets]
    if not targets:
        print(f"{args.config}: no upstream target to start the echo upstream on")
        return 1
    _, host, port = targets[0]
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        run_echo(host, port)
        os._exit(0)
    listen = loaded.config.server.listen[0].address
    logging.getLogger("fastgw").info(
        "demo: echo upstream on %s:%d; try: curl http://%s:%d/echo/hello", host, port, *listen
    )
    try:
        return serve(args.config)
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass  # already gone (a signal to the whole process group ends it too)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastgw", description="A fast HTTP/1.1 API gateway.")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("FASTGW_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("FASTGW_LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="the gateway's own log: human-readable (default) or one JSON object per line",
    )
    parser.add_argument("--version", action="version", version=version_text())
    commands = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("run", cmd_run, "run the gateway in the foreground (SIGHUP reloads, SIGTERM drains)"),
        ("check", cmd_check, "validate a config file and print every error"),
        ("routes", cmd_routes, "print the compiled route table"),
        ("demo", cmd_demo, "run an echo upstream and the gateway on the example config"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("-c", "--config", required=True, help="config file (.yaml, .yml or .toml)")
        sub.set_defaults(func=func)
    hasher = commands.add_parser(
        "hash-password",
        help="print a scrypt hash for basic-auth (reads the password from stdin or the terminal)",
    )
    hasher.set_defaults(func=cmd_hash_password)
    status = commands.add_parser(
        "status", help="a short summary of a running gateway (from its admin API)"
    )
    status.add_argument("-c", "--config", help="the gateway's config file (its admin address)")
    status.add_argument("--admin", help="the admin listener, HOST:PORT (instead of -c)")
    status.add_argument(
        "--token", help="the admin token (default: the config's, or $FASTGW_ADMIN_TOKEN)"
    )
    status.set_defaults(func=cmd_status)
    commands.add_parser(
        "version", help="print the versions of fastgw, Python, uvloop and httptools"
    ).set_defaults(func=cmd_version)
    echo = commands.add_parser("echo", help="run the echo upstream used by the demo")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=9001)
    echo.set_defaults(func=cmd_echo)
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
