"""Backends (bench/backends.py): autocast, compile's graph breaks, refusals before a model is built, TensorRT
through a fake, ONNX Runtime on CPU."""

from __future__ import annotations

import inspect
import types

import pytest
import torch
import torch.nn as nn

import zoo
from bench.backends import BACKENDS, Compile, Eager, OnnxRuntime, TensorRT, TensorRTOptions, make_backend
from bench.worker import output_difference


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        if x.sum() > 0:  # data-dependent: a graph break for torch.compile, an error for torch.export
            return x * 2
        return x


def test_eager_autocast_runs_in_bf16(make_spec):
    model = nn.Linear(8, 4)
    out = Eager().prepare(model, torch.randn(2, 8), make_spec("eager", "amp-bf16")).forward(torch.randn(2, 8))
    assert out.dtype == torch.bfloat16


@pytest.mark.e2e  # the slow tier: inductor compiles twice in its worker processes
def test_compile_reports_graph_breaks_and_compile_time(make_spec):
    model = _Branchy().eval()
    for x in (torch.ones(2, 8), -torch.ones(2, 8)):  # both sides of the branch: one break either way
        model.fc.bias.data.fill_(float(x[0, 0]) * 10)
        with torch.no_grad():
            prepared = Compile().prepare(model, x, make_spec("compile"))
            assert torch.allclose(prepared.forward(x), model(x))
        assert prepared.info["graph_breaks"] == 1 and len(prepared.info["break_reasons"]) == 1
    assert prepared.compile_s > 0


def test_backends_refuse_what_they_cannot_run_before_a_model_is_built(make_spec):
    with pytest.raises(ImportError):
        import torch_tensorrt  # noqa: F401
    assert TensorRT.refusal(make_spec("tensorrt")).startswith("torch_tensorrt is not installed")
    assert "autocast does not apply" in TensorRT.refusal(make_spec("tensorrt", "amp-fp16"))
    assert "inference-only" in OnnxRuntime.refusal(make_spec("onnxruntime", mode="train"))
    assert Eager.refusal(make_spec("eager", "amp-bf16", mode="train")) is None
    assert OnnxRuntime.refusal(make_spec("onnxruntime")) is None  # the onnx extra is installed for the tests


class _Relu(nn.Module):
    def forward(self, x):
        return torch.relu(x)


class _Engine(nn.Module):
    def __init__(self, converted: nn.Module, left: nn.Module):
        super().__init__()
        self._run_on_acc_0, self._run_on_gpu_1 = converted, left

    def forward(self, x):
        return self._run_on_acc_0(x)


