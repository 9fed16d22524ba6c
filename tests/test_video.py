"""cocosnet_ops.video: the NNF carried from frame to frame (Tracker, track, carry)."""

import pytest
import torch
import torch.nn.functional as F
from test_match import check_nnf, deformed_pair, smooth_features

import cocosnet_ops
from cocosnet_ops import reference, video

pytestmark = pytest.mark.skipif(not cocosnet_ops.HAS_COMPILED, reason="cocosnet_ops._C is not built")


def shifted_frames(generator, batch, channels, size, shifts):
    """Query frames (T, B, C, H, W): windows of one smooth canvas, moved by ``shifts`` (dx, dy)
    per frame, so the true motion between frames is known."""
    margin = max(abs(s) for shift in shifts for s in shift) + 1
    canvas = smooth_features(generator, batch, channels, size + 2 * margin, size + 2 * margin, sigma=3.0)
    frames = []
    for dx, dy in shifts:
        frames.append(canvas[:, :, margin + dy : margin + dy + size, margin + dx : margin + dx + size])
    return torch.stack(frames)


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(0)
    return deformed_pair(g, 2, 8, (24, 20), (22, 26))


def test_unchanged_frames_carry_exactly_the_full_search(pair):
    query, key = pair
    frames = query.expand(4, -1, -1, -1, -1)
    nnf, scores, cuts = video.track(frames, key, 5)
    full = cocosnet_ops.match(query, key, 5)
    assert cuts[0].all() and not cuts[1:].any()
    for t in range(4):
        assert torch.equal(nnf[t], full[0])
        torch.testing.assert_close(scores[t], full[1], rtol=0, atol=1e-12)


def test_carry_with_zero_motion_keeps_the_matches(pair):
    query, key = pair
    full_nnf, full_scores = cocosnet_ops.match(query, key, 5)
    nnf, scores, motion = video.carry(query, query, key, full_nnf, iters=0, rounds=0, fresh=0)
    identity = torch.arange(24 * 20, dtype=torch.int32).view(1, 1, 24, 20).expand(2, 1, 24, 20)
    assert motion.shape == (2, video.MOTION_MATCHES, 24, 20) and torch.equal(motion[:, :1], identity)
    assert torch.equal(nnf, full_nnf)


@pytest.mark.parametrize("hysteresis", [0.0, 2.0])  # 2.0: above any gap between cosines
def test_a_scene_cut_triggers_the_full_search(hysteresis):
    g = torch.Generator().manual_seed(2)
    first, key = deformed_pair(g, 2, 8, (24, 24), (24, 24))
    other, _ = deformed_pair(g, 2, 8, (24, 24), (24, 24))
    cut = torch.cat([first[:1], other[1:]])  # only the second video cuts to another scene
    tracker = video.Tracker(key, 4, hysteresis=hysteresis)
    tracker.step(first)
    tracker.step(first)
    assert tracker.cuts.tolist() == [False, False]
    nnf, scores = tracker.step(cut)
    assert tracker.cuts.tolist() == [False, True]
    alone = cocosnet_ops.match(other[1:], key[1:], 4)
    assert torch.equal(nnf[1:], alone[0]) and torch.equal(scores[1:], alone[1])


def test_moving_frames_keep_the_contract_and_find_the_best_match():
    g = torch.Generator().manual_seed(3)
    shifts = [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2)]
    frames = shifted_frames(g, 2, 8, 32, shifts)
    key = F.normalize(frames[0] + 0.05 * torch.randn(frames[0].shape, generator=g, dtype=frames.dtype), dim=1)
    tracker = video.Tracker(key, 4, motion_iters=4)  # frame 1's motion search starts from zero
    for t, frame in enumerate(frames):
        nnf, scores = tracker.step(frame)
        check_nnf(nnf, scores, frame, key, 4)
        assert not (t and tracker.cuts.any())
        if t:  # the motion found is the true one away from the border
            dx, dy = (a - b for a, b in zip(shifts[t], shifts[t - 1], strict=True))
            found = tracker.motion[:, 0, 4:-4, 4:-4]
            rows, cols = torch.meshgrid(torch.arange(4, 28), torch.arange(4, 28), indexing="ij")
            expected = (rows + dy) * 32 + cols + dx
            assert (found == expected).double().mean() > 0.95
        exact = cocosnet_ops.exact_knn(frame, key, 1)
        assert (scores[:, 0] >= exact[1][:, 0] - 1e-9).double().mean() > 0.97


