"""mmcurate.pipelines — recipes, the runner (Ray Data or inline) and the `mmcurate` CLI.

    import pipelines
    result = pipelines.run("recipes/demo.yaml", out="out/demo")
    result.report["stages"][0]            # {"name": "ingest", "in": ..., "out": ..., "rejected": {...}}
    result.kept().to_pandas()             # the rows that survived the last stage
"""
from pipelines.recipe import Recipe, RecipeError, load as load_recipe  # noqa: F401
from pipelines.runner import RunResult, run  # noqa: F401
