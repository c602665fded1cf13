"""What GET /v1/models lists: the version this replica serves and its aliases."""

from __future__ import annotations

from distillery_gateway.engine.manager import ModelManager, ModelNotFound
from distillery_gateway.openai.models.protocol import ModelCard, ModelList
from distillery_gateway.serving_base import engine_errors


class ModelsServing:
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def list(self) -> ModelList:
        served = self.manager.current
        if served is None:
            return ModelList(data=[])
        context = self.manager.max_context
        cards = [ModelCard(id=served.id, created=served.created, root=served.id, max_model_len=context)]
        cards += [
            ModelCard(
                id=alias, created=served.created, root=served.id, parent=served.id, max_model_len=context
            )
            for alias in served.all_aliases
        ]
        return ModelList(data=cards)

    def get(self, model: str) -> ModelCard:
        with engine_errors(self.manager):
            for card in self.list().data:
                if card.id == model:
                    return card
            self.manager.resolve(model)  # 503 while loading
            raise ModelNotFound(model)