def test_hysteresis_keeps_the_carried_best_within_its_margin():
    g = torch.Generator().manual_seed(5)
    still = smooth_features(g, 2, 8, 24, 24, sigma=3.0)
    noisy = F.normalize(still + 0.02 * torch.randn(still.shape, generator=g, dtype=still.dtype), dim=1)
    frames = torch.stack([still, noisy, noisy.roll(1, 3)])  # zero motion, then a shift
    key = smooth_features(g, 2, 8, 20, 22, sigma=2.0)
    plain = video.track(frames, key, 4)
    off = video.track(frames, key, 4, hysteresis=0.0)
    assert all(torch.equal(a, b) for a, b in zip(off, plain, strict=True))
    tracker = video.Tracker(key, 4, hysteresis=2.0)  # above any gap between cosines: always held
    previous, _ = tracker.step(frames[0])
    identity = torch.arange(24 * 24, dtype=torch.int32).view(1, 1, 24, 24)
    for t in (1, 2):
        nnf, scores = tracker.step(frames[t])
        assert not tracker.cuts.any()
        carried = cocosnet_ops.nnf.neighbour_matches(previous[:, :1], tracker.motion[:, :1])
        assert torch.equal(nnf[:, :1], carried)
        if t == 1:  # zero motion nearly everywhere: the previous best stays where it is
            assert (tracker.motion[:, :1] == identity).double().mean() > 0.9
            still_best = tracker.motion[:, :1] == identity
            assert torch.equal(nnf[:, :1][still_best], previous[:, :1][still_best])
            # The rest is the plain search's list without the held match, best first.
            plain_nnf, plain_scores = plain[0][1], plain[1][1]
            changed = plain_nnf[:, 0] != nnf[:, 0]
            assert changed.double().mean() > 0.05  # the margin held matches the plain search moved
            for b, y, x in changed.nonzero().tolist():
                listed = zip(plain_nnf[b, :, y, x].tolist(), plain_scores[b, :, y, x].tolist(), strict=True)
                rest = [(i, s) for i, s in listed if i != nnf[b, 0, y, x]]
                assert [i for i, _ in rest[:3]] == nnf[b, 1:, y, x].tolist()
                assert [s for _, s in rest[:3]] == scores[b, 1:, y, x].tolist()
        # The contract but entry 0's rank: distinct, true scores, entries 1.. best first.
        assert (nnf.sort(1).values.diff(dim=1) != 0).all()
        assert (scores[:, 1:-1] >= scores[:, 2:]).all() and (scores[:, 0] >= scores[:, 1] - 2.0).all()
        expected = reference.patch_scores(frames[t].double(), key.double(), nnf.long(), 1)
        torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-5)
        previous = nnf


def test_batch_items_are_independent_and_sizes_may_differ():
    g = torch.Generator().manual_seed(4)
    frames = shifted_frames(g, 3, 6, 20, [(0, 0), (1, 1), (2, 1)])[..., :17]
    key = smooth_features(g, 3, 6, 23, 15)
    nnf, scores, cuts = video.track(frames, key, 3)
    assert nnf.shape == (3, 3, 3, 20, 17) and nnf.dtype == torch.int32
    assert scores.dtype == torch.float64 and cuts.shape == (3, 3) and cuts.dtype == torch.bool
    for item in range(3):
        alone = video.track(list(frames[:, item : item + 1]), key[item : item + 1], 3)
        assert torch.equal(alone[0], nnf[:, item : item + 1])
        assert torch.equal(alone[1], scores[:, item : item + 1])


def test_every_backend_keeps_the_contract(backend, pair):
    query, key = (t.float() for t in pair)
    tracker = video.Tracker(key, 4, backend=backend)
    for frame in (query, query.roll(1, 3)):
        nnf, scores = tracker.step(frame)
        check_nnf(nnf, scores, frame, key, 4)


def test_half_precision_frames_search_in_float32(pair):
    query, key = (t.half() for t in pair)
    nnf, scores, _ = video.track([query, query], key, 3)
    assert nnf.dtype == torch.int32 and scores.dtype == torch.float32


@pytest.mark.parametrize("hysteresis", [0.0, 0.05])
def test_carry_compiles_fullgraph(pair, hysteresis):
    query, key = (t.float().contiguous() for t in pair)
    previous, _ = cocosnet_ops.match(query, key, 4)
    moved = query.roll(1, 3).contiguous()

    def step(query, previous_query, key, previous_nnf):
        return video.carry(query, previous_query, key, previous_nnf, hysteresis=hysteresis)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got, want = compiled(moved, query, key, previous), step(moved, query, key, previous)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(k=0), ValueError, "k: expected an int in [1, "),
        (dict(iters=-1), ValueError, "iters"),
        (dict(rounds=-1), ValueError, "rounds"),
        (dict(motion_iters=1.5), TypeError, "motion_iters: expected an int"),
        (dict(motion_radius=-1), ValueError, "motion_radius"),
        (dict(fresh=10_000), ValueError, "fresh: expected an int in [0, "),
        (dict(cut_ratio=1.5), ValueError, "cut_ratio: expected a number in [0, 1]"),
        (dict(cut_ratio="high"), TypeError, "cut_ratio: expected a float"),
        (dict(hysteresis=-0.01), ValueError, "hysteresis: expected a finite number >= 0"),
        (dict(hysteresis=float("nan")), ValueError, "hysteresis: expected a finite number >= 0"),
        (dict(hysteresis=float("inf")), ValueError, "hysteresis: expected a finite number >= 0"),
        (dict(hysteresis="wide"), TypeError, "hysteresis: expected a float"),
        (dict(patch_size=2), ValueError, "patch_size: expected an odd size"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(backend="gpu"), ValueError, "backend: expected one of"),
    ],
)
def test_bad_tracker_arguments_are_named(pair, kwargs, error, words):
    with pytest.raises(error) as raised:
        video.Tracker(pair[1], **kwargs)
    assert words in str(raised.value)


