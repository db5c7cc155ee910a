"""`mmcurate` — run recipes, validate recipes/shards/annotations in CI, list stages.

    mmcurate run RECIPE [--out DIR] [--executor auto|ray|inline] [--until STAGE] [--from STAGE] [--quiet] [--verbose]
    mmcurate validate recipe FILE
    mmcurate validate shards DIR
    mmcurate validate annotations FILE
    mmcurate stages [--json]
    mmcurate schema            # the recipe JSON Schema (recipes/recipe.schema.json is this output)

Validators exit 0 when fine and 1 with a message naming the first problem, so users can call them
from their own CI.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.recipe import RecipeError, check_environment, load
    from pipelines.runner import run
    try:
        recipe = load(args.recipe)
        check_environment(recipe, args.out)
    except RecipeError as exc:
        print(f"invalid recipe: {exc}", file=sys.stderr)
        return 2
    from curate.base.diskspace import OutOfSpace
    try:
        result = run(recipe, out=args.out, executor=args.executor, until=args.until, rerun_from=args.rerun_from,
                     verbose=args.verbose, progress=not args.quiet)
    except OutOfSpace as exc:   # a clear line, not a writer's traceback; the re-run resumes
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"report: {result.out_dir / 'report.json'}")
    for e in result.report["stages"]:
        rej = sum(e["rejected"].values())
        qua = sum(e["quarantined"].values())
        print(f"  {e['name']:<16} in={e['in']:<7} out={e['out']:<7} rejected={rej:<6} quarantined={qua:<5}"
              f" {'balanced' if e['balanced'] else 'UNBALANCED'}")
    for line in loss_warnings(result.report):
        print(f"warning: {line}", file=sys.stderr)
    if result.report["stages"] and result.report["final_samples"] == 0:
        print("error: no sample survived the run; see rejects.parquet for why", file=sys.stderr)
        return 1
    return 0 if all(e["balanced"] for e in result.report["stages"]) else 1


# A single reason that removes more than this share of a stage's input is worth a line on the console.
LOSS_WARNING_SHARE = 0.10

HINTS = {
    "leftover_dropped": "set shards.leftover to carry_over or pad_with_repeats to keep them",
    "mixture:downsampled": "the mixture ratios keep the largest total they can; add data to the short groups",
}


def loss_warnings(report: dict) -> list[str]:
    """What was lost and why: every reason that removed a large share of a stage's input."""
    out = []
    for e in report.get("stages", []):
        for kind in ("rejected", "quarantined"):
            for reason, n in e.get(kind, {}).items():
                if e["in"] and n / e["in"] > LOSS_WARNING_SHARE:
                    hint = HINTS.get(reason, f"see rejects.parquet (stage {e['name']}, reason {reason})")
                    out.append(f"{e['name']}: {n} of {e['in']} samples ({n / e['in']:.0%}) {kind} as {reason}; {hint}")
    return out


def _cmd_validate(args: argparse.Namespace) -> int:
    if args.what == "recipe":
        return _validate_recipe(args.path)
    if args.what == "shards":
        from pack.shards.validate import validate_shards
        problems = validate_shards(args.path)
    else:
        from curate.grounding import validate_file
        problems = validate_file(args.path)
    if problems:
        print(f"invalid {args.what}: {problems[0]}", file=sys.stderr)
        for p in problems[1:20]:
            print(f"  also: {p}", file=sys.stderr)
        if len(problems) > 20:
            print(f"  ... {len(problems) - 20} more", file=sys.stderr)
        return 1
    print(f"ok: {args.what} {args.path}")
    return 0


def _validate_recipe(path: str) -> int:
    """Check a recipe without executing any of its code (plugins are not imported), and check what a
    run would touch on disk: sources that match files, output directories safe to write."""
    from pipelines.recipe import RecipeError, check_environment, load
    try:
        recipe = load(path, run_plugins=False)
        check_environment(recipe)
    except RecipeError as exc:
        print(f"invalid recipe: {exc}", file=sys.stderr)
        return 1
    print(f"ok: recipe {recipe.name!r} ({len(recipe.sources)} sources, stages: "
          f"{' -> '.join(s.name for s in recipe.plan())})")
    if recipe.unchecked_stages:
        print(f"note: stage(s) {', '.join(recipe.unchecked_stages)} come from plugins {recipe.plugins}, which "
              f"validate does not import (it never executes recipe code); their settings were not checked")
    return 0


def _cmd_stages(args: argparse.Namespace) -> int:
    from curate.base import registry
    reg = registry()
    if args.json:
        print(json.dumps({n: {"description": c.description, "requires": list(c.requires),
                              "adds": {k: str(v) for k, v in c.adds.items()},
                              "resources": c.resources.__dict__, "settings": c.settings_schema()}
                          for n, c in reg.items()}, indent=2, default=str))
        return 0
    for name, cls in reg.items():
        r = cls.resources
        print(f"{name}  [{r.kind}, cpus={r.cpus}, gpus={r.gpus}, batch={r.batch_size}]")
        if cls.description:
            print(f"    {cls.description}")
        for setting, schema in cls.settings_schema().get("properties", {}).items():
            default = f" = {schema['default']!r}" if "default" in schema else ""
            typ = (schema.get("type") or ("enum " + str(schema["enum"]) if "enum" in schema else None)
                   or " | ".join(str(a.get("type", a.get("enum", "?"))) for a in schema.get("anyOf", [])) or "any")
            doc = f"  # {schema['description']}" if schema.get("description") else ""
            print(f"    {setting}: {typ}{default}{doc}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from pipelines.recipe import recipe_json_schema
    print(json.dumps(recipe_json_schema(), indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmcurate", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a recipe")
    r.add_argument("recipe")
    r.add_argument("--out", default=None, help="output directory (default: the recipe's output.dir)")
    r.add_argument("--executor", choices=("auto", "ray", "inline"), default="auto",
                   help="auto (default): inline for small inputs, Ray Data above; RAY_ADDRESS joins a cluster")
    r.add_argument("--until", default=None, help="stop after this stage")
    r.add_argument("--from", dest="rerun_from", default=None,
                   help="re-run this stage and every later one even if complete")
    r.add_argument("--quiet", action="store_true",
                   help="no per-stage lines and no progress (a live bar on a terminal, a line every ~10 s "
                        "elsewhere; MMCURATE_PROGRESS_INTERVAL sets the seconds); the summary still prints")
    r.add_argument("--verbose", action="store_true", help="show Ray's own logs and progress bars")
    r.set_defaults(func=_cmd_run)
    v = sub.add_parser("validate", help="validate a recipe, a shard directory or an annotations file")
    v.add_argument("what", choices=("recipe", "shards", "annotations"))
    v.add_argument("path")
    v.set_defaults(func=_cmd_validate)
    s = sub.add_parser("stages", help="list stages and their settings")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_stages)
    sc = sub.add_parser("schema", help="print the recipe JSON Schema")
    sc.set_defaults(func=_cmd_schema)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
