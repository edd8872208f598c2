"""The inference paths of issue 23: the patch embedding as a matrix product, packed self-attention projections,
LayerNorm in the compute dtype, a forward that a CUDA graph can capture, and the fixed-shape compiled forward."""

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conftest import tiny_config
from faceptor import FaceptorModel
from faceptor.commands.compiled_inference import FixedShapeForward, install_fixed_shape_forward
from faceptor.modeling_faceptor import FaceptorAttention, FaceptorLayerNorm

DENSE_TASKS = ["parsing_celebam", "align_300w"]
FACE_TASKS = ["recog_ms1mv3", "age_morph2", "biattr_celeba", "affect_rafdb"]


def small_config(**overrides):
    """The tiny config with fewer layers: tracing (fake tensors, torch.compile) costs per op."""
    return tiny_config(num_hidden_layers=2, decoder_feature_layers=[1, 0], decoder_layers=1, **overrides)


class DeviceTrafficRecorder(TorchDispatchMode):
    """Records every op whose tensors are not all on `device`, and every read of a tensor's value on the host."""

    def __init__(self, device: str):
        super().__init__()
        self.device = device
        self.offending: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.offending.append(f"{func} (a value read on the host)")
        outputs = func(*args, **(kwargs or {}))
        devices = {str(t.device) for t in tree_leaves((args, kwargs, outputs)) if isinstance(t, torch.Tensor)}
        if devices - {self.device}:
            self.offending.append(f"{func} on {sorted(devices)}")
        return outputs


def traffic_of_forward(model: FaceptorModel, pixel_values: torch.Tensor, grad: bool) -> list[str]:
    with torch.set_grad_enabled(grad), DeviceTrafficRecorder("cuda:0") as recorder:
        model(pixel_values)
    return recorder.offending


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")
@pytest.mark.parametrize("scope", ["shared", "per_task"])
def test_forward_on_a_gpu_makes_no_host_copies_or_host_reads(scope):
    # A fake CUDA device (no GPU needed): a host tensor copied to it, as CUDA graph capture refuses ("Cannot copy
    # between CPU and CUDA tensors during CUDA graph capture"), shows up as an op with a CPU tensor; `.item()` fails.
    model = FaceptorModel(small_config(layer_embedding_scope=scope)).eval()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device="cuda")
        pixel_values = torch.randn(2, 3, 48, 48, device="cuda")
        for grad in (False, True):  # the cached (inference) and the computed paths
            assert traffic_of_forward(model, pixel_values, grad) == []
        with DeviceTrafficRecorder("cuda:0") as recorder:  # the check sees the mistake it guards against
            pixel_values + torch.tensor([1.0], device="cuda")
        assert recorder.offending


