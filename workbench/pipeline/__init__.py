"""Recipes run as pipelines: parse a recipe (:mod:`~workbench.pipeline.recipe`), plan and run
its jobs cached by content hash on an executor (:mod:`~workbench.pipeline.run`), each job's
steps in order (:mod:`~workbench.pipeline.steps`, :mod:`~workbench.pipeline.optimize_steps`),
and budgets (:mod:`~workbench.pipeline.budgets`). The top stage below the API: it may import
every other stage, and nothing but the API and the CLI imports it."""
