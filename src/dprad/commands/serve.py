"""Deployment commands: ``serve``, ``monitor``, ``audit-log summarize`` and ``audit-log was-sent``."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated

import typer

from dprad.commands.console import console, print_audit_log_summary, print_monitor, print_was_sent
from dprad.commands.options import DATA
from dprad.errors import DpradError

LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_listen(host: str, port: int) -> None:
    """Refuse a --host that does not resolve or a --port that cannot be bound, before anything is loaded or
    "serving" is printed. Binds every address the host resolves to, as uvicorn (asyncio's create_server)
    will, with SO_REUSEADDR as it sets, and closes them again at once."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise DpradError(f"--host '{host}' does not resolve to an address to listen on ({reason})") from None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as err:
                where = f"{addr[0]} port {port}"
                if err.errno == errno.EADDRINUSE:
                    raise DpradError(
                        f"--port {port}: {where} is already in use (another server?): pick another --port"
                    ) from None
                raise DpradError(
                    f"--host '{host}' --port {port}: cannot listen on {where} ({err.strerror or err})"
                ) from None


def serve(
    run: Annotated[Path, typer.Argument(help="a finished run directory")],
    keys: Annotated[Path, typer.Option("--keys", help="API keys YAML (ids, hashed keys, roles, budgets)")],
    host: Annotated[
        str, typer.Option(help="address to bind; anything but loopback is reachable by others")
    ] = ("127.0.0.1"),
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="budgets database and audit log (default: RUN.serve beside RUN)"),
    ] = None,
    record_reference: Annotated[
        Path | None,
        typer.Option("--record-reference", help="write monitor reference statistics of live traffic here"),
    ] = None,
    max_reports: Annotated[int, typer.Option(help="reports per request")] = 256,
    max_chars: Annotated[int, typer.Option(help="characters per report")] = 20_000,
    max_body_bytes: Annotated[int, typer.Option(help="bytes per request body")] = 1_000_000,
    audit_secret_file: Annotated[
        Path | None,
        typer.Option(
            "--audit-secret-file",
            help="secret (mode 0600, 16+ bytes) for the audit log's keyed hashes of report texts "
            "(default: STATE_DIR/audit.secret, generated on first start)",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="serve a private run whose DP noise is not secret (--noise-seed, or made before secret "
            "noise); GET /v1/model then says so",
        ),
    ] = False,
) -> None:
    """Serve a run over HTTP: POST /v1/classify, GET /v1/model, /healthz, /metrics."""
    import uvicorn

    from dprad.serve.app import ServeLimits, create_app
    from dprad.serve.auditlog import SECRET_FILE

    if not 0 < port < 65536:
        raise DpradError(f"--port {port} must be between 1 and 65535")
    if min(max_reports, max_chars, max_body_bytes) < 1:
        raise DpradError("--max-reports, --max-chars and --max-body-bytes must be at least 1")
    _check_listen(host, port)
    if not _is_loopback(host):
        console.print(
            f"[bold yellow]warning:[/] binding {host}: the API is reachable from other machines. "
            "Put it behind TLS and a firewall; report texts travel in the request bodies."
        )
    state = state_dir or run.parent / f"{run.name}.serve"
    limits = ServeLimits(
        max_body_bytes=max_body_bytes, max_reports_per_request=max_reports, max_report_chars=max_chars
    )
    api = create_app(
        run,
        keys_path=keys,
        state_dir=state,
        limits=limits,
        record_reference=record_reference,
        audit_secret_file=audit_secret_file,
        force=force,
    )
    secret = audit_secret_file or state / SECRET_FILE
    console.print(
        f"serving {run} on http://{host}:{port} (state in {state}; audit log {state / 'audit'}, "
        f"its hashes keyed by {secret})"
    )
    uvicorn.run(api, host=host, port=port, log_level="warning", access_log=False)


def audit_summarize(
    log_dir: Annotated[Path, typer.Argument(help="the audit folder (STATE_DIR/audit)")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False,
) -> None:
    """Usage per key: requests, refusals, reports scored, latency."""
    from dprad.serve.auditlog import summarize

    df = summarize(log_dir)
    if as_json:
        print(json.dumps(df.to_dict(orient="records"), indent=2))
        return
    print_audit_log_summary(df, log_dir)


def audit_was_sent(
    log_dir: Annotated[Path, typer.Argument(help="the audit folder (STATE_DIR/audit)")],
    secret_file: Annotated[
        list[Path],
        typer.Option(
            "--secret-file",
            help="the server's audit secret (STATE_DIR/audit.secret or its --audit-secret-file); "
            "repeat to check lines written before a rotation with the old secrets",
        ),
    ],
    text: Annotated[str | None, typer.Option("--text", help="the exact report text")] = None,
    text_file: Annotated[
        Path | None, typer.Option("--text-file", help="a UTF-8 file holding the exact report text")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False,
) -> None:
    """Was this exact report text sent? Prints the matching lines; exit code 0 if found, 1 if not."""
    from dprad.serve.auditlog import read_secret, was_sent

    report = _text_to_check(text, text_file)
    result = was_sent(log_dir, report, [read_secret(p) for p in secret_file])
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_was_sent(result, text_file if text is None else None, report)
    if not result.found:
        raise typer.Exit(1)


def _text_to_check(text: str | None, text_file: Path | None) -> str:
    if (text is None) == (text_file is None):
        raise DpradError("give the report text to check with exactly one of --text and --text-file")
    if text is not None:
        return text
    assert text_file is not None
    try:
        return text_file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DpradError(f"--text-file {text_file}: no such file") from None
    except UnicodeDecodeError as e:
        raise DpradError(f"--text-file {text_file}: not UTF-8 (byte {e.start})") from None


def monitor(
    run: Annotated[Path, typer.Argument(help="a finished run directory")],
    new_data: Annotated[Path, typer.Argument(help="new reports (any format dprad reads)")],
    labels: Annotated[
        bool,
        typer.Option("--labels/--no-labels", help="NEW_DATA has labels: check per-label sensitivity"),
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the result as JSON")] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="input format (as in dprad train)")
    ] = DATA.format,
    text_col: Annotated[str, typer.Option("--text-col", help="text column of a plain table")] = DATA.text_col,
    id_col: Annotated[str, typer.Option("--id-col", help="report id column of a plain table")] = DATA.id_col,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout instead of a table")] = False,
) -> None:
    """Drift and rare-label sensitivity of NEW_DATA against the run's reference; exit code 1 on an alert."""
    from dprad.io import write_json
    from dprad.serve.monitor import monitor_run

    result = monitor_run(run, new_data, use_labels=labels, format=fmt, text_col=text_col, id_col=id_col)
    d = result.to_dict()
    if out is not None:
        write_json(out, d)
    if as_json:
        print(json.dumps(d, indent=2))
    else:
        print_monitor(result)
    if result.alerted:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``monitor`` and the ``audit-log`` group (``summarize``, ``was-sent``) to ``app``."""
    audit_app = typer.Typer(no_args_is_help=True, help="Read the server's audit log.")
    app.add_typer(audit_app, name="audit-log")
    app.command()(serve)
    audit_app.command("summarize")(audit_summarize)
    audit_app.command("was-sent")(audit_was_sent)
    app.command()(monitor)
