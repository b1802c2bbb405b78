"""The host: a plain-PyTorch DPO training loop that knows nothing about ganpo_plugins."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Batch = dict[str, Tensor]  # input_ids, attention_mask, response_mask: [2B, T], rows [chosen; rejected]


@dataclass
class DecoderOutput:
    last_hidden_state: Tensor  # [B, T, H]: what lm_head reads


class Decoder(nn.Module):
    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)  # causal: position t sees tokens <= t
        self.norm = nn.LayerNorm(hidden)

    def forward(self, input_ids: Tensor) -> DecoderOutput:
        return DecoderOutput(self.norm(self.rnn(self.embed(input_ids))[0]))


class TinyLM(nn.Module):
    """A causal LM shaped like a transformers one: ``get_decoder()`` and ``get_output_embeddings()``."""

    def __init__(self, vocab: int = 32, hidden: int = 16) -> None:
        super().__init__()
        self.decoder = Decoder(vocab, hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def get_decoder(self) -> Decoder:
        return self.decoder

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.lm_head(self.decoder(input_ids).last_hidden_state)


def synthetic_pairs(count: int, pairs: int = 2, length: int = 8, vocab: int = 32, seed: int = 0) -> list[Batch]:
    """``count`` micro-batches of ``pairs`` random preference pairs sharing a prompt (the first half)."""
    generator = torch.Generator().manual_seed(seed)
    response = (torch.arange(length) >= length // 2).expand(2 * pairs, length)
    batches = []
    for _ in range(count):
        ids = torch.randint(vocab, (2 * pairs, length), generator=generator)
        ids[pairs:, : length // 2] = ids[:pairs, : length // 2]
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(response), "response_mask": response})
    return batches


class MiniDPOLoop:
    """DPO with a frozen reference copy, AdamW, linear learning-rate decay and gradient accumulation."""

    def __init__(
        self, model: nn.Module, batches: list[Batch], *, max_steps: int, lr: float = 1e-2, beta: float = 0.1,
        accumulation_steps: int = 1,
    ) -> None:  # fmt: skip
        self.policy, self.batches, self.max_steps = model, batches, max_steps
        self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.lr, self.beta, self.accumulation_steps = lr, beta, accumulation_steps
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1 - s / max_steps)
        self.step = 0  # optimiser steps taken
        self.micro_step = 0  # index of the current micro-batch in its accumulation window
        self.metrics: list[dict[str, float]] = []
        self._margins: list[float] = []

    @property
    def is_boundary(self) -> bool:
        """True on the micro-step after which the optimiser steps."""
        return self.micro_step == self.accumulation_steps - 1

    def sequence_logps(self, model: nn.Module, batch: Batch) -> Tensor:
        """Summed log-probabilities of the response tokens, ``[2B]``."""
        logps = model(batch["input_ids"])[:, :-1].log_softmax(-1)
        token = logps.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return (token * (batch["response_mask"] & batch["attention_mask"])[:, 1:]).sum(-1)

    def objective(self, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> Tensor:
        """Per-pair DPO loss ``-log σ(βρ)``, ``ρ = (log π(y+) - log π_ref(y+)) - (log π(y-) - log π_ref(y-))``."""
        return -F.logsigmoid(self.beta * ((pc - rc) - (pr - rr)))

    def loss(self, batch: Batch) -> Tensor:
        policy = self.sequence_logps(self.policy, batch)
        with torch.no_grad():
            reference = self.sequence_logps(self.reference, batch)
        (pc, pr), (rc, rr) = policy.chunk(2), reference.chunk(2)
        self._margins.append((self.beta * ((pc - rc) - (pr - rr))).mean().item())
        return self.objective(pc, pr, rc, rr).mean()

    def train(self, steps: int) -> None:
        self.policy.train()
        for _ in range(steps):
            losses = []
            for micro_step in range(self.accumulation_steps):
                self.micro_step = micro_step
                batch = self.batches[(self.step * self.accumulation_steps + micro_step) % len(self.batches)]
                loss = self.loss(batch)
                (loss / self.accumulation_steps).backward()
                losses.append(loss.item())
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
            self.step += 1
            margins, self._margins = self._margins, []
            self.log({"step": self.step, "loss": sum(losses) / len(losses), "margin": sum(margins) / len(margins)})

    def log(self, entry: dict[str, float]) -> None:
        self.metrics.append(entry)

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        state = {"step": self.step, "policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}
        torch.save({**state, "scheduler": self.scheduler.state_dict()}, Path(directory) / "loop.pt")

    def load(self, directory: str | Path) -> None:
        state = torch.load(Path(directory) / "loop.pt", weights_only=True)
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
