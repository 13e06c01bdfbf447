"""Build the example models from scikit-learn's bundled datasets (no downloads).

Writes examples/<example>/models/…, laid out the way each score.py asks for its model:
  diabetes  models/sklearn_regression_model.pkl          (a plain file)
  digits    models/digits/1/model.joblib                 (the registry layout, one version)
  powerbi   models/diabetes_table/1/model.joblib         (registry layout; version 2 is the newest)
            models/diabetes_table/2/model.joblib
  digits_onnx  models/digits_mlp.onnx                    (scikit-learn MLP converted by skl2onnx)
  cnn_onnx     models/cnn.onnx                           (a small CNN written with onnx.helper)

Run: python examples/build_models.py [--force]. Existing models are kept unless --force.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import joblib
import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper, numpy_helper
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

HERE = Path(__file__).resolve().parent


def build_diabetes(models: Path) -> list[Path]:
    data = load_diabetes()
    model = Ridge(alpha=0.1).fit(data.data, data.target)
    return [_save(model, models / "sklearn_regression_model.pkl")]


def build_digits(models: Path) -> list[Path]:
    data = load_digits()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(data.data, data.target)
    return [_save(model, models / "digits" / "1" / "model.joblib")]


def build_powerbi(models: Path) -> list[Path]:
    frame = diabetes_table()
    target = load_diabetes(scaled=False).target
    encode = ColumnTransformer(
        [("sex", OneHotEncoder(handle_unknown="ignore"), ["sex"])], remainder=StandardScaler()
    )
    first = make_pipeline(encode, Ridge(alpha=10.0)).fit(frame, target)
    newest = make_pipeline(encode, Ridge(alpha=1.0)).fit(frame, target)
    return [
        _save(first, models / "diabetes_table" / "1" / "model.joblib"),
        _save(newest, models / "diabetes_table" / "2" / "model.joblib"),
    ]


def build_digits_onnx(models: Path) -> list[Path]:
    """An MLP on the raw 0-16 pixels, converted by skl2onnx. Only the probabilities are kept
    (zipmap=False makes them a float32 [N, 10] tensor; the label output, which needs the ai.onnx.ml
    domain, is cut off, and so is a cast of the float input to float), so the graph is MatMul, Add,
    Relu, Softmax and Identity: operators the OpenCL backend has too. The digit is the index of the
    largest probability."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    data = load_digits()
    mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=400, random_state=0).fit(data.data, data.target)
    converted = to_onnx(mlp, initial_types=[("input", FloatTensorType([None, 64]))],
                        options={id(mlp): {"zipmap": False}}, target_opset=17)
    model = _only_output(converted, "probabilities")
    return [_save_onnx(model, models / "digits_mlp.onnx")]


def build_cnn_onnx(models: Path) -> list[Path]:
    """A CNN for the 8x8 digits: image float32 [N, 1, 8, 8] -> Conv 3x3 (stride 1, pad 1) -> Relu ->
    MaxPool 2x2 -> Conv 3x3 (pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax ->
    probabilities [N, 10]. The convolutions keep random weights from a fixed seed; only the Gemm
    is trained (a logistic regression on the pooled features, which onnxruntime computes), which
    takes a second and classifies about 98% of the digits right."""
    data = load_digits()
    images = data.images.astype(np.float32).reshape(-1, 1, 8, 8)
    rng = np.random.default_rng(0)
    weights = {
        "conv1_w": rng.normal(0.0, 1 / 3, (8, 1, 3, 3)), "conv1_b": np.zeros(8),
        "conv2_w": rng.normal(0.0, 1 / np.sqrt(9 * 8), (32, 8, 3, 3)), "conv2_b": rng.normal(0.0, 0.5, 32),
    }
    features = _run_onnx(_cnn(CNN_FEATURES, "features", 32, weights), {"image": images})["features"]
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    readout = LogisticRegression(C=10.0, max_iter=2000).fit((features - mean) / scale, data.target)
    # The standardisation folded into the Gemm: ((f - mean) / scale) @ W.T + b == f @ (W / scale).T + b'
    weights["gemm_w"] = readout.coef_ / scale
    weights["gemm_b"] = readout.intercept_ - weights["gemm_w"] @ mean
    return [_save_onnx(_cnn(CNN_FEATURES + CNN_HEAD, "probabilities", 10, weights), models / "cnn.onnx")]


