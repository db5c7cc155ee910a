"""Recipe validation: every broken recipe is refused with a message naming the field."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate.base import unregister
from pipelines.present.cli import main
from pipelines.recipe import RecipeError, load, recipe_json_schema

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
name: t
seed: 7
sources:
  - {name: web, path: "data/*.tar", format: webdataset, category: caption}
stages: []
mixture: {by: category, unit: samples, ratios: {caption: 0.8, text: 0.2}}
output: {dir: out/t}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_good_recipe_loads(tmp_path):
    r = load(write(tmp_path, GOOD))
    assert r.name == "t" and r.seed == 7 and r.sources[0].format == "webdataset"
    assert [s.name for s in r.plan()] == ["ingest", "mixture"]
    assert r.hash() == load(write(tmp_path, GOOD)).hash()


@pytest.mark.parametrize("mutation,field", [
    (lambda t: t.replace("stages: []", "stages: [{name: frobnicate}]"), "stages[0].name"),
    (lambda t: t.replace("seed: 7", "seed: seven"), "seed"),
    (lambda t: t.replace("text: 0.2", "text: 0.3"), "mixture.ratios"),
    (lambda t: t.replace('path: "data/*.tar", ', ""), "sources[0]"),
    (lambda t: t.replace("format: webdataset", "format: tfrecord"), "sources[0].format"),
    (lambda t: t.replace("stages: []", "stages: [{name: mixture, settings: {by: colour}}]"), "stages[0].settings"),
    (lambda t: t.replace("stages: []", "stages: [{name: mixture, settings: {ratios: {a: 1}, speed: 3}}]"),
     "stages[0].settings"),
    (lambda t: t.replace("unit: samples", "unit: tokens"), "mixture.unit"),
])
def test_broken_recipes_name_the_field(tmp_path, mutation, field):
    with pytest.raises(RecipeError) as err:
        load(write(tmp_path, mutation(GOOD)))
    assert str(err.value).split(":")[0].endswith(field) or f"{field}" in str(err.value), str(err.value)


def test_yaml_syntax_error_reports_its_line(tmp_path):
    broken = GOOD.replace("stages: []", "stages: [\n  {name: mixture")
    with pytest.raises(RecipeError) as err:
        load(write(tmp_path, broken))
    assert "YAML syntax error" in str(err.value) and "line" in str(err.value)


def test_ratio_sum_message(tmp_path):
    with pytest.raises(RecipeError, match=r"mixture\.ratios: ratios sum to 1\.1, not 1"):
        load(write(tmp_path, GOOD.replace("text: 0.2", "text: 0.3")))


def test_cli_validate_exit_codes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.tar").write_bytes(b"")
    assert main(["validate", "recipe", str(write(tmp_path, GOOD))]) == 0
    assert main(["validate", "recipe", str(write(tmp_path, GOOD.replace("seed: 7", "seed: [1]")))]) == 1
    assert "seed" in capsys.readouterr().err


def test_published_schema_is_current(monkeypatch):
    """recipes/recipe.schema.json is generated from the stage registry; regenerate with `mmcurate schema`.
    Only the project's stages: a test plugin registered by an earlier test is not part of it."""
    import sys
    REG = sys.modules["curate.base.registry"]   # (curate.base.registry is also the name of a function)
    monkeypatch.setattr(REG, "_REGISTRY", {n: c for n, c in REG._REGISTRY.items()
                                           if c.__module__.split(".")[0] in ("curate", "pack", "pipelines")})
    published = json.loads((ROOT / "recipes" / "recipe.schema.json").read_text())
    assert published == json.loads(json.dumps(recipe_json_schema(), sort_keys=True))


def test_every_bundled_recipe_validates():
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert any(p.name == "demo.yaml" for p in recipes)
    for p in recipes:
        load(p)


def test_plugins_register_custom_stages(tmp_path, monkeypatch):
    (tmp_path / "my_stages.py").write_text(
        "from dataclasses import dataclass\n"
        "from curate.base import Drop, Stage, register, split_drops\n"
        "@register\n"
        "class Short(Stage):\n"
        "    name = 'only_short_captions'\n"
        "    requires = ('text',)\n"
        "    @dataclass\n"
        "    class Config:\n"
        "        max_chars: int = 10\n"
        "    def process_batch(self, batch):\n"
        "        return split_drops(batch, [None if len(t or '') <= self.config.max_chars else Drop('too_long')\n"
        "                                   for t in batch.column('text').to_pylist()])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = GOOD.replace("stages: []", "plugins: [my_stages]\nstages: [{name: only_short_captions, settings: {max_chars: 5}}]")
    try:
        r = load(write(tmp_path, text))
        assert r.stages[0].name == "only_short_captions"
    finally:
        unregister("only_short_captions")
    with pytest.raises(RecipeError, match=r"plugins\[0\]"):
        load(write(tmp_path, GOOD.replace("stages: []", "plugins: [no_such_module_xyz]\nstages: []")))


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = "\n".join("      " + line for line in levels)
    text = GOOD.replace('format: webdataset, category: caption}',
                        'format: webdataset, category: caption,\n     options: {bomb: *a8}}')
    text = "anchors:\n" + bomb.replace("      ", "  ") + "\n" + text
    import time
    t0 = time.monotonic()
    with pytest.raises(RecipeError, match="alias bomb"):
        load(write(tmp_path, text))
    assert time.monotonic() - t0 < 5


def test_recursive_yaml_alias_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="recursive alias"):
        load(write(tmp_path, "loop: &x [*x]\n" + GOOD))


