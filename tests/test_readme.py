"""The README's API example runs as written and computes what it says; the README stays short
and its links, and those of docs/, lead somewhere."""

import re
from pathlib import Path

import torch

import cocosnet_ops
from cocosnet_ops import reference

README = Path(__file__).resolve().parent.parent / "README.md"
DOCS = README.parent / "docs"
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_api_example_runs():
    example, parts = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    ns: dict = {}
    exec(compile(example, str(README), "exec"), ns)
    query, key, exemplar, nnf, scores = ns["query"], ns["key"], ns["exemplar"], ns["nnf"], ns["scores"]
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
    # The second example builds a search from the parts: coarse exact kNN at 1/2, upsampled to 16
    # candidates x a 2x2 window each, PatchMatch, then a round of the similar pixels' matches,
    # which keeps 16 distinct matches whose scores are never worse than PatchMatch's.
    exec(compile(parts, str(README), "exec"), ns)
    assert ns["coarse_nnf"].shape == (1, 16, 48, 64)
    assert ns["init"].shape == (1, 16 * 4, 96, 128)
    searched = cocosnet_ops.patch_match(query, key, k=16, iters=5, init=ns["init"])[1]
    assert ns["nnf"].shape == nnf.shape and (ns["nnf"].sort(1).values.diff(dim=1) != 0).all()
    assert (ns["scores"] >= searched).all()
    torch.testing.assert_close(
        ns["scores"], reference.patch_scores(query, key, ns["nnf"]), rtol=1e-5, atol=1e-5
    )


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces to -."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_relative_links_lead_to_existing_files_and_sections():
    pages = [README, *sorted(DOCS.glob("*.md"))]
    assert {p.name for p in pages} >= {"README.md", "benchmarks.md", "training.md", "ops.md"}
    broken = []
    for page in pages:
        for target in MARKDOWN_LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in heading_anchors(path)):
                broken.append(f"{page.relative_to(README.parent)}: {target}")
    assert not broken, broken


def test_readme_is_for_a_newcomer():
    """One screen of what and why, the commands, the API, headline tables, links: the details
    live in docs/."""
    assert len(README.read_text().splitlines()) < 250
