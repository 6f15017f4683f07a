"""The network architectures of the digits zoo (plain PyTorch modules, nothing downloaded).

Detectors map a frame (B, 8, 48) to one logit per column (B, 48): "a digit's 8-column box starts
here". Classifiers map a crop (B, 8, 8) to 10 class logits. Sizes are chosen so that cost and
accuracy differ for real on a CPU:

=========================  ====================================================  ==========
architecture               layers                                                parameters
=========================  ====================================================  ==========
detector-tiny              1-D conv over columns (rows as channels), 8 -> 4 -> 1,   113
                           kernel 3 (sees 5 columns)
detector-small             1-D conv, 8 -> 16 -> 16 -> 1, kernel 5                 2,033
detector-large             2-D conv 1 -> 16 -> 32, then 1-D 256 -> 64 -> 64         107,521
                           (dilated) -> 1
classifier-mlp             64 -> 32 -> 10                                         2,410
classifier-cnn             conv 1 -> 8 -> 16, max-pool, 256 -> 32 -> 10           9,802
classifier-cnn-large       conv 1 -> 32 -> 64, max-pool, conv 128, 2048 -> 256    619,786
                           -> 10
=========================  ====================================================  ==========

``classifier-cnn-large`` carries quant/dequant stubs (identities in fp32) so that its int8 build is
eager-mode static post-training quantisation: every conv and linear layer runs in int8.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


class ColumnDetector1D(nn.Module):
    """1-D convolutions along the columns; the 8 pixel rows of a column are its input channels."""

    def __init__(self, widths: tuple[int, ...], kernel: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 8
        for width in widths:
            layers += [nn.Conv1d(channels, width, kernel, padding=kernel // 2), nn.ReLU()]
            channels = width
        layers.append(nn.Conv1d(channels, 1, kernel, padding=kernel // 2))
        self.net = nn.Sequential(*layers)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (B, 8, 48) -> (B, 48)
        return self.net(frames).squeeze(1)


class ColumnDetector2D(nn.Module):
    """2-D convolutions over the frame, then 1-D convolutions (one dilated) along the columns."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.columns = nn.Sequential(nn.Conv1d(32 * 8, 64, 5, padding=2), nn.ReLU(),
                                     nn.Conv1d(64, 64, 5, padding=4, dilation=2), nn.ReLU(),
                                     nn.Conv1d(64, 1, 3, padding=1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (B, 8, 48) -> (B, 48)
        features = self.image(frames.unsqueeze(1))  # (B, 32, 8, 48)
        batch, channels, height, width = features.shape
        return self.columns(features.reshape(batch, channels * height, width)).squeeze(1)


class MLPClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:  # (B, 8, 8) -> (B, 10)
        return self.net(crops)


class CNNClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(crops.unsqueeze(1)))


class LargeCNNClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant = QuantStub()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(64, 128, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128 * 16, 256), nn.ReLU(), nn.Dropout(0.3),
                                  nn.Linear(256, 10))
        self.dequant = DeQuantStub()

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.head(self.features(self.quant(crops.unsqueeze(1)))))


#: Fusion groups of LargeCNNClassifier for quantisation (conv + relu, linear + relu).
_LARGE_FUSE = [["features.0", "features.1"], ["features.2", "features.3"], ["features.5", "features.6"],
               ["head.1", "head.2"]]
#: The quantised engine the int8 build is made and run with (x86: fbgemm + oneDNN kernels).
QUANT_ENGINE = "x86"


def prepare_int8(model: LargeCNNClassifier) -> nn.Module:
    """Fuse and insert observers (eager-mode static PTQ); calibrate by running data through it."""
    from torch.ao import quantization as tq

    with warnings.catch_warnings():  # torch.ao.quantization warns that it moves to torchao
        warnings.simplefilter("ignore")
        torch.backends.quantized.engine = QUANT_ENGINE
        model = model.eval()
        fused = tq.fuse_modules(model, _LARGE_FUSE)
        fused.qconfig = tq.get_default_qconfig(QUANT_ENGINE)
        return tq.prepare(fused)


def convert_int8(prepared: nn.Module) -> nn.Module:
    """The calibrated model, converted: int8 weights and activations in every conv and linear."""
    from torch.ao import quantization as tq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.quantized.engine = QUANT_ENGINE
        return tq.convert(prepared.eval())


def int8_skeleton() -> nn.Module:
    """An int8 LargeCNNClassifier with placeholder parameters, ready for ``load_state_dict``."""
    return convert_int8(prepare_int8(LargeCNNClassifier()))


ARCHITECTURES = {
    "detector-tiny": lambda: ColumnDetector1D((4,), 3),
    "detector-small": lambda: ColumnDetector1D((16, 16), 5),
    "detector-large": ColumnDetector2D,
    "classifier-mlp": MLPClassifier,
    "classifier-cnn": CNNClassifier,
    "classifier-cnn-large": LargeCNNClassifier,
    "classifier-cnn-large-int8": int8_skeleton,
}


def make(architecture: str) -> nn.Module:
    return ARCHITECTURES[architecture]()
