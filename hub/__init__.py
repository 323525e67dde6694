"""The Hugging Face Hub side of the zoo: convert, publish, download (the download code itself is `zoo._hub`).

python -m hub convert --model rmt_s --org ORG RMT-S.pth out/rmt_s   # official .pth -> safetensors, config, card
python -m hub publish out/rmt_s --dry-run                           # then without --dry-run to upload
"""

from __future__ import annotations

# The one home of the project's version: pyproject.toml reads it from here (tool.setuptools.dynamic), so a source
# tree run without installing and an installed copy report the same version.
__version__ = "0.1.0"
