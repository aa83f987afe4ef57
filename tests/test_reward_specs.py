"""One reward-spec schema: the list form, bare names and the older mapping form read the same, and
errors name the entry and field (issue 13, spine)."""

from __future__ import annotations

import pytest

from visalign.rewards import CompositeReward, RenderService
from visalign.rewards.specs import RewardSpec, build_reward_map, build_rewards, parse_reward_specs


def test_list_bare_and_mapping_forms_mean_the_same():
    listed = parse_reward_specs([{"name": "shape_colour", "weight": 0.5, "options": {"coverage_high": [0.3, 0.5]}},
                                 "format"])
    mapped = parse_reward_specs({"shape_colour": {"weight": 0.5, "coverage_high": [0.3, 0.5]}, "format": 1})
    assert listed == mapped == [RewardSpec("shape_colour", 0.5, {"coverage_high": [0.3, 0.5]}),
                                RewardSpec("format", 1.0, {})]
    assert parse_reward_specs("format") == [RewardSpec("format")]
    assert parse_reward_specs({"format": None}) == [RewardSpec("format")]
    assert parse_reward_specs(None) == [] == parse_reward_specs([])


@pytest.mark.parametrize("spec, message", [
    (["format", {"name": "chart_cod"}], r"rewards\[1\]\.name: unknown reward 'chart_cod' \(did you mean 'chart_code'"),
    ([{"name": "format", "wieght": 2}], r"rewards\[0\]\.wieght: unknown field \(did you mean 'weight'"),
    ([{"name": "format", "allow_bare": True}], r"rewards\[0\]\.allow_bare: unknown field .*under 'options'"),
    ([{"weight": 2}], r"rewards\[0\]\.name: missing"),
    ([{"name": "format", "weight": "two"}], r"rewards\[0\]\.weight: a number, got 'two'"),
    ([{"name": "format", "options": [1]}], r"rewards\[0\]\.options: a mapping"),
    ({"fromat": 1.0}, r"rewards\['fromat'\]\.name: unknown reward 'fromat' \(did you mean 'format'"),
    ({"format": "heavy"}, r"rewards\.format: a weight or a mapping"),
    (["format", "format"], r"rewards\[1\]\.name: reward 'format' is listed twice"),
    ([3], r"rewards\[0\]: a reward name or a mapping"),
])
def test_errors_name_the_entry_and_field(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_reward_specs(spec)


def test_extra_names_and_module_class_names_are_accepted():
    assert parse_reward_specs({"pixel": 1.0}, extra_names=("pixel",))[0].name == "pixel"
    assert parse_reward_specs(["visalign.rewards.code:FormatReward"])[0].name == "visalign.rewards.code:FormatReward"
    with pytest.raises(ValueError, match="unknown reward 'pixel'"):
        parse_reward_specs({"pixel": 1.0})


def test_build_rewards_weights_options_and_shared_service():
    with RenderService(workers=1) as service:
        reward = build_rewards([{"name": "format", "weight": 0.2, "options": {"allow_bare": True}},
                                {"name": "execution", "weight": 0.5}], service, aggregation="normalize_then_sum")
        assert isinstance(reward, CompositeReward)
        assert list(zip(reward.names, reward.weights, strict=True)) == [("format", 0.2), ("execution", 0.5)]
        assert reward.aggregation == "normalize_then_sum"
        fmt, execution = reward.rewards
        assert fmt.allow_bare is True
        assert execution.service is service
    built = build_reward_map({"visalign.rewards.code:FormatReward": {"allow_bare": True}})
    assert built["visalign.rewards.code:FormatReward"].allow_bare is True
    with pytest.raises(ValueError, match="no reward configured"):
        build_rewards([])
