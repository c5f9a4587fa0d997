"""Counter-based noise: Philox4x32-10 known answers and per-CE independence of batching."""

import torch

from cejobs.method.noise import CENoise, ce_normals, philox4x32


def _words(*values):
    return tuple(torch.tensor([v], dtype=torch.int64) for v in values)


def test_philox_known_answers():
    # Random123 tests/kat_vectors, "philox4x32 10" lines: counter, key -> output
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, key, expected in cases:
        out = philox4x32(_words(*counter), key)
        assert tuple(int(w) for w in out) == expected


def test_normals_are_standard():
    n = 200
    z = ce_normals(3, torch.arange(n), torch.zeros(n, dtype=torch.long),
                   torch.zeros(n, dtype=torch.long), torch.arange(1, 41), 64)
    assert z.shape == (40, n, 64) and z.dtype == torch.float32
    flat = z.double().flatten()
    assert abs(flat.mean()) < 0.01  # 512000 samples: std of the mean is 0.0014
    assert abs(flat.std() - 1) < 0.01
    assert abs((flat**4).mean() - 3) < 0.05  # Gaussian kurtosis


def _hook(order, seed=11):
    src = torch.tensor([5, 5, 9, 9, 12, 40])[order]
    tgt = torch.tensor([0, 3, 0, 3, 7, 2])[order]
    rep = torch.tensor([0, 1, 1, 0, 0, 1])[order]
    return CENoise(seed, src, tgt, rep, chunk=4)


def test_noise_independent_of_batch_order_and_size():
    like = torch.empty(6, 3, 5, 5)
    ref = _hook(torch.arange(6))
    perm = torch.tensor([4, 2, 5, 0, 1, 3])
    shuffled = _hook(perm)
    for step in (0, 1, 5, 17):
        assert torch.equal(ref(step, like)[perm], shuffled(step, like))
    assert torch.equal(ref.latents(like)[perm], shuffled.latents(like))
    # a batch of two CEs of the six
    two = CENoise(11, torch.tensor([9, 40]), torch.tensor([3, 2]), torch.tensor([0, 1]), chunk=3)
    assert torch.equal(two(5, like[:2]), ref(5, like)[[3, 5]])


def test_noise_differs_across_steps_ces_and_seeds():
    like = torch.empty(6, 1, 8, 8)
    a, b = _hook(torch.arange(6)), _hook(torch.arange(6), seed=12)
    assert not torch.allclose(a(0, like), a(1, like))
    assert not torch.allclose(a(0, like), b(0, like))
    assert not torch.allclose(a.latents(like), a(0, like))
    z = a(3, like).flatten(1)
    assert torch.corrcoef(z).fill_diagonal_(0).abs().max() < 0.5
