"""The README is executed: its recipe is the demo recipe and validates, its Python snippet runs, and
the error messages it quotes are the ones `mmcurate validate recipe` prints."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from demo_data import sample as sample_data
from pipelines.recipe import RecipeError, parse

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme")
    sample_data.build(work / "data" / "sample")
    (work / "recipes").symlink_to(ROOT / "recipes")
    return work


def test_the_readme_recipe_is_the_demo_recipe_and_validates(sample_dir, monkeypatch):
    recipes = [b for b in blocks("yaml") if "sources:" in b]
    assert recipes, "README shows no recipe"
    demo = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    monkeypatch.chdir(sample_dir)
    for text in recipes:
        data = yaml.safe_load(text)
        assert data == demo, "the README recipe differs from recipes/demo.yaml"
        parse(data, where="README")


# (how to break the demo recipe, the message README quotes)
BROKEN = [
    (lambda d: d["stages"][2].__setitem__("settings", {"min_wrds": 3}),
     "stages[2].settings: Additional properties are not allowed ('min_wrds' was unexpected)"),
    (lambda d: d["mixture"]["ratios"].__setitem__("text", 0.3), "mixture.ratios: ratios sum to 1.1, not 1"),
    (lambda d: d["sources"][0].__setitem__("path", "data/sample/nothing/*.tar"),
     "sources[0].path: 'data/sample/nothing/*.tar' matches no regular file"),
]


@pytest.mark.parametrize("breaks,message", BROKEN)
def test_the_error_messages_quoted_in_the_readme_are_real(sample_dir, monkeypatch, breaks, message):
    from pipelines.recipe import check_environment
    data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    breaks(data)
    monkeypatch.chdir(sample_dir)
    with pytest.raises(RecipeError) as err:
        check_environment(parse(data, where="recipe.yaml"))
    assert str(err.value).startswith(message)
    assert message in README


def test_the_readme_python_snippet_runs(sample_dir):
    (snippet,) = [b for b in blocks("python") if "pipelines.run(" in b]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=sample_dir, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
