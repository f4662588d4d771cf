"""A generation's scores as pictures: one figure per metric with the model's estimates beside
every reference and the reconstruction bound, the samples' diversity, and `report.html`, a
self-contained page (figures and preview embedded) that opens anywhere without a server."""

from __future__ import annotations

import base64
import html
import io

# Figure objects, not pyplot: no display or global figure state, safe on a cluster node
from matplotlib.figure import Figure

from dynamics.evaluate import DEFINITION, ONE_SAMPLE_REPEATS, TABLE_METRICS, TABLE_ROWS, markdown_tables

# how each curve is drawn: the model's estimates solid, the references dashed, the bound dotted,
# the ceiling (the true frames' own score) dash-dotted
STYLE = {
    "model": {"color": "C0", "linewidth": 2.5},
    "model_median": {"color": "C1", "linewidth": 2},
    "model_average": {"color": "C2", "linewidth": 2},
    "model_samples": {"color": "C4", "linewidth": 1},
    "model_best": {"color": "C6", "linewidth": 1},
    "copy_last": {"color": "C3", "linestyle": "--"},
    "copy_last_latent": {"color": "C5", "linestyle": "--"},
    "black": {"color": "0.2", "linestyle": "--"},
    "train_mean": {"color": "C7", "linestyle": "--"},
    "reconstruction": {"color": "0.5", "linestyle": ":", "linewidth": 2},
    "truth": {"color": "k", "linestyle": "-.", "linewidth": 1.5},
}
BETTER = {"mse": "lower", "ssim": "higher", "identity": "higher", "detail": "nearer the truth"}


def comparison_figures(metrics: dict, samples: int, prefix: str = "") -> dict[str, Figure]:
    """`metrics.json` (or one of its protocols) -> {file name: figure}: per metric, the score at
    each generated step of every estimate and reference, and the samples' diversity. `prefix`
    starts each title (a further protocol's name)."""
    per_step = metrics["per_step"]
    steps = range(1, len(per_step["model"]["mse"]) + 1)
    figures = {}
    for metric, (title, _) in TABLE_METRICS.items():
        rows = [(ref, label) for ref, label in TABLE_ROWS if metric in per_step.get(ref, {})]
        if samples == 1:  # one sample: its median, average and best are itself
            rows = [(ref, label) for ref, label in rows if ref not in ONE_SAMPLE_REPEATS]
        if metric not in per_step["model"]:
            continue
        # a share is drawn in % as its table prints it
        scale, unit = (100, " (%)") if TABLE_METRICS[metric][1].endswith("%}") else (1, "")
        figure = Figure(figsize=(7, 4.2), layout="constrained")
        axes = figure.subplots()
        for ref, label in rows:
            values = [scale * value for value in per_step[ref][metric]]
            axes.plot(steps, values, label=label.format(samples=samples), **STYLE.get(ref, {}))
        axes.set(xlabel="generated frame", ylabel=f"{title}{unit}")
        # two lines, so that no title is cut at the figure's edge
        axes.set_title(f"{prefix}{title} per generated frame\n({BETTER[metric]} is better)", fontsize=11)
        axes.set_xticks(list(steps))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        figures[f"{metric}_by_step.png"] = figure
    if "diversity" in metrics:
        figure = Figure(figsize=(7, 3.2), layout="constrained")
        axes = figure.subplots()
        axes.plot(steps, metrics["diversity"]["per_step"], color="C0", linewidth=2)
        axes.set(xlabel="generated frame", ylabel="MSE between samples")
        axes.set_title(f"{prefix}diversity of the {samples} samples\nper generated frame", fontsize=11)
        axes.set_xticks(list(steps))
        axes.grid(alpha=0.3)
        figures["diversity_by_step.png"] = figure
    return figures


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def figure_pngs(metrics: dict, samples: int) -> dict[str, dict[str, bytes]]:
    """Every comparison figure as PNG, rendered once for the report and the run's charts:
    {protocol ("" for the main one, else e.g. "15->5"): {file ("mse_by_step.png"): png}}."""
    pngs = {"": {file: png(figure) for file, figure in comparison_figures(metrics, samples).items()}}
    for name, scored in metrics.get("protocols", {}).items():
        figures = comparison_figures(scored, samples, prefix=f"{name} ")
        pngs[name] = {file: png(figure) for file, figure in figures.items()}
    return pngs


