"""The onnxruntime session every peer server of benchmarks/peers.py scores with: mlscore's own
session options (every graph optimisation, operators one after another, idle pool threads that do
not spin) and the benchmark's thread rule, intra-op threads = cores ÷ inference workers, which
peers.py passes in PEER_ORT_THREADS."""

from __future__ import annotations

import os

import onnxruntime as ort


def open_session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(os.environ["PEER_ORT_THREADS"])
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
