"""Kept for `from hub.download import ...`: the download code lives next to the models, in `zoo._hub`."""
from zoo._hub import CLIENT_ERRORS, FALLBACK_FILENAME, REVISION_ENV, WeightsUnavailableError, fetch_weights, hub_repo_id
from zoo.rmt import ORG_ENV

__all__ = [
    "WeightsUnavailableError", "fetch_weights", "hub_repo_id", "ORG_ENV", "REVISION_ENV", "FALLBACK_FILENAME",
    "CLIENT_ERRORS",
]  # fmt: skip
