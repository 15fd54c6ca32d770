"""The baseline a tutorial writes (PyTorch's transfer-learning tutorial, with timm's net): fp32,
torchvision ImageFolder + DataLoader decoding JPEGs every epoch, the whole network fine-tuned
with SGD + momentum, stopped when its wall-time allowance is spent."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from leanvision.models import create_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EVAL_SHARE = 0.15  # of the allowance, kept for scoring val and test at the end


def plain_finetune(data: Path, seconds: float) -> dict:
    started = time.perf_counter()
    torch.manual_seed(0)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                   transforms.Normalize(MEAN, STD)])
    eval_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                  transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    train = datasets.ImageFolder(str(data / "train"), train_tf)
    loader = DataLoader(train, batch_size=32, shuffle=True, num_workers=2, drop_last=True)
    model = create_model("efficientnet_lite0", len(train.classes), pretrained=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    deadline = started + seconds * (1 - EVAL_SHARE)
    epochs, steps, out_of_time = 0, 0, False
    while not out_of_time:
        model.train()
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if time.perf_counter() > deadline:
                out_of_time = True
                break
        else:
            epochs += 1
            schedule.step()
    figures = {"epochs": epochs, "steps": steps, "stopped_mid_epoch": out_of_time}
    for split in ("val", "test"):
        images = datasets.ImageFolder(str(data / split), eval_tf)
        figures[f"{split}_top1"], figures[f"{split}_n"] = _accuracy(model, images), len(images)
    return figures


@torch.no_grad()
def _accuracy(model: torch.nn.Module, dataset) -> float:
    model.eval()
    correct = 0
    for x, y in DataLoader(dataset, batch_size=64, num_workers=2):
        correct += (model(x).argmax(1) == y).sum().item()
    return correct / len(dataset)
