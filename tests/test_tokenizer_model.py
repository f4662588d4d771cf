import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tokenizer.model import VQGAN, PatchDiscriminator, PerceptualLoss, Quantizer
from tokenizer.settings import VQGANConfig
from tokenizer.tokenizer import CheckpointError, Tokenizer


def small(**changes) -> VQGANConfig:
    return VQGANConfig(**{"frame_size": 32, "base_channels": 8, "codebook_size": 64, **changes})


@pytest.mark.parametrize(("mults", "grid"), [((1, 1, 2), 8), ((1, 1, 2, 2), 4), ((1, 1, 1, 2, 2), 2)])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_for_every_downsampling_factor(mults, grid, channels):
    tokenizer = Tokenizer(small(channel_mults=mults, in_channels=channels))
    frames = torch.randint(0, 256, (5, channels, 32, 32), dtype=torch.uint8)
    codes = tokenizer.encode(frames)
    assert codes.shape == (5, grid, grid) and codes.dtype == torch.int64
    assert int(codes.max()) < 64
    decoded = tokenizer.decode(codes)
    assert decoded.shape == frames.shape and decoded.dtype == torch.uint8
    # decoding is a pure function of the codes
    assert torch.equal(tokenizer.decode(codes), decoded)
    # code vectors decode as their codes do
    assert torch.equal(tokenizer.decode_vectors(tokenizer.codebook[codes]), decoded)


def test_blank_patches_take_one_code_in_training_and_encoding(tmp_path):
    tokenizer = Tokenizer(small(channel_mults=(1, 1, 2, 2), blank_threshold=0.1))  # x8: 4x4 patches
    torch.manual_seed(0)
    frames = torch.zeros(3, 1, 32, 32, dtype=torch.uint8)
    frames[:, :, :8, :8] = 5  # dark noise, under 0.1 * 255: still background
    frames[0, 0, 9, 9] = 200  # one bright pixel makes patch (1, 1) content
    frames[1, 0, 20:30, 3:7] = 255
    codes = tokenizer.encode(frames)
    expected_blank = torch.ones(3, 4, 4, dtype=torch.bool)
    expected_blank[0, 1, 1] = False
    expected_blank[1, 2:4, 0] = False
    assert (codes[expected_blank] == 0).all()
    # training sees the same assignment, so code 0 learns to decode as background
    out = tokenizer.model(frames.float() / 127.5 - 1)
    assert torch.equal(out.blank, expected_blank) and torch.equal(out.codes, codes)
    # the setting travels with the checkpoint: a loaded tokenizer encodes the same way
    tokenizer.save_pretrained(tmp_path / "tok")
    assert torch.equal(Tokenizer.from_pretrained(tmp_path / "tok").encode(frames), codes)
    # off by default: the nearest code wherever it is
    assert Tokenizer(small()).model.blank_patches(frames.float()) is None
    assert Tokenizer(small()).model(frames.float() / 127.5 - 1).blank is None
    with pytest.raises(ValueError, match="blank_threshold"):
        small(blank_threshold=1.5)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    tokenizer = Tokenizer(small())
    discriminator = PatchDiscriminator(1, 8)
    identity = tokenizer.save_pretrained(tmp_path / "tok", discriminator=discriminator)
    loaded = Tokenizer.from_pretrained(tmp_path / "tok")
    frames = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    assert torch.equal(loaded.encode(frames), tokenizer.encode(frames))
    assert torch.equal(loaded.decode(tokenizer.encode(frames)), tokenizer.decode(tokenizer.encode(frames)))
    assert loaded.identity == identity and len(identity) == 16
    assert loaded.config == tokenizer.config
    assert torch.allclose(loaded.codebook.norm(dim=1), torch.ones(64))
    assert (tmp_path / "tok" / "discriminator.safetensors").exists()


