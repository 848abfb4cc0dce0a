"""One agent on any model pair: run or reuse the method runs it reads, then the agent.

Layout of the run directory ``DIR`` (default ``runs/agent-<hash>``, the hash of the pair, the
methods with their settings and the agent settings)::

    DIR/<method>/             an ordinary run directory of each method (``difflens adl`` / ...):
                              reused when finished with the same settings, resumed when not,
                              refused in one line when made with other settings
    DIR/agent/run.json        the agent settings ({"kind": "agent", "config": ...})
    DIR/agent/transcript.json every message exchanged with the LLM
    DIR/agent/accounting.json LLM calls and tokens (``llm/accounting.py``), model interactions,
                              turns, protocol, seconds
    DIR/agent/hypotheses.json the hypothesis log and the tools called, in order
    DIR/agent/answer.json     the final answer and its evidence; written last (atomically), so
                              its presence marks a finished agent run

A finished agent run with the same settings is reused (nothing is loaded, no LLM call);
``again=True`` (``--again``) runs the agent anew and replaces ``DIR/agent`` (the method runs are
still reused).  A run that failed on the endpoint is kept for inspection and retried on the next
invocation.  The API key is read from the environment by the client and written nowhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from difflens.agent.methods import AgentMethod, combine, get_method
from difflens.errors import DifflensError
from difflens.io.artifacts import check_same_settings, config_hash, read_optional_json, write_json

log = logging.getLogger(__name__)
AGENT_DIR = "agent"
FILES = {"transcript": "transcript.json", "accounting": "accounting.json",
         "hypotheses": "hypotheses.json", "answer": "answer.json"}
#: Model interactions of the agent when not given: the highest of ``difflens eval``'s defaults.
DEFAULT_BUDGET = 5
NO_ENDPOINT = ("the agent needs an LLM endpoint: pass --llm-base-url URL (or set "
               "DIFFLENS_LLM_BASE_URL), and --llm-model NAME (or DIFFLENS_LLM_MODEL); the key is "
               "read from $OPENAI_API_KEY or the variable --llm-api-key-env names")


@dataclass(frozen=True)
class AgentSettings:
    """What determines one agent run besides its method runs (saved in ``agent/run.json``)."""

    methods: tuple[str, ...] = ("adl",)
    black_box: bool = False
    budget: int = DEFAULT_BUDGET
    max_turns: int = 20
    protocol: str = "auto"
    max_new_tokens: int = 48
    llm_base_url: str = ""
    llm_model: str = ""
    hide: tuple[str, ...] = ()
    amplify: bool = False  # offer the generate_amplified tool

    def __post_init__(self) -> None:
        from difflens.agent.loop import AgentConfig

        AgentConfig(budget=self.budget, max_turns=self.max_turns, protocol=self.protocol)
        if self.max_new_tokens < 1:
            raise DifflensError("max_new_tokens must be >= 1")
        if not self.black_box and not self.methods:
            raise DifflensError("no method given: name one with --methods, or pass --black-box")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    """Everything decided before any model loads: directories, configs, what is reused."""

    out: Path
    settings: AgentSettings
    sources: dict[str, Any]
    configs: dict[str, Any] = field(default_factory=dict)  # method name → its config
    finished: dict[str, bool] = field(default_factory=dict)  # method run reusable as it is
    answer: dict[str, Any] | None = None  # a finished agent run to reuse

    @property
    def agent_dir(self) -> Path:
        return self.out / AGENT_DIR

    def needs_models(self) -> bool:
        if self.answer is None and self.settings.budget > 0:
            return True  # the model tools
        return not all(self.finished.values())


def plan_run(settings: AgentSettings, sources: Mapping[str, Any],
             method_options: Mapping[str, Any] | None = None, out: Path | str | None = None,
             again: bool = False) -> Plan:
    """Check everything cheap and decide what runs (one-line errors; nothing loaded).

    ``sources``: ``base``, ``finetuned``, ``device``, ``dtype`` (the method configs' fields);
    ``method_options``: per method, a string of its command's flags or a dict of config
    fields."""
    from difflens.options import check_path

    method_options = dict(method_options or {})
    unknown = sorted(set(method_options) - set(settings.methods))
    if unknown:
        raise DifflensError(f"options for {', '.join(unknown)}, which --methods does not name")
    sources = dict(sources)
    entries = [] if settings.black_box else [get_method(m) for m in settings.methods]
    configs = {e.name: _make_config(e, sources, method_options.get(e.name)) for e in entries}
    if out is None:
        identity = {"sources": sources, "agent": settings.to_dict(),
                    "methods": {e.name: e.identity(configs[e.name]) for e in entries}}
        out = Path("runs") / f"agent-{config_hash(identity)}"
    out = check_path(out, "out_dir", "--out")
    plan = Plan(Path(out), settings, sources, configs)
    for entry in entries:  # a run made with other settings stops here, before any load
        plan.finished[entry.name] = entry.finished(plan.out / entry.name, configs[entry.name])
    plan.answer = None if again else _finished_answer(plan.agent_dir, settings)
    return plan


def _make_config(entry: AgentMethod, sources: dict[str, Any], options: Any) -> Any:
    if options is None or isinstance(options, str):
        return entry.make_config(sources, options or "")
    try:
        config = entry.config_class()(**{**sources, **options})
    except TypeError as exc:
        raise DifflensError(f"{entry.name} options: {exc}") from None
    config.validate()
    return config


def _finished_answer(agent_dir: Path, settings: AgentSettings) -> dict[str, Any] | None:
    """The saved answer when ``agent_dir`` holds a finished run with these settings; one line
    when it holds one made with other settings."""
    answer = read_optional_json(agent_dir / FILES["answer"])
    meta = read_optional_json(agent_dir / "run.json") or {}
    if answer is None or answer.get("status") == "error":
        return None  # nothing finished (or an endpoint failure): run it
    try:
        check_same_settings(agent_dir, meta.get("config") or {}, settings.to_dict(),
                            "a different agent run")
    except DifflensError as exc:
        raise DifflensError(f"{exc} (or pass --again to replace it)") from None
    return answer


def execute(plan: Plan, llm: Any, pair: Any = None, load_options: Any = None,
            progress: bool = True) -> dict[str, Any]:
    """Run (or reuse) the method runs and the agent of ``plan``; returns the answer (what
    ``agent/answer.json`` holds) with ``run_dir`` and ``reused``."""
    if plan.answer is not None:
        return {**plan.answer, "reused": True}
    if pair is None and plan.needs_models():
        from difflens.models.loading import LoadOptions
        from difflens.models.pair import ModelPair

        options = load_options or LoadOptions(device=plan.sources.get("device", "cpu"),
                                              dtype=plan.sources.get("dtype", "float32"))
        pair = ModelPair.load(plan.sources.get("base"), plan.sources.get("finetuned"), options)
    parts = {}
    for name, config in plan.configs.items():
        entry, run_dir = get_method(name), plan.out / name
        if not plan.finished[name]:
            log.info("%s on the pair (%s)", entry.title, run_dir)
            entry.run_method(config, run_dir, pair, progress=progress)
        parts[name] = entry.load_results(run_dir)
    answer = _run_agent(plan, llm, parts, pair)
    return {**answer, "reused": False}


def _run_agent(plan: Plan, llm: Any, parts: dict[str, Any], pair: Any) -> dict[str, Any]:
    from difflens.agent.access import PairAccess
    from difflens.agent.anonymize import Anonymizer
    from difflens.agent.loop import AgentConfig, run_agent
    from difflens.agent.results import blackbox_results
    from difflens.llm import LLMClient

    settings, agent_dir = plan.settings, plan.agent_dir
    results = blackbox_results() if settings.black_box else combine(parts)
    steering = next((n for n in plan.configs if get_method(n).steering), None)
    access = None
    if pair is not None:
        access = PairAccess.for_run(pair, plan.out / steering if steering else None,
                                    max_new_tokens=settings.max_new_tokens)
    # The previous answer goes first: a run killed from here on is never read as finished.
    for name in (FILES["answer"], *FILES.values()):
        (agent_dir / name).unlink(missing_ok=True)
    write_json(agent_dir / "run.json", {"kind": "agent", "config": settings.to_dict()})
    start = time.perf_counter()
    run = run_agent(LLMClient(llm), results, access,
                    AgentConfig(budget=settings.budget, max_turns=settings.max_turns,
                                protocol=settings.protocol, amplify=settings.amplify),
                    Anonymizer(settings.hide))
    seconds = round(time.perf_counter() - start, 3)
    files = {key: str(agent_dir / name) for key, name in FILES.items()}
    write_json(agent_dir / FILES["transcript"], run.transcript)
    write_json(agent_dir / FILES["accounting"], {
        "llm": run.accounting, "interactions_used": run.interactions_used,
        "interactions_refused": run.interactions_refused, "budget": run.budget,
        "turns": run.turns, "protocol": run.protocol, "seconds": seconds})
    write_json(agent_dir / FILES["hypotheses"], {"hypotheses": run.hypotheses,
                                                 "tools_called": run.tools_called})
    answer = {"status": run.status, "description": run.description,
              "hypotheses": run.hypotheses, "tools_called": run.tools_called,
              "interactions_used": run.interactions_used, "budget": run.budget,
              "methods": [] if settings.black_box else list(plan.configs),
              "black_box": settings.black_box, "error": run.error, "run_dir": str(plan.out),
              "method_runs": {n: str(plan.out / n) for n in plan.configs}, "files": files}
    write_json(agent_dir / FILES["answer"], answer)
    return answer


def run_pair_agent(base: str | None = None, finetuned: str | None = None, *,
                   llm_base_url: str | None = None, llm_model: str | None = None,
                   llm_api_key_env: str = "OPENAI_API_KEY", methods: Any = ("adl",),
                   black_box: bool = False, budget: int = DEFAULT_BUDGET, max_turns: int = 20,
                   protocol: str = "auto", out: str | Path | None = None, again: bool = False,
                   method_options: Mapping[str, Any] | None = None, device: str = "cpu",
                   dtype: str = "float32", max_new_tokens: int = 48, hide: Any = (),
                   pair: Any = None, progress: bool = True,
                   amplify: bool = False) -> dict[str, Any]:
    """The agent on a pair, from Python (``difflens.agent(...)``); see the module docstring.

    ``methods``: names (``"adl,mining"`` or a list) of :data:`~difflens.agent.methods.METHODS`;
    ``method_options``: per method, its command's flags as a string (``"--n-texts 500"``) or a
    dict of its config fields; ``pair``: an already loaded :class:`ModelPair` (else loaded
    only when needed); ``amplify``: offer the ``generate_amplified`` tool.  Returns the
    answer: ``description``, ``hypotheses``, ``tools_called``, ``files`` (transcript,
    accounting, hypotheses, answer), ``run_dir``."""
    from difflens.agent.methods import parse_methods
    from difflens.llm import LLMClient

    settings, llm = build_settings(
        methods=[] if black_box else parse_methods(methods), black_box=black_box,
        budget=budget, max_turns=max_turns, protocol=protocol, max_new_tokens=max_new_tokens,
        hide=hide, llm_fields={"llm_base_url": llm_base_url, "llm_model": llm_model,
                               "llm_api_key_env": llm_api_key_env}, amplify=amplify)
    sources = {"base": base, "finetuned": finetuned, "device": device, "dtype": dtype}
    plan = plan_run(settings, sources, method_options, out, again)
    if plan.answer is None:
        LLMClient(llm).check_reachable()
    return execute(plan, llm, pair=pair, progress=progress)


def build_settings(methods: list[str], black_box: bool, budget: int, max_turns: int,
                   protocol: str, max_new_tokens: int, hide: Any, llm_fields: dict[str, Any],
                   amplify: bool = False) -> tuple[AgentSettings, Any]:
    """Agent settings and the agent's :class:`LLMConfig` (from ``--llm-*`` fields, the one
    rule of :func:`~difflens.llm.llm_config_from_fields`); one line when no endpoint is set."""
    from difflens.llm import llm_config_from_fields

    if not llm_fields.get("llm_base_url"):
        raise DifflensError(NO_ENDPOINT)
    llm = llm_config_from_fields(llm_fields)
    settings = AgentSettings(
        methods=tuple(methods), black_box=black_box, budget=int(budget),
        max_turns=int(max_turns), protocol=protocol, max_new_tokens=int(max_new_tokens),
        llm_base_url=llm.to_dict()["base_url"], llm_model=llm.model,
        hide=tuple(hide or ()), amplify=bool(amplify))
    return settings, llm


__all__ = ["AGENT_DIR", "FILES", "AgentSettings", "Plan", "execute", "plan_run",
           "run_pair_agent"]
