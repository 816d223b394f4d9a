"""Task sources behind one call: `load_problems(task_cfg, split)`.

Task names: 'arith' (built-in generator), 'reasoning_gym:<dataset>', 'jsonl:<path>' (GSM8K or
MATH format, detected per file) and 'hf:<dataset id>[:<config>]' (needs the hub). Each source
module registers its loader in `TASKS` under its prefix.
"""

from __future__ import annotations

import inspect

from sftrl.registry import RegistryError, did_you_mean
from sftrl.data.tasks.base import TASKS, Problem

PREFIXED = ("reasoning_gym", "jsonl", "hf")
"""Sources whose name carries an argument after a colon."""


def _register_sources() -> None:
    # imported for their registration side effect; each defers heavy imports to call time
    from sftrl.data.tasks import arith, files, rgym  # noqa: F401


def split_name(name: str) -> tuple[str, str | None]:
    """'reasoning_gym:gsm_symbolic' -> ('reasoning_gym', 'gsm_symbolic'); 'arith' -> ('arith', None)."""
    head, sep, arg = name.partition(":")
    return (head, arg) if sep else (name, None)


def check_task_name(name: str) -> None:
    """Fail at config time on an unknown source or a prefixed source without its argument."""
    _register_sources()
    head, arg = split_name(name)
    if head not in TASKS:
        raise RegistryError(f"unknown task {name!r}; {did_you_mean(head, TASKS)} "
                            f"(prefixed forms: {', '.join(p + ':<...>' for p in PREFIXED)})")
    if head in PREFIXED and not arg:
        raise RegistryError(f"task {name!r} needs an argument: write {head}:<...>")
    if head not in PREFIXED and arg is not None:
        raise RegistryError(f"task {name!r}: {head!r} takes no ':' argument")
    validate = getattr(TASKS[head], "validate", None)
    if validate is not None:
        validate(arg)


RESERVED = ("split", "n", "seed", "source")
"""Loader arguments sftrl sets itself; task.kwargs may not carry them."""


def check_task_kwargs(name: str, kwargs: dict) -> None:
    """Fail at config time on task.kwargs the source does not take: names against the loader's
    keyword parameters, and values through its `check_kwargs(arg, kwargs)` where it has one."""
    _register_sources()
    head, arg = split_name(name)
    loader = TASKS[head]
    params = inspect.signature(loader).parameters
    knobs = [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in RESERVED]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key in kwargs:
        if key in RESERVED:
            raise ValueError(f"{key!r} is set from task.seed, task.train_size/test_size and the task "
                             f"name, not task.kwargs (remove it)")
        if not open_ended and key not in knobs:
            hint = did_you_mean(key, knobs) if knobs else "it takes none"
            raise ValueError(f"{key!r} is not a knob of task {name!r}; {hint}")
    check = getattr(loader, "check_kwargs", None)
    if check is not None:
        check(arg, kwargs)


def load_problems(task, split: str, n: int | None = None) -> list[Problem]:
    """Problems of `task` (a TaskConfig) for split 'train' or 'test', at most `n` of them."""
    _register_sources()
    head, arg = split_name(task.name)
    size = n if n is not None else (task.train_size if split == "train" else task.test_size)
    kwargs = dict(task.kwargs)
    if arg is not None:
        kwargs["source"] = arg
    problems = TASKS[head](split=split, n=size, seed=task.seed, **kwargs)
    if not problems:
        raise ValueError(f"task {task.name!r} split {split!r} has no problems; check its source "
                         f"and task.kwargs")
    return problems


__all__ = ["Problem", "TASKS", "load_problems", "check_task_name", "check_task_kwargs", "split_name"]
