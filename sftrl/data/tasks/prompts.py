"""Prompt templates: how a `Problem` becomes the text the model continues.

Owns: `TEMPLATES` (name -> fn(problem) -> str) and `completion_target`. The chat template of a
tokenizer, when used, wraps the templated text (see `sftrl.models.render_prompt`).
"""

from __future__ import annotations

from sftrl.registry import Registry
from sftrl.data.tasks.base import Problem

TEMPLATES = Registry("prompt template")


@TEMPLATES.register("plain")
def plain(problem: Problem) -> str:
    """The question then a newline: the tiny models learn the format from demonstrations."""
    return f"{problem.prompt}\n"


@TEMPLATES.register("qa")
def qa(problem: Problem) -> str:
    """'Question: ... Answer:' for base models without a chat template."""
    return f"Question: {problem.prompt}\nAnswer:"


@TEMPLATES.register("gsm8k_instruct")
def gsm8k_instruct(problem: Problem) -> str:
    """Instruction to reason step by step and end with '#### <answer>' (GSM8K convention)."""
    return (f"{problem.prompt}\nSolve step by step. End your answer with a line of the form "
            f"'#### <number>'.")


@TEMPLATES.register("boxed_instruct")
def boxed_instruct(problem: Problem) -> str:
    """Instruction to put the final answer in \\boxed{} (MATH convention)."""
    return f"{problem.prompt}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def completion_target(problem: Problem) -> str:
    """The SFT target after the prompt: the worked solution, else the bare '#### answer'."""
    return problem.solution if problem.solution else f"#### {problem.answer}"
