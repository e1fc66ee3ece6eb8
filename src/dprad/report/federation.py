"""A federation in the report and the model card: each hospital's own guarantee, its rounds and its
metrics on its own test split, the network's pooled counts, the thresholds' origin and, where used,
client-level DP. Every number is read from ``federation.json``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dprad.run.federation import FederationRecord, SiteResult


def _ci(x: dict[str, float] | None) -> str:
    if not x:
        return "-"
    return f"{x['estimate']:.3f} [{x['ci_low']:.3f}, {x['ci_high']:.3f}]"


def _guarantee(s: SiteResult) -> str:
    if not s.private:
        return "none (not private)"
    if s.epsilon is None:
        return "private; no release yet"
    return f"ε = {s.epsilon:.3g}, δ = {s.delta:.3g}" if s.delta is not None else f"ε = {s.epsilon:.3g}"


def site_rows(fed: FederationRecord) -> list[dict[str, str]]:
    rows = [
        {
            "hospital": s.name,
            "its own guarantee (patient-level, its ledger)": _guarantee(s),
            "rounds taken / agreed": f"{s.rounds} / {s.rounds_agreed}",
            "test reports": "-" if s.reports is None else str(s.reports),
            "weighted F1 [95% CI]": _ci(s.weighted_f1),
            "macro F1 [95% CI]": _ci(s.macro_f1),
        }
        for s in fed.sites
    ]
    if fed.overall is not None:
        rows.append(
            {
                "hospital": "all hospitals (counts summed)",
                "its own guarantee (patient-level, its ledger)": "each hospital's own, above",
                "rounds taken / agreed": f"{sum('answered' in r for r in fed.rounds)} rounds",
                "test reports": str(fed.overall["reports"]),
                "weighted F1 [95% CI]": _ci(fed.overall["headline"]["weighted_f1"]),
                "macro F1 [95% CI]": _ci(fed.overall["headline"]["macro_f1"]),
            }
        )
    return rows


def round_rows(fed: FederationRecord) -> list[dict[str, str]]:
    out = []
    for r in fed.rounds:
        trouble = {**r.get("declined", {}), **r.get("failed", {})}
        out.append(
            {
                "round": str(r["round"]),
                "answered (training units)": ", ".join(f"{k} ({v})" for k, v in r.get("answered", {}).items())
                or r.get("stopped", "-"),
                "declined or failed": "; ".join(f"{k}: {v}" for k, v in trouble.items()) or "-",
                "aggregation": "secure sum (SecAgg+)" if r.get("secure_aggregation") else "plain",
            }
        )
    return out


def client_dp_rows(fed: FederationRecord) -> list[dict[str, str]]:
    c = fed.client_level_dp
    if not c:
        return []
    return [
        {
            "hospital": name,
            "rounds": str(d["rounds"]),
            "client-level ε": f"{d['epsilon']:.3g}",
            "δ": f"{c['delta']:.3g}",
            "noise multiplier": f"{c['noise_multiplier']:.3g}",
            "update clip": f"{c['clip']:.3g}",
        }
        for name, d in c["per_site"].items()
    ]


def federation_context(paths: Sequence[Path], table: Any) -> list[dict[str, Any]]:
    """One block per federation directory for the report's template."""
    blocks = []
    for i, p in enumerate(paths):
        fed = FederationRecord.open(p)
        blocks.append(
            {
                "name": p.name,  # a name, not the machine's path
                "config": fed.config,
                "thresholds": fed.thresholds.get("rule", ""),
                "refused": fed.refused,
                "sites": table(f"table-federation-{i}", site_rows(fed)),
                "rounds": table(f"table-federation-rounds-{i}", round_rows(fed)),
                "client_dp": table(f"table-federation-client-dp-{i}", client_dp_rows(fed)),
            }
        )
    return blocks


def federation_card(fed: FederationRecord) -> str:
    """MODEL_CARD.md of a federation's global model: each hospital's guarantee first."""
    lines = [
        f"# Model card: federated model ({fed.path.name})",
        "",
        f"A linear head on frozen encoder features, trained by {len(fed.sites)} hospitals that did not pool their "
        f"reports (dprad federate, {sum('answered' in r for r in fed.rounds)} rounds, schema "
        f"{fed.config.get('schema')}). Only head weights, counts and noisy histograms left each hospital.",
        "",
        "## Privacy: each hospital's own guarantee",
        "",
        "Every hospital ran patient-level DP-SGD on its own reports and kept its own ledger (privacy.json in "
        "its site directory); its epsilon composes every round it took part in and its share of the "
        "thresholds. A guarantee covers that hospital's patients only; it is not a network-wide epsilon.",
        "",
        "| hospital | guarantee | rounds taken / agreed |",
        "|---|---|---|",
        *(f"| {s.name} | {_guarantee(s)} | {s.rounds} / {s.rounds_agreed} |" for s in fed.sites),
        "",
    ]
    secure = fed.secure_aggregation
    lines += [
        (
            f"Aggregation: secure ({secure['protocol']}, threshold {secure['threshold'].split(':')[0]}): the server "
            f"saw {secure['server_sees']}."
            if secure.get("on")
            else "Aggregation: plain: the server saw each hospital's update and noisy histograms (each under "
            "that hospital's patient-level DP)."
        ),
        "",
    ]
    if fed.client_level_dp:
        c = fed.client_level_dp
        lines += [
            f"Client-level DP at the server (unit: {c['unit']}): noise multiplier {c['noise_multiplier']:.3g} on "
            f"updates clipped to {c['clip']:.3g}, δ = {c['delta']:.3g}; per hospital: "
            + ", ".join(
                f"{k} ε = {d['epsilon']:.3g} over {d['rounds']} rounds" for k, d in c["per_site"].items()
            )
            + f". Accounting: {c['accountant']}.",
            "",
        ]
    lines += [
        "## Metrics (each hospital's own test split, at the shipped thresholds)",
        "",
        f"Thresholds: {fed.thresholds.get('rule', '')}.",
        "",
        "| hospital | test reports | weighted F1 [95% CI] | macro F1 [95% CI] |",
        "|---|---|---|---|",
        *(
            f"| {r['hospital']} | {r['test reports']} | {r['weighted F1 [95% CI]']} | {r['macro F1 [95% CI]']} |"
            for r in site_rows(fed)
        ),
        "",
        "Intervals: patients resampled within each hospital; the network's interval sums the resamples (a "
        "bootstrap stratified by hospital). The evaluation counts are released exactly, like any published test "
        "metric: the test splits were never trained on, and the counts are outside the DP guarantee.",
        "",
        "## Not covered by differential privacy",
        "",
        "- the base encoder and its pre-training data (no DP there);",
        "- which hospitals took part, their training-set sizes (the averaging weights) and rounds taken;",
        "- the test-split counts of the evaluation (exact, see above).",
        "",
    ]
    return "\n".join(lines)


__all__ = ["client_dp_rows", "federation_card", "federation_context", "round_rows", "site_rows"]
