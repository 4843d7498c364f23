"""Checkpoint loading: unwrap, clean and check state dicts without ever executing pickled code."""
from __future__ import annotations

import os
import pickle
import warnings
import zipfile

import torch
from torch import nn

from utils.errors import SampleError
from utils.files import file_kind, open_regular

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
PREFIXES = ("module.", "_orig_mod.")
# Keys that tell the two architectures apart, used to suggest the right --model_name.
SIGNATURES = {"unet": ("inc.", "down1.", "outc."), "unet++": ("conv0_0.", "conv4_0.", "conv0_4.")}
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive holding <name>/data.pkl
LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # pickled first by torch.save(..., legacy format)
SIGNS = [(b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
         (b"\x1f\x8b", "gzip data"), (b"\x93NUMPY", "a NumPy .npy array"), (b"\x89HDF", "an HDF5 (Keras) file"),
         (b"\x7fELF", "a program (ELF)"), (b"\x80", "a Python pickle that torch.save did not write")]


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


def _looks_like(head: bytes) -> str:
    """What a file's first bytes say it is, in words."""
    for sign, name in SIGNS:
        if head.startswith(sign):
            return name
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30:
        return "a safetensors file (this sample reads torch.save state dicts)"
    try:
        text = head.decode("utf-8").lstrip()
    except UnicodeDecodeError:
        return "binary data of another format"
    return "JSON text" if text[:1] in ("{", "[") else "text"


def _sniff(path: str, f) -> str | None:
    """Why `path` cannot be a torch checkpoint, read off its first bytes (and a zip's member names), or None."""
    head = f.read(64)
    f.seek(0)
    if not head:
        return "the file is empty"
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(f) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            return f"a damaged or truncated zip archive: {exc}"
        finally:
            f.seek(0)
        if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
            return ("a TorchScript archive (torch.jit.save); pass the weights: "
                    "torch.save(model.state_dict(), 'weights.pth')")
        if not any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
            return f"a zip archive without torch's data.pkl (it holds {', '.join(names[:3]) or 'nothing'})"
        return None
    if head.startswith(b"\x80") and LEGACY_MAGIC in head[:32]:
        return None  # torch's legacy (pre-1.6) format: a pickle stream that starts with torch's magic number
    return f"it is {_looks_like(head)}"


def _torch_reason(exc: BaseException) -> str:
    """torch's own reason, without its advice: retrying with weights_only=False would run the file's code."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0].split(" Please ", 1)[0].split(". Please", 1)[0] if lines else ""
    if not reason or "weights_only" in reason or "trust" in reason:
        reason = ""
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def _torch_load(path: str):
    with open_regular(path, "checkpoint") as f:
        problem = _sniff(path, f)
        if problem:
            raise SampleError(f"{path}: not a PyTorch checkpoint ({problem})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's warnings about pickle protocols say nothing to act on
                return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            reason = _torch_reason(exc)
            if "Unsupported global" in reason or "Unsupported class" in reason:
                raise SampleError(
                    f"{path}: refused to unpickle it: it holds Python objects, not only tensors (probably a whole "
                    f"model saved with torch.save(model)), and loading those would run code from the file. Re-save "
                    f"its weights with torch.save(model.state_dict(), 'weights.pth') and pass that file. ({reason})"
                ) from None
            raise SampleError(f"{path}: not a PyTorch checkpoint (its pickle data is unreadable: {reason})") from None
        except Exception as exc:  # noqa: BLE001  a hostile file makes torch raise anything (KeyError, IndexError, ...)
            raise SampleError(f"{path}: not a PyTorch checkpoint, or a damaged one ({_torch_reason(exc)})") from None


def load_state_dict(path: str) -> tuple[dict, dict]:
    """Read a checkpoint safely (weights_only=True) and return (tensor state dict, info about the file).

    Accepts plain state dicts (Pytorch-UNet v3.0 release files), Pytorch-UNet train.py files (with their
    extra `mask_values` entry, popped and kept in the info) and `{"state_dict" | "model": ...}` wrappers.
    """
    if not os.path.exists(path):
        raise SampleError(f"checkpoint not found: {path} (pass the .pth file with --pth, "
                          "or omit --pth for random weights)")
    kind = file_kind(path)
    if kind:
        raise SampleError(f"{path}: not a PyTorch checkpoint ({kind}, not a regular file)")
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
    names = [repr(k) for k in obj if not isinstance(k, str)]
    if names:
        raise SampleError(f"{path}: not a state dict: entries named {', '.join(names[:5])} (names must be strings)")
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


# The tensor whose filter count is each network's base width (its first convolution's output channels).
WIDTH_KEYS = {"unet": "inc.double_conv.0.weight", "unet++": "conv0_0.conv1.weight"}


def infer_config(name: str, state: dict) -> dict:
    """Read channel / class counts, the base width and the upsampling mode (UNet) off the tensor shapes."""
    if detect_architecture(state) not in (None, name):
        return {}  # fit_state_dict reports the mismatch with a suggestion
    try:
        first = state[WIDTH_KEYS[name]].shape  # (base width, input channels, 3, 3)
        shapes = {"n_channels": first[1], "base_width": first[0]}
        if name == "unet":
            return {**shapes, "n_classes": state["outc.conv.weight"].shape[0], "bilinear": "up1.up.weight" not in state}
        head = "final4.weight" if "final4.weight" in state else "final.weight"
        return {**shapes, "n_classes": state[head].shape[0], "deep_supervision": head == "final4.weight"}
    except (KeyError, IndexError):  # a tensor of the wrong rank: fit_state_dict names the mismatch
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
