"""One GANPO regularizer step: ours vs the reference call pattern, same inputs, same process.

    python benchmarks/regularizer_step.py [--batch 4 --seq 512 --hidden 2048 --repeats 3 --device cpu]

A step is: discriminator losses + backward + optimiser step, then the generator term +
backward into the policy latents h_θ. The paper's Transformer discriminator (d=512, 2 layers).

- reference: six separate discriminator forwards on the full, unmasked, padded sequences
  (three per discriminator), then two generator forwards — the public release's call pattern.
- batched:   ``GANPORegularizer`` with ``mask: none`` (same positions as the reference; each
  discriminator scores its three inputs in one forward).
- ours:      ``GANPORegularizer`` with the default ``mask: response`` (response positions are
  gathered into a compact tensor before the discriminator).

Shapes are realistic: prompts of about T/2 tokens, responses of 0.3–0.5 T, right padding.
Prints the median seconds per step of each and the ratios. On a CUDA device every timed step
ends with ``torch.cuda.synchronize()``. ``benchmarks/gpu_check.py`` imports
:func:`compare_patterns` and :data:`PATTERNS` to run the same comparison at GPU size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ganpo_plugins import GANPORegularizer, LatentBatch, RegularizerContext, StepInfo, parse_config
from ganpo_plugins.formulas.functional import ragan_discriminator_loss, ragan_generator_loss

StepFn = Callable[[GANPORegularizer, LatentBatch], None]

# Pattern key → the label it is printed under.
PATTERNS = {
    "reference": "reference (6 separate forwards, full seq)",
    "batched": "batched forwards, full seq (mask none)",
    "ours": "batched + response positions (default)",
}


def make_batch(b: int, t: int, h: int, seed: int = 0, device: torch.device | str = "cpu") -> LatentBatch:
    """``b`` pairs of length ``t``: a shared prompt of ``t/2`` tokens, chosen and rejected responses
    of 0.3–0.5 ``t`` each, right padding. Drawn on the CPU (the same numbers on every device), then
    moved to ``device``; the two policy latents are leaf tensors, so their ``.grad`` can be read."""
    g = torch.Generator().manual_seed(seed)
    attention = torch.zeros(2 * b, t, dtype=torch.bool)
    response = torch.zeros(2 * b, t, dtype=torch.bool)
    prompt = t // 2
    for row in range(b):
        for side in (row, row + b):  # chosen and rejected share the prompt
            length = int(t * (0.3 + 0.2 * torch.rand((), generator=g).item()))
            attention[side, : prompt + length] = True
            response[side, prompt : prompt + length] = True
    policy = torch.randn(2 * b, t, h, generator=g).to(device)
    ref = torch.randn(2 * b, t, h, generator=g).to(device)
    policy_chosen, policy_rejected = (p.detach().requires_grad_(True) for p in policy.chunk(2))
    ref_chosen, ref_rejected = ref.chunk(2)
    attention_chosen, attention_rejected = attention.to(device).chunk(2)
    response_chosen, response_rejected = response.to(device).chunk(2)
    return LatentBatch(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected,
        attention_chosen, attention_rejected, response_chosen, response_rejected,
    )  # fmt: skip


def reference_step(reg: GANPORegularizer, batch: LatentBatch) -> None:
    """Six separate forwards on full sequences, no mask; μ fixed at the regularizer's."""
    d_pos, d_neg = reg.discriminators["pos"].train(), reg.discriminators["neg"].train()
    full = torch.ones(batch.policy_chosen.shape[:2], dtype=torch.bool, device=batch.policy_chosen.device)
    rc, rr = batch.ref_chosen, batch.ref_rejected
    pc, pr = batch.policy_chosen.detach(), batch.policy_rejected.detach()
    mu = reg.mu
    loss = ragan_discriminator_loss(
        d_pos(rc, full), d_pos(pc, full), d_pos(rr, full), *mu[0]
    ) + ragan_discriminator_loss(d_neg(rr, full), d_neg(pr, full), d_neg(rc, full), *mu[1])
    loss.backward()
    for opt in reg.optimizers.values():
        opt.step()
        opt.zero_grad()
    with reg._frozen_eval():
        adv = ragan_generator_loss(
            d_pos(batch.policy_chosen, full), mu[0, 0], d_neg(batch.policy_rejected, full), mu[1, 0]
        )
    adv.backward()


def our_step(reg: GANPORegularizer, batch: LatentBatch) -> None:
    reg.update(batch, StepInfo())
    reg.policy_term(batch).loss.backward()


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on a CUDA device, so that a timer read afterwards covers them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_alternating(
    runs: dict[str, tuple[StepFn, GANPORegularizer]], batch: LatentBatch, repeats: int
) -> dict[str, float]:
    """Median seconds per step of each ``name: (fn, regularizer)``, run in turn each repeat so
    load on the machine falls on all of them alike."""
    device = batch.policy_chosen.device
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn, reg in runs.values():
        fn(reg, batch)  # warm-up
    for _ in range(repeats):
        for name, (fn, reg) in runs.items():
            batch.policy_chosen.grad = batch.policy_rejected.grad = None
            synchronize(device)
            start = time.perf_counter()
            fn(reg, batch)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def compare_patterns(
    b: int, t: int, h: int, repeats: int, device: torch.device | str = "cpu"
) -> tuple[dict[str, float], float]:
    """Median seconds per step of each of :data:`PATTERNS` on one batch of ``b`` pairs of length
    ``t`` and hidden size ``h``, and that batch's mean response length in tokens."""
    batch = make_batch(b, t, h, device=device)
    ctx = RegularizerContext(hidden_size=h, policy_lr=1e-6, total_steps=1000, device=device)
    regs = {mode: GANPORegularizer(parse_config({"mask": mode}), ctx) for mode in ("none", "response")}
    for reg in regs.values():
        reg.update(batch, StepInfo())  # initialise μ
    medians = timed_alternating(
        {
            "reference": (reference_step, regs["none"]),
            "batched": (our_step, regs["none"]),
            "ours": (our_step, regs["response"]),
        },
        batch,
        repeats,
    )
    return medians, batch.response_chosen.sum(1).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args()

    medians, resp = compare_patterns(args.batch, args.seq, args.hidden, args.repeats, torch.device(args.device))
    print(f"B={args.batch} T={args.seq} H={args.hidden}, mean response length {resp:.0f} tokens")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    t_ref = medians["reference"]
    print(f"{'pattern':<42}{'s/step':>10}{'speed-up':>10}")
    for key, label in PATTERNS.items():
        print(f"{label:<42}{medians[key]:>10.2f}{t_ref / medians[key]:>10.2f}")
    print(f"speed-up of the default over the reference pattern: {t_ref / medians['ours']:.2f}x (target >= 1.6x)")


if __name__ == "__main__":
    main()
