"""``dprad federate server | client | local``: hospitals that train one model without pooling reports."""

from __future__ import annotations

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
    host: Annotated[str, typer.Option("--host", help="address the SuperLink listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="the SuperLink's port (sites connect to it)")] = 9092,
) -> None:
    """Start a Flower SuperLink, wait for --min-clients sites, run the federation, write --out."""
    from dprad.commands.console import print_federation
    from dprad.federate.launch import serve
    from dprad.federate.server import FederationConfig

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
    )
    print_federation(serve(cfg, out, host=host, port=port), out)


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
    **flags: Any,
) -> None:
    """Prepare this hospital's site (labels, splits, features, its noise for --rounds at its --epsilon), then
    join the federation at --superlink. A prepared site resumes: its ledger keeps every round it took."""
    from dprad.config import RunConfig
    from dprad.federate.launch import join
    from dprad.federate.site import SITE, Site, prepare_site

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
    join(out, superlink)
    from dprad.run import RunRecord

    ledger = RunRecord.open(out).ledger  # the site ends as a run directory of the global model
    print(f"site {site.info.name}: done; ledger {out / 'privacy.json'}: epsilon {ledger.epsilon}")


def register(app: typer.Typer) -> None:
    """Add ``federate`` (server, client, local) to ``app``."""
    app.add_typer(federate_app, name="federate")
