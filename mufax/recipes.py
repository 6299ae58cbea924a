"""How the original and the retrained models are trained (docs/protocol.md §4).

Keyed by `tasks.Task.family`. `config.original` and `config.retrain` hold
None for each value; the run takes the value from here unless the config or
the command line sets it (`train.recipe_of`).
"""

from __future__ import annotations

_MUFAC = {'learning_rate': 0.01, 'momentum': 0.9, 'epochs': 30,
          'decay_epochs': (10, 20), 'batch_size': 64}

RECIPES = {
    'mufac': {'original': _MUFAC, 'retrain': _MUFAC},
    'multilabel': {
        'original': {'learning_rate': 0.01, 'momentum': 0.0, 'epochs': 8,
                     'decay_epochs': (), 'batch_size': 64},
        'retrain': {'learning_rate': 0.01, 'momentum': 0.0, 'epochs': 7,
                    'decay_epochs': (), 'batch_size': 64},
    },
    'binary': {
        'original': {'learning_rate': 0.01, 'momentum': 0.9, 'epochs': 10,
                     'decay_epochs': (), 'batch_size': 64},
        'retrain': {'learning_rate': 0.001, 'momentum': 0.0, 'epochs': 10,
                    'decay_epochs': (), 'batch_size': 64},
    },
}

