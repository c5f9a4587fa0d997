# THROWAWAY (worker 3): WRN-40-2 training-iteration timings at batch 128 (standard and L2 PGD-8).
import time, torch
import torch.nn.functional as F
from cejobs.models import WideResNet, WRN_PRESETS, UNet, UNET_PRESETS
from cejobs.train.classifier import pgd_l2
dev = torch.device("cuda")
def timeit(fn, n=10):
    for _ in range(3): fn()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n
for name, shape in [("wrn-40-2", (3, 32, 32)), ("digits", (1, 8, 8))]:
    for cl in (False, True):
        torch.manual_seed(0)
        m = WideResNet(**WRN_PRESETS[name]).to(dev)
        mf = torch.channels_last if cl else torch.contiguous_format
        m = m.to(memory_format=mf)
        opt = torch.optim.Adam(m.parameters(), 1e-3)
        x = torch.rand(128, *shape, device=dev).contiguous(memory_format=mf); y = torch.randint(0, 10, (128,), device=dev)
        def step(adv):
            xx = pgd_l2(m, x, y, 1.0, 8) if adv else x
            m.train(); loss = F.cross_entropy(m(xx), y); opt.zero_grad(); loss.backward(); opt.step()
        print(f"{name} channels_last={cl} batch 128: standard {1e3*timeit(lambda: step(False)):.1f} ms/it, PGD-8 {1e3*timeit(lambda: step(True)):.1f} ms/it", flush=True)
for cl in (False, True):
    torch.manual_seed(0)
    u = UNet(**UNET_PRESETS["digits"]).to(dev); mf = torch.channels_last if cl else torch.contiguous_format; u = u.to(memory_format=mf)
    opt = torch.optim.Adam(u.parameters(), 5e-4)
    x = torch.randn(128, 1, 8, 8, device=dev); t = torch.rand(128, device=dev); y = torch.randint(0, 11, (128,), device=dev)
    def ustep():
        loss = (u(x, t, y) - x).square().mean(); opt.zero_grad(); loss.backward(); opt.step()
    print(f"unet digits channels_last={cl} batch 128: {1e3*timeit(ustep):.1f} ms/it", flush=True)
