"""What a request costs in cloud money: a price table per model, input and output apart.

The default table prices every request at GPT-4 (8K context) list prices, $0.03 per
1K input tokens and $0.06 per 1K output tokens, as published by OpenAI
(https://openai.com/api/pricing) and as used by the paper to cost its cloud baseline.
Other entries are OpenAI list prices at the time of writing; an operator sets its
own table in the gateway configuration.

Edge and cache answers cost nothing in cloud money, but the ledger also records what
they *would* have cost in the cloud (``cloud_equivalent_usd``), so operators see what
the edge saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Route = Literal["edge", "cloud", "cache", "error"]
ROUTES: tuple[Route, ...] = ("edge", "cloud", "cache", "error")


class ModelPrice(BaseModel):
    """USD per 1K tokens, input (prompt) and output (completion) priced separately."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_1k: float = Field(ge=0, description="USD per 1,000 prompt tokens")
    output_per_1k: float = Field(ge=0, description="USD per 1,000 completion tokens")


GPT4_8K = ModelPrice(input_per_1k=0.03, output_per_1k=0.06)


def _default_models() -> dict[str, ModelPrice]:
    return {
        "gpt-4": GPT4_8K,
        "gpt-4-32k": ModelPrice(input_per_1k=0.06, output_per_1k=0.12),
        "gpt-4o": ModelPrice(input_per_1k=0.0025, output_per_1k=0.01),
        "gpt-4o-mini": ModelPrice(input_per_1k=0.00015, output_per_1k=0.0006),
    }


@dataclass(frozen=True, slots=True)
class Charges:
    """What one request cost, and what it would have cost had the cloud answered it."""

    cost_usd: float
    cloud_equivalent_usd: float


class PriceTable(BaseModel):
    """Per-model prices; a model not listed is priced at ``default``.

    A dated snapshot name (``gpt-4o-mini-2024-07-18``) takes the price of the longest
    listed name it extends at a ``-`` boundary (``gpt-4o-mini``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: ModelPrice = Field(
        default=GPT4_8K, description="price of models not listed (default: GPT-4 8K)"
    )
    models: dict[str, ModelPrice] = Field(
        default_factory=_default_models, description="model name -> price"
    )

    def price(self, model: str) -> ModelPrice:
        """The price entry that applies to ``model``."""
        found = self.models.get(model)
        if found is not None:
            return found
        extended = [name for name in self.models if model.startswith(name + "-")]
        if extended:
            return self.models[max(extended, key=len)]
        return self.default

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for ``prompt_tokens`` in and ``completion_tokens`` out on ``model``."""
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError(
                f"token counts must be >= 0, got {prompt_tokens} in, {completion_tokens} out"
            )
        price = self.price(model)
        return (
            prompt_tokens * price.input_per_1k + completion_tokens * price.output_per_1k
        ) / 1000.0

    def charges(
        self,
        route: Route,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        cloud_model: str,
    ) -> Charges:
        """Cost and cloud equivalent of one request served by ``route``.

        ``model`` is the model that answered; ``cloud_model`` the one the cloud
        fallback would use. A cloud answer costs its own price; an edge or cache
        answer costs 0 and would have cost ``cloud_model``'s price; an error costs 0.
        """
        if route == "cloud":
            spent = self.cost(model, prompt_tokens, completion_tokens)
            return Charges(cost_usd=spent, cloud_equivalent_usd=spent)
        if route in ("edge", "cache"):
            avoided = self.cost(cloud_model, prompt_tokens, completion_tokens)
            return Charges(cost_usd=0.0, cloud_equivalent_usd=avoided)
        if route == "error":
            return Charges(cost_usd=0.0, cloud_equivalent_usd=0.0)
        raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
