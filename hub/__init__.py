"""The Hugging Face Hub side of the zoo: fetch weights (`zoo.load(..., pretrained=True)`), convert, publish.

    python -m hub convert --model rmt_s --org ORG RMT-S.pth out/rmt_s   # official .pth -> safetensors, config, card
    python -m hub publish out/rmt_s --dry-run                           # then without --dry-run to upload
"""
from __future__ import annotations

from .download import WeightsUnavailableError, fetch_weights, hub_repo_id

__all__ = ["WeightsUnavailableError", "fetch_weights", "hub_repo_id"]
