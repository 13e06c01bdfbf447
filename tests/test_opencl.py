"""The OpenCL backend on whatever OpenCL device is here (pocl's CPU device in CI): results within
1e-4 of onnxruntime for several batch sizes, clear errors at load and at run, the prebuilt-binary
path, buffers that are reused rather than reallocated, and compilers that crash or hang in the
child process that builds and checks the program rather than in ours."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlscore.accelerators import AcceleratorError, DeviceUnavailable, InvalidInput, UnsupportedModel, opencl
from mlscore.accelerators.opencl import program as program_module
from mlscore.accelerators.opencl import toolchain
from mlscore.accelerators.opencl.device import choose_device
from mlscore.accelerators.opencl.toolchain import CompilerFailed, Origin
from mlscore.accelerators.opencl.verify import required_launches

from conftest import process_gone

pytestmark = pytest.mark.skipif(not opencl.devices(), reason="no OpenCL device on this machine "
                                "(pip install 'pyopencl[pocl]' gives a CPU one)")

BATCHES = (1, 3, 17)  # 3 and 17 are not multiples of any tile size
TOLERANCE = 1e-4
rng = np.random.default_rng(7)


# ---- models ---------------------------------------------------------------------------------------------


def weight(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def float_input(name: str, *shape: int | str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def save_model(folder: Path, name: str, nodes: list, inputs: list, outputs: list, initializers: list = (),
               opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(model)
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def mlp(folder: Path) -> Path:
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["hidden"]),
             helper.make_node("Relu", ["hidden"], ["active"]),
             helper.make_node("Gemm", ["active", "w2", "b2"], ["logits"], transB=1, alpha=0.8, beta=0.5),
             helper.make_node("Softmax", ["logits"], ["y"])]
    return save_model(folder, "mlp", nodes, [float_input("x", "batch", 20)], [float_input("y", "batch", 10)],
                      [weight("w1", 20, 70), weight("b1", 70), weight("w2", 10, 70), weight("b2", 1, 10)])


def matmul_add(folder: Path) -> Path:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["product"]), helper.make_node("Add", ["product", "b"], ["y"])]
    return save_model(folder, "matmul_add", nodes, [float_input("x", "batch", 4, 33)],
                      [float_input("y", "batch", 4, 40)], [weight("w", 33, 40), weight("b", 40)])


def batched_matmul(folder: Path) -> Path:
    """Both operands batched, the second broadcast along the first batch dimension."""
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
    return save_model(folder, "batched_matmul", nodes, [float_input("a", "batch", 2, 5, 9), float_input("b", 2, 9, 7)],
                      [float_input("y", "batch", 2, 5, 7)])


def cnn(folder: Path) -> Path:
    nodes = [helper.make_node("Conv", ["x", "k1", "c1"], ["conv1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv1"], ["relu1"]),
             helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["pool1", "k2", "c2"], ["conv2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["conv2"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["y"])]
    return save_model(folder, "cnn", nodes, [float_input("x", "batch", 3, 32, 32)], [float_input("y", "batch", 10)],
                      [weight("k1", 16, 3, 3, 3), weight("c1", 16), weight("k2", 32, 16, 3, 3, scale=0.1),
                       weight("c2", 32), weight("w", 32, 10), weight("b", 10)])


def conv_variants(folder: Path) -> Path:
    """Depthwise and grouped convolutions, dilation, SAME padding, a 1x1 convolution, ceil-mode pooling."""
    nodes = [helper.make_node("Conv", ["x", "depthwise"], ["d"], group=4, auto_pad="SAME_UPPER", strides=[2, 1],
                              kernel_shape=[3, 3]),
             helper.make_node("Conv", ["d", "grouped", "bias"], ["g"], group=2, dilations=[2, 1], pads=[2, 1, 1, 1]),
             helper.make_node("Conv", ["g", "pointwise"], ["p"]),
             helper.make_node("MaxPool", ["p"], ["q"], kernel_shape=[2, 2], auto_pad="SAME_LOWER"),
             helper.make_node("MaxPool", ["q"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
                              pads=[1, 0, 1, 1])]
    return save_model(folder, "conv_variants", nodes, [float_input("x", "batch", 4, 19, 10)],
                      [float_input("y", "batch", 5, None, None)],
                      [weight("depthwise", 4, 1, 3, 3), weight("grouped", 6, 2, 3, 3), weight("bias", 6),
                       weight("pointwise", 5, 6, 1, 1)])


def elementwise(folder: Path) -> Path:
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("Tanh", ["x"], ["t"]),
             helper.make_node("Mul", ["s", "scale"], ["scaled"]),  # [batch, 3, 4, 5] * [3, 1, 5]
             helper.make_node("Sub", ["scaled", "t"], ["diff"]),
             helper.make_node("Div", ["diff", "two"], ["halved"]),  # by a scalar
             helper.make_node("Identity", ["halved"], ["same"]),
             helper.make_node("Reshape", ["same", "shape"], ["rows"]),  # [batch, 12, -1] with 0 copying batch
             helper.make_node("Softmax", ["rows"], ["y"], axis=1)]
    initializers = [weight("scale", 3, 1, 5), numpy_helper.from_array(np.array(2.0, np.float32), "two"),
                    numpy_helper.from_array(np.array([0, 12, -1], np.int64), "shape")]
    return save_model(folder, "elementwise", nodes, [float_input("x", "batch", 3, 4, 5)],
                      [float_input("y", "batch", 12, 5)], initializers)


MODELS: dict[str, Callable[[Path], Path]] = {"mlp": mlp, "matmul_add": matmul_add, "batched_matmul": batched_matmul,
                                             "cnn": cnn, "conv_variants": conv_variants, "elementwise": elementwise}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("opencl_models")
    return {name: build(folder) for name, build in MODELS.items()}


def feeds(path: Path, batch: int) -> dict[str, np.ndarray]:
    """Random inputs for the model at `path`, `batch` in place of every dynamic dimension."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {value.name: rng.standard_normal([d if isinstance(d, int) else batch for d in value.shape])
            .astype(np.float32) for value in session.get_inputs()}