CNN_FEATURES = [
    helper.make_node("Conv", ["image", "conv1_w", "conv1_b"], ["conv1"], kernel_shape=[3, 3], strides=[1, 1],
                     pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["conv1"], ["relu1"]),
    helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
    helper.make_node("Conv", ["pool1", "conv2_w", "conv2_b"], ["conv2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["conv2"], ["relu2"]),
    helper.make_node("GlobalAveragePool", ["relu2"], ["pool2"]),
    helper.make_node("Flatten", ["pool2"], ["features"], axis=1),
]
CNN_HEAD = [
    helper.make_node("Gemm", ["features", "gemm_w", "gemm_b"], ["logits"], transB=1),
    helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
]


def _cnn(nodes: list[onnx.NodeProto], output: str, width: int, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The CNN's nodes as a model answering `output` [N, width], with the weights they use."""
    used = {name for node in nodes for name in node.input}
    initializers = [numpy_helper.from_array(np.asarray(value, np.float32), name)
                    for name, value in weights.items() if name in used]
    graph = helper.make_graph(
        nodes, "digits_cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", width])], initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def _run_onnx(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def _only_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """The model answering only its output `name`, less the nodes, weights and operator domains
    that only the other outputs used, and less casts of a float input to float (skl2onnx writes
    one; the OpenCL backend has no Cast). Its batch dimension is named N."""
    needed = {name}
    nodes = []
    for node in reversed(model.graph.node):  # ONNX lists nodes in topological order
        if needed & set(node.output):
            nodes.insert(0, node)
            needed |= set(node.input)
    floats = {value.name for value in model.graph.input if value.type.tensor_type.elem_type == TensorProto.FLOAT}
    casts = {node.output[0]: node.input[0] for node in nodes if node.op_type == "Cast" and node.input[0] in floats
             and helper.get_attribute_value(node.attribute[0]) == TensorProto.FLOAT}
    nodes = [_reading(node, casts) for node in nodes if node.output[0] not in casts]
    output = next(value for value in model.graph.output if value.name == name)
    initializers = [tensor for tensor in model.graph.initializer if tensor.name in needed]
    graph = helper.make_graph(nodes, model.graph.name, model.graph.input, [output], initializers)
    domains = {node.domain for node in nodes}
    model = helper.make_model(graph, opset_imports=[opset for opset in model.opset_import if opset.domain in domains],
                              ir_version=model.ir_version, producer_name=model.producer_name,
                              producer_version=model.producer_version)
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.checker.check_model(model, full_check=True)
    return model


def _reading(node: onnx.NodeProto, renames: dict[str, str]) -> onnx.NodeProto:
    """A copy of `node` whose inputs are renamed by `renames`."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.input[:] = [renames.get(name, name) for name in node.input]
    return copy


def diabetes_table() -> pd.DataFrame:
    """The unscaled diabetes features as a table of mixed column types."""
    data = load_diabetes(scaled=False, as_frame=True)
    frame = data.frame.drop(columns="target")
    frame["age"] = frame["age"].astype(np.int64)
    frame["sex"] = np.where(frame["sex"] == 1, "female", "male")
    return frame


def _save(model: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    joblib.dump(model, temporary)
    temporary.replace(path)  # never leave a half-written model behind
    return path


def _save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_bytes(model.SerializeToString())
    temporary.replace(path)
    return path


BUILDERS = {"diabetes": build_diabetes, "digits": build_digits, "powerbi": build_powerbi,
            "digits_onnx": build_digits_onnx, "cnn_onnx": build_cnn_onnx}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild models that exist already")
    args = parser.parse_args(argv)
    for name, build in BUILDERS.items():
        models = HERE / name / "models"
        if models.is_dir() and any(models.iterdir()) and not args.force:
            print(f"{name}: models present in {models}")
            continue
        for path in build(models):
            print(f"{name}: wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