def test_a_few_ordinary_aliases_are_fine(tmp_path):
    text = GOOD.replace("stages: []", "stages:\n  - {name: text_filter, settings: &tf {preset: default}}")
    assert load(write(tmp_path, text)).stages[0].settings == {"preset": "default"}


@pytest.mark.parametrize("seed", ["18446744073709551617", "-1", "true"])
def test_seed_out_of_range_is_refused(tmp_path, seed):
    with pytest.raises(RecipeError, match="seed"):
        load(write(tmp_path, GOOD.replace("seed: 7", f"seed: {seed}")))


def test_validate_never_imports_plugins(tmp_path, monkeypatch, capsys):
    """A CI validating an untrusted recipe must not execute its code."""
    canary = tmp_path / "executed"
    (tmp_path / "evil_plugin.py").write_text(f"open({str(canary)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.tar").write_bytes(b"")
    text = GOOD.replace("stages: []", "plugins: [evil_plugin]\nstages: [{name: plugin_stage, settings: {x: 1}}]")
    assert main(["validate", "recipe", str(write(tmp_path, text))]) == 0
    assert not canary.exists()
    assert "plugin_stage" in capsys.readouterr().out
    bad = GOOD.replace("stages: []", "stages: [{name: plugin_stage}]")    # no plugins: still unknown
    assert main(["validate", "recipe", str(write(tmp_path, bad))]) == 1


def test_source_matching_nothing_is_named_by_validate_and_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.tar").write_bytes(b"")
    two = GOOD.replace("stages: []", '  - {name: more, path: "nowhere/*.tar", format: webdataset}\nstages: []')
    path = write(tmp_path, two)
    assert main(["validate", "recipe", str(path)]) == 1
    assert "sources[1].path" in capsys.readouterr().err
    assert main(["run", str(path), "--executor", "inline"]) == 2
    assert "sources[1].path" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


PACKING = GOOD.replace("stages: []", "stages: [{name: count_tokens}, {name: pack, settings: {context_length: 1024}}]")


def test_the_model_profile_is_parsed_once_typed_and_the_hash_keeps_the_declaration(tmp_path):
    from pack.profile import ModelProfile
    r = load(write(tmp_path, PACKING + "model: {preset: qwen2.5-vl, max_pixels: 1003520}\n"))
    assert isinstance(r.model, ModelProfile) and r.model.max_pixels == 1003520
    assert r.model.context_length == 1024                     # the pack stage's setting, the same declaration
    assert r.canonical()["model"] == {"preset": "qwen2.5-vl", "max_pixels": 1003520}   # as written
    assert load(write(tmp_path, PACKING)).model == ModelProfile(context_length=1024)


def test_the_pack_length_is_declared_once(tmp_path):
    agree = load(write(tmp_path, PACKING + "model: {context_length: 1024}\n"))
    assert agree.model.context_length == 1024
    with pytest.raises(RecipeError, match=r"stages\[1\]\.settings\.context_length: 1024 differs from "
                                          r"model\.context_length=2048"):
        load(write(tmp_path, PACKING + "model: {context_length: 2048}\n"))
    with pytest.raises(RecipeError, match=r"stages\[1\]\.settings\.context_length: must be a positive integer"):
        load(write(tmp_path, PACKING.replace("context_length: 1024", "context_length: 0")))


@pytest.mark.parametrize("stage,setting,says", [
    ("{name: count_tokens, settings: {profile: qwen2.5-vl}}", "stages[0].settings.profile", "top-level `model:`"),
    ("{name: shards, settings: {context_length: 1024}}", "stages[0].settings.context_length", "model.context_length"),
])
def test_settings_that_moved_to_the_model_profile_say_where(tmp_path, stage, setting, says):
    with pytest.raises(RecipeError) as err:
        load(write(tmp_path, GOOD.replace("stages: []", f"stages: [{stage}]")))
    assert str(err.value).startswith(f"{setting}: ") and says in str(err.value), str(err.value)
