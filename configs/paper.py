"""The paper's tables: `configs/paper.py:<dataset>,<methods>`.

<dataset> is a name/config of mufax.data.prepare.dataset_names(), or a
family alone for the paper's own: mufac (mufac/paper) or mucac
(mucac/multilabel); mufac when no argument is given. <methods> is
config.methods, all when absent. E.g.

  configs/paper.py:mufac,all                  the whole MUFAC table
  configs/paper.py:mufac,original,scrub       SCRUB beside the original
  configs/paper.py:mucac/gender,original,cf_k CF-3 (config.unlearn.cf_k.k)
  configs/paper.py:mucac,retrain              the retrained model alone

An unknown dataset or method is refused by the run, in one line that lists
the known ones.
"""

from configs import default

# The family's configuration that the paper's tables were made on.
PAPER_DATASETS = {'mufac': 'mufac/paper', 'mucac': 'mucac/multilabel'}


def get_config(arg: str = 'mufac'):
  dataset, _, methods = arg.partition(',')
  config = default.get_config()
  config.data.dataset = PAPER_DATASETS.get(dataset, dataset)
  config.methods = methods or 'all'
  return config
