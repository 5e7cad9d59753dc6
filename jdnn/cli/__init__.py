"""The `jdnn` command line and what only it uses: `commands` (the argument parser and each
subcommand), `run` (the main job behind `jdnn train`, re-exporting its parts: `config`,
`recipe`, `run_dir`, `signals`), `export` (`jdnn export`), `zoo` (the models `jdnn gradcheck`
checks) and `gradcheck_zoo` (checking them)."""

from jdnn.cli.commands import enable_compilation_cache, main

__all__ = ["enable_compilation_cache", "main"]
