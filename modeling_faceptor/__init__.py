"""faceptor: Faceptor (ECCV 2024) as a Hugging Face Transformers model."""

from transformers import AutoConfig, AutoModel

from .configuration_faceptor import FaceptorConfig, TaskSpec
from .modeling_faceptor import FaceptorModel, FaceptorPreTrainedModel
from .outputs_faceptor import FaceptorOutput

AutoConfig.register(FaceptorConfig.model_type, FaceptorConfig, exist_ok=True)
AutoModel.register(FaceptorConfig, FaceptorModel, exist_ok=True)

__all__ = ["FaceptorConfig", "FaceptorModel", "FaceptorOutput", "FaceptorPreTrainedModel", "TaskSpec"]
