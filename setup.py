"""The one thing pyproject.toml cannot say without an experimental table: the optional C extension.

rnnkit.kernels._native (src/rnnkit/kernels/csrc) is optional: where no C compiler is
found the install still succeeds and rnnkit runs its NumPy kernels
(``rnnkit.kernels.native.available()`` tells which).
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rnnkit.kernels._native",
            sources=["src/rnnkit/kernels/csrc/native.c"],
            depends=["src/rnnkit/kernels/csrc/cells_isa.h"],
            extra_compile_args=["-O3", "-std=gnu11", "-pthread", "-fvisibility=hidden", "-fno-math-errno"],
            extra_link_args=["-pthread", "-lm"],
            optional=True,
        )
    ]
)