def test_bad_frames_are_named(pair):
    query, key = pair
    tracker = video.Tracker(key, 4)
    with pytest.raises(ValueError, match="query: expected a 4-D tensor"):
        tracker.step(query[0])
    with pytest.raises(ValueError, match="key: 3 channels do not match"):
        video.Tracker(key[:, :3]).step(query)
    tracker.step(query)
    with pytest.raises(ValueError, match="query: expected shape .* like the previous frame"):
        tracker.step(query[..., :10])
    with pytest.raises(ValueError, match="query_frames: expected a 5-D tensor"):
        video.track(query, key)
    with pytest.raises(ValueError, match="query_frames: expected at least one frame"):
        video.track([], key)
    with pytest.raises(TypeError, match="query_frames: expected a tensor or a sequence"):
        video.track(3, key)
    nnf, _ = cocosnet_ops.match(query, key, 4)
    with pytest.raises(TypeError, match="previous_nnf: expected dtype torch.int32"):
        video.carry(query, query, key, nnf.long())
    with pytest.raises(ValueError, match="previous_nnf: entries must be flat key indices"):
        video.carry(query, query, key, nnf + 10_000)
    with pytest.raises(ValueError, match="previous_query: expected shape"):
        video.carry(query, query[..., :10], key, nnf)
    with pytest.raises(ValueError, match="previous_motion: expected shape"):
        video.carry(query, query, key, nnf, nnf[:1])


def patch_features(image):
    """(1, 27, H, W) float64: the 3x3 RGB patch of every pixel, channels standardised, L2-normalised."""
    rgb = torch.from_numpy(image).permute(2, 0, 1)[None].double()
    rgb = (rgb - rgb.mean((2, 3), keepdim=True)) / rgb.std((2, 3), keepdim=True)
    patches = F.unfold(F.pad(rgb, (1, 1, 1, 1), mode="replicate"), 3)
    return F.normalize(patches.view(1, 27, *image.shape[:2]), dim=1)


def carried_forward(mask, previous_xy, previous_valid):
    """The pixels of frame t whose point frame t-1 shows inside ``mask`` (nearest pixel)."""
    side = mask.shape[-1]
    xy = torch.from_numpy(previous_xy).round().long().clamp(0, side - 1)
    return mask[xy[..., 1], xy[..., 0]] & torch.from_numpy(previous_valid)


def test_disoccluded_regions_recover_within_a_few_frames():
    from data.synthetic import make_video

    clip = make_video(0, 2, 64, 8)
    key = patch_features(clip["exemplar"])
    tracker = video.Tracker(key, 4)
    hits = []
    for image in clip["frames"]:
        query = patch_features(image)
        _, scores = tracker.step(query)
        best = cocosnet_ops.exact_knn(query, key, 1)[1][0, 0]
        hits.append(scores[0, 0] >= best - 1e-9)
    late, overall = [], []
    for t in range(1, 6):  # pixels newly seen at frame t, followed for two frames by the true motion
        region = torch.from_numpy(~clip["previous_valid"][t])
        for later in (t + 1, t + 2):
            region = carried_forward(region, clip["previous_coords"][later], clip["previous_valid"][later])
        late.append(hits[t + 2][region].double().mean())
        overall.append(hits[t + 2].double().mean())
    # Two frames later they find their best matches as often as the rest of the frame does.
    assert torch.stack(late).mean() >= torch.stack(overall).mean() - 0.02


def test_moved_matches_move_any_index_map_and_name_bad_input(pair):
    query, _ = pair
    labels = torch.arange(24 * 20, dtype=torch.int32).view(1, 1, 24, 20).expand(2, 3, 24, 20) * 7
    moved, motion = video.moved_matches(query, query, labels.contiguous())
    assert moved.shape == (2, 3 * video.MOTION_MATCHES, 24, 20)
    assert torch.equal(moved[:, :3], labels) and torch.equal(motion[:, 0], labels[:, 0] // 7)
    with pytest.raises(ValueError, match="previous_nnf: entries must be flat key indices"):
        video.moved_matches(query, query, labels - 1)
    with pytest.raises(ValueError, match="motion_iters"):
        video.moved_matches(query, query, labels, motion_iters=-1)
