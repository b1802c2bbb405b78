"""APO loss, settings, data tools and the round driver's input checks: torch only, no transformers
(runs in the core env). Loss values are derived by hand with the math module."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from ganpo_plugins.apo.cli import main as apo_cli
from ganpo_plugins.apo.data import (
    APODataError,
    apo_pairs,
    best_responses,
    check_sample_rows,
    golden_responses,
    human_pairs,
    prompt_key,
    read_jsonl,
    repair_jsonl_tail,
    sft_rows,
    unique_prompt_rows,
    write_jsonl,
)
from ganpo_plugins.apo.settings import APOConfigError, APOSettings, parse_apo_settings
from ganpo_plugins.formulas.functional import apo_rm_loss


def bt(d: float) -> float:
    """-log σ(d) by hand."""
    return math.log1p(math.exp(-d))


# ----------------------------------------------------------------------------- apo_rm_loss


def test_apo_rm_loss_both_sources_hand_values() -> None:
    preferred = torch.tensor([1.0, 0.5, -0.2, 0.3], dtype=torch.float64)
    other = torch.tensor([0.0, 1.0, 0.3, 0.1], dtype=torch.float64)
    is_apo = torch.tensor([False, True, True, False])
    loss = apo_rm_loss(preferred, other, is_apo, c_human=1.0, c_apo=0.1, samples_per_prompt=4)
    # every pair weighs c_human (human) or c_apo / k (APO); the sum is divided by all 4 pairs
    expected = (1.0 * bt(1.0) + 0.025 * bt(-0.5) + 0.025 * bt(-0.5) + 1.0 * bt(0.2)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_apo_rm_loss_k_apo_pairs_of_a_prompt_weigh_c_apo() -> None:
    """One human pair and the k APO pairs of one prompt, all with the same margin: the k APO pairs
    together weigh c_apo (the per-prompt sum over samples), the human pair c_human."""
    k, c_human, c_apo, d = 3, 0.7, 0.2, 0.4
    preferred = torch.full((k + 1,), d, dtype=torch.float64)
    other = torch.zeros(k + 1, dtype=torch.float64)
    is_apo = torch.tensor([False] + [True] * k)
    loss = apo_rm_loss(preferred, other, is_apo, c_human, c_apo, k)
    assert loss.item() == pytest.approx((c_human + c_apo) * bt(d) / (k + 1), rel=1e-12)


def test_apo_rm_loss_one_source_absent() -> None:
    preferred = torch.tensor([0.2, -1.0, 2.0], dtype=torch.float64)
    other = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    margins = [0.2, -1.5, 1.0]
    human_only = apo_rm_loss(preferred, other, torch.zeros(3, dtype=torch.bool), c_human=1.0, c_apo=0.1)
    assert human_only.item() == pytest.approx(sum(bt(m) for m in margins) / 3, rel=1e-12)  # plain BT mean
    apo_only = apo_rm_loss(preferred, other, torch.ones(3, dtype=torch.bool), c_human=1.0, c_apo=0.1)
    assert apo_only.item() == pytest.approx(0.1 / 4 * sum(bt(m) for m in margins) / 3, rel=1e-12)


def test_apo_rm_loss_gradient_matches_hand_derivative() -> None:
    """dL/dr_pref_i = -w_i σ(-(r_pref_i - r_other_i)) / N and dL/dr_other_i = -dL/dr_pref_i;
    is_apo (a flag) takes no gradient."""
    preferred = torch.tensor([0.3, -0.4, 1.1], dtype=torch.float64, requires_grad=True)
    other = torch.tensor([0.1, 0.2, -0.5], dtype=torch.float64, requires_grad=True)
    is_apo = torch.tensor([True, False, True])
    apo_rm_loss(preferred, other, is_apo, c_human=2.0, c_apo=0.4, samples_per_prompt=2).backward()
    weights = [0.2, 2.0, 0.2]
    margins = [0.2, -0.6, 1.6]
    expected = [-w / (1 + math.exp(m)) / 3 for w, m in zip(weights, margins, strict=True)]
    torch.testing.assert_close(preferred.grad, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(other.grad, -torch.tensor(expected, dtype=torch.float64))


def test_apo_rm_loss_zero_weight_source_gets_no_gradient() -> None:
    preferred = torch.tensor([0.3, -0.4], requires_grad=True)
    other = torch.tensor([0.1, 0.2])
    apo_rm_loss(preferred, other, torch.tensor([True, False]), c_human=1.0, c_apo=0.0).backward()
    assert preferred.grad[0].item() == 0.0 and preferred.grad[1].item() != 0.0


def test_apo_rm_loss_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="samples_per_prompt"):
        apo_rm_loss(torch.zeros(1), torch.zeros(1), torch.ones(1, dtype=torch.bool), samples_per_prompt=0)


# ----------------------------------------------------------------------------- settings


def test_settings_defaults_are_the_papers() -> None:
    assert APOSettings().model_dump() == {"c_human": 1.0, "c_apo": 0.1, "samples_per_prompt": 4}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"c_apo": -0.1}, "apo.c_apo: must be a finite number >= 0; the paper uses 0.1 (got -0.1)"),
        ({"c_human": float("inf")}, "apo.c_human: must be a finite number >= 0"),
        ({"samples_per_prompt": 0}, "apo.samples_per_prompt: Input should be greater than or equal to 1 (got 0)"),
        ({"c_human": 0, "c_apo": 0}, "apo: c_human and c_apo are both 0"),
        ({"c_apo_weight": 1}, "apo.c_apo_weight: unknown key; known keys here: c_human, c_apo, samples_per_prompt"),
    ],
)
def test_settings_errors_name_key_value_and_fix(data: dict, needle: str) -> None:
    with pytest.raises(APOConfigError) as err:
        parse_apo_settings(data)
    assert needle in str(err.value)


def test_settings_flat_prefix_for_trl_flags() -> None:
    with pytest.raises(APOConfigError, match=r"apo_c_apo: must be a finite number"):
        parse_apo_settings({"c_apo": -1}, prefix="apo_")


# ----------------------------------------------------------------------------- pairs


def sample_rows(k: int = 2) -> list[dict]:
    return [
        {"prompt": [{"role": "user", "content": f"say {w}"}], "samples": [f"{w} {j}" for j in range(k)]}
        for w in ("red", "blue", "gold")
    ]


GOLDEN = [{"prompt": f"say {w}", "golden": w} for w in ("red", "blue", "gold")]


def test_apo_pairs_golden_vs_every_sample_chat_format() -> None:
    golden = golden_responses(GOLDEN, "golden.jsonl")
    pairs = apo_pairs(sample_rows(), golden, "samples.jsonl")
    assert len(pairs) == 3 * 2
    assert pairs[0] == {
        "prompt": [{"role": "user", "content": "say red"}],
        "chosen": [{"role": "assistant", "content": "red"}],
        "rejected": [{"role": "assistant", "content": "red 0"}],
        "is_apo": True,
    }
    assert [p["rejected"][0]["content"] for p in pairs] == ["red 0", "red 1", "blue 0", "blue 1", "gold 0", "gold 1"]


def test_apo_pairs_text_format_and_empty_samples_kept() -> None:
    rows = [{"prompt": "say red", "samples": ["red!", ""]}]
    pairs = apo_pairs(rows, golden_responses(GOLDEN, "g"), "s")
    assert pairs == [
        {"prompt": "say red", "chosen": "red", "rejected": "red!", "is_apo": True},
        {"prompt": "say red", "chosen": "red", "rejected": "", "is_apo": True},
    ]


def test_human_pairs_follow_the_rounds_format() -> None:
    human = [{"prompt": "say red", "chosen": "red", "rejected": "blue"}]
    assert human_pairs(human, "h", chat=False) == [
        {"prompt": "say red", "chosen": "red", "rejected": "blue", "is_apo": False}
    ]
    assert human_pairs(human, "h", chat=True) == [
        {
            "prompt": [{"role": "user", "content": "say red"}],
            "chosen": [{"role": "assistant", "content": "red"}],
            "rejected": [{"role": "assistant", "content": "blue"}],
            "is_apo": False,
        }
    ]


def test_prompt_key_matches_string_and_single_user_message() -> None:
    assert prompt_key("hi") == prompt_key([{"role": "user", "content": "hi"}])
    assert prompt_key("hi") != prompt_key([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("rows", "k", "needle"),
    [
        ([{"prompt": "a", "samples": ["x", "y"]}, {"prompt": "b", "samples": ["x"]}], None,
         "s.jsonl row 2: field 'samples' has 1 responses, expected k=2"),
        ([{"prompt": "a", "samples": ["x", "y"]}], 4, "s.jsonl row 1: field 'samples' has 2 responses, expected k=4"),
        ([{"prompt": "a", "samples": ["x"]}, {"prompt": "a", "samples": ["y"]}], None,
         "s.jsonl row 2: field 'prompt' repeats the prompt of row 1"),
        ([{"prompt": "  ", "samples": ["x"]}], None, "s.jsonl row 1: field 'prompt' is empty"),
        ([{"samples": ["x"]}], None, "s.jsonl row 1: missing field 'prompt'"),
        ([{"prompt": "a", "samples": "x"}], None, "s.jsonl row 1: field 'samples' must be a list of strings"),
        ([{"prompt": "a", "samples": ["x"]}, {"prompt": [{"role": "user", "content": "b"}], "samples": ["y"]}],
         None, "s.jsonl row 2: field 'prompt' is chat messages but row 1's is a string"),
        ([{"prompt": [{"role": "user"}], "samples": ["x"]}], None, "s.jsonl row 1: field 'prompt' message 0 must be"),
    ],
)  # fmt: skip
def test_sample_rows_rejected_with_row_and_field(rows: list, k: int | None, needle: str) -> None:
    with pytest.raises(APODataError) as err:
        check_sample_rows(rows, "s.jsonl", k)
    assert needle in str(err.value)


def test_missing_golden_named() -> None:
    with pytest.raises(APODataError) as err:
        apo_pairs(sample_rows(), golden_responses(GOLDEN[:2], "golden.jsonl"), "samples.jsonl", golden_source="g.jsonl")
    assert "samples.jsonl row 3: no golden response for prompt" in str(err.value) and "'say gold'" in str(err.value)


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([{"prompt": "a", "golden": ""}], "g row 1: golden field 'golden' must be a non-empty string"),
        ([{"prompt": "a", "answer": "x"}],
         "g row 1: missing golden field 'golden' (choose the field with --golden-field)"),
        ([{"prompt": "a", "golden": "x"}, {"prompt": "a", "golden": "y"}],
         "g row 2: prompt 'a' already has a different golden response in row 1"),
    ],
)  # fmt: skip
def test_golden_rejected_with_row_and_field(rows: list, needle: str) -> None:
    with pytest.raises(APODataError) as err:
        golden_responses(rows, "g")
    assert needle in str(err.value)


def test_golden_repeated_with_same_answer_is_fine() -> None:
    assert golden_responses([{"prompt": "a", "golden": "x"}, {"prompt": "a", "golden": "x"}], "g") == {
        prompt_key("a"): "x"
    }


@pytest.mark.parametrize(
    ("row", "chat", "needle"),
    [
        ({"prompt": "a", "chosen": " ", "rejected": "b"}, False, "h row 1: field 'chosen' is empty"),
        ({"prompt": "a", "chosen": "x"}, False, "h row 1: field 'rejected' must be a string or one assistant message"),
        ({"chosen": "x", "rejected": "y"}, False, "h row 1: missing field 'prompt'"),
        ({"prompt": [{"role": "user", "content": "a"}], "chosen": "x", "rejected": "y"}, False,
         "h row 1: field 'prompt' is chat messages but the samples are text prompts"),
    ],
)  # fmt: skip
def test_human_pairs_rejected_with_row_and_field(row: dict, chat: bool, needle: str) -> None:
    with pytest.raises(APODataError) as err:
        human_pairs([row], "h", chat)
    assert needle in str(err.value)


def test_unique_prompt_rows_dedupe_keeps_first() -> None:
    rows = [{"prompt": "a", "n": 1}, {"prompt": [{"role": "user", "content": "a"}], "n": 2}, {"prompt": "b", "n": 3}]
    assert [r["n"] for r in unique_prompt_rows(rows, "p", dedupe=True)] == [1, 3]
    with pytest.raises(APODataError, match=r"p row 2: field 'prompt' repeats the prompt of row 1.*--dedupe"):
        unique_prompt_rows(rows, "p")


# ----------------------------------------------------------------------------- rejection sampling


def test_best_responses_highest_reward_non_empty() -> None:
    rows = [
        {"prompt": "a", "samples": ["x", "", "z"], "rewards": [0.1, 9.0, 0.5]},  # empty sample scored highest
        {"prompt": "b", "samples": ["", " ", ""], "rewards": [1.0, 2.0, 3.0]},  # nothing usable
        {"prompt": "c", "samples": ["u", "v", "w"], "rewards": [0.2, 0.2, -1.0]},  # tie: the first
    ]
    best, skipped = best_responses(rows, "scored")
    assert best == [("a", "z", 0.5), ("c", "u", 0.2)]
    assert skipped == 1


@pytest.mark.parametrize(
    ("rewards", "needle"),
    [
        ([0.1], "scored row 1: field 'rewards' must be a list of 2 numbers"),
        ([0.1, float("nan")], "scored row 1: field 'rewards' entry 1 must be a finite number"),
        ([0.1, "high"], "scored row 1: field 'rewards' entry 1 must be a finite number"),
        (None, "scored row 1: field 'rewards' must be a list of 2 numbers"),
    ],
)
def test_best_responses_rejects_bad_rewards(rewards: list | None, needle: str) -> None:
    with pytest.raises(APODataError) as err:
        best_responses([{"prompt": "a", "samples": ["x", "y"], "rewards": rewards}], "scored")
    assert needle in str(err.value)


def test_sft_rows_formats() -> None:
    chat = [([{"role": "user", "content": "a"}], "x", 1.0)]
    assert sft_rows(chat, "messages") == [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}]}
    ]
    assert sft_rows(chat, "prompt-completion") == [
        {"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "assistant", "content": "x"}]}
    ]
    assert sft_rows([("a", "x", 1.0)], "prompt-completion") == [{"prompt": "a", "completion": "x"}]
    with pytest.raises(APODataError, match="--format messages needs a chat round"):
        sft_rows([("a", "x", 1.0)], "messages")


# ----------------------------------------------------------------------------- jsonl files


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(APODataError, match=r"x.jsonl line 2: not valid JSON"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    with pytest.raises(APODataError, match=r"x.jsonl line 2: empty line"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(APODataError, match=r"x.jsonl line 2: expected a JSON object, got list"):
        read_jsonl(path)
    with pytest.raises(APODataError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_repair_jsonl_tail_cuts_only_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"a": 1}, {"a": 2}])
    assert repair_jsonl_tail(path) is False
    with open(path, "a") as f:
        f.write('{"a": 3, "b"')
    assert repair_jsonl_tail(path) is True
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


# ----------------------------------------------------------------------------- CLI input checks (no model is loaded)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = apo_cli(args)
    return code, capsys.readouterr().err


def test_cli_pairs_and_select_write_host_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(tmp_path / "samples.jsonl", sample_rows())
    write_jsonl(tmp_path / "golden.jsonl", GOLDEN)
    write_jsonl(tmp_path / "human.jsonl", [{"prompt": "say red", "chosen": "red", "rejected": "blue"}])
    code, err = run_cli(
        ["pairs", "--samples", str(tmp_path / "samples.jsonl"), "--golden", str(tmp_path / "golden.jsonl"),
         "--human", str(tmp_path / "human.jsonl"), "--out", str(tmp_path / "rm/train.jsonl")],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    pairs = read_jsonl(tmp_path / "rm/train.jsonl")
    assert [p["is_apo"] for p in pairs] == [False] + [True] * 6
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "red"}]  # human pair converted to chat

    scored = [{**r, "rewards": [0.0, 1.0]} for r in sample_rows()]
    write_jsonl(tmp_path / "scored.jsonl", scored)
    code, err = run_cli(
        ["select", "--scored", str(tmp_path / "scored.jsonl"), "--out", str(tmp_path / "sft.jsonl")], capsys
    )
    assert code == 0, err
    assert [r["messages"][-1]["content"] for r in read_jsonl(tmp_path / "sft.jsonl")] == ["red 1", "blue 1", "gold 1"]


def test_cli_sample_rejects_bad_input_before_loading_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}])
    base = [
        "sample",
        "--model",
        str(tmp_path / "no-such-model"),
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "s.jsonl"),
    ]
    code, err = run_cli(base, capsys)
    assert code == 2
    assert "prompts.jsonl row 3: field 'prompt' repeats the prompt of row 1" in err and "--dedupe" in err
    code, err = run_cli([*base, "--dedupe", "--temperature", "0"], capsys)
    assert code == 2 and "--temperature 0.0: must be > 0 (the paper uses 1.2)" in err
    code, err = run_cli([*base, "--dedupe", "--k", "0"], capsys)
    assert code == 2 and "--k 0: must be at least 1 (the paper uses 4)" in err
    code, err = run_cli([*base, "--dedupe", "--stop-after", "0"], capsys)
    assert code == 2 and "--stop-after 0: must be at least 1" in err
    assert not (tmp_path / "s.jsonl").exists()


def test_cli_sample_refuses_to_continue_with_other_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": "a"}, {"prompt": "b"}])
    out = tmp_path / "s.jsonl"
    write_jsonl(out, [{"prompt": "a", "samples": ["x", "y"]}])
    base = ["sample", "--model", str(tmp_path / "no-such-model"), "--prompts", str(prompts), "--out", str(out)]
    code, err = run_cli(base, capsys)
    assert code == 2 and "exists but has no s.jsonl.meta.json" in err and "--overwrite" in err
    meta = {"model": str(tmp_path / "no-such-model"), "prompt_field": "prompt", "k": 2, "temperature": 1.2,
            "top_p": 1.0, "max_new_tokens": 256, "seed": 0, "format": "auto"}  # fmt: skip
    (tmp_path / "s.jsonl.meta.json").write_text(json.dumps(meta))
    code, err = run_cli([*base, "--k", "4"], capsys)
    assert code == 2 and "was started with --k 2, this run asks 4: re-run with --k 2" in err
    write_jsonl(out, [{"prompt": "zzz", "samples": ["x", "y"]}])
    code, err = run_cli([*base, "--k", "2"], capsys)
    assert code == 2 and "s.jsonl row 1: its prompt is not in" in err
    assert read_jsonl(out) == [{"prompt": "zzz", "samples": ["x", "y"]}]  # nothing written over


def test_cli_score_and_pairs_reject_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(tmp_path / "s.jsonl", [{"prompt": "a", "samples": ["x", "y"]}, {"prompt": "b", "samples": ["x"]}])
    code, err = run_cli(
        ["score", "--reward-model", str(tmp_path / "no-rm"), "--samples", str(tmp_path / "s.jsonl"),
         "--out", str(tmp_path / "sc.jsonl")],
        capsys,
    )  # fmt: skip
    assert code == 2 and "s.jsonl row 2: field 'samples' has 1 responses, expected k=2" in err
    write_jsonl(tmp_path / "s.jsonl", [{"prompt": "a", "samples": ["x", "y"]}])
    write_jsonl(tmp_path / "g.jsonl", [{"prompt": "b", "golden": "x"}])
    code, err = run_cli(
        ["pairs", "--samples", str(tmp_path / "s.jsonl"), "--golden", str(tmp_path / "g.jsonl"),
         "--out", str(tmp_path / "p.jsonl")],
        capsys,
    )  # fmt: skip
    assert code == 2 and "s.jsonl row 1: no golden response for prompt 'a'" in err
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize(
    ("prompt", "flags", "needle"),
    [
        ("a", ["--input-template", "Q: {}\nA: "], "only OpenRLHF reward models read it; add --trained-by openrlhf"),
        ("a", ["--trained-by", "openrlhf", "--input-template", "Q: "], "needs a {} where the prompt goes"),
        (
            [{"role": "user", "content": "a"}],
            ["--trained-by", "openrlhf", "--input-template", "Q: {}\nA: "],
            "holds chat prompts, which go through the chat template",
        ),
    ],
)
def test_cli_score_rejects_input_template_misuse_before_loading(
    prompt: Any, flags: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(tmp_path / "s.jsonl", [{"prompt": prompt, "samples": ["x", "y"]}])
    args = ["score", "--reward-model", str(tmp_path / "no-rm"), "--samples", str(tmp_path / "s.jsonl")]
    code, err = run_cli([*args, "--out", str(tmp_path / "sc.jsonl"), *flags], capsys)
    assert code == 2 and needle in err, err
    assert err.startswith("ganpo-apo score: error: --input-template")
    assert not (tmp_path / "sc.jsonl").exists()
