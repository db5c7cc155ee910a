"""Recipes: the YAML file that says what a run reads, which stages it runs, how it mixes, where it writes.

    name: demo
    seed: 1234
    sources:
      - {name: photos, path: "data/sample/caption/*.tar", format: webdataset, category: caption}
    stages:
      - {name: image_filter, settings: {preset: datacomp_basic}}
      - {name: count_tokens}
      - {name: pack, settings: {context_length: 4096}}
    mixture: {by: category, unit: samples, ratios: {caption: 0.8, text: 0.2}}
    output: {dir: out/demo}

Validation happens in two layers: the published JSON Schema (``recipes/recipe.schema.json``,
generated from the stage registry so it cannot drift) for shape and types, then semantic checks that
a schema cannot express (ratios sum to 1, columns a stage needs are produced by an earlier stage,
each stage accepts its settings). Every message names the field, e.g. ``stages[2].settings.min_side``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from curate.base import records as R
from curate import base as S
from curate.readers.read import FORMATS, SourceSpec, source_files
from pack.profile import ModelProfile, run_declaration
from pipelines.outdir import OutputRefused, check_disjoint, check_output_target

# A recipe is a few hundred nodes; YAML aliases that expand past this are an alias bomb, not a recipe.
MAX_YAML_NODES = 100_000
SEED_MAX = 2**63 - 1   # the mixture salts its hash with the seed as 8 signed bytes; numpy wants >= 0

# The mixture is applied right before the first of these stages (or at the end of the chain).
MIXTURE_BEFORE = ("pack", "shards")


class RecipeError(ValueError):
    """A recipe problem; the message starts with the path of the offending field."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    # Materialise this stage's output (a resume point) even where it would be fused with the next
    # per-row stages into one streaming pass (pipelines.engine.fusion).
    checkpoint: bool = False


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    sources: list[SourceSpec]
    stages: list[StageSpec]
    mixture: dict[str, Any] | None = None
    output: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    plugins: list[str] = field(default_factory=list)
    path: str | None = None
    max_error_fraction: float = 0.0
    # The run's model profile, parsed once here (pack.profile) and handed typed to every stage.
    model: ModelProfile = field(default_factory=ModelProfile)
    # `model:` as written: what the recipe hash and recipe.json hold (a parsed profile would add defaults).
    model_declared: Any = None
    unchecked_stages: tuple[str, ...] = ()   # plugin stages a validation without code execution could not check

    @property
    def output_dir(self) -> str:
        return str(self.output.get("dir") or f"out/{self.name}")

    def canonical(self) -> dict[str, Any]:
        """Everything that changes the result (not the output dir, not the description)."""
        return {"name": self.name, "seed": self.seed,
                "sources": [dataclasses.asdict(s) for s in self.sources],
                # checkpoint only says where rows are written, not what they are
                "stages": [{"name": s.name, "settings": s.settings} for s in self.stages],
                "mixture": self.mixture, "max_error_fraction": self.max_error_fraction,
                "model": self.model_declared}

    def hash(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def stage_context(self, index: int, out_dir: str = "") -> S.StageContext:
        """The run-wide facts stage `index` of ``plan()`` is built with: the one place a StageContext is
        made from a recipe (a run passes its output directory; validating a recipe has none). The model
        profile travels typed; no stage reads another stage's settings."""
        plan = self.plan()
        return S.StageContext(seed=self.seed, out_dir=out_dir, recipe_name=self.name, recipe_hash=self.hash(),
                              stage_index=index, earlier_stages=tuple(s.name for s in plan[:index]),
                              later_reads=frozenset(c for s in plan[index + 1:] for c in S.columns_read(s.name)),
                              mixture=self.mixture, max_error_fraction=self.max_error_fraction, profile=self.model)

    def plan(self) -> list[StageSpec]:
        """The stages that run, in order: ingest (reading `sources`), the recipe's stages, and the
        mixture where it belongs. `mmcurate validate recipe` prints exactly this list."""
        chain = [StageSpec("ingest", {"sources": [dataclasses.asdict(s) for s in self.sources]})] + list(self.stages)
        if self.mixture and not any(s.name == "mixture" for s in self.stages):
            at = next((i for i, s in enumerate(chain) if s.name in MIXTURE_BEFORE), len(chain))
            chain.insert(at, StageSpec("mixture", dict(self.mixture)))
        return chain


SOURCE_SCHEMA = {
    "type": "object",
    "required": ["name", "path", "format"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
        "path": {"type": "string", "minLength": 1, "description": "glob, local or fsspec URL (s3://...)"},
        "format": {"enum": list(FORMATS)},
        "category": {"type": "string"},
        "image_root": {"type": ["string", "null"]},
        "text_column": {"type": "string"},
        "image_column": {"type": "string"},
        "key_column": {"type": ["string", "null"]},
        "key_prefix": {"enum": ["shard", None],
                       "description": "'shard': qualify keys by the file stem, so runs globbed together do not collide"},
        "allowed_hosts": {"type": "array", "items": {"type": "string"},
                          "description": "hosts http(s) image references may be fetched from; empty: no fetching"},
        "max_image_bytes": {"type": "integer", "minimum": 1, "description": "largest image or member read"},
        "fetch_timeout_s": {"type": "number", "exclusiveMinimum": 0, "description": "total time per fetch"},
        "max_text_bytes": {"type": "integer", "minimum": 1,
                           "description": "a record with more caption + turn text (UTF-8 bytes) is rejected: text_too_long"},
        "max_images_per_record": {"type": "integer", "minimum": 1,
                                  "description": "a record with more image references is rejected: too_many_images"},
        "read_timeout_s": {"type": "number", "exclusiveMinimum": 0,
                           "description": "one blocking read of a source file or image ends here: read_timeout"},
        "options": {"type": "object"},
    },
}


def recipe_json_schema() -> dict[str, Any]:
    """The recipe JSON Schema, with each registered stage's settings schema."""
    registry = S.registry()
    stage_names = [n for n in registry if n != "ingest"]
    mixture_schema = registry["mixture"].settings_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://mmcurate.dev/recipe.schema.json",
        "title": "mmcurate recipe",
        "type": "object",
        "required": ["name", "seed", "sources", "stages"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
            "description": {"type": "string"},
            "seed": {"type": "integer", "minimum": 0, "maximum": SEED_MAX},
            "sources": {"type": "array", "minItems": 1, "items": SOURCE_SCHEMA},
            "stages": {"type": "array", "items": {
                "type": "object", "required": ["name"], "additionalProperties": False,
                "properties": {"name": {"enum": stage_names}, "settings": {"type": "object"},
                               "checkpoint": {"type": "boolean", "description": "write this stage's rows "
                                              "(a resume point) instead of fusing it with the next stages"}},
                "allOf": [{"if": {"properties": {"name": {"const": n}}},
                           "then": {"properties": {"settings": registry[n].settings_schema()}}}
                          for n in stage_names],
            }},
            "mixture": mixture_schema,
            "output": {"type": "object", "properties": {"dir": {"type": "string"}}},
            "model": {
                "description": "the model profile the data is prepared for: a preset name (qwen2-vl, qwen2.5-vl, "
                               "open-qwen2vl) or a mapping with an optional `preset` and overrides; read by "
                               "count_tokens, pack and shards and written into the shards' manifest.json",
                "anyOf": [{"type": "string"}, {"type": "object"}, {"type": "null"}]},
            "max_error_fraction": {
                "type": "number", "minimum": 0, "maximum": 1, "default": 0,
                "description": "fraction of a stage's rows that may fail with an error in stage code (quarantined "
                               "as error:<Type>) before the run fails; 0: any such error fails the run"},
            "plugins": {"type": "array", "items": {"type": "string"},
                        "description": "modules to import first; they register their own stages with @register"},
        },
    }


