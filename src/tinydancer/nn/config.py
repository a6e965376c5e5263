"""The shape and initialisation of a FastGRNN, and the names of its parameters.

``nu`` and ``zeta`` are the *initial pre-sigmoid* values of the two learned scalars (EdgeML's
defaults: zeta = 1.0, nu = -4.0).  The seed calls them "scaling parameters" without saying where
they enter; this is the reading that matches the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


from .._validation import DictConfig, check_number
from ..errors import ValidationError

OutputActivation = Literal["sigmoid", "softmax"]


@dataclass(frozen=True)
class FastGRNNConfig(DictConfig):
    """Shape and initialisation of a FastGRNN.

    ``rank`` sets a low-rank factorisation for both W and U; ``w_rank``/``u_rank`` override it
    per matrix.  ``output_activation`` defaults to sigmoid for one output and softmax for more;
    choose ``"sigmoid"`` with several outputs for independent per-output probabilities (e.g.
    predicted quality of each LLM).
    """

    input_dim: int = 5
    hidden_dim: int = 16
    output_dim: int = 1
    nu: float = -4.0
    zeta: float = 1.0
    rank: int | None = None
    w_rank: int | None = None
    u_rank: int | None = None
    output_activation: OutputActivation | None = None

    def __post_init__(self) -> None:
        for name in ("input_dim", "hidden_dim", "output_dim"):
            check_number("FastGRNNConfig", name, getattr(self, name), low=1, integer=True)
        for name in ("rank", "w_rank", "u_rank"):
            check_number("FastGRNNConfig", name, getattr(self, name), low=1, integer=True, optional=True)
        for name in ("nu", "zeta"):
            check_number("FastGRNNConfig", name, getattr(self, name))
        act = self.output_activation
        if act is None:
            object.__setattr__(self, "output_activation", "sigmoid" if self.output_dim == 1 else "softmax")
        elif act not in ("sigmoid", "softmax"):
            raise ValidationError(f"output_activation must be 'sigmoid' or 'softmax', got {act!r}")
        if self.output_activation == "softmax" and self.output_dim < 2:
            raise ValidationError("softmax needs output_dim >= 2; use 'sigmoid' for a single output")

    @property
    def effective_w_rank(self) -> int | None:
        return self.w_rank if self.w_rank is not None else self.rank

    @property
    def effective_u_rank(self) -> int | None:
        return self.u_rank if self.u_rank is not None else self.rank

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name → shape of every parameter, in storage order."""
        d, h, o = self.input_dim, self.hidden_dim, self.output_dim
        shapes: dict[str, tuple[int, ...]] = {}
        if self.effective_w_rank is None:
            shapes["W"] = (h, d)
        else:
            shapes["W1"] = (h, self.effective_w_rank)
            shapes["W2"] = (self.effective_w_rank, d)
        if self.effective_u_rank is None:
            shapes["U"] = (h, h)
        else:
            shapes["U1"] = (h, self.effective_u_rank)
            shapes["U2"] = (self.effective_u_rank, h)
        shapes.update({"b_z": (h,), "b_h": (h,), "zeta": (1,), "nu": (1,), "fc_w": (o, h), "fc_b": (o,)})
        return shapes



#: Parameters that are weight matrices (L2, pruning and quantization apply to these).
RECURRENT_MATRICES = ("W", "W1", "W2", "U", "U1", "U2")
WEIGHT_MATRICES = RECURRENT_MATRICES + ("fc_w",)
