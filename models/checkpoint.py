"""Checkpoint loading: unwrap, clean and check state dicts without ever executing pickled code."""
from __future__ import annotations

import os
import pickle
import zipfile

import torch
from torch import nn

from utils.errors import SampleError, first_line

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
PREFIXES = ("module.", "_orig_mod.")
# Keys that tell the two architectures apart, used to suggest the right --model_name.
SIGNATURES = {"unet": ("inc.", "down1.", "outc."), "unet++": ("conv0_0.", "conv4_0.", "conv0_4.")}


def clean_state_dict(state: dict) -> dict:
    """Strip DataParallel's `module.` and torch.compile's `_orig_mod.` prefixes (nested ones too)."""
    cleaned = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def _torch_load(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SampleError(
            f"{path}: refused to unpickle it: it holds Python objects, not only tensors (probably a whole "
            f"model saved with torch.save(model)). Loading it would run code from the file. Re-save its weights "
            f"with torch.save(model.state_dict(), 'weights.pth') and pass that file. ({first_line(exc)})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise SampleError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)})") from None


def load_state_dict(path: str) -> tuple[dict, dict]:
    """Read a checkpoint safely (weights_only=True) and return (tensor state dict, info about the file).

    Accepts plain state dicts (Pytorch-UNet v3.0 release files), Pytorch-UNet train.py files (with their
    extra `mask_values` entry, popped and kept in the info) and `{"state_dict" | "model": ...}` wrappers.
    """
    if not os.path.isfile(path):
        raise SampleError(f"checkpoint not found: {path} (pass the .pth file with --pth, or omit --pth for random weights)")
    obj = _torch_load(path)
    info = {"weights": os.path.abspath(path)}
    for _ in range(2):  # a wrapper inside a wrapper happens (e.g. {"model": {"state_dict": ...}})
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, dict):
        raise SampleError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    obj = dict(obj)
    if "mask_values" in obj:
        info["mask_values"] = obj.pop("mask_values")
    extras = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if extras:
        raise SampleError(f"{path}: entries that are not tensors: {', '.join(extras[:5])}; expected a state dict")
    if not obj:
        raise SampleError(f"{path}: the checkpoint holds no tensors")
    return clean_state_dict(obj), info


def detect_architecture(state: dict) -> str | None:
    """Return the registry name whose signature keys the state dict carries, or None."""
    for name, prefixes in SIGNATURES.items():
        if all(any(k.startswith(p) for k in state) for p in prefixes):
            return name
    return None


def infer_config(name: str, state: dict) -> dict:
    """Read channel / class counts and the upsampling mode off the tensor shapes."""
    if detect_architecture(state) not in (None, name):
        return {}  # fit_state_dict reports the mismatch with a suggestion
    try:
        if name == "unet":
            return {
                "n_channels": state["inc.double_conv.0.weight"].shape[1],
                "n_classes": state["outc.conv.weight"].shape[0],
                "bilinear": "up1.up.weight" not in state,
            }
        head = "final4.weight" if "final4.weight" in state else "final.weight"
        return {
            "n_channels": state["conv0_0.conv1.weight"].shape[1],
            "n_classes": state[head].shape[0],
            "deep_supervision": head == "final4.weight",
        }
    except KeyError:
        return {}


def fit_state_dict(model: nn.Module, name: str, state: dict, path: str) -> None:
    """Load `state` into `model` with strict=True; on mismatch, say which keys differ and what to do."""
    found = detect_architecture(state)
    if found is not None and found != name:
        raise SampleError(
            f"{path} holds a {found} checkpoint, but --model_name is {name}; run with --model_name {found}"
        )
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:4])}{more}")
        hint = f"; this looks like a {found} checkpoint" if found else "; it matches neither unet nor unet++"
        raise SampleError(f"{path} does not fit {name}: " + "; ".join(parts) + hint)
    model.load_state_dict(state, strict=True)