def reference(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([out.name for out in session.get_outputs()], session.run(None, inputs)))


def assert_matches_onnxruntime(path: Path, batch: int, **options) -> None:
    inputs = feeds(path, batch)
    got = opencl.load(path, **options).run(inputs)
    for name, expected in reference(path, inputs).items():
        assert got[name].shape == expected.shape
        np.testing.assert_allclose(got[name], expected, rtol=0, atol=TOLERANCE, err_msg=f"{path.name}: {name}")


# ---- results --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("batch", BATCHES)
def test_outputs_match_onnxruntime_for_each_batch_size(models: dict[str, Path], model: str, batch: int) -> None:
    assert_matches_onnxruntime(models[model], batch)


def test_one_session_serves_batch_sizes_in_any_order(models: dict[str, Path]) -> None:
    session = opencl.load(models["cnn"])
    for batch in (17, 1, 3, 17):
        inputs = feeds(models["cnn"], batch)
        np.testing.assert_allclose(session.run(inputs)["y"], reference(models["cnn"], inputs)["y"], atol=TOLERANCE)


def test_session_describes_its_signature_with_dynamic_dims(models: dict[str, Path]) -> None:
    session = opencl.load(models["mlp"])
    assert session.device == "opencl"
    assert [(info.name, info.dtype, info.shape) for info in session.inputs] == [("x", np.float32, ("batch", 20))]
    assert [(info.name, info.shape) for info in session.outputs] == [("y", ("batch", 10))]


def test_legacy_softmax_normalizes_over_the_trailing_axes(tmp_path: Path) -> None:
    path = save_model(tmp_path, "softmax11", [helper.make_node("Softmax", ["x"], ["y"])],
                      [float_input("x", "batch", 3, 4)], [float_input("y", "batch", 3, 4)], opset=11)
    assert_matches_onnxruntime(path, 3)


def test_outputs_read_by_later_nodes_and_views_of_the_input_come_back(tmp_path: Path) -> None:
    nodes = [helper.make_node("Gemm", ["x", "w"], ["hidden"], transA=1),
             helper.make_node("Relu", ["hidden"], ["active"]),
             helper.make_node("MatMul", ["active", "v"], ["y"]),  # by a vector: [batch, 5] . [5]
             helper.make_node("Flatten", ["x"], ["flat"], axis=0)]
    path = save_model(tmp_path, "outputs", nodes, [float_input("x", 6, "batch")],
                      [float_input("hidden", "batch", 5), float_input("y", "batch"), float_input("flat", 1, None)],
                      [weight("w", 6, 5), weight("v", 5)])
    assert_matches_onnxruntime(path, 3)


def test_empty_batch_gives_empty_outputs(models: dict[str, Path]) -> None:
    outputs = opencl.load(models["cnn"]).run({"x": np.zeros((0, 3, 32, 32), np.float32)})
    assert outputs["y"].shape == (0, 10)


