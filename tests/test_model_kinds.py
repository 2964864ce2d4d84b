"""Model kinds by capability (issue 14): a user's own pipeline folder of each kind goes through optimize -> export
-> `autoeff.load` -> bench; pipelines autoeff has no table for (a diffusers class the issue does not name, a
user's own subclass) are detected by what they have; an uncovered pipeline is refused in one line naming what
is missing; and the stock configuration through the knobs reproduces the stock pipeline's images exactly.

Tiny random-weight pipelines (`autoeff.models.tiny`), saved with `save_pretrained` as a user would; 3 steps,
2 trials, 2 samples."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import (
    DDPMPipeline,
    DiffusionPipeline,
    LDMPipeline,
    ScoreSdeVePipeline,
    ScoreSdeVeScheduler,
    UNet2DModel,
    VQModel,
)
from PIL import Image

import autoeff
from autoeff.bench import bench_export
from autoeff.cli import main
from autoeff.export import PlainDiffusersWarning, _solver_for_plain_diffusers
from autoeff.models import tiny
from autoeff.models.generate import default_spec, generate
from autoeff.models.kinds import detect_kind as plain_kind
from autoeff.models.registry import UnsupportedModelError, handle_from_pipeline, load_model
from autoeff.preflight import preflight
from autoeff.recipe import Recipe
from autoeff.search import context_for
from autoeff.search_spaces import schedule, solver
from autoeff.search_spaces._pinned import plain_scheduler
from autoeff.search_spaces.space import build_pipeline
from autoeff.settings import RunOptions, SearchSettings

logging.getLogger("diffusers").setLevel(logging.ERROR)

# kind -> (pipeline class, kind label, workload beyond the defaults). Flux's default resolution is its
# `default_sample_size` (128 latent pixels): tiny, it is measured at 32x32 instead.
KINDS: dict[str, tuple[str, str, dict]] = {
    "ddpm": ("DDPMPipeline", "ddpm-none-pixel-unet", {}),
    "ddim": ("DDIMPipeline", "ddpm-none-pixel-unet", {}),
    "dit": ("DiTPipeline", "ddpm-class-latent-transformer", {"labels": [0, 1]}),
    "sd3": ("StableDiffusion3Pipeline", "flow-text-latent-transformer", {"prompts": ["a red cube", "a green ball"]}),
    "flux": ("FluxPipeline", "flow-text-latent-transformer", {"resolution": 32}),
    "sana": ("SanaPipeline", "flow-text-latent-transformer", {"negative_prompt": "blurry"}),
}
CALL = {"num_inference_steps": 2, "output_type": "np", "prompt": "a cube", "class_labels": [0], "height": 32,
        "width": 32, "batch_size": 1}
FAST = {"budget": "300%", "trials": 2, "proxy_samples": 2, "final_samples": 2, "top_k": 1, "sampler": "random",
        "warm_start": False, "steps": 3, "min_steps": 2, "max_steps": 3}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("user-models")
    out = {}
    for name in KINDS:
        out[name] = root / name
        tiny.BUILDERS[name]().pipeline.save_pretrained(str(out[name]))
    return out


def _images(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"real{i}.png")
    return folder


@pytest.mark.parametrize("name", list(KINDS))
def test_a_users_folder_goes_through_optimize_export_load_bench(name, folders, tmp_path):
    class_name, label, workload = KINDS[name]
    assert json.loads((folders[name] / "model_index.json").read_text())["_class_name"] == class_name
    res = autoeff.optimize(folders[name], out=tmp_path / "run", **FAST, **workload)
    assert res.export_path is not None and res.context.family == label
    with pytest.warns(PlainDiffusersWarning, match="schedule.* applied by autoeff.load only"):
        pipe = autoeff.load(res.export_path)  # the pinned timesteps are autoeff's: plain diffusers is told so
    assert type(pipe).__name__ == class_name
    handle = pipe.autoeff_handle
    assert handle.family == label and handle.default_steps == 3  # the workload travels with the export
    for key, value in workload.items():
        assert getattr(handle, key) == value
    knobs = pipe.autoeff_info["recipe"]["knobs"]
    assert "solver" in knobs and "schedule" in knobs
    # what load applied is what the recipe says: the solver's class is the scheduler the pipeline runs
    chosen = Recipe.from_dict(pipe.autoeff_info["recipe"]).knobs["solver"]
    built = solver.build_scheduler(chosen, load_model(str(folders[name])).pipeline.scheduler)
    assert type(built).__mro__[0].__name__ in {c.__name__ for c in type(pipe.scheduler).__mro__}
    # plain diffusers: the chosen solver from `scheduler/` when it can run it; the card says what it gets
    info = json.loads((res.export_path / "autoeff.json").read_text())
    plain = DiffusionPipeline.from_pretrained(str(res.export_path))
    card = (res.export_path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n") and f"- **solver**: {chosen.describe()}" in card
    if info["base_scheduler"]["solver_saved"]:
        assert type(plain.scheduler).__name__ == type(plain_scheduler(built)).__name__
        assert f"the chosen solver (`{type(plain.scheduler).__name__}` in `scheduler/`)" in card
    else:
        assert "It does not get the chosen solver" in card
    out = plain(**{k: v for k, v in CALL.items() if k in plain_kind(plain).call}).images
    assert np.isfinite(np.asarray(out)).all()
    rows = {r["what"]: r for r in bench_export(res.export_path, samples=2)}
    assert rows["latency"]["measured_value"] > 0
    assert rows["quality"]["measured_value"] is not None and rows["quality"]["claimed_value"] is not None


def test_the_cli_takes_prompts_and_a_reference_folder(folders, tmp_path):
    """`--prompts FILE` on a text-to-image folder and `--reference DIR` on an unconditional one, through the CLI:
    optimize, then bench the export; the FID figure names the features it used."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n\n  a green ball  \n")
    flags = ["--budget", "300%", "--trials", "2", "--proxy-samples", "4", "--final-samples", "4", "--top-k", "1",
             "--sampler", "random", "--no-warm-start", "--steps", "3", "--min-steps", "2", "--max-steps", "3"]
    run = CliRunner().invoke(main, ["optimize", "--model", str(folders["sd3"]), "--prompts", str(prompts),
                                    "--guidance-scale", "3.0", "--out", str(tmp_path / "sd3"), *flags])
    assert run.exit_code == 0, run.output
    pipe = autoeff.load(tmp_path / "sd3" / "optimized")
    assert pipe.autoeff_handle.prompts == ["a red cube", "a green ball"] and pipe.autoeff_handle.guidance_scale == 3.0
    bench = CliRunner().invoke(main, ["bench", str(tmp_path / "sd3" / "optimized"), "--samples", "4"])
    assert bench.exit_code == 0, bench.output

    real = _images(tmp_path / "real", 6, 16)
    run = CliRunner().invoke(main, ["optimize", "--model", str(folders["ddpm"]), "--reference", str(real),
                                    "--out", str(tmp_path / "ddpm"), *flags])
    assert run.exit_code == 0, run.output
    info = json.loads((tmp_path / "ddpm" / "optimized" / "autoeff.json").read_text())
    quality = info["measured"]["final"]["quality"]
    assert quality["metric"] == "fid" and quality["details"]["reference"] == "folder"
    assert quality["details"]["features"] in ("inception-v3", "pixels-8x8")
    # without Inception weights on the machine, the run says which features it used and what to place where
    fallback = quality["details"]["features"] == "pixels-8x8"
    assert ("note: FID/KID against --reference use weight-free 8x8-pixel features" in run.output) == fallback
    assert not fallback or "inception_v3_google-0cc3c7bd.pth" in run.output
    bench = CliRunner().invoke(main, ["bench", str(tmp_path / "ddpm" / "optimized"), "--samples", "4"])
    assert bench.exit_code == 0, bench.output
    assert "quality" in bench.output and "not measured" not in bench.output
    # the reference folder moved: no silent figure against another reference; --reference names the new place
    moved = real.rename(tmp_path / "moved")
    bench = CliRunner().invoke(main, ["bench", str(tmp_path / "ddpm" / "optimized"), "--samples", "4"])
    assert bench.exit_code == 0, bench.output
    assert "measured not measured" in bench.output and f"reference images in {real}, which is not there" in bench.output
    bench = CliRunner().invoke(main, ["bench", str(tmp_path / "ddpm" / "optimized"), "--samples", "4",
                                      "--reference", str(moved), "--json"])
    assert bench.exit_code == 0, bench.output
    assert json.loads(bench.stdout)["rows"][-1]["measured_value"] is not None


