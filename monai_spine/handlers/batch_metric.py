"""Base of the evaluator metrics that need the batch (geometry, ground truth) as well as the output.

MONAI's ``IgniteMetricHandler`` sees only ``engine.state.output``; the detector and heatmap metrics
also read per-sample geometry from ``engine.state.batch`` and publish a whole summary dictionary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
from ignite.metrics import Metric

__all__ = ["BatchSummaryMetric", "batch_field"]


def batch_field(container: Any, key: str, to_numpy: Callable[[Any], np.ndarray]) -> np.ndarray | None:
    """A batched field from a dict of batched values or a list of per-sample dicts (decollated).

    Args:
        container: ``engine.state.batch`` or ``engine.state.output``.
        key: the field.
        to_numpy: converts one value (tensor or array) to numpy.

    Returns:
        the batched array, or None when the key is absent.
    """
    if isinstance(container, Mapping):
        return None if key not in container else to_numpy(container[key])
    if isinstance(container, Sequence) and container and isinstance(container[0], Mapping):
        if key not in container[0]:
            return None
        return np.stack([to_numpy(c[key]) for c in container])
    return None


class BatchSummaryMetric(Metric):
    """An ignite ``Metric`` updated with ``(engine.state.batch, output_transform(engine.state.output))``.

    Subclasses implement ``reset``, ``update`` and ``compute``; ``compute`` ends with
    :meth:`_publish`, which writes every summary entry to ``engine.state.metrics`` as
    ``prefix + key`` (so StatsHandler and MLFlowHandler log them) and returns the key metric.
    """

    def __init__(self, prefix: str = "val_", output_transform: Callable = lambda x: x) -> None:
        self.prefix = prefix
        self._engine = None
        self.last_summary: dict[str, float] = {}
        super().__init__(output_transform=output_transform)

    def attach(self, engine: Any, name: str, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self._engine = engine
        super().attach(engine, name, *args, **kwargs)

    def iteration_completed(self, engine: Any) -> None:
        """Feed the batch and the (transformed) output of one iteration."""
        self.update((engine.state.batch, self._output_transform(engine.state.output)))

    def _publish(self, summary: dict[str, float], key: str) -> float:
        self.last_summary = summary
        if self._engine is not None:
            for k, v in summary.items():
                self._engine.state.metrics[f"{self.prefix}{k}"] = v
        return summary[key]
