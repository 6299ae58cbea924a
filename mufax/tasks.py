"""What a dataset asks the model to predict, and which reference recipes apply.

Each dataset declares its tasks once, on its builder's configs
(`mufax.datasets`); a run looks its task up once and hands the one `Task` to
everything that depends on it: the model's head, the loss, recipes,
unlearning loops, published tables and results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TypeVar

# What a head's logits mean: 'softmax', one class per example (integer labels,
# cross-entropy); 'sigmoid', one 0/1 label per attribute (BCE with logits).
LOSS_KINDS = ('softmax', 'sigmoid')
# The reference notebooks whose training recipes (docs/protocol.md §4) and
# unlearning hyperparameters and loops (§5) a task follows.
FAMILIES = ('mufac', 'multilabel', 'binary')

_Value = TypeVar('_Value')


@dataclasses.dataclass(frozen=True)
class Task:
  """A dataset's task.

  Attributes:
    name: what the model predicts, e.g. `age`, `multilabel` (every
      attribute) or `gender` (one); the published tables (§7) are per name.
    family: one of FAMILIES, the row of docs/protocol.md §4 and §5.
    loss_kind: one of LOSS_KINDS.
    label_names: one name per output of the model's head: the classes of a
      softmax task, the attributes of a sigmoid one.
    benchmark: the paper's benchmark whose published numbers (§7) apply,
      `mufac` or `mucac`; None for a dataset without any.
  """
  name: str
  family: str
  loss_kind: str
  label_names: tuple[str, ...]
  benchmark: str | None = None

  def __post_init__(self):
    for field, value, known in (('family', self.family, FAMILIES),
                                ('loss_kind', self.loss_kind, LOSS_KINDS)):
      if value not in known:
        raise ValueError(f'Task {self.name!r}: unknown {field} {value!r}; '
                         f'choose one of {", ".join(known)}.')

  @property
  def num_outputs(self) -> int:
    return len(self.label_names)

  def per_family(self, values: Mapping[str, _Value]) -> _Value:
    """`values[self.family]`, for a value that protocol §4 or §5 sets per
    family.

    Raises:
      ValueError: `values` has none for this task's family.
    """
    if self.family not in values:
      raise ValueError(f'Task {self.name!r} is of family {self.family!r}, '
                       'which has no value here (only '
                       f'{", ".join(values)} have).')
    return values[self.family]