def test_patch_embedding_as_a_matrix_product_equals_the_stored_convolution():
    model = FaceptorModel(tiny_config()).eval()
    embeddings = model.encoder.embeddings
    pixel_values = torch.randn(3, 3, 64, 48)
    patches, grid = embeddings.embed_patches(pixel_values)
    reference = embeddings.patch_embedding(pixel_values)
    assert grid == tuple(reference.shape[-2:]) == (4, 3)
    torch.testing.assert_close(patches, reference.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    # The checkpoint layout is unchanged: the convolution's weight, and no packed copies among the weights.
    state = model.state_dict()
    assert state["encoder.embeddings.patch_embedding.weight"].shape == (32, 3, 16, 16)
    assert not [key for key in state if "packed" in key or "qkv" in key]


def test_packed_self_attention_equals_separate_projections_and_follows_weight_updates():
    attention = FaceptorAttention(tiny_config(), 32, 2).eval()
    hidden_states = torch.randn(2, 5, 32)

    def packed_and_separate():
        packed, _ = attention(hidden_states, hidden_states, hidden_states)  # one object: the packed projection
        separate, _ = attention(hidden_states, hidden_states.clone(), hidden_states.clone())
        return packed, separate

    with torch.no_grad():
        torch.testing.assert_close(*packed_and_separate())
        attention.k_proj.weight.mul_(2)  # the cached packed weight must not be reused
        packed, separate = packed_and_separate()
    torch.testing.assert_close(packed, separate)
    packed, separate = packed_and_separate()  # with autograd: packed each call, gradients reach all three layers
    torch.testing.assert_close(packed, separate)
    packed.sum().backward()
    assert all(layer.weight.grad is not None for layer in (attention.q_proj, attention.k_proj, attention.v_proj))


def test_interpolated_position_embedding_is_cached_while_inferring_and_follows_the_weights():
    embeddings = FaceptorModel(tiny_config()).encoder.embeddings
    with torch.no_grad():
        first = embeddings.interpolated_position_embedding(3, 4)
        assert embeddings.interpolated_position_embedding(3, 4) is first
        torch.testing.assert_close(first, embeddings._interpolate_position_embedding(3, 4))
        embeddings.position_embedding.add_(1.0)
        updated = embeddings.interpolated_position_embedding(3, 4)
    torch.testing.assert_close(updated, first + 1.0)
    assert len(embeddings._position_cache) == 1  # the value of the old weights is dropped, not kept beside
    assert embeddings.interpolated_position_embedding(3, 4).requires_grad  # training: computed, not cached


def test_bf16_layer_norm_in_the_compute_dtype_drifts_no_more_than_float32_layer_norm(monkeypatch):
    model = FaceptorModel(tiny_config()).eval()
    low = FaceptorModel(tiny_config()).eval()
    low.load_state_dict(model.state_dict())
    low = low.to(torch.bfloat16)
    pixel_values = {48: torch.randn(4, 3, 48, 48), 32: torch.randn(4, 3, 32, 32)}

    def drift() -> dict[str, float]:
        with torch.no_grad():
            changes = {}
            for size, tasks in ((48, DENSE_TASKS), (32, FACE_TASKS)):
                reference = model(pixel_values[size], tasks=tasks).task_outputs
                changed = low(pixel_values[size].bfloat16(), tasks=tasks).task_outputs
                changes.update({task: (changed[task].float() - reference[task]).abs().max().item() for task in tasks})
            return changes

    in_compute_dtype = drift()

    def float32_layer_norm(self, hidden_states):  # FaRL's: float32 statistics and affine, cast back
        weight, bias = self.weight.float(), self.bias.float()
        normalized = F.layer_norm(hidden_states.float(), self.normalized_shape, weight, bias, self.eps)
        return normalized.to(hidden_states.dtype)

    monkeypatch.setattr(FaceptorLayerNorm, "forward", float32_layer_norm)
    in_float32 = drift()
    for task, change in in_compute_dtype.items():
        assert change <= 1.25 * in_float32[task] + 1e-3, (task, change, in_float32[task])


@pytest.mark.slow
def test_fixed_shape_forward_pads_to_its_batch_and_equals_the_eager_forward():
    model = FaceptorModel(small_config()).eval()
    keys = list(model.state_dict())
    pixel_values = torch.randn(6, 3, 32, 32)
    tasks = ["age_morph2", "align_300w"]
    with torch.no_grad():
        eager = {rows: model(pixel_values[:rows], tasks=tasks) for rows in (3, 1, 4, 6)}
        announced = []
        runner = install_fixed_shape_forward(model, batch_size=4, backend="eager", announce=announced.append)
        assert model.forward is runner
        for rows, expected in eager.items():  # padded, padded, exact, too many (eager)
            fixed = model(pixel_values[:rows], tasks=tasks)
            assert set(fixed.task_outputs) == set(tasks)
            for task in tasks:
                assert fixed.task_outputs[task].shape[0] == rows
                torch.testing.assert_close(fixed.task_outputs[task], expected.task_outputs[task], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(fixed.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(fixed.pixel_embeddings, expected.pixel_embeddings, atol=1e-5, rtol=1e-5)
    assert len(announced) == 1 and "4 x 3 x 32 x 32" in announced[0]  # one shape compiled, announced once
    assert list(model.state_dict()) == keys


def test_fixed_shape_forward_needs_a_positive_batch_size():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        FixedShapeForward(FaceptorModel(small_config()).forward, batch_size=0)


@pytest.mark.slow
def test_the_whole_forward_compiles_as_one_graph():
    model = FaceptorModel(small_config()).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # a graph break fails here
    with torch.no_grad():
        fixed, eager = compiled(pixel_values).task_outputs, model(pixel_values).task_outputs
    for task, value in eager.items():
        torch.testing.assert_close(fixed[task], value)


def test_a_model_cast_in_inference_mode_still_runs_and_computes_instead_of_caching():
    model = FaceptorModel(small_config()).eval()
    pixel_values = torch.randn(2, 3, 48, 48)
    with torch.inference_mode():
        expected = model(pixel_values, tasks=DENSE_TASKS).task_outputs
        model.to(torch.float64)  # its weights are now inference tensors, which have no version counter
        changed = model(pixel_values.double(), tasks=DENSE_TASKS).task_outputs
    for task in DENSE_TASKS:
        torch.testing.assert_close(changed[task].float(), expected[task], atol=1e-4, rtol=1e-4)
