"""Linear probe: how linearly separable an encoder's features are (library side of ``repae linear-probe``).

Features are the encoder's patch tokens mean-pooled over positions (``[B, N, D] -> [B, D]``), which
is what REPA-style alignment consumes (patch tokens), summarised per image. The head is a
multinomial logistic regression on features standardised with the *train* mean/std, trained
full-batch with L-BFGS (strong-Wolfe line search) and an L2 penalty; it is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@torch.no_grad()
def extract_features(token_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, *,
                     batch_size: int = 256, device: str | torch.device = "cpu", progress: bool = True) -> torch.Tensor:
    """Mean-pooled patch tokens ``[N, D]`` of uint8 images ``[N, 3, H, W]``.

    ``token_fn`` maps a uint8 batch (on ``device``) to patch tokens ``[B, T, D]``.
    """
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress):
        tokens = token_fn(images[i:i + batch_size].to(device))  # [B, T, D]
        out.append(tokens.float().mean(dim=1).cpu())  # [B, D]
    return torch.cat(out)  # [N, D]


@dataclass
class ProbeResult:
    accuracy: float          # top-1 on the evaluation set, in [0, 1]
    train_accuracy: float
    train_loss: float
    num_train: int
    num_test: int
    feature_dim: int
    weight_decay: float


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                 num_classes: int | None = None, weight_decay: float = 1e-4, max_iter: int = 500) -> ProbeResult:
    """Fit ``softmax(W f + b)`` on standardised train features; report test accuracy.

    Args:
        weight_decay: L2 coefficient on ``W`` (mean cross-entropy + ``wd * ||W||^2``).
        max_iter: L-BFGS iterations (full batch).

    Raises:
        ConfigError: fewer than 2 training classes (nothing to separate; one image also has no
            feature standard deviation) or no test image.
    """
    from repae.errors import ConfigError

    num_train_classes = int(torch.unique(train_y).numel()) if len(train_y) else 0
    if num_train_classes < 2 or len(test_y) == 0:
        raise ConfigError(f"a linear probe needs training images of at least 2 classes and 1 test image; got "
                          f"{len(train_y)} training image(s) of {num_train_classes} class(es) and {len(test_y)} test "
                          "image(s): give a larger --train-data / --test-data")
    train_x, test_x = train_x.double(), test_x.double()
    mu, sd = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    xtr, xte = (train_x - mu) / sd, (test_x - mu) / sd  # [N, D]
    k = int(num_classes if num_classes is not None else max(train_y.max(), test_y.max()) + 1)
    w = torch.zeros(xtr.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, train_y) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        train_logits = xtr @ w + b
        train_loss = float(F.cross_entropy(train_logits, train_y))
        train_acc = float((train_logits.argmax(1) == train_y).double().mean())
        acc = float(((xte @ w + b).argmax(1) == test_y).double().mean())
    return ProbeResult(accuracy=acc, train_accuracy=train_acc, train_loss=train_loss, num_train=len(train_y),
                       num_test=len(test_y), feature_dim=xtr.shape[1], weight_decay=weight_decay)
