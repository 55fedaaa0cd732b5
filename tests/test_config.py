import dataclasses

import pytest

from coinlib.config import (
    PROFILES,
    AnomalyConfig,
    ClassifierConfig,
    CounterfactualConfig,
    GANConfig,
    Profile,
    from_dict,
    get_profile,
    to_dict,
)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_round_trip_through_json(name):
    profile = PROFILES[name]
    assert from_dict(Profile, to_dict(profile)) == profile


def test_paper_profile_matches_the_paper():
    paper = PROFILES["paper"]
    assert paper.data.image_size == 256 and paper.data.min_kidney_pixels == 32
    assert paper.gan.widths == (64, 128, 256, 512, 1024) and paper.gan.skips == 4
    assert paper.train.lr == 2e-4 and paper.train.betas == (0.0, 0.9) and paper.train.batch_size == 16
    assert (paper.train.lambda_adv, paper.train.lambda_f, paper.train.lambda_idt, paper.train.lambda_tv) == (
        1.0, 5.0, 1.0, 0.05)
    assert paper.anomaly.alpha == 0.9 and paper.anomaly.probability == 0.65
    assert paper.eval.cv_tau == 0.8 and paper.eval.fid_dims == 768


def test_unknown_keys_raise_with_their_name():
    with pytest.raises(KeyError, match="lamda_tv"):
        from_dict(CounterfactualConfig, {"lamda_tv": 0.0})
    with pytest.raises(KeyError, match="trian"):
        get_profile("quick", {"trian": {"steps": 1}})
    with pytest.raises(KeyError, match="unknown profile 'quik'"):
        get_profile("quik")


def test_literal_choices_are_checked():
    with pytest.raises(ValueError, match="adv_loss"):
        from_dict(CounterfactualConfig, {"adv_loss": "mse"})
    with pytest.raises(ValueError, match="precision"):
        from_dict(CounterfactualConfig, {"precision": "fp16"})
    with pytest.raises(ValueError, match="arch"):
        from_dict(ClassifierConfig, {"arch": "resnet50"})


def test_overrides_replace_only_the_named_fields():
    profile = get_profile("quick", {"train": {"lambda_tv": 0.0}, "gan": {"skips": 2}})
    assert profile.train.lambda_tv == 0.0 and profile.gan.skips == 2
    assert profile.train.lambda_f == PROFILES["quick"].train.lambda_f
    assert profile.gan.widths == PROFILES["quick"].gan.widths


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GANConfig().skips = 3  # type: ignore[misc]
    assert AnomalyConfig().scale_range == (0.75, 1.0)


def test_track_profile_applies_the_tumour_protocol_only_to_the_tumour_track():
    from coinlib.config import track_profile

    quick = get_profile("quick")
    assert track_profile(quick, "synthetic") is quick
    tumour = track_profile(quick, "tumour")
    protocol = quick.tumour_protocol
    assert tumour.classifier == dataclasses.replace(quick.tumour_classifier, balanced_sampling=True)
    assert (tumour.train.lambda_f, tumour.train.lambda_tv) == (protocol.lambda_f, protocol.lambda_tv) == (1.0, 5e-5)
    assert tumour.data.min_lesion_area_mm2 == protocol.min_lesion_area_mm2 > 0
    assert tumour.data.image_size == quick.data.image_size and quick.data.min_lesion_area_mm2 == 0
    assert track_profile(tumour, "tumour") == tumour
    # lambda_idt: quick's own choice on the tumour track; None keeps train's (paper: 1, the authors')
    assert (protocol.lambda_idt, tumour.train.lambda_idt, quick.train.lambda_idt) == (5.0, 5.0, 1.0)
    paper = get_profile("paper")
    assert paper.tumour_protocol.lambda_idt is None
    assert track_profile(paper, "tumour").train.lambda_idt == paper.train.lambda_idt == 1.0
    with pytest.raises(ValueError, match="track"):
        track_profile(quick, "liver")
def test_lesson_profile_is_quick_on_the_synthetic_track_with_fewer_scans():
    lesson, quick = PROFILES["lesson"], PROFILES["quick"]
    assert lesson.phantom.subjects < quick.phantom.subjects
    assert lesson.data == quick.data and lesson.gan == quick.gan and lesson.anomaly == quick.anomaly
    assert lesson.train.steps <= quick.train.steps and lesson.classifier == quick.classifier
    assert (lesson.train.lambda_f, lesson.train.lambda_tv) == (quick.train.lambda_f, quick.train.lambda_tv)


