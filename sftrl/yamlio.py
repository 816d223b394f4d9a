"""The one YAML dialect of sftrl: configs, sweeps, studies and run directories read the same way.

Owns: `Loader` and `load`. YAML 1.2 booleans only (true/false: `log.progress=off` and
`chat_template: on` stay strings, as they are meant) and 1e-3 without a dot read as a float
(YAML 1.1 would read it as text). Files are written with `yaml.safe_dump`, which quotes any
string this loader would read otherwise.
"""

from __future__ import annotations

import re

import yaml


class Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3 (no dot) as a float: YAML 1.1 would read it as text."""


# YAML 1.2 booleans only: `log.progress=off` and `chat_template: on` stay strings.
Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                             list("tTfF"))
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load(text: str):
    """Parse YAML text with `Loader` (raises yaml.YAMLError)."""
    return yaml.load(text, Loader=Loader)
