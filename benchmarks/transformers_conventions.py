"""Runs the installed transformers version's own ModelTesterMixin and ImageProcessingTestMixin against FaceptorModel
and FaceptorImageProcessor, so a transformers upgrade that changes a convention is one command away from being seen.

    python benchmarks/transformers_conventions.py [-k PATTERN] [pytest options]

The mixins come from that version's source distribution (`pip download transformers==<version> --no-deps
--no-binary :all:`), cached under ~/.cache/faceptor/transformers-tests/<version>/ (never copied into this repo).
The sdist ships tests/*.py but not tests/exporters, tests/generation or utils/fetch_hub_objects_for_ci.py, which the
mixins import: empty stand-ins replace them (no export or generate tests run; Faceptor does not generate). The
testers below are written as transformers' in-tree ViT tests are, on a tiny FaceptorConfig; the only skip of their
own is ViT's (inputs_embeds), the others are the mixins' (no accelerator, flash attention, deepspeed, ...)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("FACEPTOR_CONVENTIONS_CACHE", Path.home() / ".cache" / "faceptor" / "transformers-tests"))
STUBS = {
    "transformers_tests/exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "transformers_tests/generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    # test_image_processing_common imports it from the repo's utils/ (for test images of URLs, unused here).
    "utils/fetch_hub_objects_for_ci.py": "def url_to_local_path(url):\n    return url\n",
}

TEST_MODULE = '''"""Written by faceptor's benchmarks/transformers_conventions.py: transformers' mixins on Faceptor."""
import unittest

from torch import nn
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

from faceptor import FaceptorConfig, FaceptorImageProcessor, FaceptorModel

from ..test_image_processing_common import ImageProcessingTester, ImageProcessingTestMixin
from ..test_modeling_common import ModelTesterMixin, floats_tensor

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, position_grid_size=8,
    projection_dim=8, decoder_hidden_size=16, decoder_layers=2, decoder_attention_heads=2, decoder_ffn_dim=32,
    identity_embedding_size=24, decoder_feature_layers=[1, 0],
)
# FaceptorModel is a base model (no loss), as ViTModel: an in-tree model would be listed here, and the mixin skips
# the training tests of the models listed.
MODEL_MAPPING_NAMES.setdefault("faceptor", "FaceptorModel")


class FaceptorModelTester:
    def __init__(self, parent, batch_size=2, image_size=32, num_channels=3, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_channels = num_channels
        self.is_training = is_training
        self.hidden_size = TINY["hidden_size"]
        self.num_hidden_layers = TINY["num_hidden_layers"]
        self.num_attention_heads = TINY["num_attention_heads"]
        self.seq_length = 1 + (image_size // 16) ** 2  # class token + patches

    def get_config(self):
        return FaceptorConfig.from_preset("faceptor-base", **TINY)

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), pixel_values

    def create_and_check_model(self, config, pixel_values):
        model = FaceptorModel(config).eval()
        result = model(pixel_values)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))
        self.parent.assertEqual(list(result.task_outputs), config.task_names)

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class FaceptorModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (FaceptorModel,)
    pipeline_model_mapping = {}
    test_resize_embeddings = False
    has_attentions = True

    def setUp(self):
        self.model_tester = FaceptorModelTester(self)

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    @unittest.skip(reason="Faceptor does not use inputs_embeds")  # as ViT
    def test_inputs_embeds(self):
        pass

    def test_model_get_set_embeddings(self):  # as ViT: the input embedding is the patch convolution
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, nn.Linear))


class FaceptorImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        kwargs.setdefault("dense_size", 32)
        kwargs.setdefault("face_size", 16)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        # Not in transformers' mapping: its torchvision backend is the only one.
        return {"torchvision": FaceptorImageProcessor}

    def expected_output_image_shape(self, images):
        return self.num_channels, self.dense_size, self.dense_size  # `pixel_values` are the dense crops


class FaceptorImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = FaceptorImageProcessingTester
    test_cast_dtype = True

    def test_image_processor_properties(self):
        processor = FaceptorImageProcessor(**self.image_processor_dict)
        for name in ("dense_size", "dense_mean", "dense_std", "face_size", "face_mean", "face_std", "do_convert_rgb"):
            self.assertTrue(hasattr(processor, name), name)
'''


def transformers_tests(version: str) -> Path:
    """The folder holding that version's tests/ as a package, downloading and unpacking the sdist once."""
    root = CACHE / version
    package = root / "transformers_tests"
    if not (package / "test_modeling_common.py").is_file():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as download:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    f"transformers=={version}",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "-d",
                    download,
                    "-q",
                ],
                check=False,
            )
            archives = list(Path(download).glob("transformers-*.tar.gz"))
            if not archives:
                sys.exit(f"could not download the transformers {version} sdist")
            with tarfile.open(archives[0]) as archive:
                members = [m for m in archive.getmembers() if m.isfile() and "/tests/" in m.name]
                for member in members:
                    relative = member.name.split("/tests/", 1)[1]
                    target = package / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.extractfile(member).read())
    for relative, text in STUBS.items():
        target = root / relative
        if not target.exists():  # a later sdist that ships them is used as it is
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    for folder in [package, *[path for path in package.rglob("*") if path.is_dir()]]:
        (folder / "__init__.py").touch()
    return root


def main(argv: list[str]) -> int:
    import transformers

    root = transformers_tests(transformers.__version__)
    module = root / "transformers_tests" / "faceptor" / "test_faceptor_conventions.py"
    module.parent.mkdir(exist_ok=True)
    (module.parent / "__init__.py").touch()
    module.write_text(TEST_MODULE)
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(module),
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        f"--rootdir={root}",
        "-o",
        "addopts=",
        *argv,
    ]
    print(f"transformers {transformers.__version__}: {' '.join(command)}", flush=True)
    return subprocess.run(command, cwd=root, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