def _tiny_ldm() -> LDMPipeline:
    torch.manual_seed(0)
    vqvae = VQModel(block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=3,
                    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, num_vq_embeddings=32)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    return LDMPipeline(vqvae=vqvae.eval(), unet=unet.eval(), scheduler=tiny.DDIMScheduler())


def test_a_pipeline_the_issue_does_not_name_is_detected_by_capability(tmp_path):
    """LDMPipeline (unconditional latent diffusion with a VQ-VAE, Rombach et al., 2022): no table names it, yet its
    parts are of a covered kind, so a user's folder of it goes through the whole path."""
    _tiny_ldm().save_pretrained(str(tmp_path / "ldm"))
    handle = load_model(str(tmp_path / "ldm"))
    assert handle.family == "ddpm-none-latent-unet" and handle.model_kind.noise_input == "generator"
    res = autoeff.optimize(tmp_path / "ldm", out=tmp_path / "run", **FAST)
    pipe = autoeff.load(res.export_path)
    assert type(pipe).__name__ == "LDMPipeline"
    assert bench_export(res.export_path, samples=2)[-1]["measured_value"] is not None


class MyDDPMPipeline(DDPMPipeline):
    """A user's own pipeline class: a subclass of a diffusers one, passed as an object."""


def test_a_users_own_subclass_in_memory_is_detected_by_capability(tmp_path):
    base = tiny.build_tiny_ddpm().pipeline
    pipe = MyDDPMPipeline(unet=base.unet, scheduler=base.scheduler)
    assert handle_from_pipeline(pipe).family == "ddpm-none-pixel-unet"
    res = autoeff.optimize(pipe, out=tmp_path / "run", **FAST)
    assert res.export_path is not None and res.best is not None


