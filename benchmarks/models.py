"""Models for ``overhead.py`` written as their authors write them, so that the relaxed step is timed on the same
structure as in the wild (not on the package's own, relax-friendly layers).

- :class:`AuthorsVNPointNet`: the Vector Neurons authors' VN-PointNet classifier (Deng et al. 2021, ``vnn``
  repository, ``models/vn_pointnet_cls.py`` with ``vn_layers.py``) at their widths (64//3, 128//3, 1024//3 channels,
  k = 20, feature transform on): every VN map is a plain ``nn.Linear(c_in, c_out, bias=False)`` applied to the
  transposed feature, ``linear(x.transpose(1, -1)).transpose(1, -1)``. About 2M parameters; relaxed with
  ``VectorNeuronAdapter("torch.nn.Linear")`` (an ``nn.Linear`` with a bias, the invariant head, is no site).
- :func:`escnn_tutorial_cnn`: escnn's tutorial steerable CNN (``examples/model.ipynb``: six ``R2Conv`` blocks with
  ``InnerBatchNorm``, ``ReLU`` and antialiased pooling, group pooling, an MLP head) over C4 or D4, with the widths
  scaled by ``width`` (1.0: the tutorial's 24/48/96/64 fields).

The e3nn networks (``SimpleNetwork``, ``gate_points_2101.Network``) are imported from e3nn itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

EPS = 1e-6


class _Map(nn.Module):
    """The authors' ``VNLinear``: ``nn.Linear(c_in, c_out, bias=False)`` on the channel axis (axis 1)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.map_to_feat = nn.Linear(c_in, c_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.map_to_feat(x.transpose(1, -1)).transpose(1, -1)


