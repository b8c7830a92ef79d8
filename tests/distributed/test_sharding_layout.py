"""The shard layout (mindspore_accum.sharding.layout), against a slicing of the flat vector written here.

No collectives and no MindSpore: the reference is NumPy indexing of one flat, padded vector.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mindspore_accum.sharding.layout import ShardLayout, merge_pieces


def _arrays(sizes, seed=0):
    rs = np.random.RandomState(seed)
    return [rs.randn(n).astype(np.float32) for n in sizes]


def _check_layout(sizes, world):
    arrays = _arrays(sizes)
    flat = np.concatenate([a.reshape(-1) for a in arrays] + [np.zeros(0, np.float32)])
    shard = -(-len(flat) // world) if len(flat) else 1
    padded = np.concatenate([flat, np.zeros(shard * world - len(flat), np.float32)])
    covered = [np.zeros(n, np.int32) for n in sizes]
    for rank in range(world):
        layout = ShardLayout(sizes, world, rank)
        assert layout.shard_size == shard and layout.padded == shard * world
        own = padded[rank * shard : (rank + 1) * shard]
        # every piece is the part of the worker's shard at its offset
        for piece, values in zip(layout.pieces, layout.take_pieces(arrays)):
            assert np.array_equal(values, own[piece.offset : piece.offset + piece.size])
            assert np.array_equal(values, arrays[piece.index][piece.start : piece.stop])
            covered[piece.index][piece.start : piece.stop] += 1
        # the pieces are the whole real part of the shard, in order, without gaps
        offsets = [p.offset for p in layout.pieces]
        assert offsets == sorted(offsets)
        assert layout.owned == max(0, min(len(flat), (rank + 1) * shard) - rank * shard)
        assert np.array_equal(layout.flatten(arrays), padded)
        assert len({p.index for p in layout.pieces}) == len(layout.pieces)  # one piece per weight
    # every element of every weight belongs to exactly one worker
    for c in covered:
        assert (c == 1).all()
    # merged back in rank order, the pieces are the weights
    by_rank = []
    names = [f"w{i}" for i in range(len(sizes))]
    for rank in range(world):
        layout = ShardLayout(sizes, world, rank)
        by_rank.append({names[p.index]: v for p, v in zip(layout.pieces, layout.take_pieces(arrays))})
    merged = merge_pieces(by_rank, {n: (s,) for n, s in zip(names, sizes) if s})
    for n, a in zip(names, arrays):
        if a.size:
            assert np.array_equal(merged[n], a)


@pytest.mark.parametrize(
    "sizes, world",
    [
        ([96, 16, 64, 4], 2),  # the distributed tests' MLP: a piece boundary inside a weight
        ([96, 16, 64, 4], 3),
        ([10], 4),  # one weight cut by every worker
        ([3, 2], 8),  # fewer elements than workers: some shards are padding only
        ([5, 0, 7], 2),  # an empty weight has no piece
        ([8, 8], 2),  # a boundary exactly between weights: every piece whole
    ],
)
def test_layout_examples(sizes, world):
    _check_layout(sizes, world)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=7), st.integers(1, 9))
def test_layout_properties(sizes, world):
    _check_layout(sizes, world)


def test_boundary_pieces():
    # 180 elements over 2 workers: rank 0 owns [0, 90), rank 1 [90, 180)
    r0, r1 = ShardLayout([96, 16, 64, 4], 2, 0), ShardLayout([96, 16, 64, 4], 2, 1)
    assert [tuple(p) for p in r0.pieces] == [(0, 0, 90, 0)]
    assert [tuple(p) for p in r1.pieces] == [(0, 90, 96, 0), (1, 0, 16, 6), (2, 0, 64, 22), (3, 0, 4, 86)]
    assert not r0.whole(r0.pieces[0]) and [r1.whole(p) for p in r1.pieces] == [False, True, True, True]


def test_merge_refuses_missing_ranks():
    layout = ShardLayout([10], 2, 0)
    only_rank0 = [{"w": layout.take_pieces([np.arange(10.0)])[0]}]
    with pytest.raises(ValueError, match="'w' hold 5 elements over 1 workers; the weight has 10"):
        merge_pieces(only_rank0, {"w": (10,)})


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank must be in"):
        ShardLayout([4], 2, 2)
    with pytest.raises(ValueError, match="expected 1 arrays of sizes"):
        ShardLayout([4], 2, 0).take_pieces([np.zeros(3)])


# ---------------------------------------------------------------------- whole-tensor layout (LAMB, LARS)


def _least_largest_run(sizes, world):
    """Brute force: the least largest run over every way of cutting ``sizes`` into ``world``
    contiguous runs (cut positions non-decreasing, empty runs allowed)."""
    n = len(sizes)
    best = None
    for cuts in itertools.combinations_with_replacement(range(n + 1), world - 1):
        bounds = (0,) + cuts + (n,)
        largest = max(sum(sizes[a:b]) for a, b in zip(bounds, bounds[1:]))
        best = largest if best is None else min(best, largest)
    return best


def _check_whole_layout(sizes, world):
    arrays = _arrays(sizes)
    layouts = [ShardLayout(sizes, world, rank, whole_tensors=True) for rank in range(world)]
    shard = layouts[0].shard_size
    assert shard == max(1, _least_largest_run(sizes, world))
    owner = {}
    blocks = []
    for rank, layout in enumerate(layouts):
        assert (layout.shard_size, layout.padded, layout.offsets) == (shard, shard * world, layouts[0].offsets)
        assert (layout.start, layout.stop) == (rank * shard, (rank + 1) * shard)
        # every piece is a whole weight, packed from the start of the worker's block
        at = 0
        for piece in layout.pieces:
            assert layout.whole(piece) and (piece.start, piece.stop) == (0, sizes[piece.index])
            assert piece.offset == at
            at += piece.size
            owner[piece.index] = rank
        assert layout.owned == at <= shard
        blocks.append(np.concatenate([arrays[p.index] for p in layout.pieces] + [np.zeros(shard - at, np.float32)]))
    # every non-empty weight belongs to one worker, and the workers' runs are contiguous, in order
    assert sorted(owner) == [i for i, n in enumerate(sizes) if n]
    assert [owner[i] for i in sorted(owner)] == sorted(owner.values())
    # the padded flat vector is the blocks, in rank order
    for layout in layouts:
        assert np.array_equal(layout.flatten(arrays), np.concatenate(blocks))
    names = [f"w{i}" for i in range(len(sizes))]
    by_rank = [{names[p.index]: v for p, v in zip(lay.pieces, lay.take_pieces(arrays))} for lay in layouts]
    merged = merge_pieces(by_rank, {n: (s,) for n, s in zip(names, sizes) if s})
    for n, a in zip(names, arrays):
        if a.size:
            assert np.array_equal(merged[n], a)


@pytest.mark.parametrize(
    "sizes, world",
    [
        ([96, 16, 64, 4], 2),  # the distributed tests' MLP: [96] | [16, 64, 4] + 12 zeros
        ([96, 16, 64, 4], 3),
        ([10], 4),  # one weight: one worker holds it, the others padding only
        ([3, 2], 8),
        ([5, 0, 7], 2),
        ([1, 1, 1, 1, 100], 2),  # the largest weight sets the shard size
    ],
)
def test_whole_tensor_layout_examples(sizes, world):
    _check_whole_layout(sizes, world)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=7), st.integers(1, 6))
def test_whole_tensor_layout_properties(sizes, world):
    _check_whole_layout(sizes, world)


def test_whole_tensor_layout_of_the_mlp():
    r0, r1 = (ShardLayout([96, 16, 64, 4], 2, r, whole_tensors=True) for r in (0, 1))
    assert r0.shard_size == 96 and r0.offsets == (0, 96, 112, 176)
    assert [tuple(p) for p in r0.pieces] == [(0, 0, 96, 0)]
    assert [tuple(p) for p in r1.pieces] == [(1, 0, 16, 0), (2, 0, 64, 16), (3, 0, 4, 80)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=7), st.integers(1, 6))
def test_flat_layout_is_the_default_and_unchanged(sizes, world):
    """The flat layout (the format of existing checkpoints): offsets the running sum, as before."""
    for rank in range(world):
        default, flat = ShardLayout(sizes, world, rank), ShardLayout(sizes, world, rank, whole_tensors=False)
        assert default.offsets == flat.offsets == tuple(int(o) for o in np.cumsum([0] + sizes)[:-1])
        assert default.pieces == flat.pieces and default.shard_size == flat.shard_size
