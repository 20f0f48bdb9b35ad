"""Studies: the paper's experiment as one declarative config and one call.

>>> from geomkit.study import load_study_config, run_study
>>> cfg = load_study_config("quick")                      # or a path to a .toml file
>>> result = run_study(cfg, "runs/quick")                 # doctest: +SKIP
>>> result.accuracy_rows()[0]["test_acc"]                 # doctest: +SKIP

* :mod:`geomkit.study.config` -- :class:`StudyConfig` and the presets
  (``geomkit/studies/*.toml``);
* :mod:`geomkit.study.run` -- :func:`run_study`: train → analyze → landscape → report,
  every artifact under one directory, finished work reused.
"""

from geomkit.study.config import (
    STUDY_OPTIMIZERS,
    AnalysisSettings,
    LandscapeSettings,
    RunSpec,
    StudyConfig,
    list_presets,
    load_study_config,
    model_family,
    study_config_from_dict,
)
from geomkit.study.run import STAGES, RunRecord, StudyResult, parse_stages, run_study, train_stage

__all__ = [
    "STAGES",
    "STUDY_OPTIMIZERS",
    "AnalysisSettings",
    "LandscapeSettings",
    "RunRecord",
    "RunSpec",
    "StudyConfig",
    "StudyResult",
    "list_presets",
    "load_study_config",
    "model_family",
    "parse_stages",
    "run_study",
    "study_config_from_dict",
    "train_stage",
]
