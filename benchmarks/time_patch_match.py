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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cli  # noqa: E402


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package_dir", type=cli.existing_folder, help="the folder holding cocosnet_ops/")
    parser.add_argument("threads", type=cli.int_at_least(1), help="torch threads")
    args = parser.parse_args()
    package_dir = str(args.package_dir.resolve())
    sys.path.insert(0, package_dir)  # before the ROOT inserted above, so its cocosnet_ops is imported

    import torch
    import torch.nn.functional as F

    import cocosnet_ops

    if not cocosnet_ops.__file__.startswith(package_dir):
        parser.error(f"argument package_dir: imported {cocosnet_ops.__file__}, not the one in {package_dir}")
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(1, 32, 512, 512, generator=generator), dim=1)
    key = F.normalize(torch.randn(1, 32, 512, 512, generator=generator), dim=1)
    with torch.no_grad():
        start = time.perf_counter()
        cocosnet_ops.patch_match(query, key, 16, 5)
        print(f"{package_dir} patch_match {time.perf_counter() - start:.3f}s")


if __name__ == "__main__":
    cli.run(main)
