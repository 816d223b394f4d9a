"""Config loading, overrides, one-line errors with suggestions, explain, and YAML round trip."""

import pytest

from sftrl.config import Config, ConfigError, build_config, explain, load_config, parse_override, to_yaml


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = load_config()
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


def test_dotted_overrides_parse_yaml_values():
    cfg = build_config({}, ["sft.optim.lr=3e-4", "seed=7", "model.tiny.hidden_size=32",
                            "task.kwargs={max_ops: 4}", "sft.micro_batch_size=null"])
    assert cfg.sft.optim.lr == 3e-4 and cfg.seed == 7 and cfg.model.tiny.hidden_size == 32
    assert cfg.task.kwargs == {"max_ops": 4} and cfg.sft.micro_batch_size is None


def test_override_into_list_by_index():
    cfg = build_config({"phases": [{"kind": "sft", "steps": 5}, {"kind": "sft", "steps": 6}]},
                       ["phases.1.steps=9"])
    assert [p.steps for p in cfg.phases] == [5, 9]
    assert cfg.total_steps == 14


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(Exception):
        cfg.seed = 3


@pytest.mark.parametrize("data, overrides, expected", [
    ({}, ["sft.optim.lrr=1"], "unknown config key 'sft.optim.lrr'; did you mean 'sft.optim.lr'?"),
    ({"sedd": 1}, [], "unknown config key 'sedd'; did you mean 'seed'"),
    ({}, ["model.tiny.hiden_size=3"], "did you mean 'model.tiny.hidden_size' or"),
    ({}, ["sft.batch_size=abc"], "config key 'sft.batch_size': Input should be a valid integer"),
    ({}, ["sft.batch_size=0"], "config key 'sft.batch_size': Input should be greater than or equal to 1"),
    ({}, ["task.name=arithh"], "unknown task 'arithh'; did you mean 'arith'?"),
    ({}, ["task.template=plian"], "unknown prompt template 'plian'; did you mean 'plain'?"),
    ({}, ["task.name=reasoning_gym"], "needs an argument"),
    ({}, ["model.tiny.num_heads=3"], "not divisible by num_heads=3"),
    ({}, ["phases=[]"], "phases is empty"),
    ({}, ["phases.3.steps=1"], "index '3' is out of range"),
    ({}, ["sft.optim.schedule=cosin"], "Input should be 'constant', 'linear' or 'cosine'"),
    ({}, ["novalue"], "is not of the form key=value"),
])
def test_errors_are_one_line_and_name_the_key(data, overrides, expected):
    with pytest.raises((ConfigError, KeyError, ValueError)) as info:
        build_config(data, overrides)
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\n  x: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_parse_override_types():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=1e-3") == (["a"], 1e-3)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=hello:world") == (["a"], "hello:world")
    assert parse_override("a=") == (["a"], "")


def test_explain_lists_every_leaf_with_meaning():
    rows = explain()
    keys = {r[0] for r in rows}
    assert {"seed", "sft.optim.lr", "model.tiny.hidden_size", "eval.k", "task.name"} <= keys
    assert all(meaning for _, _, _, meaning in rows), "every field needs a description"
    lr = next(r for r in rows if r[0] == "sft.optim.lr")
    assert lr[2] == "0.001"


def test_task_key_labels():
    assert Config().task.key == "arith"
    assert build_config({}, ["task.name=reasoning_gym:gsm_symbolic"]).task.key == "gsm_symbolic"


def test_explain_lists_the_registered_choices_of_every_registry_valued_key(capsys):
    from sftrl.cli import main
    from sftrl.config.choices import choices, registries
    assert main(["config", "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {r[0]: r for r in explain()}
    table = registries()
    assert set(table) <= set(rows), "a key of config.choices is not a config key"
    for key, names in choices(table).items():
        line = next(x for x in lines if x.split(" ", 1)[0] == key)
        assert names and line.endswith(f"Choices: {', '.join(names)}."), key
    trailing = [k for k, *_, meaning in explain() if meaning.split(" Choices: ")[0].endswith(("...", "…", "...)"))]
    assert not trailing, f"meanings that trail off instead of naming every choice: {trailing}"


def test_a_newly_registered_name_appears_without_editing_the_config():
    from sftrl.algos.policy import ADVANTAGES
    ADVANTAGES.register("test_only_advantage")(lambda r: r)
    try:
        row = next(r for r in explain() if r[0] == "rl.algo.advantage")
        assert "test_only_advantage" in row[3]
    finally:
        del ADVANTAGES["test_only_advantage"]


def test_fixed_value_keys_list_their_values():
    rows = {r[0]: r for r in explain()}
    assert rows["rl.rollout.engine"][3].endswith("Choices: auto, direct, hf, vllm.")
    assert rows["phases[].kind"][2] == "(required)" and rows["rl.reward.functions[].name"][2] == "(required)"
