"""``dprad federate server | client | local``: hospitals that train one model without pooling reports."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from dprad.commands.options import TRAIN_OPTIONS, config_from_flags, load_config, with_options
from dprad.errors import DpradError

federate_app = typer.Typer(
    no_args_is_help=True,
    help="Federated DP training: each hospital runs a client on its own reports, one server averages.",
)

Rounds = Annotated[int, typer.Option("--rounds", help="federated rounds")]
MinClients = Annotated[int, typer.Option("--min-clients", help="a round with fewer answering sites fails")]
PerRound = Annotated[
    int | None, typer.Option("--clients-per-round", help="sites asked each round (default: all)")
]
ClientDp = Annotated[
    float | None,
    typer.Option("--client-dp", help="client-level DP at the server: noise multiplier on the clipped sum"),
]
ClientClip = Annotated[float, typer.Option("--client-clip", help="L2 clip of each site's update (client DP)")]
ClientDpMin = Annotated[
    int, typer.Option("--client-dp-min", help="refuse client-level DP below this many sites per round")
]
Force = Annotated[bool, typer.Option("--force", help="run client-level DP below --client-dp-min anyway")]
Timeout = Annotated[float, typer.Option("--timeout", help="seconds a round waits for the sites")]
Schema = Annotated[str, typer.Option("--schema", help="the federation's label schema (name or file)")]
Insecure = Annotated[bool, typer.Option("--insecure", help="run without TLS (loopback or inside a VPN only)")]
SecAgg = Annotated[
    bool | None,
    typer.Option(
        "--secagg/--no-secagg",
        help="secure aggregation (SecAgg+): the server learns only the sum of the hospitals' updates and "
        "histograms (default: on with at least three hospitals)",
    ),
]
MaxDelta = Annotated[
    float, typer.Option("--max-delta", help="refuse, at hello, a site whose delta is above this")
]


@federate_app.command("server")
def server(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="directory for federation.json and the global model")
    ],
    schema: Schema = "chexpert14",
    rounds: Rounds = 10,
    min_clients: MinClients = 2,
    wait_for: Annotated[
        int | None,
        typer.Option("--wait-for", help="sites to wait for before the first round (default: --min-clients)"),
    ] = None,
    clients_per_round: PerRound = None,
    client_dp: ClientDp = None,
    client_clip: ClientClip = 1.0,
    client_dp_min: ClientDpMin = 5,
    force: Force = False,
    timeout: Timeout = 900.0,
    max_delta: MaxDelta = 1e-3,
    secagg: SecAgg = None,
    host: Annotated[str, typer.Option("--host", help="address the SuperLink listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="the SuperLink's port (sites connect to it)")] = 9092,
    ssl_ca_certfile: Annotated[
        Path | None, typer.Option("--ssl-ca-certfile", help="the CA certificate (TLS; see federate certs)")
    ] = None,
    ssl_certfile: Annotated[
        Path | None, typer.Option("--ssl-certfile", help="the server's TLS certificate")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option("--ssl-keyfile", help="the server's TLS key")] = None,
    insecure: Insecure = False,
    admit: Annotated[
        list[str] | None,
        typer.Option(
            "--admit",
            help="NAME=PUBLIC_KEY_FILE of a hospital allowed to join (repeat; see federate node-key): only "
            "these keys connect, each answering only under its NAME",
        ),
    ] = None,
) -> None:
    """Start a Flower SuperLink, wait for --min-clients sites, run the federation, write --out. TLS is on
    unless --insecure: pass the CA, certificate and key files."""
    from dprad.commands.console import print_federation
    from dprad.federate.launch import LinkSecurity, serve
    from dprad.federate.server import FederationConfig

    pairs = []
    for item in admit or []:
        name_, sep, pub = item.partition("=")
        if not sep or not name_ or not pub:
            raise DpradError(f"--admit {item!r}: expected NAME=PUBLIC_KEY_FILE")
        pairs.append((name_, Path(pub)))
    security = LinkSecurity(
        ca=ssl_ca_certfile, cert=ssl_certfile, key=ssl_keyfile, insecure=insecure, admit=tuple(pairs)
    )
    security.check()
    print(f"server: {security.describe()}", flush=True)

    cfg = FederationConfig(
        schema=schema,
        rounds=rounds,
        min_clients=min_clients,
        wait_for=wait_for,
        clients_per_round=clients_per_round,
        client_dp=client_dp,
        client_clip=client_clip,
        client_dp_min=client_dp_min,
        force=force,
        timeout=timeout,
        max_delta=max_delta,
        secagg=secagg,
    )
    aggregation = {
        True: "on (--secagg)",
        False: "OFF (--no-secagg): the server sees each hospital's update",
        None: "on if at least three hospitals pass hello (SecAgg+), off below",
    }
    print(f"server: secure aggregation {aggregation[secagg]}", flush=True)
    print_federation(serve(cfg, out, host=host, port=port, security=security), out)


@federate_app.command("local")
def local(
    sites: Annotated[list[Path], typer.Option("--site", help="a prepared site directory (repeat)")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="directory for federation.json and the global model")
    ],
    schema: Schema = "chexpert14",
    rounds: Rounds = 10,
    min_clients: MinClients = 1,
    clients_per_round: PerRound = None,
    client_dp: ClientDp = None,
    client_clip: ClientClip = 1.0,
    client_dp_min: ClientDpMin = 5,
    force: Force = False,
    max_delta: MaxDelta = 1e-3,
) -> None:
    """The same federation in one process over prepared site directories (a simulation)."""
    from dprad.commands.console import print_federation
    from dprad.federate.local import LocalTransport
    from dprad.federate.server import FederationConfig, run_federation

    cfg = FederationConfig(
        schema=schema,
        rounds=rounds,
        min_clients=min_clients,
        clients_per_round=clients_per_round,
        client_dp=client_dp,
        client_clip=client_clip,
        client_dp_min=client_dp_min,
        force=force,
        max_delta=max_delta,
    )
    print_federation(run_federation(cfg, LocalTransport(list(sites)), out), out)


@federate_app.command("client")
@with_options(TRAIN_OPTIONS)
def client(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="this hospital's site directory (a run directory)")
    ],
    data: Annotated[Path | None, typer.Argument(help="this hospital's reports")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML/JSON RunConfig")] = None,
    name: Annotated[
        str, typer.Option("--name", help="this site's name in the federation's results")
    ] = "site",
    rounds: Annotated[
        int, typer.Option("--rounds", help="rounds this site agrees to; its epsilon covers them")
    ] = 10,
    local_epochs: Annotated[
        float | None,
        typer.Option("--local-epochs", help="epochs per round (default: the head's epochs / rounds)"),
    ] = None,
    superlink: Annotated[
        str | None,
        typer.Option("--superlink", help="HOST:PORT of the server's SuperLink (omit: prepare only)"),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="prepare the site again from scratch")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            help="seconds to reach the SuperLink, and to wait once it has closed before this site finished",
        ),
    ] = 300.0,
    root_certificates: Annotated[
        Path | None,
        typer.Option("--root-certificates", help="the CA certificate that signed the server's (TLS)"),
    ] = None,
    insecure: Insecure = False,
    node_key: Annotated[
        Path | None,
        typer.Option("--node-key", help="this hospital's node private key (see federate node-key)"),
    ] = None,
    **flags: Any,
) -> None:
    """Prepare this hospital's site (labels, splits, features, its noise for --rounds at its --epsilon), then
    join the federation at --superlink. A prepared site resumes: its ledger keeps every round it took."""
    from dprad.config import RunConfig
    from dprad.federate.launch import NodeSecurity, join
    from dprad.federate.site import SITE, Site, prepare_site

    security = NodeSecurity(ca=root_certificates, insecure=insecure, node_key=node_key)
    if superlink is not None:  # checked before the site is prepared: a bad flag costs nothing
        security.check()
        if not (timeout > 0 and math.isfinite(timeout)):
            raise DpradError(f"--timeout {timeout} must be a positive number of seconds")

    if (out / SITE).exists() and not overwrite:
        site = Site(out)
        print(f"site {site.info.name}: resuming ({site.rounds_taken} of {site.info.rounds} round(s) taken)")
    else:
        cfg = config_from_flags(ctx, load_config(config) if config else RunConfig(), flags)
        if data is not None:
            cfg = cfg.with_(data=replace(cfg.data, path=str(data.resolve())))
        elif not cfg.data.path:
            raise DpradError(
                "dprad federate client: give this hospital's reports (DATA) or a --config naming data.path"
            )
        site = prepare_site(cfg, out, name=name, rounds=rounds, local_epochs=local_epochs)
        p = site.plan
        eps = (
            "not private"
            if not p.private
            else f"epsilon {p.cfg.privacy.epsilon}, delta {p.cfg.privacy.delta:.3g}"
        )
        print(
            f"site {name}: {p.n} training {p.unit}s, {rounds} round(s) x {site.info.steps_per_round} step(s), "
            f"{eps}" + (f", noise multiplier {p.noise_multiplier:.4g}" if p.private else "")
        )
    if superlink is None:
        return
    print(f"site {site.info.name}: {security.describe()}", flush=True)
    join(out, superlink, timeout=timeout, tls=security.flags())
    from dprad.run import RunRecord, files

    ledger = RunRecord.open(out).ledger  # the site ends as a run directory of the global model
    print(f"site {site.info.name}: done; ledger {out / files.PRIVACY}: epsilon {ledger.epsilon}")


@federate_app.command("certs")
def certs(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="directory for ca.crt, ca.key, server.pem, server.key")
    ],
    server_name: Annotated[
        str, typer.Option("--server-name", help="the host name or IP address hospitals connect to")
    ],
    days: Annotated[int, typer.Option("--days", help="validity of the certificates")] = 365,
) -> None:
    """A private CA and the server's TLS certificate (for a trial; a hospital should use its own PKI)."""
    from dprad.federate.certs import WARNING, make_certs

    paths = make_certs(out, server_name, days=days)
    print(f"warning: {WARNING}", file=sys.stderr)
    print(
        f"server: --ssl-ca-certfile {paths['ca.crt']} --ssl-certfile {paths['server.pem']} "
        f"--ssl-keyfile {paths['server.key']}; each hospital: --root-certificates {paths['ca.crt']} "
        f"(keys owner-only: {paths['ca.key']}, {paths['server.key']})"
    )


@federate_app.command("node-key")
def node_key_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for node.key and node.pub")],
) -> None:
    """This hospital's node key pair: node.key stays here (owner-only), node.pub goes to the server."""
    from dprad.federate.certs import fingerprint, make_node_key, public_key_bytes

    key, pub = make_node_key(out)
    print(
        f"node key {key} (keep it here, owner-only); give {pub} to the server operator for "
        f"--admit NAME={pub.name} (fingerprint {fingerprint(public_key_bytes(pub))})"
    )


def register(app: typer.Typer) -> None:
    """Add ``federate`` (server, client, local) to ``app``."""
    app.add_typer(federate_app, name="federate")
