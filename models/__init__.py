"""Model registry: a name -> class dict, and create_model() which builds a model from a name and optional weights."""
from __future__ import annotations

from torch import nn

from models.checkpoint import WIDTH_KEYS, fit_state_dict, infer_config, load_state_dict
from models.unet import REFERENCE_WIDTH as UNET_WIDTH
from models.unet import UNet
from models.unetpp import REFERENCE_WIDTH, NestedUNet
from utils.errors import SampleError

MODELS = {"unet": UNet, "unet++": NestedUNet}
# The widest network built (--base_width's limit, a checkpoint's too): n1 = 256 is 496 M parameters (UNet) to 586 M
# (UNet++), so a tiny file claiming more would otherwise allocate far past memory before its weights are checked.
MAX_WIDTH = 256
ALIASES = {"unetpp": "unet++", "nested_unet": "unet++", "nestedunet": "unet++", "unet_plus_plus": "unet++"}


def canonical_name(name: str) -> str:
    """Map a --model_name (any case, any alias) to a key of MODELS; KeyError lists the valid names."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in MODELS:
        valid = ", ".join(list(MODELS) + list(ALIASES))
        raise KeyError(f"unknown model {name!r}; valid names: {valid}")
    return key


def build(name: str, n_channels: int = 3, n_classes: int = 2, bilinear: bool = False,
          deep_supervision: bool = False, base_width: int = REFERENCE_WIDTH) -> nn.Module:
    """Instantiate a registered architecture with random weights."""
    key = canonical_name(name)
    if key == "unet":
        return UNet(n_channels, n_classes, bilinear=bilinear, base_width=base_width)
    return NestedUNet(n_classes, input_channels=n_channels, deep_supervision=deep_supervision, base_width=base_width)


def variant(name: str, config: dict) -> str:
    """A short name for the network built: 'UNet (transposed-conv up)', 'NestedUNet n1=64 (reference)', ..."""
    if canonical_name(name) == "unet":
        width = config.get("base_width", UNET_WIDTH)
        narrow = "" if width == UNET_WIDTH else f", width {width}, not Pytorch-UNet's {UNET_WIDTH}"
        up = "bilinear up" if config.get("bilinear") else "transposed-conv up"
        return f"UNet (Pytorch-UNet, {up}{narrow})"
    width = config.get("base_width", REFERENCE_WIDTH)
    if width == REFERENCE_WIDTH and not config.get("deep_supervision"):
        what = "the seed's reference"
    else:
        what = "the reference width" if width == REFERENCE_WIDTH else "not the reference width 64"
    heads = ", deep-supervision heads (final4 used)" if config.get("deep_supervision") else ""
    return f"NestedUNet n1={width} ({what}{heads})"


def create_model(name: str, checkpoint: str | None = None, n_channels: int | None = None,
                 n_classes: int | None = None, bilinear: bool | None = None,
                 base_width: int | None = None) -> tuple[nn.Module, dict]:
    """Build `name` in eval mode on the CPU in fp32, with weights from `checkpoint` or random (seeded by the caller).

    Arguments left as None are inferred from the checkpoint's tensor shapes (or default to 3 channels, 2 classes,
    transposed-convolution upsampling). Returns the model and a dict describing where its weights came from.
    """
    key = canonical_name(name)
    state, info = ({}, {"weights": "random"}) if checkpoint is None else load_state_dict(checkpoint)
    config = infer_config(key, state) if state else {}
    first = WIDTH_KEYS[key]
    if config.get("base_width", 0) > MAX_WIDTH:  # refused before a network that size is allocated
        raise SampleError(f"{checkpoint}: its {first} has {config['base_width']} filters, past the widest network "
                          f"this sample builds ({MAX_WIDTH}, --base_width's limit); is it a UNet checkpoint at all?")
    if base_width is not None and config.get("base_width", base_width) != base_width:
        raise SampleError(f"--base_width {base_width} does not match {checkpoint}: its {first} has "
                          f"{config['base_width']} filters; drop --base_width (it is read from the checkpoint)")
    for field, value in (("n_channels", n_channels), ("n_classes", n_classes), ("bilinear", bilinear),
                         ("base_width", base_width)):
        if value is not None:
            config[field] = value
    config.setdefault("n_channels", 3)
    config.setdefault("n_classes", 2)
    config.setdefault("base_width", UNET_WIDTH if key == "unet" else REFERENCE_WIDTH)
    if key == "unet":
        config.pop("deep_supervision", None)
    else:
        config.pop("bilinear", None)
    model = build(key, **config)
    if state:
        fit_state_dict(model, key, state, checkpoint)
    info.update(config)
    info["variant"] = variant(key, config)
    info["parameters"] = sum(p.numel() for p in model.parameters())
    return model.eval(), info
