"""What every layer of the project shares and nothing of it depends on: the command lines' exit codes and output
(`common.cli`), safe output paths and writes (`common.paths`), and where a result came from (`common.provenance`).
It imports nothing of zoo, bench, hub or benchmarks, so each of them imports from here directly.
"""

# The one home of the project's version: pyproject.toml reads it from here (tool.setuptools.dynamic), so a source
# tree run without installing and an installed copy report the same version.
__version__ = "0.1.0"
