"""Label reports with a teacher, and measure a teacher against gold labels.

Teachers: ``rules`` (dprad's negation- and uncertainty-aware rules for the schema), ``llm`` (a local
OpenAI-compatible server, :mod:`dprad.labeling.llm`) and ``gold`` (the labels already in the data). Each
gives one label dict per report (None: no labels) and a :class:`TeacherRecord` saying who wrote them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dprad.data.provenance import TeacherRecord, rules_detail
from dprad.data.reports import Report
from dprad.data.schemas import LabelSchema, UncertainPolicy
from dprad.errors import DpradError
from dprad.labeling.llm import LLMConfig, Structured

TEACHERS = ("rules", "llm", "gold")
API_KEY_ENV = "DPRAD_LLM_API_KEY"  # the LLM server's API key, if it wants one: never a flag (shell history)

Labels = dict[str, int] | None
# opens a progress display for (teacher, number of reports); yields done(n): n reports are labelled
ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@dataclass(frozen=True)
class Labelled:
    """A teacher's labels, one per report (None: the teacher gave none), and who wrote them."""

    labels: list[Labels]
    record: TeacherRecord
    llm_summary: dict[str, Any] | None = None  # the LLM teacher's requests, cache hits, retries and failures

    @property
    def unlabelled(self) -> int:
        return sum(lab is None for lab in self.labels)

    @property
    def llm_failed(self) -> int:
        return int(self.llm_summary["failed"]) if self.llm_summary else 0


def check_teacher(teacher: str) -> None:
    if teacher not in TEACHERS:
        raise DpradError(f"--teacher '{teacher}' must be rules, llm or gold")


def llm_config(
    url: str | None,
    model: str | None,
    *,
    allow_hosts: Sequence[str] | None = (),
    timeout_s: float = 60.0,
    max_retries: int = 3,
    concurrency: int = 4,
    cache_dir: str | Path | None = None,
    structured: Structured = "auto",
    max_tokens: int = 512,
) -> LLMConfig:
    """The LLM teacher's settings; the API key comes from the environment (``DPRAD_LLM_API_KEY``)."""
    if not url or not model:
        raise DpradError("--teacher llm needs --llm-url and --llm-model")
    return LLMConfig(
        url=url,
        model=model,
        allow_hosts=tuple(allow_hosts or ()),
        timeout_s=timeout_s,
        max_retries=max_retries,
        concurrency=concurrency,
        cache_dir=str(cache_dir) if cache_dir else None,
        api_key=os.environ.get(API_KEY_ENV),
        structured=structured,
        max_tokens=max_tokens,
    )


@contextmanager
def _no_progress(_teacher: str, _total: int) -> Iterator[Callable[[int], None]]:
    yield lambda _n: None


def label_reports(
    reports: Sequence[Report],
    schema: LabelSchema,
    teacher: str,
    *,
    source: str | Path,
    llm: LLMConfig | None = None,
    progress: ProgressFactory | None = None,
) -> Labelled:
    """Label ``reports`` (read from the file ``source``) with ``teacher``; ``llm`` is required for the LLM
    teacher. The LLM teacher's failures leave their reports unlabelled (``llm_summary['failed']``)."""
    check_teacher(teacher)
    name = Path(source).name
    show = progress or _no_progress
    summary: dict[str, Any] | None = None
    if teacher == "gold":
        if not any(r.labels is not None for r in reports):
            raise DpradError(f"{source}: --teacher gold needs gold labels, and no report has any")
        labels: list[Labels] = [r.labels for r in reports]
        detail = f"the labels already in {name}"
    elif teacher == "rules":
        from dprad.labeling.rules import label_text, rules_for

        rules = rules_for(schema)
        labels = []
        with show("rules", len(reports)) as done:
            for r in reports:
                labels.append(label_text(r.text, rules))
                done(len(labels))
        detail = rules_detail(schema.name)
    else:
        from dprad.labeling.llm import LLMTeacher

        if llm is None:
            raise DpradError("--teacher llm needs --llm-url and --llm-model")
        teacher_llm = LLMTeacher(llm, schema)
        with show("llm", len(reports)) as done:
            labels = list(teacher_llm.label(reports, progress=done))
        summary = teacher_llm.summary.to_dict()
        detail = (
            f"model {llm.model} at {llm.url}, prompt {summary['prompt_version']}, "
            f"structured output {summary['structured_output']}"
        )
    record = TeacherRecord(
        teacher=teacher,
        detail=detail,
        source=name,
        reports=len(reports),
        unlabelled=sum(lab is None for lab in labels),
    )
    return Labelled(labels, record, summary)


def gold_for(
    reports: Sequence[Report], labelled: Labelled, gold_reports: Sequence[Report] | None = None
) -> list[Labels] | None:
    """The gold labels to measure a teacher against: ``gold_reports``' (matched by report id) when given,
    else the reports' own labels when they have any and the teacher is not gold itself; else None."""
    if gold_reports is not None:
        by_id = {r.id: r.labels for r in gold_reports}
        return [by_id.get(r.id) for r in reports]
    if labelled.record.teacher != "gold" and any(r.labels is not None for r in reports):
        return [r.labels for r in reports]
    return None


def measure(
    labelled: Labelled, gold: Sequence[Labels], reports: Sequence[Report], schema: LabelSchema
) -> dict[str, Any]:
    """The teacher's agreement with gold (uncertain counted as positive; patient-bootstrap intervals), with
    the LLM teacher's summary beside it."""
    from dprad.labeling.agreement import agreement

    report = agreement(
        labelled.labels,
        gold,
        schema,
        policy=UncertainPolicy.ONES,
        patient_ids=[r.patient_id for r in reports],
    )
    if labelled.llm_summary is not None:
        report["llm"] = labelled.llm_summary
    return report
