"""Build the compiled core; everything else about the package lives in pyproject.toml.

There is no fallback: if the extension cannot be compiled, installation fails, because a server
silently running the pure-Python twin would be several times slower with no signal.
SOHBET_CYTHON_DEBUG=1 builds with bounds checks and line tracing for debugging.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("SOHBET_CYTHON_DEBUG") == "1"

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
macros = []
if DEBUG:
    directives["linetrace"] = True
    macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]

compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]


def extension(name: str) -> Extension:
    """A compiled module of the WebSocket layer, `sohbet.ws.<name>`."""
    return Extension(
        f"sohbet.ws.{name}",
        [f"sohbet/ws/{name}.pyx"],
        depends=["sohbet/ws/_xor.h", "sohbet/ws/_frames.pxd", "sohbet/ws/_protocol.pxd"],
        extra_compile_args=compile_args,
        define_macros=macros,
    )


# force: the generated C depends on the directives, which cythonize does not track; regenerating
# costs a second and rules out a debug build silently reusing release C (or the reverse).
setup(
    ext_modules=cythonize(
        [extension("_frames"), extension("_protocol"), extension("_send")], compiler_directives=directives, force=True
    )
)
