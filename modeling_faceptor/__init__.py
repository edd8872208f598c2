"""faceptor: Faceptor (ECCV 2024) as a Hugging Face Transformers model."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_faceptor import FaceptorConfig, TaskSpec
from .modeling_faceptor import FaceptorModel, FaceptorPreTrainedModel
from .outputs_faceptor import FaceptorOutput

AutoConfig.register(FaceptorConfig.model_type, FaceptorConfig, exist_ok=True)
AutoModel.register(FaceptorConfig, FaceptorModel, exist_ok=True)

from .processing.image_processing_faceptor import FaceptorImageProcessor  # noqa: E402

AutoImageProcessor.register(
    FaceptorConfig, image_processor_classes={"torchvision": FaceptorImageProcessor}, exist_ok=True
)

from .processing.pipeline_faceptor import FacePerceptionPipeline  # noqa: E402

if "face-perception" not in PIPELINE_REGISTRY.supported_tasks:
    PIPELINE_REGISTRY.register_pipeline(
        "face-perception", pipeline_class=FacePerceptionPipeline, pt_model=AutoModel, type="image"
    )

__all__ = [
    "FacePerceptionPipeline",
    "FaceptorImageProcessor",
    "FaceptorConfig",
    "FaceptorModel",
    "FaceptorOutput",
    "FaceptorPreTrainedModel",
    "TaskSpec",
]
