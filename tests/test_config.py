import pytest

from jobs.config import ConfigError, PipelineConfig, is_secret, load_config
from tests.conftest import REPO, run_stvideo


def problems_of(path=None, overrides=()):
    with pytest.raises(ConfigError) as caught:
        load_config(path, list(overrides))
    return caught.value.problems


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.data.source == "moving-mnist"
    assert cfg.tokenizer.model.in_channels == 1 and cfg.data.frame_size is None  # grey, as generated


def test_footage_is_in_colour_and_stored_at_the_tokenizer_size():
    cfg = load_config(REPO / "configs" / "footage.yaml")
    assert cfg.data.source == "folder" and cfg.ingest.transcode
    assert cfg.tokenizer.model.in_channels == 3 and cfg.data.frame_size == cfg.tokenizer.model.frame_size
    # colour is the default for any folder, grey only when asked for
    assert load_config(None, ["data.source=folder", "data.path=/videos"]).tokenizer.model.in_channels == 3
    grey = ["data.source=folder", "data.path=/videos", "tokenizer.model.in_channels=1"]
    assert load_config(None, grey).tokenizer.model.in_channels == 1


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = PipelineConfig()
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_every_problem_gets_its_own_line_with_the_dotted_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "data:\n  source: youtube\n  clip_frames: -3\n"
        "  moving_mnist:\n    num_vidoes: 5\n"
        "ingest:\n  crf: high\n"
    )
    problems = problems_of(path)
    assert len(problems) == 4, problems
    by_key = {line.split(":")[0]: line for line in problems}
    assert "'youtube'" in by_key["data.source"] and "'folder' or 'moving-mnist'" in by_key["data.source"]
    assert (
        "given -3" in by_key["data.clip_frames"]
        and "greater than or equal to 1" in by_key["data.clip_frames"]
    )
    assert "num_videos" in by_key["data.moving_mnist.num_vidoes"]  # names the keys it knows
    assert "'high'" in by_key["ingest.crf"] and "integer" in by_key["ingest.crf"]


def test_overrides_are_typed_and_validated_like_the_file():
    cfg = load_config(None, ["data.clip_frames=16", "root=s3://bucket/run", "ray.address=127.0.0.1:6379"])
    assert cfg.data.clip_frames == 16 and isinstance(cfg.data.clip_frames, int)
    assert cfg.root == "s3://bucket/run"
    assert cfg.ray.address == "127.0.0.1:6379"
    cfg = load_config(None, ["tracking.enabled=false", "data.extensions=[mp4, mkv]"])
    assert cfg.tracking.enabled is False and cfg.data.extensions == ["mp4", "mkv"]
    [line] = problems_of(None, ["data.clip_frames=abc"])
    assert line.startswith("data.clip_frames: given 'abc'")


def test_override_mistakes_are_named():
    assert problems_of(None, ["data.clip_frames"]) == ["--set 'data.clip_frames': expected dotted.key=value"]
    [line] = problems_of(None, ["data.nope=1"])
    assert line.startswith("data.nope: given 1") and "source" in line
    [line] = problems_of(REPO / "configs" / "tiny.yaml", ["root.sub=1"])
    assert "root is a value" in line
    [line] = problems_of(None, ["root.sub=1"])  # not in the file: the value check catches it
    assert line.startswith("root: given {'sub': 1}, expected a valid string")


def test_cross_field_rules_name_the_key():
    [line] = problems_of(None, ["data.source=folder"])
    assert line.startswith("data.path: given None") and "folder" in line
    [line] = problems_of(None, ["data.clip_frames=30"])
    assert line.startswith("data.moving_mnist.num_frames: given 20") and "clip_frames (30)" in line
    # the fixed test set decides its own length, so the generator's does not matter
    load_config(None, ["data.clip_frames=30", "data.path=/data/mnist_test_seq.npy"])
    # a generator model holds both checkpoints: it is a registered model, and alone
    [line] = problems_of(None, ["generate.model=out/generator"])
    assert line.startswith("generate.model: given 'out/generator', expected models:/<name>/<version>")
    [line] = problems_of(None, ["generate.model=models:/stvideo-generator/1", "encode.tokenizer=out/tok"])
    assert line.endswith("expected no encode.tokenizer beside it: the model holds both checkpoints")


def test_model_settings_are_validated_like_the_rest_and_name_their_key():
    problems = problems_of(
        None,
        ["tokenizer.model.frame_size=62", "dynamics.model.n_heads=3", "dynamics.rollout_prob=2"],
    )
    by_key = {line.split(":")[0]: line for line in problems}
    assert by_key.keys() == {
        "tokenizer.model.frame_size",
        "dynamics.model.d_model",
        "dynamics.rollout_prob",
    }, problems
    assert "given 62, expected a multiple of 4" in by_key["tokenizer.model.frame_size"]
    [line] = problems_of(None, ["tokenizer.model.codebok_size=64"])
    assert line.startswith("tokenizer.model.codebok_size: given 64") and "codebook_size" in line
    assert "multiple of n_heads (3)" in by_key["dynamics.model.d_model"]
    assert "less than or equal to 1" in by_key["dynamics.rollout_prob"]


