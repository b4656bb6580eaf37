"""The lmforge.dev/v1alpha1 API: one model per kind, the single source of the CRD schemas."""

from __future__ import annotations

from typing import Any

from lmforge.operator.api.base import API_VERSION, GROUP, VERSION
from lmforge.operator.api.dataset import Dataset
from lmforge.operator.api.deployment import Deployment
from lmforge.operator.api.evaluation import Evaluation
from lmforge.operator.api.finetune import FineTune
from lmforge.operator.api.pretrainjob import PretrainJob
from lmforge.operator.api.resource import Resource
from lmforge.operator.api.rewardmodel import RewardModel

KINDS: dict[str, type[Resource]] = {
    k.model_fields["kind"].default: k
    for k in (Dataset, PretrainJob, FineTune, RewardModel, Evaluation, Deployment)
}

__all__ = ["API_VERSION", "GROUP", "KINDS", "VERSION", "Resource", "parse"]


def parse(document: dict[str, Any]) -> Resource:
    """One manifest as its typed resource; raises pydantic.ValidationError or KeyError (kind)."""
    return KINDS[document["kind"]].model_validate(document)
