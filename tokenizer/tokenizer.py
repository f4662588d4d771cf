"""`Tokenizer`: the trained VQGAN as later stages use it, saved and loaded without pickle.

A checkpoint is a folder: `config.json` (format, architecture, `code_levels`), `model.safetensors`
(encoder, quantizer, decoder, and `codebook`: every code's vector as the decoder receives it,
whatever the quantizer), optional `discriminator.safetensors`. A reader that needs only the
code vectors (the dynamics model) takes `codebook` and `code_levels` and never asks which
quantizer made them. Its identity is a hash of the model weights, so a latent store can name
the tokenizer it was encoded with and refuse any other.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common.identity import file_identity
from tokenizer.model import VQGAN
from tokenizer.settings import VQGANConfig

FORMAT = "stvideo-vqgan"
FORMAT_VERSION = 1
CODEBOOK_KEY = "codebook"  # in model.safetensors: the code vectors [codebook_size, code_dim]


class CheckpointError(Exception):
    """A tokenizer checkpoint that cannot be loaded; the message says why."""


def to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]; float input is taken as already in [-1, 1]."""
    return frames.float() / 127.5 - 1.0 if frames.dtype == torch.uint8 else frames.float()


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class Tokenizer(torch.nn.Module):
    def __init__(self, config: VQGANConfig, model: VQGAN | None = None, identity: str | None = None):
        super().__init__()
        self.config = config
        self.model = model or VQGAN(config)
        self.identity = identity

    @property
    def codebook(self) -> torch.Tensor:
        """The code vectors [codebook_size, code_dim]: l2-normalised (VQ), or FSQ's grid in [-1, 1]."""
        return self.model.quantizer.codebook.detach()

    @property
    def code_levels(self) -> list[int] | None:
        """The levels of each code dimension (FSQ), None for a learned codebook."""
        return self.model.quantizer.code_levels

    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid, self.config.grid

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [B, C, H, W] (uint8, or float in [-1, 1]) -> codes int64 [B, h, w]."""
        device = next(self.model.parameters()).device
        return self.model.encode(to_float(frames).to(device))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] -> frames uint8 [B, C, H, W]."""
        device = next(self.model.parameters()).device
        return to_uint8(self.model.decode(codes.long().to(device)))

    @torch.no_grad()
    def decode_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """Code vectors [B, h, w, code_dim] (not necessarily codebook entries) -> frames uint8."""
        device = next(self.model.parameters()).device
        return to_uint8(self.model.decoder(vectors.float().permute(0, 3, 1, 2).to(device)))

    def save_pretrained(self, path: str | Path, discriminator: torch.nn.Module | None = None) -> str:
        """Write the checkpoint folder; returns its identity."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        state[CODEBOOK_KEY] = self.codebook.cpu().clone()  # derived from the rest; for readers
        save_file(state, path / "model.safetensors.tmp", metadata={"format": FORMAT})
        (path / "model.safetensors.tmp").replace(path / "model.safetensors")
        if discriminator is not None:
            disc_state = {k: v.detach().cpu().contiguous() for k, v in discriminator.state_dict().items()}
            save_file(disc_state, path / "discriminator.safetensors", metadata={"format": FORMAT})
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.config.to_dict(),
            "code_levels": self.code_levels,
        }
        (path / "config.json").write_text(json.dumps(config, indent=2))
        self.identity = file_identity(path / "model.safetensors")
        return self.identity

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str = "cpu") -> Tokenizer:
        path = Path(path)
        config_path, weights_path = path / "config.json", path / "model.safetensors"
        if not config_path.is_file() or not weights_path.is_file():
            raise CheckpointError(
                f"{path}: not a tokenizer checkpoint (needs config.json and model.safetensors)"
            )
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{config_path}: not valid JSON ({err})") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise CheckpointError(f"{config_path}: format is {config.get('format')!r}, expected {FORMAT!r}")
        if config.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{config_path}: format_version {config.get('format_version')}, expected 1")
        try:
            arch = VQGANConfig(**config["model"])
        except (TypeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{config_path}: bad architecture ({err})") from None
        try:
            state = load_file(weights_path, device=map_location)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{weights_path}: unreadable or truncated safetensors ({err})") from None
        state.pop(CODEBOOK_KEY, None)  # derived from the quantizer's own (older checkpoints lack it)
        model = VQGAN(arch)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"{weights_path}: weights do not match config.json "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]})"
            )
        model.load_state_dict(state)
        model.to(map_location).eval()
        return cls(arch, model, identity=file_identity(weights_path))
