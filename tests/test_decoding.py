"""Decoding: one Viterbi serves the CRF and the IOB2-constrained best path of taggers without one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taggers.decoding import ConstrainedCRF, compact, iob2_penalties, viterbi

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_constrained_viterbi_known_answer():
    """The argmax path O I-PER I-PER breaks IOB2; the best valid path turns the first I-PER into B-PER."""
    probs = np.array([[[0.8, 0.1, 0.1, 0.0, 0.0],
                       [0.1, 0.3, 0.6, 0.0, 0.0],
                       [0.1, 0.1, 0.8, 0.0, 0.0]]], dtype=np.float32)
    transitions, start = iob2_penalties(LABELS)
    path = viterbi(torch.from_numpy(np.log(probs + 1e-9)), torch.ones((1, 3), dtype=torch.bool), transitions, start)
    assert path.tolist() == [[0, 1, 2]]


def test_viterbi_start_penalty_and_masked_tail():
    """An I- tag cannot start a row; positions past a row's length repeat its last tag."""
    scores = np.log(np.array([[[0.1, 0.2, 0.7, 0.0, 0.0], [0.1, 0.1, 0.8, 0.0, 0.0], [1, 0, 0, 0, 0]]],
                             dtype=np.float32) + 1e-9)
    transitions, start = iob2_penalties(LABELS)
    path = viterbi(torch.from_numpy(scores), torch.tensor([[True, True, False]]), transitions, start)
    assert path.tolist() == [[1, 2, 2]]


def test_viterbi_equals_pytorch_crf_decode():
    """On a CRF with trained-looking (random) transitions: the same paths as pytorch-crf's own decode."""
    torch.manual_seed(0)
    crf = ConstrainedCRF(LABELS)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_(0, 2.0)
    emissions = torch.randn(64, 12, len(LABELS)) * 3
    lengths = torch.randint(1, 13, (64,))
    mask = torch.arange(12)[None] < lengths[:, None]
    theirs = crf.decode(emissions, mask=mask)
    ours = viterbi(emissions, mask, crf.transitions, crf.start_transitions, crf.end_transitions)
    assert [ours[b, :n].tolist() for b, n in enumerate(lengths.tolist())] == theirs


