// cocosnet_ops._C_emulated: the CUDA kernels of csrc/cuda/ built by the host compiler against
// the emulator (cuda_emulation.h) and registered for CPU tensors as the library
// cocosnet_ops_emulated, with the same schemas as cocosnet_ops. Built when setup.py runs with
// COCOSNET_EMULATED_CUDA=1; tests/test_emulated_cuda.py compares it with the cpu kernels.
#include <Python.h>
#include <torch/library.h>

#include "../schemas.h"

extern "C" {
PyMODINIT_FUNC PyInit__C_emulated(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_emulated", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(cocosnet_ops_emulated, m) { cocosnet_ops::define_schemas(m); }
