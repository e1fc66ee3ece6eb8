"""Secure aggregation of a federation's releases with Flower's SecAgg+ (``SecAggPlusWorkflow`` at the
server, ``secaggplus_mod`` at each site): the server learns the weighted sum of the hospitals' vectors,
never one hospital's vector.

What goes through the secure sum:

* **a round's updates**: each site sends its update (its new parameters less the global ones it was
  sent), weighted by its training units inside the sum (Flower multiplies the vector by
  ``units / max_units`` and masks the factor with it), so FedAvg's units-weighted mean is unchanged. The
  units are the site's training-set size, which DP-SGD treats as public (its ledger says so) and which
  the site states at hello; the server needs the largest one to fix the scale (``max_weight``). Under
  client-level DP each site clips its own update to ``--client-clip`` before masking (the server can no
  longer clip what it cannot see) and the server adds its noise to the sum;
* **the thresholds' noisy histograms**, with equal weights: the mean times the number of sites is their
  sum.

SecAgg+ works on integers: each value is clipped to a public range and stochastically rounded to one of
``QUANTIZATION`` levels. dprad does not let that clipping happen silently: a site whose vector leaves the
range fails the round with a one-line reason. The rounding error of a mean is at most
:func:`rounding_bound` per coordinate (about 1e-6 for updates, 0.008 of a count per histogram bin and
site). What stays in clear beside the masked vectors: each site's epsilon, delta and sigma (numbers of
its ledger, not of its data) and which sites answered.

Security (honest-but-curious server, SecAgg+'s model): a hospital's vector is revealed only if the server
gathers ``threshold`` shares of its secrets, which takes that many colluding hospitals; with ``n`` sites,
``threshold`` is ``ceil(2n / 3)`` (at least 2), so up to ``n - threshold`` sites may drop out of a round
and it still completes. Two sites can be summed securely (the server learns only their sum, and no site
may drop out), but each of them, knowing its own update and the averaged model, holds the other's: so
secure aggregation is on by default only from three hospitals (``AUTO_SITES``), and a federation that
began secure stays secure when dropouts leave two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow
from flwr.serverapp import Grid

from dprad.errors import DpradError
from dprad.federate.protocol import SecureAsk, SecureResult

QUANTIZATION = 2**24  # levels per value; Flower's default is 2**22, 2**24 keeps an update's error near 1e-6
MODULUS = 2**32  # the mask space (Flower's largest); n sites' quantised values must sum below it
MAX_SITES = MODULUS // QUANTIZATION - 1  # 255
MIN_SITES = 2  # a secure sum of one site is its vector
AUTO_SITES = 3  # on by default from this many hospitals
UPDATE_RANGE = 8.0  # |update coordinate| allowed in the sum (a round's change of a head or adapter)
HISTOGRAM_RANGE = float(2**16)  # |noisy count| allowed per bin and site (65,536 validation reports)


def threshold_for(n: int) -> int:
    """Shares needed to reveal a site's secrets in a round of ``n`` sites: ceil(2n/3), at least 2."""
    return max(2, math.ceil(2 * n / 3))


def rounding_bound(value_range: float) -> float:
    """The most a secure mean's coordinate can differ from the exact mean by rounding alone: one
    quantisation step (each site's stochastic rounding moves its value by less than a step, and the mean
    of those errors is smaller still), plus the rounding of the weights, bounded by the same step."""
    return 2 * (2 * value_range / QUANTIZATION)


def check_sites(n: int) -> None:
    """Refuse a secure round that SecAgg+ cannot make secure, or whose sum would overflow its modulus."""
    if n < MIN_SITES:
        raise DpradError(
            f"secure aggregation needs at least {MIN_SITES} hospitals in a round, and {n} took part: the sum of "
            "one is its update (pass --no-secagg)"
        )
    if n > MAX_SITES:
        raise DpradError(
            f"secure aggregation sums at most {MAX_SITES} hospitals' vectors in {MODULUS:#x} without overflow; "
            f"{n} took part (set --clients-per-round)"
        )


@dataclass
class _Round(Strategy):
    """The legacy strategy SecAggPlusWorkflow drives: hands out one round's instructions and keeps the
    aggregate it is given (Flower has replaced each result's parameters with the secure mean)."""

    instructions: list[tuple[ClientProxy, FitIns]]
    result: SecureResult | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return self.instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results:
            return None, {}
        answered = [str(proxy.node_id) for proxy, _ in results]
        self.result = SecureResult(
            mean=parameters_to_ndarrays(results[0][1].parameters),
            answered=answered,
            failed={},
            metrics={
                str(proxy.node_id): {k: float(cast(float, v)) for k, v in res.metrics.items()}
                for proxy, res in results
            },
        )
        return results[0][1].parameters, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


