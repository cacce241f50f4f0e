"""Export: ModelHandle + QuantConfig (+ calibration data) -> Artifact.

One exporter is registered per (framework, format). Each writes into a temporary path
that is renamed onto the destination only when it succeeded, then a manifest is written
beside it. Combinations that cannot work are refused before any work starts.
"""

from workbench.export.engine import EXPORTERS, convert

__all__ = ["EXPORTERS", "convert"]
