"""Networks (score U-Net, WideResNet) and the checkpoint format that carries their architecture."""

from cejobs.models.unet import UNET_PRESETS, UNet
from cejobs.models.wideresnet import WRN_PRESETS, WideResNet

# Architecture names, as recorded in checkpoints ("arch"), to classes. Nothing registers by import.
MODEL_CLASSES = {"unet": UNet, "wideresnet": WideResNet}

# Preset constructor arguments per architecture name.
MODEL_PRESETS = {"unet": UNET_PRESETS, "wideresnet": WRN_PRESETS}

__all__ = ["MODEL_CLASSES", "MODEL_PRESETS", "UNET_PRESETS", "UNet", "WRN_PRESETS", "WideResNet"]
