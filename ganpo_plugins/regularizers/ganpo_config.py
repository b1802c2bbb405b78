"""GANPO's keys: the discriminators, their optimiser, the running means (``config_model`` of
:class:`~ganpo_plugins.regularizers.ganpo.GANPORegularizer`). They sit at the top of the ``ganpo:`` block,
beside the common keys of :class:`~ganpo_plugins.config.RegularizerConfig`."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from ..config import ConfigModel, LearnedConfig

__all__ = ["DiscriminatorConfig", "GANPOConfig"]


class DiscriminatorConfig(ConfigModel):
    """The discriminator architecture (defaults: the paper's Transformer discriminator)."""

    kind: str = Field("transformer", description="registered discriminator name: transformer, mlp, or a plugin's")
    d_model: int = Field(512, ge=1, description="width of the projection, encoder and head")
    num_layers: int = Field(2, ge=1, description="encoder layers (transformer) or hidden layers (mlp)")
    num_heads: int = Field(8, ge=1, description="attention heads (transformer); must divide d_model")
    ffn_size: int = Field(2048, ge=1, description="feed-forward width (transformer)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout inside the encoder (transformer)")
    spectral_norm: bool = Field(True, description="spectrally normalise the linear projections")
    power_iterations: int = Field(
        3,
        ge=1,
        description="spectral norm power iterations per discriminator step (3: the public release's effective count)",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> DiscriminatorConfig:
        if self.kind == "transformer" and self.d_model % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must divide d_model={self.d_model}; "
                f"pick num_heads from {[h for h in range(1, 17) if self.d_model % h == 0]}"
            )
        return self


class GANPOConfig(LearnedConfig):
    """Configuration of GANPO and the preference loss it is added to (docs/methods.md, GANPO)."""

    max_positions: int = Field(2048, ge=1, description="longer position sequences are truncated to their start")
    ema_momentum: float = Field(0.9, description="momentum of the running means of discriminator scores")
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    saturation_patience: int = Field(
        100, ge=1, description="warn when a discriminator stays saturated for this many of its steps"
    )

    @field_validator("ema_momentum")
    @classmethod
    def _momentum_in_unit_interval(cls, v: float) -> float:
        if not (0.0 <= v < 1.0):
            raise ValueError("ema_momentum must lie in [0, 1); the paper uses 0.9")
        return v

    def registered_names(self) -> dict[str, tuple[str, str]]:
        return {**super().registered_names(), "discriminator.kind": ("discriminator", self.discriminator.kind)}