def test_concurrent_runs_from_threads_each_get_their_own_results(models: dict[str, Path]) -> None:
    session = opencl.load(models["mlp"])
    cases = [feeds(models["mlp"], batch) for batch in (1, 3, 17, 3, 1, 17)]
    expected = [reference(models["mlp"], inputs)["y"] for inputs in cases]
    got: list[np.ndarray | None] = [None] * len(cases)

    def score(index: int) -> None:
        for _ in range(5):
            got[index] = session.run(cases[index])["y"]

    threads = [threading.Thread(target=score, args=(index,)) for index in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result, want in zip(got, expected):
        np.testing.assert_allclose(result, want, atol=TOLERANCE)


# ---- matrix products that finish the element-wise nodes after them ---------------------------------------


def fused_op_types(path: Path) -> list[str]:
    from mlscore.accelerators.opencl.graph import read_graph
    from mlscore.accelerators.opencl.ops import build_ops

    return [op.node.op_type for op in build_ops(read_graph(path))]


def layer(folder: Path, name: str, nodes: list, outputs: list | None = None, **options: int) -> Path:
    """x [batch, 12] -> nodes over the weights w [12, 7], bias b [1, 7], row [7] and scalar s."""
    initializers = [weight("w", 12, 7), weight("b", 1, 7), weight("row", 7),
                    numpy_helper.from_array(np.array(0.25, np.float32), "s")]
    return save_model(folder, name, nodes, [float_input("x", "batch", 12)],
                      outputs or [float_input("y", "batch", 7)], initializers, **options)


@pytest.mark.parametrize(("nodes", "fused"), [
    ([helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "b"], ["y"])],
     ["MatMul+Add"]),
    ([helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["row", "p"], ["y"])],  # bias first
     ["MatMul+Add"]),
    ([helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "s"], ["y"])],  # a scalar bias
     ["MatMul+Add"]),
    ([helper.make_node("Gemm", ["x", "w", "row"], ["p"]), helper.make_node("Relu", ["p"], ["y"])],
     ["Gemm+Relu"]),
    ([helper.make_node("Gemm", ["x", "w"], ["p"], alpha=0.5), helper.make_node("Tanh", ["p"], ["y"])],
     ["Gemm+Tanh"]),
    ([helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "b"], ["q"]),
      helper.make_node("Sigmoid", ["q"], ["y"])],
     ["MatMul+Add+Sigmoid"]),
    ([helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Relu", ["p"], ["y"])],
     ["MatMul+Relu"]),
    ([helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Sub", ["p", "b"], ["y"])],  # not a bias
     ["MatMul", "Sub"]),
    ([helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "p"], ["y"])],  # not a constant
     ["MatMul", "Add"]),
])
def test_element_wise_nodes_after_a_product_run_in_its_kernel(tmp_path: Path, nodes: list, fused: list[str]) -> None:
    path = layer(tmp_path, "layer", nodes)
    assert fused_op_types(path) == fused
    for batch in BATCHES:
        assert_matches_onnxruntime(path, batch)


