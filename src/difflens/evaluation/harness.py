"""The evaluation: organisms × agents × budgets × repeats, graded, summarised with CIs.

Layout of ``out``::

    runs/<organism>/<agent>_i<budget>_r<repeat>.json   one agent run (transcript, description,
                                                       hypotheses, accounting, grade)
    eval.json                                          config, all rows, summary, method metrics
    table.txt                                          the summary table as text

Finished runs (their JSON has a grade) are reused when the evaluation is run again, so an
interrupted evaluation resumes where it stopped; a run that failed (endpoint error) is saved
without a grade, so the next evaluation retries it instead of counting the failure as a result.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflens.agent import AgentConfig, Anonymizer, ModelAccess, run_agent
from difflens.agent.methods import BLACKBOX, METHODS, agent_names, split_agent
from difflens.agent.results import Results, blackbox_results
from difflens.errors import DifflensError
from difflens.evaluation.metrics import organism_metrics
from difflens.evaluation.stats import format_table, summarize
from difflens.io.artifacts import read_json, write_json
from difflens.llm import LLMClient, LLMConfig
from difflens.organisms.registry import OrganismEntry, load_registry

log = logging.getLogger(__name__)
#: Every agent an evaluation can run: one per registered method (agent/methods.py), and the
#: black box; the default set is the seed's table.
AGENTS = tuple(agent_names())
DEFAULT_AGENTS = ("adl", "mining", BLACKBOX)
AccessFactory = Callable[[OrganismEntry, str], "ModelAccess | None"]


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate (JSON-safe; saved in ``eval.json``)."""

    out: str
    organisms: list[str] = field(default_factory=list)  # empty: every registered organism
    agents: list[str] = field(default_factory=lambda: list(DEFAULT_AGENTS))
    budgets: list[int] = field(default_factory=lambda: [0, 5])
    repeats: int = 1
    runs_root: str | None = None  # <runs_root>/<organism>/<method>
    max_turns: int = 20
    protocol: str = "auto"
    n_boot: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        bad = sorted(set(self.agents) - set(AGENTS))
        if bad:
            raise DifflensError(f"unknown agent(s) {', '.join(bad)}; use {', '.join(AGENTS)}")
        if self.repeats < 1 or any(b < 0 for b in self.budgets):
            raise DifflensError("--repeats must be >= 1 and every budget >= 0")


def _results(config: EvalConfig, organism: str, agent: str) -> Results | None:
    agent, _ = split_agent(agent)  # the +amp variant reads the same results
    if agent == BLACKBOX:
        return blackbox_results()
    if config.runs_root is None:
        return None
    method, run = METHODS[agent], Path(config.runs_root) / organism / agent
    if not method.has_run(run):
        return None  # no finished run: the agent is skipped (a broken one fails in one line)
    return method.load_results(run)


def _secret_names(entry: OrganismEntry) -> list[str]:
    names = [entry.name]
    for path in (entry.training_data, entry.weights):
        if path:
            names.append(Path(path).name)
    return names


def run_eval(config: EvalConfig, agent_llm: LLMConfig, grader: Any,
             access_for: AccessFactory | None = None,
             registry: dict[str, OrganismEntry] | None = None) -> dict[str, Any]:
    """Run (or resume) the evaluation; returns what ``eval.json`` holds.

    ``access_for(entry, agent)`` gives the model access of an organism's agents (None: no
    model; tools then say so).  It is called only when some budget is above 0.
    """
    registry = registry if registry is not None else load_registry()
    names = config.organisms or list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise DifflensError(f"unknown organism(s) {', '.join(unknown)}; known: "
                            f"{', '.join(registry)}")
    out = Path(config.out)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for name in names:
        entry = registry[name]
        anon = Anonymizer(_secret_names(entry))
        for agent in config.agents:
            results = _results(config, name, agent)
            if results is None:
                skipped.append(f"{name}/{agent}: no run directory under --runs-root")
                continue
            access = access_for(entry, agent) if access_for and max(config.budgets) > 0 else None
            for budget in config.budgets:
                for rep in range(config.repeats):
                    path = out / "runs" / name / f"{agent}_i{budget}_r{rep}.json"
                    rows.append(_one(path, entry, agent, budget, rep, results, access, anon,
                                     config, agent_llm, grader))
    summary = summarize(rows, ("agent", "budget"), config.n_boot, config.seed)
    per_organism = summarize(rows, ("organism", "agent", "budget"), config.n_boot, config.seed)
    report = {
        "config": dataclasses.asdict(config),
        "agent_llm": agent_llm.to_dict(),
        "grader": grader.describe(),
        "grader_accounting": grader.accounting(),
        "rows": rows,
        "summary": summary,
        "by_organism": per_organism,
        "method_metrics": {n: organism_metrics(config.runs_root, n) for n in names},
        "skipped": skipped,
    }
    table = format_table(summary, ("agent", "budget"))
    write_json(out / "eval.json", report)
    from difflens.organisms.card import atomic_write_text

    atomic_write_text(out / "table.txt", table + "\n")
    report["table"] = table
    return report


def _one(path: Path, entry: OrganismEntry, agent: str, budget: int, rep: int, results: Results,
         access: ModelAccess | None, anon: Anonymizer, config: EvalConfig,
         agent_llm: LLMConfig, grader: Any) -> dict[str, Any]:
    row = {"organism": entry.name, "agent": agent, "budget": budget, "repeat": rep,
           "file": str(path)}
    if path.is_file():
        saved = read_json(path)
        if "grade" in saved:  # finished earlier: resume
            return {**row, "status": saved["status"], "grade": saved["grade"]}
    log.info("agent %s on %s, budget %d, repeat %d", agent, entry.name, budget, rep)
    run = run_agent(LLMClient(agent_llm), results, access,
                    AgentConfig(budget=budget, max_turns=config.max_turns,
                                protocol=config.protocol, amplify=split_agent(agent)[1]), anon)
    grade: float | None
    if run.status == "error":
        grade = None  # the endpoint failed: counted as an error, not as a bad hypothesis
    elif not run.description.strip():
        grade = 1.0
    else:
        grade = float(grader.hypothesis_score(run.description, entry.long_description,
                                              entry.rubric))
    data = {**run.to_dict(), "organism": entry.name, "agent": agent, "repeat": rep,
            "grade": grade}
    if run.status == "error":  # kept for inspection, without a grade: a rerun retries it
        del data["grade"]
    write_json(path, data)
    return {**row, "status": run.status, "grade": grade}
