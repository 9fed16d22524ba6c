"""Builds cocosnet_ops._C: CPU kernels always, CUDA kernels when torch has CUDA and nvcc exists.

FORCE_CUDA=1 builds the CUDA kernels even without a visible GPU, and even against a CPU-only
torch: the CUDA sources use only CUDA headers and generic c10 APIs, and link against cudart
alone. FORCE_CPU=1 never builds them. TORCH_CUDA_ARCH_LIST picks the architectures (default
8.0 and 9.0).

COCOSNET_EMULATED_CUDA=1 also builds cocosnet_ops._C_emulated: the same CUDA kernel sources
compiled by the host compiler against an emulator (csrc/emulated/) that runs them on the CPU, so
kernel changes are tested without a GPU (tests/test_emulated_cuda.py). It needs no CUDA toolkit.
"""

import glob
import os
import shutil
import subprocess
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils import cpp_extension
from torch.utils.cpp_extension import BuildExtension, CppExtension


def cuda_toolkit_root() -> str | None:
    """The CUDA toolkit's root directory, or None without nvcc.

    torch's own guess is None when torch has no CUDA, and wrong when the `nvcc` on PATH is a
    wrapper script; nvcc's dry run names the directory the real compiler runs from.
    """
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(variable)
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return root
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    dry_run = subprocess.run(
        [nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True
    ).stderr
    for line in dry_run.splitlines():
        if line.startswith("#$ _HERE_="):
            return os.path.dirname(line.split("=", 1)[1].strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    # at::parallel_for expands to an OpenMP loop in the including file: without -fopenmp it runs
    # on one thread.
    cxx_flags = ["-O3", "-std=c++17", "-fvisibility=hidden", "-fopenmp"]
    cuda_root = cuda_toolkit_root()
    if os.environ.get("FORCE_CPU") == "1" or not cuda_sources or cuda_root is None:
        want_cuda = False
    elif os.environ.get("FORCE_CUDA") == "1":
        want_cuda = True
    else:
        want_cuda = torch.version.cuda is not None and torch.cuda.is_available()
    if not want_cuda:
        return CppExtension(
            "cocosnet_ops._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"]
        )
    # BuildExtension finds nvcc through this module attribute.
    cpp_extension.CUDA_HOME = cuda_root
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    library_dir = os.path.join(cuda_root, "lib64")
    if not os.path.isdir(library_dir):
        library_dir = os.path.join(cuda_root, "targets", "x86_64-linux", "lib")
    # CppExtension, not CUDAExtension: the latter links torch_cuda and c10_cuda, which a CPU-only
    # torch lacks. The CUDA glue needs neither.
    return CppExtension(
        "cocosnet_ops._C",
        sources + cuda_sources,
        define_macros=[("WITH_CUDA", None)],
        include_dirs=[os.path.join(cuda_root, "include")],
        library_dirs=[library_dir],
        libraries=["cudart"],
        runtime_library_dirs=[library_dir],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "-lineinfo"]},
        extra_link_args=["-fopenmp"],
    )


def emulated_cuda_extension() -> CppExtension:
    """The CUDA kernels and their torch glue, built for the emulator (ops cocosnet_ops_emulated)."""
    glue = ["csrc/cuda/search_cuda.cpp", "csrc/cuda/gather_cuda.cpp"]
    sources = sorted(glob.glob("csrc/emulated/*.cpp")) + glue
    flags = ["-O2", "-std=c++17", "-fvisibility=hidden", "-Wno-unknown-pragmas"]
    return CppExtension(
        "cocosnet_ops._C_emulated",
        sources,
        define_macros=[("COCOSNET_EMULATED_CUDA", None)],
        extra_compile_args={"cxx": flags},
    )


def write_build_info() -> None:
    """Record the torch that _C is compiled against: built with pip's build isolation it may be
    another torch than the installed one, and then the import names both (cocosnet_ops/_extension.py)."""
    path = Path(__file__).resolve().parent / "cocosnet_ops" / "_build_info.py"
    path.write_text(f'"""Written by setup.py when it built _C."""\n\nTORCH_VERSION = "{torch.__version__}"\n')


write_build_info()
setup(
    packages=find_packages(include=["cocosnet_ops", "cocosnet_ops.*"]),
    ext_modules=[extension()]
    + ([emulated_cuda_extension()] if os.environ.get("COCOSNET_EMULATED_CUDA") == "1" else []),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
