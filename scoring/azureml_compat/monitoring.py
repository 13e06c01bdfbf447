"""`azureml.monitoring`: Azure's ModelDataCollector, whose collect() calls join the current request's
data-collection record (see mlscore.scoring.collect) under the collector's designation."""

from __future__ import annotations

from typing import Any, Sequence

from mlscore.scoring import collect as _collect
from mlscore.scoring.request_context import CURRENT


class ModelDataCollector:
    """`ModelDataCollector("model", designation="inputs", feature_names=[...])`, created in init(); each
    `collect(data)` inside run() adds `{"model", "model_version", "feature_names", "data"}` to the
    request's record as `fields[designation]` (a list when run() collects more than once). Without data
    collection (`--collect-data`, `dataCollection.storageEnabled`) and outside run(), it does nothing."""

    def __init__(self, model_name: str, designation: str = "default", feature_names: Sequence[str] | None = None,
                 workspace: str = "default/default/default", webservice_name: str = "default",
                 model_version: str = "default", **_options: Any) -> None:
        self.model_name = model_name
        self.designation = designation
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.model_version = model_version

    def collect(self, input_data: Any, user_correlation_id: str = "") -> dict[str, Any]:
        """Record `input_data`; the correlation (the request's id and yours) for add_correlations."""
        entry: dict[str, Any] = {"model": self.model_name, "model_version": self.model_version, "data": input_data}
        if self.feature_names is not None:
            entry["feature_names"] = self.feature_names
        if user_correlation_id:
            entry["user_correlation_id"] = user_correlation_id
        context = CURRENT.get()
        earlier = context.fields.get(self.designation) if context is not None and context.fields else None
        if earlier is None:
            _collect.collect(self.designation, entry)
        elif isinstance(earlier, list):
            earlier.append(entry)
        else:
            _collect.collect(self.designation, [earlier, entry])
        request_id = context.request_id.decode("latin-1") if context is not None else None
        return {"request_id": request_id, "user_correlation_id": user_correlation_id}

    def add_correlations(self, input_data: Any, correlations: Any) -> Any:
        """Records here are correlated by the request's id already: `input_data` as it is."""
        return input_data
