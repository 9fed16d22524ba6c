// The library cocosnet_ops: its schemas (schemas.h); kernels register per device in cpu/ and
// cuda/; fake kernels and autograd are registered from Python (cocosnet_ops/ops.py).
#include <Python.h>
#include <torch/library.h>

#include "schemas.h"

extern "C" {
// Importing cocosnet_ops._C runs the static registrations below; the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(cocosnet_ops, m) { cocosnet_ops::define_schemas(m); }