def test_product_read_by_a_second_node_is_not_fused(tmp_path: Path) -> None:
    """`p` feeds the Add and the Mul: the Add cannot take it over. `q` is a model output: the Relu
    cannot take it over either."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "b"], ["q"]),
             helper.make_node("Mul", ["p", "s"], ["scaled"]), helper.make_node("Relu", ["q"], ["r"]),
             helper.make_node("Sub", ["r", "scaled"], ["y"])]
    outputs = [float_input("y", "batch", 7), float_input("q", "batch", 7)]
    path = layer(tmp_path, "shared", nodes, outputs)
    assert fused_op_types(path) == ["MatMul", "Add", "Mul", "Relu", "Sub"]
    for batch in BATCHES:
        assert_matches_onnxruntime(path, batch)


def test_convolution_runs_the_relu_after_it(models: dict[str, Path]) -> None:
    assert fused_op_types(models["cnn"]) == ["Conv+Relu", "MaxPool", "Conv", "GlobalAveragePool", "Flatten", "Gemm",
                                             "Softmax"]


@pytest.mark.parametrize(("nodes", "opset", "fused"), [
    ([helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "b"], ["q"]),
      helper.make_node("Softmax", ["q"], ["y"], axis=-1)], 13, ["MatMul+Add+Softmax"]),
    ([helper.make_node("Gemm", ["x", "w", "row"], ["p"]), helper.make_node("Softmax", ["p"], ["y"])],
     11, ["Gemm+Softmax"]),  # before opset 13 the default axis 1 is a matrix's rows too
    ([helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Softmax", ["p"], ["y"], axis=0)],
     13, ["MatMul", "Softmax"]),  # along the columns: not a row's work-item's to finish
])
def test_a_softmax_along_short_rows_runs_in_the_products_kernel_on_cpus(tmp_path: Path, nodes: list, opset: int,
                                                                        fused: list[str]) -> None:
    from mlscore.accelerators.opencl.graph import read_graph
    from mlscore.accelerators.opencl.ops import build_ops

    path = layer(tmp_path, "classifier", nodes, opset=opset)
    assert [op.node.op_type for op in build_ops(read_graph(path), row_softmax=True)] == fused
    assert fused_op_types(path)[-1] == "Softmax"  # not where the kernel cannot hold a row (GPU tuning)
    assert [op.node.op_type for op in opencl.load(path)._ops] == fused  # pocl runs the CPU tuning
    for batch in BATCHES:
        assert_matches_onnxruntime(path, batch)
    binary = opencl.build_binary(tmp_path / "parallel.bin", tuning=opencl.PARALLEL)
    assert_matches_onnxruntime(path, 17, opencl_binary=binary)


def test_a_softmax_over_rows_longer_than_a_work_items_block_is_not_fused(tmp_path: Path) -> None:
    from mlscore.accelerators.opencl.graph import read_graph
    from mlscore.accelerators.opencl.ops import build_ops

    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Softmax", ["p"], ["y"], axis=-1)]
    path = save_model(tmp_path, "wide", nodes, [float_input("x", "batch", 12)], [float_input("y", "batch", 17)],
                      [weight("w", 12, 17)])
    assert [op.node.op_type for op in build_ops(read_graph(path), row_softmax=True)] == ["MatMul", "Softmax"]
    assert_matches_onnxruntime(path, 5)


def test_fused_products_run_from_a_prebuilt_binary_of_either_tuning(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "b"], ["q"]),
             helper.make_node("Sigmoid", ["q"], ["y"])]
    path = layer(tmp_path, "layer", nodes)
    for tuning in (opencl.SERIAL, opencl.PARALLEL):
        binary = opencl.build_binary(tmp_path / f"{tuning.tile}-{tuning.direct_rows}.bin", tuning=tuning)
        assert opencl.load(path, opencl_binary=binary).program.tuning == tuning
        assert_matches_onnxruntime(path, 17, opencl_binary=binary)


def test_shape_error_in_a_fused_node_names_it(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"], name="layer1"), helper.make_node("Add", ["p", "b"], ["y"])]
    path = save_model(tmp_path, "dynamic", nodes, [float_input("x", "batch", "features")],
                      [float_input("y", "batch", 7)], [weight("w", 12, 7), weight("b", 1, 7)])
    with pytest.raises(InvalidInput, match=r"node 'layer1' \(MatMul\+Add\) cannot take its inputs of shapes "
                                           r"\[2, 5\], \[12, 7\], \[1, 7\]: inner dimensions differ"):
        opencl.load(path).run({"x": np.zeros((2, 5), np.float32)})


# ---- moving inputs and outputs ------------------------------------------------------------------------


def test_inputs_and_outputs_move_by_commands_where_memory_is_not_shared(models: dict[str, Path],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """GPUs and boards have memory of their own: write and read commands instead of shared memory."""
    from mlscore.accelerators.opencl import session as session_module

    monkeypatch.setattr(session_module, "shares_host_memory", lambda device: False)
    for model in ("mlp", "cnn"):
        session = opencl.load(models[model])
        inputs = feeds(models[model], 3)
        got = session.run(inputs)
        assert session._plans[((3, *inputs["x"].shape[1:]),)].shared == {}
        np.testing.assert_allclose(got["y"], reference(models[model], inputs)["y"], rtol=0, atol=TOLERANCE)


def test_inputs_that_are_not_ready_arrays_are_checked_and_converted(models: dict[str, Path]) -> None:
    """Lists, float64 and strided views take check_inputs()'s path; the results are the same."""
    session = opencl.load(models["mlp"])
    x = feeds(models["mlp"], 4)["x"]
    expected = reference(models["mlp"], {"x": x})["y"]
    wide = np.repeat(x, 2, axis=1)[:, ::2]  # not contiguous
    for given in (x, x.tolist(), x.astype(np.float64), wide, x):
        np.testing.assert_allclose(session.run({"x": given})["y"], expected, rtol=0, atol=TOLERANCE)


def test_outputs_are_copies_that_later_runs_leave_alone(models: dict[str, Path]) -> None:
    session = opencl.load(models["mlp"])
    first_inputs, second_inputs = feeds(models["mlp"], 3), feeds(models["mlp"], 3)
    first = session.run(first_inputs)["y"]
    kept = first.copy()
    session.run(second_inputs)
    np.testing.assert_array_equal(first, kept)


# ---- buffers --------------------------------------------------------------------------------------------


def test_same_batch_size_again_allocates_no_new_buffers(models: dict[str, Path]) -> None:
    session = opencl.load(models["cnn"])
    session.run(feeds(models["cnn"], 3))
    allocated = session.allocations
    session.run(feeds(models["cnn"], 3))
    assert session.allocations == allocated
    session.run(feeds(models["cnn"], 4))
    assert session.allocations > allocated


def test_plan_cache_keeps_only_the_most_recent_shapes(models: dict[str, Path]) -> None:
    session = opencl.load(models["mlp"], opencl_plan_cache=2)
    for batch in (1, 2, 3, 2):
        session.run(feeds(models["mlp"], batch))
    assert session.cached_shapes == [((3, 20),), ((2, 20),)]


