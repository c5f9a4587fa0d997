# THROWAWAY measurement script (worker 3, issue 3): CE quality of a digits diffusion model.
# Samples CEs with cejobs.sampler.sample_ce for the first N digits test sources x (10 targets x
# per_class) and reports the fraction of different-class CEs that each classifier assigns to the
# target, plus same-class accuracy and mean L2. Usage: python .w3_ce_quality.py OUT.json DIFF.pt CLF.pt...
import json, sys, time
import torch
from cejobs.data import load_dataset
from cejobs.models.checkpoint import load_checkpoint
from cejobs.sampler import sample_ce, to_image_space, to_model_space

out, diff_path, clf_paths = sys.argv[1], sys.argv[2], sys.argv[3:]
n_src = int(__import__("os").environ.get("W3_SOURCES", "20"))
steps = int(__import__("os").environ.get("W3_STEPS", "1000"))
methods = __import__("os").environ.get("W3_METHODS", "boltzmann,boltzmann-exact,gaussian").split(",")
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
net = load_checkpoint(diff_path, expect_kind="diffusion", map_location=device).model
clfs = {p.split("/")[-1]: load_checkpoint(p, expect_kind="classifier", map_location=device).model for p in clf_paths}
test = load_dataset("digits", split="test")
x = test.images(range(n_src)).to(device)
y = torch.as_tensor(test.labels[:n_src], device=device)
per_class = 2
target = torch.arange(10, device=device).repeat_interleave(per_class).repeat(n_src)  # (n_src*20,)
src = torch.arange(n_src, device=device).repeat_interleave(10 * per_class)
mu = to_model_space(x[src])
results = {"diffusion": diff_path, "sources": n_src, "per_class": per_class, "steps": steps, "device": str(device), "methods": {}}
for method in methods:
    g = torch.Generator(device).manual_seed(0)
    latents = torch.randn(mu.shape, generator=g, device=device)
    t0 = time.perf_counter()
    m = sample_ce(net, latents, mu, target, method=method, w=15.0, sigma_ce=0.2, steps=steps,
                  randn_like=lambda i, z: torch.randn(z.shape, generator=g, device=z.device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    ce = to_image_space(m)
    diff = target != y[src]
    l2 = (ce - x[src]).flatten(1).norm(dim=1)
    r = {"seconds": secs, "ces": len(target), "l2_diff_mean": float(l2[diff].mean()), "l2_same_mean": float(l2[~diff].mean()), "classifiers": {}}
    for name, clf in clfs.items():
        with torch.no_grad():
            pred = clf(ce).argmax(1)
            src_pred = clf(x).argmax(1)
        hit = pred == target
        r["classifiers"][name] = {"diff_class_target_acc": float(hit[diff].float().mean()), "same_class_acc": float(hit[~diff].float().mean()),
                                  "source_clean_acc": float((src_pred == y).float().mean())}
    results["methods"][method] = r
    print(method, json.dumps(r), flush=True)
json.dump(results, open(out, "w"), indent=1)
