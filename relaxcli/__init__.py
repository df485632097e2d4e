"""relax: constraint relaxation for equivariant neural networks.

Relax a user's model, train it with the regularisers and a θ schedule, and project it back to an exactly
equivariant model of the user's own class:

    >>> import relaxcli
    >>> relaxed = relaxcli.relax(model)                       # branches beside every equivariant linear op
    >>> reg = relaxcli.Regularizer(weight=0.01)
    >>> schedule = relaxcli.make_schedule("triangle", total_steps=1000)
    >>> for step, (x, y) in enumerate(batches):
    ...     schedule.before_step(relaxed, step)
    ...     loss = loss_fn(relaxed(x), y) + reg(relaxed).total
    ...     loss.backward(); opt.step(); opt.zero_grad()
    >>> model = relaxcli.project(relaxed)                     # the user's module, exactly equivariant
"""

from .adapters import (
    ExplicitAdapter,
    IrrepsLinearAdapter,
    IrrepsAdapter,
    OpAdapter,
    TensorProductAdapter,
    VectorNeuronAdapter,
    find_adapter,
    register_op,
    registered_ops,
)
from .branches import Branch, DenseBranch, VectorBranch
from .build import load_model
from .errors import EquivarianceError, RecipeError, RelaxError
from .graph import RelaxedModel, Site, relax
from .program import export_program, load_program
from .projection import project
from .regularizers import Regularization, Regularizer, SiteTerms, site_terms
from .reps import Rep
from .schedules import SCHEDULES, Ace, AceElastic, Schedule, ThetaSchedule, make_schedule
from .vn import VNLinear

__version__ = "0.1.0"

__all__ = [
    "relax", "project", "load_model", "RelaxedModel", "Site", "export_program", "load_program",
    "Rep", "Branch", "DenseBranch", "VectorBranch", "VNLinear",
    "OpAdapter", "IrrepsAdapter", "IrrepsLinearAdapter", "TensorProductAdapter", "VectorNeuronAdapter",
    "ExplicitAdapter",
    "register_op", "registered_ops", "find_adapter",
    "Regularizer", "Regularization", "SiteTerms", "site_terms",
    "Schedule", "ThetaSchedule", "Ace", "AceElastic", "SCHEDULES", "make_schedule",
    "RelaxError", "RecipeError", "EquivarianceError",
]