def test_intermediate_buffers_are_shared_between_tensors_that_do_not_overlap(models: dict[str, Path]) -> None:
    """The CNN's chain of eight nodes needs far fewer than one buffer per tensor."""
    session = opencl.load(models["cnn"])
    session.run(feeds(models["cnn"], 2))
    assert session.allocations <= 5


# ---- errors at load -------------------------------------------------------------------------------------


def test_unsupported_op_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    path = save_model(tmp_path, "erf", [helper.make_node("Erf", ["x"], ["e"]), helper.make_node("Relu", ["e"], ["y"])],
                      [float_input("x", "batch", 4)], [float_input("y", "batch", 4)])
    with pytest.raises(UnsupportedModel) as error:
        opencl.load(path)
    message = str(error.value)
    assert "unsupported operator Erf" in message
    assert "Gemm" in message and "Conv" in message and "GlobalAveragePool" in message


@pytest.mark.parametrize(("node", "expected"), [
    (helper.make_node("Conv", ["x", "k"], ["y"], auto_pad="MIRROR"), "auto_pad 'MIRROR'"),
    (helper.make_node("Conv", ["x", "k"], ["y"], pads=[1, 1]), "only 2-D windows"),
    (helper.make_node("Reshape", ["x", "x"], ["y"]), "the shape must be a constant"),
    (helper.make_node("Softmax", ["x"], ["y"], axis=1, unheard_of=3), "attribute unheard_of is not supported"),
])
def test_unsupported_attributes_are_refused_at_load(tmp_path: Path, node: onnx.NodeProto, expected: str) -> None:
    path = tmp_path / "model.onnx"
    graph = helper.make_graph([node], "g", [float_input("x", 1, 2, 5, 5)], [float_input("y", None)],
                              [weight("k", 3, 2, 3, 3)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    with pytest.raises(UnsupportedModel, match="node") as error:
        opencl.load(path)
    assert expected in str(error.value)


def test_non_float_model_is_refused(tmp_path: Path) -> None:
    path = save_model(tmp_path, "ints", [helper.make_node("Relu", ["x"], ["y"])],
                      [helper.make_tensor_value_info("x", TensorProto.INT32, [2])],
                      [helper.make_tensor_value_info("y", TensorProto.INT32, [2])])
    with pytest.raises(UnsupportedModel, match="float32 models only"):
        opencl.load(path)


def test_unknown_option_and_unknown_device_are_refused(models: dict[str, Path]) -> None:
    with pytest.raises(AcceleratorError, match="unknown option threads"):
        opencl.load(models["mlp"], threads=2)
    with pytest.raises(DeviceUnavailable, match="no OpenCL device matches .*the devices are 0: "):
        opencl.load(models["mlp"], opencl_device="no such board")


# ---- errors at run --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("inputs", "expected"), [
    ({"x": np.zeros((2, 20), np.float32), "z": np.zeros(1)}, "unknown input 'z'"),
    ({}, "missing input 'x'"),
    ({"x": np.zeros((2, 4, 5), np.float32)}, "must have 2 dimensions"),
    ({"x": np.zeros((2, 21), np.float32)}, "dimension 1 must be 20, got 21"),
    ({"x": [["a"] * 20]}, "must be float32"),
])
def test_bad_inputs_raise_invalid_input_naming_the_problem(models: dict[str, Path], inputs: dict,
                                                           expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected):
        opencl.load(models["mlp"]).run(inputs)


def test_shapes_that_cannot_pass_a_node_name_it(tmp_path: Path) -> None:
    path = save_model(tmp_path, "reshape", [helper.make_node("Reshape", ["x", "shape"], ["y"])],
                      [float_input("x", "batch", 3)], [float_input("y", 2, -1)],
                      [numpy_helper.from_array(np.array([2, -1], np.int64), "shape")])
    with pytest.raises(InvalidInput, match=r"node 'y' \(Reshape\).*cannot reshape \[3, 3\]"):
        opencl.load(path).run({"x": np.zeros((3, 3), np.float32)})


# ---- the prebuilt binary --------------------------------------------------------------------------------


def test_saved_binary_loads_back_with_identical_results(models: dict[str, Path], tmp_path: Path) -> None:
    from_source = opencl.load(models["cnn"])
    binary = from_source.save_binary(tmp_path / "mlscore.bin")
    from_binary = opencl.load(models["cnn"], opencl_binary=binary)
    assert from_binary.program.origin == str(binary)
    inputs = feeds(models["cnn"], 3)
    np.testing.assert_array_equal(from_binary.run(inputs)["y"], from_source.run(inputs)["y"])


