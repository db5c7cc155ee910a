"""Recipe validation: every broken recipe is refused with a message naming the field."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate.base import unregister
from pipelines.cli import main
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


def test_cli_validate_exit_codes(tmp_path, capsys):
    assert main(["validate", "recipe", str(write(tmp_path, GOOD))]) == 0
    assert main(["validate", "recipe", str(write(tmp_path, GOOD.replace("seed: 7", "seed: [1]")))]) == 1
    assert "seed" in capsys.readouterr().err


def test_published_schema_is_current():
    """recipes/recipe.schema.json is generated from the stage registry; regenerate with `mmcurate schema`."""
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
        "from curate.base import FilterStage, register\n"
        "@register\n"
        "class Short(FilterStage):\n"
        "    name = 'only_short_captions'\n"
        "    requires = ('text',)\n"
        "    @dataclass\n"
        "    class Config:\n"
        "        max_chars: int = 10\n"
        "    def keep(self, row):\n"
        "        return len(row['text'] or '') <= self.config.max_chars, 'too_long'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = GOOD.replace("stages: []", "plugins: [my_stages]\nstages: [{name: only_short_captions, settings: {max_chars: 5}}]")
    try:
        r = load(write(tmp_path, text))
        assert r.stages[0].name == "only_short_captions"
    finally:
        unregister("only_short_captions")
    with pytest.raises(RecipeError, match=r"plugins\[0\]"):
        load(write(tmp_path, GOOD.replace("stages: []", "plugins: [no_such_module_xyz]\nstages: []")))
