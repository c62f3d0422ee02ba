"""The typed evaluate config: task text forms, every problem in one error, flags' text forms."""

from __future__ import annotations

import typing

import pytest

from dmf_ray.pipelines.evaluate.config import EvaluateConfig, LearnerName, Split, TaskSpec
from dmf_ray.pipelines.evaluate.learners import LEARNER_CHOICES
from dmf_ray.pipelines.evaluate.tasks import SPLIT_NAMES


def test_task_spec_parsing(tmp_path):
    folder = tmp_path / "bbbp"
    folder.mkdir()
    assert TaskSpec.parse(f"x={folder}") == TaskSpec("x", str(folder))
    assert TaskSpec.parse(str(folder)).name == "bbbp"
    assert TaskSpec.parse("mytask=a.csv,b.csv,c.csv") == TaskSpec("mytask", ["a.csv", "b.csv", "c.csv"])
    assert TaskSpec.parse("data/lipo.csv.gz").name == "lipo"
    with pytest.raises(ValueError, match="three files"):
        TaskSpec.parse("t=a.csv,b.csv")


def test_config_gathers_every_problem():
    with pytest.raises(ValueError) as err:
        EvaluateConfig(model="m", tasks=["a=x", "a=y"], out="o", seeds=0, robustness="maybe",
                       mask_rates=[0.5, 1.5], split="chemical", learner="svm")
    text = str(err.value)
    for part in ("repeated: ['a']", "seeds", "robustness", "mask rates", "split", "'provided', 'scaffold'",
                 "learner", "'auto'"):
        assert part in text


def test_text_forms_of_the_flags_and_literals_match_the_modules():
    cfg = EvaluateConfig(model="m", tasks="bbbp=/data/bbbp", out="o", label_columns=["a,b", "c"],
                         mask_rates=["0,0.5", "1"], seeds="2", learner="auto")
    assert cfg.tasks == [TaskSpec("bbbp", "/data/bbbp")] and cfg.seeds == 2
    assert cfg.label_columns == ["a", "b", "c"] and cfg.mask_rates == [0.0, 0.5, 1.0]
    assert typing.get_args(Split) == SPLIT_NAMES and typing.get_args(LearnerName) == LEARNER_CHOICES
    assert all(f.description for f in EvaluateConfig.model_fields.values())  # the CLI's help
    assert all(f.description for f in TaskSpec.model_fields.values())
    with pytest.raises(ValueError, match="may not be empty or contain"):
        TaskSpec("a/b", "x")


def test_the_recorded_config_carries_no_credentials():
    # evaluation.json records the config and may be uploaded (--out s3://...): review #1.
    config = EvaluateConfig(model="s3://AK:SK@b/m", out="s3://AK2:SK2@b/rep",
                            tasks=["bbbp=s3://AK:SK@b/bbbp", "x=s3://K:S@b/tr.csv,s3://K:S@b/va.csv,local/te.csv"])
    recorded = config.recorded()
    text = repr(recorded)
    assert "AK:SK" not in text and "AK2:SK2" not in text and "K:S@" not in text
    assert recorded["model"] == "s3://***@b/m" and recorded["out"] == "s3://***@b/rep"
    assert recorded["tasks"][0]["source"] == "s3://***@b/bbbp"
    assert recorded["tasks"][1]["source"] == ["s3://***@b/tr.csv", "s3://***@b/va.csv", "local/te.csv"]
    assert config.model == "s3://AK:SK@b/m"  # the config itself still works
    # Everything else is what model_dump records.
    assert {k: v for k, v in recorded.items() if k not in ("model", "out", "tasks")} == {
        k: v for k, v in config.model_dump().items() if k not in ("model", "out", "tasks")}
