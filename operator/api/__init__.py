"""The lmforge.dev/v1alpha1 API: one model per kind, the single source of the CRD schemas."""

from __future__ import annotations

from typing import Any

from .base import API_VERSION, GROUP, VERSION
from .dataset import Dataset
from .deployment import Deployment
from .evaluation import Evaluation
from .finetune import FineTune
from .pretrainjob import PretrainJob
from .resource import Resource
from .rewardmodel import RewardModel

KINDS: dict[str, type[Resource]] = {
    k.model_fields["kind"].default: k
    for k in (Dataset, PretrainJob, FineTune, RewardModel, Evaluation, Deployment)
}

__all__ = ["API_VERSION", "GROUP", "KINDS", "VERSION", "Resource", "parse"]


def parse(document: dict[str, Any]) -> Resource:
    """One manifest as its typed resource; raises pydantic.ValidationError or KeyError (kind)."""
    return KINDS[document["kind"]].model_validate(document)