class _FakeTorchTensorRT:
    """A stand-in `torch_tensorrt` whose `dynamo.compile` has one release's keyword arguments (name: default); it
    records what it was given and returns a graph split as torch_tensorrt splits one: an engine submodule and a
    PyTorch submodule."""

    def __init__(self, keywords: dict):
        self.calls: list[dict] = []

        def compile(exported_program, inputs=None, **kwargs):
            self.calls.append(kwargs)
            return _Engine(exported_program.module(), torch.fx.symbolic_trace(_Relu()))

        kind = inspect.Parameter.KEYWORD_ONLY
        compile.__signature__ = inspect.Signature(
            [
                inspect.Parameter("exported_program", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                inspect.Parameter("inputs", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
            ]
            + [inspect.Parameter(name, kind, default=default) for name, default in keywords.items()]
        )
        self.dynamo = types.SimpleNamespace(compile=compile)


TRT_2_11 = {"enabled_precisions": None, "use_explicit_typing": False, "min_block_size": 5, "disable_tf32": False}


TRT_2_12 = {**TRT_2_11, "attn_bias_is_causal": True}


TRT_2_13 = {
    "min_block_size": 5,
    "disable_tf32": False,
    "attn_bias_is_causal": True,
}  # enabled_precisions, use_explicit_typing gone


@pytest.mark.parametrize(
    "keywords, precision, passed, typing",
    [
        (
            TRT_2_11,
            "fp16",
            {"enabled_precisions": {torch.float16}, "min_block_size": 5, "disable_tf32": True},
            "enabled_precisions=float16",
        ),
        (
            TRT_2_12,
            "fp16",
            {
                "enabled_precisions": {torch.float16},
                "min_block_size": 5,
                "disable_tf32": True,
                "attn_bias_is_causal": False,
            },
            "enabled_precisions=float16",
        ),
        (
            {**TRT_2_11, "use_explicit_typing": True},
            "bf16",
            {"min_block_size": 5, "disable_tf32": True},
            "explicit typing (default)",
        ),
        (
            TRT_2_13,
            "fp16",
            {"min_block_size": 5, "disable_tf32": True, "attn_bias_is_causal": False},
            "strong typing (always on)",
        ),
        ({"min_block_size": 5}, "fp32", {"min_block_size": 5}, "strong typing (always on)"),
    ],
)
def test_tensorrt_arguments_follow_the_installed_release(keywords, precision, passed, typing, make_spec):
    fake = _FakeTorchTensorRT(keywords)
    model, x = nn.Conv2d(3, 4, 3).eval(), torch.randn(2, 3, 16, 16)
    prepared = TensorRT().build(fake, model, x, make_spec("tensorrt", precision))
    assert fake.calls == [passed]
    info = prepared.info
    assert info["trt_typing"] == typing and info["trt_min_block_size"] == 5
    assert info["trt_attn_bias_is_causal"] == passed.get("attn_bias_is_causal")
    assert (info["trt_engines"], info["trt_torch_subgraphs"], info["trt_fully_converted"]) == (1, 1, False)
    assert info["trt_torch_ops"] == ["relu"]  # what stayed in PyTorch
    assert torch.allclose(prepared.forward(x), model(x))


def test_tensorrt_min_block_size_option_reaches_the_compiler(make_spec):
    fake = _FakeTorchTensorRT(TRT_2_13)
    TensorRT(TensorRTOptions(min_block_size=1)).build(
        fake, nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 16, 16), make_spec("tensorrt", "fp16")
    )
    assert fake.calls[0]["min_block_size"] == 1
    TensorRT().build(
        fake, nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 16, 16), make_spec("tensorrt", "fp32", tf32=True)
    )
    assert fake.calls[1]["disable_tf32"] is False  # --tf32: TensorRT's TF32 stays on, as for the other backends


@pytest.mark.e2e  # the slow tier: a torch.onnx export of a whole model
def test_onnxruntime_runs_the_exported_graph_on_cpu(make_spec):
    model, x = zoo.load("test_convnext"), torch.randn(2, 3, 64, 64)
    spec = make_spec("onnxruntime")
    with torch.no_grad():
        prepared = OnnxRuntime().prepare(model, x, spec)
        out, ref = prepared.forward(x), model(x)
    assert out.shape == ref.shape and "status" not in output_difference(ref, out, spec)
    assert prepared.info["ort_provider"] == "CPUExecutionProvider" and prepared.info["onnx_nodes"] > 0
    assert prepared.info["onnx_opset"] >= 17 and prepared.compile_s >= prepared.info["export_s"] > 0
    with pytest.raises(RuntimeError, match="^torch.onnx.export failed"):
        OnnxRuntime().prepare(_Branchy().eval(), torch.randn(2, 8), spec)


def test_backend_map_names_every_backend_once(bench_flags):
    assert list(BACKENDS) == ["eager", "compile", "tensorrt", "onnxruntime"]
    assert make_backend("tensorrt", {"min_block_size": 3}).options == TensorRTOptions(min_block_size=3)
    assert set(bench_flags["--backend"].choices) == set(BACKENDS)
    for flag in ("--compile-mode", "--trt-min-block-size", "--onnx-opset"):  # each declared by its backend's Options
        assert flag in bench_flags
