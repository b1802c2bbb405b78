"""The example third-party host adapter (examples/third_party_host_adapter) installs as its own
package, and ganpo_plugins.attach finds it by its entry point, in a fresh process."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "third_party_host_adapter"

CHECK = textwrap.dedent(
    """
    import sys, tempfile
    import torch
    import ganpo_plugins
    from ganpo_plugins import StepInfo
    from ganpo_plugins.plugins.registry import load_host_adapters
    from ganpo_example_host.loop import MiniDPOLoop, TinyLM, synthetic_pairs

    SMALL = {"discriminator": {"d_model": 16, "num_heads": 2, "ffn_size": 32, "num_layers": 1}}

    def make(accumulation=2):
        torch.manual_seed(0)
        return MiniDPOLoop(TinyLM(), synthetic_pairs(8), max_steps=4, accumulation_steps=accumulation)

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # claimed by the installed adapter, by its entry-point name
    loop = make()
    handle = ganpo_plugins.attach(loop, SMALL)
    adapter = sys.modules["ganpo_example_host.adapter"]
    assert load_host_adapters().get_plugin("minidpo") is adapter
    assert type(handle) is adapter.MiniDPOAttachment, type(handle)
    cases = ((loop, {}, "call detach() on the first handle"), (make(), {"ref_model": 1}, "takes no options"))
    for again, options, error in cases:
        try:
            ganpo_plugins.attach(again, SMALL, **options)
        except (TypeError, ValueError) as exc:
            assert error in str(exc), exc
        else:
            raise AssertionError(f"attached with {options} to a loop that has {vars(again).keys()}")

    # one discriminator step per optimiser step under accumulation 2; ganpo/* in the loop's log
    infos = []
    step = handle.runner.step
    handle.runner.step = lambda batch, info: infos.append(info) or step(batch, info)
    loop.train(2)
    assert infos == [StepInfo(False, 2), StepInfo(True, 2)] * 2, infos
    assert handle.runner.regularizer.disc_steps == 2
    assert [e["step"] for e in loop.metrics] == [1, 2]
    assert all("ganpo/adv_loss" in e and "ganpo/d_pos/loss" in e for e in loop.metrics), loop.metrics

    # save, train on; a new loop resumed from the checkpoint continues bit for bit
    checkpoint = tempfile.mkdtemp()
    loop.save(checkpoint)
    saved = torch.load(checkpoint + "/ganpo_regularizer.pt", weights_only=True)["state"]
    assert saved["disc_steps"] == 2
    loop.train(2)
    resumed = make()
    resumed_handle = ganpo_plugins.attach(resumed, SMALL)
    resumed.load(checkpoint)
    assert resumed.step == 2 and resumed_handle.runner.regularizer.disc_steps == 2
    assert same(resumed_handle.runner.regularizer.discriminators.state_dict(), saved["discriminators"])
    resumed.train(2)
    assert same(resumed.policy.state_dict(), loop.policy.state_dict())
    a, b = handle.runner.regularizer, resumed_handle.runner.regularizer
    assert same(a.discriminators.state_dict(), b.discriminators.state_dict()) and torch.equal(a.mu, b.mu)

    # weight 0: the policy trains bit for bit as without the adapter
    plain, zero = make(), make()
    ganpo_plugins.attach(zero, {**SMALL, "weight": 0.0})
    plain.train(3)
    zero.train(3)
    assert same(plain.policy.state_dict(), zero.policy.state_dict())
    assert "ganpo/adv_loss" in zero.metrics[-1] and "ganpo/adv_loss" not in plain.metrics[-1]

    # detach: the loop's own methods again, no hooks left, nothing logged
    handle.detach()
    assert not {"loss", "objective", "log", "save", "load"} & vars(loop).keys()
    for model in (loop.policy, loop.reference):
        assert not model.get_decoder()._forward_hooks
    loop.train(1)
    assert not any(k.startswith("ganpo/") for k in loop.metrics[-1])

    # a trainer no adapter claims: the error lists the installed adapters
    try:
        ganpo_plugins.attach(object())
    except TypeError as exc:
        assert "builtins.object" in str(exc) and "minidpo" in str(exc), exc
    else:
        raise AssertionError("object() was claimed")
    print("third-party host ok")
    """
)


@pytest.mark.slow
def test_third_party_host_adapter_attaches_by_entry_point(tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "site"
    # Installed from a copy, so the build leaves nothing in the repository.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(source)], check=True
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "third-party host ok" in result.stdout
    # The README's usage snippet runs as written, and prints the loop's log with the ganpo/* metrics.
    usage = re.search(r"```python\n(.*?)```", (EXAMPLE / "README.md").read_text(), re.S)
    assert usage is not None
    result = subprocess.run(
        [sys.executable, "-c", usage.group(1)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "'ganpo/adv_loss'" in result.stdout and (tmp_path / "ckpt" / "ganpo_regularizer.pt").is_file()


def test_readme_shows_the_adapter_in_full() -> None:
    readme = (EXAMPLE / "README.md").read_text()
    assert (EXAMPLE / "ganpo_example_host" / "adapter.py").read_text() in readme
