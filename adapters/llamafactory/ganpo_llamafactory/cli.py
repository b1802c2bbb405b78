"""``ganpo-llamafactory-cli``: ``llamafactory-cli`` that also reads a ``ganpo:`` block (``stage: dpo``)
or an ``apo:`` block (``stage: rm``, the APO reward-model loss) from the config::

    ganpo-llamafactory-cli train dpo.yaml [key=value ...]      # ganpo.weight=0.5 overrides work too

Every command but ``train``, and ``train`` on a config without either block, runs exactly as
``llamafactory-cli`` runs it (its own launcher, torchrun included). With a block: the block is
validated (bad values, unknown keys, a misspelt block name) before LLaMA-Factory parses its own
arguments; right after it does (before any model or dataset loads), the run's stage and settings
are judged (:func:`~ganpo_llamafactory.facts.check_dpo_run`, :func:`~ganpo_llamafactory.facts.check_rm_run`);
then the trainer ``stage: dpo`` builds gets the regularizer attached
(:class:`~ganpo_llamafactory.attach.LlamaFactoryDPOAttachment`), or ``stage: rm`` trains with the APO
loss (:mod:`ganpo_llamafactory.apo`).

No LLaMA-Factory file is edited. For the run's duration, in this process only, these module
attributes are replaced, and put back when it ends (:data:`SWAPPED`).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganpo_plugins.adapter_kit import (
    BLOCK,
    HostVersionError,
    RegularizerConfig,
    parse_block,
    refuse_misspelt_block,
    require_host,
)
from ganpo_plugins.adapter_kit.flags import fail
from ganpo_plugins.apo import APOConfigError, APODataError, APOSettings, parse_apo_settings
from ganpo_plugins.config import GANPOConfigError

from .facts import check_dpo_run, check_rm_run

__all__ = ["APO_BLOCK", "PROG", "SWAPPED", "Blocks", "main", "run_exp"]

PROG = "ganpo-llamafactory-cli"
APO_BLOCK = "apo"  # the APO reward-model loss's block, as in Axolotl
#: What the adapter replaces in LLaMA-Factory's modules while a run lasts, and why.
SWAPPED: Mapping[str, str] = {
    "llamafactory.train.tuner:get_train_args": "judges the parsed arguments before any model loads (with a block)",
    "llamafactory.train.dpo.trainer:CustomDPOTrainer": "a subclass that attaches the regularizer once built "
    "(run_dpo imports it by name when it runs; with a ganpo block)",
    "llamafactory.data.converter:get_dataset_converter, llamafactory.data.loader:_get_dataset_processor": "with an "
    "apo block: each row's is_apo flag carried through the format converter and the pairwise tokenizer",
    "llamafactory.train.rm.workflow:PairwiseTrainer": "with an apo block: a subclass trained with the APO loss, "
    "which also has the run's own LogCallback instance write apo/* to trainer_log.jsonl",
    "llamafactory.train.tuner:run_exp, llamafactory.launcher:__file__": "the CLI only: LLaMA-Factory's launcher "
    "runs this package's run_exp in process, and this package's torchrun entry in each distributed process",
}
_ENTRY = Path(__file__).with_name("torchrun_entry.py")


@dataclass(frozen=True)
class Blocks:
    """The config's blocks this package serves: at most one of them is set."""

    ganpo: RegularizerConfig | None = None
    apo: APOSettings | None = None


def _split_blocks(args: dict[str, Any] | list[str]) -> tuple[Blocks, dict[str, Any] | list[str]]:
    """The parsed ``ganpo:`` / ``apo:`` block (neither: a plain run) and LLaMA-Factory's own arguments."""
    if isinstance(args, list):  # llamafactory-cli train --key value ...: no block can be given that way
        flags = [a for a in args if a.lstrip("-").startswith((BLOCK, APO_BLOCK))]
        if flags:
            raise GANPOConfigError(
                f"{flags[0]}: the ganpo and apo blocks are read from a YAML or JSON config file "
                f"({PROG} train CONFIG.yaml ganpo.weight=0.5 overrides their keys)"
            )
        return Blocks(), args
    try:
        refuse_misspelt_block([key for key in args if key != APO_BLOCK], host="LLaMA-Factory")
    except ValueError as exc:
        raise GANPOConfigError(str(exc)) from None
    if BLOCK in args and APO_BLOCK in args:
        raise GANPOConfigError(
            "ganpo and apo blocks in one config: the ganpo block serves stage: dpo, the apo block stage: rm; "
            "keep the one for this run's stage"
        )
    args = dict(args)
    if BLOCK in args:
        return Blocks(ganpo=parse_block(args.pop(BLOCK))), args  # `ganpo:` with nothing under it: the defaults
    if APO_BLOCK in args:
        return Blocks(apo=parse_apo_settings(args.pop(APO_BLOCK), prefix=APO_BLOCK)), args
    return Blocks(), args


@contextmanager
def _replaced(target: Any, name: str, value: Any) -> Iterator[None]:
    previous = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, previous)


@contextmanager
def _judged(check: Callable[[tuple[Any, ...]], None]) -> Iterator[None]:
    """LLaMA-Factory's parsed arguments judged by ``check`` as soon as it has parsed them."""
    from llamafactory.train import tuner

    get_train_args = tuner.get_train_args

    def judged_train_args(*args: Any, **kwargs: Any) -> Any:
        parsed = get_train_args(*args, **kwargs)
        check(parsed)
        return parsed

    with _replaced(tuner, "get_train_args", judged_train_args):
        yield


