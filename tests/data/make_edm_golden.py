"""Record EDM's reference outputs for tests/unit/models/test_edm.py (run once, by hand).

Needs NVlabs/edm's code importable (its `training/networks.py`, `torch_utils/`, `dnnlib/`);
cejobs does not ship it. docs/models.md, "EDM networks", gives the commands. Writes
OUT/edm_golden.safetensors (the file tests/data/ holds) and, for trying the converter by hand,
OUT/cond.pkl and OUT/uncond.pkl as EDM pickles them ({"ema": network}).

    python tests/data/make_edm_golden.py OUT EDM_COMMIT
"""

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from training.networks import VPPrecond  # EDM's


def build(label_dim, seed, channels, emb_mult):
    """A small DDPM++ VPPrecond with every parameter moved off EDM's (near-)zero init, so that
    each path of the network changes the output."""
    torch.manual_seed(seed)
    kwargs = dict(img_resolution=8, img_channels=3, label_dim=label_dim, use_fp16=False,
                  beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5, model_type="SongUNet",
                  augment_dim=9, model_channels=channels, channel_mult=[1, 2],
                  channel_mult_emb=emb_mult, num_blocks=1, attn_resolutions=[4], dropout=0.13,
                  label_dropout=0, embedding_type="positional", channel_mult_noise=1,
                  encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])
    net = VPPrecond(**kwargs).eval()
    with torch.no_grad():
        for p in net.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.add_(torch.randn_like(p) * (0.5 / np.sqrt(fan_in) if p.dim() > 1 else 0.1))
    assert dict(net.init_kwargs) == kwargs, net.init_kwargs
    return net, kwargs


def main(out_dir: Path, edm_commit: str) -> None:
    out, meta = {}, {"edm_commit": edm_commit}
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(6, 3, 8, 8, generator=gen)
    sigma = torch.tensor([0.02, 0.2, 1.0, 5.0, 40.0, 150.0])
    labels = torch.tensor([0, 3, 9, 10, 7, 10])  # 10: no class (a row of zeros)
    one_hot = torch.eye(11, 10)[labels]
    t = torch.tensor([1e-3, 0.05, 0.3, 0.6, 0.9, 1.0])
    out["inputs.x"], out["inputs.sigma"], out["inputs.labels"] = x, sigma, labels
    out["inputs.t"] = t
    for name, label_dim, seed, channels, emb_mult in (("cond", 10, 1, 8, 4),
                                                       ("uncond", 0, 2, 8, 2)):
        net, kwargs = build(label_dim, seed, channels, emb_mult)
        meta[f"{name}.init_kwargs"] = json.dumps(kwargs)
        for key, value in net.state_dict().items():
            out[f"{name}.weights.{key}"] = value.contiguous()
        class_labels = one_hot if label_dim else None
        with torch.no_grad():
            out[f"{name}.denoised"] = net(x * 3, sigma, class_labels)
            out[f"{name}.raw"] = net.model(x, 999 * t, class_labels=class_labels)
        with open(out_dir / f"{name}.pkl", "wb") as f:
            pickle.dump({"ema": net}, f)
    out["inputs.x_denoised"] = x * 3
    save_file(out, str(out_dir / "edm_golden.safetensors"), metadata=meta)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
