"""``python -m ganpo_plugins.plot``: which log it reads, which series it finds, the PNG it writes.

Synthetic logs in the hosts' formats: a TRL/Axolotl ``trainer_state.json`` and TensorBoard event
files named as OpenRLHF writes them (``train/loss``, ``train/ganpo/*``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib", reason="the plot needs matplotlib: tox -e trl-oldest")

from ganpo_plugins.tools.plot import main, plot_run, read_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _train_entry(step: int) -> dict[str, Any]:
    """One training log entry as TRL 1.9 writes it with GANPO attached (a subset of keys)."""
    return {
        "step": step,
        "epoch": step / 8,
        "loss": 1.0 + step,
        "rewards/margins": 0.01 * step,
        "ganpo/adv_loss": 0.6 + 0.01 * step,
        "ganpo/d_pos/accuracy": 0.5 + 0.01 * step,
        "ganpo/d_neg/accuracy": 0.4 + 0.01 * step,
        "ganpo/d_pos/real_fake_gap": 0.1 * step,
        "ganpo/d_neg/real_fake_gap": -0.1 * step,
        "ganpo/d_pos/saturated_steps": float(step),
        "ganpo/d_neg/saturated_steps": 0.0,
        "ganpo/d_pos/loss": 0.7,
        "ganpo/skipped": 0.0,
        "ganpo/term_skipped": 0.5 if step == 2 else 0.0,
    }


def _write_state(folder: Path, steps: range, extra: Sequence[dict[str, Any]] = ()) -> None:
    folder.mkdir(parents=True)
    history = [_train_entry(s) for s in steps] + list(extra)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": steps[-1], "log_history": history}))


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_reads_the_newest_checkpoint_and_skips_eval_entries(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_state(run / "checkpoint-2", range(1, 3))
    # checkpoint-10 sorts before checkpoint-2 as text: the newest must be chosen by number
    evaluation = {"step": 4, "eval_loss": 9.0, "eval_ganpo/adv_loss": 9.0}
    summary = {"step": 10, "train_loss": 5.0, "train_runtime": 1.0}
    _write_state(run / "checkpoint-10", range(1, 11), [evaluation, summary])

    log = read_run(run)

    assert log.source == run / "checkpoint-10" / "trainer_state.json"
    assert set(log.series) == {
        "loss",
        "ganpo/adv_loss",
        "ganpo/d_pos/accuracy",
        "ganpo/d_neg/accuracy",
        "ganpo/d_pos/real_fake_gap",
        "ganpo/d_neg/real_fake_gap",
        "ganpo/d_pos/saturated_steps",
        "ganpo/d_neg/saturated_steps",
        "ganpo/skipped",
        "ganpo/term_skipped",
    }  # d_pos/loss and rewards/margins are logged but not plotted
    steps, values = log.series["ganpo/d_neg/real_fake_gap"]
    assert steps == list(range(1, 11))
    assert values == pytest.approx([-0.1 * s for s in range(1, 11)])
    assert log.series["loss"][1] == [1.0 + s for s in range(1, 11)]  # eval_loss and train_loss left out
    assert log.series["ganpo/term_skipped"][1][1] == 0.5


def test_cli_writes_one_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    _write_state(run, range(1, 9))  # trainer_state.json in the output folder itself
    out = tmp_path / "pictures" / "curves.png"

    main([str(run), "-o", str(out)])

    width, height = _png_size(out)
    assert (width, height) == (1200, 1000)  # figsize 12 x 10 inches at 100 dpi
    printed = capsys.readouterr().out
    assert f"read {run / 'trainer_state.json'}" in printed
    assert f"wrote {out}" in printed


def test_default_output_is_beside_the_logs(tmp_path: Path) -> None:
    _write_state(tmp_path / "checkpoint-4", range(1, 5))
    out, _ = plot_run(tmp_path)
    assert out == tmp_path / "ganpo_curves.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_mmd_run_plots_its_terms(tmp_path: Path) -> None:
    entries = [{"step": s, "loss": 2.0, "ganpo/mmd_chosen": 0.1 * s, "ganpo/mmd_rejected": 0.2 * s} for s in (1, 2)]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": entries}))
    out, log = plot_run(tmp_path)
    assert set(log.series) == {"loss", "ganpo/mmd_chosen", "ganpo/mmd_rejected"}
    assert log.series["ganpo/mmd_rejected"] == ([1, 2], pytest.approx([0.2, 0.4]))
    assert out.is_file()


def test_openrlhf_tensorboard_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="reading event files needs tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "openrlhf"
    # OpenRLHF writes <--logger.tensorboard_dir>/<run_name>/, every logs_dict key as train/<key>
    writer = SummaryWriter(log_dir=str(run / "tb" / "exp_1129T10:00"))
    for step in (1, 2, 3):
        for key, value in {"loss": 0.7, "acc": 0.5, "ganpo/adv_loss": 0.6 + step, "ganpo/d_pos/accuracy": 0.25}.items():
            writer.add_scalar(f"train/{key}", value, step)
    writer.add_scalar("eval/ganpo/adv_loss", 9.0, 3)
    writer.close()

    out, log = plot_run(run)

    assert log.source == run / "tb" / "exp_1129T10:00"
    assert set(log.series) == {"loss", "ganpo/adv_loss", "ganpo/d_pos/accuracy"}
    assert log.series["ganpo/adv_loss"] == ([1, 2, 3], pytest.approx([1.6, 2.6, 3.6]))
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_a_run_without_regularizer_metrics_is_named(tmp_path: Path) -> None:
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 1, "loss": 0.7}]}))
    with pytest.raises(ValueError, match="no ganpo/\\* training metrics"):
        read_run(tmp_path)


def test_cli_error_without_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no trainer_state.json" in capsys.readouterr().err
    assert not (tmp_path / "ganpo_curves.png").exists()
