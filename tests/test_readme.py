"""The README's API example runs as written and computes what it says."""

import re
from pathlib import Path

import torch

from cocosnet_ops import reference

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_api_example_runs():
    example, sharing = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    ns: dict = {}
    exec(compile(example, str(README), "exec"), ns)
    query, key, exemplar, nnf, scores = ns["query"], ns["key"], ns["exemplar"], ns["nnf"], ns["scores"]
    # Coarse exact kNN, upsampled to 16 candidates x a 4x4 window each at full resolution.
    assert ns["coarse_nnf"].shape == (1, 16, 24, 32)
    assert ns["init"].shape == (1, 16 * 16, 96, 128)
    # The search: 16 distinct matches per pixel, best first, scored by their inner products.
    assert nnf.dtype == torch.int32 and nnf.shape == (1, 16, 96, 128)
    assert int(nnf.min()) >= 0 and int(nnf.max()) < 80 * 80
    assert (nnf.sort(1).values.diff(dim=1) != 0).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    torch.testing.assert_close(scores, reference.patch_scores(query, key, nnf), rtol=1e-5, atol=1e-5)
    # The warp at the NNF's integer coordinates is the softmax warp of the reference.
    warp = ns["warp"]
    assert warp.shape == (1, 3, 96, 128)
    expected = reference.weighted_gather(query, key, exemplar, nnf, 0.01)
    torch.testing.assert_close(warp, expected, rtol=1e-5, atol=1e-5)
    # And the coordinates get a gradient, which is what a refinement network learns from.
    (grad,) = torch.autograd.grad(warp.square().sum(), ns["coords"])
    assert grad.shape == ns["coords"].shape and grad.abs().sum() > 0
    # The second example continues the first: sharing matches with similar query pixels keeps
    # 16 distinct matches whose best scores are never worse.
    exec(compile(sharing, str(README), "exec"), ns)
    assert ns["shared"].shape == (1, 8 * 16, 96, 128)
    assert ns["nnf"].shape == nnf.shape and (ns["nnf"].sort(1).values.diff(dim=1) != 0).all()
    assert (ns["scores"][:, 0] >= scores[:, 0]).all()
    torch.testing.assert_close(
        ns["scores"], reference.patch_scores(query, key, ns["nnf"]), rtol=1e-5, atol=1e-5
    )
