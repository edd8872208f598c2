"""faceptor: Faceptor (ECCV 2024) as a Hugging Face Transformers model."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_faceptor import FaceptorConfig, TaskSpec
from .configuration_naive_faceptor import NaiveFaceptorConfig
from .modeling_faceptor import FaceptorModel, FaceptorPreTrainedModel
from .modeling_naive_faceptor import NaiveFaceptorModel, NaiveFaceptorPreTrainedModel
from .outputs_faceptor import FaceptorOutput

AutoConfig.register(FaceptorConfig.model_type, FaceptorConfig, exist_ok=True)
AutoModel.register(FaceptorConfig, FaceptorModel, exist_ok=True)
AutoConfig.register(NaiveFaceptorConfig.model_type, NaiveFaceptorConfig, exist_ok=True)
AutoModel.register(NaiveFaceptorConfig, NaiveFaceptorModel, exist_ok=True)

from .processing.image_processing_faceptor import FaceptorImageProcessor  # noqa: E402

for _config_class in (FaceptorConfig, NaiveFaceptorConfig):
    AutoImageProcessor.register(
        _config_class, image_processor_classes={"torchvision": FaceptorImageProcessor}, exist_ok=True
    )

from .default_model import DEMO_MODEL_DIR  # noqa: E402
from .processing.pipeline_faceptor import FacePerceptionPipeline  # noqa: E402

if "face-perception" not in PIPELINE_REGISTRY.supported_tasks:
    # With no model named, the pipeline loads the bundled demo model (transformers says so in a warning).
    PIPELINE_REGISTRY.register_pipeline(
        "face-perception",
        pipeline_class=FacePerceptionPipeline,
        pt_model=AutoModel,
        default={"model": (str(DEMO_MODEL_DIR), None)},
        type="image",
    )

__all__ = [
    "FacePerceptionPipeline",
    "FaceptorConfig",
    "FaceptorImageProcessor",
    "FaceptorModel",
    "FaceptorOutput",
    "FaceptorPreTrainedModel",
    "NaiveFaceptorConfig",
    "NaiveFaceptorModel",
    "NaiveFaceptorPreTrainedModel",
    "TaskSpec",
]
