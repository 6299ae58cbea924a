"""torchvision's ResNet (BasicBlock) in PyTorch, for equivalence tests and the
throughput benchmark. Needs torch (an optional, test-only dependency).

Written out rather than imported from torchvision, whose PyPI wheels do not
load beside the CPU torch build this project tests with; the module tree, and
so every `state_dict` key, is torchvision's (`resnet18(num_classes=N)`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):

  def __init__(self, inplanes: int, planes: int, stride: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(
          nn.Conv2d(inplanes, planes, 1, stride, bias=False),
          nn.BatchNorm2d(planes))

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class ResNet(nn.Module):

  def __init__(self, stage_sizes: Sequence[int] = (2, 2, 2, 2),
               num_classes: int = 1000, width: int = 64):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = width
    for i, blocks in enumerate(stage_sizes):
      planes = width * 2**i
      layers = []
      for j in range(blocks):
        layers.append(BasicBlock(inplanes, planes,
                                 2 if i > 0 and j == 0 else 1))
        inplanes = planes
      setattr(self, f'layer{i + 1}', nn.Sequential(*layers))
    self.num_stages = len(stage_sizes)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(inplanes, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(self.num_stages):
      x = getattr(self, f'layer{i + 1}')(x)
    return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int) -> ResNet:
  return ResNet((2, 2, 2, 2), num_classes)