def import_plugins(modules: list[str]) -> None:
    """Import user modules that register stages (a recipe's `plugins:`), naming the one that fails."""
    import importlib
    for i, mod in enumerate(modules):
        if not isinstance(mod, str):
            raise RecipeError(f"plugins[{i}]: must be a module name")
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise RecipeError(f"plugins[{i}]: cannot import {mod!r}: {exc}") from None


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(recipe)"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_alias_expansion(root: yaml.Node, where: str) -> None:
    """Refuse recursive aliases and documents whose aliases expand past MAX_YAML_NODES.

    Sizes are computed on the composed node graph (shared nodes counted once per reference, by
    memoisation), so the check itself never expands anything.
    """
    size: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        nid = id(node)
        if closing:
            open_nodes.discard(nid)
            size[nid] = min(MAX_YAML_NODES + 1, 1 + sum(size[id(c)] for c in _children(node)))
            continue
        if nid in size:
            continue
        if nid in open_nodes:
            raise RecipeError(f"{where}: a YAML alias refers to a node that contains it (recursive alias)")
        open_nodes.add(nid)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    if size[id(root)] > MAX_YAML_NODES:
        raise RecipeError(f"{where}: YAML aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?)")


def _yaml_load(text: str, where: str) -> Any:
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            check_alias_expansion(node, where)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"{where}: YAML syntax error at{line}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{where}: YAML error: {exc}") from None


