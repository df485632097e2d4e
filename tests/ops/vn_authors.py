"""A Vector-Neuron PointNet written the way the VN authors write theirs (Deng et al. 2021, the FlyingGiraffe/vnn
repository's ``vn_layers.py`` and ``vn_pointnet.py``), in our own code: for the tests of ``relax.ops`` on models as
they are found in the wild.

What makes it hard, as in the original:

- most VN maps are plain ``nn.Linear(c_in, c_out, bias=False)`` applied to a transposed feature,
  ``self.map_to_feat(x.transpose(1, -1)).transpose(1, -1)``, so the 3-axis sits at axis 2 of a 4-D or 5-D feature
  or at axis 1 of a 3-D one, and the channels are last;
- the edge feature of the first layer is 5-D, ``[B, 3, 3, N, k]``, with 3 channels (as many as the 3-vector);
- :class:`VNLinear` keeps its channel counts on an inner ``nn.Linear`` (``map_to_feat.in_features``);
- the model takes ``[B, 3, N]`` points (the 3-axis is not last) and is built by ``get_model(args, ...)`` from an
  argparse namespace;
- its head is ``nn.Linear`` layers with biases on invariant features.

With ``pooling="mean"`` it has 23 VN ``nn.Linear`` maps, as the original VN-PointNet classifier does; widths are
parameters (``args.width``) so that tests can make it tiny. Batch-norm statistics are per channel norm, so the model
is rotation- and reflection-invariant (not translation-invariant: the edge feature holds the points themselves).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from relaxcli.tasks import PointCloudData

EPS = 1e-6


class VNLinear(nn.Module):
    """The authors' VN linear: the counts live on the inner ``nn.Linear``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.map_to_feat = nn.Linear(in_channels, out_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.map_to_feat(x.transpose(1, -1)).transpose(1, -1)


