"""The persistent compilation cache: compiled XLA programs kept on disk between processes.

A small job is compile-bound: `fit` on digits spends most of its first second compiling, and
every new Python process compiles the same programs again. JAX can keep them on disk; jdnn turns
that on for you when it is safe to, and only then:

- when `fit`, `fit_ensemble` or `search` runs (or the `jdnn` command), never at `import jdnn`;
- unless `JDNN_CACHE_DIR` is `off` (or `0`, `none`, `false`, `no`, empty);
- unless JAX's cache is configured already, by you (`JAX_COMPILATION_CACHE_DIR`,
  `jax.config.update("jax_compilation_cache_dir", ...)`): yours is left as it is, thresholds
  included;
- in a folder that can be created and written (`$JDNN_CACHE_DIR`, else `~/.cache/jdnn/jax`,
  made private to the user); else nothing is turned on.

A program's entry is keyed by its HLO, the compile options, the JAX/jaxlib version and the
device, so an entry is reused only where it computes the same thing; a stale one is never
read. The folder can be deleted at any time. JAX's warning applies: the cache is trusted code,
so never point it at a folder others can write to.
"""

from __future__ import annotations

import os

import jax

OFF = ("", "off", "0", "none", "false", "no")
DEFAULT_FOLDER = os.path.join("~", ".cache", "jdnn", "jax")

_enabled: str | None = None   # the folder jdnn turned the cache on in, in this process


def cache_folder() -> str | None:
    """The folder jdnn's cache uses: `$JDNN_CACHE_DIR`, else `~/.cache/jdnn/jax`; None when
    `JDNN_CACHE_DIR` turns it off."""
    folder = os.environ.get("JDNN_CACHE_DIR", DEFAULT_FOLDER)
    if folder.strip().lower() in OFF:
        return None
    return os.path.abspath(os.path.expanduser(folder))


def enable_compilation_cache() -> str | None:
    """Turns on JAX's persistent compilation cache, so that a second run (a new process)
    reuses the programs the first one compiled instead of compiling them again.

    `fit`, `fit_ensemble` and `search` call it before they compile anything, and so does the
    `jdnn` command
    (`jdnn.cli.commands.enable_compilation_cache` is this function). It turns the cache on
    only where that is safe (see the module docstring): not when `JDNN_CACHE_DIR` is `off`,
    not when JAX's cache folder is configured already (yours stays, untouched), and only in a
    folder it can write. When it does, every program is cached, however small or quick to
    compile (JAX's own thresholds would skip the sub-second programs that make up a small
    job). Calling it again is free.

    Returns:
        The folder jdnn's cache is on in, or None if jdnn did not turn it on (off, configured
        by you, or no writable folder).

    Examples:
        >>> jdnn.train.enable_compilation_cache()   # '/home/me/.cache/jdnn/jax'
        >>> # JDNN_CACHE_DIR=off python train.py     # never turned on
    """
    global _enabled
    folder = cache_folder()
    if folder is None:
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:   # turned on already: by jdnn (nothing to do) or by the user (theirs)
        return current if current == _enabled else None
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK | os.X_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _enabled = folder
    return folder
