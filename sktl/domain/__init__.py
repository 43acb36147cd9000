"""Domain adaptation: labelled source rows, unlabelled (``y=-1``) target rows.

See :mod:`sktl.domain._convention` for how target rows are marked.
"""

from ._adapt import DomainAdaptTransformer
from ._convention import UNLABELLED, SkipUnlabelled, domain_masks, is_unlabelled, make_da_pipeline

__all__ = [
    "UNLABELLED",
    "DomainAdaptTransformer",
    "SkipUnlabelled",
    "domain_masks",
    "is_unlabelled",
    "make_da_pipeline",
]