def secure_mean(grid: Grid, context: Context, ask: SecureAsk) -> SecureResult:
    """One SecAgg+ round over ``nodes``: each is sent ``model`` (its arrays in sorted name order) and
    ``config``, and answers (at its ``secaggplus_mod``) with a vector and an integer weight; returns the
    weighted mean of the vectors of the sites that completed the round."""
    check_sites(len(ask.nodes))
    names = sorted(ask.model)
    parameters = ndarrays_to_parameters([np.asarray(ask.model[k]) for k in names])
    instructions = {
        "dprad": ask.kind,
        "round": ask.server_round,
        "names": "\n".join(names),
        "range": float(ask.value_range),
        "max_weight": float(ask.max_weight),
        **ask.config,
    }
    strategy = _Round(
        [(GridClientProxy(int(n), grid, context.run_id), FitIns(parameters, instructions)) for n in ask.nodes]
    )
    legacy = LegacyContext(context, strategy=strategy)
    legacy.state = RecordDict(  # the workflow's own state for this round, not the ServerApp's
        {
            MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: ask.server_round}),
            MAIN_PARAMS_RECORD: compat.parameters_to_arrayrecord(parameters, keep_input=True),
        }
    )
    workflow = SecAggPlusWorkflow(
        num_shares=1.0,  # every site of the round holds a share of every other's secrets
        reconstruction_threshold=threshold_for(len(ask.nodes)),
        max_weight=float(ask.max_weight),
        clipping_range=float(ask.value_range),
        quantization_range=QUANTIZATION,
        modulus_range=MODULUS,
        timeout=ask.timeout,
    )
    workflow(grid, legacy)
    if strategy.result is None:
        raise DpradError(
            f"{ask.kind} round {ask.server_round}: secure aggregation halted: fewer than {threshold_for(len(ask.nodes))} of "
            f"{len(ask.nodes)} hospitals completed its stages within {ask.timeout:.0f} s (more dropped out than SecAgg+ "
            "can recover from)"
        )
    failed = {n: "dropped out of the secure round" for n in ask.nodes if n not in strategy.result.answered}
    return SecureResult(strategy.result.mean, strategy.result.answered, failed, strategy.result.metrics)


@dataclass(frozen=True)
class SecureTask:
    """A site's stage-2 instruction, read back from Flower's legacy FitIns."""

    kind: str
    server_round: int
    model: dict[str, np.ndarray]
    config: dict[str, Any]
    value_range: float
    max_weight: float


def is_secure(message: Message) -> bool:
    """A SecAgg+ stage message (every stage travels as a ``train`` message carrying its configs)."""
    return RECORD_KEY_CONFIGS in message.content.config_records


def task_of(content: RecordDict) -> SecureTask:
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    cfg = dict(fitins.config)
    names = str(cfg.pop("names")).split("\n")
    arrays = parameters_to_ndarrays(fitins.parameters)
    return SecureTask(
        kind=str(cfg.pop("dprad")),
        server_round=int(cast(int, cfg.pop("round"))),
        model=dict(zip(names, arrays, strict=True)),
        value_range=float(cast(float, cfg.pop("range"))),
        max_weight=float(cast(float, cfg.pop("max_weight"))),
        config=cfg,
    )


def answer(
    task: SecureTask, site_name: str, vector: list[np.ndarray], weight: int, metrics: dict[str, float]
) -> RecordDict:
    """The site's stage-2 answer before masking (``secaggplus_mod`` masks it and clears the arrays):
    refused in one line, not clipped, when a value is outside the public range or the weight above the
    largest the server declared."""
    largest = max((float(np.max(np.abs(v))) for v in vector if np.size(v)), default=0.0)
    if not math.isfinite(largest) or largest > task.value_range:
        raise DpradError(
            f"site {site_name}: its {task.kind} vector of round {task.server_round} reaches {largest:.4g}, outside "
            f"the secure sum's range ±{task.value_range:g}; the round fails instead of clipping it silently"
        )
    if weight > task.max_weight:
        raise DpradError(
            f"site {site_name}: its weight {weight} is above the {task.max_weight:g} the server declared at hello"
        )
    fitres = FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters([np.asarray(v, dtype=np.float64) for v in vector]),
        int(weight),
        cast(dict[str, Scalar], metrics),
    )
    return compat.fitres_to_recorddict(fitres, keep_input=True)


def clip_l2(update: list[np.ndarray], clip: float) -> list[np.ndarray]:
    """An update scaled to L2 norm at most ``clip`` (client-level DP's clipping, done at the site)."""
    norm = math.sqrt(sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return [np.asarray(u, dtype=np.float64) * scale for u in update]


__all__ = [
    "AUTO_SITES",
    "HISTOGRAM_RANGE",
    "MAX_SITES",
    "MIN_SITES",
    "QUANTIZATION",
    "UPDATE_RANGE",
    "SecureTask",
    "answer",
    "check_sites",
    "clip_l2",
    "is_secure",
    "rounding_bound",
    "secure_mean",
    "task_of",
    "threshold_for",
]
