"""Time one ``patch_match`` at side 512, C=32, K=16, 5 iterations, random init, of the
``cocosnet_ops`` found in PACKAGE_DIR: for comparing two builds of the library (for example
today's against an older commit built in a ``git worktree`` with ``python setup.py build_ext
--inplace``), alternating the two in separate processes:

    for i in 1 2 3 4; do
        python benchmarks/time_patch_match.py . 1
        python benchmarks/time_patch_match.py ../old-worktree 1
    done
"""

import sys
import time
from pathlib import Path

package_dir = str(Path(sys.argv[1]).resolve())
sys.path.insert(0, package_dir)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cocosnet_ops  # noqa: E402

if not cocosnet_ops.__file__.startswith(package_dir):
    raise SystemExit(f"imported {cocosnet_ops.__file__}, not the package in {package_dir}")
torch.set_num_threads(int(sys.argv[2]))
generator = torch.Generator().manual_seed(0)
query = F.normalize(torch.randn(1, 32, 512, 512, generator=generator), dim=1)
key = F.normalize(torch.randn(1, 32, 512, 512, generator=generator), dim=1)
with torch.no_grad():
    start = time.perf_counter()
    cocosnet_ops.patch_match(query, key, 16, 5)
    print(f"{package_dir} patch_match {time.perf_counter() - start:.3f}s")