SECTIONS = sorted({type(v) for v in vars(PROFILES["paper"]).values() if dataclasses.is_dataclass(v)},
                  key=lambda cls: cls.__name__)


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda cls: cls.__name__)
def test_every_field_is_type_checked_and_every_range_names_a_field(cls):
    """A new field is checked from its annotation alone: no value of a foreign type passes."""
    names = {f.name for f in dataclasses.fields(cls)}
    assert set(cls.RANGES) <= names, f"RANGES of {cls.__name__} names no field: {set(cls.RANGES) - names}"
    for name in names:
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.{name} = "):
            from_dict(cls, {name: object()})


def test_ranges_are_checked_at_their_bounds():
    assert CounterfactualConfig(batch_size=1).batch_size == 1
    with pytest.raises(ValueError, match=r"batch_size = 0: must lie in \[1, 65536\]"):
        CounterfactualConfig(batch_size=0)
    assert CounterfactualConfig(batch_size=65536).batch_size == 65536
    with pytest.raises(ValueError, match=r"batch_size = 65537: must lie in \[1, 65536\]"):
        CounterfactualConfig(batch_size=65537)
    with pytest.raises(ValueError, match=r"seed = 4294967296: must lie in \[0, 4294967295\]"):
        CounterfactualConfig(seed=2**32)
    assert ClassifierConfig(threshold=1.0).threshold == 1.0
    with pytest.raises(ValueError, match=r"ClassifierConfig.threshold = 1.5: must lie in \[0, 1\]"):
        ClassifierConfig(threshold=1.5)
    with pytest.raises(ValueError, match=r"lr = 0.0: must lie in \(0, inf\)"):
        CounterfactualConfig(lr=0.0)
    with pytest.raises(ValueError, match=r"betas = \(0.0, 1.0\): must lie in \[0, 1\)"):
        CounterfactualConfig(betas=(0.0, 1.0))  # every element of a tuple


def test_types_are_strict_but_ints_serve_as_floats_and_lists_as_tuples():
    config = CounterfactualConfig(lr=1, betas=[0, 0.5])
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.betas == (0.0, 0.5)
    for bad in ({"batch_size": True}, {"batch_size": 8.0}, {"lr": float("inf")}, {"betas": (0.0,)},
                {"adv_loss": "mse"}, {"compile": "yes"}):
        with pytest.raises(ValueError, match="expected"):
            CounterfactualConfig(**bad)
    assert ClassifierConfig(steps_per_epoch=None).steps_per_epoch is None  # ``int | None``


def test_checks_that_span_fields():
    with pytest.raises(ValueError, match="test_fraction \\+ val_fraction"):
        get_profile("smoke", {"data": {"test_fraction": 0.6, "val_fraction": 0.4}})
    with pytest.raises(ValueError, match="skips = 4: at most 2"):
        GANConfig(widths=(8, 8, 8))
    with pytest.raises(ValueError, match="multiple of 32"):
        get_profile("smoke", {"data": {"image_size": 40}})


def test_the_ablation_budget_takes_only_steps_and_batch_from_the_ablation_section():
    from coinlib.variants import ablation_budget

    quick = get_profile("quick")
    assert quick.ablation.table3_seeds is None and ablation_budget(quick) is None  # every seed, Table 1's budget
    shorter = ablation_budget(get_profile("quick", {"ablation": {"steps": 50}}))
    assert shorter.train.steps == 50 and shorter.train.batch_size == quick.train.batch_size


def test_paper_mini_is_the_paper_profile_cut_only_in_size():
    paper, mini = get_profile("paper"), get_profile("paper-mini")
    assert mini.data == paper.data and mini.gan == paper.gan
    assert dataclasses.replace(mini.tumour_protocol, min_lesion_area_mm2=paper.tumour_protocol.min_lesion_area_mm2) \
        == paper.tumour_protocol  # only the slice-label rule, for lesions its few scans hold
    assert mini.tumour_classifier.arch == paper.tumour_classifier.arch == "efficientnet_v2_s"
    assert mini.classifier.arch == paper.classifier.arch and mini.classifier.width == paper.classifier.width
    sizes = {"steps", "batch_size", "log_every", "eval_every", "checkpoint_every"}
    assert {k: v for k, v in dataclasses.asdict(mini.train).items() if k not in sizes} == \
        {k: v for k, v in dataclasses.asdict(paper.train).items() if k not in sizes}  # lr, schedule, lambdas, compile
    assert mini.train.compile and mini.train.generator_every == 5
