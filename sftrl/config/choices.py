"""The names every registry-valued config key accepts, read from the registries when asked.

Owns: `registries` (dotted key -> the registries whose names that key takes) and `choices`. The
lists are never written out by hand, so a newly registered advantage, reward or tracker shows up
in `sftrl config --explain` by itself. Validation stays with the config sections.
"""

from __future__ import annotations


def registries() -> dict[str, list]:
    """Dotted key (`[]` = every item of a list) -> the registries (name -> entry) it takes names from."""
    from sftrl import trackers
    from sftrl.algos import entropy, filters, hybrid, policy
    from sftrl.config import presets
    from sftrl.data import rewards
    from sftrl.data.tasks import prompts
    tasks = task_sources()
    return {
        "method": [presets.METHODS],
        "task.name": [tasks],
        "task.template": [prompts.TEMPLATES],
        "eval.extra_tasks[].name": [tasks],
        "eval.extra_tasks[].template": [prompts.TEMPLATES],
        "rl.reward.functions[].name": [rewards.REWARDS],
        "rl.algo.preset": [presets.PRESETS],
        "rl.algo.advantage": [policy.ADVANTAGES],
        "rl.algo.surrogate": [policy.SURROGATES],
        "rl.algo.weighting": [policy.WEIGHTINGS],
        "rl.algo.token_filter": [filters.TOKEN_FILTERS],
        "rl.algo.kl.estimator": [policy.KL],
        "rl.algo.entropy.mode": [entropy.ENTROPY],
        "rl.hybrid.route": [hybrid.ROUTES],
        "rl.hybrid.source": [hybrid.SFT_SOURCES],
        "rl.hybrid.weight": [hybrid.SFT_SCHEDULES, hybrid.SFT_ROW_WEIGHTS],
        "rl.hybrid.mix": [hybrid.MIXES],
        "rl.hybrid.token_weight": [hybrid.TOKEN_WEIGHTS],
        "rl.hybrid.offpolicy_loss": [hybrid.OFFPOLICY],
        "rl.hybrid.self_weight": [hybrid.SELF_WEIGHTS],
        "log.report_to": [trackers.TRACKERS],
    }


def task_sources() -> dict[str, object]:
    """Task names as written in a config: 'arith', and 'reasoning_gym:<dataset>' for prefixed sources."""
    from sftrl.data.tasks import PREFIXED, TASKS, _register_sources
    _register_sources()
    arg = {"reasoning_gym": "<dataset>", "jsonl": "<path>", "hf": "<dataset id>[:<config>]"}
    return {(f"{n}:{arg.get(n, '<...>')}" if n in PREFIXED else n): fn for n, fn in TASKS.items()}


def choices(table: dict[str, list] | None = None) -> dict[str, list[str]]:
    """Dotted key -> the names it accepts now, in registration order."""
    table = registries() if table is None else table
    return {key: list(dict.fromkeys(n for reg in regs for n in reg)) for key, regs in table.items()}