def test_build_binary_serves_any_model(models: dict[str, Path], tmp_path: Path) -> None:
    binary = opencl.build_binary(tmp_path / "any.bin")
    assert_matches_onnxruntime(models["elementwise"], 3, opencl_binary=binary)


@pytest.mark.parametrize("batch", (1, 17))
def test_binary_carries_its_work_shapes(models: dict[str, Path], tmp_path: Path, batch: int) -> None:
    """A CPU device builds the serial tuning; the parallel one that GPUs and FPGAs get (many
    work-items per tile, a local-memory reduction) runs here from a binary that reports it."""
    binary = opencl.build_binary(tmp_path / "parallel.bin", tuning=opencl.PARALLEL)
    assert opencl.load(models["mlp"], opencl_binary=binary).program.tuning == opencl.PARALLEL
    for model in sorted(MODELS):
        assert_matches_onnxruntime(models[model], batch, opencl_binary=binary)


def test_garbage_binary_fails_naming_the_file(models: dict[str, Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x7fELF not a program" * 64)
    with pytest.raises(AcceleratorError, match=f"opencl_binary {garbage} is not a program binary for"):
        opencl.load(models["mlp"], opencl_binary=garbage)


def test_binary_of_other_kernels_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    import pyopencl as cl

    device = cl.get_platforms()[0].get_devices()[0]
    stale = opencl.kernel_source().replace("#define MLSCORE_ABI ", "#define MLSCORE_ABI 1u //", 1)
    binary = tmp_path / "stale.bin"
    binary.write_bytes(cl.Program(cl.Context([device]), stale).build().get_info(cl.program_info.BINARIES)[0])
    with pytest.raises(AcceleratorError, match=f"the program from {binary} holds another version"):
        opencl.load(models["mlp"], opencl_binary=binary, opencl_device=0)


def test_missing_binary_fails_naming_the_file(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(AcceleratorError, match="cannot read .*absent.bin"):
        opencl.load(models["mlp"], opencl_binary=tmp_path / "absent.bin")


# ---- devices --------------------------------------------------------------------------------------------


def test_devices_describe_each_opencl_device() -> None:
    found = opencl.devices()
    assert all(info.kind == "opencl" and info.name for info in found)
    details = found[0].details
    assert details["index"] == 0
    assert details["type"] in ("CPU", "GPU", "ACCELERATOR", "CUSTOM", "OTHER")
    assert details["compute_units"] >= 1 and details["global_memory_bytes"] > 0 and details["local_memory_bytes"] > 0
    assert details["opencl_version"].startswith("OpenCL")


def test_machine_without_opencl_lists_none_and_says_how_to_get_one(models: dict[str, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import pyopencl as cl

    monkeypatch.setattr(cl, "get_platforms", lambda: [])
    assert opencl.devices() == []
    with pytest.raises(DeviceUnavailable, match=r"no OpenCL device found: pip install 'pyopencl\[pocl\]'"):
        opencl.load(models["mlp"])


def test_pocl_device_is_listed_when_pocl_is_installed() -> None:
    pytest.importorskip("pocl_binary_distribution", reason="pocl's wheel is not installed")
    assert any("Portable Computing Language" in info.details["platform"] for info in opencl.devices())


# ---- building and checking the program in a child process ------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# What pocl 3.0 printed before it aborted on Zen 4 (issue 14), then the signal it died of.
LLVM_CRASH = ("import os, sys; sys.stderr.write(\"LLVM ERROR: Do not know how to scalarize this operator's "
              "operand!\\n\"); sys.stderr.flush(); os.abort()")


@pytest.fixture()
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of verified programs holding nothing yet, and no program loaded in this process."""
    folder = tmp_path / "verified"
    monkeypatch.setenv(toolchain.CACHE_ENV, str(folder))
    monkeypatch.setattr(program_module, "_programs", {})
    return folder


def compiler_runs(monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    """The verifying child replaced by the Python program `code` (which gets the paths as globals)."""
    def command(device, origin, work, out, result) -> list[str]:
        return [sys.executable, "-c", f"out, result = {str(out)!r}, {str(result)!r}\n{code}"]

    monkeypatch.setattr(toolchain, "child_command", command)


def device_name() -> str:
    return choose_device(None).name.strip()


def test_compiler_crash_is_an_error_naming_the_device_the_signal_and_the_compilers_last_line(
        models: dict[str, Path], own_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiler_runs(monkeypatch, LLVM_CRASH)
    with pytest.raises(CompilerFailed) as raised:
        opencl.load(models["mlp"])
    message = str(raised.value)
    assert message.startswith(f"the OpenCL compiler crashed (SIGABRT) building mlscore's kernels for OpenCL device "
                              f"{device_name()!r}")
    assert message.endswith("LLVM ERROR: Do not know how to scalarize this operator's operand!")
    assert "\n" not in message


def test_a_crash_is_remembered_until_its_record_is_deleted(own_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = choose_device(None)
    compiler_runs(monkeypatch, LLVM_CRASH)
    with pytest.raises(CompilerFailed, match="crashed"):
        toolchain.verified_binary(device, Origin(tuning=opencl.SERIAL))
    compiler_runs(monkeypatch, "raise SystemExit(7)")
    with pytest.raises(CompilerFailed, match=r"crashed \(SIGABRT\).*remembered from an earlier attempt: delete "):
        toolchain.verified_binary(device, Origin(tuning=opencl.SERIAL))
    [record] = own_cache.glob("*.failed")
    record.unlink()
    with pytest.raises(CompilerFailed, match="the OpenCL compiler exited with status 7 building"):
        toolchain.verified_binary(device, Origin(tuning=opencl.SERIAL))


def test_hung_compiler_is_killed_with_what_it_started_at_the_time_limit(
        own_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pids = tmp_path / "pids"
    compiler_runs(monkeypatch, f"""
import os, subprocess, sys, time
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{helper.pid}}")
print("llvm_workgroup_ir_func_gen still running", flush=True)
time.sleep(120)
""")
    monkeypatch.setenv(toolchain.TIMEOUT_ENV, "4")
    with pytest.raises(CompilerFailed) as raised:
        toolchain.verified_binary(choose_device(None), Origin(tuning=opencl.SERIAL))
    assert f"building mlscore's kernels for OpenCL device {device_name()!r}" in str(raised.value)
    assert "did not finish within 4 s (MLSCORE_OPENCL_BUILD_TIMEOUT)" in str(raised.value)
    assert str(raised.value).endswith("the compiler's last lines: llvm_workgroup_ir_func_gen still running")
    for pid in map(int, pids.read_text().split()):
        assert process_gone(pid), f"process {pid} still runs"
    assert not list(own_cache.glob("*.failed"))  # a time limit is no verdict on the compiler: tried again next time



def test_verified_binary_is_cached_per_origin_and_its_own_bytes_need_no_second_check(
        own_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = choose_device(None)
    compiler_runs(monkeypatch, "open(out, 'wb').write(b'verified program')")
    assert toolchain.verified_binary(device, Origin(tuning=opencl.SERIAL)) == b"verified program"
    compiler_runs(monkeypatch, LLVM_CRASH)
    assert toolchain.verified_binary(device, Origin(tuning=opencl.SERIAL)) == b"verified program"
    given_back = Origin(binary=b"verified program", name="saved.bin")
    assert toolchain.verified_binary(device, given_back) == b"verified program"
    with pytest.raises(CompilerFailed):  # other work shapes are another source
        toolchain.verified_binary(device, Origin(tuning=replace(opencl.SERIAL, flat_group=8)))


def test_cache_key_follows_the_driver_settings_and_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    device = choose_device(None)
    serial = toolchain.cache_key(device, Origin(tuning=opencl.SERIAL))
    assert toolchain.cache_key(device, Origin(tuning=opencl.PARALLEL)) != serial
    monkeypatch.setenv("POCL_EXTRA_BUILD_FLAGS", "-cl-fast-relaxed-math")
    assert toolchain.cache_key(device, Origin(tuning=opencl.SERIAL)) != serial
    monkeypatch.delenv("POCL_EXTRA_BUILD_FLAGS")
    monkeypatch.setenv("POCL_CACHE_DIR", "/elsewhere")
    assert toolchain.cache_key(device, Origin(tuning=opencl.SERIAL)) == serial


def test_refusal_in_the_child_comes_back_as_its_message(own_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiler_runs(monkeypatch, "import json; json.dump({'error': 'wrong answers: check layers'}, open(result, 'w'))\n"
                               "raise SystemExit(2)")
    with pytest.raises(AcceleratorError, match="^wrong answers: check layers$") as raised:
        toolchain.verified_binary(choose_device(None), Origin(tuning=opencl.SERIAL))
    assert not isinstance(raised.value, CompilerFailed)


def test_devices_mark_one_whose_compiler_crashes_unusable_and_say_why(own_cache: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    compiler_runs(monkeypatch, LLVM_CRASH)
    details = opencl.devices()[0].details
    assert details["usable"] is False
    assert "crashed (SIGABRT)" in details["problem"] and "LLVM ERROR" in details["problem"]


def test_devices_whose_kernels_pass_their_checks_are_usable() -> None:
    assert all(info.details["usable"] and "problem" not in info.details for info in opencl.devices())


def test_checks_cover_every_kernel_a_plan_launches_on_narrow_and_wide_grids() -> None:
    """pocl compiles a work-group function per (group size, narrow or wide grid): verify's checks
    launch each kernel both ways (they refuse to pass otherwise), every kernel requires its group size."""
    kernels = {name for name, _ in required_launches(opencl.SERIAL)}
    assert "gemm_direct" in kernels and "gemm" not in kernels and "program_info" not in kernels
    assert {name for name, _ in required_launches(opencl.PARALLEL)} == kernels - {"gemm_direct"} | {"gemm"}
    assert required_launches(opencl.SERIAL) == {(name, wide) for name in kernels for wide in (False, True)}
    source = opencl.kernel_source(opencl.SERIAL)
    assert source.count("__kernel") == source.count("__kernel __attribute__((reqd_work_group_size(")


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`code` in a child interpreter, so that a compiler crash there fails this test, not the test run."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_kernels_pass_no_vector_wider_than_the_target_to_a_built_in(tmp_path: Path) -> None:
    """Issue 14: pocl 3.0 compiles for the CPU as LLVM 14 names it ("znver3" for a Zen 4: no
    AVX-512) and links the kernel library built for the instruction sets the CPU reports (AVX-512).
    A float16 returned by vload16 crossed that boundary under two ABIs and LLVM aborted. clang warns
    wherever such a call is compiled for a target without AVX-512."""
    built = run_python("""
import pyopencl as cl
from mlscore.accelerators import opencl
from mlscore.accelerators.opencl.device import choose_device
device = choose_device(None)
context = cl.Context([device])
for tuning in (opencl.SERIAL, opencl.PARALLEL):
    program = cl.Program(context, opencl.kernel_source(tuning)).build()
    print(program.get_build_info(device, cl.program_build_info.LOG))
""", env={"PYOPENCL_NO_CACHE": "1", "POCL_CACHE_DIR": str(tmp_path / "pocl")})  # a fresh build: its warnings
    assert built.returncode == 0, built.stdout + built.stderr
    assert "changes the ABI" not in built.stdout + built.stderr


def test_a_loaded_program_makes_pocl_compile_nothing_whatever_the_batch(models: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    """The verified binary holds every work-group function the plans can launch: with a pocl cache
    that starts empty, serving batches of every size (wide grids included) compiles nothing."""
    pytest.importorskip("pocl_binary_distribution", reason="pocl's wheel is not installed")
    opencl.load(models["mlp"])  # verified (or found verified) here, before the child process below
    paths = {name: str(models[name]) for name in ("mlp", "cnn", "elementwise")}
    served = run_python(f"""
import numpy as np
from mlscore.accelerators import opencl
for name, batches in (("mlp", (1, 17, 300)), ("cnn", (1, 5, 64)), ("elementwise", (1, 9, 5000))):
    session = opencl.load({paths!r}[name])
    for batch in batches:
        session.run({{"x": np.ones([batch, *session.inputs[0].shape[1:]], np.float32)}})
print("served")
""", env={"POCL_DEBUG": "all", "POCL_CACHE_DIR": str(tmp_path / "pocl")})
    assert served.returncode == 0 and "served" in served.stdout, served.stdout[-3000:] + served.stderr[-3000:]
    assert "Using a cached WG function" in served.stderr
    compiled = [line for line in served.stderr.splitlines() if "Built a WG function" in line or "llvm_codegen" in line]
    assert compiled == []


def crashing_compiler(tmp_path: Path) -> dict[str, str]:
    """The environment of a server whose verifying child aborts as pocl did on Zen 4, with a cache of its own."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "if '--expect' in sys.argv and '--parent' in sys.argv:  # verify.py's command line\n"
        f"    {LLVM_CRASH}\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
            toolchain.CACHE_ENV: str(tmp_path / "verified")}


def test_serve_exits_3_with_one_line_naming_the_device_when_its_compiler_crashes(tmp_path: Path) -> None:
    from conftest import run_server_to_exit

    model = EXAMPLES / "digits_onnx" / "models" / "digits_mlp.onnx"
    result = run_server_to_exit(tmp_path, "--model", str(model), "--device", "opencl",
                                env=crashing_compiler(tmp_path))
    log = result.stdout + result.stderr
    assert result.returncode == 3, log
    [line] = [line for line in log.splitlines() if "cannot start" in line]
    assert f"OpenCL device {device_name()!r}" in line and "crashed (SIGABRT)" in line
    assert "LLVM ERROR: Do not know how to scalarize" in line


def test_devices_command_says_why_a_device_is_unusable(tmp_path: Path) -> None:
    listed = subprocess.run([sys.executable, "-m", "mlscore", "devices"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **crashing_compiler(tmp_path)})
    assert listed.returncode == 0, listed.stderr
    [line] = [line for line in listed.stdout.splitlines() if line.startswith("opencl")]
    assert "usable: False" in line and "crashed (SIGABRT)" in line and "LLVM ERROR" in line