class _VNBatchNorm(nn.Module):
    def __init__(self, c: int, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(c) if dim in (3, 4) else nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.norm(x, dim=2) + EPS
        return x / norm.unsqueeze(2) * self.bn(norm).unsqueeze(2)


class _VNLinearLeakyReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, dim: int = 5, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.map_to_feat = nn.Linear(c_in, c_out, bias=False)
        self.batchnorm = _VNBatchNorm(c_out, dim)
        self.map_to_dir = nn.Linear(c_in, c_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.map_to_feat(x.transpose(1, -1)).transpose(1, -1)
        p = self.batchnorm(p)
        d = self.map_to_dir(x.transpose(1, -1)).transpose(1, -1)
        dotprod = (p * d).sum(2, keepdim=True)
        mask = (dotprod >= 0).to(x.dtype)
        d_norm_sq = (d * d).sum(2, keepdim=True)
        s = self.negative_slope
        return s * p + (1 - s) * (mask * p + (1 - mask) * (p - (dotprod / (d_norm_sq + EPS)) * d))


class _VNMaxPool(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.map_to_dir = nn.Linear(c, c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.map_to_dir(x.transpose(1, -1)).transpose(1, -1)
        dotprod = (x * d).sum(2, keepdim=True)
        idx = dotprod.max(dim=-1, keepdim=False)[1]
        index = torch.meshgrid([torch.arange(j, device=x.device) for j in x.size()[:-1]], indexing="ij") + (idx,)
        return x[index]


class _VNStdFeature(nn.Module):
    def __init__(self, c: int, dim: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.vn1 = _VNLinearLeakyReLU(c, c // 2, dim=dim, negative_slope=negative_slope)
        self.vn2 = _VNLinearLeakyReLU(c // 2, c // 4, dim=dim, negative_slope=negative_slope)
        self.vn_lin = nn.Linear(c // 4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z0 = self.vn2(self.vn1(x))
        z0 = self.vn_lin(z0.transpose(1, -1)).transpose(1, -1)  # [B, 3, 3, N]
        x_std = torch.einsum("bijm,bjkm->bikm", x, z0)
        return x_std, z0


def _knn(x: torch.Tensor, k: int) -> torch.Tensor:
    inner = -2 * torch.matmul(x.transpose(2, 1), x)
    xx = torch.sum(x**2, dim=1, keepdim=True)
    return (-xx - inner - xx.transpose(2, 1)).topk(k=k, dim=-1)[1]


def _graph_feature_cross(x: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, 1, 3, N] -> [B, 3, 3, N, k]``: neighbour offset, the point, and their cross product (the authors')."""
    b, n = x.size(0), x.size(3)
    x = x.view(b, -1, n)
    idx = (_knn(x, k) + torch.arange(b, device=x.device).view(-1, 1, 1) * n).view(-1)
    x = x.transpose(2, 1).contiguous()
    feature = x.view(b * n, -1)[idx].view(b, n, k, 1, 3)
    x = x.view(b, n, 1, 1, 3).expand(-1, -1, k, -1, -1)
    cross = torch.cross(feature, x, dim=-1)
    return torch.cat((feature - x, x, cross), dim=3).permute(0, 3, 4, 1, 2).contiguous()


class _STNkd(nn.Module):
    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.conv1 = _VNLinearLeakyReLU(d, 64 // 3, dim=4, negative_slope=0.0)
        self.conv2 = _VNLinearLeakyReLU(64 // 3, 128 // 3, dim=4, negative_slope=0.0)
        self.conv3 = _VNLinearLeakyReLU(128 // 3, 1024 // 3, dim=4, negative_slope=0.0)
        self.fc1 = _VNLinearLeakyReLU(1024 // 3, 512 // 3, dim=3, negative_slope=0.0)
        self.fc2 = _VNLinearLeakyReLU(512 // 3, 256 // 3, dim=3, negative_slope=0.0)
        self.pool = _VNMaxPool(1024 // 3)
        self.fc3 = _Map(256 // 3, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.conv2(self.conv1(x)))
        return self.fc3(self.fc2(self.fc1(self.pool(x))))


class AuthorsVNPointNet(nn.Module):
    """The Vector Neurons authors' VN-PointNet classifier (``vn_pointnet_cls.get_model`` with its
    ``PointNetEncoder``: mean pooling of the k-NN features, feature transform on), input ``[B, 3, N]``."""

    def __init__(self, num_classes: int = 40, k: int = 20) -> None:
        super().__init__()
        self.k = k
        self.conv_pos = _VNLinearLeakyReLU(3, 64 // 3, dim=5, negative_slope=0.0)
        self.conv1 = _VNLinearLeakyReLU(64 // 3, 64 // 3, dim=4, negative_slope=0.0)
        self.conv2 = _VNLinearLeakyReLU(64 // 3 * 2, 128 // 3, dim=4, negative_slope=0.0)
        self.conv3 = _Map(128 // 3, 1024 // 3)
        self.bn3 = _VNBatchNorm(1024 // 3, dim=4)
        self.std_feature = _VNStdFeature(1024 // 3 * 2, dim=4, negative_slope=0.0)
        self.fstn = _STNkd(d=64 // 3)
        self.fc1 = nn.Linear((1024 // 3) * 6, 512)
        self.fc2 = nn.Linear(512, 256)
        self.fc3 = nn.Linear(256, num_classes)
        self.bn1 = nn.BatchNorm1d(512)
        self.bn2 = nn.BatchNorm1d(256)
        self.dropout = nn.Dropout(p=0.4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n = x.size()
        feat = _graph_feature_cross(x.unsqueeze(1), self.k)
        x = self.conv_pos(feat).mean(dim=-1)  # the authors' 'mean' pooling over the k neighbours
        x = self.conv1(x)
        x_global = self.fstn(x).unsqueeze(-1).repeat(1, 1, 1, n)
        x = self.conv2(torch.cat((x, x_global), 1))
        x = self.bn3(self.conv3(x))
        x_mean = x.mean(dim=-1, keepdim=True).expand(x.size())
        x, _ = self.std_feature(torch.cat((x, x_mean), 1))
        x = x.reshape(b, -1, n).max(dim=-1)[0]
        x = self.dropout(torch.relu(self.bn1(self.fc1(x))))
        x = self.dropout(torch.relu(self.bn2(self.fc2(x))))
        return self.fc3(x)


def escnn_tutorial_cnn(group: str = "C4", width: float = 1.0, n_classes: int = 10) -> Any:
    """escnn's tutorial steerable CNN (``C8SteerableCNN`` of ``examples/model.ipynb``) over C4 or D4, on 29x29
    single-channel images, with ``round(width · [24, 48, 48, 96, 96, 64])`` regular fields per block."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*py3nj.*")
        from escnn import gspaces
        from escnn import nn as enn

    gs = gspaces.rot2dOnR2(N=4) if group == "C4" else gspaces.flipRot2dOnR2(N=4)
    fields = [max(1, round(width * f)) for f in (24, 48, 48, 96, 96, 64)]
    kernels, paddings = (7, 5, 5, 5, 5, 5), (1, 2, 2, 2, 2, 1)

    class TutorialCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_type = enn.FieldType(gs, [gs.trivial_repr])
            layers: list[Any] = [enn.MaskModule(self.input_type, 29, margin=1)]
            in_type = self.input_type
            for i, (f, k, p) in enumerate(zip(fields, kernels, paddings)):
                out_type = enn.FieldType(gs, f * [gs.regular_repr])
                layers += [
                    enn.R2Conv(in_type, out_type, kernel_size=k, padding=p, bias=False),
                    enn.InnerBatchNorm(out_type),
                    enn.ReLU(out_type, inplace=True),
                ]
                if i in (1, 3):
                    layers.append(enn.PointwiseAvgPoolAntialiased(out_type, sigma=0.66, stride=2))
                in_type = out_type
            layers.append(enn.PointwiseAvgPoolAntialiased(in_type, sigma=0.66, stride=1, padding=0))
            self.body = enn.SequentialModule(*layers)
            self.gpool = enn.GroupPooling(in_type)
            c = self.gpool.out_type.size
            self.head = nn.Sequential(
                nn.Linear(c, 64), nn.BatchNorm1d(64), nn.ELU(inplace=True), nn.Linear(64, n_classes)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.gpool(self.body(enn.GeometricTensor(x, self.input_type))).tensor
            return self.head(y.mean(dim=(2, 3)))

    return TutorialCNN()
