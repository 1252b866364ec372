from pathlib import Path

import pytest

from jointsparse.recipe import Recipe, RecipeError, dump_recipe, load_recipe, parse_recipe


def write(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def test_defaults_and_stage_defaults_are_kept(tmp_path):
    recipe = load_recipe(write(tmp_path, "[retrain]\nlr = 0.05\n[sparsity.spatial]\n'*' = 0.8\n'fc*' = 0.95\n"))
    assert recipe.retrain.lr == 0.05 and recipe.retrain.epochs == Recipe().retrain.epochs
    assert recipe.finetune == Recipe().finetune
    assert recipe.sparsity.spatial == {"*": 0.8, "fc*": 0.95}
    assert recipe.sparsity.winograd == {"*": 0.7}
    assert load_recipe(None) == Recipe()


def test_dump_round_trips(tmp_path):
    recipe = parse_recipe({"quantize": {"bits": {"fc8": 6}}, "winograd": {"layers": {"conv2": 2}}, "sparsity": {"spatial": {"fc*": 0.9}}})
    again = load_recipe(write(tmp_path, dump_recipe(recipe)))
    assert again == recipe


def test_distillation_keys_appear_only_when_used():
    # Recipes written before distillation existed keep their dict, so work directories, stage
    # records and tuning digests made from them still match.
    plain = Recipe().to_dict()
    assert all("distill" not in plain[stage] and "distill_temperature" not in plain[stage] for stage in ("retrain", "finetune", "codebook"))
    assert not Recipe().distills()
    recipe = parse_recipe({"finetune": {"distill": 0.5}})
    # while a stage distils, its fingerprint names the temperature too, default or not
    assert recipe.to_dict()["finetune"]["distill"] == 0.5 and recipe.to_dict()["finetune"]["distill_temperature"] == 4.0
    assert recipe.distills() and not parse_recipe({"finetune": {"distill": 0.5, "epochs": 0}}).distills()
    # a temperature without distillation changes nothing
    assert parse_recipe({"finetune": {"distill_temperature": 2.0}}).to_dict() == plain
    assert parse_recipe(recipe.to_dict()) == recipe


@pytest.mark.parametrize(
    "text, message",
    [
        ("[retrain]\nepochs = -1\n", "retrain.epochs = -1 must be >= 0"),
        ("[sparsity.spatial]\nconv1 = 1.5\n", "sparsity.spatial"),
        ("[quantize]\nconv_bits = 17\n", "quantize.conv_bits = 17 must be in 1..16"),
        ("[quantize]\nbits = { fc6 = 0 }\n", "quantize.bits"),
        ("[retrain]\nepoch = 3\n", "unknown key 'retrain.epoch'"),
        ("[retrian]\nepochs = 3\n", "unknown key 'retrian'"),
        ("[regularizer]\nmode = 'both'\n", "regularizer.mode"),
        ("[retrain]\nlr = 'fast'\n", "retrain.lr = 'fast' has the wrong type"),
        ("[retrain]\nepochs = true\n", "wrong type"),
        ("[retrain\n", "not valid TOML"),
        ("[regularizer]\na_spatial = 'big'\n", "regularizer.a_spatial = 'big' must be \"auto\" or a number"),
        ("[regularizer]\na_winograd = -1.0\n", "regularizer.a_winograd = -1.0 must be"),
        ("[coding]\nraw_float_dtype = 'int8'\n", "coding.raw_float_dtype = 'int8' must be 'float32', 'float16' or 'bfloat16'"),
        ("[coding]\ncodebook_dtype = 'bfloat16'\n", "coding.codebook_dtype = 'bfloat16' must be 'float32' or 'float16'"),
        ("[finetune]\ndistill = -0.5\n", "finetune.distill = -0.5 must be a finite number >= 0"),
        ("[codebook]\ndistill_temperature = 0.0\n", "codebook.distill_temperature = 0.0 must be a finite number > 0"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_recipe(write(tmp_path, text))


def test_missing_recipe(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.toml")


def test_a_defaults_to_auto_and_takes_numbers(tmp_path):
    assert Recipe().regularizer.a_spatial == "auto" and Recipe().regularizer.a_winograd == "auto"
    recipe = load_recipe(write(tmp_path, "[regularizer]\na_spatial = 300\na_winograd = 'auto'\n"))
    assert recipe.regularizer.a_spatial == 300 and recipe.regularizer.a_winograd == "auto"
    assert load_recipe(write(tmp_path, dump_recipe(recipe))) == recipe


def test_every_shipped_recipe_loads():
    """The committed recipes and the candidates the experiment scripts try (a typo there would only
    surface an hour into a run)."""
    recipes = sorted((Path(__file__).resolve().parents[1] / "experiments" / "recipes").rglob("*.toml"))
    assert len(recipes) >= 6
    for path in recipes:
        assert isinstance(load_recipe(path), Recipe), path
