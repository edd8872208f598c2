"""faceptor: Faceptor (ECCV 2024) as a Hugging Face Transformers model.

The modules of this folder are the model's files that travel to the Hub as remote code (they import each other
only relatively); the package's tools live in `faceptor.commands` and never travel (`REMOTE_CODE_MODULES` there
lists what does). Importing the package registers the Auto classes, the image processor and the
`face-perception` pipeline.
"""

from types import SimpleNamespace

from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_faceptor import FaceptorConfig, TaskSpec
from .configuration_naive_faceptor import NaiveFaceptorConfig
from .modeling_faceptor import FaceptorModel, FaceptorPreTrainedModel
from .modeling_naive_faceptor import NaiveFaceptorModel, NaiveFaceptorPreTrainedModel
from .outputs_faceptor import FaceptorOutput
from .processing.image_processing_faceptor import FaceptorImageProcessor
from .processing.pipeline_faceptor import FacePerceptionPipeline, set_video_reader
from .task_query_sets import set_hub_integration
from .video.reading import is_video_path

AutoConfig.register(FaceptorConfig.model_type, FaceptorConfig, exist_ok=True)
AutoModel.register(FaceptorConfig, FaceptorModel, exist_ok=True)
AutoConfig.register(NaiveFaceptorConfig.model_type, NaiveFaceptorConfig, exist_ok=True)
AutoModel.register(NaiveFaceptorConfig, NaiveFaceptorModel, exist_ok=True)
for _config_class in (FaceptorConfig, NaiveFaceptorConfig):
    AutoImageProcessor.register(
        _config_class, image_processor_classes={"torchvision": FaceptorImageProcessor}, exist_ok=True
    )


def _hub_integration() -> SimpleNamespace:
    # Imported here, not at the top: the tools import the model modules above.
    from .commands.cards import render_task_set_card
    from .commands.push import push_model

    return SimpleNamespace(render_task_set_card=render_task_set_card, push_model=push_model)


set_hub_integration(_hub_integration())


def _video_results(face_pipeline, path, **options):
    # Imported when a video is given: PyAV is optional, and the reader's threads start only then.
    from .video.perception import iterate_video_results

    return iterate_video_results(face_pipeline, path, **options)


set_video_reader(SimpleNamespace(is_video=is_video_path, results=_video_results))

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
