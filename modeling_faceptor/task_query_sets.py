"""Task query sets: a task's own parameters saved, shared on the Hub and attached to a compatible base model."""


class FaceptorTaskSetMixin:
    """Methods of [`FaceptorModel`] for task query sets (`save_task`, `push_task_to_hub`, `load_task`)."""
