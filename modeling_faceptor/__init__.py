"""faceptor: Faceptor (ECCV 2024) as a Hugging Face Transformers model.

The modules of this folder, with those of `faceptor.processing`, are the files that travel to the Hub as remote
code (they import each other only relatively); the tools (`faceptor.commands`, `faceptor.video`,
`faceptor.visualization`) live in folders of their own and never travel. Importing the package registers the
Auto classes, the image processor and the `face-perception` pipeline, and nothing of the tools: the pipeline finds
the video reader, and the query sets the Hub push, when first used.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_faceptor import FaceptorConfig, TaskSpec
from .configuration_naive_faceptor import NaiveFaceptorConfig
from .modeling_faceptor import FaceptorModel, FaceptorPreTrainedModel
from .modeling_naive_faceptor import NaiveFaceptorModel, NaiveFaceptorPreTrainedModel
from .outputs_faceptor import FaceptorOutput
from .processing.image_processing_faceptor import FaceptorImageProcessor
from .processing.pipeline_faceptor import FacePerceptionPipeline

AutoConfig.register(FaceptorConfig.model_type, FaceptorConfig, exist_ok=True)
AutoModel.register(FaceptorConfig, FaceptorModel, exist_ok=True)
AutoConfig.register(NaiveFaceptorConfig.model_type, NaiveFaceptorConfig, exist_ok=True)
AutoModel.register(NaiveFaceptorConfig, NaiveFaceptorModel, exist_ok=True)
for _config_class in (FaceptorConfig, NaiveFaceptorConfig):
    AutoImageProcessor.register(
        _config_class, image_processor_classes={"torchvision": FaceptorImageProcessor}, exist_ok=True
    )


from .demo_model import DEMO_MODEL_DIR  # noqa: E402

for _config_class in (FaceptorConfig, NaiveFaceptorConfig):
    # A saved config's `custom_pipelines` entry would otherwise ask for trust_remote_code though the package
    # provides the pipeline; the Hub copies of the configs (remote code) keep reading it.
    _config_class.local_pipeline_tasks = frozenset({"face-perception"})
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
