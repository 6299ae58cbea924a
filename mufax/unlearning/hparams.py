"""A method's hyperparameters: each declared once, as a dataclass field
(`hparam`) with its default, where that default comes from, the values it may
take and the range a sweep searches; `Hparams` checks every value made."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from mufax import search_spaces
from mufax import tasks

# The source of the defaults of the paper's methods.
REFERENCE_SOURCE = 'protocol §5 (the reference notebooks)'


def hparam(default, *, source: str, minimum=None, maximum=None,
           positive: bool = False, choices=None,
           per_task: Mapping[str, Any] | None = None,
           search: search_spaces.SearchSpace | None = None,
           search_source: str | None = None, per_member: bool = False):
  """A hyperparameter field: its default, where that default comes from (a
  paper, a reference implementation, or mufax's choice), and the values it
  may take. Where the reference's value depends on the task, the default is
  None and `per_task` holds it for each task family (`tasks.FAMILIES`,
  `Hparams.for_task`). `search` is the range a sweep draws the field from
  (`mufax.search_spaces`), `search_source` where that range comes from;
  without one, a sweep keeps the field at its default. `per_member`: the
  value reaches the model only as a stage's learning rate (which lives in
  the optimizer state) or as one of its `values` (which the objectives and
  hooks read per member), never as a shape, a plan or a constant compiled
  in, so a sweep's candidates that differ in such fields alone are members
  of one program."""
  if (search is None) != (search_source is None):
    raise ValueError('hparam: give search and search_source together.')
  return dataclasses.field(default=default, metadata={
      'source': source, 'minimum': minimum, 'maximum': maximum,
      'positive': positive, 'choices': choices, 'per_task': per_task,
      'search': search, 'search_source': search_source,
      'per_member': per_member})


def search_spaces_of(hparams_class) -> dict[str, search_spaces.SearchSpace]:
  """{field: its search range} of the fields that declare one."""
  return {f.name: f.metadata['search'] for f in dataclasses.fields(
      hparams_class) if f.metadata.get('search') is not None}


def member_fields(hparams_class) -> frozenset[str]:
  """The fields declared `per_member`."""
  return frozenset(f.name for f in dataclasses.fields(hparams_class)
                   if f.metadata.get('per_member'))


def check_search_spaces(name: str, hparams_class) -> None:
  """Refuses a search range that reaches values its field refuses."""
  for field, space in search_spaces_of(hparams_class).items():
    for value in space.values():
      try:
        hparams_class.from_config({field: value})
      except ValueError as e:
        raise ValueError(f'Unlearning method {name!r}: the search range of '
                         f'{field} ({space}) reaches {e}') from e


def _widens(value, kinds: tuple[type, ...]) -> bool:
  """Whether `value` is an int that a float field takes as a float (the
  command line parses `lr=1` as an int)."""
  return (float in kinds and int not in kinds and isinstance(value, int)
          and not isinstance(value, bool))


@dataclasses.dataclass(frozen=True)
class Hparams:
  """A method's hyperparameters, declared once as a dataclass of `hparam`
  fields; `config.unlearn.<method>.<field>` overrides each. Making one
  checks every value."""

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value, rule = getattr(self, f.name), f.metadata
      if value is None or not rule:
        continue
      problem = None
      if rule['choices'] is not None and value not in rule['choices']:
        problem = f'choose one of {", ".join(map(str, rule["choices"]))}'
      elif rule['positive'] and not value > 0:
        problem = 'must be > 0'
      elif rule['minimum'] is not None and not value >= rule['minimum']:
        problem = f'must be at least {rule["minimum"]}'
      elif rule['maximum'] is not None and not value <= rule['maximum']:
        problem = f'must be at most {rule["maximum"]}'
      if problem:
        raise ValueError(f'{f.name}={value!r}: {problem}.')

  @classmethod
  def from_overrides(cls, overrides: Mapping[str, Any]) -> Hparams:
    """The defaults, with the overrides' values that are set (not None) for
    this class's fields (an int given for a float field as a float); other
    keys are ignored."""
    kinds = cls._field_types()
    return cls(**{k: float(v) if _widens(v, kinds[k]) else v
                  for k, v in overrides.items()
                  if k in kinds and v is not None})

  @classmethod
  def from_config(cls, section: Mapping[str, Any]) -> Hparams:
    """`from_overrides` of the method's `config.unlearn` section, in which
    every name must be a field of this class and every value of the field's
    type (or None: the default).

    Raises:
      ValueError: one line naming the field and what it may be.
    """
    kinds = cls._field_types()
    for name, value in section.items():
      if name not in kinds:
        raise ValueError(f'{name}: no such hyperparameter; ' + (
            f'choose from {", ".join(kinds)}.' if kinds else
            'the method has none.'))
      if not (value is None or _widens(value, kinds[name]) or (
          isinstance(value, kinds[name])
          and isinstance(value, bool) == (bool in kinds[name]))):
        raise ValueError(f'{name}={value!r}: must be of type '
                         f'{" or ".join(k.__name__ for k in kinds[name])}.')
    return cls.from_overrides(section)

  def for_task(self, task: tasks.Task) -> Hparams:
    """These values, with each field left at None set to its `per_task`
    value for `task`'s family."""
    return dataclasses.replace(self, **{
        f.name: task.per_family(f.metadata['per_task'])
        for f in dataclasses.fields(self)
        if getattr(self, f.name) is None and f.metadata.get('per_task')})

  @classmethod
  def _field_types(cls) -> dict[str, tuple[type, ...]]:
    """{field: the types it declares, None aside}."""
    hints = typing.get_type_hints(cls)
    return {f.name: tuple(t for t in typing.get_args(hints[f.name])
                          or (hints[f.name],) if t is not type(None))
            for f in dataclasses.fields(cls)}

  def settings(self) -> dict:
    """The values set, for results.json (None: the task's reference, which
    the stages report)."""
    return {k: v for k, v in dataclasses.asdict(self).items()
            if v is not None}


@dataclasses.dataclass(frozen=True)
class SGDHparams(Hparams):
  """What every method that trains has."""
  batch_size: int = hparam(64, source=REFERENCE_SOURCE,
                           minimum=1)