class VNBatchNorm(nn.Module):
    """Batch norm of the channel norms (invariant), rescaling each 3-vector."""

    def __init__(self, num_features: int, dim: int) -> None:
        super().__init__()
        self.bn: nn.Module = nn.BatchNorm1d(num_features) if dim in (3, 4) else nn.BatchNorm2d(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.norm(x, dim=2) + EPS
        norm_bn = self.bn(norm)
        return x / norm.unsqueeze(2) * norm_bn.unsqueeze(2)


class VNLinearLeakyReLU(nn.Module):
    """Two inline ``nn.Linear`` maps on the transposed feature: the feature and the learnt direction."""

    def __init__(self, in_channels: int, out_channels: int, dim: int = 5, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.map_to_feat = nn.Linear(in_channels, out_channels, bias=False)
        self.batchnorm = VNBatchNorm(out_channels, dim=dim)
        self.map_to_dir = nn.Linear(in_channels, out_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.map_to_feat(x.transpose(1, -1)).transpose(1, -1)
        p = self.batchnorm(p)
        d = self.map_to_dir(x.transpose(1, -1)).transpose(1, -1)
        dotprod = (p * d).sum(2, keepdim=True)
        mask = (dotprod >= 0).to(x.dtype)
        d_norm_sq = (d * d).sum(2, keepdim=True)
        return self.negative_slope * p + (1 - self.negative_slope) * (
            mask * p + (1 - mask) * (p - (dotprod / (d_norm_sq + EPS)) * d)
        )


class VNMaxPool(nn.Module):
    """Max-pool over points by the projection on a learnt direction."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.map_to_dir = nn.Linear(in_channels, in_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.map_to_dir(x.transpose(1, -1)).transpose(1, -1)
        dotprod = (x * d).sum(2, keepdim=True)
        idx = dotprod.max(dim=-1, keepdim=False)[1]
        index_tuple = (*torch.meshgrid([torch.arange(j) for j in x.size()[:-1]], indexing="ij"), idx)
        return x[index_tuple]


def mean_pool(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    return x.mean(dim=dim, keepdim=keepdim)


class VNStdFeature(nn.Module):
    """An invariant frame per point: two VN layers and an inline ``nn.Linear`` to 3 vectors."""

    def __init__(self, in_channels: int, dim: int = 4, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.dim = dim
        self.vn1 = VNLinearLeakyReLU(in_channels, in_channels // 2, dim=dim, negative_slope=negative_slope)
        self.vn2 = VNLinearLeakyReLU(in_channels // 2, in_channels // 4, dim=dim, negative_slope=negative_slope)
        self.vn_lin = nn.Linear(in_channels // 4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z0 = self.vn2(self.vn1(x))
        z0 = self.vn_lin(z0.transpose(1, -1)).transpose(1, -1)
        z0 = z0.transpose(1, 2)
        if self.dim == 4:
            x_std = torch.einsum("bijm,bjkm->bikm", x, z0)
        else:
            x_std = torch.einsum("bij,bjk->bik", x, z0)
        return x_std, z0


def knn(x: torch.Tensor, k: int) -> torch.Tensor:
    inner = -2 * torch.matmul(x.transpose(2, 1), x)
    xx = torch.sum(x**2, dim=1, keepdim=True)
    pairwise_distance = -xx - inner - xx.transpose(2, 1)
    return pairwise_distance.topk(k=k, dim=-1)[1]


def get_graph_feature_cross(x: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, 1, 3, N]`` -> the edge feature ``[B, 3, 3, N, k]``: (neighbour − point, point, neighbour × point)."""
    batch_size, num_points = x.size(0), x.size(3)
    x = x.view(batch_size, -1, num_points)
    idx = knn(x, k=k) + torch.arange(0, batch_size, device=x.device).view(-1, 1, 1) * num_points
    idx = idx.view(-1)
    num_dims = x.size(1) // 3
    x = x.transpose(2, 1).contiguous()
    feature = x.view(batch_size * num_points, -1)[idx, :]
    feature = feature.view(batch_size, num_points, k, num_dims, 3)
    x = x.view(batch_size, num_points, 1, num_dims, 3).repeat(1, 1, k, 1, 1)
    cross = torch.cross(feature, x, dim=-1)
    return torch.cat((feature - x, x, cross), dim=3).permute(0, 3, 4, 1, 2).contiguous()


class STNkd(nn.Module):
    """The feature transform: VN layers on 4-D features, pooled, then on 3-D ones (``[B, C, 3]``)."""

    def __init__(self, args: Any, d: int) -> None:
        super().__init__()
        w = args.width
        self.conv1 = VNLinearLeakyReLU(d, w, dim=4, negative_slope=0.0)
        self.conv2 = VNLinearLeakyReLU(w, 2 * w, dim=4, negative_slope=0.0)
        self.conv3 = VNLinearLeakyReLU(2 * w, 4 * w, dim=4, negative_slope=0.0)
        self.fc1 = VNLinearLeakyReLU(4 * w, 2 * w, dim=3, negative_slope=0.0)
        self.fc2 = VNLinearLeakyReLU(2 * w, w, dim=3, negative_slope=0.0)
        self.pool: Any = VNMaxPool(4 * w) if args.pooling == "max" else mean_pool
        self.fc3 = VNLinear(w, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.conv2(self.conv1(x)))
        x = self.pool(x)
        return self.fc3(self.fc2(self.fc1(x)))


class PointNetEncoder(nn.Module):
    """``[B, 3, N]`` points -> invariant global feature ``[B, 3 · 2 · 4w]``."""

    def __init__(self, args: Any) -> None:
        super().__init__()
        w = args.width
        self.n_knn = args.n_knn
        self.conv_pos = VNLinearLeakyReLU(3, w, dim=5, negative_slope=0.0)
        self.conv1 = VNLinearLeakyReLU(w, w, dim=4, negative_slope=0.0)
        self.conv2 = VNLinearLeakyReLU(2 * w, 2 * w, dim=4, negative_slope=0.0)
        self.conv3 = VNLinear(2 * w, 4 * w)
        self.bn3 = VNBatchNorm(4 * w, dim=4)
        self.std_feature = VNStdFeature(8 * w, dim=4, negative_slope=0.0)
        self.pool: Any = VNMaxPool(w) if args.pooling == "max" else mean_pool
        self.fstn = STNkd(args, d=w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, N = x.size()  # as the authors write it (fx unpacks a traced size, so this traces)
        x = x.unsqueeze(1)
        feat = get_graph_feature_cross(x, k=self.n_knn)
        x = self.conv_pos(feat)
        x = self.pool(x)
        x = self.conv1(x)
        x_global = self.fstn(x).unsqueeze(-1).repeat(1, 1, 1, N)
        x = torch.cat((x, x_global), 1)
        x = self.conv2(x)
        x = self.bn3(self.conv3(x))
        x_mean = x.mean(dim=-1, keepdim=True).expand(x.size())
        x = torch.cat((x, x_mean), 1)
        x, _ = self.std_feature(x)
        x = x.reshape(B, -1, N)
        return torch.max(x, -1, keepdim=False)[0]


class VNPointNetCls(nn.Module):
    """The classifier: the encoder and an MLP head of biased ``nn.Linear`` layers on invariants."""

    def __init__(self, args: Any, num_class: int = 40) -> None:
        super().__init__()
        self.args = args
        w = args.width
        self.feat = PointNetEncoder(args)
        self.fc1 = nn.Linear(3 * 8 * w, 4 * w)
        self.fc2 = nn.Linear(4 * w, 2 * w)
        self.fc3 = nn.Linear(2 * w, num_class)
        self.bn1 = nn.BatchNorm1d(4 * w)
        self.bn2 = nn.BatchNorm1d(2 * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feat(x)
        x = F.relu(self.bn1(self.fc1(x)))
        x = F.relu(self.bn2(self.fc2(x)))
        return self.fc3(x)  # the authors return (log_softmax, trans_feat); logits suit CrossEntropyLoss


def get_model(args: Any, num_class: int = 40) -> VNPointNetCls:
    """The authors' entry point: ``args`` is an argparse namespace (``args.n_knn``, ``args.pooling``, ...)."""
    return VNPointNetCls(args, num_class=num_class)


class _Transposed(Dataset):
    def __init__(self, items: Dataset) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        (points,), label = self.items[i]
        return (points.T.contiguous(),), label


class AuthorsPointClouds:
    """relaxcli's rotated shapes, with the points as the authors' data loaders give them: ``[3, N]`` per cloud."""

    def __init__(self, train: int = 16, val: int = 8, test: int = 8, num_points: int = 24, seed: int = 0) -> None:
        data = PointCloudData(train=train, val=val, test=test, num_points=num_points, seed=seed)
        self.train, self.val, self.test = (_Transposed(d) for d in (data.train, data.val, data.test))
