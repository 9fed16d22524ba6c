"""Builds cocosnet_ops._C: CPU kernels always, CUDA kernels when torch has CUDA and nvcc exists.

FORCE_CUDA=1 builds the CUDA kernels even without a visible GPU; FORCE_CPU=1 never does.
"""

import glob
import os
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    # at::parallel_for expands to an OpenMP loop in the including file: without -fopenmp it runs
    # on one thread.
    cxx_flags = ["-O3", "-std=c++17", "-fvisibility=hidden", "-fopenmp"]
    want_cuda = os.environ.get("FORCE_CUDA") == "1" or (torch.cuda.is_available() and CUDA_HOME is not None)
    if os.environ.get("FORCE_CPU") == "1" or not cuda_sources or torch.version.cuda is None:
        want_cuda = False
    if want_cuda:
        return CUDAExtension(
            "cocosnet_ops._C",
            sources + cuda_sources,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17"]},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension(
        "cocosnet_ops._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"]
    )


def write_build_info() -> None:
    """Record the torch that _C is compiled against: built with pip's build isolation it may be
    another torch than the installed one, and then the import names both (cocosnet_ops/_extension.py)."""
    path = Path(__file__).resolve().parent / "cocosnet_ops" / "_build_info.py"
    path.write_text(f'"""Written by setup.py when it built _C."""\n\nTORCH_VERSION = "{torch.__version__}"\n')


write_build_info()
setup(
    packages=find_packages(include=["cocosnet_ops", "cocosnet_ops.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