def test_crf_tagger_decode_scatters_paths_to_scored_pieces():
    """``TaggerBase.decode`` with a CRF: each row's Viterbi path lands on its scored pieces in order; the
    unscored pieces keep their argmax."""
    from taggers.models import BiLSTMTagger

    torch.manual_seed(0)
    model = BiLSTMTagger(LABELS, vocab_size=50, embedding_dim=8, lstm_hidden=8, lstm_layers=1, use_casing=False,
                         use_crf=True, dropout=0.0).eval()
    with torch.no_grad():
        for p in model.crf.parameters():
            p.normal_(0, 2.0)
    logits = torch.randn(3, 7, len(LABELS)) * 3
    scored = torch.tensor([[0, 1, 1, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    pred, prob = model.decode({"scored": scored}, {"logits": logits})
    for r in range(3):
        cols = scored[r].nonzero().flatten()
        if len(cols):
            assert pred[r, cols].tolist() == model.crf.decode(logits[r:r + 1, cols])[0]
        other = ~scored[r]
        assert torch.equal(pred[r, other], logits[r, other].argmax(-1))
    assert torch.allclose(prob, logits.softmax(-1).gather(-1, pred[..., None]).squeeze(-1))


def test_compact_moves_true_positions_left():
    order, valid = compact(torch.tensor([[False, True, False, True], [True, False, False, False]]))
    assert order[0, :2].tolist() == [1, 3] and order[1, :1].tolist() == [0]
    assert valid.tolist() == [[True, True], [True, False]]


def test_crf_marginals_equal_brute_force():
    """Forward-backward marginals equal the sum over every tag path, weighted by its CRF score, for rows of
    several lengths."""
    import itertools

    from taggers.decoding import crf_marginals

    torch.manual_seed(1)
    c, steps = 3, 4
    transitions, start, end = torch.randn(c, c), torch.randn(c), torch.randn(c)
    emissions = torch.randn(3, steps, c)
    lengths = [4, 2, 1]
    mask = torch.arange(steps)[None] < torch.tensor(lengths)[:, None]
    got = crf_marginals(emissions, mask, transitions, start, end)
    for b, n in enumerate(lengths):
        expected = torch.zeros(n, c)
        for path in itertools.product(range(c), repeat=n):
            s = start[path[0]] + end[path[-1]] + sum(emissions[b, t, path[t]] for t in range(n))
            s = s + sum(transitions[path[t - 1], path[t]] for t in range(1, n))
            for t, tag in enumerate(path):
                expected[t, tag] += s.exp()
        assert torch.allclose(got[b, :n], expected / expected[0].sum(), atol=1e-5)


def test_crf_tagger_teaches_its_marginals():
    """A CRF tagger's piece distributions are its marginals on scored pieces (each sums to 1), the softmax
    elsewhere; a tagger without a CRF teaches its softmax."""
    from taggers.decoding import crf_marginals
    from taggers.models import BiLSTMTagger

    torch.manual_seed(0)
    kw = dict(vocab_size=50, embedding_dim=8, lstm_hidden=8, lstm_layers=1, use_casing=False, dropout=0.0)
    crf_model, plain = BiLSTMTagger(LABELS, use_crf=True, **kw), BiLSTMTagger(LABELS, **kw)
    logits = torch.randn(2, 6, len(LABELS)) * 3
    scored = torch.tensor([[0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    got = crf_model.piece_distributions({"scored": scored}, {"logits": logits})
    cols = scored[0].nonzero().flatten()
    c = crf_model.crf
    expected = crf_marginals(logits[:1, cols], torch.ones(1, len(cols), dtype=torch.bool), c.transitions,
                             c.start_transitions, c.end_transitions)[0]
    assert torch.allclose(got[0, cols], expected, atol=1e-6)
    assert torch.allclose(got[0, cols].sum(-1), torch.ones(len(cols)), atol=1e-5)
    assert torch.allclose(got[1], logits[1].softmax(-1)) and torch.allclose(got[0, 0], logits[0, 0].softmax(-1))
    assert torch.equal(plain.piece_distributions({"scored": scored}, {"logits": logits}), logits.softmax(-1))


def _random_crf_rows(seed, rows=16, steps=20, scale=3.0):
    torch.manual_seed(seed)
    crf = ConstrainedCRF(LABELS)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_(0, 2.0)
    lengths = torch.randint(1, steps + 1, (rows,))
    lengths[0] = steps
    mask = torch.arange(steps)[None] < lengths[:, None]
    emissions = (torch.randn(rows, steps, len(LABELS)) * scale).requires_grad_()
    # gold paths that IOB2 allows and paths that it forbids (their likelihood is about -10000)
    tags = torch.randint(0, len(LABELS), (rows, steps))
    return crf, emissions, tags, mask


def test_crf_log_likelihood_and_gradients_equal_pytorch_crf():
    """The CRF's log-likelihood (scaled forward-backward) and its gradients for emissions and every
    transition score are pytorch-crf's, on rows of several lengths and under the IOB2 penalties."""
    from torchcrf import CRF

    crf, emissions, tags, mask = _random_crf_rows(0)
    ours = crf(emissions, tags, mask)
    theirs = CRF.forward(crf, emissions, tags, mask=mask, reduction="none")
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-3)
    params = [emissions, *crf.parameters()]
    for g_ours, g_theirs in zip(torch.autograd.grad(ours.sum(), params), torch.autograd.grad(theirs.sum(), params)):
        assert torch.allclose(g_ours, g_theirs, atol=1e-4)


def test_crf_log_partition_gradcheck_and_large_emissions():
    """The hand-written gradient passes autograd's numerical check; emissions 100x the usual size still give
    a finite likelihood equal to pytorch-crf's (the scaled recursion neither underflows nor overflows)."""
    from taggers.decoding import _LogPartition
    from torchcrf import CRF

    torch.manual_seed(2)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    args = [torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64),
            torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda e, t, s, x: _LogPartition.apply(e, mask, t, s, x), args)
    crf, emissions, tags, mask = _random_crf_rows(3, scale=300.0)
    ours = crf(emissions, tags, mask)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, CRF.forward(crf, emissions, tags, mask=mask, reduction="none"), rtol=1e-5)


def viterbi_reference(scores, mask, transitions, start, end=None) -> np.ndarray:
    """The previous numpy Viterbi (vectorised backtrace), kept as the reference of the tensor one."""
    as_np = (lambda x: x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
    scores, mask, transitions, start = map(as_np, (scores, mask, transitions, start))
    n, steps, c = scores.shape
    score = scores[:, 0] + start
    ident = np.broadcast_to(np.arange(c), (n, c))
    history = np.empty((n, steps, c), dtype=np.int64)
    history[:, 0] = ident
    for t in range(1, steps):
        cand = score[:, :, None] + transitions[None]
        idx = cand.argmax(1)
        best = np.take_along_axis(cand, idx[:, None, :], 1)[:, 0]
        m = mask[:, t, None]
        score = np.where(m, best + scores[:, t], score)
        history[:, t] = np.where(m, idx, ident)
    if end is not None:
        score = score + as_np(end)
    last = score.argmax(-1)
    path = np.empty((n, steps), dtype=np.int64)
    path[:, -1] = last
    for t in range(steps - 1, 0, -1):
        last = history[np.arange(n), t, last]
        path[:, t - 1] = last
    return path


BIO9 = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]


def test_tensor_viterbi_equals_the_numpy_reference_on_random_batches():
    """Every path, ties included (scores rounded to a coarse grid make ties common): the lowest tag wins in
    both."""
    rng = np.random.default_rng(0)
    transitions, start = iob2_penalties(BIO9)
    for trial in range(30):
        n, steps = int(rng.integers(1, 40)), int(rng.integers(1, 30))
        scores = rng.normal(0, 3, (n, steps, len(BIO9))).astype(np.float32)
        if trial % 3 == 0:
            scores = np.round(scores)
        mask = np.arange(steps)[None] < rng.integers(0, steps + 1, n)[:, None]
        trans = transitions + torch.from_numpy(rng.normal(0, 1, transitions.shape).astype(np.float32))
        end = torch.from_numpy(rng.normal(0, 1, len(BIO9)).astype(np.float32)) if trial % 2 else None
        got = viterbi(torch.from_numpy(scores), torch.from_numpy(mask), trans, start, end)
        assert got.dtype == torch.int64
        assert np.array_equal(got.numpy(), viterbi_reference(scores, mask, trans, start, end))


@pytest.mark.parametrize("use_crf", [True, False], ids=["crf", "constrained-softmax"])
def test_decode_of_all_rows_at_full_width_equals_the_picked_rows(use_crf):
    """The device path (every row at full width, no sync) gives the same predictions as the CPU one (only
    the rows that need it, compacted), and both equal a per-row decode with the numpy reference."""
    from taggers.models import BiLSTMTagger

    torch.manual_seed(4)
    model = BiLSTMTagger(BIO9, vocab_size=50, embedding_dim=8, lstm_hidden=8, lstm_layers=1, use_casing=False,
                         use_crf=use_crf, dropout=0.0).eval()
    if use_crf:
        with torch.no_grad():
            for p in model.crf.parameters():
                p.normal_(0, 2.0)
    logits = torch.randn(40, 24, len(BIO9)) * 3
    scored = torch.rand(40, 24) < 0.6
    scored[:3] = False  # rows without a scored piece
    outputs, batch = {"logits": logits}, {"scored": scored}
    picked, p1 = model.decode(batch, outputs, all_rows=False)
    full, p2 = model.decode(batch, outputs, all_rows=True)
    assert torch.equal(picked, full) and torch.equal(p1, p2)
    for r in range(40):
        cols = scored[r].nonzero().flatten()
        if not len(cols):
            assert torch.equal(full[r], logits[r].argmax(-1))
            continue
        em = logits[r:r + 1, cols]
        if use_crf:
            c = model.crf
            want = viterbi_reference(em, np.ones((1, len(cols)), bool), c.transitions, c.start_transitions,
                                     c.end_transitions)
        else:
            want = viterbi_reference(em.log_softmax(-1), np.ones((1, len(cols)), bool), model.transition_penalty,
                                     model.start_penalty)
        assert full[r, cols].tolist() == want[0].tolist()


@pytest.mark.parametrize("steps, scale", [(1, 3.0), (2, 3.0), (33, 3.0), (128, 3.0), (20, 300.0)])
def test_log_partition_scan_equals_the_lattice_in_float64(steps, scale):
    """The pairwise product over positions (the CRF's log Z off the CPU) gives the same log Z and the same
    gradients (emissions, transitions, start, end) as the per-position forward-backward, in float64; rows of
    every length, IOB2 penalties, and emissions 100x the usual size."""
    from taggers.decoding import _LogPartition, log_partition_scan

    torch.manual_seed(steps)
    crf = ConstrainedCRF(BIO9).double()
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_(0, 2.0)
    rows = 12
    lengths = torch.randint(1, steps + 1, (rows,))
    lengths[0] = steps
    mask = torch.arange(steps)[None] < lengths[:, None]
    emissions = (torch.randn(rows, steps, len(BIO9), dtype=torch.float64) * scale).requires_grad_()
    args = (crf.transitions, crf.start_transitions, crf.end_transitions)
    ref = _LogPartition.apply(emissions, mask, *args)
    got = log_partition_scan(emissions, mask, *args)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-9)
    params = [emissions, *crf.parameters()]
    weights = torch.randn(rows, dtype=torch.float64)  # rows weighted differently: each row's gradient counts
    g_ref = torch.autograd.grad((ref * weights).sum(), params, allow_unused=True)
    g_got = torch.autograd.grad((got * weights).sum(), params, allow_unused=True)
    for a, b in zip(g_ref, g_got):
        b = torch.zeros_like(a) if b is None else b  # one position: no transition is used
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_batches_fed_ahead_arrive_in_order_with_host_lengths_off_the_cpu():
    """``on_device_ahead`` yields every batch once, in order; on the CPU the tensors are the same objects (nothing
    changes there); for another device each batch carries its rows' lengths from the host copy of the mask
    (checked with the meta device, which stands in for a GPU)."""
    from taggers.predict import on_device_ahead

    batches = [{"attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]), "input_ids": torch.full((2, 3), i)}
               for i in range(5)]
    got = list(on_device_ahead(iter(batches), torch.device("cpu")))
    assert len(got) == 5 and all(g["input_ids"] is b["input_ids"] and set(g) == set(b) for g, b in zip(got, batches))
    meta = list(on_device_ahead(iter(batches), torch.device("meta")))
    assert [m["input_ids"].device.type for m in meta] == ["meta"] * 5
    assert all(m["host_lengths"].tolist() == [2, 1] and m["host_lengths"].device.type == "cpu" for m in meta)


def test_bilstm_packs_by_host_lengths_when_given():
    from taggers.models import BiLSTMTagger

    torch.manual_seed(0)
    model = BiLSTMTagger(LABELS, vocab_size=50, embedding_dim=8, lstm_hidden=8, lstm_layers=1, use_casing=False,
                         dropout=0.0).eval()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    batch = {"input_ids": torch.randint(1, 50, (2, 4)) * mask, "attention_mask": mask}
    with torch.no_grad():
        want = model.features(batch)
        got = model.features({**batch, "host_lengths": mask.sum(1)})
    assert torch.equal(got, want)


@pytest.mark.parametrize("use_crf", [True, False], ids=["crf", "cross-entropy"])
@pytest.mark.parametrize("taught", [False, True], ids=["gold", "gold+teacher"])
def test_loss_without_sync_equals_the_loss(use_crf, taught):
    """The GPU's loss (no count read on the host: full width, masked sums) has the CPU's value and gradients:
    gold labels with ignored pieces and a row without any, with and without teacher distributions."""
    from common.encoding import IGNORE_INDEX
    from taggers.models import BiLSTMTagger

    torch.manual_seed(5)
    model = BiLSTMTagger(BIO9, vocab_size=50, embedding_dim=8, lstm_hidden=8, lstm_layers=1, use_casing=False,
                         use_crf=use_crf, dropout=0.0)
    logits = (torch.randn(6, 10, len(BIO9)) * 3).requires_grad_()
    labels = torch.randint(0, len(BIO9), (6, 10))
    labels[torch.rand(6, 10) < 0.3] = IGNORE_INDEX
    labels[2] = IGNORE_INDEX
    batch = {"labels": labels}
    if taught:
        soft = torch.rand(6, 10, len(BIO9)).softmax(-1) * (torch.rand(6, 10, 1) < 0.5)
        batch["soft_labels"] = soft
    want = model.loss(logits, batch)
    got = model._loss_without_sync(logits, labels, batch.get("soft_labels"))
    assert torch.allclose(got, want, rtol=1e-6)
    params = [logits, *model.crf.parameters()] if use_crf else [logits]
    for a, b in zip(torch.autograd.grad(want, params), torch.autograd.grad(got, params)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