def test_from_pretrained_refuses_bad_checkpoints(tmp_path):
    good = tmp_path / "good"
    Tokenizer(small()).save_pretrained(good)

    with pytest.raises(CheckpointError, match="not a tokenizer checkpoint"):
        Tokenizer.from_pretrained(tmp_path / "missing")

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((good / "config.json").read_text())
    data = (good / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        Tokenizer.from_pretrained(truncated)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"format": "someone-elses-vae", "model": {}}))
    (foreign / "model.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match="format is 'someone-elses-vae'"):
        Tokenizer.from_pretrained(foreign)

    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    config = json.loads((good / "config.json").read_text())
    config["model"]["codebook_size"] = 128
    (mismatched / "config.json").write_text(json.dumps(config))
    (mismatched / "model.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match="do not match config.json"):
        Tokenizer.from_pretrained(mismatched)

    other = tmp_path / "other-weights"
    other.mkdir()
    (other / "config.json").write_text((good / "config.json").read_text())
    save_file({"encoder.weight": torch.zeros(3)}, other / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing"):
        Tokenizer.from_pretrained(other)


def test_straight_through_gradients_reach_the_encoder_and_the_codebook():
    torch.manual_seed(0)
    model = VQGAN(small())
    frames = torch.rand(4, 1, 32, 32) * 2 - 1
    out = model(frames)
    assert out.recon.shape == frames.shape and out.codes.shape == (4, 8, 8) and out.z.shape == (4, 16, 8, 8)
    (F.l1_loss(out.recon, frames) + out.quant_loss).backward()
    first_encoder_conv = model.encoder.layers[0].weight
    assert first_encoder_conv.grad is not None and first_encoder_conv.grad.abs().sum() > 0
    used = out.codes.unique()
    codebook_grad = model.quantizer.embedding.weight.grad
    assert codebook_grad[used].abs().sum() > 0
    unused = torch.ones(64, dtype=torch.bool)
    unused[used] = False
    assert codebook_grad[unused].abs().sum() == 0  # only chosen codes are pulled


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    quantizer = Quantizer(small(codebook_size=16, code_dim=4))
    counts = torch.zeros(16, dtype=torch.long)
    counts[:4] = 100  # only codes 0..3 are ever chosen
    for _ in range(200):
        quantizer.update_usage(counts)
    dead = quantizer.dead_codes()
    assert dead[4:].all() and not dead[:4].any()

    candidates = F.normalize(torch.randn(50, 4), dim=-1)
    revived = quantizer.restart_dead_codes(candidates, torch.Generator().manual_seed(1))
    assert revived == 12
    assert not quantizer.dead_codes().any()
    codebook = quantizer.codebook
    # every revived code now sits on one of the encoder outputs it was given...
    similarity = codebook[4:] @ candidates.T
    assert (similarity.max(dim=1).values > 0.99).all()
    # ...so inputs there now choose it: the code is used again
    z = candidates[:, :, None, None]
    chosen = quantizer.lookup(z).flatten()
    assert (chosen >= 4).any()


def test_restart_is_identical_for_identical_inputs():
    """Ranks restart with the same gathered candidates and seed: their codebooks stay equal."""
    a, b = Quantizer(small(codebook_size=16, code_dim=4)), Quantizer(small(codebook_size=16, code_dim=4))
    b.load_state_dict(a.state_dict())
    candidates = torch.randn(30, 4)
    a.restart_dead_codes(candidates, torch.Generator().manual_seed(7))
    b.restart_dead_codes(candidates, torch.Generator().manual_seed(7))
    assert torch.equal(a.embedding.weight, b.embedding.weight)


def test_perceptual_loss_loads_local_vgg_weights_and_passes_gradients(tmp_path):
    layout = [
        (3, 64),
        (64, 64),
        None,
        (64, 128),
        (128, 128),
        None,
        (128, 256),
        (256, 256),
        (256, 256),
        None,
        (256, 512),
        (512, 512),
        (512, 512),
    ]
    state, index = {}, 0
    for item in layout:
        if item is None:
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item[1], item[0], 3, 3) * 0.05
        state[f"features.{index}.bias"] = torch.zeros(item[1])
        index += 2
    save_file(state, tmp_path / "vgg16.safetensors")
    perceptual = PerceptualLoss(str(tmp_path / "vgg16.safetensors"))
    target = torch.rand(2, 1, 32, 32) * 2 - 1
    recon = (target + 0.3 * torch.randn_like(target)).requires_grad_(True)
    loss = perceptual(recon, target)
    loss.backward()
    assert loss > 0 and recon.grad.abs().sum() > 0
    assert float(perceptual(target, target)) == pytest.approx(0.0, abs=1e-6)
    save_file({"other.weight": torch.zeros(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="not VGG16 features"):
        PerceptualLoss(str(tmp_path / "bad.safetensors"))


def fsq(**changes) -> VQGANConfig:
    return small(quantizer="fsq", fsq_levels=(8, 5, 3), code_dim=3, codebook_size=120, **changes)


def test_fsq_codes_are_the_rounded_levels_read_as_one_number(tmp_path):
    tokenizer = Tokenizer(fsq(channel_mults=(1, 1, 2, 2)))
    quantizer = tokenizer.model.quantizer
    grid = tokenizer.codebook
    # every code has its own vector, each dimension on its levels' grid in [-1, 1]
    assert grid.shape == (120, 3) and len({tuple(v) for v in grid.tolist()}) == 120
    for dimension, levels in enumerate((8, 5, 3)):
        assert len(grid[:, dimension].unique()) == levels
        assert grid[:, dimension].min() == -1 and grid[:, dimension].max() <= 1
    # an encoder output's code is its rounded levels, and that code's vector is those levels
    rounded, found = quantizer._round(torch.randn(4, 3, 2, 2) * 3)
    assert torch.equal(
        quantizer.embed(found), (rounded / (quantizer.levels // 2).float()).permute(0, 3, 1, 2)
    )
    # every level of every dimension is reachable: every code is
    sweep = torch.linspace(-4, 4, 81)  # steps of 0.1: finer than any level's band
    z = torch.stack(torch.meshgrid(sweep, sweep, sweep, indexing="ij")).view(1, 3, 81, 81 * 81)
    assert len(quantizer.lookup(z).unique()) == 120
    frames = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)
    codes = tokenizer.encode(frames)
    assert codes.shape == (5, 4, 4) and int(codes.min()) >= 0 and int(codes.max()) < 120
    assert torch.equal(tokenizer.decode_vectors(tokenizer.codebook[codes]), tokenizer.decode(codes))
    # gradients pass straight through the rounding to the encoder
    out = tokenizer.model(frames.float() / 127.5 - 1)
    out.recon.mean().backward()
    assert tokenizer.model.encoder.layers[0].weight.grad.abs().sum() > 0
    assert float(out.quant_loss) == 0.0
    # saved and loaded like a VQ tokenizer; the grid is in the weights, so readers need not know FSQ
    tokenizer.save_pretrained(tmp_path / "fsq")
    loaded = Tokenizer.from_pretrained(tmp_path / "fsq")
    assert loaded.config.quantizer == "fsq" and loaded.config.fsq_levels == (8, 5, 3)
    assert torch.equal(loaded.encode(frames), codes)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"fsq_levels": None}, "fsq_levels"),
        ({"fsq_levels": (8, 2, 3)}, "fsq_levels"),
        ({"code_dim": 4}, "code_dim"),
        ({"codebook_size": 64}, "codebook_size"),
    ],
)
def test_an_inconsistent_fsq_config_names_its_key(changes, key):
    settings = {"quantizer": "fsq", "fsq_levels": (8, 5, 3), "code_dim": 3, "codebook_size": 120}
    settings.update(changes)
    if "fsq_levels" in changes and changes["fsq_levels"]:
        settings["codebook_size"] = math.prod(changes["fsq_levels"])  # only the levels are wrong
    with pytest.raises(ValueError, match=key):
        small(**settings)


def test_the_quantizer_registry_holds_every_quantizer_the_config_names():
    import typing

    from tokenizer.model import QUANTIZERS

    named = typing.get_args(VQGANConfig.__dataclass_fields__["quantizer"].type)
    if not named:  # annotations kept as strings
        named = typing.get_args(typing.get_type_hints(VQGANConfig)["quantizer"])
    assert set(named) == set(QUANTIZERS)
    for name, config in (("vq", small()), ("fsq", fsq())):
        assert isinstance(VQGAN(config).quantizer, QUANTIZERS[name])


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_a_checkpoint_gives_its_code_vectors_and_levels_under_one_key_whatever_its_quantizer(
    tmp_path, quantizer
):
    """Readers (the dynamics model) take `codebook` and `code_levels` and never branch on the
    quantizer; a checkpoint written before that key existed still gives the same vectors."""
    from safetensors.torch import load_file

    from dynamics.checkpoint import load_codebook

    torch.manual_seed(0)
    tokenizer = Tokenizer(small() if quantizer == "vq" else fsq())
    identity = tokenizer.save_pretrained(tmp_path / "new")
    codebook, levels, read_identity = load_codebook(tmp_path / "new")
    assert torch.equal(codebook, tokenizer.codebook) and read_identity == identity
    assert levels == ([8, 5, 3] if quantizer == "fsq" else None) == tokenizer.code_levels
    if quantizer == "vq":  # as the decoder receives them: unit vectors
        assert torch.allclose(codebook.norm(dim=-1), torch.ones(len(codebook)))

    older = tmp_path / "older"
    older.mkdir()
    state = load_file(tmp_path / "new" / "model.safetensors")
    del state["codebook"]
    save_file(state, older / "model.safetensors", metadata={"format": "stvideo-vqgan"})
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    del config["code_levels"]
    (older / "config.json").write_text(json.dumps(config))
    older_codebook, older_levels, _ = load_codebook(older)
    assert torch.equal(older_codebook, codebook) and older_levels == levels
    frames = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    assert torch.equal(Tokenizer.from_pretrained(older).encode(frames), tokenizer.encode(frames))
