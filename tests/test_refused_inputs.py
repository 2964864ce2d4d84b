"""Bad input is refused cleanly: one line `error: ...` on stderr, exit status 2, no traceback, nothing written.

`ROWS` is the single list of refused inputs. Each row runs the real CLI (click's CliRunner in-process, or the
installed `autoeff` script in a subprocess for a few) in a fresh temporary folder and checks all four
properties: the exit status is 2; stderr is exactly one line and it starts with `error:`; no traceback; and
the folder holds exactly what it held before (no --out folder, no study.db, no change to a study or export
that was there). The message printed is compared with its row in docs/refused-inputs.md, which mirrors
`ROWS`; regenerate the doc after changing a message or a row with

    .venv/bin/python tests/test_refused_inputs.py --write-doc
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "refused-inputs.md"
WRITE_DIR_ENV = "AUTOEFF_REFUSED_DOC_DIR"  # set by --write-doc: rows record their message instead of comparing
AUTOEFF_BIN = Path(sys.executable).parent / "autoeff"
EXIT_USAGE = 2

# the study fixture's settings; rows that meet that study repeat them so only the named difference differs
STUDY_FLAGS = ["--trials", "1", "--proxy-samples", "16", "--final-samples", "32", "--max-steps", "10",
               "--sampler", "random", "--top-k", "2"]


@dataclass(frozen=True)
class Row:
    """One refused input. `args` may use {tmp} (the test's folder), {out} ({tmp}/out, never created),
    {study} (a copy of a small finished study), {export} (a copy of an exported folder), {trial} (a completed
    trial of {study}). `setup(tmp)` prepares the files the row needs."""

    id: str
    what: str
    args: tuple[str, ...]
    setup: Callable[[Path], None] | None = None
    via: str = "runner"  # or "subprocess": the installed console script
    needs: tuple[str, ...] = ()  # "study", "export"
    measured: str | None = None  # a regex of figures measured at run time, shown as <measured> in the doc
    env: tuple[tuple[str, str], ...] = ()  # environment over the default (offline, an empty HF_HOME in {tmp})


def _opt(*extra: str) -> tuple[str, ...]:
    return ("optimize", "--model", "digits", "--out", "{out}", *extra)


def _budget(value: str) -> tuple[str, ...]:
    return _opt("--budget", value)


def _write(rel: str, data: bytes | str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def _foreign_sqlite(tmp: Path) -> None:
    with sqlite3.connect(tmp / "app.db") as con:
        con.execute("CREATE TABLE notes (body TEXT)")
        con.execute("INSERT INTO notes VALUES ('mine')")


def _older_objective(tmp: Path) -> None:
    """The study as an autoeff before the raw-metric objective left it: no `objective` attribute."""
    with sqlite3.connect(tmp / "study" / "study.db") as con:
        con.execute("DELETE FROM study_user_attributes WHERE key = 'objective'")


def _flip_weights_byte(tmp: Path) -> None:
    w = next((tmp / "optimized" / "unet").glob("*.safetensors"))
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))


def _edit_autoeff_json(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        folder = tmp / "optimized"
        info = json.loads((folder / "autoeff.json").read_text())
        edit(info)
        (folder / "autoeff.json").write_text(json.dumps(info))
        man = json.loads((folder / "manifest.json").read_text())
        man["sha256"]["autoeff.json"] = hashlib.sha256((folder / "autoeff.json").read_bytes()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps(man))
    return setup


def _edit_manifest(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        man_path = tmp / "optimized" / "manifest.json"
        man = json.loads(man_path.read_text())
        edit(man["sha256"])
        man_path.write_text(json.dumps(man))
    return setup


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _edit_component_json(rel: str, edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """Change a JSON file of the export (and its manifest digest to match: only autoeff's checks can object)."""
    def setup(tmp: Path) -> None:
        folder = tmp / "optimized"
        data = json.loads((folder / rel).read_text())
        edit(data)
        (folder / rel).write_text(json.dumps(data))
        man = json.loads((folder / "manifest.json").read_text())
        man["sha256"][rel] = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps(man))
    return setup


def _user_pipeline(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """A user's own digits-architecture pipeline saved with save_pretrained, its U-Net config then edited."""
    def setup(tmp: Path) -> None:
        import torch

        from autoeff.models.digits.architectures import build_scheduler, build_unet
        from autoeff.models.digits.pipeline import DigitsPipeline

        torch.manual_seed(0)
        DigitsPipeline(unet=build_unet(), scheduler=build_scheduler()).save_pretrained(tmp / "mine")
        cfg_path = tmp / "mine" / "unet" / "config.json"
        cfg = json.loads(cfg_path.read_text())
        edit(cfg)
        cfg_path.write_text(json.dumps(cfg))
    return setup


def _score_sde_pipeline(tmp: Path) -> None:
    """A Score-SDE VE pipeline (Song et al., 2021): neither a DDPM-family nor a flow-matching scheduler."""
    import torch
    from diffusers import ScoreSdeVePipeline, ScoreSdeVeScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    ScoreSdeVePipeline(unet=unet, scheduler=ScoreSdeVeScheduler()).save_pretrained(tmp / "sde")


def _mixed_images(tmp: Path) -> None:
    from PIL import Image

    (tmp / "real").mkdir()
    Image.new("RGB", (16, 16)).save(tmp / "real" / "a.png")
    Image.new("RGB", (32, 32)).save(tmp / "real" / "b.png")


def _escaping_manifest(tmp: Path) -> None:
    (tmp / "x").write_text("outside the export")
    man_path = tmp / "optimized" / "manifest.json"
    man = json.loads(man_path.read_text())
    man["sha256"]["../x"] = hashlib.sha256(b"outside the export").hexdigest()
    man_path.write_text(json.dumps(man))


ROWS: list[Row] = [
    # -- the budget
    Row("budget-no-unit", "a budget without a unit", _budget("200"), via="subprocess"),
    Row("budget-negative", "a negative budget", _budget("-5ms")),
    Row("budget-zero", "a zero budget", _budget("0ms")),
    Row("budget-word", "a word for a budget", _budget("fastest")),
    Row("budget-huge", "a budget of 11 days", _budget("1e9ms")),
    Row("budget-percent-typo", "a doubled percent sign", _budget("5%%")),
    Row("budget-nan", "not a number", _budget("nan ms")),
    Row("budget-percent-huge", "more than 10x the baseline", _budget("1001%")),
    Row("budget-missing", "no budget", ("optimize", "--model", "digits", "--out", "{out}")),
    Row("budget-tiny", "a budget below 0.1 ms (a typo)", _budget("1e-9s")),
    Row("budget-percent-tiny", "a budget below 0.1% of the baseline", _budget("0.01%")),
    # -- the model
    Row("model-unknown", "an unknown model name", ("optimize", "--model", "sd3", "--budget", "10%", "--out",
                                                 "{out}")),
    Row("model-not-pipeline", "a folder that is not a pipeline",
        ("optimize", "--model", "{tmp}/notes", "--budget", "10%", "--out", "{out}"),
        setup=_write("notes/readme.txt", "hello")),
    Row("model-not-cached", "a hub model not in the local Hugging Face cache, offline (HF_HUB_OFFLINE=1, "
        "HF_HOME={tmp}/hf, empty)", ("optimize", "--model", "sdxl", "--budget", "10%", "--out", "{out}")),
    Row("model-hub-unreachable", "a hub model not cached when the Hub cannot be reached (HF_ENDPOINT="
        "http://127.0.0.1:9)", ("optimize", "--model", "someone/tiny-sd", "--budget", "10%", "--out", "{out}"),
        via="subprocess", env=(("HF_HUB_OFFLINE", "0"), ("HF_ENDPOINT", "http://127.0.0.1:9"))),
    Row("model-path-missing", "--model-path that does not exist",
        ("optimize", "--model", "sd15", "--model-path", "{tmp}/nowhere", "--budget", "10%", "--out", "{out}")),
    # -- the device
    Row("device-cuda", "--device cuda on a machine without CUDA", _opt("--budget", "10%", "--device", "cuda")),
    Row("device-tpu", "a device autoeff cannot measure on", _opt("--budget", "10%", "--device", "tpu")),
    # -- counts and choices
    Row("trials-zero", "--trials 0", _opt("--budget", "10%", "--trials", "0")),
    Row("trials-negative", "--trials -3", _opt("--budget", "10%", "--trials", "-3")),
    Row("trials-word", "--trials that is not a number", _opt("--budget", "10%", "--trials", "many")),
    Row("recover-steps-negative", "--recover-steps -5", _opt("--budget", "10%", "--recover-steps", "-5")),
    Row("space-unknown-knob", "an unknown knob in --space", _opt("--budget", "10%", "--space", "solver,warp")),
    Row("space-empty", "an empty --space", _opt("--budget", "10%", "--space", "")),
    Row("metric-unknown", "an unknown metric", _opt("--budget", "10%", "--metric", "bogus")),
    Row("metric-wrong-model", "the CLIP score for a class-conditional model",
        _opt("--budget", "10%", "--metric", "clip")),
    Row("sampler-unknown", "an unknown sampler", _opt("--budget", "10%", "--sampler", "grid")),
    Row("batch-zero", "--batch 0", _opt("--budget", "10%", "--batch", "0")),
    Row("proxy-samples-one", "one image per trial", _opt("--budget", "10%", "--proxy-samples", "1")),
    Row("final-below-proxy", "fewer final images than proxy images",
        _opt("--budget", "10%", "--proxy-samples", "64", "--final-samples", "32")),
    Row("steps-empty-range", "--min-steps above --max-steps",
        _opt("--budget", "10%", "--min-steps", "20", "--max-steps", "10")),
    Row("top-k-zero", "--top-k 0", _opt("--budget", "10%", "--top-k", "0")),
    Row("trial-timeout-negative", "a negative --trial-timeout", _opt("--budget", "10%", "--trial-timeout", "-1")),
    Row("threads-zero", "--threads 0", _opt("--budget", "10%", "--threads", "0")),
    Row("seed-negative", "a negative --seed", _opt("--budget", "10%", "--seed", "-1")),
    Row("seed-huge", "a --seed of 2^32 (beyond numpy's and torch's seeds)", _opt("--budget", "10%", "--seed",
                                                                                "4294967296")),
    Row("batch-huge", "--batch of a million images per call", _opt("--budget", "10%", "--batch", "1000000")),
    Row("steps-above-training", "--max-steps above the model's 1000 training timesteps",
        _opt("--budget", "10%", "--max-steps", "1500")),
    Row("heartbeat-zero", "--heartbeat-interval 0", _opt("--budget", "10%", "--heartbeat-interval", "0")),
    Row("grace-short", "a grace period shorter than the heartbeat interval",
        _opt("--budget", "10%", "--grace-period", "5")),
    Row("study-name-long", "a --study-name of 300 characters", _opt("--budget", "10%", "--study-name", "s" * 300)),
    Row("model-folder-bad-config", "a user's pipeline folder whose U-Net config asks for sample_size 200000",
        ("optimize", "--model", "{tmp}/mine", "--budget", "10%", "--out", "{out}"),
        setup=_user_pipeline(lambda c: c.update(sample_size=200000))),
    Row("model-folder-negative-channels", "a user's pipeline folder with negative channel counts",
        ("optimize", "--model", "{tmp}/mine", "--budget", "10%", "--out", "{out}"),
        setup=_user_pipeline(lambda c: c.update(block_out_channels=[-32, 64, 64]))),
    Row("model-folder-class-list", "a pipeline folder whose _class_name is a list",
        ("optimize", "--model", "{tmp}/mine", "--budget", "10%", "--out", "{out}"),
        setup=_write("mine/model_index.json", '{"_class_name": ["DigitsPipeline"]}')),
    Row("model-folder-uncovered", "a user's pipeline of a kind autoeff does not cover (Score-SDE VE)",
        ("optimize", "--model", "{tmp}/sde", "--budget", "10%", "--out", "{out}"), setup=_score_sde_pipeline),
    # -- the workload
    Row("prompts-empty", "a prompts file with no prompt in it", _opt("--budget", "10%", "--prompts", "{tmp}/p.txt"),
        setup=_write("p.txt", "\n   \n\n")),
    Row("prompts-not-text", "a prompts file that is not text", _opt("--budget", "10%", "--prompts", "{tmp}/p.txt"),
        setup=_write("p.txt", b"\x89PNG\r\n\x1a\n\xff\xfe\x00")),
    Row("prompts-model-takes-none", "prompts for a model that takes none (class-conditional digits)",
        _opt("--budget", "10%", "--prompts", "{tmp}/p.txt"), setup=_write("p.txt", "a cat\n")),
    Row("labels-out-of-range", "class labels beyond the model's classes (digits has 10)",
        _opt("--budget", "10%", "--labels", "3,12")),
    Row("reference-no-images", "a reference folder with no images in it",
        _opt("--budget", "10%", "--reference", "{tmp}/real"), setup=_write("real/notes.txt", "no images here")),
    Row("reference-mixed-sizes", "a reference folder of images of mixed sizes",
        _opt("--budget", "10%", "--reference", "{tmp}/real"), setup=_mixed_images),
    # -- where the study is kept
    Row("storage-unknown-scheme", "a storage URL of no known database",
        _opt("--budget", "10%", "--storage", "foo://x")),
    Row("storage-missing-folder", "a SQLite file in a folder that does not exist",
        _opt("--budget", "10%", "--storage", "sqlite:////nonexistent/dir/x.db")),
    Row("storage-text-file", "a SQLite URL naming a text file",
        _opt("--budget", "10%", "--storage", "sqlite:///{tmp}/notes.db"), setup=_write("notes.db", "my notes\n")),
    Row("storage-random-bytes", "a SQLite URL naming random bytes",
        _opt("--budget", "10%", "--storage", "sqlite:///{tmp}/noise.db"),
        setup=_write("noise.db", bytes(range(256)) * 16)),
    Row("storage-foreign-sqlite", "another program's SQLite database",
        _opt("--budget", "10%", "--storage", "sqlite:///{tmp}/app.db"), setup=_foreign_sqlite),
    Row("storage-in-memory", "an in-memory SQLite URL", _opt("--budget", "10%", "--storage", "sqlite://")),
    Row("storage-unwritable-folder", "a new SQLite file in a folder no one can write (/proc)",
        _opt("--budget", "10%", "--storage", "sqlite:////proc/autoeff.db")),
    Row("out-unwritable", "an --out folder that cannot be created (/proc)",
        ("optimize", "--model", "digits", "--budget", "10%", "--out", "/proc/autoeff-out")),
    Row("out-inside-export", "--out inside an exported folder",
        ("optimize", "--model", "digits", "--budget", "10%", "--out", "{export}/run"), needs=("export",)),
    Row("out-study-db-garbage", "an --out folder whose study.db is not a database",
        ("optimize", "--model", "digits", "--budget", "10%", "--out", "{tmp}/run"),
        setup=_write("run/study.db", "not a database")),
    Row("study-other-budget", "resuming a study with another budget",
        ("optimize", "--model", "digits", "--budget", "50%", "--out", "{study}", *STUDY_FLAGS), needs=("study",)),
    Row("study-other-model", "resuming a study with another model",
        ("optimize", "--model", "digits-dit", "--budget", "1000%", "--out", "{study}", *STUDY_FLAGS),
        needs=("study",)),
    Row("config-unknown-key", "a --config file with an unknown key (trails)",
        ("optimize", "--config", "{tmp}/run.toml", "--out", "{out}"),
        setup=_write("run.toml", 'model = "digits"\nbudget = "10%"\ntrails = 3\n')),
    Row("config-not-toml", "a --config file that is not TOML", ("optimize", "--config", "{tmp}/run.toml"),
        setup=_write("run.toml", "model: [digits\n")),
    Row("config-wrong-suffix", "a --config file of another kind (.txt)", ("optimize", "--config", "{tmp}/run.txt"),
        setup=_write("run.txt", "model = 'digits'\n")),
    Row("config-missing-budget", "a --config file without a budget", ("optimize", "--config", "{tmp}/run.toml",
                                                                      "--out", "{out}"),
        setup=_write("run.toml", 'model = "digits"\n')),
    Row("mlflow-uri-unwritable", "an MLflow tracking URI that cannot be written",
        _opt("--budget", "10%", "--mlflow-uri", "sqlite:////proc/mlflow.db")),
    Row("mlflow-folder-store", "an MLflow folder store (refused by MLflow 3)",
        _opt("--budget", "10%", "--mlflow-uri", "{tmp}/mlruns")),
    Row("log-file-unwritable", "a --log-file that cannot be written",
        _opt("--budget", "10%", "--log-file", "/proc/autoeff.log")),
    Row("study-older-objective", "resuming a study an older autoeff made (trial values -FID, placeholders)",
        ("optimize", "--model", "digits", "--budget", "1000%", "--out", "{study}", *STUDY_FLAGS), needs=("study",),
        setup=_older_objective),
    Row("out-is-a-file", "--out naming an existing file", ("optimize", "--model", "digits", "--budget", "10%",
                                                          "--out", "{tmp}/file.txt"), setup=_write("file.txt", "x")),
    # -- show / export
    Row("show-no-study", "show on a folder with no study", ("show", "--out", "{tmp}/empty"),
        setup=lambda tmp: (tmp / "empty").mkdir()),
    Row("show-other-study-name", "show with a study name that is not there",
        ("show", "--out", "{study}", "--study-name", "other"), needs=("study",)),
    Row("export-trial-missing", "export of a trial that did not complete",
        ("export", "--out", "{study}", "--trial", "999", "--to", "{tmp}/dest"), needs=("study",)),
    Row("export-into-foreign-folder", "export into a folder of other files",
        ("export", "--out", "{study}", "--trial", "{trial}", "--to", "{tmp}/mine"), needs=("study",),
        setup=_write("mine/notes.txt", "keep me")),
    Row("export-into-doctored-export", "export over an export holding a file the user added (notes.txt)",
        ("export", "--out", "{study}", "--trial", "{trial}", "--to", "{export}"), needs=("study", "export"),
        setup=_write("optimized/notes.txt", "my notes")),
    Row("export-into-fake-export", "export into a folder that only claims to be one (an empty autoeff.json)",
        ("export", "--out", "{study}", "--trial", "{trial}", "--to", "{tmp}/d"), needs=("study",),
        setup=lambda tmp: (_write("d/notes.txt", "keep me")(tmp), _write("d/autoeff.json", "{}")(tmp))),
    Row("export-to-unwritable", "export into a folder that cannot be created (/proc)",
        ("export", "--out", "{study}", "--trial", "{trial}", "--to", "/proc/autoeff-export"), needs=("study",)),
    Row("export-budget-unmet", "export by a budget no stored candidate meets",
        ("export", "--out", "{study}", "--budget", "0.1ms", "--to", "{tmp}/dest"), needs=("study",),
        measured=r"\d+\.\d ms \(trial \d+\)"),
    Row("export-trial-and-budget", "export with both --trial and --budget",
        ("export", "--out", "{study}", "--trial", "0", "--budget", "10ms", "--to", "{tmp}/dest"), needs=("study",)),
    Row("export-no-study", "export from a folder with no study",
        ("export", "--out", "{tmp}/empty", "--trial", "0", "--to", "{tmp}/dest"),
        setup=lambda tmp: (tmp / "empty").mkdir()),
    # -- bench (and so autoeff.load) on exported folders
    Row("bench-flipped-byte", "an export whose weights were modified (one byte flipped)",
        ("bench", "{export}"), setup=_flip_weights_byte, needs=("export",), via="subprocess"),
    Row("bench-deleted-file", "an export with a file deleted", ("bench", "{export}"), needs=("export",),
        setup=lambda tmp: (tmp / "optimized" / "scheduler" / "scheduler_config.json").unlink()),
    Row("bench-not-an-export", "a folder that is not an export", ("bench", "{tmp}/notes"),
        setup=_write("notes/model_index.json", "{}")),
    Row("bench-unknown-field", "autoeff.json with an unknown field (manifest updated to match)",
        ("bench", "{export}"), needs=("export",), setup=_edit_autoeff_json(lambda i: i.update(comment="x"))),
    Row("bench-newer-export-schema", "autoeff.json from a newer autoeff", ("bench", "{export}"), needs=("export",),
        setup=_edit_autoeff_json(lambda i: i.update(export_schema_version=99))),
    Row("bench-unknown-knob", "a recipe with an unknown knob", ("bench", "{export}"), needs=("export",),
        setup=_edit_autoeff_json(lambda i: i["recipe"]["knobs"].update(
            warp={"_type": "Config", "_version": 1, "_data": {}}))),
    Row("bench-newer-recipe", "a recipe from a newer autoeff", ("bench", "{export}"), needs=("export",),
        setup=_edit_autoeff_json(lambda i: i["recipe"].update(schema_version=99))),
    Row("bench-manifest-escapes", "a manifest entry outside the folder (../x)", ("bench", "{export}"),
        needs=("export",), setup=_escaping_manifest),
    Row("bench-manifest-nul", "a manifest entry with a NUL character", ("bench", "{export}"), needs=("export",),
        setup=_edit_manifest(lambda m: m.update({"a\x00b": "0" * 64}))),
    Row("bench-manifest-long-name", "a manifest entry with a 300-character name", ("bench", "{export}"),
        needs=("export",), setup=_edit_manifest(lambda m: m.update({"x" * 300: "0" * 64}))),
    Row("bench-deeply-nested", "autoeff.json with a value nested 100 levels deep", ("bench", "{export}"),
        needs=("export",), setup=_edit_autoeff_json(lambda i: i["measured"].update(recovery={"x": _nested(100)}))),
    Row("bench-extra-not-object", "autoeff.json model.extra that is a string", ("bench", "{export}"),
        needs=("export",), setup=_edit_autoeff_json(lambda i: i["model"].update(extra="abc"))),
    Row("bench-batch-word", "autoeff.json measured.batch_size that is a word", ("bench", "{export}"),
        needs=("export",), setup=_edit_autoeff_json(lambda i: i["measured"].update(batch_size="x"))),
    Row("bench-resolution-negative", "autoeff.json model.resolution -1", ("bench", "{export}"), needs=("export",),
        setup=_edit_autoeff_json(lambda i: i["model"].update(resolution=-1))),
    Row("bench-resolution-huge", "autoeff.json model.resolution 200000 (a 160 GB tensor)", ("bench", "{export}"),
        needs=("export",), setup=_edit_autoeff_json(lambda i: i["model"].update(resolution=200000))),
    Row("bench-family-mismatch", "autoeff.json claiming another family than the folder's pipeline (sdxl)",
        ("bench", "{export}"), needs=("export",),
        setup=_edit_autoeff_json(lambda i: (i["model"].update(family="sdxl"), i["context"].update(family="sdxl")))),
    Row("bench-classes-beyond-model", "autoeff.json asking for 11 classes of a 10-digit model", ("bench", "{export}"),
        needs=("export",), setup=_edit_autoeff_json(lambda i: i["model"].update(num_classes=11))),
    Row("bench-extra-reserved", "autoeff.json model.extra setting an argument autoeff passes itself",
        ("bench", "{export}"), needs=("export",),
        setup=_edit_autoeff_json(lambda i: i["model"].update(extra={"num_inference_steps": 5}))),
    Row("bench-recipe-steps-huge", "a recipe asking for 100000 steps of a 1000-timestep model", ("bench", "{export}"),
        needs=("export",),
        setup=_edit_autoeff_json(lambda i: i["recipe"]["knobs"]["schedule"]["_data"].update(steps=100000))),
    Row("bench-scheduler-negative", "a scheduler config with num_train_timesteps -5 (manifest updated)",
        ("bench", "{export}"), needs=("export",),
        setup=_edit_component_json("scheduler/scheduler_config.json", lambda c: c.update(num_train_timesteps=-5))),
    Row("bench-unet-wrong-type", "a U-Net config whose in_channels is a string (manifest updated)",
        ("bench", "{export}"), needs=("export",),
        setup=_edit_component_json("unet/config.json", lambda c: c.update(in_channels="one"))),
    Row("bench-class-name-list", "model_index.json whose _class_name is a list (manifest updated)",
        ("bench", "{export}"), needs=("export",),
        setup=_edit_component_json("model_index.json", lambda c: c.update(_class_name=["DigitsPipeline"]))),
    Row("bench-samples-one", "bench --samples 1", ("bench", "{export}", "--samples", "1"), needs=("export",)),
    Row("bench-device-tpu", "bench --device tpu", ("bench", "{export}", "--device", "tpu"), needs=("export",)),
    Row("bench-reference-nowhere", "bench --reference naming no folder",
        ("bench", "{export}", "--reference", "{tmp}/nowhere"), needs=("export",)),
    # -- generate and the command itself
    Row("generate-n-zero", "generate --n 0", ("generate", "--n", "0", "--out", "{tmp}/x.png")),
    Row("generate-steps-zero", "generate --steps 0", ("generate", "--steps", "0", "--out", "{tmp}/x.png")),
    Row("generate-n-huge", "generate --n 100000", ("generate", "--n", "100000", "--out", "{tmp}/x.png")),
    Row("generate-steps-above-training", "generate --steps above the model's training timesteps",
        ("generate", "--steps", "1500", "--out", "{tmp}/x.png")),
    Row("generate-out-not-png", "generate --out naming a .txt file", ("generate", "--out", "{tmp}/x.txt")),
    Row("generate-export-without-autoeff-json", "generate from an export whose autoeff.json was deleted and "
        "weights changed", ("generate", "--model", "{export}", "--out", "{tmp}/x.png"), needs=("export",),
        setup=lambda tmp: ((tmp / "optimized" / "autoeff.json").unlink(), _flip_weights_byte(tmp))),
    Row("generate-model-unknown", "generate from an unknown model",
        ("generate", "--model", "sd3", "--out", "{tmp}/x.png")),
    Row("command-unknown", "an unknown command", ("frobnicate",)),
]


# -- fixtures: one small study and one exported folder per test session, copied per row --------------------
@pytest.fixture(scope="module")
def study_source(tmp_path_factory) -> tuple[Path, int]:
    """A finished one-trial study on the trained digits model, made through the API."""
    import autoeff
    from autoeff.api import optimize

    handle = autoeff.load_model("digits")
    handle.default_steps = 10
    out = tmp_path_factory.mktemp("study") / "study"
    res = optimize(handle, budget="1000%", trials=1, out=out, export=False, proxy_samples=16, final_samples=32,
                   max_steps=10, min_steps=2, top_k=2, sampler="random")
    assert res.records, "the study fixture needs a completed trial"
    return out, res.records[0].number


@pytest.fixture(scope="module")
def export_source(tmp_path_factory) -> Path:
    """A folder exported from a hand-made recipe (no search): the trained digits model, DPM-Solver++ 2M."""
    from conftest import make_digits_export

    return make_digits_export(tmp_path_factory.mktemp("export") / "optimized")


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with its content hash (folders and links too)."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def command_text(args: tuple[str, ...] | list[str]) -> str:
    return "autoeff " + " ".join(shlex.quote(a) for a in args)


def doc_line(row: Row, message: str, code: int) -> str:
    cells = [row.id, row.what.replace("{tmp}", "<tmp>"), f"`{command_text(display_args(row))}`",
             message.replace("|", "\\|"), str(code)]
    return "| " + " | ".join(cells) + " |"


def display_args(row: Row) -> list[str]:
    subs = {"tmp": "<tmp>", "out": "<tmp>/out", "study": "<tmp>/study", "export": "<tmp>/optimized",
            "trial": "<trial>"}
    return [a.format(**subs) for a in row.args]


def render_doc(results: dict[str, tuple[str, int]]) -> str:
    lines = [
        "# Refused inputs",
        "",
        "What `autoeff` prints for each kind of bad input. Every refusal is one line on stderr starting with",
        "`error:`, exit status 2, no traceback, and nothing is written: no --out folder, no study.db, no change",
        "to an existing study or export. Validation runs before the model is loaded or any output is created;",
        "a run that still fails before its first trial removes the --out folder (or SQLite file) it created,",
        "never one that existed before.",
        "",
        "Generated from `ROWS` in `tests/test_refused_inputs.py`, which runs every row and checks these",
        "messages against this file (`.venv/bin/python tests/test_refused_inputs.py --write-doc` rewrites it).",
        "`<tmp>` is the test's temporary folder.",
        "",
        "The Python API refuses the same folders: `autoeff.load(folder)` raises `autoeff.export.ExportError` with",
        "the message shown for `autoeff bench` (see `tests/test_export_integrity.py`), and",
        "`autoeff.recipe.Recipe.from_json` raises `ConfigError` (see `tests/test_recipe.py`).",
        "",
        "| id | input | command | message printed (stderr) | exit |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in ROWS:
        message, code = results[row.id]
        lines.append(doc_line(row, message, code))
    return "\n".join(lines) + "\n"


README = ROOT / "README.md"
README_START, README_END = "<!-- refused:start -->", "<!-- refused:end -->"


def doc_rows(doc: str) -> list[list[str]]:
    """The table rows of docs/refused-inputs.md as cells: id, input, command, message, exit."""
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in doc.splitlines()
            if line.startswith("| ") and not line.startswith(("| id ", "| --- "))]


def render_readme_table(doc: str) -> str:
    """The README's copy of the table: what was refused and the one line printed (every row exits 2)."""
    lines = [README_START, "", "| refused input | what autoeff prints (stderr, exit 2) |", "| --- | --- |"]
    lines += [f"| {cells[1]} | {cells[3]} |" for cells in doc_rows(doc)]
    return "\n".join([*lines, "", README_END])


def readme_section(text: str) -> str:
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    return text[start:end]


def test_the_readme_table_is_the_doc_table():
    assert readme_section(README.read_text()) == render_readme_table(DOC.read_text()), (
        "regenerate: python tests/test_refused_inputs.py --write-doc")
    assert all(cells[4] == "2" for cells in doc_rows(DOC.read_text()))


def doc_ids() -> list[str]:
    ids = []
    for line in DOC.read_text().splitlines():
        if line.startswith("| ") and not line.startswith(("| id ", "| --- ")):
            ids.append(line.split(" | ")[0].removeprefix("| ").strip())
    return ids


def test_the_doc_lists_exactly_the_tested_rows():
    assert len(ROWS) >= 20 and len({r.id for r in ROWS}) == len(ROWS)
    assert doc_ids() == [r.id for r in ROWS], f"regenerate {DOC.name}: python tests/test_refused_inputs.py --write-doc"


def _run(row: Row, args: list[str], tmp: Path) -> tuple[int, str, str, str | None]:
    """(exit status, stdout, stderr, traceback-or-None) of one CLI run in `tmp`."""
    env = {"HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1", "AUTOEFF_CACHE_DIR": str(tmp.parent / "cache"),
           **dict(row.env)}
    if row.via == "subprocess":
        p = subprocess.run([str(AUTOEFF_BIN), *args], cwd=tmp, env={**os.environ, **env}, capture_output=True,
                           text=True, timeout=300)
        return p.returncode, p.stdout, p.stderr, None
    from click.testing import CliRunner

    from autoeff.cli import main

    res = CliRunner().invoke(main, args, prog_name="autoeff", env=env)
    tb = None
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(res.exception))
    return res.exit_code, res.stdout, res.stderr, tb


# rows that meet the study share a module fixture that runs a one-trial search (~10 s on 2 busy cores)
@pytest.mark.parametrize("row", [pytest.param(r, marks=[pytest.mark.slow] if "study" in r.needs else [])
                                 for r in ROWS], ids=[r.id for r in ROWS])
def test_refused(row: Row, tmp_path: Path, request, monkeypatch):
    tmp = tmp_path / "t"
    tmp.mkdir()
    subs = {"tmp": str(tmp), "out": str(tmp / "out"), "study": str(tmp / "study"),
            "export": str(tmp / "optimized"), "trial": "0"}
    if "study" in row.needs:
        src, subs["trial"] = request.getfixturevalue("study_source")
        shutil.copytree(src, tmp / "study")
        subs["trial"] = str(subs["trial"])
    if "export" in row.needs:
        shutil.copytree(request.getfixturevalue("export_source"), tmp / "optimized")
    if row.setup is not None:
        row.setup(tmp)
    monkeypatch.chdir(tmp)  # anything written relative to the working folder shows in the snapshot too
    before = snapshot(tmp)
    args = [a.format(**subs) for a in row.args]

    code, stdout, stderr, tb = _run(row, args, tmp)

    assert tb is None, f"{command_text(args)} raised:\n{tb}"
    assert "Traceback" not in stderr + stdout, stderr
    assert code == EXIT_USAGE, f"exit {code}; stderr:\n{stderr}\nstdout:\n{stdout}"
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr is not one error line:\n{stderr}"
    assert stdout == ""
    assert snapshot(tmp) == before, "a refused input changed the folder"
    assert not (tmp / "out").exists()

    message = lines[0].replace(str(tmp), "<tmp>")
    if row.measured is not None:
        assert re.search(row.measured, message), f"{message!r} does not name the measured figure"
        message = re.sub(row.measured, "<measured>", message)
    if os.environ.get(WRITE_DIR_ENV):
        (Path(os.environ[WRITE_DIR_ENV]) / f"{row.id}.json").write_text(json.dumps([message, code]))
        return
    expected = doc_line(row, message, code)
    assert expected in DOC.read_text().splitlines(), (
        f"docs/refused-inputs.md has no row\n{expected}\nregenerate it: python tests/test_refused_inputs.py "
        "--write-doc")


@pytest.mark.slow
def test_refused_study_is_unchanged_in_storage(study_source, tmp_path):
    """Beyond identical bytes: the study reads back with the same trials and attributes after a refusal."""
    import optuna

    from autoeff.cli import main

    src, _ = study_source
    shutil.copytree(src, tmp_path / "study")
    url = f"sqlite:///{tmp_path / 'study' / 'study.db'}"

    def state() -> tuple:
        s = optuna.load_study(study_name="autoeff", storage=url)
        return ([(t.number, t.state.name, t.values) for t in s.get_trials()], s.user_attrs)

    before = state()
    from click.testing import CliRunner

    res = CliRunner().invoke(main, ["optimize", "--model", "digits", "--budget", "20ms", "--out",
                                    str(tmp_path / "study"), *STUDY_FLAGS], prog_name="autoeff")
    assert res.exit_code == EXIT_USAGE and "was made for --budget 1000%, not 20ms" in res.stderr
    assert state() == before


def _write_doc() -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        rc = subprocess.call([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x",
                              f"{Path(__file__)}::test_refused"], cwd=ROOT,
                             env={**os.environ, WRITE_DIR_ENV: d})
        results = {p.stem: tuple(json.loads(p.read_text())) for p in Path(d).glob("*.json")}
    missing = [r.id for r in ROWS if r.id not in results]
    if rc != 0 or missing:
        print(f"not written: pytest exit {rc}; rows without a result: {missing}", file=sys.stderr)
        return 1
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render_doc(results))  # type: ignore[arg-type]
    text = README.read_text()
    README.write_text(text.replace(readme_section(text), render_readme_table(DOC.read_text())))
    print(f"wrote {DOC} and its table in {README.name} ({len(ROWS)} rows)")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-doc"]:
        sys.exit("usage: python tests/test_refused_inputs.py --write-doc")
    sys.exit(_write_doc())
