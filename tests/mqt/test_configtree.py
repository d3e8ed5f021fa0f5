"""Config trees from dicts, YAML and key=value overrides; errors name the field."""

import pytest

from mqt.config import VLMConfig, preset, tiny
from mqt.configtree import ConfigError, from_dict, merge, parse_overrides, to_dict


def test_round_trip_every_preset():
    for name in ("tiny", "llava-7b", "llava-1.5-7b"):
        cfg = preset(name)
        assert from_dict(VLMConfig, to_dict(cfg)) == cfg


def test_overrides_parse_as_yaml():
    assert parse_overrides(["a.b=3", "c=[1, 2]", "d=x y", "e=", "f=true"]) == {
        "a": {"b": 3}, "c": [1, 2], "d": "x y", "e": "", "f": True}


def test_merge_applies_nested_and_keeps_the_rest():
    cfg = merge(tiny(), {"query": {"num_queries": 64}})
    assert cfg.query.num_queries == 64 and cfg.query.mode == "official"
    assert cfg.lm == tiny().lm


@pytest.mark.parametrize("data,field", [
    ({"query": {"num_querys": 4}}, "query.num_querys"),
    ({"query": {"num_queries": "many"}}, "query.num_queries"),
    ({"query": {"num_queries": True}}, "query.num_queries"),
    ({"vision": 3}, "vision"),
    ({"lm": {"rms_norm_eps": "small"}}, "lm.rms_norm_eps"),
])
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        merge(tiny(), data)


def test_int_is_accepted_for_float():
    assert merge(tiny(), {"lm": {"rope_theta": 500000}}).lm.rope_theta == 500000.0


def test_validate_names_the_field():
    with pytest.raises(ValueError, match="query.mode"):
        merge(tiny(), {"query": {"mode": "fancy"}}).validate()
    with pytest.raises(ValueError, match="query.num_heads"):
        merge(tiny(), {"query": {"num_heads": 5}}).validate()


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["justakey"])
