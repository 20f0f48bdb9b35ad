"""Studies: the paper's experiment as one declarative config and one call.

>>> from geomkit.study import load_study_config, run_study
>>> cfg = load_study_config("quick")                      # or a path to a .toml file
>>> result = run_study(cfg, "runs/quick")                 # doctest: +SKIP
>>> result.accuracy_rows()[0]["test_acc"]                 # doctest: +SKIP

* :mod:`geomkit.study.config` -- :class:`StudyConfig` and the presets
  (``geomkit/studies/*.toml``);
* :mod:`geomkit.study.run` -- :func:`run_study`: train → analyze → landscape → report,
  every artifact under one directory, finished work reused;
* :mod:`geomkit.study.stages` -- stages 2-4; :mod:`geomkit.study.report` -- the report
  and :func:`findings`; :mod:`geomkit.study.plots` -- the study figures;
* :mod:`geomkit.study.view` -- :func:`open_study`: a finished study read back as rows.
"""

from geomkit.study.config import (
    STUDY_OPTIMIZERS,
    AnalysisSettings,
    LandscapeSettings,
    RunSpec,
    StudyConfig,
    TrackSettings,
    list_presets,
    load_study_config,
    model_family,
    study_config_from_dict,
)
from geomkit.study.report import Finding, findings, markdown_to_html, write_report
from geomkit.study.run import STAGES, RunRecord, StudyResult, parse_stages, run_study, train_stage
from geomkit.study.view import StudyView, lambda_columns, open_study, read_density

__all__ = [
    "STAGES",
    "STUDY_OPTIMIZERS",
    "AnalysisSettings",
    "Finding",
    "LandscapeSettings",
    "TrackSettings",
    "RunRecord",
    "RunSpec",
    "StudyConfig",
    "StudyResult",
    "StudyView",
    "findings",
    "lambda_columns",
    "list_presets",
    "load_study_config",
    "markdown_to_html",
    "model_family",
    "open_study",
    "parse_stages",
    "read_density",
    "run_study",
    "study_config_from_dict",
    "train_stage",
    "write_report",
]
