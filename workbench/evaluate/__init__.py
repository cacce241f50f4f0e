"""Measuring what a deployment costs in accuracy: metrics and model comparison
(:mod:`~workbench.evaluate.compare`), per-layer quantization diagnosis
(:mod:`~workbench.evaluate.debug_quant`) and the every-stack benchmark
(:mod:`~workbench.evaluate.benchmark`). May import runtimes, export, optimize and emulate."""

from workbench.evaluate.compare import Comparison, accuracy, agreement, compare_runners, cosine, evaluate_models, predict, sqnr_db

__all__ = ["Comparison", "accuracy", "agreement", "compare_runners", "cosine", "evaluate_models", "predict", "sqnr_db"]
