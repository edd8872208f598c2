"""What the query sets (`faceptor.task_query_sets`, remote code) use when the package is installed, looked up there
by name when first needed: cards rendered from hub_cards/ and a model repo with the image processor and pipeline."""

from .cards import render_task_set_card
from .push import push_model

__all__ = ["push_model", "render_task_set_card"]
