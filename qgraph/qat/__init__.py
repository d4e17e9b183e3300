"""Quantization-aware training on qgraph's L2 (QDQ) IR (the ``qat`` extra: PyTorch).

    import qgraph
    from qgraph import qat

    ptq = qgraph.quantize("model.onnx", "calib.npz", config)
    module = qat.QATModule(ptq.qdq, ptq.float_model)      # the PTQ model, differentiable
    history = qat.train(module, train_data, teacher=None)  # labels: cross entropy
    result = qat.write_back(ptq, module)                   # a QuantizedModel: L2, L3, report

Modules: ``fake_quant`` (the forward of ``qgraph.quant``'s QuantizeLinear / DequantizeLinear
in torch, LSQ backward), ``torch_ops`` (ONNX ops in torch, by op identity), ``module`` (the
graph as an ``nn.Module``), ``train`` (the loop), ``writeback`` (trained weights and scales
into the QDQ model, then ``lower-qdq``).
"""

from qgraph.qat.module import QATError, QATModule
from qgraph.qat.train import TrainConfig, TrainHistory, train
from qgraph.qat.writeback import qat, write_back

__all__ = ["QATError", "QATModule", "TrainConfig", "TrainHistory", "qat", "train", "write_back"]
