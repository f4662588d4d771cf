"""Dynamics checkpoints, and the one thing they take from the tokenizer: its codebook.

A checkpoint is a folder: `config.json` (format, architecture, grid, codebook
size, and the identity of the tokenizer whose codes it models) and
`model.safetensors`. Nothing is unpickled. The codebook is read straight from
the tokenizer's `model.safetensors` (its `codebook` tensor and `code_levels`, whatever the
quantizer), so no encoder or decoder is built.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from common.identity import file_identity
from dynamics.model import STTransformer
from dynamics.settings import STTransformerConfig

FORMAT = "stvideo-st-transformer"
FORMAT_VERSION = 1
# what a tokenizer checkpoint holds (`tokenizer.tokenizer`), named here so that training imports no
# tokenizer code
TOKENIZER_FORMAT = "stvideo-vqgan"
TOKENIZER_CODEBOOK_KEY = "codebook"


class DynamicsCheckpointError(Exception):
    """A checkpoint (or tokenizer codebook) that cannot be used; the message says why."""


def load_codebook(tokenizer_dir: str | Path) -> tuple[torch.Tensor, list[int] | None, str]:
    """The tokenizer's code vectors [K, D] as its decoder receives them, the levels of each code
    dimension (FSQ's, which the factorized head needs; None for a learned codebook) and the
    tokenizer's identity."""
    tokenizer_dir = Path(tokenizer_dir)
    config_path, weights = tokenizer_dir / "config.json", tokenizer_dir / "model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        raise DynamicsCheckpointError(f"{tokenizer_dir}: not a tokenizer checkpoint")
    config = json.loads(config_path.read_text())
    if config.get("format") != TOKENIZER_FORMAT:
        raise DynamicsCheckpointError(
            f"{config_path}: format {config.get('format')!r}, expected {TOKENIZER_FORMAT!r}"
        )
    try:
        with safe_open(str(weights), framework="pt") as tensors:
            if TOKENIZER_CODEBOOK_KEY in tensors.keys():
                codebook = tensors.get_tensor(TOKENIZER_CODEBOOK_KEY)
                return codebook, config.get("code_levels"), file_identity(weights)
            # written before the codebook was saved on its own: its quantizer's state gives it
            from tokenizer.model import make_quantizer
            from tokenizer.settings import VQGANConfig

            quantizer = make_quantizer(VQGANConfig(**config["model"]))
            prefix = "quantizer."
            names = [name for name in tensors.keys() if name.startswith(prefix)]
            quantizer.load_state_dict({name[len(prefix) :]: tensors.get_tensor(name) for name in names})
    except (SafetensorError, OSError, RuntimeError) as err:
        raise DynamicsCheckpointError(f"{weights}: unreadable ({err})") from None
    return quantizer.codebook.detach(), quantizer.code_levels, file_identity(weights)


def save_dynamics(
    model: STTransformer, path: str | Path, tokenizer_identity: str, extra: dict | None = None
) -> str:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, path / "model.safetensors.tmp", metadata={"format": FORMAT})
    (path / "model.safetensors.tmp").replace(path / "model.safetensors")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": asdict(model.config),
        "grid": list(model.grid),
        "codebook_size": model.codebook.shape[0],
        "code_dim": model.codebook.shape[1],
        "code_levels": model.levels,
        "tokenizer_identity": tokenizer_identity,
        **(extra or {}),
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return file_identity(path / "model.safetensors")


def load_dynamics(path: str | Path, map_location: str = "cpu") -> tuple[STTransformer, dict]:
    """The model and its config.json; refuses anything that is not one of our checkpoints."""
    path = Path(path)
    config_path, weights = path / "config.json", path / "model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        raise DynamicsCheckpointError(
            f"{path}: not a dynamics checkpoint (needs config.json and model.safetensors)"
        )
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise DynamicsCheckpointError(f"{config_path}: not a {FORMAT} v{FORMAT_VERSION} checkpoint")
    try:
        state = load_file(weights, device=map_location)
    except (SafetensorError, OSError) as err:
        raise DynamicsCheckpointError(f"{weights}: unreadable or truncated ({err})") from None
    # checkpoints written before rotary positions existed have learned ones and do not say so
    arch = STTransformerConfig(**{"temporal_positions": "learned", **config["model"]})
    model = STTransformer(
        arch,
        torch.zeros(config["codebook_size"], config["code_dim"]),
        tuple(config["grid"]),
        config.get("code_levels"),
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise DynamicsCheckpointError(
            f"{weights}: weights do not match config.json ({str(err)[:300]})"
        ) from None
    model.to(map_location).eval()
    return model, config