@contextmanager
def _serving(config: RegularizerConfig) -> Iterator[None]:
    """The ``ganpo:`` block served for one ``run_exp`` (see :data:`SWAPPED`)."""
    from llamafactory.train.dpo import trainer as dpo_trainer

    from .attach import LlamaFactoryDPOAttachment

    parsed_model_args: list[Any] = []

    def check(parsed: tuple[Any, ...]) -> None:
        model_args, _, _, finetuning_args, _ = parsed
        if finetuning_args.stage != "dpo":
            raise GANPOConfigError(
                f"stage: {finetuning_args.stage}: the ganpo block serves stage: dpo (an apo block serves stage: rm); "
                "set stage: dpo or remove the ganpo block"
            )
        try:
            check_dpo_run(config, finetuning_args)
        except ValueError as exc:
            raise GANPOConfigError(f"the ganpo block does not fit this run: {exc}") from None
        parsed_model_args.append(model_args)

    class GANPOCustomDPOTrainer(dpo_trainer.CustomDPOTrainer):
        """LLaMA-Factory's ``CustomDPOTrainer`` with the run's ``ganpo:`` block attached."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.ganpo_attachment = LlamaFactoryDPOAttachment(self, config, ref_model=self._ganpo_reference())

        def _ganpo_reference(self) -> Any:
            """``ref_model:`` of a reference-free run, loaded as LLaMA-Factory loads a DPO reference
            (LLaMA-Factory loads none for simpo/orpo); ``None`` leaves the choice to the adapter."""
            finetuning_args = self.finetuning_args
            if finetuning_args.use_ref_model or finetuning_args.ref_model is None:
                return None
            from llamafactory.train.trainer_utils import create_ref_model

            return create_ref_model(parsed_model_args[-1], finetuning_args)

    with _judged(check), _replaced(dpo_trainer, "CustomDPOTrainer", GANPOCustomDPOTrainer):
        yield


@contextmanager
def _serving_apo(settings: APOSettings) -> Iterator[None]:
    """The ``apo:`` block served for one ``run_exp`` (see :data:`SWAPPED`)."""
    from llamafactory.data import converter, loader
    from llamafactory.train.rm import workflow

    from .apo import FlagCarryingConverter, FlagCarryingTokenizer, apo_pairwise_trainer

    def check(parsed: tuple[Any, ...]) -> None:
        try:
            check_rm_run(parsed[3])
        except ValueError as exc:
            raise APOConfigError(f"the apo block does not fit this run: {exc}") from None

    get_dataset_converter = converter.get_dataset_converter
    get_dataset_processor = loader._get_dataset_processor

    def flag_carrying_converter(*args: Any, **kwargs: Any) -> FlagCarryingConverter:
        return FlagCarryingConverter(get_dataset_converter(*args, **kwargs))

    def flag_carrying_processor(*args: Any, **kwargs: Any) -> Any:
        processor = get_dataset_processor(*args, **kwargs)  # a new one per dataset: this instance only
        processor.preprocess_dataset = FlagCarryingTokenizer(processor.preprocess_dataset)
        return processor

    with (
        _judged(check),
        _replaced(converter, "get_dataset_converter", flag_carrying_converter),
        _replaced(loader, "_get_dataset_processor", flag_carrying_processor),
        _replaced(workflow, "PairwiseTrainer", apo_pairwise_trainer(workflow.PairwiseTrainer, settings)),
    ):
        yield


def run_exp(args: dict[str, Any] | list[str] | None = None, callbacks: list[Any] | None = None) -> None:
    """LLaMA-Factory's ``llamafactory.train.tuner.run_exp(args, callbacks)`` with the ``ganpo:`` block
    or ``apo:`` block of ``args`` (a config dict, or ``None``: the command line) served. Raises
    ``GANPOConfigError`` or ``APOConfigError`` (both ``ValueError``) naming the key for a block that cannot
    be served, before any model loads."""
    require_host("llamafactory")
    from llamafactory.hparams import read_args
    from llamafactory.train import tuner

    blocks, args = _split_blocks(read_args(args))
    run = inspect.unwrap(tuner.run_exp)  # LLaMA-Factory's own, also while the CLI has replaced it
    if blocks.ganpo is not None:
        with _serving(blocks.ganpo):
            return run(args, callbacks)
    if blocks.apo is not None:
        with _serving_apo(blocks.apo):
            return run(args, callbacks)
    return run(args, callbacks)


def cli_run_exp() -> None:
    """:func:`run_exp` on the command line's arguments; a refusal stops like argparse (exit 2)."""
    try:
        run_exp()
    except (GANPOConfigError, APOConfigError, APODataError, HostVersionError) as exc:
        fail(str(exc), PROG)


def main(argv: list[str] | None = None) -> None:
    """``ganpo-llamafactory-cli COMMAND ...``: ``llamafactory-cli`` with the ``ganpo:`` / ``apo:`` block served."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        require_host("llamafactory")
    except HostVersionError as exc:
        fail(str(exc), PROG)
    from llamafactory import launcher
    from llamafactory.train import tuner

    if argv[:1] == ["train"] and not {"-h", "--help"} & set(argv):
        from llamafactory.hparams import read_args

        sys.argv = [PROG, *argv[1:]]
        try:  # before torchrun starts any process
            _split_blocks(read_args())
        except (GANPOConfigError, APOConfigError) as exc:
            fail(str(exc), PROG)
    sys.argv = [PROG, *argv]
    entry = functools.wraps(tuner.run_exp)(lambda *args, **kwargs: cli_run_exp())
    with _replaced(tuner, "run_exp", entry), _replaced(launcher, "__file__", str(_ENTRY)):
        launcher.launch()


if __name__ == "__main__":
    main()