def test_an_uncovered_pipeline_is_refused_in_one_line_naming_what_is_missing(tmp_path):
    """Score-SDE VE (Song et al., 2021) has neither a beta schedule nor flow matching: refused before any weight is
    read, with exit status 2 and one line, never a traceback."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    ScoreSdeVePipeline(unet=unet, scheduler=ScoreSdeVeScheduler()).save_pretrained(str(tmp_path / "sde"))
    with pytest.raises(UnsupportedModelError, match="ScoreSdeVeScheduler is neither a DDPM-family scheduler"):
        load_model(str(tmp_path / "sde"))
    run = CliRunner().invoke(main, ["optimize", "--model", str(tmp_path / "sde"), "--budget", "50%",
                                    "--out", str(tmp_path / "out")])
    assert run.exit_code == 2
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "ScoreSdeVePipeline" in lines[0] and "Traceback" not in run.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, knobs", [
    ("ddpm", {"schedule": schedule.Config("leading", 3)}),
    ("ddim", {"solver": solver.Config("ddim", 1), "schedule": schedule.Config("leading", 3)}),
    ("dit", {"solver": solver.Config("ddim", 1), "schedule": schedule.Config("leading", 3)}),
    ("sd3", {"solver": solver.Config("euler", 1), "schedule": schedule.Config("linspace", 3)}),
    ("flux", {"solver": solver.Config("euler", 1), "schedule": schedule.Config("uniform", 3)}),
    ("sana", {"solver": solver.Config("dpmpp", 2)}),
])
def test_the_stock_configuration_through_the_knobs_reproduces_the_stock_images(name, knobs):
    """The knobs set to what the pipeline ships (its solver, its own spacing at its step count) give exactly the
    stock pipeline's images: the knobs change nothing but what they are asked to change (flow matching included:
    SD3's `linspace(1, sigma_min)` spacing, Flux's `linspace(1, 1/k)` with its resolution-dependent shift, Sana's
    DPM-Solver++ 2M on flow sigmas)."""
    handle = tiny.BUILDERS[name]()
    handle.default_steps = 3
    context = context_for(handle, SearchSettings(model=handle.spec, budget="1s", space=list(knobs), max_steps=6))
    spec = default_spec(handle, 2, batch_size=2)
    stock = generate(handle, handle.pipeline, spec)
    through = generate(handle, build_pipeline(handle, Recipe(model=handle.spec, knobs=knobs), context), spec)
    assert torch.equal(stock, through)
    if "schedule" in knobs:  # and the schedule is really pinned: another spacing moves the images
        other = {**knobs, "schedule": schedule.Config("quadratic", 3)}
        moved = generate(handle, build_pipeline(handle, Recipe(model=handle.spec, knobs=other), context), spec)
        assert not torch.equal(stock, moved)


@pytest.mark.parametrize("name, applies, not_applying", [
    ("ddpm", {"solver", "schedule", "cache"}, {"guidance"}),
    ("flux", {"solver", "schedule", "cache"}, {"guidance"}),
    ("sd3", {"solver", "schedule", "cache", "guidance"}, set()),
])
def test_knobs_that_do_not_apply_to_a_kind_are_not_searched(name, applies, not_applying, folders, tmp_path):
    """DDPM has no guidance; Flux's guidance is distilled into the model (no batched unconditional half), so the
    guidance knob does not apply to either; SD3 batches classifier-free guidance and gets it."""
    checked = preflight(str(folders[name]), SearchSettings(model=str(folders[name]), budget="50%",
                                                           space=["solver", "schedule", "cache", "guidance"]),
                        RunOptions(out=tmp_path / "out"))
    assert applies <= set(checked.searched) and not (not_applying & set(checked.searched))


@pytest.mark.parametrize("name, config, why", [
    ("flux", solver.Config("heun", 1), "FluxPipeline passes mu and sigmas to the scheduler"),
    ("ddim", solver.Config("dpmpp", 2), "DDIMPipeline passes eta, use_clipped_model_output to the scheduler's step"),
    ("ddim", solver.Config("ddim", 1), None),
    ("ddpm", solver.Config("unipc", 2), "DDPMPipeline passes generator to the scheduler's step"),
    ("sd3", solver.Config("dpmpp", 2), None),
    ("flux", solver.Config("unipc", 2), None),
])
def test_plain_diffusers_gets_the_solver_only_where_it_runs_it(name, config, why):
    """The export's `scheduler/` holds the chosen solver only when plain diffusers can run it in that pipeline;
    otherwise it keeps the base scheduler and the card says why."""
    handle = tiny.BUILDERS[name]()
    chosen, note = _solver_for_plain_diffusers(handle, Recipe(model=handle.spec, knobs={"solver": config}))
    if why is None:
        assert note is None and type(chosen).__name__ == type(plain_scheduler(
            solver.build_scheduler(config, handle.pipeline.scheduler))).__name__
        if name in ("sd3", "flux"):  # a flow solver, in diffusers' own config terms
            assert chosen.config.get("use_flow_sigmas") and chosen.config.get("prediction_type") == "flow_prediction"
    else:
        assert chosen is None and note.startswith(why)


def test_the_model_card_says_what_was_measured_and_what_plain_diffusers_gets():
    """The card's front matter is the Hub's (base_model only for a hub id), its figures carry device, sample
    count, seeds and what the metric compared with, and it never claims what was not measured."""
    from autoeff.model_card import model_card

    handle = tiny.build_tiny_sd3()
    context = context_for(handle, SearchSettings(model=handle.spec, budget="1s", max_steps=6))
    recipe = Recipe(model="org/my-sd3", knobs={"solver": solver.Config("dpmpp", 2),
                                               "schedule": schedule.Config("uniform", 3)})
    quality = {"metric": "fid", "value": 12.5, "n": 64,
               "details": {"reference": "folder", "n_reference": 500, "features": "pixels-8x8"}}
    info = {"model": {"spec": "org/my-sd3", "family": "flow-text-latent-transformer", "default_steps": 28,
                      "pipeline_class": "StableDiffusion3Pipeline", "prompts": ["a cat"]},
            "device": "cuda", "baseline": {"latency_s": 2.0, "quality": {**quality, "value": 10.0}},
            "measured": {"final": {"latency_s": 0.5, "latency": {"device": "NVIDIA H200"}, "quality": quality},
                         "batch_size": 1, "seed": 7}}
    card = model_card(info, recipe, context, "DPMSolverMultistepScheduler", None)
    front = card.split("---")[1]
    assert 'library_name: diffusers' in front and 'base_model: "org/my-sd3"' in front
    assert "pipeline_tag: text-to-image" in front and '- "autoeff"' in front
    assert "Device: `cuda` (NVIDIA H200)" in card and "sample-set seed 7" in card
    assert "| this export | 500.0 ms | fid 12.5 (n=64; vs 500 reference images; features pixels-8x8) |" in card
    assert "the chosen solver (`DPMSolverMultistepScheduler` in `scheduler/`)" in card
    assert "Only `autoeff.load` applies: **schedule**" in card and "num_inference_steps=3" in card
    bare = model_card({"model": {"spec": "/data/my-sd3", "pipeline_class": "StableDiffusion3Pipeline"}}, recipe,
                      context, None, "why not")
    assert "base_model" not in bare.split("---")[1] and "Nothing was measured" in bare and " ms " not in bare
    assert "It does not get the chosen solver: why not." in bare
