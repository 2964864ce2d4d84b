"""Models from the Hub like diffusers (issue 15, item 8), tested against a local stand-in for the Hub
(`tests/hub_server.py`): nothing here touches the internet.

Each load runs in a fresh process: huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoeff.models.registry import HUB_ALIASES
from autoeff.models.tiny import build_tiny_sd15
from tests.hub_server import LocalHub

SCRIPT = """
import json, sys
from autoeff.models.registry import ModelNotAvailableError, load_model
out = {}
for spec in sys.argv[1:]:
    try:
        handle = load_model(spec)
        out[spec] = {"family": handle.family, "identity": handle.identity}
    except ModelNotAvailableError as e:
        out[spec] = {"error": str(e)}
print(json.dumps(out))
"""


def _load(specs: list[str], tmp: Path, **env: str) -> dict:
    """`load_model` of each spec in a fresh process with an empty (or the test's) HF_HOME and `env`."""
    full = {**os.environ, "HF_HOME": str(tmp / "hf"), **env}
    p = subprocess.run([sys.executable, "-c", SCRIPT, *specs], env=full, capture_output=True, text=True,
                       timeout=300, cwd=tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Repositories the local Hub serves: a tiny SD1.5 pipeline (with a pickled copy of its U-Net weights
    beside the safetensors), one with only pickled weights, and one naming its own pipeline code."""
    tmp = tmp_path_factory.mktemp("repos")
    good = tmp / "good"
    build_tiny_sd15().pipeline.save_pretrained(good, safe_serialization=True)
    torch.save({}, good / "unet" / "diffusion_pytorch_model.bin")
    pickled = tmp / "pickled"
    build_tiny_sd15().pipeline.save_pretrained(pickled, safe_serialization=False)
    remote = tmp / "remote"
    build_tiny_sd15().pipeline.save_pretrained(remote, safe_serialization=True)
    index = json.loads((remote / "model_index.json").read_text())
    index["_class_name"] = ["my_pipeline", "MyPipeline"]
    (remote / "model_index.json").write_text(json.dumps(index))
    marker = tmp / "remote-code-ran"
    (remote / "my_pipeline.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return {"good": good, "pickled": pickled, "remote": remote, "marker": marker}


def test_a_hub_id_not_cached_downloads_safetensors_only_and_then_loads_offline(repos, tmp_path):
    alias_repo = HUB_ALIASES["sd15"][0]
    served = {"someone/tiny-sd": repos["good"], alias_repo: repos["good"]}
    with LocalHub(served) as hub:
        got = _load(["someone/tiny-sd", "sd15"], tmp_path, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
        fetched = hub.fetched()
    assert got["someone/tiny-sd"]["family"] == "sd15" and got["sd15"]["family"] == "sd15"
    # the same weights as the folder itself, whichever name reached them
    from autoeff.models.registry import load_model

    identity = load_model(str(repos["good"])).identity
    assert got["someone/tiny-sd"]["identity"] == identity == got["sd15"]["identity"]
    assert "unet/diffusion_pytorch_model.safetensors" in fetched
    assert not [f for f in fetched if f.endswith(".bin")], fetched  # pickled weights are never fetched
    # now cached: offline, with no Hub at all, the same model loads; one never fetched is refused in one line
    again = _load(["someone/tiny-sd", "someone/never-fetched"], tmp_path, HF_ENDPOINT="http://127.0.0.1:9",
                  HF_HUB_OFFLINE="1")
    assert again["someone/tiny-sd"]["identity"] == identity
    refused = again["someone/never-fetched"]["error"]
    assert "downloads are off (HF_HUB_OFFLINE=1 or --offline)" in refused and "\n" not in refused


def test_what_cannot_be_had_is_refused_in_one_line_and_no_remote_code_runs(repos, tmp_path):
    served = {"someone/pickled": repos["pickled"], "someone/remote": repos["remote"]}
    with LocalHub(served) as hub:
        got = _load(["someone/pickled", "someone/remote", "someone/missing"], tmp_path, HF_ENDPOINT=hub.url,
                    HF_HUB_OFFLINE="0")
    for spec, result in got.items():
        assert "error" in result and "\n" not in result["error"], (spec, result)
        assert result["error"].startswith(f"{spec} could not be downloaded from http://127.0.0.1:"), result
    assert "safetensors" in got["someone/pickled"]["error"]
    assert "trust_remote_code" in got["someone/remote"]["error"] or "custom" in got["someone/remote"]["error"]
    assert "Repository Not Found" in got["someone/missing"]["error"] or "404" in got["someone/missing"]["error"]
    assert not repos["marker"].exists()  # the repository's code was never imported


def test_the_offline_flag_never_asks_the_hub_and_by_default_the_cli_downloads(repos, tmp_path):
    with LocalHub({"someone/tiny-sd": repos["good"]}) as hub:
        env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        autoeff_cli = str(Path(sys.executable).parent / "autoeff")
        cli = subprocess.run([autoeff_cli, "generate", "--model", "someone/tiny-sd", "--offline", "--n", "1",
                              "--out", str(tmp_path / "x.png")], env=env, capture_output=True, text=True, timeout=300)
        asked = list(hub.requests)
        env.pop("HF_HUB_OFFLINE")  # as a user's shell has it: the CLI downloads like diffusers' from_pretrained
        fetched = subprocess.run([autoeff_cli, "generate", "--model", "someone/tiny-sd", "--n", "1",
                                  "--out", str(tmp_path / "y.png")], env=env, capture_output=True, text=True,
                                 timeout=300)
    assert cli.returncode == 2 and "downloads are off" in cli.stderr and len(cli.stderr.splitlines()) == 1
    assert asked == []
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert (tmp_path / "y.png").is_file() and "unet/diffusion_pytorch_model.safetensors" in hub.fetched()
