import pytest

from faceptor import FaceptorConfig, TaskSpec
from faceptor.task_presets import CELEBA_ATTRIBUTES, CELEBAMASK_HQ_CLASSES, EXPRESSIONS


def test_base_preset_has_the_official_seven_query_sets():
    config = FaceptorConfig.from_preset("faceptor-base")
    specs = config.task_specs
    assert list(specs) == [
        "recog_ms1mv3",
        "age_morph2",
        "biattr_celeba",
        "affect_affectnet",
        "affect_rafdb",
        "parsing_celebam",
        "align_300w",
    ]
    assert [spec.num_queries for spec in specs.values()] == [0, 101, 40, 7, 7, 19, 68]
    assert specs["biattr_celeba"].labels == list(CELEBA_ATTRIBUTES) and len(CELEBA_ATTRIBUTES) == 40
    assert specs["affect_rafdb"].labels == list(EXPRESSIONS) and len(EXPRESSIONS) == 7
    assert specs["parsing_celebam"].labels == list(CELEBAMASK_HQ_CLASSES)
    assert {spec.category for spec in specs.values()} == {"dense", "attribute", "identity"}
    assert specs["align_300w"].input_size == 512 and specs["age_morph2"].input_size == 112
    assert config.decoder_feature_layers == [11]


def test_full_preset_has_all_thirteen_datasets():
    specs = FaceptorConfig.from_preset("faceptor-full").task_specs
    assert len(specs) == 13
    added = {
        "age_utkface": 101,
        "affect_ferplus": 7,
        "parsing_lapa": 11,
        "align_cofw": 29,
        "align_wflw": 98,
        "align_aflw": 19,
    }
    assert {name: specs[name].num_queries for name in added} == added


def test_task_specs_are_built_once_per_change_of_the_tasks():
    config = FaceptorConfig.from_preset("faceptor-base")
    first = config.task_specs
    assert all(spec is config.task_specs[name] for name, spec in first.items())  # not rebuilt per forward
    config.tasks = [*config.tasks, {**config.tasks[1], "name": "age_again"}]  # as add_task changes them
    assert list(config.task_specs)[-1] == "age_again" and config.task_specs["age_morph2"] is not first["age_morph2"]
    config.tasks[1]["labels"] = [str(age) for age in range(101)]  # an edit in place is a change too
    assert config.task_specs["age_morph2"].labels[:2] == ["0", "1"]
    built, fresh = FaceptorConfig.from_preset("faceptor-base"), FaceptorConfig.from_preset("faceptor-base")
    assert built.task_specs and built == fresh and built.to_json_string() == fresh.to_json_string()  # not saved


def test_default_config_is_faceptor_base():
    assert FaceptorConfig().tasks == FaceptorConfig.from_preset("faceptor-base").tasks


def test_dict_round_trip_keeps_every_field():
    config = FaceptorConfig.from_preset(
        "faceptor-full", decoder_feature_layers=[11, 1, 3], layer_embedding_scope="per_task"
    )
    again = FaceptorConfig.from_dict(config.to_dict())
    assert again.tasks == config.tasks
    assert again.decoder_feature_layers == [11, 1, 3] and again.layer_embedding_scope == "per_task"


@pytest.mark.parametrize(
    "tasks, message",
    [
        ([{"name": "x", "kind": "segmentation", "num_queries": 3}], "unknown kind 'segmentation'"),
        ([{"name": "x", "kind": "multilabel", "num_queries": 0}], "at least one query"),
        ([{"name": "x", "kind": "landmarks"}], "at least one query"),
        ([{"name": "x", "kind": "age", "num_queries": 3}] * 2, "Duplicate task names"),
        ([{"name": "x", "kind": "classification", "labels": ["a", "b"], "num_queries": 3}], "2 labels but 3"),
        ([{"name": "x", "kind": "embedding", "num_queries": 2}], "takes no queries"),
        ([{"name": "x", "kind": "age", "category": "dense", "num_queries": 3}], "belongs to category"),
        ([{"name": "x", "kind": "age", "num_queries": 3, "colour": "red"}], "unknown fields"),
        ([{"name": "bad name", "kind": "age", "num_queries": 3}], "identifier"),
    ],
)
def test_malformed_task_specs_raise_a_value_error_naming_the_problem(tasks, message):
    with pytest.raises(ValueError, match=message):
        FaceptorConfig(tasks=tasks)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"decoder_feature_layers": [1, 3]}, "must contain the top encoder layer 11"),
        ({"decoder_feature_layers": [11, 12]}, "must lie in 0..11"),
        ({"decoder_feature_layers": [11, 11]}, "without repeats"),
        ({"layer_embedding_scope": "global"}, "layer_embedding_scope"),
        ({"hidden_size": 100}, "not divisible"),
    ],
)
def test_malformed_architectures_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        FaceptorConfig(**overrides)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match="faceptor-base"):
        FaceptorConfig.from_preset("faceptor-huge")


def test_task_spec_defaults_follow_the_category():
    spec = TaskSpec(name="smile", kind="classification", labels=["no", "yes"])
    assert (spec.category, spec.num_queries, spec.input_size, spec.use_layer_attention) == ("attribute", 2, 112, True)
    assert TaskSpec(name="ident", kind="embedding").num_queries == 0