def parse(data: Any, where: str = "recipe", run_plugins: bool = True) -> Recipe:
    """Validate a loaded recipe mapping and build the Recipe; raises RecipeError naming the field.

    ``run_plugins=False`` (``mmcurate validate recipe``) never imports the recipe's ``plugins:``:
    validating an untrusted recipe in CI must not execute its code. Stages that only a plugin could
    define are then listed in ``Recipe.unchecked_stages`` instead of being checked.
    """
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe is a mapping with name, seed, sources, stages")
    plugins = data.get("plugins") or []
    if run_plugins:
        import_plugins(plugins)
    schema = recipe_json_schema()
    # Stage names first, so that an unknown stage is reported as such rather than as a settings error.
    known = schema["properties"]["stages"]["items"]["properties"]["name"]["enum"]
    unchecked: list[str] = []
    for i, st in enumerate(data.get("stages") or []):
        settings = st.get("settings") if isinstance(st, dict) and isinstance(st.get("name"), str) else None
        for name in settings if isinstance(settings, dict) else ():
            if (st["name"], name) in MOVED_SETTINGS:
                raise RecipeError(f"stages[{i}].settings.{name}: {MOVED_SETTINGS[st['name'], name]}")
        if isinstance(st, dict) and "name" in st and st["name"] not in known:
            if plugins and not run_plugins and isinstance(st["name"], str):
                unchecked.append(st["name"])
                continue
            raise RecipeError(f"stages[{i}].name: unknown stage {st['name']!r}; known stages: {', '.join(known)}")
    known.extend(sorted(set(unchecked)))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = _deepest(errors[0])
        raise RecipeError(f"{_path(err.absolute_path)}: {err.message}")
    sources = [SourceSpec(**s) for s in data["sources"]]
    names = [s.name for s in sources]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise RecipeError(f"sources: duplicate source name(s) {sorted(dup)}")
    recipe = Recipe(name=data["name"], seed=int(data["seed"]), sources=sources,
                    stages=[StageSpec(s["name"], dict(s.get("settings") or {}), bool(s.get("checkpoint", False)))
                            for s in data["stages"]],
                    mixture=dict(data["mixture"]) if data.get("mixture") else None,
                    output=dict(data.get("output") or {}), description=data.get("description", ""),
                    plugins=list(plugins), unchecked_stages=tuple(dict.fromkeys(unchecked)),
                    max_error_fraction=float(data.get("max_error_fraction") or 0.0),
                    model=_run_profile(data), model_declared=data.get("model"))
    check_semantics(recipe)
    return recipe