def report_files(
    metrics: dict, samples: int, preview_gif: bytes, title: str, made_by: dict[str, str]
) -> tuple[str, dict[str, bytes]]:
    """`report.html`'s page and every comparison figure as PNG, each figure named as the run's
    charts file it (a further protocol's prefixed: `p15_k5_mse_by_step.png`); rendered once."""
    pngs = figure_pngs(metrics, samples)
    files = {}
    for protocol, figures in pngs.items():
        prefix = f"p{protocol.replace('->', '_k')}_" if protocol else ""
        files.update({f"{prefix}{file}": data for file, data in figures.items()})
    return report_html(metrics, samples, preview_gif, title, pngs, made_by), files


def preview_steps(preview_gif: bytes, prompt_frames: int) -> list[tuple[int, bytes]]:
    """The preview's generated frames as PNG, each with its horizon step (1: the first generated
    frame): a slider over the continuation beside the per-step scores."""
    from PIL import Image, ImageSequence

    steps = []
    with Image.open(io.BytesIO(preview_gif)) as gif:
        for index, frame in enumerate(ImageSequence.Iterator(gif)):
            if index >= prompt_frames:
                buffer = io.BytesIO()
                frame.convert("RGB").save(buffer, format="png")
                steps.append((index - prompt_frames + 1, buffer.getvalue()))
    return steps


def report_html(
    metrics: dict,
    samples: int,
    preview_gif: bytes,
    title: str,
    pngs: dict[str, dict[str, bytes]],
    made_by: dict[str, str],
) -> str:
    """One page: what made it (`made_by`: label -> text, e.g. the MLflow run, the models and
    the config's fingerprint), the preview, the per-step figures (`figure_pngs`) and tables of the
    main protocol and of every further one (e.g. the original's 15 -> 5), and how to read them."""
    main = f"{metrics['prompt_frames']} -> {metrics['generate_frames']}"
    sections = [_protocol_section(metrics, samples, main, pngs[""], "")]
    for name, scored in metrics.get("protocols", {}).items():
        sections.append(
            _protocol_section(scored, samples, name.replace("->", " -> "), pngs[name], f"{name} ")
        )
    gif = base64.b64encode(preview_gif).decode()
    provenance = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(text)}</td></tr>"
        for label, text in made_by.items()
    )
    definitions = "".join(f"<li>{html.escape(line)}</li>" for line in DEFINITION.split("; "))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
img {{ max-width: 100%; }} table {{ border-collapse: collapse; font-size: 0.8em; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
td:first-child {{ text-align: left; }}
figure {{ margin: 1em 0; }} .note {{ color: #555; }}
table.made th {{ text-align: left; font-weight: normal; color: #555; }}
table.made td {{ text-align: left; font-family: monospace; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table class="made" id="made-by">{provenance}</table>
<p class="note">{metrics["clips"]} clips, {metrics["prompt_frames"]} prompt frames,
{metrics["generate_frames"]} generated, {samples} samples each. Sample 0 is the likeliest
continuation; the median and average are taken per pixel over the samples. The references: copy-last
(the last prompt frame held, in pixels and through the tokenizer), all-black, the training set's
mean frame; the tokenizer's reconstruction of the true frames bounds what any model of these latents
can reach.</p>
<p class="note" id="units">Units: MSE is the squared error of one generated frame summed over its
C&times;H&times;W pixels in [0, 1] (OpenSTL's per-frame MSE: a 64&times;64 grey frame off by 0.1
everywhere scores 41), averaged over clips; SSIM runs from 0 to 1 (1: the same frame); digits named
right are in %. The tables' columns are the generated frames, 1 the first after the prompt. How each
score is measured:</p>
<ul class="note" id="definitions">{definitions}</ul>
<h2>Preview</h2>
<figure id="preview"><img alt="preview: rows of prompt and continuation, sample 0, median of samples, truth"
 src="data:image/gif;base64,{gif}"><figcaption class="note">Per clip: sample 0, the samples' median, the
truth.</figcaption></figure>
{"".join(sections)}
</body></html>
"""


def _protocol_section(metrics: dict, samples: int, name: str, pngs: dict[str, bytes], alt: str) -> str:
    images = "".join(
        f'<figure class="plot"><img alt="{html.escape(alt + file)}" '
        f'src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>'
        for file, data in pngs.items()
    )
    return f"<h2>{html.escape(name)}</h2>{images}{_tables(metrics, samples)}"


def _tables(metrics: dict, samples: int) -> str:
    """The markdown tables `stvideo tables` prints, as HTML."""
    out = []
    for block in markdown_tables(metrics, samples).strip().split("\n\n"):
        lines = [line.strip("|").split("|") for line in block.splitlines() if not line.startswith("| ---")]
        head, *body = lines
        out.append(f"<table>{_row(head, 'th')}{''.join(_row(cells, 'td') for cells in body)}</table>")
    return "".join(out)


def _row(cells: list[str], tag: str) -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(cell.strip())}</{tag}>" for cell in cells) + "</tr>"