def test_names_that_become_folders_and_stage_keys_are_checked():
    for name in ("../../elsewhere", "..", "a/b", ".hidden"):
        [line] = problems_of(None, [f"generate.name={name}"])
        assert line.startswith(f"generate.name: given {name!r}") and "no '/'" in line
    assert load_config(None, ["generate.name=run-2_b.1"]).generate.name == "run-2_b.1"
    [line] = problems_of(None, ["submit.resources.train_dynamics.num_gpus=1"])
    assert line.startswith("submit.resources.train_dynamics: given") and "train-dynamics" in line
    cfg = load_config(None, ["submit.resources.train-dynamics.num_gpus=1"])
    assert cfg.submit.resources["train-dynamics"].num_gpus == 1


def test_yaml_syntax_error_points_at_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  source: [unclosed\n")
    [line] = problems_of(path)
    assert line.startswith(f"{path}:") and "not valid YAML" in line
    [line] = problems_of(tmp_path / "missing.yaml")
    assert "expected an existing YAML file" in line


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path):
    root = tmp_path / "never"
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  source: youtube\n")
    result = run_stvideo(
        "ingest", "--config", str(bad), "--set", f"root={root}", "--set", "ray.num_cpus=zero"
    )
    assert result.returncode == 2, result.stderr
    assert "data.source: given 'youtube'" in result.stderr
    assert "ray.num_cpus: given 'zero'" in result.stderr
    assert not root.exists()


def test_cli_lists_every_stage_and_the_cluster_commands():
    result = run_stvideo("--help")
    assert result.returncode == 0
    for command in ["ingest", "train-tokenizer", "encode", "train-dynamics", "generate", "run", "submit"]:
        assert command in result.stdout
    assert "status" in result.stdout
    tiny = str(REPO / "configs" / "tiny.yaml")
    result = run_stvideo("submit", "--config", tiny, "--stages", "ingest,decode")
    assert result.returncode == 2 and "--stages: given decode; expected some of ingest" in result.stderr


def test_version_and_each_stage_help_names_its_keys_with_defaults():
    from importlib.metadata import version

    result = run_stvideo("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"stvideo {version('stvideo')}"
    result = run_stvideo("encode", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # rich wraps lines: compare words
    assert "encode.batch_size = 16: clips per encoder batch" in text
    assert "data.clip_frames = " in text and "train-dynamics" not in text
    dynamics = " ".join(run_stvideo("train-dynamics", "--help").stdout.split())
    assert (
        "dynamics.max_minutes = null" in dynamics and "dynamics.model.temporal_positions = rotary" in dynamics
    )
    assert "dynamics.model.d_model = 128: width of every token" in dynamics


def test_every_config_key_says_what_it_means():
    """The pipeline sections and the model settings alike: `--help` explains every key."""
    from jobs.keys import section_keys

    sections = PipelineConfig.model_fields
    keys = [
        key
        for section in sections
        if section not in ("name", "root", "scratch")
        for key in section_keys(section)
    ]
    assert len(keys) > 150
    assert [key.name for key in keys if not key.meaning] == []
    assert PipelineConfig.model_fields["name"].description and PipelineConfig.model_fields["root"].description


def test_config_show_round_trips_to_the_same_fingerprints(tmp_path):
    from common.identity import value_identity
    from jobs.lineage import stage_config
    from jobs.stages import STAGES

    demo = str(REPO / "configs" / "demo.yaml")
    sets = ["root=" + str(tmp_path / "root"), "dynamics.max_steps=7"]
    result = run_stvideo("config", "show", "--config", demo, *[arg for s in sets for arg in ("--set", s)])
    assert result.returncode == 0, result.stderr
    shown = tmp_path / "shown.yaml"
    shown.write_text(result.stdout)
    assert "max_steps: 7" in result.stdout and "temporal_positions: rotary" in result.stdout  # defaults too
    original, again = load_config(demo, sets), load_config(str(shown))
    for spec in STAGES.values():
        assert value_identity(stage_config(original, spec)) == value_identity(stage_config(again, spec)), (
            spec.name
        )
    assert run_stvideo("config", "show", "--set", "dynamics.lr=fast").returncode == 2


def test_secrets_are_never_written_out():
    cfg = load_config(None, ["submit.env={AWS_SECRET_ACCESS_KEY: hunter2, HF_TOKEN: t0ken, PLAIN: visible}"])
    text = cfg.to_yaml()
    assert "hunter2" not in text and "t0ken" not in text and "visible" not in text  # all of submit.env
    assert cfg.submit.env["AWS_SECRET_ACCESS_KEY"] == "hunter2"  # the process itself keeps them
    assert load_config(None, []).to_yaml() == PipelineConfig().to_yaml()  # nothing else is touched
    assert [
        key
        for key in ("x.api_key", "x.db-password", "ingest.keyframe_interval", "encode.tokenizer")
        if is_secret(key)
    ] == ["x.api_key", "x.db-password"]