def _run_profile(data: dict[str, Any]) -> ModelProfile:
    """The run's model profile, parsed once, here: the stages receive it typed (StageContext.profile).
    The pack stage's `context_length` (the pack length's older spelling) is part of the declaration."""
    pack_lengths = [(f"stages[{i}].settings.context_length", st["settings"]["context_length"])
                    for i, st in enumerate(data["stages"])
                    if st["name"] == "pack" and (st.get("settings") or {}).get("context_length") is not None]
    try:
        return run_declaration(data.get("model"), pack_lengths)
    except (ValueError, TypeError) as exc:
        raise RecipeError(str(exc)) from None


# Settings that moved to the run's one declaration: where they are still written, say where they went.
MOVED_SETTINGS = {
    ("count_tokens", "profile"): "the model profile is declared once, in the recipe's top-level `model:`; move it there",
    ("shards", "context_length"): "the pack length is declared once, `model.context_length`; the shards take it "
                                  "from there",
}


def _deepest(err: jsonschema.ValidationError) -> jsonschema.ValidationError:
    while err.context:
        err = max(err.context, key=lambda e: len(e.absolute_path))
    return err


def check_semantics(recipe: Recipe) -> None:
    """What the schema cannot say: settings accepted by each stage, columns available in order."""
    available = set(R.BASE_SCHEMA.names)
    columns_known = True
    plan = recipe.plan()
    recipe_index = {id(s): i for i, s in enumerate(recipe.stages)}
    for index, spec in enumerate(plan):
        where = (f"stages[{recipe_index[id(spec)]}]" if id(spec) in recipe_index
                 else ("mixture" if spec.name == "mixture" else spec.name))
        if spec.name in recipe.unchecked_stages:
            columns_known = False   # a plugin stage's adds are unknown: columns after it are not checked
            continue
        try:
            stage = S.build(spec.name, spec.settings, recipe.stage_context(index))
        except (ValueError, TypeError) as exc:
            prefix = "mixture." if where == "mixture" else f"{where}.settings: "
            raise RecipeError(f"{prefix}{exc}") from None
        missing = [c for c in stage.requires if c not in available]
        if missing and columns_known:
            raise RecipeError(f"{where}.name: stage {spec.name!r} needs column(s) {missing} that no earlier "
                              f"stage produces")
        if spec.name == "mixture" and stage.config.unit == "tokens" and "num_tokens" not in available \
                and columns_known:
            raise RecipeError(f"{where}.unit: a mixture by tokens needs count_tokens before it")
        available |= set(stage.adds)


def load(path: str | Path, run_plugins: bool = True) -> Recipe:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc}") from None
    recipe = parse(_yaml_load(text, str(path)), where=str(path), run_plugins=run_plugins)
    return dataclasses.replace(recipe, path=str(p))


def source_roots(recipe: Recipe) -> list[str]:
    """The patterns a run reads below: source globs, and each image_root (not descended into)."""
    roots = [s.path for s in recipe.sources]
    roots += [s.image_root.rstrip("/") + "/*" for s in recipe.sources if s.image_root]
    return roots


def check_environment(recipe: Recipe, out: str | Path | None = None) -> None:
    """What depends on the filesystem, checked before anything is written: every source matches a
    file, and no output would replace a directory mmcurate did not create or overlap a source."""
    for i, spec in enumerate(recipe.sources):
        try:
            source_files(spec, i)
        except ValueError as exc:   # NoSourceFiles names sources[i].path itself
            msg = str(exc)
            raise RecipeError(msg if msg.startswith("sources[") else f"sources[{i}].path: {msg}") from None
        except OSError as exc:
            raise RecipeError(f"sources[{i}].path: cannot list {spec.path!r}: {exc}") from None
    roots = source_roots(recipe)
    targets = [("output.dir", out or recipe.output_dir)]
    targets += [(f"stages[{i}].settings.output_dir", st.settings["output_dir"]) for i, st in enumerate(recipe.stages)
                if st.name == "shards" and st.settings.get("output_dir")]
    for where, target in targets:
        try:
            check_output_target(target)
            check_disjoint(target, roots)
        except OutputRefused as exc:
            raise RecipeError(f"{where}: {exc}") from None
