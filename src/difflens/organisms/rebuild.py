"""``REBUILD.md``: how to rebuild an organism, written from its card by the builder.

The note lives inside the organism directory, which a rebuild with ``--overwrite`` replaces as
a whole; generating it from the card (instead of writing it by hand) means every rebuild
writes it again, with the figures of that build.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from difflens.organisms.card import OrganismCard, atomic_write_text

REBUILD_FILE = "REBUILD.md"
_PREFIX = "difflens organism build "


def rebuild_note(card: OrganismCard) -> str:
    """Markdown naming the exact rebuild command (top-level CLI and ``python -m``) and the
    figures the original build measured."""
    args = [*shlex.split(card.build_command.removeprefix(_PREFIX)), "--overwrite"]
    t = card.training
    what = (f"a LoRA adapter (rank {card.lora.rank}, alpha {card.lora.alpha:g}, on "
            f"{', '.join(card.lora.target_modules)})" if card.lora else "a full finetune")
    mixed = (f"{t.get('num_mix_texts')} general texts mixed in (ratio {card.mix_ratio:g})"
             if card.mix_ratio else "no general text mixed in")
    lines = [
        f"# Rebuilding the `{card.name}` organism",
        "",
        f"{card.short_description}",
        "",
        f"Type `{card.type}`: {what} on `{card.base_model_id or card.base_model}`, trained on "
        f"{t.get('num_documents')} documents (sha256 `{card.data_hashes.get('documents')}`) with "
        f"{mixed}; {card.steps} steps of batch {t.get('batch_size')}, peak lr {t.get('lr')}, "
        f"seed {card.seed}; weights saved as {t.get('save_dtype')}.",
        "",
        "Run from the directory the build ran in (paths are as given then); `--overwrite` "
        "replaces the existing organism:",
        "",
        "```bash",
        _command_block("difflens organism build", args),
        "```",
        "",
        "The same without the top-level CLI:",
        "",
        "```bash",
        _command_block("python -m difflens.organisms.cli organism build", args),
        "```",
        "",
        "Name, type, descriptions and keywords come from the `<documents stem>.card.json` beside "
        "the documents; edit that file, not `card.json`.",
        "",
        "## Figures of the original build",
        "",
        f"- device `{t.get('device')}`; {t.get('seconds')} s in total, "
        f"{t.get('seconds_per_step')} s per step; peak RSS {t.get('peak_rss_mb')} MB",
        f"- loss {_fmt(t.get('first_loss'))} at step 1, {_fmt(t.get('final_loss'))} averaged "
        "over the last 10 steps (every step in `train_log.jsonl`)",
        f"- versions: {', '.join(f'{k} {v}' for k, v in (t.get('versions') or {}).items())}",
        "",
        "Floating-point sums depend on hardware and thread count, so a rebuild elsewhere gives "
        "a close adapter, not a bit-identical one; the same machine and thread count reproduce "
        "it exactly.",
        "",
    ]
    return "\n".join(lines)


def write_rebuild_note(card: OrganismCard, directory: Path) -> Path:
    """Write ``REBUILD.md`` for ``card`` into ``directory``."""
    path = Path(directory) / REBUILD_FILE
    atomic_write_text(path, rebuild_note(card))
    return path


def _command_block(program: str, args: list[str]) -> str:
    """``program`` plus one flag (with its value) per continuation line."""
    parts: list[str] = []
    for arg in args:
        if arg.startswith("--") or not parts:
            parts.append(shlex.quote(arg))
        else:
            parts[-1] += " " + shlex.quote(arg)
    return " \\\n  ".join([program, *parts])


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
