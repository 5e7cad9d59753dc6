"""`Compiles`: the XLA programs compiled inside a `with` block, from `jax.monitoring` (shared by
the tests that count compilations)."""

import jax

COMPILE = "/jax/core/compile/backend_compile_duration"


class Compiles:
    """The names of the XLA programs compiled inside the `with` block."""

    def __init__(self):
        self.names: list[str] = []

    def __call__(self, event, seconds, **kw):
        if event == COMPILE:
            self.names.append(str(kw.get("fun_name")))

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)
